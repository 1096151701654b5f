"""Start-up and size: launch -> armed, and peak memory, on trees of growing size.

Launch is CLOCK_MONOTONIC just before the subject is spawned (its target is already up);
armed is when our NOTIFY_SOCKET receives ``READY=1`` (floor, watchfiles' wrapper, reloadd) or
when inotifywait prints "Watches established.". After that one probe write must come back as
a signal (a subject that says READY before it watches is caught), then VmHWM is read.
"""

from __future__ import annotations

from typing import Any

from session import Ctx, Session
from stats import median
from subjects import Subject
from trees import Tree


def measure(ctx: Ctx, subject: Subject, tree: Tree, reps: int) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    for _ in range(reps):
        with Session(ctx, subject, [tree.root], probe_timeout=60.0) as session:
            ready_ms = session.running.ready_ms
            probe_ms = session.probe()
            stats = session.stats()
            runs.append(
                {
                    "ready_ms": ready_ms,
                    "ready_by": session.running.ready_by,
                    "first_probe_ms": probe_ms,
                    "vm_hwm_kib": stats.vm_hwm_kib,
                    "vm_rss_kib": stats.vm_rss_kib,
                    "threads": stats.threads,
                }
            )
    return {
        "files": tree.size,
        "dirs": tree.dirs,
        "runs": runs,
        "ready_ms": median([run["ready_ms"] for run in runs if run["ready_ms"] is not None]),
        "rss_mib": median([run["vm_hwm_kib"] / 1024 for run in runs]),
        "ready_by": runs[0]["ready_by"],
    }
