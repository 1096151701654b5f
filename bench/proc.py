"""Processes the benchmark starts: spawning, stopping, readiness sockets and /proc figures.

Every process is started in its own session (so its whole group can be stopped with one
killpg) and, where util-linux's ``setpriv`` is present, with a parent-death signal, so even a
benchmark killed with SIGKILL leaves nothing running. ``stop_all()`` is the last line of
defence and runs from ``run.py``'s ``finally``.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
_SETPRIV = shutil.which("setpriv")
_started: list[Proc] = []


class BenchError(RuntimeError):
    """A subject did not do what the measurement needs (not ready, no signal, died)."""


def now_ns() -> int:
    """CLOCK_MONOTONIC in nanoseconds: the clock the target timestamps with."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


class Proc:
    """A started process (and its session), stopped with SIGTERM, then SIGKILL."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log: Path | None = None,
        env: dict[str, str] | None = None,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log = log
        prefix = [_SETPRIV, "--pdeathsig", "KILL", "--"] if _SETPRIV else []
        log_file = open(log, "ab") if log else None  # noqa: SIM115 - closed below
        try:
            self.popen = subprocess.Popen(
                prefix + self.argv,
                stdin=stdin if stdin is not None else subprocess.DEVNULL,
                stdout=stdout if stdout is not None else (log_file or subprocess.DEVNULL),
                stderr=stderr if stderr is not None else (log_file or subprocess.DEVNULL),
                env=env,
                start_new_session=True,
            )
        finally:
            if log_file:
                log_file.close()
        _started.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to the whole group, wait up to ``grace`` s, then SIGKILL."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        # The group may outlive its leader (a pipeline's other half, forked children).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        for stream in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if stream:
                stream.close()
        if self in _started:
            _started.remove(self)

    def log_tail(self, lines: int = 15) -> str:
        if not self.log or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def stop_all() -> None:
    """Stop every process this benchmark started and has not stopped yet."""
    for proc in list(_started):
        proc.stop(grace=2.0)


class NotifyListener:
    """An AF_UNIX datagram socket that plays systemd's part for ``NOTIFY_SOCKET``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[tuple[int, str]] = []
        self._thread: threading.Thread | None = None

    def wait_ready(self, deadline_ns: int, alive: Proc | None = None) -> int:
        """Block until a datagram carries ``READY=1``; return when it was received."""
        while True:
            left = (deadline_ns - now_ns()) / 1e9
            if left <= 0:
                raise BenchError("no READY=1 before the deadline")
            # Wake up at least every 0.5 s to notice a subject that died before READY.
            readable, _, _ = select.select([self.sock], [], [], min(left, 0.5))
            if not readable:
                if alive is not None and not alive.alive():
                    raise BenchError(f"exited with {alive.popen.returncode} before READY=1")
                continue
            data = self.sock.recv(65536)
            received = now_ns()
            text = data.decode(errors="replace")
            self.messages.append((received, text))
            if "READY=1" in text.split("\n"):
                return received

    def drain_in_background(self) -> None:
        """Keep reading after READY, as systemd does: a full socket would block the sender."""
        self._stop = threading.Event()

        def run() -> None:
            while not self._stop.is_set():
                # A timed select only so that close() is noticed; nothing is measured here.
                if select.select([self.sock], [], [], 0.2)[0]:
                    with contextlib.suppress(OSError):
                        self.messages.append(
                            (now_ns(), self.sock.recv(65536).decode(errors="replace"))
                        )

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def drain_in_background(stream: object) -> None:
    """Keep reading a pipe nobody else reads, so its writer never blocks on a full pipe."""

    def run() -> None:
        with contextlib.suppress(OSError, ValueError):
            while stream.read1(65536):  # type: ignore[attr-defined]
                pass

    threading.Thread(target=run, daemon=True).start()


@dataclass(frozen=True)
class ProcStats:
    """Figures for one process, summed over its threads where that applies."""

    vm_hwm_kib: int
    vm_rss_kib: int
    cpu_ticks: int  # utime + stime from /proc/PID/stat, in CLK_TCK units
    cpu_ns: int  # sum of /proc/PID/task/*/schedstat run time: nanosecond precision
    ctxt_switches: int  # voluntary + involuntary, over all threads: roughly the wake-ups
    threads: int

    @property
    def cpu_s(self) -> float:
        return self.cpu_ticks / CLK_TCK


def proc_stats(pid: int) -> ProcStats:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)

    def kib(name: str) -> int:
        return int(fields.get(name, "0 kB").split()[0])

    stat = Path(f"/proc/{pid}/stat").read_text()
    after_comm = stat.rsplit(")", 1)[1].split()
    # Fields 14 and 15 (utime, stime); after_comm starts at field 3.
    cpu_ticks = int(after_comm[11]) + int(after_comm[12])
    cpu_ns = 0
    switches = 0
    threads = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            cpu_ns += int((task / "schedstat").read_text().split()[0])
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    switches += int(line.split()[1])
            threads += 1
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended while we looked
    return ProcStats(kib("VmHWM"), kib("VmRSS"), cpu_ticks, cpu_ns, switches, threads)


@contextlib.contextmanager
def unpreempted_writer() -> Iterator[bool]:
    """Run the calling thread SCHED_FIFO, so the subject it wakes cannot preempt it.

    Without this, close() can wake the subject on the writer's own CPU, the subject and the
    target run first, and the writer takes its "just after close()" timestamp late: latencies
    come out too small, even negative. Yields whether the priority could be set (root only).
    """
    try:
        before = os.sched_getscheduler(0), os.sched_getparam(0)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except (OSError, AttributeError):
        yield False
        return
    try:
        yield True
    finally:
        os.sched_setscheduler(0, before[0], before[1])
