"""`reloadd --detach --pidfile PATH`: the way to run reloadd on hosts without systemd.

No systemd is booted here; these tests live beside the systemd ones because they are the
same issue (how reloadd is run as a service).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

RECORDER = Path(__file__).resolve().parents[1] / "recorder.py"
DEADLINE = 20.0


def wait_for(probe: Callable[[], object], what: str, detail: Callable[[], str]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not probe():
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out waiting for {what}\n{detail()}", pytrace=False)
        time.sleep(0.02)


def is_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (it is not our child to reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def read_text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


@pytest.fixture
def detached(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """Paths for one detached reloadd; whatever it left running is killed afterwards."""
    paths = {
        "config": tmp_path / "reloadd.toml",
        "pidfile": tmp_path / "run" / "reloadd.pid",
        "log": tmp_path / "reloadd.log",
        "signals": tmp_path / "signals.log",
        "watched": tmp_path / "app",
    }
    paths["watched"].mkdir()
    paths["pidfile"].parent.mkdir()
    command = [sys.executable, str(RECORDER), str(paths["signals"])]
    paths["config"].write_text(
        "[services.demo]\n"
        f"watch = [{json.dumps(str(paths['watched']))}]\n"
        f"command = {json.dumps(command)}\n"
        'debounce = "20ms"\n'
    )
    try:
        yield paths
    finally:
        pids = [read_pid(paths["pidfile"])]
        pids += [int(line.split()[1]) for line in read_text(paths["signals"]).splitlines()]
        for pid in pids:
            if pid is not None and is_running(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def start(paths: dict[str, Path]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "reloadd",
            "-c",
            str(paths["config"]),
            "--detach",
            "--pidfile",
            str(paths["pidfile"]),
            "--log-file",
            str(paths["log"]),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=DEADLINE,
        check=False,
    )


def test_detach_pidfile_second_start_and_sigterm(detached: dict[str, Path]) -> None:
    """1. the command returns while the daemon runs on, detached, its pid in the pidfile;
    2. a second start fails clearly; 3. SIGTERM stops it (and its command) and removes
    the pidfile."""
    log = detached["log"]

    def detail() -> str:
        return read_text(log) or "(no log yet)"

    first = start(detached)
    assert first.returncode == 0, first.stderr

    wait_for(lambda: read_pid(detached["pidfile"]), "the pidfile", detail)
    pid = read_pid(detached["pidfile"])
    assert pid is not None
    assert is_running(pid)
    assert os.getsid(pid) != os.getsid(0)  # its own session: no controlling terminal
    assert "reloadd" in Path(f"/proc/{pid}/cmdline").read_text()
    wait_for(lambda: "READY" in read_text(detached["signals"]), "the supervised demo", detail)

    second = start(detached)
    assert second.returncode == 1
    assert f"already running as pid {pid}" in second.stderr
    assert read_pid(detached["pidfile"]) == pid

    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not is_running(pid), "the daemon to exit", detail)
    assert not detached["pidfile"].exists()
    assert "SIGTERM" in read_text(detached["signals"])  # the demo was stopped, not orphaned


def test_detach_replaces_a_stale_pidfile(detached: dict[str, Path]) -> None:
    """A pidfile left by a reloadd that died (its pid is gone) does not block a start."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    detached["pidfile"].write_text(f"{dead.pid}\n")

    result = start(detached)

    assert result.returncode == 0, result.stderr
    wait_for(
        lambda: read_pid(detached["pidfile"]) not in (None, dead.pid),
        "a fresh pidfile",
        lambda: result.stderr,
    )
    pid = read_pid(detached["pidfile"])
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not is_running(pid), "the daemon to exit", lambda: "")
