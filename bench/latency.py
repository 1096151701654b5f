"""Latency: one file rewritten -> the target has the SIGHUP.

The samples of all subjects are taken in rounds (``combine``): floor, peers and reloadd
in turn, then again, so that a change in how busy the machine is (a shared VM has phases)
does not fall on one subject only.

The writer takes CLOCK_MONOTONIC just after close(); the target takes it just after
sigwaitinfo() returns. Each sample rewrites a different file (spread over the tree) with new
bytes, and the next sample waits until the subject is quiet and past its debounce window.
"""

from __future__ import annotations

import random
import time
from typing import Any

from proc import unpreempted_writer
from session import Ctx, Session
from stats import summary
from subjects import Subject
from trees import Tree, new_record, write_file


def measure(ctx: Ctx, subject: Subject, tree: Tree, samples: int, seed: int = 6) -> dict[str, Any]:
    rng = random.Random(seed)
    timeout = 5.0 + 3 * subject.period_s
    latencies: list[float] = []
    missed = 0
    extra = 0
    with Session(ctx, subject, [tree.root]) as session, unpreempted_writer() as realtime:
        target = session.target
        session.warm_up()
        for i, path in enumerate(tree.spread(samples)):
            mark = len(target.hups)
            t_write = write_file(path, new_record(f"sample {i}"))
            if target.wait_hups(mark + 1, timeout):
                latencies.append((target.hups[mark].t_ns - t_write) / 1e6)
            else:
                missed += 1
                session.running.check_alive()
            total = target.wait_quiet(subject.settle_s)
            extra += max(0, total - mark - 1)
            # Nothing announces that a subject's debounce window or poll phase has passed, so
            # between samples this is a deliberate sleep, jittered over the subject's own period
            # so that samples do not lock to its timer.
            time.sleep(rng.uniform(0.0, max(0.02, subject.period_s)))
    return {
        "samples_ms": latencies,
        "missed": missed,
        "extra_signals": extra,
        "tree_files": tree.size,
        "writer_sched_fifo": realtime,
        **summary(latencies),
    }


def combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One subject's result from its rounds: every sample, summarised together."""
    failed = next((r for r in rounds if "samples_ms" not in r), None)
    if failed is not None:
        return failed  # an error or a skip says so for the whole measure
    samples = [x for r in rounds for x in r["samples_ms"]]
    return {
        **rounds[-1],
        "samples_ms": samples,
        "missed": sum(r["missed"] for r in rounds),
        "extra_signals": sum(r["extra_signals"] for r in rounds),
        "rounds": len(rounds),
        **summary(samples),
    }
