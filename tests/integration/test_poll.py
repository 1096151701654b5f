"""The poll backend on real files: ``PollTree.scan()`` drives it without timers, so each
test says exactly which scan sees what. The settle rule is visible in every test: a
change is reported by the first scan that sees nothing new after it.

The last tests run the timers and worker threads for real (a loop, a daemon).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from reloadd_testing import (
    Recording,
    recorder_command,
    require_mount,
    running,
    toml_value,
    until,
    wait_for,
    write,
)

from reloadd.watch import poll
from reloadd.watch.filters import PathFilter
from reloadd.watch.poll import PollTree, diff

F = 0o100644
D = 0o040755


class Reports:
    """A sink that keeps every report."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, tree: PollTree, paths: list[str]) -> None:
        self.calls.append(list(paths))

    def changes(self) -> list[list[str]]:
        """The reports that named paths (an empty one only asks the service to look)."""
        return [c for c in self.calls if c]

    def take(self) -> list[list[str]]:
        out, self.calls = self.changes(), []
        return out


Make = Callable[..., tuple[PollTree, Reports]]


@pytest.fixture
def make() -> Iterator[Make]:
    trees: list[PollTree] = []

    def build(
        root: Path, include: tuple[str, ...] = (), exclude: tuple[str, ...] = (), **kw: object
    ) -> tuple[PollTree, Reports]:
        reports = Reports()
        kw.setdefault("max_delay", 60.0)
        tree = PollTree(str(root), PathFilter(include, exclude), reports, **kw)  # type: ignore[arg-type]
        tree.start()  # no loop: a synchronous baseline
        trees.append(tree)
        return tree, reports

    yield build
    for tree in trees:
        tree.close()


def settle(tree: PollTree, reports: Reports) -> list[list[str]]:
    """One scan that sees the change, one that sees nothing new: what was reported."""
    tree.scan()
    assert reports.changes() == [], "reported before a quiet scan"
    tree.scan()
    return reports.take()


# -- the diff, as a pure function -------------------------------------------------------


@pytest.mark.parametrize("field", range(5))
def test_every_signature_field_is_a_change(field: int) -> None:
    sig = [7, 1000, 2000, 12, F]
    other = list(sig)
    other[field] += 1
    before = {"": {"a": tuple(sig)}}
    after = {"": {"a": tuple(other)}}
    assert diff(before, after) == ["a"]  # type: ignore[arg-type]


def test_diff_ignores_directories_and_filtered_names() -> None:
    before = {"": {"d": (1, 0, 0, 0, D), "skip": None, "f": (2, 1, 1, 1, F)}, "d": {}}
    after = {"": {"d": (1, 0, 0, 0, D), "f": (2, 1, 1, 1, F), "new_skip": None}, "d": {}}
    assert diff(before, after) == []  # type: ignore[arg-type]


def test_diff_file_turned_directory_and_back() -> None:
    as_file = {"": {"x": (1, 1, 1, 1, F)}}
    as_dir = {"": {"x": (2, 0, 0, 0, D)}, "x": {"inner": (3, 1, 1, 1, F)}}
    assert sorted(diff(as_file, as_dir)) == ["x", "x/inner"]  # type: ignore[arg-type]
    assert sorted(diff(as_dir, as_file)) == ["x", "x/inner"]  # type: ignore[arg-type]


def test_diff_shares_unchanged_directories(app: Path, make: Make) -> None:
    """An unchanged directory is the same object in the next snapshot: compared by ``is``."""
    tree, _ = make(app)
    before = tree._current
    write(app / "app.py", "version = 2\n")
    tree.scan()
    assert tree._current["pkg"] is before["pkg"]
    assert tree._current[""] is not before[""]


# -- files -----------------------------------------------------------------------------------


def test_baseline_reports_nothing(app: Path, make: Make) -> None:
    tree, reports = make(app)
    assert tree.state == "watching"
    assert (tree.files, tree.dirs) == (3, 2)
    tree.scan()
    tree.scan()
    assert reports.calls == []


def test_write_reported_after_a_quiet_scan(app: Path, make: Make) -> None:
    tree, reports = make(app)
    write(app / "app.py", "version = 2\n")
    assert settle(tree, reports) == [[str(app / "app.py")]]
    tree.scan()
    assert reports.calls == []


def test_burst_spanning_two_scans_is_one_report(app: Path, make: Make) -> None:
    tree, reports = make(app)
    write(app / "app.py", "version = 2\n")
    tree.scan()
    write(app / "pkg" / "models.py", "x = 2\n")
    tree.scan()  # something new again: still not settled
    assert reports.changes() == []
    tree.scan()
    assert reports.take() == [[str(app / "app.py"), str(app / "pkg" / "models.py")]]


def test_mtime_preserved_but_size_changed(app: Path, make: Make) -> None:
    target = app / "config.yaml"
    before = target.stat()
    tree, reports = make(app)
    target.write_text("debug: true, verbose: true\n")
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = target.stat()
    assert after.st_mtime_ns == before.st_mtime_ns
    assert after.st_size != before.st_size
    assert settle(tree, reports) == [[str(target)]]


def test_replaced_by_same_size_and_mtime_with_a_new_inode(app: Path, make: Make) -> None:
    target = app / "config.yaml"
    before = target.stat()
    tree, reports = make(app)
    other = write(app / ".config.yaml.new", "debug: truee\n")  # same length, other bytes
    os.utime(other, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(other, target)
    after = target.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert after.st_ino != before.st_ino
    assert settle(tree, reports) == [[str(target)]]


def test_rename_reports_both_names(app: Path, make: Make) -> None:
    tree, reports = make(app)
    os.rename(app / "app.py", app / "main.py")
    assert settle(tree, reports) == [[str(app / "app.py"), str(app / "main.py")]]


def test_created_and_removed_within_a_burst_is_no_change(app: Path, make: Make) -> None:
    """The net difference is reported: a temp file seen by one scan and gone by the next
    is not, and a burst made only of such files reports nothing."""
    tree, reports = make(app)
    tmp = write(app / "upload.tmp")
    tree.scan()
    tmp.unlink()
    write(app / "app.py", "version = 2\n")
    tree.scan()
    tree.scan()
    assert reports.take() == [[str(app / "app.py")]]
    tmp = write(app / "again.tmp")
    tree.scan()
    tmp.unlink()
    tree.scan()
    tree.scan()
    assert reports.changes() == []


def test_max_delay_reports_a_tree_that_keeps_changing(app: Path, make: Make) -> None:
    tree, reports = make(app, max_delay=0.0)
    write(app / "app.py", "version = 2\n")
    tree.scan()  # no quiet scan, but max_delay (0) has passed
    assert reports.take() == [[str(app / "app.py")]]


# -- directories -------------------------------------------------------------------------


def test_new_nested_directory(app: Path, make: Make) -> None:
    tree, reports = make(app)
    (app / "empty" / "deeper").mkdir(parents=True)
    tree.scan()
    tree.scan()
    assert reports.changes() == []  # an empty directory is no change (as with inotify)
    write(app / "a" / "b" / "c" / "deep.py")
    write(app / "a" / "top.py")
    assert settle(tree, reports) == [
        [str(app / "a" / "b" / "c" / "deep.py"), str(app / "a" / "top.py")]
    ]
    write(app / "a" / "b" / "c" / "deep.py", "changed")
    assert settle(tree, reports) == [[str(app / "a" / "b" / "c" / "deep.py")]]


def test_directory_moved_in_and_out(app: Path, make: Make, tmp_path: Path) -> None:
    outside = tmp_path / "staging" / "plugin"
    write(outside / "plugin.py")
    write(outside / "sub" / "helper.py")
    tree, reports = make(app)
    os.rename(outside, app / "plugin")
    moved_in = [str(app / "plugin" / "plugin.py"), str(app / "plugin" / "sub" / "helper.py")]
    assert settle(tree, reports) == [moved_in]
    os.rename(app / "plugin", tmp_path / "gone")
    assert settle(tree, reports) == [moved_in]
    write(tmp_path / "gone" / "plugin.py", "not watched any more")
    tree.scan()
    tree.scan()
    assert reports.changes() == []


def test_directory_deleted(app: Path, make: Make) -> None:
    tree, reports = make(app)
    shutil.rmtree(app / "pkg")
    assert settle(tree, reports) == [[str(app / "pkg" / "models.py")]]


# -- filters -----------------------------------------------------------------------------


def test_ignored_and_excluded_files_are_no_change(app: Path, make: Make) -> None:
    write(app / "logs" / "old.log")
    (app / ".git" / "objects").mkdir(parents=True)
    tree, reports = make(app, exclude=("logs/", "*.log", "/pkg/generated/**"))
    for name in (".app.py.swp", "app.py~", ".#app.py", "#app.py#", "4913", "x___jb_tmp___"):
        write(app / name)
        write(app / "pkg" / name)
    write(app / ".git" / "HEAD", "ref: refs/heads/x\n")
    write(app / ".git" / "objects" / "ab" / "cdef", "blob")
    write(app / "pkg" / "__pycache__" / "models.cpython-311.pyc")
    write(app / "logs" / "today.txt")
    write(app / "pkg" / "debug.log")
    write(app / "pkg" / "generated" / "out.py")
    tree.scan()
    tree.scan()
    assert reports.changes() == []
    assert "logs" not in tree._current
    assert ".git" not in tree._current
    assert "pkg/__pycache__" not in tree._current


def test_include_patterns(app: Path, make: Make) -> None:
    tree, reports = make(app, include=("*.py",))
    write(app / "config.yaml", "debug: true\n")
    write(app / "pkg" / "models.py", "x = 2\n")
    assert settle(tree, reports) == [[str(app / "pkg" / "models.py")]]


def test_subtree_is_filtered_like_its_watch_path(app: Path, make: Make) -> None:
    """A fallback subtree (``prefix``) applies anchored patterns from the watch root."""
    write(app / "pkg" / "generated" / "out.py")
    tree, reports = make(app / "pkg", exclude=("/pkg/generated/**",), prefix="pkg", subtree=True)
    write(app / "pkg" / "generated" / "out.py", "regenerated")
    write(app / "pkg" / "models.py", "x = 2\n")
    assert settle(tree, reports) == [[str(app / "pkg" / "models.py")]]
    shutil.rmtree(app / "pkg")
    assert settle(tree, reports) == [[str(app / "pkg" / "models.py")]]
    assert tree.state == "watching"  # a subtree's absence is not "waiting"


# -- symlinks ------------------------------------------------------------------------------


def test_symlinks_below_the_root_are_not_followed(app: Path, make: Make, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write(outside / "lib.py")
    (app / "vendor").symlink_to(outside)
    (app / "pkg" / "up").symlink_to("..")
    (app / "pkg" / "self").symlink_to("self")
    tree, reports = make(app)
    assert "vendor" not in tree._current
    assert "pkg/up" not in tree._current
    write(outside / "lib.py", "changed outside")
    tree.scan()
    tree.scan()
    assert reports.changes() == []
    (app / "loop").symlink_to(".")
    assert settle(tree, reports) == [[str(app / "loop")]]
    tmp_link = app / "vendor.tmp"
    tmp_link.symlink_to(app / "pkg")
    os.replace(tmp_link, app / "vendor")  # retargeted: a new link
    assert settle(tree, reports) == [[str(app / "vendor")]]


def test_root_symlink_loop_is_waiting_with_one_warning(
    tmp_path: Path, make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "loop"
    root.symlink_to("loop")
    with caplog.at_level(logging.WARNING, "reloadd.watch"):
        tree, _reports = make(root)
        tree.scan()
        tree.scan()
    assert tree.state == "waiting"
    assert [r.getMessage() for r in caplog.records if "symlink loop" in r.getMessage()] == [
        f"watch path {root}: a symlink loop; waiting for it"
    ]


def test_symlinked_root_swapped_to_identical_hard_links(tmp_path: Path, make: Make) -> None:
    """``current -> releases/1`` swapped to ``releases/2`` whose files are hard links of
    the same inodes (rsync --link-dest): no file signature differs, the root does."""
    rel1, rel2 = tmp_path / "releases" / "1", tmp_path / "releases" / "2"
    write(rel1 / "app.py")
    (rel2).mkdir()
    os.link(rel1 / "app.py", rel2 / "app.py")
    current = tmp_path / "current"
    current.symlink_to("releases/1")
    tree, reports = make(current)
    (tmp_path / "current.tmp").symlink_to("releases/2")
    os.replace(tmp_path / "current.tmp", current)
    assert settle(tree, reports) == [[str(current)]]
    write(rel1 / "app.py", "shared inode: changes both")
    assert settle(tree, reports) == [[str(current / "app.py")]]


def test_bind_mount_loop_is_skipped_with_one_warning(
    app: Path, make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    """A directory bind-mounted inside itself is reached twice: walked once, warned once."""
    require_mount()
    loop = app / "pkg" / "loop"
    loop.mkdir()
    subprocess.run(["mount", "--bind", str(app), str(loop)], check=True)
    try:
        with caplog.at_level(logging.WARNING, "reloadd.watch"):
            tree, reports = make(app)
            tree.scan()
            tree.scan()
        warnings = [r.getMessage() for r in caplog.records if "already seen" in r.getMessage()]
        assert len(warnings) == 1, warnings
        assert str(loop) in warnings[0]
        assert reports.changes() == []
        write(app / "app.py", "version = 2\n")
        assert settle(tree, reports) == [[str(app / "app.py")]]
    finally:
        subprocess.run(["umount", str(loop)], check=True)


# -- unreadable directories --------------------------------------------------------------


def test_unreadable_directory_warns_once_and_keeps_what_it_knew(
    app: Path, make: Make, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory that cannot be read (EACCES here; EIO on a flaky network mount) is
    skipped with one warning and listed as unwatched; what was known about it stands,
    so its files do not count as deleted. (Injected: root reads any mode bits.)"""
    tree, reports = make(app)
    real_scandir = os.scandir
    broken = str(app / "pkg")

    def scandir(path: str) -> object:
        if path == broken:
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    # every directory is read on every scan: one trusted by its unchanged ctime would not
    # be (poll._Walker), and the injected error would never be met
    monkeypatch.setattr(poll, "_SETTLED", 1 << 62)
    with caplog.at_level(logging.WARNING, "reloadd.watch"):
        for _ in range(3):
            tree.scan()
    assert reports.changes() == []
    assert tree.unwatched == {"pkg": "Permission denied"}
    assert [r.getMessage() for r in caplog.records] == [
        f"cannot read {broken}: Permission denied; skipped"
    ]
    write(app / "app.py", "version = 2\n")
    assert settle(tree, reports) == [[str(app / "app.py")]]
    monkeypatch.setattr(os, "scandir", real_scandir)
    tree.scan()
    tree.scan()
    assert reports.changes() == []  # readable again, unchanged
    assert tree.unwatched == {}


# -- the root ------------------------------------------------------------------------------


def test_missing_root_waits_then_its_content_is_a_change(tmp_path: Path, make: Make) -> None:
    root = tmp_path / "late"
    tree, reports = make(root)
    assert tree.state == "waiting"
    tree.scan()
    assert reports.calls == []
    write(root / "index.html")
    tree.scan()
    assert tree.state == "watching"
    assert reports.calls == [[]]  # the state changed: the service is asked to look
    tree.scan()
    assert reports.take() == [[str(root / "index.html")]]


def test_root_deleted_holds_then_recreated_is_one_report(app: Path, make: Make) -> None:
    tree, reports = make(app)
    shutil.rmtree(app)
    tree.scan()
    assert tree.state == "waiting"
    assert tree.holding  # a deploy that replaces the directory: wait for the new one
    write(app / "app.py", "version = 2\n")
    tree.scan()
    assert tree.state == "watching"
    assert not tree.holding
    tree.scan()
    [report] = reports.take()
    assert sorted(report) == sorted(
        [str(app / "app.py"), str(app / "config.yaml"), str(app / "pkg" / "models.py")]
    )


def test_root_deleted_for_good_reports_the_deletions(app: Path, make: Make) -> None:
    tree, reports = make(app, hold_lost_for=0.0)
    shutil.rmtree(app)
    assert len(settle(tree, reports)[0]) == 3
    assert tree.state == "waiting"
    assert not tree.holding


def test_single_file_root_through_symlinks(tmp_path: Path, make: Make) -> None:
    """A ConfigMap-style ``config.yaml -> ..data/config.yaml``: the swap is a change."""
    cm = tmp_path / "cm"
    write(cm / "..v1" / "config.yaml", "a: 1\n")
    write(cm / "..v2" / "config.yaml", "a: 2\n")
    (cm / "..data").symlink_to("..v1")
    (cm / "config.yaml").symlink_to("..data/config.yaml")
    tree, reports = make(cm / "config.yaml")
    assert (tree.kind, tree.state) == ("file", "watching")
    (cm / "..data_tmp").symlink_to("..v2")
    os.replace(cm / "..data_tmp", cm / "..data")
    assert settle(tree, reports) == [[str(cm / "config.yaml")]]


# -- holds -----------------------------------------------------------------------------------


def test_vcs_lock_holds_and_its_end_wakes_the_service(app: Path, make: Make) -> None:
    (app / ".git").mkdir()
    tree, reports = make(app)
    assert not tree.holding
    write(app / ".git" / "index.lock", "")
    tree.scan()
    assert tree.holding
    assert tree.locks == frozenset({".git/index.lock"})
    assert reports.calls == [[]]
    (app / ".git" / "index.lock").unlink()
    tree.scan()
    assert not tree.holding
    assert reports.calls == [[], []]


# -- timers, threads, the loop -------------------------------------------------------------


def stamped_before_now(root: Path) -> bool:
    """Every file under ``root`` has a ctime older than the ctime clock reads now: a
    baseline scan starting from here cannot mistake them for writes made during it."""
    newest = max(p.lstat().st_ctime_ns for p in [root, *root.rglob("*")])
    return poll.ctime_now() > newest


def test_timer_driven_scans_run_off_the_loop_thread(
    app: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: set[str] = set()
    real = poll.scan_tree

    def spy(*args: object, **kwargs: object) -> object:
        threads.add(threading.current_thread().name)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(poll, "scan_tree", spy)

    async def main() -> tuple[list[list[str]], PollTree]:
        reports = Reports()
        await until(lambda: stamped_before_now(app), "the clock past the tree's ctimes")
        tree = PollTree(str(app), PathFilter(), reports, interval=0.01)
        tree.start()  # never waits: the first scan runs in a thread too
        assert (tree.state, tree.scans) == ("waiting", 0)
        await tree.baseline()
        assert tree.state == "watching"
        assert tree.scans == 1
        write(app / "app.py", "version = 2\n")
        await until(reports.changes, "the change reported")
        tree.close()
        assert tree._timer is None
        return reports.changes(), tree

    changes, tree = asyncio.run(main())
    assert changes == [[str(app / "app.py")]]
    assert threads == {f"poll {app}"}
    assert tree.scans >= 3


def test_slow_first_scan_does_not_block_start(
    app: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A first scan slower than BASELINE_WAIT (a hung mount): start() never waits for
    it, the tree waits, a warning says so, and the scan is applied as the baseline when
    it ends (``baseline()`` returns then)."""
    release = threading.Event()
    real = poll.scan_tree

    def stuck(*args: object, **kwargs: object) -> object:
        release.wait(30)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(poll, "scan_tree", stuck)
    monkeypatch.setattr(poll, "BASELINE_WAIT", 0.01)

    async def main() -> tuple[str, str, list[list[str]]]:
        reports = Reports()
        await until(lambda: stamped_before_now(app), "the clock past the tree's ctimes")
        tree = PollTree(str(app), PathFilter(), reports, interval=0.01)
        tree.start()
        before = tree.state
        await until(lambda: "the first scan takes longer than" in caplog.text, "the warning")
        assert tree.scans == 0
        release.set()
        await tree.baseline()
        await until(lambda: tree.scans >= 3, "three scans")
        tree.close()
        return before, tree.state, reports.changes()

    with caplog.at_level(logging.WARNING, "reloadd.watch"):
        before, after, changes = asyncio.run(main())
    assert (before, after, changes) == ("waiting", "watching", [])
    assert "the first scan takes longer than" in caplog.text


def test_change_made_while_the_baseline_is_read_is_reported(
    app: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """start() returns at once; a write made after the baseline scan began (here: before
    the walk reaches the file, so the baseline itself holds the new content) is still
    reported, because its ctime is not older than the scan."""
    entered, gate = threading.Event(), threading.Event()
    real = poll.scan_tree

    def held(*args: object, **kwargs: object) -> object:
        if not entered.is_set():
            entered.set()
            gate.wait(30)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(poll, "scan_tree", held)

    async def main() -> list[list[str]]:
        await until(lambda: stamped_before_now(app), "the clock past the tree's ctimes")
        reports = Reports()
        tree = PollTree(str(app), PathFilter(), reports, interval=0.01)
        tree.start()
        await until(entered.is_set, "the baseline scan to begin")  # the baseline scan has begun
        write(app / "app.py", "version = 2\n")
        gate.set()
        await tree.baseline()
        assert tree.state == "watching"
        await until(reports.changes, "the change reported")
        tree.close()
        return reports.changes()

    assert asyncio.run(main()) == [[str(app / "app.py")]]


def test_recheck_statfs_runs_off_the_loop_one_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A waiting ``auto`` path looks at its file system again every poll_interval. On a
    hung network mount statfs never returns: it runs in a worker thread (the loop keeps
    turning), and the next look waits for it instead of piling up threads."""
    import reloadd.watch as watch
    from reloadd.watch.inotify import Hub

    release = threading.Event()
    calls: list[str] = []
    active = [0, 0]  # now, most at once

    def hung(path: str) -> int | None:
        calls.append(threading.current_thread().name)
        active[0] += 1
        active[1] = max(active)
        try:
            release.wait(30)
        finally:
            active[0] -= 1
        return None

    async def main() -> None:
        hub = Hub(asyncio.get_running_loop())
        path = watch.WatchPath(
            hub, str(tmp_path / "missing"), PathFilter(), lambda t, p: None, poll_interval=0.01
        )
        monkeypatch.setattr(watch, "fs_type", hung)
        try:
            path.start()
            assert path.state == "waiting"
            await until(lambda: calls, "a recheck stuck in statfs")
            assert path._recheck is None, "no next look is armed while one is running"
            # the loop keeps turning for many poll intervals while it hangs
            loop = asyncio.get_running_loop()
            until_at = loop.time() + 0.1
            await until(lambda: loop.time() > until_at, "0.1 s of loop time")
            assert len(calls) == 1
            release.set()
            await until(lambda: len(calls) >= 3, "more rechecks")  # released: the rechecks go on
        finally:
            release.set()
            path.close()
            hub.close()

    asyncio.run(main())
    assert threading.main_thread().name not in calls
    assert active[1] == 1


def test_daemon_with_a_statfs_that_never_answers_gets_ready_and_exits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without FUSE (tests/integration/test_hung_mount.py has the real hung mount):
    statfs is replaced by a call that never returns. The in-process daemon still gets
    ready (the look is given up after PROBE_TIMEOUT, shortened here), shows the path
    polled and why, serves a local inotify service meanwhile, and ``asyncio.run``
    returns at shutdown although the look's thread is still stuck: it is a daemon
    thread of its own, not one of the default executor, which asyncio.run waits for."""
    import reloadd.watch as watch

    stuck = tmp_path / "stuck"
    stuck.mkdir()
    local = tmp_path / "local"
    local.mkdir()
    release = threading.Event()
    real = watch.fs_type

    def fs_type(path: str) -> int | None:
        if path.startswith(str(stuck)):
            release.wait(60)  # "never": released only after asyncio.run returned
        return real(path)

    monkeypatch.setattr(watch, "fs_type", fs_type)
    monkeypatch.setattr(watch, "PROBE_TIMEOUT", 0.3)
    reasons: dict[str, str] = {}
    logs = tmp_path / "local.signals"

    async def main() -> None:
        services = f"""
            [services.stuck]
            watch = [{toml_value(str(stuck))}]
            pidfile = {toml_value(str(tmp_path / "x.pid"))}
            [services.local]
            watch = [{toml_value(str(local))}]
            backend = "inotify"
            command = {toml_value(recorder_command(logs))}
            """
        async with running(tmp_path, services) as daemon:
            for svc in daemon.status()["services"]:
                reasons[svc["name"]] = svc["backend_reason"]
            rec = Recording(logs)
            await until(rec.ready_pids, "the local recorder")
            write(local / "app.py", "v = 1\n")
            await until(lambda: rec.count() >= 1, "the local service reloaded")

    try:
        asyncio.run(main())
        assert any(t.name.startswith("statfs ") for t in threading.enumerate())  # still stuck
    finally:
        release.set()
    assert reasons["stuck"] == "statfs did not answer in 0.3s"
    assert reasons["local"] == "configured"


@pytest.mark.slow
def test_a_100k_file_poll_service_added_live_does_not_stall_others(
    start_reloadd: Callable[..., object], tmp_path: Path
) -> None:
    """A poll service over 100,000 files is added by a live config change: the re-read
    returns without waiting for its first scan (which runs in a thread), and an inotify
    service in the same daemon reloads promptly meanwhile and afterwards. The new
    service then reloads on a change of its own."""
    big = tmp_path / "big"
    for a in range(100):
        d = big / f"d{a:02}"
        d.mkdir(parents=True)
        for b in range(1000):
            (d / f"f{b:03}.py").touch()
    small = tmp_path / "small"
    small.mkdir()
    logs = {name: tmp_path / f"{name}.log" for name in ("big", "small")}
    head = f"[daemon]\nsocket = {toml_value(tmp_path / 'control.sock')}\n"
    small_toml = (
        f'[services.small]\nwatch = [{toml_value(small)}]\nbackend = "inotify"\n'
        f"command = {toml_value(recorder_command(logs['small']))}\n"
    )
    big_toml = (
        f'[services.big]\nwatch = [{toml_value(big)}]\nbackend = "poll"\n'
        f'poll_interval = "10ms"\ncommand = {toml_value(recorder_command(logs["big"]))}\n'
    )
    r = start_reloadd(head + small_toml)
    recs = {name: Recording(path) for name, path in logs.items()}
    wait_for(lambda: recs["small"].ready_pids(), what="the small recorder")
    config: Path = r.config  # type: ignore[attr-defined]
    tmp = config.with_name(".reloadd.toml.tmp")
    tmp.write_text(head + small_toml + big_toml)
    os.replace(tmp, config)  # the daemon watches its config: this adds "big"
    r.wait_log("config reloaded: 1 added, 0 changed, 0 removed")  # type: ignore[attr-defined]
    latencies = []
    for i in range(1, 6):
        write(small / f"change{i}.txt")
        started = time.monotonic()
        recs["small"].wait_count(i, timeout=10)
        latencies.append(time.monotonic() - started)
    r.wait_log("100000 files in 101 directories", timeout=120)  # type: ignore[attr-defined]
    log = r.log()  # type: ignore[attr-defined]
    first = float(log.split("100000 files in 101 directories (first scan ")[1].split("s)")[0])
    wait_for(lambda: recs["big"].ready_pids(), what="the big recorder")
    write(big / "d00" / "f000.py", "changed")
    recs["big"].wait_count(1, timeout=60)
    print(f"first scan {first:.3f}s; inotify reload latencies {latencies}")
    assert max(latencies) < 5.0, (latencies, first)
    assert recs["small"].count() == 5
    assert recs["big"].count() == 1


@pytest.mark.slow
def test_a_100k_file_scan_does_not_stall_other_services(
    start_reloadd: Callable[..., object], tmp_path: Path
) -> None:
    """While a poll service re-reads 100,000 files over and over, an inotify service in
    the same daemon still reloads promptly: the scan runs off the loop."""
    big = tmp_path / "big"
    for a in range(100):
        d = big / f"d{a:02}"
        d.mkdir(parents=True)
        for b in range(1000):
            (d / f"f{b:03}.py").touch()
    small = tmp_path / "small"
    small.mkdir()
    logs = {name: tmp_path / f"{name}.log" for name in ("big", "small")}
    text = (
        f'[services.big]\nwatch = [{toml_value(big)}]\nbackend = "poll"\n'
        f'poll_interval = "10ms"\ncommand = {toml_value(recorder_command(logs["big"]))}\n'
        f'[services.small]\nwatch = [{toml_value(small)}]\nbackend = "inotify"\n'
        f"command = {toml_value(recorder_command(logs['small']))}\n"
    )
    r = start_reloadd(text + f"[daemon]\nsocket = {toml_value(tmp_path / 'control.sock')}\n")
    # READY=1 waits for every baseline: the first scan is logged before it
    assert "100000 files in 101 directories" in r.log()  # type: ignore[attr-defined]
    recs = {name: Recording(path) for name, path in logs.items()}
    wait_for(lambda: all(rec.ready_pids() for rec in recs.values()), what="both recorders")
    log = r.log()  # type: ignore[attr-defined]
    first = float(log.split("100000 files in 101 directories (first scan ")[1].split("s)")[0])
    latencies = []
    for i in range(1, 6):
        write(small / f"change{i}.txt")
        started = time.monotonic()
        recs["small"].wait_count(i, timeout=10)
        latencies.append(time.monotonic() - started)
    write(big / "d00" / "f000.py", "changed")
    recs["big"].wait_count(1, timeout=60)
    # every scan of the big tree takes about ``first`` seconds and the next starts 10 ms
    # after it: the writes above landed during scans, and still reloaded promptly
    print(f"first scan {first:.3f}s; inotify reload latencies {latencies}")
    assert max(latencies) < 5.0, (latencies, first)
    assert recs["small"].count() == 5
    assert recs["big"].count() == 1
