"""Idle: CPU used while nothing changes, on one tree.

Subjects that sleep in the kernel until an event comes are measured side by side in one
window (each has its own target; none of them can wake another); a polling subject gets a
window of its own so that its scans cannot disturb the others. Before the window one probe
write must reach every target, then all must be quiet. CPU is utime+stime from
/proc/PID/stat (10 ms ticks) and, to the nanosecond, the run time in /proc/PID/task/*/schedstat;
wake-ups are context switches over all threads.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

from proc import BenchError, now_ns
from session import Ctx, Session, attempt
from subjects import Subject
from trees import Tree

PROBE_TIMEOUT_S = 60.0


def measure_window(
    ctx: Ctx, subjects: Sequence[Subject], tree: Tree, window_s: float
) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        sessions: list[Session] = []
        for subject in subjects:

            def start(subject: Subject = subject) -> dict[str, Any]:
                sessions.append(stack.enter_context(Session(ctx, subject, [tree.root])))
                return {}

            failed = attempt(subject, start)
            if failed:
                results[subject.name] = failed
        if not sessions:
            return results
        marks = [len(session.target.hups) for session in sessions]
        sessions[0].write_probe()
        for session, mark in zip(sessions, marks, strict=True):
            if not session.target.wait_hups(mark + 1, PROBE_TIMEOUT_S):
                results[session.subject.name] = {"error": "no signal for the probe write"}
        for session in sessions:
            session.target.wait_quiet(max(0.5, session.subject.settle_s))
        before = {session.subject.name: session.stats() for session in sessions}
        window_marks = [len(session.target.hups) for session in sessions]
        t0 = now_ns()
        # The measurement is this window of doing nothing: a sleep by definition.
        time.sleep(window_s)
        elapsed = (now_ns() - t0) / 1e9
        for session, window_mark in zip(sessions, window_marks, strict=True):
            name = session.subject.name
            if name in results:
                continue
            try:
                after = session.stats()
            except FileNotFoundError:
                results[name] = {"error": "exited during the idle window"}
                continue
            start_stats = before[name]
            results[name] = {
                "files": tree.size,
                "window_s": elapsed,
                "cpu_s": after.cpu_s - start_stats.cpu_s,
                "cpu_s_precise": (after.cpu_ns - start_stats.cpu_ns) / 1e9,
                # utime+stime: it includes threads that exited during the window
                "core_share": (after.cpu_s - start_stats.cpu_s) / elapsed,
                "wakeups": after.ctxt_switches - start_stats.ctxt_switches,
                "signals_during_window": len(session.target.hups) - window_mark,
                "vm_hwm_kib": after.vm_hwm_kib,
            }
    return results


def measure(
    ctx: Ctx, subjects: Sequence[Subject], tree: Tree, window_s: float
) -> dict[str, dict[str, Any]]:
    sleepers = [s for s in subjects if not s.polls]
    pollers = [s for s in subjects if s.polls]
    results = measure_window(ctx, sleepers, tree, window_s)
    for subject in pollers:
        results.update(measure_window(ctx, [subject], tree, window_s))
    if not results:
        raise BenchError("no subject could be measured")
    return results
