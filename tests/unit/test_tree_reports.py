"""What one inotify read reports: real kernel inotify, read by hand (no event loop), so
"one read" is exactly what the test made before calling ``Hub.read``."""

from __future__ import annotations

import asyncio
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


def test_new_directories_are_walked_without_reading_the_mount_table_each_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every walk asks which network mounts lie below it. With a loop, the hub keeps the
    mount table and reads /proc/self/mountinfo again only when the kernel flags a
    change (on a host with thousands of mounts, a read per new directory would cost a
    git checkout seconds). A spy counts the reads; the walks are real."""
    from reloadd import probe
    from reloadd.watch import inotify

    reads: list[int] = []
    real = probe.mounts
    for module in (probe, inotify):
        monkeypatch.setattr(module, "mounts", lambda: reads.append(1) or real())
    loop = asyncio.new_event_loop()  # not run: the hub only needs one to follow mounts
    hub = Hub(loop)
    tree = Tree(hub, str(tmp_path), PathFilter(), lambda tree, paths: None)
    try:
        tree.start()
        for i in range(30):
            (tmp_path / f"d{i}" / "sub").mkdir(parents=True)
        hub.read()
        assert {f"d{i}/sub" for i in range(30)} <= tree.dirs.keys()  # all 60 walked
        assert len(reads) < 5  # the hub's first read (and any mount made meanwhile)
    finally:
        tree.close()
        hub.close()
        loop.close()


def test_an_unreadable_mount_table_is_not_taken_for_everything_unmounted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mountinfo that cannot be read (EMFILE: out of descriptors) gives no table at all;
    told as a change, every mount would look gone and every tree would re-walk and
    reload. It is skipped. (A patched read stands in for
    the fault: running a test process out of descriptors would break the test itself.)"""
    from reloadd import probe
    from reloadd.watch import inotify

    loop = asyncio.new_event_loop()
    hub = Hub(loop)
    reports: list[list[str]] = []
    tree = Tree(hub, str(tmp_path), PathFilter(), lambda tree, paths: reports.append(paths))
    try:
        tree.start()
        told = set(hub._mounts_told)
        assert told
        for module in (probe, inotify):
            monkeypatch.setattr(module, "mounts", lambda: [])
        hub._tell_trees()
        assert reports == []
        assert hub._mounts_told == told
    finally:
        tree.close()
        hub.close()
        loop.close()
