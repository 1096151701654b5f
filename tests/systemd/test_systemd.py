"""reloadd under a real systemd: the acceptance tests of issue 4.

Every test runs the shipped packaging/systemd/reloadd.service, with one test drop-in that
points `-c` at the test's config (and shortens timeouts where a test says so). The
supervised demo is tests/recorder.py: it appends ``<SIGNAME> <pid>`` for every signal.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from systemd_harness import Systemd, require

pytestmark = [pytest.mark.systemd, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_UNIT = ROOT / "packaging" / "systemd" / "reloadd.service"
RECORDER = ROOT / "tests" / "recorder.py"
UNIT = "reloadd.service"


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# Pieces of issue 4 that land separately: these tests are expected to fail until they do.
awaits_reloadctl = pytest.mark.xfail(
    not _has("reloadd.ctl") or not _has("reloadd.control"),
    reason="awaits reloadctl reload-config (reloadd.ctl + reloadd.control)",
    strict=True,
)


@dataclass
class Recording:
    """tests/recorder.py's log: ``<SIGNAME> <pid>`` per line, ``READY <pid>`` at start."""

    path: Path

    def lines(self) -> list[tuple[str, int]]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        return [
            (name, int(pid))
            for name, _, pid in (ln.partition(" ") for ln in text.split("\n"))
            if pid.isdigit()
        ]

    def pids(self, name: str) -> list[int]:
        return [pid for n, pid in self.lines() if n == name]


def demo_service(name: str, tmp_path: Path, **keys: str) -> tuple[str, Path, Recording]:
    """A [services.NAME] table supervising a recorder, its watched dir and its recording."""
    watched = tmp_path / f"{name}-app"
    watched.mkdir(exist_ok=True)
    recording = Recording(tmp_path / f"{name}-signals.log")
    command = [sys.executable, str(RECORDER), str(recording.path)]
    extra = "".join(f"{key} = {value}\n" for key, value in keys.items())
    table = (
        f"[services.{name}]\n"
        f"watch = [{json.dumps(str(watched))}]\n"
        f"command = {json.dumps(command)}\n"
        f'debounce = "20ms"\n'
        f"{extra}\n"
    )
    return table, watched, recording


def install_reloadd(systemd: Systemd, config: Path, extra: str = "") -> None:
    """The shipped unit, plus a drop-in for the config path (and ``extra`` settings)."""
    require((systemd.unit_dir.parent / "bin" / "reloadd").exists(), "reloadd is not installed")
    shutil.copy(SHIPPED_UNIT, systemd.unit_dir / UNIT)
    systemd.write_dropin(
        UNIT,
        "50-test.conf",
        f"""
        [Service]
        ExecStart=
        ExecStart=reloadd -c {config}
        ExecReload=
        ExecReload=reloadctl -c {config} reload-config
        TimeoutStartSec=30s
        """
        + textwrap.dedent(extra),
    )
    systemd.daemon_reload()


def start_demo(
    systemd: Systemd, tmp_path: Path, extra_unit: str = "", **keys: str
) -> tuple[Path, Path, Recording]:
    """reloadd supervising one recorder ("demo"), started; returns config, watched dir, log."""
    table, watched, recording = demo_service("demo", tmp_path, **keys)
    config = tmp_path / "reloadd.toml"
    config.write_text(table)
    install_reloadd(systemd, config, extra_unit)
    systemd.systemctl("start", UNIT, check=True)
    systemd.wait_for(lambda: recording.pids("READY"), what="the demo recorder to start")
    return config, watched, recording


def journal_entries(systemd: Systemd, unit: str = UNIT) -> list[dict[str, str]]:
    out = systemd.run("journalctl", "--no-pager", "-o", "json", "-u", unit).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def main_pid(systemd: Systemd) -> int:
    return int(systemd.show(UNIT, "MainPID"))


# -- start, status, logging ----------------------------------------------------------------


def test_start_returns_after_ready_and_status_shows_the_status_line(
    systemd: Systemd, tmp_path: Path
) -> None:
    """1. `systemctl start` returns once READY=1 arrived; 2. `systemctl status` shows
    active (running) and the STATUS= line; 3. log lines reach the journal with the
    priority of their level (<N> prefixes), without the prefix or a timestamp in the text."""
    table, _watched, _rec = demo_service("demo", tmp_path)
    config = tmp_path / "reloadd.toml"
    missing = tmp_path / "not-deployed-yet"
    config.write_text(
        table + f"[services.late]\nwatch = [{json.dumps(str(missing))}]\n"
        f'pidfile = "/run/late.pid"\n'
    )
    install_reloadd(systemd, config)

    systemd.systemctl("start", UNIT, check=True)

    # No waiting: a Type=notify start job completes only at READY=1.
    assert systemd.show(UNIT, "ActiveState") == "active"
    assert systemd.show(UNIT, "SubState") == "running"
    status_text = systemd.show(UNIT, "StatusText")
    assert status_text.startswith("2 services, "), status_text
    assert " 0 reloads" in status_text
    status = systemd.systemctl("status", UNIT).stdout
    assert "active (running)" in status
    assert f'Status: "{status_text}"' in status

    entries = journal_entries(systemd)
    ready = [e for e in entries if e.get("MESSAGE", "").startswith("reloadd ")]
    assert ready, entries
    assert ready[0]["PRIORITY"] == "6"
    warnings = [e for e in entries if "not-deployed-yet does not exist" in e.get("MESSAGE", "")]
    assert warnings, [e.get("MESSAGE") for e in entries]
    assert warnings[0]["PRIORITY"] == "4"
    for entry in entries:
        if entry.get("_PID") == str(main_pid(systemd)):
            assert not entry["MESSAGE"].startswith("<"), entry["MESSAGE"]
            assert not entry["MESSAGE"][:4].isdigit(), entry["MESSAGE"]  # no timestamp


def test_file_change_reloads_the_supervised_demo(systemd: Systemd, tmp_path: Path) -> None:
    """A write in the watched tree: the demo gets SIGHUP; STATUS= counts the reload."""
    _config, watched, recording = start_demo(systemd, tmp_path)
    [child] = recording.pids("READY")
    assert " 0 reloads" in systemd.show(UNIT, "StatusText")

    (watched / "app.py").write_text("print('v2')\n")

    systemd.wait_for(lambda: recording.pids("SIGHUP") == [child], what="SIGHUP to the demo")

    def counted() -> str:
        text = systemd.show(UNIT, "StatusText")
        return text if " 1 reloads" in text else ""

    status = systemd.wait_for(counted, what="the reload count in STATUS=")
    assert "last: demo at " in status
    assert systemd.show(UNIT, "NRestarts") == "0"


def test_stop_stops_children_gracefully(systemd: Systemd, tmp_path: Path) -> None:
    """`systemctl stop`: reloadd (not systemd: KillMode=mixed) gives the demo its
    stop_signal, and the unit ends inactive, not failed."""
    _config, _watched, recording = start_demo(systemd, tmp_path, stop_signal='"INT"')
    [child] = recording.pids("READY")

    systemd.systemctl("stop", UNIT, check=True)

    assert systemd.show(UNIT, "ActiveState") == "inactive"
    assert systemd.show(UNIT, "Result") == "success"
    # SIGINT is the configured stop signal: systemd itself would have sent SIGTERM.
    assert recording.pids("SIGINT") == [child]
    assert recording.pids("SIGTERM") == []
    messages = [e.get("MESSAGE", "") for e in journal_entries(systemd)]
    assert not any("SIGKILL" in m or "Killing process" in m for m in messages), messages


def test_start_with_a_broken_config_fails_with_the_reason(systemd: Systemd, tmp_path: Path) -> None:
    """`systemctl start` on a broken config fails (no READY=1), the journal says why, and
    after the shipped StartLimitBurst= of tries the unit stays failed instead of looping."""
    table, _watched, _recording = demo_service("demo", tmp_path)
    config = tmp_path / "reloadd.toml"
    config.write_text(table.replace('debounce = "20ms"', 'debounce = "soon"'))
    install_reloadd(systemd, config, "[Service]\nRestartSec=100ms\n")

    result = systemd.systemctl("start", UNIT)

    assert result.returncode != 0
    systemd.wait_for(
        lambda: "services.demo.debounce" in systemd.journal(UNIT), what="the reason in the journal"
    )
    systemd.wait_for(
        lambda: "Start request repeated too quickly" in systemd.journal(UNIT),
        what="systemd giving up after StartLimitBurst= tries",
    )
    assert systemd.show(UNIT, "ActiveState") == "failed"
    systemd.wait_for(
        lambda: systemd.journal(UNIT).count("services.demo.debounce") == 5,
        what="the reason, once from each of the five tries",
    )


# -- the watchdog ----------------------------------------------------------------------------

# LimitCORE=0: the SIGABRT that ends a frozen reloadd must not write a core file on the
# host's file system.
SHORT_WATCHDOG = """
[Service]
WatchdogSec=1s
TimeoutAbortSec=2s
RestartSec=100ms
LimitCORE=0
"""


def test_watchdog_is_fed_from_the_loop(systemd: Systemd, tmp_path: Path) -> None:
    """With WatchdogSec=1s reloadd stays up: systemd records a fresh ping many times over
    (WatchdogTimestamp), for well over several watchdog periods, without a restart."""
    start_demo(systemd, tmp_path, extra_unit=SHORT_WATCHDOG)
    assert systemd.show(UNIT, "WatchdogUSec") == "1s"
    pid = main_pid(systemd)
    seen: set[str] = set()

    def pings() -> bool:
        seen.add(systemd.show(UNIT, "WatchdogTimestampMonotonic"))
        return len(seen) >= 8  # 8 distinct pings, every ~0.5 s: ~4 watchdog periods

    systemd.wait_for(pings, what="8 watchdog pings", timeout=30)
    assert systemd.show(UNIT, "ActiveState") == "active"
    assert main_pid(systemd) == pid
    assert systemd.show(UNIT, "NRestarts") == "0"


def test_frozen_loop_trips_the_watchdog(systemd: Systemd, tmp_path: Path) -> None:
    """SIGSTOP on reloadd stops the pings: systemd logs the watchdog timeout, kills it
    (and, KillMode=mixed, the rest of its cgroup) and Restart=on-failure starts it anew."""
    _config, _watched, recording = start_demo(systemd, tmp_path, extra_unit=SHORT_WATCHDOG)
    frozen = main_pid(systemd)
    [child] = recording.pids("READY")

    systemd.run("kill", "-STOP", str(frozen), check=True)

    systemd.wait_for(
        lambda: "Watchdog timeout" in systemd.journal(UNIT),
        what="systemd's watchdog timeout",
    )
    systemd.wait_for(
        lambda: (
            systemd.show(UNIT, "NRestarts") == "1" and systemd.show(UNIT, "ActiveState") == "active"
        ),
        what="the restart after the watchdog timeout",
        timeout=30,
    )
    assert main_pid(systemd) != frozen
    # A new reloadd started a new demo; the old one went with the old cgroup members.
    systemd.wait_for(lambda: len(recording.pids("READY")) == 2, what="the demo's restart")
    assert recording.pids("READY")[0] == child
    assert recording.pids("SIGTERM") == []  # the old demo got SIGKILL: a crash, not a stop


# -- configuration reload --------------------------------------------------------------------


def test_sighup_rereads_the_config(systemd: Systemd, tmp_path: Path) -> None:
    """`systemctl kill -s HUP`: RELOADING=1 ... READY=1 around a re-read; a service added
    to the file is supervised afterwards, and the unit is active again, never restarted."""
    config, _watched, _recording = start_demo(systemd, tmp_path)
    table, watched, recording = demo_service("second", tmp_path)
    config.write_text(config.read_text() + table)

    systemd.systemctl("kill", "-s", "HUP", UNIT, check=True)

    systemd.wait_for(lambda: recording.pids("READY"), what="the added service's command")
    systemd.wait_for(
        lambda: systemd.show(UNIT, "StatusText").startswith("2 services"),
        what="STATUS= with two services",
    )
    (watched / "x").write_text("x")
    systemd.wait_for(lambda: recording.pids("SIGHUP"), what="a reload of the added service")
    # (the config watch may have seen the edit only after the SIGHUP's re-read began, and
    # re-read it once more: "reloading" for a moment is right then; a restart never is)
    systemd.wait_for(lambda: systemd.show(UNIT, "ActiveState") == "active", what="active")
    assert systemd.show(UNIT, "NRestarts") == "0"


@awaits_reloadctl
def test_systemctl_reload_applies_the_config_before_returning(
    systemd: Systemd, tmp_path: Path
) -> None:
    """`systemctl reload` returns once the new config is in effect: a service added to the
    file is running, and reloads, right after the command returns."""
    config, _watched, _recording = start_demo(systemd, tmp_path)
    table, watched, recording = demo_service("second", tmp_path)
    config.write_text(config.read_text() + table)

    systemd.systemctl("reload", UNIT, check=True)

    status = systemd.show(UNIT, "StatusText")
    assert status.startswith("2 services"), status
    # its command is started; the write waits until it can take a SIGHUP (CI once wrote
    # first, and the signal killed the recorder before its handler was installed)
    systemd.wait_for(lambda: recording.pids("READY"), what="the added service's command")
    (watched / "x").write_text("x")
    systemd.wait_for(lambda: recording.pids("SIGHUP"), what="a reload of the added service")


@awaits_reloadctl
def test_systemctl_reload_with_a_broken_config_fails_and_keeps_the_old_one(
    systemd: Systemd, tmp_path: Path
) -> None:
    """A broken edit: `systemctl reload` fails, the journal says why, the old config runs."""
    config, watched, recording = start_demo(systemd, tmp_path)
    good = config.read_text()
    config.write_text(good.replace('debounce = "20ms"', 'debounce = "soon"'))

    result = systemd.systemctl("reload", UNIT)

    assert result.returncode != 0
    journal = systemd.journal(UNIT)
    assert "services.demo.debounce" in journal, journal
    assert systemd.show(UNIT, "ActiveState") == "active"
    (watched / "y").write_text("y")
    systemd.wait_for(lambda: recording.pids("SIGHUP"), what="a reload under the old config")


# -- unit = targets --------------------------------------------------------------------------


def tighter_dropin() -> str:
    """The hardening drop-in docs/systemd.md offers for hosts without `command =`."""
    text = (ROOT / "docs" / "systemd.md").read_text()
    block = text.split("<!-- tighter-dropin -->", 1)[1]
    return block.split("```ini\n", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize("hardening", ["shipped", "tighter"])
def test_unit_targets_reload_and_restart_through_systemd(
    systemd: Systemd, tmp_path: Path, hardening: str
) -> None:
    """reloadd reaches a second unit through systemd: scope "main" signals its MainPID only,
    scope "group" every process of its cgroup, action "restart" gives it a new MainPID.
    Also under the tighter hardening drop-in of docs/systemd.md."""
    recording = Recording(tmp_path / "unit-signals.log")
    systemd.write_unit(
        "recorder.service",
        f"""
        [Service]
        ExecStart={sys.executable} {RECORDER} {recording.path} --children 1
        """,
    )
    dirs = {name: tmp_path / f"{name}-tree" for name in ("main", "group", "restart")}
    config = tmp_path / "reloadd.toml"
    config.write_text(
        "".join(
            f"[services.{name}]\n"
            f"watch = [{json.dumps(str(path))}]\n"
            'unit = "recorder.service"\n'
            'debounce = "20ms"\n'
            + ('action = "restart"\n' if name == "restart" else f'scope = "{name}"\n')
            + "\n"
            for name, path in dirs.items()
        )
    )
    for path in dirs.values():
        path.mkdir()
    install_reloadd(systemd, config)
    if hardening == "tighter":
        systemd.write_dropin(UNIT, "60-hardening.conf", tighter_dropin())
        systemd.daemon_reload()
        assert systemd.show(UNIT, "ProtectSystem") == "strict"
    systemd.systemctl("start", "recorder.service", UNIT, check=True)
    main = int(systemd.show("recorder.service", "MainPID"))
    systemd.wait_for(
        lambda: len(recording.pids("READY")) == 2, what="the recorder unit and its child"
    )
    [child] = [pid for pid in recording.pids("READY") if pid != main]

    (dirs["main"] / "a").write_text("a")
    systemd.wait_for(lambda: recording.pids("SIGHUP") == [main], what="SIGHUP to MainPID only")

    (dirs["group"] / "b").write_text("b")
    systemd.wait_for(
        lambda: sorted(recording.pids("SIGHUP")) == sorted([main, main, child]),
        what="SIGHUP to every process of the unit",
    )

    (dirs["restart"] / "c").write_text("c")
    systemd.wait_for(
        lambda: systemd.show("recorder.service", "MainPID") not in ("0", str(main)),
        what="a new MainPID after the restart",
    )
    assert main in recording.pids("SIGTERM")
