"""Many services: N services of M files each, one recorder process (and pidfile) per service.

reloadd gets one ``[services.sNNN]`` per tree; the floor, which knows no services, watches the
parent of all of them with one target and gives the reference READY time and RSS. Then, for a
few services in turn, a probe file in that service's tree is rewritten: exactly that
service's recorder must get the signal, and no other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from proc import BenchError
from session import Ctx, Session
from stats import summary
from subjects import Subject

SIGNAL_TIMEOUT_S = 30.0


def picks(count: int, n: int) -> list[int]:
    """``n`` service indexes spread from the first to the last."""
    if n >= count:
        return list(range(count))
    return sorted({round(i * (count - 1) / max(1, n - 1)) for i in range(n)})


def measure(
    ctx: Ctx, subject: Subject, parent: Path, roots: list[Path], files: int, checks: int
) -> dict[str, Any]:
    watched = roots if subject.multi_service else [parent]
    with Session(ctx, subject, watched, probe_timeout=SIGNAL_TIMEOUT_S) as session:
        stats = session.stats()
        result: dict[str, Any] = {
            "services": len(watched),
            "files": files,
            "ready_ms": session.running.ready_ms,
            "rss_mib": stats.vm_hwm_kib / 1024,
        }
        if not subject.multi_service:
            return result
        latencies: list[float] = []
        wrong: list[dict[str, int]] = []
        for service in picks(len(roots), checks):
            mark = len(session.target.hups)
            t_write = session.write_probe(service)
            if not session.target.wait_hups(mark + 1, SIGNAL_TIMEOUT_S):
                session.running.check_alive()
                raise BenchError(f"no signal for a change in service {service}")
            session.target.wait_quiet(session.subject.settle_s + 0.2)
            hups = session.target.since(mark)
            right = [hup for hup in hups if hup.idx == service]
            if right:
                latencies.append((right[0].t_ns - t_write) / 1e6)
            wrong += [
                {"changed": service, "signalled": hup.idx} for hup in hups if hup not in right
            ]
            if len(right) != 1:
                wrong.append({"changed": service, "signals_to_it": len(right)})
        result.update(
            {
                "checked": len(latencies),
                "isolated": not wrong,
                "wrong": wrong,
                "latency_ms": summary(latencies),
            }
        )
        result["rss_mib"] = session.stats().vm_hwm_kib / 1024
        return result
