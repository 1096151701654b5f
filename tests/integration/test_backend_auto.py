"""``backend = "auto"`` on a real FUSE mount: bindfs shows a backing directory through
FUSE, and a write made directly into the backing directory reaches the mount without a
single inotify event on it — exactly the NFS situation (a write by another host). auto
must choose poll there, say why, and reload; a local path beside it stays on inotify.

Needs bindfs and FUSE (``apt-get install bindfs fuse3``; ``/dev/fuse``), and root to mount.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from reloadd_testing import Scenario, require, require_mount, require_tool, until, wait_for, write

import reloadd.watch
from reloadd.config import ServiceSpec
from reloadd.service import Service
from reloadd.watch import WatchPath, fs_type
from reloadd.watch.filters import PathFilter
from reloadd.watch.inotify import Hub

FUSE_MAGIC = 0x65735546


@contextlib.contextmanager
def bindfs_mount(backing: Path, mount: Path) -> Iterator[None]:
    """``backing`` shown at ``mount`` through bindfs (FUSE) for the ``with`` block."""
    bindfs = require_tool("bindfs", "bindfs fuse3")
    require(os.path.exists("/dev/fuse"), "/dev/fuse (FUSE kernel support)")
    require_mount()
    subprocess.run([bindfs, "--no-allow-other", str(backing), str(mount)], check=True)
    try:
        assert fs_type(str(mount)) == FUSE_MAGIC
        yield
    finally:
        umount = shutil.which("fusermount3") or shutil.which("fusermount")
        argv = [umount, "-u", "-z", str(mount)] if umount else ["umount", "-l", str(mount)]
        subprocess.run(argv, check=True)


@contextlib.asynccontextmanager
async def watching(
    root: str, reports: list[list[str]] | None, **keys: Any
) -> AsyncIterator[WatchPath]:
    """A started WatchPath on its own hub (the running loop's), its reports appended to
    ``reports``; closed, with the hub, afterwards."""
    hub = Hub(asyncio.get_running_loop())
    sink = (lambda t, p: reports.append(p)) if reports is not None else (lambda t, p: None)
    path = WatchPath(hub, root, PathFilter(), sink, **keys)
    try:
        path.start()
        yield path
    finally:
        path.close()
        hub.close()


@pytest.fixture
def fuse(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(backing, mount): ``backing`` shown at ``mount`` through bindfs; unmounted after."""
    backing, mount = tmp_path / "backing", tmp_path / "mnt"
    write(backing / "app.py", "version = 1\n")
    write(backing / "pkg" / "models.py", "x = 1\n")
    mount.mkdir()
    with bindfs_mount(backing, mount):
        yield backing, mount


def test_watch_path_on_fuse_chooses_poll(fuse: tuple[Path, Path], tmp_path: Path) -> None:
    """In-process: the per-path choice and what the status says."""
    _, mount = fuse
    hub = Hub()
    try:
        on_fuse = WatchPath(hub, str(mount), PathFilter(), lambda t, p: None)
        local = WatchPath(hub, str(tmp_path), PathFilter(), lambda t, p: None)
        missing = WatchPath(hub, str(mount / "not" / "yet"), PathFilter(), lambda t, p: None)
        forced = WatchPath(hub, str(mount), PathFilter(), lambda t, p: None, backend="inotify")
        assert (on_fuse.backend, on_fuse.reason) == ("poll", "auto: fuse")
        assert local.backend == "inotify"
        assert local.reason.startswith("auto: local (")
        assert (missing.backend, missing.reason) == ("poll", "auto: fuse")  # nearest ancestor
        assert (forced.backend, forced.reason) == ("inotify", "configured")
        on_fuse.start()
        status = on_fuse.describe()
        assert status["backend"] == "poll"
        assert status["backend_reason"] == "auto: fuse"
        assert status["poll"] == {"interval": 1.0, "subtrees": 0, "dirs": 2, "files": 2}
        on_fuse.close()
    finally:
        hub.close()


def test_service_snapshot_shows_a_mixed_service(fuse: tuple[Path, Path], tmp_path: Path) -> None:
    _, mount = fuse
    local = tmp_path / "local"
    local.mkdir()
    spec = ServiceSpec(name="app", source="test", watch=(str(mount), str(local)), command=("true",))
    hub = Hub()
    svc = Service(spec, hub)
    try:
        svc.arm()
        snap = svc.snapshot()
        assert snap["backend"] == "mixed"
        assert f"{mount}: poll (auto: fuse)" in snap["backend_reason"]
        assert f"{local}: inotify (auto: local (" in snap["backend_reason"]
        by_path = {w["path"]: (w["backend"], w["backend_reason"]) for w in snap["watch"]}
        assert by_path[str(mount)] == ("poll", "auto: fuse")
        assert by_path[str(local)][0] == "inotify"
    finally:
        svc._close()
        hub.close()


@pytest.mark.slow
def test_auto_polls_fuse_and_backing_writes_reload(
    fuse: tuple[Path, Path], scenario: Callable[..., Scenario]
) -> None:
    """The acceptance test: a write into the backing directory (invisible to inotify on
    the mount) reloads a service watching the mount with ``backend = "auto"``."""
    backing, mount = fuse
    s = scenario(mount, backend="auto", poll_interval="100ms")
    assert f"app: {mount}: poll (auto: fuse)" in s.reloadd.log()
    write(backing / "pkg" / "models.py", "x = 2\n")
    [line] = s.confirm(1)
    assert line.paths == (str(mount / "pkg" / "models.py"),)


@pytest.mark.slow
def test_inotify_on_fuse_misses_backing_writes(
    fuse: tuple[Path, Path], scenario: Callable[..., Scenario], tmp_path: Path
) -> None:
    """Why auto polls there: forced inotify on the mount sees no write to the backing
    directory. The watch on the mount is live: a write made through the mount after them
    reloads, and alone (the backing writes, had inotify seen them, would have been queued
    before it and reloaded first or with it); the sentinel's reload, from a local path,
    is the next and last one."""
    backing, mount = fuse
    local = tmp_path / "local"
    local.mkdir()
    s = scenario([mount, local], backend="inotify", sentinel_dir=local)
    assert f"app: {mount}: inotify (configured)" in s.reloadd.log()
    write(backing / "pkg" / "models.py", "x = 2\n")
    write(backing / "new.py")
    write(mount / "pkg" / "through.py")
    [line] = s.confirm(1)
    assert line.paths == (str(mount / "pkg" / "through.py"),)
    assert (mount / "new.py").exists()  # the backing writes did reach the mount


@pytest.mark.slow
def test_mixed_service_reloads_from_both_backends(
    fuse: tuple[Path, Path], scenario: Callable[..., Scenario], tmp_path: Path
) -> None:
    """One service, a FUSE path (polled) and a local path (inotify): both reload."""
    backing, mount = fuse
    local = tmp_path / "local"
    write(local / "settings.toml", "a = 1\n")
    s = scenario([mount, local], poll_interval="100ms", sentinel_dir=local)
    log = s.reloadd.log()
    assert f"app: {mount}: poll (auto: fuse)" in log
    assert f"app: {local}: inotify (auto: local (" in log
    write(local / "settings.toml", "a = 2\n")
    [first] = s.confirm(1)
    assert first.paths == (str(local / "settings.toml"),)
    write(backing / "app.py", "version = 2\n")
    wait_for(lambda: len(s.reloads()) >= 3, what="the reload for the FUSE write", detail=s._detail)
    assert s.reloads()[2].paths == (str(mount / "app.py"),)
    s.confirm(3)


# -- late mounts: a waiting auto path looks again -----------------------------------------


def test_late_fuse_mount_switches_a_waiting_path_to_poll(tmp_path: Path) -> None:
    """The watch path does not exist at start (its parent is a local directory: inotify);
    then a FUSE file system is mounted there, making no inotify event. The waiting path
    looks again, finds FUSE, switches to poll and reports the content."""
    backing, mount = tmp_path / "backing", tmp_path / "mnt"
    index = write(backing / "app" / "index.html")
    mount.mkdir()
    reports: list[list[str]] = []

    async def main() -> None:
        async with watching(str(mount / "app"), reports, poll_interval=0.02) as path:
            assert (path.state, path.backend) == ("waiting", "inotify")
            with bindfs_mount(backing, mount):
                await until(lambda: [p for p in reports if p], "a report")
                assert (path.backend, path.reason, path.state) == ("poll", "auto: fuse", "watching")
                assert [p for p in reports if p] == [[str(mount / "app" / index.name)]]
                path.close()  # before the unmount: no scan of a vanishing mount

    asyncio.run(main())


def test_late_local_mount_is_found_without_an_event(tmp_path: Path) -> None:
    """A tmpfs mounted over the directory that anchors a missing watch path: inotify on
    the covered directory sees nothing; the waiting path's second look finds it."""
    require_mount()
    mount = tmp_path / "mnt"
    mount.mkdir()
    reports: list[list[str]] = []
    mounted = False

    async def main() -> None:
        nonlocal mounted
        async with watching(str(mount / "app"), reports, poll_interval=0.02) as path:
            assert (path.state, path.backend) == ("waiting", "inotify")
            argv = ["mount", "-t", "tmpfs", "reloadd-test", str(mount)]
            await asyncio.to_thread(subprocess.run, argv, check=True)
            mounted = True
            index = write(mount / "app" / "index.html")
            await until(lambda: [p for p in reports if p], "a report")
            assert (path.backend, path.reason, path.state) == (
                "inotify",
                "auto: local (tmpfs)",
                "watching",
            )
            assert str(index) in [p for r in reports for p in r]

    try:
        asyncio.run(main())
    finally:
        if mounted:
            subprocess.run(["umount", str(mount)], check=True)


def test_a_root_swapped_onto_fuse_switches_to_poll(tmp_path: Path) -> None:
    """``current -> releases/a`` (local: inotify) is swapped to ``releases/b``, a FUSE
    mount (a release on NFS): the root is on another device now, so its file system is
    looked at again at once, poll is chosen, and a write into the backing directory
    (which inotify on the mount would never see) is reported."""
    release_a, backing, release_b = tmp_path / "a", tmp_path / "backing", tmp_path / "b"
    write(release_a / "app.py", "version = 1\n")
    write(backing / "app.py", "version = 2\n")
    release_b.mkdir()
    current = tmp_path / "current"
    current.symlink_to(release_a)
    reports: list[list[str]] = []

    async def main() -> None:
        async with watching(str(current), reports, poll_interval=0.02) as path:
            assert (path.backend, path.state) == ("inotify", "watching")
            with bindfs_mount(backing, release_b):
                (tmp_path / "current.new").symlink_to(release_b)
                os.replace(tmp_path / "current.new", current)  # the atomic swap
                await until(lambda: path.backend == "poll", "the switch to poll")
                assert path.reason == "auto: fuse"
                reports.clear()
                write(backing / "new.py", "x = 1\n")
                new = str(current / "new.py")
                await until(lambda: any(new in r for r in reports), "the write")
                # and back to a release on the local disk: inotify again (a poll kept
                # for ever would scan the whole tree every interval for nothing)
                (tmp_path / "current.new").symlink_to(release_a)
                os.replace(tmp_path / "current.new", current)
                await until(lambda: path.backend == "inotify", "the switch back to inotify")
                assert path.reason.startswith("auto: local (")
                path.close()  # before the unmount: no scan of a vanishing mount

    asyncio.run(main())


def test_a_look_under_way_when_the_root_moves_is_not_taken_for_its_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A waiting auto path is looked at every interval. Its ``current`` appears, onto a
    FUSE release, while a look (of the local ancestor) is still under way: that answer
    is about where the root was, so it is looked at again, and poll is chosen. The look
    is held by a patched ``look_async`` (that timing cannot be made from outside)."""
    backing, release = tmp_path / "backing", tmp_path / "release"
    write(backing / "app.py")
    release.mkdir()
    current = tmp_path / "current"
    real_look = reloadd.watch.look_async

    async def main() -> None:
        held, release_it = asyncio.Event(), asyncio.Event()

        async def look(root: str) -> Any:
            found = await real_look(root)
            if not held.is_set():  # the first periodic look: held until the move
                held.set()
                await release_it.wait()
            return found

        monkeypatch.setattr(reloadd.watch, "look_async", look)
        async with watching(str(current), None, poll_interval=0.02) as path:
            assert (path.state, path.backend) == ("waiting", "inotify")
            with bindfs_mount(backing, release):
                await until(held.is_set, "a look under way")
                current.symlink_to(release)
                await until(lambda: path.state == "watching", "the root found")
                release_it.set()
                await until(lambda: path.backend == "poll", "the switch to poll")
                assert path.reason == "auto: fuse"
                path.close()  # before the unmount: no scan of a vanishing mount

    asyncio.run(main())


# -- the environment -------------------------------------------------------------------------


def test_environment_forces_a_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    hub = Hub()
    try:
        monkeypatch.setenv("RELOADD_BACKEND", "poll")
        path = WatchPath(hub, str(tmp_path), PathFilter(), lambda t, p: None)
        assert (path.backend, path.reason) == ("poll", "RELOADD_BACKEND=poll")
        forced = WatchPath(hub, str(tmp_path), PathFilter(), lambda t, p: None, backend="inotify")
        assert (forced.backend, forced.reason) == ("inotify", "configured")
        monkeypatch.setenv("RELOADD_BACKEND", "fanotify")
        monkeypatch.setattr(reloadd.watch, "_env_warned", [])  # warned once per process
        with caplog.at_level(logging.WARNING, "reloadd.watch"):
            for _ in range(2):
                path = WatchPath(hub, str(tmp_path), PathFilter(), lambda t, p: None)
                assert path.reason.startswith("auto: local (")
        assert caplog.text.count("RELOADD_BACKEND='fanotify' is not one of") == 1
    finally:
        hub.close()
