"""Storms: many files change at once; how many signals reach the target, and when.

- ``rewrite``: every file of a tree rewritten with new bytes as fast as one thread can (10,000
  files give more events than the default ``max_queued_events`` of 16,384 can hold while a
  watcher is busy, so the inotify queue overflows);
- ``overflow``: the same rewrite while the subject is stopped (SIGSTOP, confirmed with
  waitpid), so its queue overflows for certain; it is continued (SIGCONT) after the last
  write and times count from then. This is the rescan path: one reload, not zero, not many;
- ``git``: ``git checkout`` between two commits that differ in every file of a tree.

After the first signal we wait for quiet (longer than reloadd's 2 s ``max_delay``), so a late
second reload is counted too. Times are from the last write (the last close(), or the git
process's exit) to the first and last signal; negative means before it. Each storm is run
``reps`` times (``repeat``): the signal count shown is the largest of the runs, the times
are their medians, and every run is kept in the JSON.
"""

from __future__ import annotations

import os
import re
import signal
import statistics
from collections.abc import Callable
from typing import Any

from proc import BenchError, now_ns
from session import Ctx, Session
from subjects import Subject
from trees import GitRepo, Tree, rewrite_all

FIRST_SIGNAL_TIMEOUT_S = 60.0
OVERFLOW = re.compile(rb"overflow", re.IGNORECASE)


def _result(session: Session, mark: int, first_write: int, last_write: int) -> dict[str, Any]:
    hups = session.target.since(mark)
    log = session.running.procs[0].log
    overflow_lines = len(OVERFLOW.findall(log.read_bytes())) if log and log.exists() else None
    return {
        "signals": len(hups),
        "write_ms": (last_write - first_write) / 1e6,
        "first_after_last_write_ms": (hups[0].t_ns - last_write) / 1e6,
        "last_after_last_write_ms": (hups[-1].t_ns - last_write) / 1e6,
        "signal_times_ms": [(hup.t_ns - last_write) / 1e6 for hup in hups],
        "log_overflow_mentions": overflow_lines,
    }


def _wait_signals(session: Session, mark: int, quiet: float) -> None:
    if not session.target.wait_hups(mark + 1, FIRST_SIGNAL_TIMEOUT_S):
        session.running.check_alive()
        raise BenchError(f"no signal within {FIRST_SIGNAL_TIMEOUT_S:.0f} s of the storm")
    session.target.wait_quiet(quiet)


def measure_rewrite(ctx: Ctx, subject: Subject, tree: Tree, quiet: float) -> dict[str, Any]:
    with Session(ctx, subject, [tree.root]) as session:
        session.warm_up(1)
        mark = len(session.target.hups)
        # Normal priority on purpose: a SCHED_FIFO writer starved subjects that happened to
        # share its CPU, which turned this into a second overflow storm.
        first, last = rewrite_all(tree.files)
        _wait_signals(session, mark, quiet)
        return {"files": tree.size, **_result(session, mark, first, last)}


def measure_overflow(ctx: Ctx, subject: Subject, tree: Tree, quiet: float) -> dict[str, Any]:
    with Session(ctx, subject, [tree.root]) as session:
        session.warm_up(1)
        mark = len(session.target.hups)
        pid = session.running.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            os.waitpid(pid, os.WUNTRACED)  # returns once it is stopped (it is our child)
            rewrite_all(tree.files)
        finally:
            resumed = now_ns()
            os.kill(pid, signal.SIGCONT)
        _wait_signals(session, mark, quiet)
        result = _result(session, mark, resumed, resumed)
    del result["write_ms"]
    return {"files": tree.size, **result}


def measure_git(ctx: Ctx, subject: Subject, repo: GitRepo, quiet: float) -> dict[str, Any]:
    current = repo.tree.root.joinpath(".git", "HEAD").read_text().strip()
    rev = repo.revs[0] if current == repo.revs[1] else repo.revs[1]
    with Session(ctx, subject, [repo.tree.root]) as session:
        session.warm_up(1)
        mark = len(session.target.hups)
        start, end = repo.checkout(rev)
        _wait_signals(session, mark, quiet)
        result = _result(session, mark, start, end)
    result["git_ms"] = result.pop("write_ms")
    return {"files": repo.tree.size, **result}


def repeat(measure: Callable[[], dict[str, Any]], reps: int) -> dict[str, Any]:
    """``measure`` run ``reps`` times: the most signals any run saw, the median times."""
    runs = [measure() for _ in range(reps)]
    if reps == 1:
        return runs[0]
    out = dict(runs[-1])
    out["signals"] = max(r["signals"] for r in runs)
    for key in ("first_after_last_write_ms", "last_after_last_write_ms", "write_ms", "git_ms"):
        if key in out:
            out[key] = statistics.median(r[key] for r in runs)
    mentions = [r["log_overflow_mentions"] for r in runs]
    out["log_overflow_mentions"] = None if None in mentions else min(mentions)
    out["runs"] = runs
    return out
