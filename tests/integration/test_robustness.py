"""The daemon under faults and awkward timing: a bug in one service, signals during
shutdown, and pidfiles that try to widen a group signal."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DEADLINE, RECORDER, Recording, gone, recorder_command, running, until, wait_for
from reloadd.protocol import CommandError
from reloadd.service import Service, State

pytestmark = pytest.mark.slow


def test_a_bug_in_one_service_is_loud_and_leaves_the_others_working(tmp_path, monkeypatch):
    """A fault we cannot cause from outside (an exception reloadd does not expect inside
    one service's reload) is injected through a patched method; the test shows the
    service says so (state failed, last error, commands refused) and the other service
    keeps reloading."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    real_deliver = Service._deliver

    async def deliver(self: Service) -> str:
        if self.name == "broken":
            raise RuntimeError("boom")
        return await real_deliver(self)

    monkeypatch.setattr(Service, "_deliver", deliver)

    async def scenario() -> None:
        async with running(
            tmp_path,
            f"""
            [services.broken]
            watch = ["{tmp_path / "a"}"]
            command = {recorder_command(log_a)!r}
            debounce = "50ms"
            [services.fine]
            watch = ["{tmp_path / "b"}"]
            command = {recorder_command(log_b)!r}
            debounce = "50ms"
            """.replace("'", '"'),
        ) as d:
            await until(
                lambda: Recording(log_a).ready_pids() and Recording(log_b).ready_pids(),
                "both targets up",
            )
            (tmp_path / "a" / "x").write_text("1")
            broken = d.service("broken")
            await until(lambda: broken.state is State.FAILED, "the broken service to fail")
            assert "internal error" in broken.last_error
            assert "boom" in broken.last_error
            assert "error: broken: internal error" in d.status_line()
            with pytest.raises(CommandError, match="not running"):
                await d.command("broken", "reload")
            (tmp_path / "b" / "y").write_text("1")
            await until(lambda: Recording(log_b).count() == 1, "the other service to reload")
            # a config change hands the failed service's target on (detach) or stops it:
            # both are answered at once, though no task drains its inbox any more
            await asyncio.wait_for(broken.command("detach"), DEADLINE)
            await asyncio.wait_for(broken.command("stop"), DEADLINE)
            await until(lambda: gone(Recording(log_a).ready_pids()[0]), "its command to stop")

    asyncio.run(scenario())
    assert Recording(log_a).count() == 0


def test_a_second_sigint_kills_supervised_commands_at_once(tmp_path, start_reloadd):
    """A command that ignores SIGTERM with a 60 s stop_timeout: the second Ctrl-C ends it
    (and reloadd) long before that."""
    (tmp_path / "w").mkdir()
    log = tmp_path / "t.log"
    r = start_reloadd(f"""
        [services.stubborn]
        watch = ["{tmp_path / "w"}"]
        command = ["{sys.executable}", "{RECORDER}", "{log}", "--ignore-term"]
        stop_signal = "INT"
        stop_timeout = "60s"
    """)
    [target] = wait_for(lambda: Recording(log).ready_pids(), what="target")
    r.proc.send_signal(signal.SIGINT)
    wait_for(lambda: Recording(log).count("SIGINT") == 1, what="the stop signal", detail=r.log)
    r.proc.send_signal(signal.SIGINT)
    try:
        r.proc.wait(timeout=20)  # a functional bound far below stop_timeout, not a benchmark
    except subprocess.TimeoutExpired:
        pytest.fail(f"reloadd still stopping after a second SIGINT:\n{r.log()}")
    assert "second SIGINT: stopping supervised commands with SIGKILL" in r.log()
    assert r.proc.returncode == 0
    wait_for(lambda: gone(target), what=f"the stubborn command (pid {target}) to be killed")


def test_a_config_reload_during_shutdown_starts_nothing(tmp_path, start_reloadd):
    """SIGHUP after SIGTERM (while a slow command is being stopped) must not start the
    service that the edited config adds: it would outlive reloadd."""
    (tmp_path / "w").mkdir()
    slow, late = tmp_path / "slow.log", tmp_path / "late.log"
    config = f"""
        [daemon]
        watch_config = false
        [services.slow]
        watch = ["{tmp_path / "w"}"]
        command = ["{sys.executable}", "{RECORDER}", "{slow}", "--ignore-term"]
        stop_timeout = "3s"
    """
    r = start_reloadd(config)
    wait_for(lambda: Recording(slow).ready_pids(), what="the slow target")
    r.config.write_text(
        r.config.read_text()
        + f"""
[services.late]
watch = ["{tmp_path / "w"}"]
command = ["{sys.executable}", "{RECORDER}", "{late}"]
"""
    )
    r.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: Recording(slow).count("SIGTERM") == 1, what="the stop", detail=r.log)
    r.proc.send_signal(signal.SIGHUP)
    assert r.proc.wait(timeout=30) == 0
    # reloadd logs each start as it spawns (its log is complete once it has exited); a
    # recorder spawned late might not have written its file yet
    assert "late: started" not in r.log(), f"a service was started during shutdown:\n{r.log()}"
    assert not late.exists(), f"a service was started during shutdown:\n{r.log()}"


def test_a_pidfile_naming_a_group_member_does_not_widen_a_group_signal(
    tmp_path, start_reloadd, spawn
):
    """scope = "group" with a pidfile whose process is not its group's leader: refused,
    and nobody in that group gets the signal."""
    (tmp_path / "w").mkdir()
    log, pidfile = tmp_path / "g.log", tmp_path / "member.pid"
    leader = spawn(
        [
            "sh",
            "-c",
            f'"{sys.executable}" "{RECORDER}" "{log}" --pidfile "{pidfile}" & '
            f'"{sys.executable}" "{RECORDER}" "{log}"; wait',
        ]
    )
    wait_for(lambda: len(Recording(log).ready_pids()) == 2 and pidfile.exists(), what="group")
    member = int(pidfile.read_text())
    assert os.getpgid(member) == leader.pid != member
    r = start_reloadd(f"""
        [services.g]
        watch = ["{tmp_path / "w"}"]
        pidfile = "{pidfile}"
        scope = "group"
        debounce = "50ms"
    """)
    (tmp_path / "w" / "x").write_text("1")
    r.wait_log("is not the leader of its process group")
    # a later fact: each recorder writes down a SIGUSR1 after any SIGHUP sent before it
    others = [pid for pid in Recording(log).ready_pids() if pid != member]
    for pid in (member, *others):
        os.kill(pid, signal.SIGUSR1)
    wait_for(lambda: len(Recording(log).signals("SIGUSR1")) == 2, what="both recorders' SIGUSR1")
    assert Recording(log).count() == 0


def test_config_saved_in_place_slowly_is_read_at_its_close(tmp_path, monkeypatch):
    """The config file written in place and held open: read again once it is closed (the
    close changes no size or mtime), not CONFIG_MAX_DELAY later (60 s here, so that the
    difference cannot be missed)."""
    from reloadd import daemon as daemon_module

    monkeypatch.setattr(daemon_module, "CONFIG_MAX_DELAY", 60.0)
    (tmp_path / "w").mkdir()

    async def scenario() -> None:
        async with running(
            tmp_path,
            f"""
            [services.app]
            watch = ["{tmp_path / "w"}"]
            command = {recorder_command(tmp_path / "t.log")!r}
            """.replace("'", '"'),
        ) as d:
            changes = d._config_changes
            fd = os.open(tmp_path / "inproc.toml", os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, b"# appended by a slow editor\n")
                await until(lambda: changes.pending, "the write to be seen")
                assert changes.holding, "open for writing: held"
            finally:
                os.close(fd)
            await until(lambda: not changes.pending, "the re-read after the close")
            assert d.config_error is None

    asyncio.run(scenario())


def test_the_daemon_maps_no_tls_library(tmp_path, start_reloadd):
    """reloadd speaks TLS nowhere: the daemon process has no OpenSSL in its address space
    (cli._without_tls; asyncio runs without ssl), and it still reloads."""
    (tmp_path / "w").mkdir()
    log = tmp_path / "t.log"
    r = start_reloadd(f"""
        [services.app]
        watch = ["{tmp_path / "w"}"]
        command = ["{sys.executable}", "{RECORDER}", "{log}"]
        debounce = "50ms"
    """)
    wait_for(lambda: Recording(log).ready_pids(), what="target")
    maps = Path(f"/proc/{r.proc.pid}/maps").read_text()
    assert "python" in maps  # (the right process was read)
    assert "libssl" not in maps
    assert "_ssl" not in maps
    (tmp_path / "w" / "x.py").write_text("x")
    wait_for(lambda: Recording(log).signals("SIGHUP"), what="a reload")


def test_a_reread_asked_for_during_start_up_waits_for_it(tmp_path, monkeypatch):
    """A re-read asked for while start-up still looks at the watch paths (up to 5 s on a
    hung mount; held here by a patched look, a timing we cannot make from outside) runs
    once the services are up: it adds the new service once, and starts nothing twice."""
    from reloadd.config import load
    from reloadd.daemon import Daemon

    logs = {name: tmp_path / f"{name}.log" for name in ("a", "b")}
    tables = ""
    for name, log in logs.items():
        (tmp_path / name).mkdir()
        tables += (
            f"[services.{name}]\nwatch = [{str(tmp_path / name)!r}]\n"
            f"command = {recorder_command(log)!r}\n"
        ).replace("'", '"')
    cfg = tmp_path / "inproc.toml"
    head = f'[daemon]\nsocket = "{tmp_path / "ctl.sock"}"\nwatch_config = false\n'
    first_table, second = tables.split("[services.b]")
    cfg.write_text(head + first_table)
    real_look = Daemon._look

    from reloadd import daemon as daemon_module

    real_first = daemon_module._first

    async def scenario() -> None:
        looking, release, parked = asyncio.Event(), asyncio.Event(), asyncio.Event()
        calls = []

        async def look(specs):  # type: ignore[no-untyped-def]
            calls.append(specs)
            if len(calls) == 1:  # start-up's look; the re-read's own is not held
                looking.set()
                await release.wait()
            return await real_look(specs)

        async def first(*waits):  # type: ignore[no-untyped-def]
            parked.set()  # the re-read waits for start-up
            await real_first(*waits)

        monkeypatch.setattr(Daemon, "_look", staticmethod(look))
        monkeypatch.setattr(daemon_module, "_first", first)
        d = Daemon(load(cfg))
        task = asyncio.ensure_future(d.run())
        try:
            await until(looking.is_set, "start-up to look at the watch paths")
            cfg.write_text(head + first_table + "[services.b]" + second)
            reread = asyncio.ensure_future(d.reload_config())
            # held start-up: the re-read either ran into it (the bug) or waits for it
            await until(lambda: reread.done() or parked.is_set(), "the re-read to run or wait")
            release.set()
            applied, summary = await asyncio.wait_for(reread, DEADLINE)
            assert (applied, summary) == (True, "1 added, 0 changed, 0 removed")
            assert d.ready.is_set()
            assert sorted(d.services) == ["a", "b"]
            for name, log in logs.items():  # both recorders up before the stop
                await until(lambda log=log: Recording(log).ready_pids(), f"{name}'s command")
        finally:
            d.shutdown()
            await asyncio.wait_for(task, 60)

    asyncio.run(scenario())
    for log in logs.values():
        [pid] = Recording(log).ready_pids()  # each command started once ...
        assert gone(pid)  # ... and stopped with reloadd


def test_kill_now_before_a_stop_takes_away_its_grace(tmp_path):
    """A second SIGINT reaches targets whose stop has not begun yet (one a re-read still
    hands on): their stop then SIGKILLs at once instead of waiting 60 s of stop_timeout
    for a command that ignores SIGTERM."""
    (tmp_path / "w").mkdir()
    log = tmp_path / "t.log"

    async def scenario() -> None:
        async with running(
            tmp_path,
            f"""
            [services.stubborn]
            watch = ["{tmp_path / "w"}"]
            command = ["{sys.executable}", "{RECORDER}", "{log}", "--ignore-term"]
            stop_timeout = "60s"
            """,
        ) as d:
            [pid] = await until(lambda: Recording(log).ready_pids(), "the command")
            svc = d.service("stubborn")
            svc.target.kill_now()  # not stopping yet: nothing happens now ...
            assert not gone(pid)
            await asyncio.wait_for(svc.stop(), DEADLINE)  # ... and no grace when it does
            assert gone(pid)

    asyncio.run(scenario())
