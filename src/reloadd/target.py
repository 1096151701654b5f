"""How to reach a service's processes: ``Supervised``, ``Pidfile``, ``Unit``.

Every delivery goes through ``safe_kill``/``safe_killpg``, which refuse pid <= 1,
reloadd's own pid and reloadd's own process group whatever a pidfile or systemd says.
A supervised child is signalled through a pidfd (Linux >= 5.3), so a pid that was
recycled after the child died is never hit.

``run`` is the one way reloadd runs a short-lived command for a service (``check`` and
``exec``): its own session, the service's process keys, a timeout that kills the whole
process group, and the last ``OUTPUT_TAIL`` bytes of its output kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from reloadd.config import ServiceSpec

log = logging.getLogger("reloadd.target")

OUTPUT_TAIL = 4096
_DROP_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS")
_DROP_PREFIX = ("LISTEN_",)
BACKOFF_MAX = 60.0  # seconds: cap on the delay between restarts of a crashing command
UP_RESETS_BACKOFF = 30.0  # seconds up after which the next crash starts from restart_delay


class DeliveryError(Exception):
    """A signal, restart or exec could not be delivered; the message says why."""


def _check_pid(pid: int) -> None:
    if pid <= 1:
        raise DeliveryError(f"refusing to signal pid {pid}")
    if pid == os.getpid():
        raise DeliveryError(f"refusing to signal pid {pid}: that is reloadd itself")


def safe_kill(pid: int, sig: int) -> None:
    _check_pid(pid)
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        raise DeliveryError(f"pid {pid} does not exist (the process is gone)") from None
    except PermissionError:
        raise DeliveryError(f"not permitted to signal pid {pid}") from None


def safe_killpg(pgid: int, sig: int) -> None:
    _check_pid(pgid)
    if pgid == os.getpgrp():
        raise DeliveryError(f"refusing to signal process group {pgid}: it is reloadd's own")
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        raise DeliveryError(f"process group {pgid} does not exist (it is gone)") from None
    except PermissionError:
        raise DeliveryError(f"not permitted to signal process group {pgid}") from None


def child_environment(spec: ServiceSpec) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in _DROP_ENV and not k.startswith(_DROP_PREFIX)
    }
    env.update(dict(spec.environment))
    return env


def spawn_options(spec: ServiceSpec) -> dict[str, Any]:
    """Keyword arguments for asyncio.create_subprocess_exec: the service's process keys."""
    opts: dict[str, Any] = {
        "cwd": spec.working_directory,
        "env": child_environment(spec),
        "start_new_session": True,
        "stdin": asyncio.subprocess.DEVNULL,
        "close_fds": True,
        "restore_signals": True,
    }
    if spec.user is not None:
        opts["user"] = spec.user
        if spec.group is None:
            import pwd

            try:
                entry = pwd.getpwnam(spec.user) if not spec.user.isdigit() else None
            except KeyError:
                entry = None
            if entry is not None:
                opts["group"] = entry.pw_gid
                opts["extra_groups"] = _groups_of(entry.pw_name, entry.pw_gid)
    if spec.group is not None:
        opts["group"] = spec.group
    return opts


def _groups_of(user: str, gid: int) -> list[int]:
    try:
        return os.getgrouplist(user, gid)
    except OSError:
        return [gid]


@dataclass(frozen=True)
class RunResult:
    argv: tuple[str, ...]
    returncode: int | None  # None when it could not be started or timed out
    output: str  # the last OUTPUT_TAIL bytes of stdout+stderr, decoded leniently
    timed_out: bool = False
    error: str = ""  # why it could not be started

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        name = os.path.basename(self.argv[0]) if self.argv else "?"
        if self.error:
            return f"{name} could not be started: {self.error}"
        if self.timed_out:
            return f"{name} timed out and was killed"
        if self.returncode is not None and self.returncode < 0:
            return f"{name} was killed by {signal.Signals(-self.returncode).name}"
        return f"{name} exited with status {self.returncode}"


async def run(argv: Sequence[str], spec: ServiceSpec, timeout: float) -> RunResult:
    """Run a short command for a service; never raises for the command's failures."""
    argv = tuple(argv)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            **spawn_options(spec),
        )
    except (OSError, ValueError, KeyError) as exc:
        return RunResult(argv, None, "", error=_os_error(exc))
    assert proc.stdout is not None
    tail = bytearray()

    async def collect() -> None:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(65536):
            tail.extend(chunk)
            del tail[:-OUTPUT_TAIL]
        await proc.wait()

    timed_out = False
    try:
        await asyncio.wait_for(collect(), timeout)
    except asyncio.TimeoutError:
        timed_out = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise
    text = tail.decode("utf-8", "replace")
    return RunResult(argv, None if timed_out else proc.returncode, text, timed_out=timed_out)


def _os_error(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    return str(exc)


# -- targets ---------------------------------------------------------------------------


class Target(Protocol):
    kind: str

    async def start(self) -> None: ...

    async def signal(self, sig: signal.Signals, scope: str) -> str: ...

    async def restart(self) -> str: ...

    async def stop(self) -> None: ...

    def describe(self) -> dict[str, Any]: ...


class Supervised:
    """A command reloadd starts in its own session, reaps, restarts and stops."""

    kind = "command"

    def __init__(self, spec: ServiceSpec) -> None:
        self.spec = spec
        self.proc: asyncio.subprocess.Process | None = None
        self.pidfd: int | None = None
        self.started_at: float | None = None
        self.starts = 0
        self.last_exit: str = ""
        self.failed: str = ""  # why supervision gave up; empty while it is fine
        self._stopping = False
        self._reaper: asyncio.Task[None] | None = None
        self._delay = spec.restart_delay
        self._start_times: list[float] = []
        self.on_exit: Callable[[], None] | None = None  # the service looks again at its state

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    def describe(self) -> dict[str, Any]:
        pid = self.pid
        return {
            "kind": "command",
            "command": list(self.spec.command or ()),
            "pid": pid,
            "pgid": pid,
            "starts": self.starts,
            "last_exit": self.last_exit or None,
            "failed": self.failed or None,
        }

    async def start(self) -> None:
        if self.pid is not None:
            return  # already running (handed over by a config change)
        self._stopping = False
        self.failed = ""
        await self._spawn()

    async def _spawn(self) -> None:
        argv = self.spec.command or ()
        try:
            self.proc = await asyncio.create_subprocess_exec(*argv, **spawn_options(self.spec))
        except (OSError, ValueError, KeyError) as exc:
            self.proc = None
            self.last_exit = f"could not start {argv[0]}: {_os_error(exc)}"
            log.error("%s: %s", self.spec.name, self.last_exit)
            self._schedule_restart(failure=True)
            return
        self.starts += 1
        self.started_at = time.monotonic()
        self._start_times = [t for t in self._start_times if self.started_at - t < 60] + [
            self.started_at
        ]
        try:
            self.pidfd = os.pidfd_open(self.proc.pid)
        except OSError:
            self.pidfd = None
        log.info("%s: started %s (pid %d)", self.spec.name, " ".join(argv), self.proc.pid)
        self._reaper = asyncio.get_running_loop().create_task(self._reap(self.proc))

    async def _reap(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        self._close_pidfd()
        self.last_exit = _describe_exit(code)
        if self._stopping:
            return
        failure = code != 0
        log.warning("%s: pid %d %s", self.spec.name, proc.pid, self.last_exit)
        self._schedule_restart(failure=failure)
        if self.on_exit is not None:
            self.on_exit()

    def _schedule_restart(self, failure: bool) -> None:
        policy = self.spec.restart
        if self._stopping or policy == "no" or (policy == "on-failure" and not failure):
            return
        now = time.monotonic()
        if self.started_at is not None and now - self.started_at > UP_RESETS_BACKOFF:
            self._delay = self.spec.restart_delay
        if len(self._start_times) >= 5:
            self.failed = (
                f"started {len(self._start_times)} times within 60s; giving up until "
                "`reloadctl restart` or a config change"
            )
            log.error("%s: %s", self.spec.name, self.failed)
            return
        delay, self._delay = self._delay, min(self._delay * 2 or 0.1, BACKOFF_MAX)
        log.info("%s: restarting in %.1fs", self.spec.name, delay)
        loop = asyncio.get_running_loop()
        self._reaper = loop.create_task(self._restart_after(delay))

    async def _restart_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        if not self._stopping:
            await self._spawn()

    def _close_pidfd(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    async def signal(self, sig: signal.Signals, scope: str) -> str:
        pid = self.pid
        if pid is None:
            raise DeliveryError(
                f"{self.spec.command[0] if self.spec.command else '?'} "
                f"is not running ({self.last_exit or 'not started'})"
            )
        if scope == "group":
            safe_killpg(pid, sig)
            return f"{sig.name} -> process group {pid}"
        if self.pidfd is not None:
            try:
                signal.pidfd_send_signal(self.pidfd, sig)
            except ProcessLookupError:
                raise DeliveryError(f"pid {pid} has exited") from None
        else:
            safe_kill(pid, sig)
        return f"{sig.name} -> pid {pid}"

    async def restart(self) -> str:
        old = self.pid
        await self.stop()
        self._start_times.clear()
        self._delay = self.spec.restart_delay
        await self.start()
        new = self.pid
        return f"restarted: pid {old} -> {new}" if new else f"restart failed: {self.last_exit}"

    async def stop(self) -> None:
        """stop_signal to the whole group, stop_timeout, then SIGKILL; each step logged."""
        self._stopping = True
        if self._reaper is not None and not self._reaper.done():
            current = asyncio.current_task()
            if self._reaper is not current:
                self._reaper.cancel()
        proc = self.proc
        if proc is None or proc.returncode is not None:
            self._close_pidfd()
            return
        pgid = proc.pid
        name, sig = self.spec.name, self.spec.stop_signal
        log.info("%s: stopping pid %d with %s", name, pgid, sig.name)
        with contextlib.suppress(DeliveryError):
            safe_killpg(pgid, sig)
        try:
            await asyncio.wait_for(proc.wait(), self.spec.stop_timeout)
        except asyncio.TimeoutError:
            log.warning(
                "%s: pid %d still running %.1fs after %s; sending SIGKILL to its group",
                name,
                pgid,
                self.spec.stop_timeout,
                sig.name,
            )
        with contextlib.suppress(DeliveryError):
            safe_killpg(pgid, signal.SIGKILL)  # leftovers of the group, or the hung leader
        await proc.wait()
        self._close_pidfd()
        self.last_exit = _describe_exit(proc.returncode)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "running"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


class Pidfile:
    """A process started by someone else, found through its pidfile at each delivery."""

    kind = "pidfile"

    def __init__(self, spec: ServiceSpec) -> None:
        assert spec.pidfile is not None
        self.spec = spec
        self.path = spec.pidfile

    def read_pid(self) -> int:
        try:
            with open(self.path, "rb") as f:
                raw = f.read(64)
        except OSError as exc:
            raise DeliveryError(f"cannot read pidfile {self.path}: {exc.strerror}") from None
        text = raw.decode("ascii", "replace").strip()
        if not text.isdigit():
            raise DeliveryError(f"pidfile {self.path} does not hold a pid: {text[:20]!r}")
        pid = int(text)
        if pid > 4194304:
            raise DeliveryError(f"pidfile {self.path} holds an impossible pid {pid}")
        _check_pid(pid)
        return pid

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"kind": "pidfile", "pidfile": self.path, "pid": None, "pgid": None}
        with contextlib.suppress(DeliveryError, OSError):
            pid = self.read_pid()
            info["pgid"] = os.getpgid(pid)
            info["pid"] = pid
        return info

    async def start(self) -> None:
        return None

    async def signal(self, sig: signal.Signals, scope: str) -> str:
        pid = self.read_pid()
        if scope == "group":
            try:
                pgid = os.getpgid(pid)
            except ProcessLookupError:
                raise DeliveryError(f"pid {pid} from {self.path} does not exist") from None
            safe_killpg(pgid, sig)
            return f"{sig.name} -> process group {pgid}"
        safe_kill(pid, sig)
        return f"{sig.name} -> pid {pid}"

    async def restart(self) -> str:
        raise DeliveryError("action = restart needs a command or unit target")

    async def stop(self) -> None:
        return None


class Unit:
    """A systemd unit, reached through systemctl (signals go through systemd)."""

    kind = "unit"

    def __init__(self, spec: ServiceSpec) -> None:
        assert spec.unit is not None
        self.spec = spec
        self.unit = spec.unit
        self.props: dict[str, str] = {}

    def describe(self) -> dict[str, Any]:
        pid = self.props.get("MainPID")
        return {
            "kind": "unit",
            "unit": self.unit,
            "pid": int(pid) if pid and pid.isdigit() and pid != "0" else None,
            "pgid": None,
            "active_state": self.props.get("ActiveState"),
        }

    async def refresh(self) -> None:
        res = await _systemctl("show", "-p", "MainPID,ActiveState,SubState", "--", self.unit)
        if res.ok:
            self.props = dict(line.split("=", 1) for line in res.output.splitlines() if "=" in line)

    async def start(self) -> None:
        await self.refresh()

    async def signal(self, sig: signal.Signals, scope: str) -> str:
        whom = "main" if scope == "main" else "all"
        res = await _systemctl("kill", f"--kill-whom={whom}", "-s", sig.name, "--", self.unit)
        if not res.ok and "kill-whom" in res.output:  # systemd < 252 spells it --kill-who
            res = await _systemctl("kill", f"--kill-who={whom}", "-s", sig.name, "--", self.unit)
        if not res.ok:
            raise DeliveryError(
                f"systemctl kill {self.unit}: {res.output.strip() or res.describe()}"
            )
        await self.refresh()
        return f"{sig.name} -> {self.unit} ({whom})"

    async def restart(self) -> str:
        res = await _systemctl("restart", "--", self.unit)
        if not res.ok:
            raise DeliveryError(
                f"systemctl restart {self.unit}: {res.output.strip() or res.describe()}"
            )
        await self.refresh()
        return f"restarted {self.unit} (MainPID {self.props.get('MainPID', '?')})"

    async def stop(self) -> None:
        return None


def _why(res: RunResult) -> str:
    return res.output.strip() or res.describe()


async def _systemctl(*args: str) -> RunResult:
    argv = ("systemctl", *args)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as exc:
        return RunResult(argv, None, "", error=_os_error(exc))
    out, _ = await proc.communicate()
    return RunResult(argv, proc.returncode, out.decode("utf-8", "replace")[-OUTPUT_TAIL:])


def make_target(spec: ServiceSpec) -> Supervised | Pidfile | Unit:
    if spec.command is not None:
        return Supervised(spec)
    if spec.pidfile is not None:
        return Pidfile(spec)
    return Unit(spec)
