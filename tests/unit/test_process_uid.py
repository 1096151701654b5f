"""target.process_uid: the real uid of a pid, read from /proc as systemd reads it."""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from reloadd_testing import wait_for

from reloadd.config import ServiceSpec
from reloadd.target import DeliveryError, Pidfile, process_uid


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0]


def test_the_real_uid_of_a_live_process() -> None:
    assert process_uid(os.getpid()) == os.getuid()
    if os.geteuid() != 0:
        pytest.skip("needs root to start a process as nobody")
    nobody = pwd.getpwnam("nobody").pw_uid
    child = subprocess.Popen(["sleep", "600"], user=nobody)  # /root's python is not nobody's
    try:
        assert process_uid(child.pid) == nobody
    finally:
        child.kill()
        child.wait()


def test_a_zombie_is_refused_through_its_pidfd(tmp_path: Path) -> None:
    child = subprocess.Popen(["true"], start_new_session=True)  # not in reloadd's group
    try:
        wait_for(lambda: _state(child.pid) == "Z", what="the child to exit unreaped")
        pidfile = tmp_path / "server.pid"
        pidfile.write_text(f"{child.pid}\n")
        spec = ServiceSpec(name="x", source="test", watch=(str(tmp_path),), pidfile=str(pidfile))
        with pytest.raises(DeliveryError, match="zombie"):
            asyncio.run(Pidfile(spec).signal(signal.SIGHUP, "main"))
    finally:
        child.wait()
    with pytest.raises(DeliveryError, match="does not exist"):
        process_uid(child.pid)  # reaped: gone (pids are not reused this fast)


def test_a_live_process_whose_main_thread_ended_is_signalled(tmp_path: Path) -> None:
    """/proc says "zombie" for a process whose main thread has ended while another runs;
    the process lives, and its pidfd says so: the signal is sent, and the surviving
    thread (waiting for SIGHUP in sigwaitinfo) records that it arrived, and from whom."""
    got = tmp_path / "got"
    code = (
        "import ctypes, os, signal, sys, threading\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})\n"  # the thread inherits it
        "def wait():\n"
        "    while True:\n"
        "        info = signal.sigwaitinfo({signal.SIGHUP})\n"
        "        fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT)\n"
        "        os.write(fd, f'{info.si_signo} {info.si_pid}\\n'.encode())\n"
        "        os.close(fd)\n"
        "threading.Thread(target=wait).start()\n"
        "ctypes.CDLL(None).pthread_exit(None)\n"  # the main thread ends, the process lives
    )
    child = subprocess.Popen([sys.executable, "-c", code, str(got)], start_new_session=True)
    try:
        wait_for(lambda: _state(child.pid) == "Z", what="the main thread to end")
        pidfile = tmp_path / "server.pid"
        pidfile.write_text(f"{child.pid}\n")
        spec = ServiceSpec(
            name="x",
            source="test",
            watch=(str(tmp_path),),
            pidfile=str(pidfile),
            expect_user=str(os.getuid()),  # so that its uid is read
        )
        action = asyncio.run(Pidfile(spec).signal(signal.SIGHUP, "main"))
        assert action == f"SIGHUP -> pid {child.pid}"
        wait_for(
            lambda: got.exists() and got.read_text().endswith("\n"),
            what="the surviving thread to record the SIGHUP",
        )
        assert got.read_text() == f"{int(signal.SIGHUP)} {os.getpid()}\n"
        assert _state(child.pid) == "Z"  # still the case the test is about
    finally:
        child.kill()
        child.wait()
