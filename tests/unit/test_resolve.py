"""The symlinks met on the way to a watch path: each is an anchor (a swap of any of them
moves the watch path), and the resolution itself must agree with ``os.path.realpath``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reloadd.watch.inotify import _resolve


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    base = Path(os.path.realpath(tmp_path))
    (base / "srv" / "releases" / "1" / "lib").mkdir(parents=True)
    (base / "srv" / "current").symlink_to("releases/1")
    (base / "etc").mkdir()
    (base / "etc" / "app").symlink_to("../srv/current")
    (base / "abs").symlink_to(base / "srv" / "current" / "lib")
    (base / "loop").symlink_to("loop")
    (base / "dangling").symlink_to("srv/releases/9")
    return base


@pytest.mark.parametrize(
    ("path", "links"),
    [
        ("srv/releases/1/lib", []),
        ("srv/current", ["srv/current"]),
        ("srv/current/lib/deeper/missing", ["srv/current"]),
        ("etc/app/lib", ["etc/app", "srv/current"]),
        ("abs", ["abs", "srv/current"]),
        ("dangling/lib", ["dangling"]),
        ("missing/a/b", []),
        ("loop/a", ["loop"]),
    ],
)
def test_resolve_names_every_link_by_its_resolved_parent(
    tree: Path, path: str, links: list[str]
) -> None:
    resolved, met = _resolve(str(tree / path))
    assert resolved == os.path.realpath(tree / path)
    assert met == [str(tree / link) for link in links]


def test_resolve_the_root_directory() -> None:
    assert _resolve("/") == ("/", [])
