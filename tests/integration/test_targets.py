"""Who gets the signal: ``scope`` main/group, and ``action = "restart"`` with escalation.

Real reloadd, real recorder processes; a change to a watched file is the trigger. The
absence of a signal is proven by a later fact: a signal the test sends afterwards, which
each recorder writes down after any SIGHUP it had been sent before.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from reloadd_testing import RECORDER, Scenario, wait_for

pytestmark = pytest.mark.slow

Start = Callable[..., Scenario]


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_text("v1")
    return root


def test_scope_group_reaches_children(scenario: Start, site: Path) -> None:
    """``scope = "group"``: the recorder and the two children it forked each get one SIGHUP."""
    s = scenario(site, scope="group", recorder_args=("--children", "2"))
    wait_for(lambda: len(s.recording.ready_pids()) == 3, what="recorder and two children")
    pids = set(s.recording.ready_pids())
    (site / "index.html").write_text("v2")
    [line] = s.wait_reloads(1)
    assert line.action == f"SIGHUP -> process group {s.pid}"
    wait_for(lambda: set(s.recording.signals()) == pids, what="a SIGHUP in every process")
    assert sorted(s.recording.signals()) == sorted(pids)


def test_scope_group_reaches_a_shell_wrapped_command(
    scenario: Start, site: Path, tmp_path: Path
) -> None:
    """A shell wrapper starting two servers (``sh -c 'a & b; wait'``): with scope = group
    both servers get the SIGHUP, although the shell itself ignores it."""
    log = tmp_path / "signals.log"
    one = shlex.join([sys.executable, RECORDER, str(log)])
    script = f"trap '' HUP; {one} & {one}; wait"
    s = scenario(site, scope="group", command=["sh", "-c", script])
    wait_for(lambda: len(s.recording.ready_pids()) == 2, what="two recorders")
    servers = set(s.recording.ready_pids())
    (site / "index.html").write_text("v2")
    s.wait_reloads(1)
    wait_for(lambda: set(s.recording.signals()) == servers, what="a SIGHUP in both servers")
    assert len(s.recording.signals()) == 2


def test_scope_main_reaches_the_main_pid_only(scenario: Start, site: Path) -> None:
    """``scope = "main"`` (the default): the recorder gets the SIGHUP, its children do not."""
    s = scenario(site, recorder_args=("--children", "2"))
    wait_for(lambda: len(s.recording.ready_pids()) == 3, what="recorder and two children")
    pids = set(s.recording.ready_pids())
    main = s.pid  # the recorder writes READY after forking its children
    (site / "index.html").write_text("v2")
    [line] = s.wait_reloads(1)
    assert line.action == f"SIGHUP -> pid {main}"
    # The later fact: a SIGUSR1 the test sends each child after the reload was logged. A
    # SIGHUP sent to them with it would have been queued first and recorded first.
    children = pids - {main}
    for child in children:
        os.kill(child, signal.SIGUSR1)
    wait_for(
        lambda: children <= set(s.recording.signals("SIGUSR1")),
        what="SIGUSR1 recorded by both children",
        detail=lambda: f"{s.recording.lines()}",
    )
    assert s.recording.signals() == [main]


def test_restart_escalates_to_sigkill_and_starts_again(scenario: Start, site: Path) -> None:
    """``action = "restart"`` on a target that ignores SIGTERM:
    1. a change: SIGTERM, ignored; after ``stop_timeout`` SIGKILL; a new pid starts;
    2. the next change reaches the new pid (its SIGTERM is recorded, then it is killed too).
    """
    s = scenario(site, action="restart", stop_timeout="1s", recorder_args=("--ignore-term",))
    first = s.pid
    (site / "index.html").write_text("v2")
    [line] = s.wait_reloads(1, signal=None)
    wait_for(lambda: len(s.recording.ready_pids()) == 2, what="a second recorder")
    second = s.pid
    assert second != first
    assert line.action == f"restarted: pid {first} -> {second}"
    assert s.recording.signals("SIGTERM") == [first]
    log = s.reloadd.log()
    assert f"pid {first} still running 1.0s after SIGTERM; sending SIGKILL" in log
    (site / "index.html").write_text("v3")
    lines = s.wait_reloads(2, signal=None)
    wait_for(lambda: len(s.recording.ready_pids()) == 3, what="a third recorder")
    assert lines[1].action == f"restarted: pid {second} -> {s.pid}"
    assert s.recording.signals("SIGTERM") == [first, second]
    assert s.recording.count("SIGHUP") == 0
