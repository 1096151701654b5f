"""target.process_uid: the real uid of a pid, read from /proc as systemd reads it."""

from __future__ import annotations

import os
import pwd
import subprocess

import pytest
from reloadd_testing import wait_for

from reloadd.target import DeliveryError, process_uid


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


def test_a_zombie_and_a_missing_pid_are_refused() -> None:
    child = subprocess.Popen(["true"])
    try:
        wait_for(lambda: _state(child.pid) == "Z", what="the child to exit unreaped")
        with pytest.raises(DeliveryError, match="zombie"):
            process_uid(child.pid)
    finally:
        child.wait()
    with pytest.raises(DeliveryError, match="does not exist"):
        process_uid(child.pid)  # reaped: gone (pids are not reused this fast)
