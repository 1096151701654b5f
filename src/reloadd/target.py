"""How to reach a service's processes: ``Supervised``, ``Pidfile``, ``Unit``.

Design notes (issue 8; docs/safety.md is the operator's version):

- Every delivery goes through ``safe_kill``/``safe_killpg``, which refuse pid <= 1,
  reloadd's own pid and reloadd's own process group whatever a pidfile or systemd says.
- A supervised child is signalled through a pidfd (Linux >= 5.3), so a pid that was
  recycled after the child died is never hit. A pidfile's pid is pinned with a pidfd
  *before* it is vetted, so the process that was vetted is the one that is signalled.
- Pidfile trust follows systemd's PIDFile= rule: running as root, a pidfile that a
  non-root user could have written (the file or a directory on its path owned by, or
  writable by, a non-root user; a root-owned sticky directory such as /tmp does not
  count) is believed only for a process owned by that same user. ``expect_user`` pins
  the owner on top of that.
- Children start clean: their own session, fds 0-2 only, an empty signal mask and default
  signal handlers. CPython's subprocess resets only SIGPIPE/SIGXFSZ (``restore_signals``)
  and passes the parent's signal mask and ignored signals on through exec, so
  ``prepare_signals`` empties reloadd's own mask and turns every signal reloadd inherited
  as ignored into a no-op Python handler: reloadd still ignores it, and a caught signal
  is reset to its default by exec. No ``preexec_fn`` (unsafe with threads).
- ``run`` is the one way reloadd runs a short-lived command for a service (``check`` and
  ``exec``): its own session, the service's process keys, a timeout that kills the whole
  process group, and the last ``OUTPUT_TAIL`` bytes of its output kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import pwd
import select
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from reloadd import trust
from reloadd.config import NotRegular, ServiceSpec, read_regular

log = logging.getLogger("reloadd.target")

OUTPUT_TAIL = 4096  # bytes of a check's / exec's output kept (the tail)
SYSTEMCTL_TIMEOUT = 15.0  # seconds for systemctl show/kill: systemd answers at once or is stuck
SYSTEMCTL_RESTART_TIMEOUT = 120.0  # systemctl restart waits for the unit to stop and start
_DROP_ENV = ("NOTIFY_SOCKET",)
_DROP_PREFIX = ("LISTEN_", "WATCHDOG_")
BACKOFF_MAX = 60.0  # seconds: cap on the delay between restarts of a crashing command
UP_RESETS_BACKOFF = 30.0  # seconds up after which the next crash starts from restart_delay
START_LIMIT_BURST = 5  # starts (attempts) allowed within START_LIMIT_INTERVAL ...
START_LIMIT_INTERVAL = 60.0  # ... seconds; one more crash and the service is failed
NOBODY_GID = 65534  # primary group of a numeric `user` that has no passwd entry
PID_MAX_DEFAULT = 4194304  # the kernel's hard limit, when /proc/sys/kernel/pid_max is unreadable
PIDFILE_MAX_BYTES = 64

# Test seam (fault injection): called with the pid after a pidfile's pid has been read,
# pinned and vetted, just before the signal is sent. Tests use it to make the process
# vanish inside that window, which cannot be caused reliably from outside.
before_pidfile_signal: Callable[[int], None] | None = None


class DeliveryError(Exception):
    """A signal, restart or exec could not be delivered; the message says why."""

    def __init__(self, message: str, result: RunResult | None = None) -> None:
        super().__init__(message)
        self.result = result  # the exec's RunResult, when an exec failed


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


# -- how children are started -----------------------------------------------------------


def _noop_handler(signum: int, frame: object) -> None:
    """Stands in for SIG_IGN in reloadd: still ignored here, reset to default by exec."""


_signals_prepared = False


def prepare_signals() -> None:
    """Make the signal state that children inherit clean (see the module docstring).

    Idempotent and cheap; must run in the main thread (where asyncio spawns children).
    SIGPIPE and SIGXFSZ stay ignored in reloadd: Python relies on that, and
    ``restore_signals=True`` resets them in the child.
    """
    global _signals_prepared
    if signal.pthread_sigmask(signal.SIG_BLOCK, ()):  # adds nothing; returns the mask
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
    if _signals_prepared:
        return
    keep = {signal.SIGPIPE, signal.SIGXFSZ, signal.SIGKILL, signal.SIGSTOP}
    for sig in signal.valid_signals():
        if sig in keep:
            continue
        try:
            if signal.getsignal(sig) == signal.SIG_IGN:
                signal.signal(sig, _noop_handler)
        except (OSError, ValueError, RuntimeError):  # reserved by libc, or not main thread
            continue
    _signals_prepared = True


def child_environment(spec: ServiceSpec) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in _DROP_ENV and not k.startswith(_DROP_PREFIX)
    }
    env.update(dict(spec.environment))
    return env


def _ids(spec: ServiceSpec) -> dict[str, Any]:
    """user/group/extra_groups for the child: supplementary groups are always initialised.

    Without ``extra_groups`` CPython keeps reloadd's own supplementary groups (root's) in a
    child that runs as another user; a numeric user without a passwd entry gets no
    supplementary groups and, unless ``group`` is set, the primary group nogroup (65534).
    """
    opts: dict[str, Any] = {}
    gid: int | str | None = None
    if spec.group is not None:
        gid = int(spec.group) if spec.group.isdigit() else spec.group
        opts["group"] = gid
    if spec.user is None:
        return opts
    entry: pwd.struct_passwd | None
    try:
        entry = pwd.getpwuid(int(spec.user)) if spec.user.isdigit() else pwd.getpwnam(spec.user)
    except KeyError:
        entry = None
    if entry is None:
        if not spec.user.isdigit():
            raise KeyError(f"no such user {spec.user!r}")
        opts["user"] = int(spec.user)
        opts.setdefault("group", NOBODY_GID)
        opts["extra_groups"] = []
        return opts
    opts["user"] = entry.pw_uid
    if gid is None:
        opts["group"] = entry.pw_gid
    primary = opts["group"]
    if isinstance(primary, str):
        import grp

        primary = grp.getgrnam(primary).gr_gid
    try:
        opts["extra_groups"] = os.getgrouplist(entry.pw_name, primary)
    except OSError:
        opts["extra_groups"] = [primary]
    if os.geteuid() != 0 and entry.pw_uid == os.geteuid() and primary == os.getegid():
        return {}  # not root, and already that user: setgroups() would only fail with EPERM
    return opts


def spawn_options(spec: ServiceSpec) -> dict[str, Any]:
    """Keyword arguments for asyncio.create_subprocess_exec: the service's process keys."""
    prepare_signals()
    opts: dict[str, Any] = {
        "cwd": spec.working_directory,
        "env": child_environment(spec),
        "start_new_session": True,
        "stdin": asyncio.subprocess.DEVNULL,
        "close_fds": True,
        "restore_signals": True,
    }
    opts.update(_ids(spec))
    return opts


_SPAWN_ERRORS = (OSError, ValueError, KeyError, subprocess.SubprocessError)


@dataclass(frozen=True)
class RunResult:
    argv: tuple[str, ...]
    returncode: int | None  # None when it could not be started or timed out
    output: str  # the last OUTPUT_TAIL bytes of stdout+stderr, decoded leniently
    timed_out: bool = False
    error: str = ""  # why it could not be started
    timeout: float = 0.0

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        name = os.path.basename(self.argv[0]) if self.argv else "?"
        if self.error:
            return f"{name} could not be started: {self.error}"
        if self.timed_out:
            return f"{name} timed out after {self.timeout:g}s and was killed with its group"
        if self.returncode is not None and self.returncode < 0:
            return f"{name} was killed by {_signame(-self.returncode)}"
        return f"{name} exited with status {self.returncode}"


def _signame(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


async def run(argv: Sequence[str], spec: ServiceSpec, timeout: float) -> RunResult:
    """Run a short command for a service; never raises for the command's failures.

    The command gets its own session; at the timeout its whole process group is killed
    (SIGKILL), children included. Output (stdout and stderr together) is read as it comes
    and only the last OUTPUT_TAIL bytes are kept, so a chatty check cannot eat memory.
    """
    return await _run(tuple(argv), timeout, spawn_options(spec))


async def _run(argv: tuple[str, ...], timeout: float, options: dict[str, Any]) -> RunResult:
    """``run`` with the spawn options given (``options`` must start a new session)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            **options,
        )
    except _SPAWN_ERRORS as exc:
        return RunResult(argv, None, "", error=_os_error(exc))
    tail = bytearray()

    async def collect() -> None:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(65536):
            tail.extend(chunk)
            del tail[:-OUTPUT_TAIL]

    reader = asyncio.get_running_loop().create_task(collect())
    timed_out = False
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except asyncio.TimeoutError:
        timed_out = True
        _kill_group(proc)
        await proc.wait()
    except asyncio.CancelledError:
        _kill_group(proc)
        await proc.wait()
        reader.cancel()
        raise
    # The leader is gone; a leftover that still holds the pipe open (a daemonising check)
    # must not hold the reload: give the output a moment, then stop reading.
    try:
        await asyncio.wait_for(asyncio.shield(reader), 1.0)
    except asyncio.TimeoutError:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    text = tail.decode("utf-8", "replace")
    code = None if timed_out else proc.returncode
    return RunResult(argv, code, text, timed_out=timed_out, timeout=timeout)


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the session a check/exec/command leads (its pgid is its pid)."""
    with contextlib.suppress(DeliveryError):
        safe_killpg(proc.pid, signal.SIGKILL)


def _os_error(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc)


# -- targets ---------------------------------------------------------------------------


class Supervised:
    """A command reloadd starts in its own session, reaps, restarts and stops.

    Restart policy (``restart``): ``no``, ``on-failure`` (exit status != 0, killed by a
    signal, or could not be started) or ``always``. The delay before a restart starts at
    ``restart_delay`` and doubles with each restart, up to ``max(BACKOFF_MAX,
    restart_delay)``; a run that lasted UP_RESETS_BACKOFF seconds resets it. Every start
    attempt counts towards the start limit: when a restart would be the
    START_LIMIT_BURST + 1-th attempt within START_LIMIT_INTERVAL seconds, supervision gives
    up and ``failed`` says why, until ``restart()`` or a new ``start()`` (config change).
    A command that ends under ``restart = "no"`` with a failure is ``failed`` too.
    """

    kind = "command"

    def __init__(self, spec: ServiceSpec) -> None:
        self.spec = spec
        self.proc: asyncio.subprocess.Process | None = None
        self.pidfd: int | None = None
        self.started_at: float | None = None
        self.starts = 0
        self.last_exit: str = ""
        self.failed: str = ""  # why supervision gave up; empty while it is fine
        self.next_start: float | None = None  # monotonic time of a scheduled restart
        self._stopping = False
        self._no_grace = False  # kill_now: every stop from now on is a SIGKILL
        self._reaper: asyncio.Task[None] | None = None
        self._timer: asyncio.Task[None] | None = None
        self._spawning = False
        self._delay = spec.restart_delay
        self._attempts: deque[float] = deque(maxlen=START_LIMIT_BURST)
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
            "restart_in": (
                round(max(0.0, self.next_start - time.monotonic()), 3)
                if self.next_start is not None
                else None
            ),
        }

    async def start(self) -> None:
        """Start the command unless it runs; a failed one starts afresh (config change)."""
        if self.pid is not None:
            return  # already running (handed over by a config change)
        if self._timer is not None and not self._timer.done() and not self.failed:
            return  # a restart is already scheduled
        self._stopping = False
        if self.failed:
            self._reset_limits()
        await self._spawn()

    def _reset_limits(self) -> None:
        self.failed = ""
        self._attempts.clear()
        self._delay = self.spec.restart_delay

    async def _spawn(self) -> None:
        argv = self.spec.command or ()
        self._attempts.append(time.monotonic())
        self.next_start = None
        self._spawning = True
        try:
            self.proc = await asyncio.create_subprocess_exec(*argv, **spawn_options(self.spec))
        except _SPAWN_ERRORS as exc:
            self.proc = None
            self.last_exit = f"could not start {argv[0] if argv else '?'}: {_os_error(exc)}"
            log.error("%s: %s", self.spec.name, self.last_exit)
            self._after_exit(failure=True)
            return
        finally:
            self._spawning = False
        self.starts += 1
        self.started_at = time.monotonic()
        try:
            self.pidfd = os.pidfd_open(self.proc.pid)
        except OSError:  # pragma: no cover - Linux < 5.3
            self.pidfd = None
        log.info("%s: started %s (pid %d)", self.spec.name, " ".join(argv), self.proc.pid)
        self._reaper = asyncio.get_running_loop().create_task(self._reap(self.proc))

    async def _reap(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if proc is not self.proc:
            return
        self._close_pidfd()
        self.last_exit = _describe_exit(code)
        if self._stopping:
            return
        log.warning("%s: pid %d %s", self.spec.name, proc.pid, self.last_exit)
        self._after_exit(failure=code != 0)

    def _after_exit(self, failure: bool) -> None:
        """The command ended (or could not start): restart it, or give up and say why."""
        if self._stopping:
            return
        policy = self.spec.restart
        if policy == "no" or (policy == "on-failure" and not failure):
            if failure:
                self.failed = f"{self.last_exit}; not restarted (restart = {policy!r})"
                log.error("%s: %s", self.spec.name, self.failed)
            self._notify()
            return
        now = time.monotonic()
        recent = [t for t in self._attempts if now - t < START_LIMIT_INTERVAL]
        if len(recent) >= START_LIMIT_BURST:
            self.failed = (
                f"{self.last_exit}; started {len(recent)} times within "
                f"{START_LIMIT_INTERVAL:g}s (the start limit): not restarting until "
                "`reloadctl restart` or a config change"
            )
            log.error("%s: %s", self.spec.name, self.failed)
            self._notify()
            return
        if self.started_at is not None and now - self.started_at >= UP_RESETS_BACKOFF:
            self._delay = self.spec.restart_delay
        delay = self._delay
        cap = max(BACKOFF_MAX, self.spec.restart_delay)
        self._delay = min(delay * 2 or 0.1, cap)
        self.next_start = now + delay
        log.info("%s: restarting in %.3gs", self.spec.name, delay)
        self._timer = asyncio.get_running_loop().create_task(self._restart_after(delay))
        self._notify()

    def _notify(self) -> None:
        if self.on_exit is not None:
            self.on_exit()

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
                f"is not running ({self.failed or self.last_exit or 'not started'})"
            )
        if scope == "group":
            # the group id is our child's pid: make sure it is still our child (not a
            # pid already reaped and recycled) before aiming at the whole group
            if self.pidfd is not None:
                try:
                    signal.pidfd_send_signal(self.pidfd, 0)
                except ProcessLookupError:
                    raise DeliveryError(f"pid {pid} has exited") from None
            safe_killpg(pid, sig)
            return f"{sig.name} -> process group {pid}"
        if self.pidfd is not None:
            try:
                signal.pidfd_send_signal(self.pidfd, sig)
            except ProcessLookupError:
                raise DeliveryError(f"pid {pid} has exited") from None
        else:  # pragma: no cover - Linux < 5.3
            safe_kill(pid, sig)
        return f"{sig.name} -> pid {pid}"

    async def restart(self) -> str:
        """Stop (if running) and start again, clearing the start limit and the back-off."""
        old = self.pid
        await self.stop()
        self._reset_limits()
        self._stopping = False
        await self._spawn()
        new = self.pid
        if new is None:
            raise DeliveryError(f"restart failed: {self.failed or self.last_exit}")
        return f"restarted: pid {old} -> {new}" if old else f"started: pid {new}"

    async def stop(self) -> None:
        """stop_signal to the whole group, stop_timeout, then SIGKILL; each step logged."""
        self._stopping = True
        self.next_start = None
        timer = self._timer
        if timer is not None and not timer.done() and timer is not asyncio.current_task():
            if self._spawning:  # let a start in progress finish, then stop what it started
                await asyncio.shield(timer)
            else:
                timer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await timer
        proc = self.proc
        if proc is None or proc.returncode is not None:
            await self._join_reaper()
            self._close_pidfd()
            return
        pgid = proc.pid
        name, sig = self.spec.name, self.spec.stop_signal
        log.info("%s: stopping pid %d with %s", name, pgid, sig.name)
        grace = 0.0 if self._no_grace else self.spec.stop_timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        with contextlib.suppress(DeliveryError):
            safe_killpg(pgid, sig)
        try:
            await asyncio.wait_for(proc.wait(), grace)
            # The rest of the group got the same signal: give it the rest of stop_timeout
            # too, instead of killing workers that are still finishing their requests.
            lingering = await _group_alive_until(pgid, deadline)
            what = f"process group {pgid} still has members after pid {pgid} exited"
        except asyncio.TimeoutError:
            lingering, what = True, f"pid {pgid} still running"
        if lingering:
            log.warning(
                "%s: %s %.1fs after %s; sending SIGKILL to the group",
                name,
                what,
                grace,
                sig.name,
            )
            with contextlib.suppress(DeliveryError):
                safe_killpg(pgid, signal.SIGKILL)
        await proc.wait()
        await self._join_reaper()
        self._close_pidfd()
        self.last_exit = _describe_exit(proc.returncode)

    def kill_now(self) -> None:
        """No more grace (a second SIGINT): a stop under way SIGKILLs the whole group at
        once, and a stop still to come does so without waiting for ``stop_timeout``."""
        self._no_grace = True
        proc = self.proc
        if self._stopping and proc is not None and proc.returncode is None:
            with contextlib.suppress(DeliveryError):
                safe_killpg(proc.pid, signal.SIGKILL)

    async def _join_reaper(self) -> None:
        reaper = self._reaper
        if reaper is not None and not reaper.done() and reaper is not asyncio.current_task():
            with contextlib.suppress(asyncio.CancelledError):
                await reaper


async def _group_alive_until(pgid: int, deadline: float) -> bool:
    """Wait (until ``deadline``, loop time) for a process group to empty; True if it did not.

    Nothing signals "group empty" for processes that are not our children, so this looks
    every 20 ms; it runs only while a service is being stopped.
    """
    loop = asyncio.get_running_loop()
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        if loop.time() >= deadline:
            return True
        await asyncio.sleep(0.02)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "running"
    if code < 0:
        return f"killed by {_signame(-code)}"
    return f"exited with status {code}"


# -- pidfiles ---------------------------------------------------------------------------


@functools.cache
def _pid_max() -> int:
    """kernel.pid_max, read once (``parse_pid`` reads it again before refusing a pid above
    it: it may have been raised since)."""
    try:
        with open("/proc/sys/kernel/pid_max") as f:
            return int(f.read().strip())
    except (OSError, ValueError):  # pragma: no cover - no procfs
        return PID_MAX_DEFAULT


def parse_pid(raw: bytes, path: str) -> int:
    """The pid a pidfile holds, or DeliveryError saying what is wrong with it."""
    if len(raw) > PIDFILE_MAX_BYTES:
        raise DeliveryError(f"pidfile {path} is not a pidfile (over {PIDFILE_MAX_BYTES} bytes)")
    text = raw.decode("ascii", "replace").strip()
    if not text:
        raise DeliveryError(f"pidfile {path} is empty")
    if not (text.isascii() and text.isdigit()):
        raise DeliveryError(f"pidfile {path} does not hold a pid: {text[:20]!r}")
    pid = int(text)
    limit = _pid_max()
    if pid > limit:
        _pid_max.cache_clear()
        limit = _pid_max()
    if pid > limit:
        raise DeliveryError(f"pidfile {path} holds pid {pid}, beyond the kernel's pid_max {limit}")
    if pid <= 1:
        raise DeliveryError(f"pidfile {path} holds pid {pid}: refusing to signal it")
    if pid == os.getpid():
        raise DeliveryError(f"pidfile {path} holds pid {pid}: that is reloadd itself")
    return pid


def path_writers(
    path: str, file_stat: os.stat_result | None = None, found: trust.Writers | None = None
) -> trust.Writers:
    """Who besides root could have written ``path`` (``trust.writers``, the rule of
    systemd's PIDFile=, or ``found`` when the caller has it), counting ``file_stat`` too: the
    file as it was opened, should the path have been changed since."""
    if found is None:
        found = trust.writers(path)
    opened = None if file_stat is None else trust.judge(found.path, file_stat)
    if opened is None or opened in found.entries:
        return found
    return dataclasses.replace(found, entries=(opened, *found.entries))


def process_uid(pid: int) -> int:
    """The real uid of ``pid`` (from /proc/PID/status), as systemd checks it. Whether the
    process has exited is its pidfd's to tell (``_exited``): the status says "zombie" also
    for a live process whose main thread has ended."""
    try:
        fd = os.open(f"/proc/{pid}/status", os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError):
        raise DeliveryError(f"pid {pid} does not exist (stale pidfile?)") from None
    try:
        status = os.read(fd, 1 << 16)
    except ProcessLookupError:
        status = b""
    finally:
        os.close(fd)
    fields = dict(line.split(b":", 1) for line in status.splitlines() if b":" in line)
    uid = fields.get(b"Uid", b"").split()
    if not uid:
        raise DeliveryError(f"pid {pid} does not exist (stale pidfile?)")
    return int(uid[0])


def _exited(pidfd: int) -> bool:
    """Whether the process pinned by ``pidfd`` has exited (pidfd_open(2): it polls readable
    from then on, zombie or reaped)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


def _uid_of(user: str) -> int:
    return int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid


class Pidfile:
    """A process started by someone else, found through its pidfile at each delivery.

    Each delivery re-reads the pidfile, opens a pidfd on the pid (so the process cannot be
    swapped for another one with the same pid afterwards), vets it (``vet``) and signals
    through the pidfd. Every refusal is a DeliveryError whose message is the status.
    """

    kind = "pidfile"

    def __init__(self, spec: ServiceSpec) -> None:
        assert spec.pidfile is not None
        self.spec = spec
        self.path = spec.pidfile
        self._writers = trust.Memo(spec.pidfile)
        # fixed for the daemon's life (a --detach daemon is made after it has detached)
        self._own_pgrp, self._as_root = os.getpgrp(), os.geteuid() == 0

    def read(self) -> tuple[int, os.stat_result]:
        """The pid in the pidfile and the file's stat, read through one descriptor."""
        try:
            raw, st = read_regular(self.path, PIDFILE_MAX_BYTES + 1)
        except NotRegular:
            raise DeliveryError(f"pidfile {self.path} is not a regular file") from None
        except OSError as exc:
            raise DeliveryError(f"cannot read pidfile {self.path}: {exc.strerror}") from None
        return parse_pid(raw, self.path), st

    def read_pid(self) -> int:
        return self.read()[0]

    def vet(self, pid: int, file_stat: os.stat_result, pidfd: int) -> None:
        """Refuse a pid that the pidfile's writers must not be able to aim reloadd at.

        ``pidfd`` (pinning ``pid``) tells whether the process has exited (a zombie): a
        signal to it would be "delivered" and do nothing. The process's uid is read only
        where a rule needs it (a pidfile a user could write, ``expect_user``).
        """
        try:
            pgid = os.getpgid(pid)
        except ProcessLookupError:
            raise DeliveryError(f"pid {pid} from {self.path} does not exist (stale)") from None
        if pgid == self._own_pgrp:
            raise DeliveryError(
                f"pidfile {self.path} holds pid {pid}, which is in reloadd's own process group"
            )
        if _exited(pidfd):
            raise DeliveryError(f"pid {pid} has exited (it is a zombie)")
        owner: int | None = None
        if self._as_root:
            writers = path_writers(self.path, file_stat, self._writers())
            if writers.open_by is not None:
                entry = writers.open_by
                raise DeliveryError(
                    f"pidfile {self.path} is not trusted: {entry.kind} {entry.describe()}, so "
                    "anyone could have written it; make it writable by its owner only"
                )
            users = writers.users
            if len(users) > 1:
                names = ", ".join(trust.user_name(u) for u in sorted(users))
                raise DeliveryError(
                    f"pidfile {self.path} is not trusted: several users ({names}) could "
                    "have written it"
                )
            if users:
                owner = process_uid(pid)
                if owner not in users:
                    (writer,) = users
                    raise DeliveryError(
                        f"pidfile {self.path} could have been written by "
                        f"{trust.user_name(writer)}, but pid {pid} belongs to "
                        f"{trust.user_name(owner)}: refusing to signal it (a pidfile an "
                        "unprivileged user can write is only believed for that user's own "
                        "processes)"
                    )
        if self.spec.expect_user is not None:
            try:
                want = _uid_of(self.spec.expect_user)
            except KeyError:
                raise DeliveryError(
                    f"expect_user {self.spec.expect_user!r} does not exist"
                ) from None
            owner = process_uid(pid) if owner is None else owner
            if owner != want:
                raise DeliveryError(
                    f"pid {pid} from {self.path} belongs to {trust.user_name(owner)}, "
                    f"not to expect_user {self.spec.expect_user}"
                )

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
        pid, st = self.read()
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise DeliveryError(f"pid {pid} from {self.path} does not exist (stale)") from None
        except OSError as exc:  # pragma: no cover - Linux < 5.3
            raise DeliveryError(f"cannot open pid {pid}: {exc.strerror}") from None
        try:
            self.vet(pid, st, pidfd)
            if before_pidfile_signal is not None:
                before_pidfile_signal(pid)
            if scope == "group":
                try:
                    pgid = os.getpgid(pid)
                except ProcessLookupError:
                    raise DeliveryError(f"pid {pid} from {self.path} has exited") from None
                if pgid != pid:
                    # only the vetted process may choose the group: a process that joined
                    # someone else's group must not aim root's signal at that group
                    raise DeliveryError(
                        f"pid {pid} from {self.path} is not the leader of its process group "
                        f'({pgid}); scope = "group" needs the pidfile to name the leader'
                    )
                safe_killpg(pgid, sig)
                return f"{sig.name} -> process group {pgid}"
            try:
                signal.pidfd_send_signal(pidfd, sig)
            except ProcessLookupError:
                raise DeliveryError(
                    f"pid {pid} from {self.path} exited before the signal was sent"
                ) from None
            except PermissionError:
                raise DeliveryError(f"not permitted to signal pid {pid}") from None
            return f"{sig.name} -> pid {pid}"
        finally:
            os.close(pidfd)

    async def restart(self) -> str:
        raise DeliveryError("action = restart needs a command or unit target")

    async def stop(self) -> None:
        return None

    def kill_now(self) -> None:
        return None  # reloadd does not own a pidfile target's processes


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
            raise DeliveryError(f"systemctl kill {self.unit}: {_why(res)}")
        await self.refresh()
        return f"{sig.name} -> {self.unit} ({whom})"

    async def restart(self) -> str:
        res = await _systemctl("restart", "--", self.unit, timeout=SYSTEMCTL_RESTART_TIMEOUT)
        if not res.ok:
            raise DeliveryError(f"systemctl restart {self.unit}: {_why(res)}")
        await self.refresh()
        return f"restarted {self.unit} (MainPID {self.props.get('MainPID', '?')})"

    async def stop(self) -> None:
        return None

    def kill_now(self) -> None:
        return None  # reloadd does not own a unit's processes


def _why(res: RunResult) -> str:
    return res.output.strip() or res.describe()


async def _systemctl(*args: str, timeout: float = SYSTEMCTL_TIMEOUT) -> RunResult:
    """Run systemctl with a deadline: a hung systemd must not hang reloads or shutdown."""
    prepare_signals()
    options = {"stdin": asyncio.subprocess.DEVNULL, "start_new_session": True, "close_fds": True}
    return await _run(("systemctl", *args), timeout, options)


def make_target(spec: ServiceSpec) -> Supervised | Pidfile | Unit:
    if spec.command is not None:
        return Supervised(spec)
    if spec.pidfile is not None:
        return Pidfile(spec)
    return Unit(spec)
