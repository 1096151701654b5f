"""Mounts made, lost and made again *inside* a watched tree while reloadd runs.

inotify says nothing when a file system is mounted on a watched directory: the watch
stays on the directory underneath, blind to what the mount shows, so a write there was
never seen. The hub follows the mount table (POLLPRI on /proc/self/mountinfo) and walks
again what a mount or an unmount changed, reporting it as a change. A network/FUSE mount
whose daemon dies (ENOTCONN) stays polled while it is mounted, so a remount, or a server
that answers again, is seen too.

REAL mounts: bindfs (FUSE) and tmpfs, made in this test's own directory and always
lazily unmounted afterwards. Needs root, bindfs and FUSE (see ``bindfs_mount``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from reloadd_testing import (
    DEADLINE,
    Recording,
    Reloadd,
    bindfs_mount,
    recorder_command,
    require,
    run_reloadctl,
    toml_value,
    wait_for,
    write,
)

from reloadd.probe import mounts

REASON = "network mount (fuse): polled"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    write(root / "app.py", "v = 0\n")
    (root / "uploads").mkdir()  # the mount point, empty underneath
    return root


def _started(
    tmp_path: Path, tree: Path, start_reloadd: Callable[..., Reloadd]
) -> tuple[Reloadd, Recording]:
    rec = Recording(tmp_path / "site.signals")
    r = start_reloadd(
        f"[daemon]\nsocket = {toml_value(tmp_path / 'control.sock')}\n"
        f"[services.site]\nwatch = [{toml_value(tree)}]\n"
        'backend = "inotify"\npoll_interval = "200ms"\n'
        f"command = {toml_value(recorder_command(rec.path))}\n"
        'user = "root"\n'  # no owner check walks the tree unasked
    )
    wait_for(lambda: rec.ready_pids(), what="the recorder", detail=r.log)
    return r, rec


def _watch(tmp_path: Path) -> dict[str, Any]:
    done = run_reloadctl(tmp_path / "control.sock", "status", "--json")
    assert done.returncode == 0, done
    [site] = json.loads(done.stdout)["services"]
    watch: dict[str, Any] = site["watch"][0]
    return watch


def _mounted(path: Path) -> bool:
    return any(m.point == str(path) for m in mounts())


@contextlib.contextmanager
def _tmpfs(point: Path) -> Iterator[None]:
    require(os.geteuid() == 0, "root (to mount a tmpfs)")
    mount = shutil.which("mount")
    require(mount is not None, "mount (util-linux)")
    subprocess.run([mount, "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(point)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False, stderr=subprocess.DEVNULL)


def test_a_fuse_mount_made_after_the_walk_is_polled(
    tmp_path: Path, tree: Path, start_reloadd: Callable[..., Reloadd]
) -> None:
    """bindfs mounted on ``tree/uploads`` after READY=1: what it shows is a change (one
    reload), the subtree is polled from then on (the status says so), and a write made
    behind the mount's back (in its backing directory: no inotify event reaches the
    tree) is reloaded by that poll."""
    r, rec = _started(tmp_path, tree, start_reloadd)
    backing = tmp_path / "backing"
    write(backing / "old.txt", "old\n")
    with bindfs_mount(backing, tree / "uploads"):
        rec.wait_count(1)
        wait_for(lambda: _watch(tmp_path)["unwatched"] == {"uploads": REASON}, what="polled")
        assert _watch(tmp_path)["backend"] == "inotify+poll"
        wait_for(lambda: _watch(tmp_path)["poll"]["files"] >= 1, what="the first poll scan")
        write(backing / "new.txt", "new\n")
        rec.wait_count(2)
        wait_for(lambda: len(r.reloads("site")) >= 2, what="the reload line", detail=r.log)
        assert r.reloads("site")[1].paths == (str(tree / "uploads" / "new.txt"),), r.log()
    # unmounted: the empty directory underneath is on inotify again, and that is a change
    rec.wait_count(3)
    wait_for(lambda: _watch(tmp_path)["unwatched"] == {}, what="no subtree polled")
    write(tree / "uploads" / "under.txt", "x\n")
    rec.wait_count(4)


def test_a_fuse_mount_whose_daemon_died_is_seen_again_when_remounted(
    tmp_path: Path, tree: Path, start_reloadd: Callable[..., Reloadd]
) -> None:
    """The FUSE daemon is killed (every access: ENOTCONN): its files are gone (a
    reload), but the mount point stays polled; mounted again (a new bindfs on a new
    backing directory), its files are a change, and a write through it is reloaded."""
    first, second = tmp_path / "first", tmp_path / "second"
    write(first / "a.txt", "a\n")
    write(second / "b.txt", "b\n")
    with bindfs_mount(first, tree / "uploads") as mount:
        r, rec = _started(tmp_path, tree, start_reloadd)
        wait_for(lambda: _watch(tmp_path)["poll"]["files"] >= 1, what="the first poll scan")
        mount.proc.kill()
        mount.proc.wait(DEADLINE)
        rec.wait_count(1)  # a.txt is gone
        assert _watch(tmp_path)["unwatched"] == {"uploads": REASON}
        umount = shutil.which("fusermount3") or shutil.which("fusermount") or "umount"
        flag = "-uz" if "fusermount" in umount else "-l"
        subprocess.run([umount, flag, str(tree / "uploads")], check=True)
        wait_for(lambda: not _mounted(tree / "uploads"), what="the unmount")
        with bindfs_mount(second, tree / "uploads"):
            wait_for(lambda: len(rec.signals()) >= 2, what="reloads for the remount")
            wait_for(lambda: _watch(tmp_path)["unwatched"] == {"uploads": REASON}, what="poll")
            seen = len(rec.signals())
            wait_for(lambda: _watch(tmp_path)["poll"]["files"] >= 1, what="a poll scan")
            write(tree / "uploads" / "c.txt", "c\n")  # through the new mount
            rec.wait_count(seen + 1)
            assert str(tree / "uploads" / "c.txt") in r.reloads("site")[-1].paths


def test_a_local_mount_on_a_watched_directory_is_walked(
    tmp_path: Path, tree: Path, start_reloadd: Callable[..., Reloadd]
) -> None:
    """A tmpfs mounted on the watched ``tree/uploads``: the mount is a change, and a
    write into it is seen at once (inotify on the tmpfs, not on the directory it hides);
    after the unmount, so is a write into the directory underneath."""
    r, rec = _started(tmp_path, tree, start_reloadd)
    with _tmpfs(tree / "uploads"):
        rec.wait_count(1)
        write(tree / "uploads" / "on_tmpfs.py", "t = 1\n")
        rec.wait_count(2)
        wait_for(lambda: len(r.reloads("site")) >= 2, what="the reload line", detail=r.log)
        assert r.reloads("site")[1].paths == (str(tree / "uploads" / "on_tmpfs.py"),)
        assert _watch(tmp_path)["unwatched"] == {}  # local: inotify, not polled
    rec.wait_count(3)  # the unmount: on_tmpfs.py is gone
    write(tree / "uploads" / "under.py", "u = 1\n")
    rec.wait_count(4)
    assert r.reloads("site")[-1].paths == (str(tree / "uploads" / "under.py"),)
