"""One service: its state machine, its task, its reload pipeline and its history.

Each service has one task (``run``) that owns all of its state and reads its own inbox:
watch reports from the hub and commands from the daemon arrive as items, so there is
one consumer and no locks. The task sleeps on an ``asyncio.Event`` and a single
``call_at`` timer for the coalescer's deadline: no polling, no wake-ups when idle.

A reload is: take the settled batch -> ``check`` (if any; a failure means no signal) ->
deliver (signal / restart / exec) -> record the result in the history. Changes that
arrive meanwhile wait in the inbox and form the next batch: they earn one more reload.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import InitVar, asdict, dataclass, field
from typing import Any

from reloadd.coalesce import PATH_COUNT_CAP, Batch, Coalescer
from reloadd.config import ServiceSpec
from reloadd.target import DeliveryError, Pidfile, RunResult, Supervised, Unit, make_target, run
from reloadd.watch import Look, WatchPath
from reloadd.watch.filters import PathFilter, display
from reloadd.watch.inotify import Hub

log = logging.getLogger("reloadd.service")

# The loop's timers wake up to ~1 ms late (epoll rounds its timeout up to whole
# milliseconds): wake a little early and count "due within TIMER_SLACK" as due, so a
# 20 ms debounce means 20 ms, not 21.
TIMER_SLACK = 0.001
HISTORY = 50  # reload records kept per service
SHOWN_PATHS = 5  # changed paths named in a log line
INBOX_PATHS = PATH_COUNT_CAP + 1  # distinct paths held in the inbox during a reload


class State(enum.Enum):
    __hash__ = object.__hash__  # members are singletons; Enum's own hash is Python code
    WAITING = "waiting"  # a watch path is missing; the others are watched
    WATCHING = "watching"
    PENDING = "pending"  # changes seen, waiting for them to settle
    CHECKING = "checking"
    RELOADING = "reloading"
    VERIFYING = "verifying"
    PAUSED = "paused"
    HELD = "held"
    FAILED = "failed"  # the supervised command gave up restarting
    STOPPED = "stopped"


_REST = frozenset({State.WAITING, State.WATCHING, State.PENDING})
_ACTIVE = frozenset({State.CHECKING, State.RELOADING})

# Every legal move. A move not listed is a bug and raises.
TRANSITIONS: dict[State, frozenset[State]] = {
    # resting states move among themselves as paths appear/vanish and changes arrive;
    # a settled batch or a manual reload starts the pipeline.
    State.WAITING: _REST | _ACTIVE | {State.PAUSED, State.FAILED, State.STOPPED},
    State.WATCHING: _REST | _ACTIVE | {State.PAUSED, State.FAILED, State.STOPPED},
    State.PENDING: _REST | _ACTIVE | {State.PAUSED, State.FAILED, State.STOPPED},
    # CHECKING -> RELOADING when the check passed, back to rest when it failed
    State.CHECKING: _REST | {State.RELOADING, State.FAILED, State.STOPPED},
    State.RELOADING: _REST | {State.VERIFYING, State.PAUSED, State.FAILED, State.STOPPED},
    State.VERIFYING: _REST | {State.HELD, State.FAILED, State.STOPPED},
    # PAUSED: changes collect; resume returns to rest (a pending batch then fires)
    # (a manual restart is allowed while paused; it settles back to PAUSED)
    State.PAUSED: _REST | {State.RELOADING, State.FAILED, State.STOPPED},
    State.HELD: _REST | _ACTIVE | {State.STOPPED},
    # FAILED: a restart, a (failing) reload attempt, a config change or stopping leaves it
    State.FAILED: _REST | _ACTIVE | {State.STOPPED},
    State.STOPPED: frozenset(),
}


class Refused(Exception):
    """A command that the service's state does not allow (e.g. reload while paused)."""


@dataclass
class Reload:
    """One reload attempt, as kept in the history and shown by reloadctl."""

    when: float  # wall clock, for display only
    trigger: str  # "change" | "manual"
    paths: list[str]
    count: int
    action: str = ""  # what was done: "SIGHUP -> pid 123"
    result: str = "ok"  # ok | check-failed | delivery-failed
    latency_ms: float | None = None  # last change -> delivered (file-triggered only)
    duration_ms: float = 0.0
    error: str = ""
    output: str = ""  # tail of check/exec output when it failed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Command:
    name: str
    future: asyncio.Future[Any]


@dataclass
class _Change:
    at: float
    paths: list[str]
    first: float | None = None  # the earliest change merged into this one (see _merge)
    seen: set[str] | None = None

    def merge(self, later: _Change) -> bool:
        """Fold ``later`` into this (the inbox's last) item; False when they must stay apart.

        While a reload runs (a check may take up to its timeout) nothing drains the inbox:
        merging keeps it to one item per run of changes, holding each distinct path once
        and at most INBOX_PATHS of them (past PATH_COUNT_CAP the coalescer's count is a
        lower bound anyway).
        """
        if not later.paths:
            return True  # it only asks for a look at the holds, which this change gets
        if not self.paths:
            return False
        if self.seen is None:  # first merge: own the list (it came from the watcher)
            self.paths, self.seen, self.first = list(self.paths), set(self.paths), self.at
        for path in later.paths:
            if path not in self.seen and len(self.seen) < INBOX_PATHS:
                self.seen.add(path)
                self.paths.append(path)
        self.at = max(self.at, later.at)
        return True


@dataclass
class Service:
    spec: ServiceSpec
    hub: Hub
    state: State = State.WAITING
    paused: bool = False
    reloads: int = 0
    last_error: str = ""
    history: deque[Reload] = field(default_factory=lambda: deque(maxlen=HISTORY))
    on_reload: Callable[[Service, Reload], None] | None = None
    # what the daemon found at the watch paths, looked at off the loop (watch.look_all)
    looks: InitVar[Mapping[str, Look | None] | None] = None
    # a service being replaced whose live watches this one adopts as they are (the same
    # paths, filter and backend): no re-walk, no new baseline, the holds kept
    watches_of: InitVar[Service | None] = None

    def __post_init__(
        self, looks: Mapping[str, Look | None] | None, watches_of: Service | None
    ) -> None:
        spec = self.spec
        self.name = spec.name
        self.target: Supervised | Pidfile | Unit = make_target(spec)
        self.coalescer = Coalescer(spec.debounce, spec.max_delay, spec.min_interval)
        self._inbox: deque[_Change | _Command] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.trees: list[WatchPath]
        if watches_of is not None:
            self.trees, watches_of.trees = watches_of.trees, []
            for tree in self.trees:
                tree.sink = self._on_watch  # reports come here from now on
            return
        filt = PathFilter(spec.include, spec.exclude)
        self.trees = [
            WatchPath(
                self.hub,
                path,
                filt,
                self._on_watch,
                backend=spec.backend,
                poll_interval=spec.poll_interval,
                max_delay=spec.max_delay,
                label=f"{spec.name}: {display(path)}",
                looks=looks,
            )
            for path in spec.watch
        ]

    def take_over(self, old: Service, *, keep_target: bool) -> None:
        """Carry on where ``old`` (stopped, or detached from its target) left off: the
        changes it saw and did not reload yet (its coalescer, with this spec's timings),
        pause, history, reload count, and with ``keep_target`` its running process."""
        spec = self.spec
        self.coalescer = old.coalescer
        self.coalescer.debounce, self.coalescer.max_delay = spec.debounce, spec.max_delay
        self.coalescer.min_interval = spec.min_interval
        self.paused = old.paused
        self.reloads, self.history = old.reloads, old.history
        if keep_target:
            self.target = old.target
            self.target.spec = spec

    # -- outside -> inside --------------------------------------------------------------

    def arm(self) -> None:
        """Establish the initial watches (a baseline: reports nothing)."""
        for tree in self.trees:
            tree.start()
        self._settle_state()

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.get_running_loop().create_task(self.run(), name=self.name)
        return self._task

    async def command(self, name: str) -> Any:
        """Run a command (reload, restart, pause, resume, stop) inside the service task."""
        if self._task is not None and self._task.done():
            # (nothing drains the inbox of an ended task: answer here, never wait)
            if name == "detach":
                return None  # nothing runs that could still use the target
            if name == "stop":
                return await self.stop()
            raise Refused(f"{self.name} is not running: {self.last_error or 'its task ended'}")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._post(_Command(name, future))
        return await future

    async def stop(self) -> None:
        if self._task is None or self._task.done():
            await self.target.stop()
            self._close()
            return
        await self.command("stop")
        await self._task

    def _on_watch(self, tree: WatchPath, paths: list[str]) -> None:
        self._post(_Change(self.hub.now(), paths))

    def _post(self, item: _Change | _Command) -> None:
        tail = self._inbox[-1] if self._inbox else None
        if not (isinstance(item, _Change) and isinstance(tail, _Change) and tail.merge(item)):
            self._inbox.append(item)
        self._wake.set()

    # -- the task -----------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        if isinstance(self.target, Supervised):
            self.target.on_exit = lambda: self._wake.set()
        await self.target.start()
        timer: asyncio.TimerHandle | None = None
        try:
            while True:
                if await self._drain():
                    return
                self._settle_state()
                self.coalescer.holding = any(t.holding for t in self.trees)
                due = None if self.paused else self.coalescer.due_at()
                if due is not None and due <= loop.time() + TIMER_SLACK:
                    self.hub.drain(since=due)  # unless it was read empty since the batch was due
                    if self._inbox:
                        continue  # more arrived: the batch has not settled yet
                    await self._reload(self.coalescer.take(loop.time()), "change")
                    continue
                if due is not None:
                    timer = loop.call_at(due - TIMER_SLACK, self._wake.set)
                await self._wake.wait()
                self._wake.clear()
                if timer is not None:
                    timer.cancel()
                    timer = None
        except Exception as exc:
            # A bug must not leave a service that looks alive but never reloads again:
            # say so loudly, show it in the status, and answer every waiting command.
            log.critical(
                "%s: internal error; this service stopped reloading", self.name, exc_info=True
            )
            self.last_error = f"internal error, service stopped: {exc!r}"
            self.state = State.FAILED  # outside the table on purpose: this is the bug path
            for item in self._inbox:
                if isinstance(item, _Command) and not item.future.done():
                    item.future.set_exception(Refused(self.last_error))
            self._inbox.clear()
        finally:
            if timer is not None:
                timer.cancel()
            self._close()

    async def _drain(self) -> bool:
        """Take in every queued change and command; True when the task should end."""
        while self._inbox:
            item = self._inbox.popleft()
            if isinstance(item, _Change):
                if item.first is not None:  # merged: keep the batch's first time
                    self.coalescer.add(item.first, [])
                if item.paths:
                    self.coalescer.add(item.at, item.paths)
            elif await self._do(item):
                return True
        return False

    def _close(self) -> None:
        for tree in self.trees:
            tree.close()
        self.trees = []

    async def _do(self, cmd: _Command) -> bool:
        """Carry out one command; True when the task should end."""
        if cmd.future.cancelled() and cmd.name not in ("stop", "detach"):
            return False  # the caller gave up (client gone, timeout): don't act on it
        try:
            if cmd.name == "detach":  # a config change hands the target to a new Service
                cmd.future.set_result(None)
                return True
            if cmd.name == "stop":
                await self.target.stop()
                self._move(State.STOPPED)
                cmd.future.set_result(None)
                return True
            result: Any
            if cmd.name == "reload":
                if self.paused:
                    raise Refused(f"{self.name} is paused; `reloadctl resume {self.name}` first")
                result = await self._reload(self.coalescer.take(time.monotonic()), "manual")
            elif cmd.name == "restart":
                if isinstance(self.target, Pidfile):
                    raise Refused(f"{self.name} has a pidfile target, which reloadd cannot restart")
                self._move(State.RELOADING)
                try:
                    result = await self.target.restart()
                finally:  # a failed restart leaves the state to the facts (e.g. FAILED)
                    self._settle_state(force=True)
            elif cmd.name == "pause":
                self.paused = True
                result = None
            elif cmd.name == "resume":
                self.paused = False
                result = None
            else:
                raise Refused(f"unknown command {cmd.name!r}")
            if not cmd.future.done():
                cmd.future.set_result(result)
        except Exception as exc:
            if not cmd.future.done():
                cmd.future.set_exception(exc)
        return False

    # -- states ---------------------------------------------------------------------------

    def _move(self, new: State) -> None:
        if new is self.state:
            return
        if new not in TRANSITIONS[self.state]:
            raise RuntimeError(
                f"{self.name}: illegal state change {self.state.value} -> {new.value}"
            )
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: %s -> %s", self.name, self.state.value, new.value)
        self.state = new

    def _settle_state(self, force: bool = False) -> None:
        """The resting state, derived from the facts (pause, failure, paths, pending)."""
        if self.state is State.STOPPED or (self.state in _ACTIVE and not force):
            return
        failed = isinstance(self.target, Supervised) and bool(self.target.failed)
        if failed:
            new = State.FAILED
        elif self.paused:
            new = State.PAUSED
        elif self.coalescer.pending:
            new = State.PENDING
        elif any(t.state != "watching" for t in self.trees):
            new = State.WAITING
        else:
            new = State.WATCHING
        if self.state is State.FAILED and new is not State.FAILED and not force:
            return  # only restart or a config change leaves FAILED
        self._move(new)

    # -- reloading ------------------------------------------------------------------------

    async def _reload(self, batch: Batch, trigger: str) -> Reload:
        loop = asyncio.get_running_loop()
        started = loop.time()
        record = Reload(time.time(), trigger, [display(p) for p in batch.paths], batch.count)
        try:
            if self.spec.check:
                self._move(State.CHECKING)
                res = await run(self.spec.check, self.spec, self.spec.check_timeout)
                if not res.ok:
                    self._fail(record, "check-failed", f"check failed: {res.describe()}", res)
                    return record
            self._move(State.RELOADING)
            try:
                record.action = await self._deliver()
            except DeliveryError as exc:
                self._fail(record, "delivery-failed", str(exc), exc.result)
                return record
            except OSError as exc:  # e.g. /proc hidden (hidepid): reported, never fatal
                log.exception("%s: unexpected error while reloading", self.name)
                self._fail(record, "delivery-failed", f"unexpected error: {exc}")
                return record
            delivered = loop.time()
            if trigger == "change":
                record.latency_ms = round((delivered - batch.last) * 1000, 3)
            self.reloads += 1
            self.last_error = ""
            self._log_reload(record, batch)
            return record
        finally:
            record.duration_ms = round((loop.time() - started) * 1000, 3)
            self.history.append(record)
            self._settle_state(force=True)
            if self.on_reload is not None:
                self.on_reload(self, record)

    async def _deliver(self) -> str:
        spec = self.spec
        if spec.action == "restart":
            return await self.target.restart()
        if spec.action == "exec":
            assert spec.exec is not None
            res = await run(spec.exec, spec, spec.exec_timeout)
            if not res.ok:
                raise DeliveryError(f"exec failed: {res.describe()}", res)
            return f"exec {' '.join(spec.exec)}: exited with status 0"
        return await self.target.signal(spec.signal, spec.scope)

    def _fail(self, record: Reload, result: str, error: str, res: RunResult | None = None) -> None:
        record.result, record.error = result, error
        if res is not None:
            record.output = res.output
            tail = _last_line(res.output)
            if tail:
                error = f"{error}: {tail}"
        self.last_error = error
        log.error("%s: %s; not reloaded", self.name, error)
        if res is not None and res.output.strip():
            for line in res.output.strip().splitlines()[-10:]:
                log.error("%s:   | %s", self.name, line)

    def _log_reload(self, record: Reload, batch: Batch) -> None:
        if record.trigger == "manual":
            why = "manual reload"
        else:
            shown = ", ".join(record.paths[:SHOWN_PATHS])
            more = batch.count - min(len(record.paths), SHOWN_PATHS)
            plus = f", +{more} more" if more > 0 else ""
            n = f"{batch.count}{'' if batch.count_exact else '+'}"
            why = f"{n} path{'s' if batch.count != 1 else ''} changed ({shown}{plus})"
        latency = f"; {record.latency_ms:.1f} ms after the last change" if record.latency_ms else ""
        log.info("%s: reloaded: %s; %s%s", self.name, why, record.action, latency)

    # -- status ---------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything reloadctl shows about this service, as plain data."""
        last = self.history[-1].to_dict() if self.history else None
        return {
            "name": self.name,
            "state": self.state.value,
            "paused": self.paused,
            "target": self.target.describe(),
            "action": self.spec.action,
            "signal": self.spec.signal.name,
            "scope": self.spec.scope,
            **self._backend(),
            "watch": [t.describe() for t in self.trees],
            "watches": sum(t.watch_count for t in self.trees),
            "reloads": self.reloads,
            "pending": self.coalescer.pending,
            "last_reload": last,
            "last_error": self.last_error or None,
            "history": [r.to_dict() for r in self.history],
        }

    def _backend(self) -> dict[str, str]:
        """The backend of the service and why: one value, or per path when they differ."""
        shown = {(t.backend_shown, t.reason) for t in self.trees}
        if len(shown) <= 1:
            backend, reason = shown.pop() if shown else ("none", "no watch path")
            return {"backend": backend, "backend_reason": reason}
        backends = {t.backend_shown for t in self.trees}
        return {
            "backend": backends.pop() if len(backends) == 1 else "mixed",
            "backend_reason": "; ".join(
                f"{display(t.root)}: {t.backend_shown} ({t.reason})" for t in self.trees
            ),
        }


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip()[:200] if lines else ""
