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

import asyncio
import contextlib
import json
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
    require_mount,
    run_reloadctl,
    toml_value,
    until,
    wait_for,
    write,
)

from reloadd.probe import mounts
from reloadd.watch import WatchPath
from reloadd.watch.filters import PathFilter
from reloadd.watch.inotify import Hub, Tree

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
    require_mount()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(point)], check=True)
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
    require_mount()  # first: before a daemon is started for nothing
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
    require_mount()  # first: before a daemon is started for nothing
    first, second = tmp_path / "first", tmp_path / "second"
    write(first / "a.txt", "a\n")
    write(second / "b.txt", "b\n")
    uploads = tree / "uploads"

    def reloaded(path: Path) -> Callable[[], bool]:
        return lambda: any(str(path) in line.paths for line in r.reloads("site"))

    with bindfs_mount(first, uploads) as mount:
        r, _rec = _started(tmp_path, tree, start_reloadd)
        wait_for(lambda: _watch(tmp_path)["poll"]["files"] >= 1, what="the first poll scan")
        mount.proc.kill()
        mount.proc.wait(DEADLINE)
        wait_for(reloaded(uploads / "a.txt"), what="a.txt reported gone", detail=r.log)
        assert _watch(tmp_path)["unwatched"] == {"uploads": REASON}
        umount = shutil.which("fusermount3") or shutil.which("fusermount") or "umount"
        flag = "-uz" if "fusermount" in umount else "-l"
        subprocess.run([umount, flag, str(uploads)], check=True)
        wait_for(lambda: not _mounted(uploads), what="the unmount")
        with bindfs_mount(second, uploads):
            wait_for(reloaded(uploads / "b.txt"), what="the remount's b.txt", detail=r.log)
            assert _watch(tmp_path)["unwatched"] == {"uploads": REASON}
            write(uploads / "c.txt", "c\n")  # through the new mount
            wait_for(reloaded(uploads / "c.txt"), what="the write through it", detail=r.log)


def test_a_local_mount_on_a_watched_directory_is_walked(
    tmp_path: Path, tree: Path, start_reloadd: Callable[..., Reloadd]
) -> None:
    """A tmpfs mounted on the watched ``tree/uploads``: the mount is a change, and a
    write into it is seen at once (inotify on the tmpfs, not on the directory it hides);
    after the unmount, so is a write into the directory underneath."""
    require_mount()  # first: before a daemon is started for nothing
    r, _rec = _started(tmp_path, tree, start_reloadd)
    uploads = tree / "uploads"

    def reloaded(path: Path) -> Callable[[], bool]:
        return lambda: any(str(path) in line.paths for line in r.reloads("site"))

    with _tmpfs(uploads):
        wait_for(reloaded(uploads), what="the mount's reload", detail=r.log)
        write(uploads / "on_tmpfs.py", "t = 1\n")
        wait_for(reloaded(uploads / "on_tmpfs.py"), what="the write on the tmpfs", detail=r.log)
        assert _watch(tmp_path)["unwatched"] == {}  # local: inotify, not polled
        mounted_reloads = len(r.reloads("site"))
    wait_for(lambda: len(r.reloads("site")) > mounted_reloads, what="the unmount's reload")
    write(uploads / "under.py", "u = 1\n")
    wait_for(reloaded(uploads / "under.py"), what="the write underneath", detail=r.log)


# -- in process: a hub on a loop, real mounts, the reports as the tree makes them ----------


class _Watched:
    """A tree on a hub that follows the mount table; its reports, as made."""

    def __init__(self, root: Path) -> None:
        self.hub = Hub(asyncio.get_running_loop())
        self.reports: list[str] = []
        self.tree = Tree(self.hub, str(root), PathFilter(), self._sink)
        self.tree.start()

    def _sink(self, tree: Tree, paths: list[str]) -> None:
        self.reports += paths

    async def sees(self, path: Path, what: str) -> None:
        await until(lambda: str(path) in self.reports, what)

    def close(self) -> None:
        self.tree.close()
        self.hub.close()


def _mount(*argv: str) -> None:
    require_mount()
    subprocess.run(["mount", *argv], check=True)


def _umount(*points: Path) -> None:
    for point in points:
        subprocess.run(["umount", "-l", str(point)], check=False, stderr=subprocess.DEVNULL)


def test_a_bind_of_the_tree_onto_itself_unmounted_keeps_the_source_watched(
    tmp_path: Path,
) -> None:
    """``tree/a`` bound onto ``tree/b`` (the same directories, so the same watches),
    and ``a/new`` made meanwhile: after the unmount, writes into ``a``, ``a/sub`` and
    ``a/new`` are still seen, and named under ``a``; ``b/.git`` is gone with the bind;
    a file being written elsewhere (``c/upload.bin``, open) still holds the reload."""
    root = tmp_path / "tree"
    for d in ("a/sub", "a/.git", "b", "c"):
        (root / d).mkdir(parents=True)

    async def main() -> None:
        w = _Watched(root)
        try:
            with open(root / "c" / "upload.bin", "wb") as upload:  # noqa: ASYNC230 (held open)
                upload.write(b"partial")
                upload.flush()
                await until(lambda: w.tree.holding, "the upload open")
                _mount("--bind", str(root / "a"), str(root / "b"))
                await w.sees(root / "b", "the bind's report")
                assert "b/.git" in w.tree.vcs
                (root / "a" / "new").mkdir()
                await until(lambda: "b/new" in w.tree.dirs or "a/new" in w.tree.dirs, "new")
                _umount(root / "b")
                await until(lambda: w.tree.dirs.get("b") not in (None, w.tree.dirs["a"]), "b")
                assert w.tree.holding  # the upload is still open
                assert set(w.tree.vcs) == {"a/.git"}
            w.reports.clear()
            for path in ("y.txt", "sub/z.txt", "new/n.txt"):
                write(root / "a" / path)
                await w.sees(root / "a" / path, f"a write into a/{path}")
        finally:
            _umount(root / "b")
            w.close()

    asyncio.run(main())


def test_a_mount_over_an_ancestor_moves_the_anchor_onto_it(tmp_path: Path) -> None:
    """A tmpfs mounted on ``srv`` hides the watched ``srv/app`` (a change: it is gone);
    ``srv/app`` made on the tmpfs is found, through an anchor now on the tmpfs."""
    srv = tmp_path / "srv"
    app = srv / "app"
    write(app / "index.html")

    async def main() -> None:
        w = _Watched(app)
        try:
            _mount("-t", "tmpfs", "-o", "size=1m", "reloadd-test", str(srv))
            await until(lambda: w.tree.state == "waiting", "the root hidden")
            write(app / "new.html")
            await until(lambda: w.tree.state == "watching", "the root on the tmpfs")
            write(app / "later.html")
            await w.sees(app / "later.html", "a write into the new root")
        finally:
            _umount(srv)
            w.close()

    asyncio.run(main())


def test_a_file_bound_over_a_single_file_root_is_a_change(tmp_path: Path) -> None:
    """A ConfigMap-style file mount: another file bound over the watched file."""
    watched = write(tmp_path / "app.conf", "a = 1\n")
    other = write(tmp_path / "other.conf", "a = 2\n")

    async def main() -> None:
        w = _Watched(watched)
        try:
            _mount("--bind", str(other), str(watched))
            await w.sees(watched, "the file mount's report")
        finally:
            _umount(watched)
            w.close()

    asyncio.run(main())


def test_a_bind_stacked_on_another_of_the_same_file_system_is_a_change(
    tmp_path: Path,
) -> None:
    """A release switched by bind mounts (``releases/42`` bound over ``releases/41``
    on ``tree/cur``): same device, same point, same type; still a change, and the
    new release's directory is the one watched."""
    root = tmp_path / "tree"
    (root / "cur").mkdir(parents=True)
    r41, r42 = tmp_path / "releases" / "41", tmp_path / "releases" / "42"
    write(r41 / "app.py", "v = 41\n")
    write(r42 / "app.py", "v = 42\n")

    async def main() -> None:
        w = _Watched(root)
        try:
            _mount("--bind", str(r41), str(root / "cur"))
            await w.sees(root / "cur" / "app.py", "release 41")
            w.reports.clear()
            _mount("--bind", str(r42), str(root / "cur"))
            await w.sees(root / "cur" / "app.py", "release 42")
            w.reports.clear()
            write(r42 / "hotfix.py")  # (a bind shows the same inodes: inotify sees it)
            await w.sees(root / "cur" / "hotfix.py", "a write into release 42")
        finally:
            _umount(root / "cur", root / "cur")
            w.close()

    asyncio.run(main())


def test_a_polled_mount_point_removed_with_its_directory_stops_being_polled(
    tmp_path: Path,
) -> None:
    """bindfs on ``tree/x/uploads`` (polled), lazily unmounted and ``x`` removed: the
    subtree's poll stops and nothing is listed as unwatched any more."""
    root = tmp_path / "tree"
    backing = tmp_path / "backing"
    write(backing / "a.txt")
    (root / "x").mkdir(parents=True)

    async def main() -> None:
        path = WatchPath(
            Hub(asyncio.get_running_loop()),
            str(root),
            PathFilter(),
            lambda t, p: None,
            backend="inotify",
            poll_interval=0.05,
        )
        try:
            with bindfs_mount(backing, root / "x" / "uploads") as mount:
                path.start()
                path.primary.rescan()  # (mounted before the walk: sync the fixture's mount)
                await until(lambda: "x/uploads" in path.polled, "the mount polled")
                fusermount = shutil.which("fusermount3") or shutil.which("fusermount")
                argv = [fusermount, "-uz"] if fusermount else ["umount", "-l"]
                # both before the loop turns again: the removal is read before the hub is
                # told of the unmount, the order that left the poll running for ever
                subprocess.run([*argv, str(mount.mount)], check=True)  # noqa: ASYNC221
                shutil.rmtree(root / "x")
                await until(lambda: not path.polled, "the poll stopped")
                assert path.unwatched == {}
        finally:
            path.close()
            path.hub.close()

    asyncio.run(main())
