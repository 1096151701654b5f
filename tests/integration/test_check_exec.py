"""Issue 8: the check gate and ``action = "exec"``, with real processes.

Real reloadd processes (``start_reloadd``) prove the file-triggered path; an in-process
``Daemon`` (driven with ``Daemon.command`` while reloadctl is not there yet) proves what
the status shows. Absence of a signal is always followed by a later positive fact: once
the check passes, exactly one SIGHUP arrives, so none came from the failed attempt.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Recording, Reloadd, gone, recorder_command, running, until, wait_for
from conftest import toml_value as _q

pytestmark = pytest.mark.slow

CHECK = """\
import sys
text = open(sys.argv[1]).read()
print("checking", sys.argv[1])
if "broken" in text:
    print("app.conf:1: unexpected token 'broken'", file=sys.stderr)
    sys.exit(1)
"""


# -- file-triggered, real reloadd ---------------------------------------------------------


def test_failing_check_blocks_the_reload_until_the_file_is_fixed(
    tmp_path: Path, start_reloadd: Callable[..., Reloadd]
) -> None:
    """1. a broken save: the check fails, the log shows its output, no SIGHUP;
    2. the fixed save: exactly one SIGHUP; 3. another save: exactly one more."""
    app = tmp_path / "app"
    app.mkdir()
    conf = app / "app.conf"
    conf.write_text("good\n")
    log = tmp_path / "signals.log"
    r = start_reloadd(
        f"""
        [daemon]
        socket = {_q(tmp_path / "ctl.sock")}
        [services.app]
        watch = [{_q(app)}]
        command = {_q(recorder_command(log))}
        check = {_q([sys.executable, "-c", CHECK, conf])}
        debounce = "200ms"
        """
    )
    rec = Recording(log)
    wait_for(rec.ready_pids, what="the recorder to start", detail=r.log)

    conf.write_text("broken\n")
    r.wait_log("check failed: ")
    r.wait_log("app:   | app.conf:1: unexpected token 'broken'")
    assert "not reloaded" in r.log()
    assert rec.count() == 0

    conf.write_text("good again\n")
    wait_for(lambda: len(r.reloads("app")) >= 1, what="the reload after the fix", detail=r.log)
    rec.wait_count(1)
    assert rec.count() == 1, rec.lines()

    conf.write_text("good, third save\n")
    wait_for(lambda: len(r.reloads("app")) >= 2, what="the next reload", detail=r.log)
    rec.wait_count(2)
    assert rec.count() == 2, rec.lines()
    assert r.log().count("check failed: ") == 1


def test_exec_runs_once_per_settled_change(
    tmp_path: Path, start_reloadd: Callable[..., Reloadd]
) -> None:
    """A burst of writes is one exec run (its exit status logged); the next change another."""
    app = tmp_path / "app"
    app.mkdir()
    runs = tmp_path / "exec-runs.log"
    log = tmp_path / "signals.log"
    r = start_reloadd(
        f"""
        [daemon]
        socket = {_q(tmp_path / "ctl.sock")}
        [services.app]
        watch = [{_q(app)}]
        command = {_q(recorder_command(log))}
        action = "exec"
        exec = {_q(["sh", "-c", 'echo "run $$" >> "$0"; echo reloaded-by-exec', runs])}
        debounce = "300ms"
        """
    )
    rec = Recording(log)
    wait_for(rec.ready_pids, what="the recorder to start", detail=r.log)

    for i in range(10):
        (app / f"file{i}.php").write_text(f"<?php // {i}\n")
    wait_for(lambda: len(r.reloads("app")) >= 1, what="the exec reload", detail=r.log)
    (first,) = r.reloads("app")
    assert first.count == 10
    assert first.action.endswith(": exited with status 0")
    assert len(runs.read_text().splitlines()) == 1

    (app / "file0.php").write_text("<?php // again\n")
    wait_for(lambda: len(r.reloads("app")) >= 2, what="the second exec reload", detail=r.log)
    assert len(runs.read_text().splitlines()) == 2
    assert rec.count() == 0  # exec replaces the signal


def test_check_as_root_over_a_tree_a_user_can_write_is_refused_at_load(
    tmp_path: Path, start_reloadd: Callable[..., Reloadd]
) -> None:
    """The error names the service key, the path and its owner; ``user`` makes it start."""
    if os.geteuid() != 0:
        pytest.skip("the rule applies when reloadd runs as root")
    nobody = pwd.getpwnam("nobody").pw_uid
    app = tmp_path / "app"
    (app / "lib").mkdir(parents=True)
    os.chown(app / "lib", nobody, -1)
    service = f"""
        [daemon]
        socket = {_q(tmp_path / "ctl.sock")}
        [services.app]
        watch = [{_q(app)}]
        pidfile = {_q(tmp_path / "app.pid")}
        check = ["true"]
        """
    r = start_reloadd(service, wait_ready=False)
    wait_for(lambda: r.proc.poll() is not None, what="reloadd to refuse the config", detail=r.log)
    assert r.proc.returncode != 0
    text = r.log()
    assert "services.app.check" in text
    assert f"{app}/lib is owned by nobody (uid {nobody}) (mode 0755)" in text
    assert 'user = "root"' in text

    r2 = start_reloadd(service + 'user = "root"\n', name="explicit.toml")
    assert r2.proc.poll() is None


# -- the status, in-process ----------------------------------------------------------------


def test_status_shows_check_failed_with_output_and_manual_reload_is_gated(
    tmp_path: Path,
) -> None:
    """A manual reload is checked too; the record and last_error carry the check's output."""
    app = tmp_path / "app"
    app.mkdir()
    conf = tmp_path / "app.conf"  # outside the watched tree: only manual reloads here
    conf.write_text("broken\n")
    log = tmp_path / "signals.log"
    rec = Recording(log)

    async def scenario() -> None:
        async with running(
            tmp_path,
            f"""
            [services.app]
            watch = [{_q(app)}]
            command = {_q(recorder_command(log))}
            check = {_q([sys.executable, "-c", CHECK, conf])}
            """,
        ) as daemon:
            await until(rec.ready_pids, "the recorder to start")
            record = await daemon.command("app", "reload")
            assert record.result == "check-failed"
            assert "exited with status 1" in record.error
            assert "unexpected token 'broken'" in record.output
            status = daemon.status()["services"][0]
            assert status["last_reload"]["result"] == "check-failed"
            assert "unexpected token 'broken'" in status["last_reload"]["output"]
            assert "unexpected token 'broken'" in status["last_error"]
            assert status["state"] == "watching"

            conf.write_text("good\n")
            record = await daemon.command("app", "reload")
            assert record.result == "ok", record
            await until(lambda: rec.count() == 1, "the SIGHUP after the fix")
            assert daemon.status()["services"][0]["last_error"] is None

    asyncio.run(scenario())
    assert rec.count() == 1


@pytest.mark.parametrize("action", ["signal", "restart"])
def test_hanging_check_is_killed_with_its_children_and_blocks_the_reload(
    tmp_path: Path, action: str
) -> None:
    """check_timeout kills the check's whole process group; the target is left alone."""
    app = tmp_path / "app"
    app.mkdir()
    child_pid = tmp_path / "child.pid"
    log = tmp_path / "signals.log"
    rec = Recording(log)
    hang = 'sleep 1000 & echo $! > "$0"; echo hanging; exec sleep 1000'

    async def scenario() -> None:
        async with running(
            tmp_path,
            f"""
            [services.app]
            watch = [{_q(app)}]
            command = {_q(recorder_command(log))}
            action = "{action}"
            check = {_q(["sh", "-c", hang, child_pid])}
            check_timeout = "300ms"
            """,
        ) as daemon:
            await until(rec.ready_pids, "the recorder to start")
            pid_before = daemon.status()["services"][0]["target"]["pid"]
            record = await daemon.command("app", "reload")
            assert record.result == "check-failed"
            assert "timed out after 0.3s and was killed with its group" in record.error
            assert "hanging" in record.output
            child = int(child_pid.read_text())
            await until(lambda: gone(child), f"the check's child {child} to be killed")
            assert daemon.status()["services"][0]["target"]["pid"] == pid_before

    asyncio.run(scenario())
    assert rec.count() == 0
    assert rec.ready_pids() == rec.ready_pids()[:1]  # never restarted


def test_failing_exec_records_its_status_and_output(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    log = tmp_path / "signals.log"
    rec = Recording(log)
    fail = "echo 'reload refused: socket busy' >&2; exit 3"

    async def scenario() -> None:
        async with running(
            tmp_path,
            f"""
            [services.app]
            watch = [{_q(app)}]
            command = {_q(recorder_command(log))}
            action = "exec"
            exec = ["sh", "-c", {_q(fail)}]
            exec_timeout = "5s"
            """,
        ) as daemon:
            await until(rec.ready_pids, "the recorder to start")
            record = await daemon.command("app", "reload")
            assert record.result == "delivery-failed"
            assert record.error == "exec failed: sh exited with status 3"
            assert "reload refused: socket busy" in record.output
            assert "reload refused" in daemon.status()["services"][0]["last_error"]

    asyncio.run(scenario())
