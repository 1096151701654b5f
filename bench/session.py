"""A session: one subject watching one tree (or several services), signalling its target.

``with Session(ctx, subject, [root]) as s:`` starts a target, waits until it blocks SIGHUP,
starts the subject, waits until it is armed (``READY=1`` or inotifywait's own message), and
stops both on the way out, whatever happened.
"""

from __future__ import annotations

import contextlib
import itertools
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from proc import BenchError, ProcStats, proc_stats
from subjects import Running, Service, Subject
from target import Target
from trees import new_record, record, write_file

PROBE_NAME = "probe.txt"


@dataclass
class Ctx:
    """What every measure needs: the scratch directory and the run's scale."""

    workdir: Path
    smoke: bool
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def new_dir(self, label: str) -> Path:
        path = self.workdir / "sessions" / f"{next(self._ids):03d}-{label}"
        path.mkdir(parents=True)
        return path


def ensure_probe(root: Path) -> Path:
    """The file probes rewrite; created before any subject starts, so creating it is silent."""
    probe = root / PROBE_NAME
    if not probe.exists():
        probe.write_bytes(record("probe"))
    return probe


class Session:
    def __init__(
        self,
        ctx: Ctx,
        subject: Subject,
        roots: Sequence[Path],
        *,
        probe_timeout: float = 30.0,
    ) -> None:
        self.ctx = ctx
        self.subject = subject
        self.roots = list(roots)
        self.probe_timeout = probe_timeout
        self.workdir = ctx.new_dir(subject.name)
        self._stack = contextlib.ExitStack()
        self.target: Target
        self.running: Running

    def __enter__(self) -> Session:
        for root in self.roots:
            ensure_probe(root)
        with contextlib.ExitStack() as stack:
            self.target = Target(
                self.workdir / "pids", count=len(self.roots), log=self.workdir / "target.log"
            )
            stack.callback(self.target.stop)
            self.target.wait_up()
            services = [
                Service(f"s{i:03d}", root, self.target.pidfile(i), self.target.pids[i])
                for i, root in enumerate(self.roots)
            ]
            self.running = self.subject.launch(services, self.workdir)
            stack.callback(self.running.stop)
            self._stack = stack.pop_all()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.close()

    # --- probing ---------------------------------------------------------------------

    def probe_path(self, service: int = 0) -> str:
        return str(self.roots[service] / PROBE_NAME)

    def write_probe(self, service: int = 0) -> int:
        """Rewrite the probe file with new bytes; CLOCK_MONOTONIC ns just after close."""
        return write_file(self.probe_path(service), new_record("probe"))

    def probe(self, service: int = 0, timeout: float | None = None) -> float:
        """One write, one signal back: the latency in ms. Raises BenchError if none comes."""
        mark = len(self.target.hups)
        t_write = self.write_probe(service)
        if not self.target.wait_hups(mark + 1, timeout or self.probe_timeout):
            self.running.check_alive()
            raise BenchError(f"no signal within {timeout or self.probe_timeout:.0f} s of a write")
        return (self.target.hups[mark].t_ns - t_write) / 1e6

    def settle(self) -> None:
        """Let the subject go quiet after a change: waits for the absence of signals."""
        self.target.wait_quiet(self.subject.settle_s)

    def warm_up(self, writes: int = 2) -> None:
        """A few probes first, so one-time costs (lazy imports, first baseline) are not sampled."""
        for _ in range(writes):
            self.probe()
            self.settle()

    def stats(self) -> ProcStats:
        return proc_stats(self.running.pid)


def attempt(subject: Subject, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one subject's measure; a subject that is missing or fails becomes a note, not a crash."""
    reason = subject.unavailable()
    if reason:
        return {"skipped": reason}
    try:
        return measure()
    except BenchError as exc:
        return {"error": str(exc)}
    except Exception as exc:  # a bug in a subject must not lose the other subjects' figures
        return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
