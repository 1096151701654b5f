"""The poll backend's scan on real files: what it must see whichever way it takes.

A scan reads a directory only when its names may have changed; otherwise it lstats the
names it knew (``poll._Walker`` has the rule: the directory's lstat, ctime included,
is what it was when last read, that read came after the ctime had settled, and the file
system is one whose kernel keeps directory times). Every test here first lets the tree
settle and takes a scan that trusts every directory, then changes something the
shortcut must not hide. Most tests shorten the settling margin (``_SETTLED``, 2 s: the
second an ext2/3 stamp is cut to) to nothing, the clock tick still counting, so that
they do not wait; one test keeps it.

Nothing here sleeps to synchronise: ``wait_for`` polls a condition under a deadline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from reloadd_testing import require_mount, wait_for, write

from reloadd.watch import poll
from reloadd.watch.filters import PathFilter


class Scanner:
    """``scan_tree`` driven by hand, keeping what one scan hands to the next."""

    def __init__(self, root: Path, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()):
        self.root = str(root)
        self.filter = PathFilter(include, exclude)
        self.snap: poll.Snap = {}
        self.listed: poll.Listed = {}
        self.result = self.scan_result()  # the baseline

    def scan_result(self) -> poll.ScanResult:
        res = poll.scan_tree(self.root, self.filter, self.snap, listed=self.listed)
        self.snap, self.listed, self.result = res.snap, res.listed, res
        return res

    def scan(self) -> list[str]:
        """One scan: the changed paths (relative to the root), sorted."""
        return sorted(self.scan_result().changed)


def directories(root: Path) -> list[Path]:
    return [root, *(p for p in root.rglob("*") if p.is_dir() and not p.is_symlink())]


def settle(root: Path) -> None:
    """Wait until everything under ``root`` changed long enough ago to be trusted: no
    ctime is ahead of the wall clock read now."""
    now = time.time_ns()
    wait_for(lambda: poll.ctime_now() - poll._SETTLED > now, what="the ctimes to settle")


def trusted(root: Path, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> Scanner:
    """A scanner whose last scan read the settled tree and trusts every directory in it."""
    settle(root)
    s = Scanner(root, include, exclude)
    assert s.scan() == []
    assert set(s.listed) == set(s.snap), "every directory trusted"
    return s


@pytest.fixture(autouse=True)
def no_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(poll, "_SETTLED", 0)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    for d in range(3):
        for f in range(4):
            write(root / f"d{d}" / "sub" / f"f{f}.py", f"{d}{f}\n")
    write(root / "top.py")
    return root


def test_the_listed_tree_is_the_same_snapshot_and_counts(tree: Path) -> None:
    s = trusted(tree)
    before = s.snap
    assert s.scan() == []
    assert all(s.snap[rel] is before[rel] for rel in before)
    assert (s.result.files, s.result.dirs) == (13, 7)


def test_content_change_is_seen_although_the_directory_did_not_move(tree: Path) -> None:
    s = trusted(tree)
    target = tree / "d1" / "sub" / "f2.py"
    parent = (tree / "d1" / "sub").lstat()
    before = target.stat()
    target.write_text("12\n".upper())  # same size
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))  # mtime put back
    assert (tree / "d1" / "sub").lstat().st_ctime_ns == parent.st_ctime_ns
    assert s.scan() == ["d1/sub/f2.py"]
    assert s.scan() == []


def test_new_file_is_seen_even_with_the_directory_mtime_put_back(tree: Path) -> None:
    s = trusted(tree)
    sub = tree / "d2" / "sub"
    before = sub.lstat()
    write(sub / "new.py")
    os.utime(sub, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert sub.lstat().st_mtime_ns == before.st_mtime_ns  # only the ctime tells
    assert s.scan() == ["d2/sub/new.py"]


def test_deletion_rename_and_new_directory(tree: Path) -> None:
    s = trusted(tree)
    (tree / "d0" / "sub" / "f0.py").unlink()
    os.rename(tree / "d0" / "sub" / "f1.py", tree / "d0" / "sub" / "moved.py")
    write(tree / "d0" / "sub" / "deeper" / "x.py")
    assert s.scan() == ["d0/sub/deeper/x.py", "d0/sub/f0.py", "d0/sub/f1.py", "d0/sub/moved.py"]
    settle(tree)
    assert s.scan() == []
    assert "d0/sub/deeper" in s.listed


def test_directory_replaced_by_a_new_one_under_the_same_name(tree: Path) -> None:
    s = trusted(tree)
    shutil.rmtree(tree / "d1")
    write(tree / "d1" / "sub" / "f0.py", "10\n")  # same name, same content, new inodes
    changed = s.scan()
    assert changed == sorted([*(f"d1/sub/f{f}.py" for f in range(4))])


def test_file_turned_directory_and_back(tree: Path) -> None:
    s = trusted(tree)
    (tree / "top.py").unlink()
    write(tree / "top.py" / "inner.py")
    assert s.scan() == ["top.py", "top.py/inner.py"]
    settle(tree)
    assert s.scan() == []
    shutil.rmtree(tree / "top.py")
    write(tree / "top.py")
    assert s.scan() == ["top.py", "top.py/inner.py"]


def test_a_filtered_name_that_changes_kind_is_judged_again(tree: Path) -> None:
    """The filters' decision is kept per name, with its kind: a dropping file
    (``x.swp``) replaced by a directory of that name is walked, a pruned directory
    (``cache/``) replaced by a file of that name is a file like any other, and a file
    replaced by a directory the filters prune is not walked."""
    write(tree / "x.swp")
    (tree / "cache").mkdir()
    write(tree / "cache" / "blob.py")
    write(tree / "build")
    s = trusted(tree, exclude=("cache/", "build/"))
    assert s.snap[""]["x.swp"] is None
    assert s.snap[""]["cache"] is poll.PRUNED
    (tree / "x.swp").unlink()
    write(tree / "x.swp" / "inside.py")
    shutil.rmtree(tree / "cache")
    write(tree / "cache")
    (tree / "build").unlink()
    write(tree / "build" / "out.py")
    assert s.scan() == ["build", "cache", "x.swp/inside.py"]
    assert "build" not in s.snap  # pruned now: never read


def test_symlink_retargeted_and_vcs_lock_in_a_trusted_directory(tree: Path) -> None:
    (tree / "link").symlink_to("d0")
    (tree / ".git").mkdir()
    s = trusted(tree)
    tmp = tree / "link.tmp"
    tmp.symlink_to("d1")
    os.replace(tmp, tree / "link")
    assert s.scan() == ["link"]
    settle(tree)
    assert s.scan() == []
    assert s.result.locks == frozenset()
    write(tree / ".git" / "index.lock", "")
    assert s.scan() == []
    assert s.result.locks == frozenset({".git/index.lock"})  # .git itself is never read


def test_non_utf8_names(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    raw = os.fsencode(root) + b"/caf\xe9"
    os.makedirs(raw)
    with open(raw + b"/n\xff.py", "wb") as f:
        f.write(b"1")
    s = trusted(root)
    with open(raw + b"/n\xff.py", "wb") as f:
        f.write(b"22")
    assert s.scan() == [os.fsdecode(b"caf\xe9/n\xff.py")]


def test_paths_longer_than_path_max(tmp_path: Path) -> None:
    """Directories past PATH_MAX are opened piecewise both to be read and to be lstat'ed
    by name."""
    root = tmp_path / "tree"
    root.mkdir()
    name = "d" * 40
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(110):  # 110 * 41 bytes > PATH_MAX
            os.mkdir(name, dir_fd=fd)
            new = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = new
        os.close(os.open("leaf.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
        deep = "/".join([name] * 110)
        assert len(f"{root}/{deep}") > 4096
        s = trusted(root)
        assert deep in s.listed
        leaf = os.open("leaf.txt", os.O_WRONLY | os.O_APPEND, dir_fd=fd)
        os.write(leaf, b"more")
        os.close(leaf)
        assert s.scan() == [f"{deep}/leaf.txt"]
        os.close(os.open("new.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
        assert s.scan() == [f"{deep}/new.txt"]
    finally:
        os.close(fd)


def test_a_directory_changed_just_before_the_scan_is_read_until_it_settles(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the real margin: a directory whose ctime is not older than the scan by
    ``_SETTLED`` is read again by every scan (a name added later in the same second of
    a whole-second stamp would leave the ctime as it was); once older, it is trusted."""
    monkeypatch.undo()
    assert poll._SETTLED == 2_000_000_000
    s = trusted(tree)
    write(tree / "d0" / "sub" / "a.py")
    assert s.scan() == ["d0/sub/a.py"]
    assert "d0/sub" not in s.listed
    assert "d1/sub" in s.listed
    write(tree / "d0" / "sub" / "b.py")
    assert s.scan() == ["d0/sub/b.py"]
    settle(tree)
    assert s.scan() == []
    assert "d0/sub" in s.listed


def test_listing_devices_are_local_file_systems_only(tmp_path: Path) -> None:
    devices = poll._listing_devices()
    assert Path("/proc").stat().st_dev not in devices
    if Path("/dev/shm").is_dir():
        assert Path("/dev/shm").stat().st_dev in devices  # tmpfs


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[Path]:
    require_mount()
    points: list[Path] = []

    def mount(kind: str, options: str) -> Path:
        point = tmp_path / f"mnt{len(points)}"
        point.mkdir()
        subprocess.run(["mount", "-t", kind, "-o", options, kind, str(point)], check=True)
        points.append(point)
        return point

    yield mount  # type: ignore[misc]
    for point in reversed(points):
        subprocess.run(["umount", str(point)], check=True)


def test_trusted_directories_are_not_read(mounted: object) -> None:
    """On a tmpfs mounted ``strictatime`` every read of a directory moves its atime (and
    nothing else): a scan of the settled tree leaves every atime alone, and still sees a
    file's content change."""
    root = mounted("tmpfs", "strictatime,size=16m")  # type: ignore[operator]
    for d in range(3):
        write(root / f"d{d}" / "f.py")
    dirs = directories(root)  # (reading them moves their atimes: before the scans)
    s = trusted(root)
    atimes = {d: d.lstat().st_atime_ns for d in dirs}
    wait_for(lambda: poll.ctime_now() > max(atimes.values()), what="a clock tick")
    assert s.scan() == []
    assert {d: d.lstat().st_atime_ns for d in dirs} == atimes
    write(root / "d1" / "f.py", "changed\n")
    assert s.scan() == ["d1/f.py"]


def test_other_file_systems_are_read_every_scan(mounted: object) -> None:
    """ramfs is not among the file systems trusted to keep directory times: nothing is
    listed, and changes are seen all the same."""
    root = mounted("ramfs", "mode=0755")  # type: ignore[operator]
    write(root / "d" / "f.py")
    settle(root)
    s = Scanner(root)
    assert s.scan() == []
    assert s.listed == {}
    write(root / "d" / "g.py")
    write(root / "d" / "f.py", "changed\n")
    assert s.scan() == ["d/f.py", "d/g.py"]
