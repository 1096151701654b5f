"""What one inotify read reports: real kernel inotify, read by hand (no event loop), so
"one read" is exactly what the test made before calling ``Hub.read``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from reloadd.watch.filters import PathFilter
from reloadd.watch.inotify import Hub, Tree


class Reports:
    def __init__(self, root: Path) -> None:
        self.hub = Hub(None)
        self.reports: list[list[str]] = []
        self.tree = Tree(self.hub, str(root), PathFilter(), self._sink)
        self.tree.start()
        self.root = root

    def _sink(self, tree: Tree, paths: list[str]) -> None:
        self.reports.append(sorted(set(paths)))

    def read(self) -> list[str]:
        """The paths the next read reports (none: nothing, or only a wake-up)."""
        self.reports.clear()
        self.hub.read()
        return sorted({p for report in self.reports for p in report})


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[Reports]:
    (tmp_path / "config.yaml").write_text("a: 1\n")
    reports = Reports(tmp_path)
    try:
        yield reports
    finally:
        reports.tree.close()
        reports.hub.close()


def test_a_temp_file_created_and_removed_in_one_read_is_no_change(watched: Reports) -> None:
    tmp = watched.root / "sedAbc123"
    tmp.write_text("a: 2\n")
    tmp.unlink()
    assert watched.read() == []


def test_a_temp_file_renamed_over_the_real_one_reports_only_the_real_one(
    watched: Reports,
) -> None:
    """sed -i: write a temp file, rename it over the original."""
    tmp = watched.root / "sedXyz789"
    tmp.write_text("a: 2\n")
    os.replace(tmp, watched.root / "config.yaml")
    assert watched.read() == [str(watched.root / "config.yaml")]


def test_a_file_that_existed_is_a_change_even_if_recreated_and_removed(
    watched: Reports,
) -> None:
    """Deleted (a change), then created and removed again, all in one read."""
    conf = watched.root / "config.yaml"
    conf.unlink()
    conf.write_text("a: 3\n")
    conf.unlink()
    assert watched.read() == [str(conf)]


def test_a_file_created_in_one_read_and_removed_in_the_next_is_reported_both_times(
    watched: Reports,
) -> None:
    plugin = watched.root / "plugin.py"
    plugin.write_text("x = 1\n")
    assert watched.read() == [str(plugin)]
    plugin.unlink()
    assert watched.read() == [str(plugin)]


def test_a_file_created_removed_and_created_again_in_one_read_is_a_change(
    watched: Reports,
) -> None:
    new = watched.root / "new.py"
    new.write_text("1\n")
    new.unlink()
    new.write_text("2\n")
    assert watched.read() == [str(new)]
