"""A hung mount must not stop reloadd: on a REAL hung FUSE mount.

bindfs shows a backing directory through FUSE; stopping the bindfs process (SIGSTOP) makes
every request to the mount wait for an answer that does not come, exactly like a dead NFS
server or a stuck sshfs: ``statfs`` and ``stat`` of a path on it block for ever. reloadd
looks at watch paths in daemon threads and gives up after ``PROBE_TIMEOUT`` (5 s): the
path is polled, the status says "statfs did not answer in 5s", READY=1 is sent, live
config changes and the other services go on, and SIGTERM still ends reloadd.

The watched path is ``mnt/app``, a directory that nothing looks up before the mount is
stopped: the kernel has no cached entry for it, so its lookup waits for bindfs too.

Needs bindfs and FUSE (``apt-get install bindfs fuse3``; ``/dev/fuse``), and root to
mount. The bindfs process is always continued and the mount lazily unmounted afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from reloadd_testing import (
    DEADLINE,
    BindMount,
    Recording,
    Reloadd,
    bindfs_mount,
    gone,
    recorder_command,
    run_reloadctl,
    toml_value,
    until,
    wait_for,
    write,
)

from reloadd import watch
from reloadd.watch import PROBE_TIMEOUT, WatchPath, fs_type, look_all
from reloadd.watch.filters import PathFilter
from reloadd.watch.inotify import Hub

REASON = f"statfs did not answer in {PROBE_TIMEOUT:g}s"
# a stop must not wait for a look stuck in the hung mount: well under the fixture's 30 s
STOP_WITHIN = 15.0


@dataclass
class HungMount:
    backing: Path
    mount: Path
    bind: BindMount

    @property
    def app(self) -> Path:
        return self.mount / "app"  # never looked up before the stop: no cached entry

    def resume(self) -> None:
        self.bind.resume()


@pytest.fixture
def hung(tmp_path: Path) -> Iterator[HungMount]:
    """A bindfs (FUSE) mount whose daemon is stopped: requests to it block until the
    teardown continues it (and unmounts it, and ends bindfs)."""
    backing, mount = tmp_path / "backing", tmp_path / "mnt"
    write(backing / "app" / "app.py", "version = 1\n")
    with bindfs_mount(backing, mount) as bind:
        bind.stop()
        yield HungMount(backing, mount, bind)


def _answers(fn: Callable[[], object], within: float) -> bool:
    """Whether ``fn()`` returns within ``within`` seconds (run in a daemon thread)."""
    done = threading.Event()
    threading.Thread(target=lambda: (fn(), done.set()), daemon=True).start()
    return done.wait(within)


def test_the_stopped_mount_really_hangs(hung: HungMount) -> None:
    """The premise: statfs and stat on the stopped mount do not answer (a path beside it
    does), and they answer again once bindfs is continued."""
    assert not _answers(lambda: fs_type(str(hung.mount)), 0.5)
    assert not _answers(lambda: os.path.exists(hung.app), 0.5)
    assert _answers(lambda: os.stat(hung.backing), DEADLINE)


def test_watch_path_on_a_hung_mount_polls_and_recovers(hung: HungMount) -> None:
    """In-process: the look runs off the loop (a ticker keeps turning while it waits),
    the path is polled with the reason, its baseline does not hold anyone up; once the
    mount answers again the next look says why it is polled now (auto: fuse) and its
    first scan lands."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        hub = Hub(loop)
        ticks = [0]
        most = [0.0]  # the longest gap between two ticks of the loop

        async def ticker() -> None:
            last = loop.time()
            while True:
                await asyncio.sleep(0.01)
                now = loop.time()
                most[0] = max(most[0], now - last)
                last = now
                ticks[0] += 1

        tick = asyncio.ensure_future(ticker())
        started = loop.time()
        looks = await look_all([(str(hung.app), "auto")])
        waited = loop.time() - started
        assert looks == {str(hung.app): None}
        path = WatchPath(
            hub, str(hung.app), PathFilter(), lambda t, p: None, poll_interval=0.05, looks=looks
        )
        try:
            assert (path.backend, path.reason) == ("poll", REASON)
            path.start()
            await asyncio.wait_for(path.baseline(), 1)  # at once: its scan is stuck too
            assert path.state == "waiting"
            assert path.describe()["backend_reason"] == REASON
            assert PROBE_TIMEOUT * 0.9 <= waited < PROBE_TIMEOUT + DEADLINE
            assert most[0] < 1.0, f"the loop stalled for {most[0]:.2f}s"
            hung.resume()
            await until(lambda: path.reason == "auto: fuse", "the look answering again")
            await until(lambda: path.state == "watching", "the first scan")
            assert path.backend == "poll"
            assert ticks[0] > 0
        finally:
            tick.cancel()
            path.close()
            hub.close()

    asyncio.run(main())


def _ctl(sock: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_reloadctl(sock, *args, timeout=DEADLINE + PROBE_TIMEOUT)


def _status(sock: Path) -> dict[str, Any]:
    done = _ctl(sock, "status", "--json")
    assert done.returncode in (0, 3, 1), done
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def _service(status: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(s for s in status["services"] if s["name"] == name)
    return found


def test_reloadd_on_a_hung_mount_starts_reloads_others_and_stops(
    hung: HungMount, tmp_path: Path, start_reloadd: Callable[..., Reloadd]
) -> None:
    """The real daemon, with one service on the hung mount and one on a local disk:
    config validation warns and goes on, READY=1 comes, the status shows the hung path
    polled and why, the local service reloads, a service added on the hung mount by a
    live config change is answered (not hung) and SIGTERM ends reloadd with 0 while
    the mount is still hung."""
    local = tmp_path / "local"
    write(local / "app.py", "v = 0\n")
    sock = tmp_path / "control.sock"
    rec = Recording(tmp_path / "local.signals")

    def config(*extra: str) -> str:
        text = (
            f"[daemon]\nsocket = {toml_value(str(sock))}\n"
            f"[services.local]\nwatch = [{toml_value(str(local))}]\n"
            f"command = {toml_value(recorder_command(rec.path))}\n"
            # a pidfile target runs nothing as root: the hung tree needs no owner check
            f"[services.onmount]\nwatch = [{toml_value(str(hung.app))}]\n"
            f"pidfile = {toml_value(str(tmp_path / 'nobody.pid'))}\n"
        )
        return text + "".join(extra)

    started = time.monotonic()
    r = start_reloadd(config())
    assert time.monotonic() - started < DEADLINE
    log = r.log()
    assert f"services.onmount.watch: {hung.app}: stat did not answer" in log, log
    assert f"onmount: {hung.app}: statfs did not answer in" in log, log
    status = _service(_status(sock), "onmount")
    assert status["backend"] == "poll"
    assert status["backend_reason"] == REASON
    assert status["watch"][0]["state"] == "waiting"
    shown = _ctl(sock, "status", "onmount")
    assert REASON in shown.stdout, shown

    # the loop serves the local service meanwhile
    wait_for(lambda: rec.ready_pids(), what="the local recorder")
    write(local / "app.py", "v = 1\n")
    rec.wait_count(1)

    # a service added live on the hung mount: the re-read answers, and says the same
    extra = (
        f"[services.later]\nwatch = [{toml_value(str(hung.mount / 'later'))}]\n"
        f"pidfile = {toml_value(str(tmp_path / 'nobody.pid'))}\n"
    )
    r.config.write_text(config(extra))
    reread = _ctl(sock, "reload-config")
    assert reread.returncode == 0, reread
    assert _service(_status(sock), "later")["backend_reason"] == REASON

    # still hung: SIGTERM ends reloadd, without waiting for the stuck threads
    assert not _answers(lambda: fs_type(str(hung.mount)), 0.2)
    stopping = time.monotonic()
    assert r.terminate(within=STOP_WITHIN) == 0, r.log()
    assert time.monotonic() - stopping < STOP_WITHIN


def test_check_of_a_config_on_a_hung_mount(hung: HungMount, tmp_path: Path) -> None:
    """``reloadd --check``: a watch path that does not answer is a warning and the config
    is OK; a service that would run its command as root over it is refused (who can
    write the tree cannot be checked), and says how to fix it. Neither hangs."""

    def check(service: str) -> subprocess.CompletedProcess[str]:
        cfg = tmp_path / "check.toml"
        cfg.write_text(f"[services.onmount]\nwatch = [{toml_value(str(hung.app))}]\n{service}")
        return subprocess.run(
            [sys.executable, "-m", "reloadd", "-c", str(cfg), "--check"],
            capture_output=True,
            text=True,
            timeout=DEADLINE + PROBE_TIMEOUT,
        )

    ok = check(f"pidfile = {toml_value(str(tmp_path / 'x.pid'))}\n")
    assert ok.returncode == 0, ok
    assert f"{hung.app}: stat did not answer in {PROBE_TIMEOUT:g}s" in ok.stderr
    refused = check('command = ["true"]\n')
    assert refused.returncode == (0 if os.geteuid() != 0 else 1), refused
    assert "who can write it cannot be checked" in refused.stderr
    assert 'user = "root"' in refused.stderr


def test_config_validation_does_not_wait_twice_for_a_hung_path(
    hung: HungMount, tmp_path: Path
) -> None:
    """In-process: load() gives up on the stat after PROBE_TIMEOUT; a look at the same
    path right after (the daemon arming it) does not wait another PROBE_TIMEOUT."""
    from reloadd.config import load

    cfg = tmp_path / "r.toml"
    cfg.write_text(
        f"[services.onmount]\nwatch = [{toml_value(str(hung.app))}]\n"
        f"pidfile = {toml_value(str(tmp_path / 'x.pid'))}\n"
    )
    started = time.monotonic()
    config = load(cfg)
    took = time.monotonic() - started
    assert PROBE_TIMEOUT * 0.9 <= took < PROBE_TIMEOUT + DEADLINE
    assert any("stat did not answer" in w for w in config.warnings), config.warnings
    started = time.monotonic()
    assert watch.look_now(str(hung.app)) is None
    assert time.monotonic() - started < 1.0


def test_sigterm_during_a_reread_stuck_in_a_hung_mount_below_the_tree(
    tmp_path: Path, start_reloadd: Callable[..., Reloadd]
) -> None:
    """Running as root, a re-read checks who can write a watched tree that commands run
    over (config.root_over_writable_tree walks it), and that walk enters a FUSE mount
    below the tree; with the mount hung it never returns. SIGTERM must still end reloadd
    (the re-read is still reading, nothing of it applied: it is dropped) and stop the
    supervised command."""
    app = tmp_path / "app"
    write(app / "app.py", "v = 0\n")
    backing = tmp_path / "backing"
    write(backing / "upload.bin", "x")
    rec = Recording(tmp_path / "app.signals")
    with bindfs_mount(backing, app / "uploads") as bind:
        text = (
            f"[daemon]\nsocket = {toml_value(str(tmp_path / 'control.sock'))}\n"
            f"[services.app]\nwatch = [{toml_value(str(app))}]\n"
            f"command = {toml_value(recorder_command(rec.path))}\n"
        )
        r = start_reloadd(text)
        [pid] = wait_for(lambda: rec.ready_pids(), what="the command")
        bind.stop()
        seen = len(r.read_notify())
        r.config.write_text(text + 'debounce = "50ms"\n')
        r.proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: any("RELOADING=1" in m.split("\n") for m in r.read_notify()[seen:]),
            what="the re-read to begin",
        )
        assert r.terminate(within=STOP_WITHIN) == 0, r.log()
        assert "config reloaded" not in r.log()
        wait_for(lambda: gone(pid), what="the command to be stopped")


def test_check_of_commands_over_a_tree_with_a_hung_mount_below(tmp_path: Path) -> None:
    """As root, who can write a tree that commands run over is checked by walking it; a
    FUSE mount below the tree that does not answer is not walked into (the check would
    hang): the service is refused, naming the mount and the fix, within the deadline;
    with ``user`` set the check is not made and the config is OK."""
    app = tmp_path / "app"
    write(app / "app.py", "v = 0\n")
    backing = tmp_path / "backing"
    write(backing / "upload.bin", "x")

    def check(extra: str) -> subprocess.CompletedProcess[str]:
        cfg = tmp_path / "check.toml"
        cfg.write_text(
            f'[services.app]\nwatch = [{toml_value(str(app))}]\ncommand = ["true"]\n{extra}'
        )
        return subprocess.run(
            [sys.executable, "-m", "reloadd", "-c", str(cfg), "--check"],
            capture_output=True,
            text=True,
            timeout=DEADLINE + PROBE_TIMEOUT,
        )

    with bindfs_mount(backing, app / "uploads") as bind:
        bind.stop()
        refused = check("")
        assert refused.returncode == 1, refused
        assert f"{app / 'uploads'} (a fuse" in refused.stderr, refused.stderr
        assert "who can write it cannot be checked" in refused.stderr
        assert 'user = "root"' in refused.stderr
        ok = check('user = "root"\n')
        assert ok.returncode == 0, ok
