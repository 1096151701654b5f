"""The subjects: what is measured, and how each is started and known to be armed.

Every subject watches the same tree and sends SIGHUP to the same kind of target:

- ``floor``: ``floor.py`` (inotify_simple, no debounce), ready by ``READY=1``;
- ``inotifywait``: ``inotifywait -m -r ... | while read; do kill -HUP; done``, ready when it
  prints "Watches established.";
- ``watchfiles``: ``watchfiles_peer.py`` with watchfiles' defaults, ready when its watcher
  object has been built (``READY=1`` from a wrapper round its constructor);
- ``reloadd-*``: ``python -m reloadd -c CONFIG`` with a pidfile target, ready by ``READY=1``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from proc import BenchError, NotifyListener, Proc, drain_in_background, now_ns

BENCH_DIR = Path(__file__).resolve().parent
READY_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Service:
    """One watched root and the recorder that stands for its server."""

    name: str
    root: Path
    pidfile: Path
    pid: int


@dataclass
class Running:
    """A started subject; ``procs[0]`` is the process whose figures are measured."""

    procs: list[Proc]
    t_launch_ns: int
    t_ready_ns: int | None = None
    ready_by: str = "notify"  # notify (READY=1) | stderr (inotifywait's message)
    notes: list[str] = field(default_factory=list)
    listener: NotifyListener | None = None

    @property
    def pid(self) -> int:
        return self.procs[0].pid

    @property
    def ready_ms(self) -> float | None:
        if self.t_ready_ns is None:
            return None
        return (self.t_ready_ns - self.t_launch_ns) / 1e6

    def check_alive(self) -> None:
        for proc in self.procs:
            if not proc.alive():
                tail = proc.log_tail()
                raise BenchError(
                    f"{proc.argv[0]} exited with {proc.popen.returncode}"
                    + (f"; log:\n{tail}" if tail else "")
                )

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()
        if self.listener is not None:
            self.listener.close()
            self.listener = None


def subject_env(notify_socket: Path | None = None) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key != "NOTIFY_SOCKET" and not key.startswith(("WATCHDOG_", "LISTEN_"))
    }
    if notify_socket is not None:
        env["NOTIFY_SOCKET"] = str(notify_socket)
    return env


class Subject:
    """Base: a name, whether it coalesces, and how long it needs to settle after a change."""

    name = ""
    coalescing = False
    multi_service = False  # can watch several services, each with its own target
    settle_s = 0.05  # after a change is signalled, quiet time before the next sample
    period_s = 0.0  # a periodic timer of its own (poll interval, batch step), if any
    polls = False  # scans the tree on a timer instead of sleeping until an event

    def unavailable(self) -> str | None:
        """Why this subject cannot run here, or None."""
        return None

    def launch(self, services: Sequence[Service], workdir: Path) -> Running:
        raise NotImplementedError

    @staticmethod
    def _one(services: Sequence[Service]) -> Service:
        if len(services) != 1:
            raise BenchError("this subject watches a single tree")
        return services[0]


def _notify_launch(argv: list[str], workdir: Path, log: Path) -> Running:
    """Start ``argv`` with our own NOTIFY_SOCKET and wait for READY=1.

    The socket stays open, and is read, until the subject stops, as under systemd.
    """
    listener = NotifyListener(workdir / "notify.sock")
    t_launch = now_ns()
    try:
        proc = Proc(argv, env=subject_env(listener.path), log=log)
    except BaseException:
        listener.close()
        raise
    running = Running([proc], t_launch, listener=listener)
    try:
        running.t_ready_ns = listener.wait_ready(t_launch + int(READY_TIMEOUT_S * 1e9), alive=proc)
    except BenchError as exc:
        running.stop()
        tail = proc.log_tail()
        raise BenchError(f"{exc}" + (f"; log:\n{tail}" if tail else "")) from None
    except BaseException:
        running.stop()
        raise
    listener.drain_in_background()
    return running


class Floor(Subject):
    name = "floor"
    settle_s = 0.03

    def launch(self, services: Sequence[Service], workdir: Path) -> Running:
        service = self._one(services)
        argv = [sys.executable, str(BENCH_DIR / "floor.py"), str(service.root), str(service.pid)]
        return _notify_launch(argv, workdir, workdir / "floor.log")


class Inotifywait(Subject):
    name = "inotifywait"
    settle_s = 0.03

    def unavailable(self) -> str | None:
        if shutil.which("inotifywait") is None:
            return "inotifywait not installed (Debian: apt-get install inotify-tools)"
        return None

    def launch(self, services: Sequence[Service], workdir: Path) -> Running:
        service = self._one(services)
        t_launch = now_ns()
        watcher = Proc(
            [
                "inotifywait",
                "-m",
                "-r",
                "-e",
                "close_write,moved_to,create,delete",
                "--exclude",
                r"(^|/)\.git(/|$)",
                str(service.root),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert watcher.popen.stdout is not None
        assert watcher.popen.stderr is not None
        killer = Proc(
            ["bash", "-c", 'while read -r _; do kill -HUP "$0"; done', str(service.pid)],
            stdin=watcher.popen.stdout.fileno(),
        )
        running = Running([watcher, killer], t_launch, ready_by="stderr")
        try:
            for line in watcher.popen.stderr:
                if line.startswith(b"Watches established"):
                    running.t_ready_ns = now_ns()
                    break
                running.notes.append(line.decode(errors="replace").strip())
            else:
                raise BenchError("inotifywait exited before its watches were established")
        except BaseException:
            running.stop()
            raise
        drain_in_background(watcher.popen.stderr)
        return running


class Watchfiles(Subject):
    name = "watchfiles"
    coalescing = True
    settle_s = 0.15  # its step is 50 ms; a batch is yielded only after that much quiet
    period_s = 0.05

    def unavailable(self) -> str | None:
        if importlib.util.find_spec("watchfiles") is None:
            return "watchfiles not installed (pip install watchfiles)"
        return None

    def launch(self, services: Sequence[Service], workdir: Path) -> Running:
        service = self._one(services)
        peer = BENCH_DIR / "watchfiles_peer.py"
        argv = [sys.executable, str(peer), str(service.root), str(service.pid)]
        return _notify_launch(argv, workdir, workdir / "watchfiles.log")


def toml_str(value: object) -> str:
    return json.dumps(str(value))  # a JSON string of a path is a valid TOML basic string


class Reloadd(Subject):
    """reloadd with a pidfile target per service and the given keys."""

    coalescing = True
    multi_service = True

    def __init__(
        self,
        name: str,
        *,
        debounce: str | None,
        backend: str = "inotify",
        poll_interval_ms: int | None = None,
        debounce_s: float = 0.02,
    ) -> None:
        self.name = name
        self.debounce = debounce  # None: leave the key out and get the built-in default
        self.debounce_s = debounce_s
        self.backend = backend
        self.poll_interval = None if poll_interval_ms is None else f"{poll_interval_ms}ms"
        self.settle_s = debounce_s + 0.05
        self.polls = backend == "poll"
        if poll_interval_ms is not None:
            self.period_s = poll_interval_ms / 1000
            self.settle_s += 0.1

    def unavailable(self) -> str | None:
        try:
            found = importlib.util.find_spec("reloadd.cli") is not None
        except ImportError:
            found = False
        return None if found else "reloadd is not importable (no reloadd.cli yet)"

    def config(self, services: Sequence[Service], workdir: Path) -> str:
        lines = ["[daemon]", f"socket = {toml_str(workdir / 'control.sock')}", ""]
        for service in services:
            lines += [
                f"[services.{service.name}]",
                f"watch = [{toml_str(service.root)}]",
                f"pidfile = {toml_str(service.pidfile)}",
                f'backend = "{self.backend}"',
            ]
            if self.debounce is not None:
                lines.append(f'debounce = "{self.debounce}"')
            if self.poll_interval is not None:
                lines.append(f'poll_interval = "{self.poll_interval}"')
            lines.append("")
        return "\n".join(lines)

    def launch(self, services: Sequence[Service], workdir: Path) -> Running:
        config = workdir / "reloadd.toml"
        config.write_text(self.config(services, workdir))
        argv = [sys.executable, "-m", "reloadd", "-c", str(config)]
        return _notify_launch(argv, workdir, workdir / "reloadd.log")


def all_subjects(smoke: bool) -> list[Subject]:
    poll_interval_ms = 200 if smoke else 1000
    return [
        Floor(),
        Inotifywait(),
        Watchfiles(),
        Reloadd("reloadd-0ms", debounce="0ms", debounce_s=0.0),
        Reloadd("reloadd", debounce=None),  # the built-in default debounce (20 ms)
        Reloadd("reloadd-poll", debounce=None, backend="poll", poll_interval_ms=poll_interval_ms),
    ]
