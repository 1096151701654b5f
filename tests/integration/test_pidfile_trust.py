"""Issue 8: pidfile trust (systemd's PIDFile= rules), with real victim processes.

An in-process ``Daemon`` is reloaded by hand (``Daemon.command``) once per forged
pidfile; the victim is a real recorder process. Each attack must be refused with a clear
status, and the victim must get nothing: after the attacks, one honest pidfile gives it
exactly one SIGHUP, so none of the earlier attempts reached it.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Recording, Reloadd, recorder_command, running, until, wait_for
from conftest import toml_value as _q
from reloadd import target

pytestmark = pytest.mark.slow

Spawn = Callable[..., "subprocess.Popen[bytes]"]
NOBODY = pwd.getpwnam("nobody")


def _service(app: Path, pidfile: Path, name: str = "app", extra: str = "") -> str:
    return f"""
        [services.{name}]
        watch = [{_q(app)}]
        pidfile = {_q(pidfile)}
        {extra}
        """


def _write(path: Path, text: str, uid: int = 0, mode: int = 0o644) -> None:
    path.write_text(text)
    os.chown(path, uid, -1)
    path.chmod(mode)


@pytest.fixture
def victim(tmp_path: Path, spawn: Spawn) -> tuple[int, Recording]:
    """A root-owned recorder in its own session: the process an attacker aims at."""
    log = tmp_path / "victim.log"
    rec = Recording(log)
    spawn(recorder_command(log))
    pids = until_sync(rec.ready_pids)
    return pids[0], rec


def until_sync(predicate: Callable[[], list[int]]) -> list[int]:
    value = wait_for(predicate, what="the victim to start")
    assert isinstance(value, list)
    return value


def test_forged_pidfiles_are_refused_and_the_victim_gets_no_signal(
    tmp_path: Path, victim: tuple[int, Recording], spawn: Spawn
) -> None:
    if os.geteuid() != 0:
        pytest.skip("the ownership rules apply when reloadd runs as root")
    victim_pid, rec = victim
    app = tmp_path / "app"
    app.mkdir()
    run = tmp_path / "run"  # root-owned, 0755: a trusted place
    run.mkdir()
    user_dir = tmp_path / "user-run"  # a service account's own directory
    user_dir.mkdir()
    os.chown(user_dir, NOBODY.pw_uid, NOBODY.pw_gid)
    sticky = tmp_path / "tmp"  # like /tmp
    sticky.mkdir()
    sticky.chmod(0o1777)
    trusted, in_user_dir, in_sticky = run / "app.pid", user_dir / "app.pid", sticky / "app.pid"

    stale = subprocess.Popen(["true"])
    stale.wait()
    in_my_group = subprocess.Popen(["sleep", "1000"])  # shares reloadd's (pytest's) group
    attacks: list[tuple[Path, str, int, int, str]] = [
        (trusted, "1\n", 0, 0o644, "holds pid 1: refusing to signal it"),
        (trusted, f"{os.getpid()}\n", 0, 0o644, "that is reloadd itself"),
        (trusted, f"{in_my_group.pid}\n", 0, 0o644, "in reloadd's own process group"),
        (trusted, f"{stale.pid}\n", 0, 0o644, f"pid {stale.pid} from {trusted} does not exist"),
        (trusted, "", 0, 0o644, f"pidfile {trusted} is empty"),
        (trusted, "12abc\n", 0, 0o644, "does not hold a pid: '12abc'"),
        (trusted, "99999999\n", 0, 0o644, "beyond the kernel's pid_max"),
        (
            in_user_dir,
            f"{victim_pid}\n",
            NOBODY.pw_uid,
            0o644,
            f"could have been written by nobody (uid {NOBODY.pw_uid}), "
            f"but pid {victim_pid} belongs to root (uid 0)",
        ),
        (
            in_sticky,
            f"{victim_pid}\n",
            NOBODY.pw_uid,
            0o644,
            f"could have been written by nobody (uid {NOBODY.pw_uid})",
        ),
        (trusted, f"{victim_pid}\n", 0, 0o666, "so anyone could have written it"),
    ]

    async def scenario() -> None:
        services = "".join(
            _service(app, path, name)
            for name, path in (("trusted", trusted), ("user", in_user_dir), ("tmp", in_sticky))
        )
        services += _service(app, trusted, "pinned", 'expect_user = "nobody"')
        async with running(tmp_path, services) as daemon:
            name_of = {trusted: "trusted", in_user_dir: "user", in_sticky: "tmp"}
            for path, text, uid, mode, message in attacks:
                _write(path, text, uid, mode)
                record = await daemon.command(name_of[path], "reload")
                assert record.result == "delivery-failed", (text, record)
                assert message in record.error, (text, record.error)
                status = daemon.status()["services"]
                svc = next(s for s in status if s["name"] == name_of[path])
                assert message in svc["last_error"]
                assert svc["state"] == "watching"

            _write(trusted, f"{victim_pid}\n")
            record = await daemon.command("pinned", "reload")
            assert record.result == "delivery-failed"
            assert "belongs to root (uid 0), not to expect_user nobody" in record.error

            assert rec.count() == 0
            record = await daemon.command("trusted", "reload")  # the honest pidfile
            assert record.result == "ok", record
            assert record.action == f"SIGHUP -> pid {victim_pid}"
            await until(lambda: rec.count() == 1, "the one honest SIGHUP")

    try:
        asyncio.run(scenario())
    finally:
        in_my_group.kill()
        in_my_group.wait()
    assert rec.signals() == [victim_pid]


def test_users_pidfile_is_believed_for_that_users_own_process(tmp_path: Path, spawn: Spawn) -> None:
    """The rule is not a blanket refusal: nobody's pidfile may name nobody's process."""
    if os.geteuid() != 0:
        pytest.skip("needs root to start a process as another user")
    app = tmp_path / "app"
    app.mkdir()
    user_dir = tmp_path / "user-run"
    user_dir.mkdir()
    os.chown(user_dir, NOBODY.pw_uid, NOBODY.pw_gid)
    pidfile = user_dir / "app.pid"
    worker = spawn(["sleep", "1000"], user=NOBODY.pw_uid, group=NOBODY.pw_gid, extra_groups=[])
    _write(pidfile, f"{worker.pid}\n", NOBODY.pw_uid)

    async def scenario() -> None:
        services = _service(app, pidfile, extra='expect_user = "nobody"')
        async with running(tmp_path, services) as daemon:
            record = await daemon.command("app", "reload")
            assert record.result == "ok", record

    asyncio.run(scenario())
    assert worker.wait(30) == -1  # sleep's default action for SIGHUP: it ended by it


def test_process_gone_between_reading_the_pid_and_signalling_is_an_error_not_a_crash(
    tmp_path: Path, spawn: Spawn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: this race cannot be caused reliably from outside, so the test uses
    the ``target.before_pidfile_signal`` seam to kill and reap the process inside the
    window. The pid was pinned with a pidfd, so nothing else can be hit; the attempt is a
    delivery-failed result, and the service keeps working."""
    app = tmp_path / "app"
    app.mkdir()
    pidfile = tmp_path / "app.pid"
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = spawn(recorder_command(first_log))
    until_sync(Recording(first_log).ready_pids)
    _write(pidfile, f"{first.pid}\n")

    def vanish(pid: int) -> None:
        assert pid == first.pid
        first.kill()
        first.wait()

    async def scenario() -> None:
        async with running(tmp_path, _service(app, pidfile)) as daemon:
            monkeypatch.setattr(target, "before_pidfile_signal", vanish)
            record = await daemon.command("app", "reload")
            assert record.result == "delivery-failed"
            assert "exited before the signal was sent" in record.error
            assert daemon.service("app").state.value == "watching"

            monkeypatch.setattr(target, "before_pidfile_signal", None)
            second = spawn(recorder_command(second_log))
            until_sync(Recording(second_log).ready_pids)
            _write(pidfile, f"{second.pid}\n")
            record = await daemon.command("app", "reload")
            assert record.result == "ok", record
            await until(lambda: Recording(second_log).count() == 1, "the SIGHUP")

    asyncio.run(scenario())


def test_real_reloadd_refuses_its_own_pid_on_a_file_change_and_keeps_running(
    tmp_path: Path, start_reloadd: Callable[..., Reloadd], victim: tuple[int, Recording]
) -> None:
    """File-triggered, in a real reloadd: a pidfile naming reloadd itself is refused (the
    log says why), reloadd lives on, and the next honest pidfile reloads the victim."""
    victim_pid, rec = victim
    app = tmp_path / "app"
    app.mkdir()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    pidfile = run_dir / "app.pid"
    _write(pidfile, "")
    r = start_reloadd(
        f"""
        [daemon]
        socket = {_q(tmp_path / "ctl.sock")}
        {_service(app, pidfile)}
        debounce = "100ms"
        """
    )
    _write(pidfile, f"{r.proc.pid}\n")
    (app / "index.php").write_text("<?php // v2\n")
    r.wait_log(f"pidfile {pidfile} holds pid {r.proc.pid}: that is reloadd itself")
    assert r.proc.poll() is None

    _write(pidfile, f"{victim_pid}\n")
    (app / "index.php").write_text("<?php // v3\n")
    rec.wait_count(1)
    wait_for(lambda: len(r.reloads("app")) == 1, what="the honest reload", detail=r.log)
    assert rec.signals() == [victim_pid]
