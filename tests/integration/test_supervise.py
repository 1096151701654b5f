"""Issue 8: supervision of ``command`` targets, with real processes.

The crash loop and ``restart`` run in an in-process ``Daemon`` driven through
``Daemon.command`` (reloadctl's path into the daemon); the process-state checks read
/proc of the supervised child from the outside.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import DEADLINE, running, until, wait_for
from conftest import toml_value as _q
from reloadd.protocol import CommandError

pytestmark = pytest.mark.slow

CRASHER = """\
import os, signal, sys, time
log, healthy = sys.argv[1], sys.argv[2]
with open(log, "a") as f:
    f.write(f"START {os.getpid()} {time.monotonic()}\\n")
if os.path.exists(healthy):
    while True:
        signal.pause()
sys.exit(3)
"""


def _starts(log: Path) -> list[tuple[int, float]]:
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        _, pid, when = line.split()
        out.append((int(pid), float(when)))
    return out


def _append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


def _environ(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")


def _status_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    raise AssertionError(f"no {name} in /proc/{pid}/status")


def test_crash_loop_backs_off_then_fails_until_restart(tmp_path: Path) -> None:
    """1. a command that exits 3 at once is restarted after 0.1, 0.2, 0.4, 0.8 s;
    2. its 5th start within 60 s is the last: the service is failed, nothing scheduled;
    3. a reload meanwhile fails with the reason; 4. ``restart`` brings it back."""
    app = tmp_path / "app"
    app.mkdir()
    log = tmp_path / "starts.log"
    healthy = tmp_path / "healthy"

    async def scenario() -> None:
        async with running(
            tmp_path,
            f"""
            [services.app]
            watch = [{_q(app)}]
            command = {_q([sys.executable, "-c", CRASHER, log, healthy])}
            restart = "on-failure"
            restart_delay = "100ms"
            """,
        ) as daemon:

            def status() -> dict[str, object]:
                svc: dict[str, object] = daemon.status()["services"][0]
                return svc

            await until(lambda: status()["state"] == "failed", "the service to fail")
            target = status()["target"]
            assert isinstance(target, dict)
            assert target["starts"] == 5
            assert target["restart_in"] is None  # nothing scheduled: it stopped restarting
            assert "exited with status 3" in target["failed"]
            assert "started 5 times within 60s (the start limit)" in target["failed"]
            starts = _starts(log)
            assert len(starts) == 5
            gaps = [b[1] - a[1] for a, b in itertools.pairwise(starts)]
            for gap, delay in zip(gaps, (0.1, 0.2, 0.4, 0.8), strict=True):
                assert gap >= delay, gaps
            assert gaps == sorted(gaps), gaps

            record = await daemon.command("app", "reload")
            assert record.result == "delivery-failed"
            assert "is not running" in record.error
            assert "start limit" in record.error

            healthy.touch()
            result = await daemon.command("app", "restart")
            assert result.startswith("started: pid ")
            assert status()["state"] == "watching"
            await until(lambda: len(_starts(log)) == 6, "the restarted command to run")
            pid = _starts(log)[-1][0]
            target = status()["target"]
            assert isinstance(target, dict)
            assert target["pid"] == pid
            assert target["failed"] is None

    asyncio.run(scenario())


def test_restart_no_and_on_failure_after_a_clean_exit_do_not_restart(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()

    async def scenario() -> None:
        async with running(
            tmp_path,
            f"""
            [services.crashes]
            watch = [{_q(app)}]
            command = ["sh", "-c", "exit 7"]
            restart = "no"
            [services.done]
            watch = [{_q(app)}]
            command = ["true"]
            restart = "on-failure"
            """,
        ) as daemon:
            crashes, done = daemon.service("crashes"), daemon.service("done")
            await until(lambda: crashes.state.value == "failed", "restart=no to fail")
            assert (
                "exited with status 7; not restarted (restart = 'no')"
                in (crashes.target.describe()["failed"])
            )
            await until(
                lambda: done.target.describe()["last_exit"] == "exited with status 0",
                "the clean exit",
            )
            assert done.state.value == "watching"
            assert done.target.describe()["starts"] == 1
            assert done.target.describe()["restart_in"] is None

    asyncio.run(scenario())


def test_command_that_cannot_be_executed_reports_the_os_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = tmp_path / "app"
    app.mkdir()
    not_exec = tmp_path / "not-executable"
    not_exec.write_text("#!/bin/sh\n")
    not_exec.chmod(0o644)
    missing = tmp_path / "no-such-binary"

    async def scenario() -> None:
        async with running(
            tmp_path,
            f"""
            [services.missing]
            watch = [{_q(app)}]
            command = [{_q(missing)}]
            restart = "no"
            [services.denied]
            watch = [{_q(app)}]
            command = [{_q(not_exec)}]
            restart = "no"
            [services.nodir]
            watch = [{_q(app)}]
            command = ["true"]
            working_directory = {_q(tmp_path / "no-such-dir")}
            restart = "no"
            """,
        ) as daemon:
            for name in ("missing", "denied", "nodir"):
                svc = daemon.service(name)
                await until(lambda s=svc: s.state.value == "failed", f"{name} to fail")
            failed = {n: daemon.service(n).target.describe()["failed"] for n in daemon.services}
            assert failed["missing"].startswith(
                f"could not start {missing}: No such file or directory"
            )
            assert failed["denied"].startswith(f"could not start {not_exec}: Permission denied")
            assert "No such file or directory" in failed["nodir"]
            assert str(tmp_path / "no-such-dir") in failed["nodir"]

            with pytest.raises(CommandError, match="restart failed: could not start"):
                await daemon.command("missing", "restart")
            assert daemon.service("missing").state.value == "failed"  # not stuck reloading

    asyncio.run(scenario())
    assert "Traceback" not in caplog.text


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory an unprivileged user can enter (tmp_path's parents are root-only)."""
    path = Path(tempfile.mkdtemp(prefix="reloadd-test-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_command_and_check_run_with_the_process_keys(
    tmp_path: Path, public_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """user/group (supplementary groups initialised), working directory, environment."""
    if os.geteuid() != 0:
        pytest.skip("changing user needs root")
    monkeypatch.setenv("LISTEN_FDS", "3")  # socket activation variables are not passed on
    nobody = pwd.getpwnam("nobody")
    groups = sorted(os.getgrouplist("nobody", nobody.pw_gid))
    app = tmp_path / "app"
    app.mkdir()
    probe = 'echo "uid=$(id -u) gid=$(id -g) groups=$(id -G) cwd=$(pwd) env=$APP_ENV"; exit 1'

    async def scenario() -> None:
        async with running(
            tmp_path,
            f"""
            [services.app]
            watch = [{_q(app)}]
            command = ["sleep", "1000"]
            check = ["sh", "-c", {_q(probe)}]
            user = "nobody"
            working_directory = {_q(public_dir)}
            environment = {{ APP_ENV = "staging" }}
            """,
        ) as daemon:
            svc = daemon.service("app")
            pid = await until(lambda: svc.target.describe()["pid"], "sleep to start")
            uid, gid = nobody.pw_uid, nobody.pw_gid
            assert _status_field(pid, "Uid").split() == [str(uid)] * 4
            assert _status_field(pid, "Gid").split() == [str(gid)] * 4
            assert sorted(int(g) for g in _status_field(pid, "Groups").split()) == groups
            assert os.readlink(f"/proc/{pid}/cwd") == str(public_dir)
            env = _environ(pid)
            assert b"APP_ENV=staging" in env
            assert not any(e.startswith(b"LISTEN_") for e in env)

            record = await daemon.command("app", "reload")  # the probe fails on purpose
            want = f"uid={uid} gid={gid} groups={' '.join(map(str, groups))} cwd={public_dir}"
            assert f"{want} env=staging" in record.output

    asyncio.run(scenario())


LAUNCHER = """\
import os, signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM})
signal.signal(signal.SIGUSR2, signal.SIG_IGN)
signal.signal(signal.SIGQUIT, signal.SIG_IGN)
fd = os.open("/dev/null", os.O_RDONLY)
os.set_inheritable(fd, True)
with open(sys.argv[2], "w") as f:
    f.write(open("/proc/self/status").read())
os.execv(sys.executable, [sys.executable, "-m", "reloadd", "-c", sys.argv[1]])
"""


def test_supervised_child_starts_with_clean_signal_state_and_only_fds_0_to_2(
    tmp_path: Path,
) -> None:
    """reloadd started with blocked and ignored signals and a leaked fd: the child has
    none of them (read from /proc/PID/status and /proc/PID/fd)."""
    app = tmp_path / "app"
    app.mkdir()
    cfg = tmp_path / "reloadd.toml"
    cfg.write_text(
        textwrap.dedent(
            f"""
            [daemon]
            socket = {_q(tmp_path / "ctl.sock")}
            [services.app]
            watch = [{_q(app)}]
            command = ["sleep", "1000"]
            """
        )
    )
    log = tmp_path / "reloadd.log"
    launcher_status = tmp_path / "launcher-status"
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, str(cfg), str(launcher_status)],
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            env=env,
        )
    try:
        line = wait_for(
            lambda: next(
                (x for x in log.read_text().splitlines() if "started sleep 1000 (pid " in x), None
            ),
            DEADLINE,
            "the supervised sleep to start",
            log.read_text,
        )
        assert isinstance(line, str)
        pid = int(line.rsplit("(pid ", 1)[1].rstrip(")"))
        before = dict(x.split(":\t", 1) for x in launcher_status.read_text().splitlines())
        assert int(before["SigBlk"], 16) & (1 << (signal.SIGUSR1 - 1))  # the setup worked...
        assert int(before["SigIgn"], 16) & (1 << (signal.SIGUSR2 - 1))
        assert int(_status_field(pid, "SigBlk"), 16) == 0  # ...and the child is clean
        assert int(_status_field(pid, "SigIgn"), 16) == 0
        assert sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd")) == [0, 1, 2]
        assert os.getsid(pid) == pid
    finally:
        proc.send_signal(signal.SIGINT)  # SIGTERM is blocked in this reloadd on purpose
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log.read_text()


def test_config_change_revives_a_failed_command(tmp_path: Path) -> None:
    """Only ``restart`` or a config change leaves ``failed``; here, a config change."""
    app = tmp_path / "app"
    app.mkdir()
    log = tmp_path / "starts.log"
    healthy = tmp_path / "healthy"
    service = f"""
        [services.app]
        watch = [{_q(app)}]
        command = {_q([sys.executable, "-c", CRASHER, log, healthy])}
        restart_delay = "0s"
        """

    async def scenario() -> None:
        async with running(tmp_path, service) as daemon:
            await until(lambda: daemon.service("app").state.value == "failed", "the failure")
            assert len(_starts(log)) == 5
            healthy.touch()
            _append(Path(daemon.config.path), 'debounce = "50ms"\n')
            applied, message = await daemon.reload_config()
            assert applied, message
            await until(lambda: len(_starts(log)) == 6, "the command to start again")
            svc = daemon.service("app")
            await until(lambda: svc.target.describe()["pid"] == _starts(log)[-1][0], "pid")
            assert svc.state.value == "watching"

    asyncio.run(scenario())
