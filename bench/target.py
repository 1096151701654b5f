"""The target: a tiny process that records when each SIGHUP reaches it.

Run as a program (``python bench/target.py [--count N] --pidfile-dir DIR``) it blocks SIGHUP,
writes one pidfile per recorder (``DIR/0.pid`` ...), prints ``up IDX PID`` for each and then,
for every SIGHUP taken with ``sigwaitinfo``, one line ``hup IDX SENDER_PID T_NS`` where T_NS is
``CLOCK_MONOTONIC`` just after the signal was taken. With ``--count N`` the process forks N
recorders (one per service for the many-services measure) that share the output pipe; a line
is far below PIPE_BUF, so lines never interleave.

Standard signals do not queue: two SIGHUPs that land while a recorder is writing its previous
line count as one. A recorder is back in ``sigwaitinfo`` within microseconds, so this only
hides bursts from senders without any coalescing of their own (the floor, inotifywait).

Imported (by the benchmark), ``Target`` starts such a process and collects its lines.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from proc import BenchError, Proc


def _record(idx: int, pidfile_dir: Path) -> None:
    pid = os.getpid()
    tmp = pidfile_dir / f".{idx}.pid.tmp"
    tmp.write_text(f"{pid}\n")
    tmp.rename(pidfile_dir / f"{idx}.pid")
    os.write(1, f"up {idx} {pid}\n".encode())
    while True:
        info = signal.sigwaitinfo({signal.SIGHUP})
        t_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        os.write(1, f"hup {idx} {info.si_pid} {t_ns}\n".encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--pidfile-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    # Blocked before any pidfile exists, so an early SIGHUP waits instead of killing us;
    # children inherit the mask.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    if args.count == 1:
        _record(0, args.pidfile_dir)
    for idx in range(args.count):
        if os.fork() == 0:
            try:
                _record(idx, args.pidfile_dir)
            finally:
                os._exit(0)
    # The benchmark stops the whole process group; the parent only waits.
    while True:
        try:
            os.wait()
        except ChildProcessError:
            return 0


# --- the benchmark's side ---------------------------------------------------------------


@dataclass(frozen=True)
class Hup:
    idx: int  # which recorder (service) got it
    sender: int  # si_pid: the process that sent it
    t_ns: int  # CLOCK_MONOTONIC at receipt


class Target:
    """A running target process and the SIGHUPs it has recorded so far."""

    def __init__(self, pidfile_dir: Path, count: int = 1, log: Path | None = None) -> None:
        self.count = count
        self.pidfile_dir = pidfile_dir
        pidfile_dir.mkdir(parents=True, exist_ok=True)
        self.hups: list[Hup] = []
        self.pids: dict[int, int] = {}
        self._cond = threading.Condition()
        self.proc = Proc(
            [sys.executable, __file__, "--count", str(count), "--pidfile-dir", str(pidfile_dir)],
            stdout=subprocess.PIPE,
            log=log,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def pidfile(self, idx: int = 0) -> Path:
        return self.pidfile_dir / f"{idx}.pid"

    def _read(self) -> None:
        assert self.proc.popen.stdout is not None
        fd = self.proc.popen.stdout.fileno()
        pending = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            with self._cond:
                for line in lines:
                    kind, *rest = line.decode().split()
                    if kind == "up":
                        self.pids[int(rest[0])] = int(rest[1])
                    elif kind == "hup":
                        self.hups.append(Hup(int(rest[0]), int(rest[1]), int(rest[2])))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_up(self, timeout: float = 30.0) -> None:
        """Wait until every recorder has written its pidfile and blocks SIGHUP."""
        with self._cond:
            ok = self._cond.wait_for(
                lambda: len(self.pids) == self.count or not self.proc.alive(), timeout
            )
        if not ok or len(self.pids) != self.count:
            raise BenchError(f"target not up ({len(self.pids)}/{self.count} recorders)")

    def wait_hups(self, n: int, timeout: float) -> bool:
        """Wait until at least ``n`` SIGHUPs have been recorded in total."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.hups) >= n, timeout)

    def wait_quiet(self, quiet: float, limit: float = 120.0) -> int:
        """Wait until no SIGHUP has arrived for ``quiet`` seconds; return the total count.

        This is waiting for an absence, so a timed wait is the only way to observe it.
        """
        deadline = time.monotonic() + limit
        with self._cond:
            while True:
                seen = len(self.hups)
                left = deadline - time.monotonic()
                if left <= 0:
                    return seen
                self._cond.wait_for(lambda seen=seen: len(self.hups) != seen, min(quiet, left))
                if len(self.hups) == seen:
                    return seen

    def since(self, mark: int) -> list[Hup]:
        with self._cond:
            return list(self.hups[mark:])

    def stop(self) -> None:
        self.proc.stop()
        with contextlib.suppress(RuntimeError):
            self._reader.join(2.0)


if __name__ == "__main__":
    sys.exit(main())
