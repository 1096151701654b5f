"""The daemon: owns the loop, builds services from a Config, routes signals and commands.

Only this module knows all the others (cli.py imports it). Shutdown order: stop taking
commands, ``STOPPING=1``, stop every service (supervised commands get their stop signal,
then SIGKILL after ``stop_timeout``), close the inotify hub.

Signals are commands (STYLE.md): the handlers only enqueue. SIGHUP re-reads the config
(repeated SIGHUPs while one re-read runs coalesce into one more); SIGTERM/SIGINT shut
down gracefully; a second SIGINT skips the graceful stop of supervised commands.

Live configuration (issue 7). Three triggers re-read the config: SIGHUP, ``reloadctl
reload-config`` and, unless ``[daemon] watch_config = false``, a change to the config file
or to a ``*.toml`` in its drop-in directory. Those are watched like service paths
(``WatchPath``: inotify on the shared hub, polled where inotify cannot see), so an
editor's save-by-rename is seen (the anchor is the containing directory, not the inode);
a burst of saves is one re-read (``CONFIG_DEBOUNCE``). A re-read validates everything
first; a config that fails to load, or that a non-root user could have changed while
reloadd runs as root, changes nothing: the error is logged, kept as ``config_error`` and
shown in ``STATUS=`` until a good config loads. A good one is applied as a difference:
unchanged services are not touched; removed ones stop first (a renamed service may need
its port back); changed ones are rebuilt (the supervised process is kept unless a
``PROCESS_KEYS`` key changed); added ones start. A rebuilt service's new watches are
armed before the old ones close (on inotify they get the same watch descriptors, so
events already queued reach them), and its pending changes are handed over, so a write
made during the re-read still earns its reload.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any

from reloadd import __version__
from reloadd.coalesce import Coalescer
from reloadd.config import Config, ConfigError, DaemonConfig, ServiceSpec, load, trust_problems
from reloadd.control import ControlServer
from reloadd.notify import Notifier
from reloadd.probe import call
from reloadd.protocol import FAILED, REFUSED, CommandError
from reloadd.service import Refused, Reload, Service
from reloadd.target import DeliveryError
from reloadd.watch import Look, WatchPath, look_all
from reloadd.watch.filters import PathFilter, display
from reloadd.watch.inotify import Hub

log = logging.getLogger("reloadd")

# Keys that shape the supervised process itself: a change to one of them restarts it.
PROCESS_KEYS = ("command", "user", "group", "environment", "working_directory")

# Keys that shape a service's watches: when none changed, a rebuilt service keeps them.
WATCH_KEYS = ("watch", "include", "exclude", "backend", "poll_interval", "max_delay")

# A burst of config saves (an editor's rename dance, a deploy tool writing several
# drop-ins) is one re-read: it happens CONFIG_DEBOUNCE after the last change, but no later
# than CONFIG_MAX_DELAY after the first however busy the directory stays.
CONFIG_DEBOUNCE = 0.2
CONFIG_MAX_DELAY = 2.0
# READY=1 waits this long at most for the first scans of polled trees (a hung mount)
STARTUP_BASELINE_WAIT = 30.0
# [daemon] keys that are read once, at start
_DAEMON_LIVE_KEYS = ("watch_config", "include")
_TRUST_HINT = (
    "reloadd runs as root and reads only config files that no other user can change "
    "(whoever can write them could make root run commands)"
)

Listener = Callable[[dict[str, Any]], None]


class NoSuchService(LookupError):
    pass


class Daemon:
    def __init__(self, config: Config, notifier: Notifier | None = None) -> None:
        self.config = config
        self.config_error: str | None = None
        self.notifier = notifier or Notifier()
        self.services: dict[str, Service] = {}
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.listeners: set[Listener] = set()
        self.hub: Hub | None = None
        self.control: ControlServer | None = None
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._reloading: asyncio.Task[tuple[bool, str]] | None = None
        self._reload_again = False
        self._last_reload: tuple[str, float] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._config_trees: list[WatchPath] = []
        self._config_watched: tuple[bool, str] | None = None  # (watch_config, include)
        self._config_reading = False  # a re-read is reading files, off the loop
        self._no_grace = False  # a second SIGINT: every supervised stop is a SIGKILL
        self._config_changes = Coalescer(CONFIG_DEBOUNCE, CONFIG_MAX_DELAY)
        self._config_timer: asyncio.TimerHandle | None = None

    # -- life cycle -------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        problems = trust_problems(self.config)
        if problems:
            for problem in problems:
                log.critical("refusing to start: %s", problem)
            log.critical("%s", _TRUST_HINT)
            self.notifier.close()
            return 1
        self.hub = Hub(loop)
        for sig, handler in (
            (signal.SIGTERM, self.shutdown),
            (signal.SIGINT, self._on_sigint),
            (signal.SIGHUP, self._on_sighup),
        ):
            loop.add_signal_handler(sig, handler)
        try:
            # The control socket listens before any service starts: a second reloadd on the
            # same socket fails here, and reloadctl is answered as soon as READY=1 is out.
            self.control = ControlServer(self)
            await self.control.start()
            # statfs of every watch path, in threads and at most PROBE_TIMEOUT: a path on
            # a hung mount is polled instead of stopping the loop (docs/backends.md)
            specs = self.config.services  # (a re-read waits for start-up: reload_config)
            looks = await self._look(specs)
            for spec in specs:
                self._add(spec, looks)
            await self._watch_config()
            await self._baselines()  # READY=1 means every polled tree has its baseline
            for warning in self.config.warnings:
                log.warning("%s", warning)
            self.ready.set()
            self._update_status()  # so READY=1 carries STATUS= in the same datagram
            self.notifier.ready()
            self.notifier.start_watchdog(loop)
            log.info(
                "reloadd %s ready: %d services, %d watches (config %s)",
                __version__,
                len(self.services),
                self.hub.watch_count,
                self.config.path,
            )
            await self._stop.wait()
            log.info("shutting down")
            await self.control.close()  # first: no command may start while services stop
            self._unwatch_config()  # and no config edit may start or change a service
            self.notifier.stopping()
            if self._reloading is not None and not self._reloading.done():
                if self._config_reading:
                    # still reading the files (stuck there for ever, on a hung mount):
                    # nothing of it is applied yet, so it is dropped
                    self._reloading.cancel()
                    await asyncio.wait([self._reloading])
                else:
                    # let a re-read that is applying finish: cancelled half-way it could
                    # leave a process that belongs to no service, and so is never stopped
                    await asyncio.shield(self._reloading)
            await self._stop_services(list(self.services.values()))
            return 0
        finally:
            if self.control is not None:
                await self.control.close()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            self._unwatch_config()
            self.notifier.close()
            self.hub.close()

    def shutdown(self) -> None:
        self._stop.set()

    def _unwatch_config(self) -> None:
        if self._config_timer is not None:
            self._config_timer.cancel()
            self._config_timer = None
        for tree in self._config_trees:
            tree.close()
        self._config_trees = []

    def _on_sigint(self) -> None:
        if self._stop.is_set():
            log.warning("second SIGINT: stopping supervised commands with SIGKILL")
            self._no_grace = True  # also for a target a re-read in progress still hands on
            for svc in self.services.values():
                svc.target.kill_now()
        self._stop.set()

    def _on_sighup(self) -> None:
        self._spawn(self.reload_config())

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` as a task the daemon holds on to (the loop keeps only weak refs)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _baselines(self) -> None:
        """Wait for the first scan of every polled tree (they run in threads, off the
        loop), up to STARTUP_BASELINE_WAIT (a hung mount must not keep READY=1 back for
        ever) or until a stop is asked for; a tree still scanning then stays ``waiting``."""
        trees = [t for svc in self.services.values() for t in svc.trees]
        trees += self._config_trees
        waits = {asyncio.ensure_future(t.baseline()): t for t in trees}
        if not waits:
            return
        every: asyncio.Future[Any] = asyncio.gather(*waits)
        stop: asyncio.Future[Any] = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait(
                [every, stop], timeout=STARTUP_BASELINE_WAIT, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stop.cancel()
            every.cancel()
        slow = [display(t.root) for fut, t in waits.items() if fut.cancelled()]
        if slow and not self._stop.is_set():
            log.warning(
                "still scanning after %gs: %s; ready without their baseline (they are "
                "watched once their first scan completes)",
                STARTUP_BASELINE_WAIT,
                ", ".join(slow),
            )

    async def _stop_services(self, services: list[Service]) -> None:
        if self._no_grace:
            for svc in services:
                svc.target.kill_now()
        results = await asyncio.gather(*(svc.stop() for svc in services), return_exceptions=True)
        for svc, res in zip(services, results, strict=True):
            if isinstance(res, BaseException):
                log.error("%s: error while stopping: %s", svc.name, res)

    # -- services ---------------------------------------------------------------------

    @staticmethod
    async def _look(specs: list[ServiceSpec] | tuple[ServiceSpec, ...]) -> dict[str, Look | None]:
        """The file systems of the services' watch paths, looked at off the loop."""
        return await look_all((path, spec.backend) for spec in specs for path in spec.watch)

    def _add(self, spec: ServiceSpec, looks: dict[str, Look | None]) -> Service:
        return self._launch(self._build(spec, looks))

    def _build(self, spec: ServiceSpec, looks: dict[str, Look | None]) -> Service:
        """A new service with its watches armed (a baseline), not yet running; its watch
        paths' file systems come from ``looks`` (``_look``), not from statfs on the loop."""
        assert self.hub is not None
        svc = Service(spec, self.hub, on_reload=self._on_reload, looks=looks)
        svc.arm()
        return svc

    def _launch(self, svc: Service) -> Service:
        task = svc.start()
        task.add_done_callback(lambda _: self._update_status())  # e.g. it died of a bug
        self.services[svc.name] = svc
        return svc

    def service(self, name: str) -> Service:
        try:
            return self.services[name]
        except KeyError:
            raise NoSuchService(name) from None

    async def command(self, name: str, cmd: str) -> Any:
        """Run a service command (reload, restart, pause, resume) and return its result.

        A refusal or a failed delivery is raised as ``protocol.CommandError``, so the
        control server needs to know nothing of services and targets.
        """
        svc = self.service(name)
        try:
            result = await svc.command(cmd)
        except Refused as exc:
            raise CommandError(REFUSED, str(exc)) from None
        except DeliveryError as exc:
            raise CommandError(FAILED, f"{name}: {cmd} failed: {exc}") from None
        finally:
            self._update_status()
        return result

    def _on_reload(self, svc: Service, record: Reload) -> None:
        self._last_reload = (svc.name, record.when)
        self._update_status()
        event = {"service": svc.name, **record.to_dict()}
        for listener in list(self.listeners):
            listener(event)

    # -- configuration ------------------------------------------------------------------

    async def reload_config(self) -> tuple[bool, str]:
        """Re-read and apply the config; (applied, message). Concurrent calls coalesce."""
        if not self.ready.is_set() and not self._stop.is_set():
            # Start-up is still building the services of the file as it read it (the
            # looks at the watch paths may take seconds): a re-read now would race it.
            # The file is read once they are up, as it is then.
            await _first(self.ready.wait(), self._stop.wait())
        if self._stop.is_set():
            return False, "reloadd is shutting down; the config was not re-read"
        if self._reloading is not None and not self._reloading.done():
            self._reload_again = True
            return await asyncio.shield(self._reloading)
        self._reloading = asyncio.get_running_loop().create_task(self._reload_loop())
        return await asyncio.shield(self._reloading)

    async def _reload_loop(self) -> tuple[bool, str]:
        while True:
            self._reload_again = False
            result = await self._reload_once()
            if not self._reload_again or self._stop.is_set():
                return result  # (no new read once stopping: nothing may start any more)

    async def _reload_once(self) -> tuple[bool, str]:
        self.notifier.reloading()
        # This read covers every edit seen so far: a re-read the config watch still has
        # pending for them (a SIGHUP or `systemctl reload` right after an edit) would only
        # repeat it, and show the unit "reloading" once more. Later edits start anew.
        self._config_changes.take(asyncio.get_running_loop().time())
        if self._config_timer is not None:
            self._config_timer.cancel()
            self._config_timer = None
        try:
            # Reading the files and checking their owners are blocking file-system calls
            # (a large drop-in dir, a tree walked for its owners, a mount that may hang
            # for ever): they run off the loop, in daemon threads (probe.call: an
            # executor's thread stuck in a hung mount would keep reloadd from exiting).
            self._config_reading = True
            try:
                new: Config = await asyncio.wrap_future(call(load, self.config.path).future)
                problems = await asyncio.wrap_future(call(trust_problems, new).future)
            except ConfigError as exc:
                return self._reject(str(exc))
            finally:
                self._config_reading = False
            if problems:
                return self._reject("\n".join([*problems, _TRUST_HINT]))
            try:
                summary = await self.apply(new)
            except Exception as exc:  # a bug; the daemon keeps running what it has
                log.exception("config reload failed while applying it")
                self.config_error = f"config reload failed while applying it: {exc!r}"
                return False, self.config_error
            self.config_error = None
            for warning in new.warnings:
                log.warning("%s", warning)
            log.info("config reloaded: %s", summary)
            return True, summary
        finally:
            self._update_status()
            if not self._stop.is_set():  # (after STOPPING=1, READY=1 would mislead systemd)
                self.notifier.ready()

    def _reject(self, error: str) -> tuple[bool, str]:
        self.config_error = error
        log.error("config not applied; the old one keeps running:\n%s", error)
        return False, error

    async def apply(self, new: Config) -> str:
        """Apply only the difference between the running config and ``new``."""
        old = {s.name: s for s in self.config.services}
        want = {s.name: s for s in new.services}
        removed = [self.services[n] for n in old if n not in want and n in self.services]
        added = [s for n, s in want.items() if n not in old]
        changed = [s for n, s in want.items() if n in old and old[n] != s]
        rewatched = [s for s in changed if _watch_changed(s, old[s.name])]
        looks = await self._look([*added, *rewatched])  # off the loop, like at start
        before, self.config = self.config, new
        # removed first: a service renamed in the file may need its port back
        for svc in removed:
            log.info("%s: removed from the config; stopping it", svc.name)
            del self.services[svc.name]
        await self._stop_services(removed)
        for spec in changed:
            await self._rebuild(spec, old[spec.name], looks)
        for spec in added:
            log.info("%s: added to the config; starting it", spec.name)
            self._add(spec, looks)
        self._note_daemon_changes(before.daemon, new.daemon)
        await self._watch_config()
        parts = [f"{len(added)} added", f"{len(changed)} changed", f"{len(removed)} removed"]
        return ", ".join(parts)

    async def _rebuild(
        self, spec: ServiceSpec, before: ServiceSpec, looks: dict[str, Look | None]
    ) -> None:
        """Replace a service whose spec changed; keep its process unless it must change.

        What the old service knew carries over: its watches when no ``WATCH_KEYS`` key
        changed (otherwise new ones are armed before the old close), its pending batch
        (the coalescer itself, with the new timings), pause, history and reload count.
        """
        assert self.hub is not None
        old = self.services[spec.name]
        keys = [
            f.name
            for f in dataclasses.fields(spec)
            if getattr(spec, f.name) != getattr(before, f.name)
        ]
        supervised = spec.target_kind == before.target_kind == "command"
        keep_process = supervised and not set(keys) & set(PROCESS_KEYS)
        if _watch_changed(spec, before):
            new = Service(spec, self.hub, on_reload=self._on_reload, looks=looks)
            # Armed before the old ones close: on inotify the kernel hands the new trees
            # the same watch descriptors, so events already queued reach them too.
            new.arm()
        else:
            new = Service(spec, self.hub, on_reload=self._on_reload, watches_of=old)
        what = ", ".join(keys)
        if keep_process:
            log.info("%s: changed (%s); its process keeps running", spec.name, what)
            await old.command("detach")
        else:
            restart = "restarting its command" if before.target_kind == "command" else "rebuilt"
            log.info("%s: changed (%s); %s", spec.name, what, restart)
            await old.stop()
        new.take_over(old, keep_target=keep_process)
        self._launch(new)

    def _note_daemon_changes(self, before: DaemonConfig, after: DaemonConfig) -> None:
        for f in dataclasses.fields(DaemonConfig):
            if f.name not in _DAEMON_LIVE_KEYS and getattr(before, f.name) != getattr(
                after, f.name
            ):
                log.warning("daemon.%s changed; it takes effect when reloadd restarts", f.name)

    # -- watching the config ------------------------------------------------------------

    async def _watch_config(self) -> None:
        """Watch the config file and its drop-in dir, as ``[daemon]`` says (re-armed when
        ``watch_config`` or ``include`` change; new watches before old ones close)."""
        daemon = self.config.daemon
        key = (daemon.watch_config, daemon.include)
        if key == self._config_watched:
            return
        assert self.hub is not None
        # Config files live on local disks: inotify, whose anchor also sees a missing
        # drop-in dir appear, with no periodic look (auto would re-check a missing path
        # every poll_interval, the only idle wake-up reloadd would have). Without an
        # inotify instance, auto falls back to polling.
        backend = "inotify" if self.hub.inotify is not None else "auto"
        roots = (
            ((self.config.path, PathFilter()), (daemon.include, PathFilter(("/*.toml",))))
            if daemon.watch_config
            else ()
        )
        # even /etc may be a network mount: looked at off the loop like service paths
        looks = await look_all((root, backend) for root, _ in roots)
        if self._stop.is_set():
            return  # shutting down meanwhile: nothing is to be watched any more
        self._config_watched = key
        old, self._config_trees = self._config_trees, []
        for root, filt in roots:
            label = f"config: {display(root)}"
            tree = WatchPath(
                self.hub,
                root,
                filt,
                self._on_config_change,
                backend=backend,
                label=label,
                looks=looks,
            )
            tree.start()
            self._config_trees.append(tree)
        for tree in old:
            tree.close()

    def _on_config_change(self, tree: WatchPath, paths: list[str]) -> None:
        now = asyncio.get_running_loop().time()
        self._config_changes.add(now, paths or [tree.root])
        self._arm_config_timer()

    def _arm_config_timer(self) -> None:
        """(Re)set the timer for the pending config changes (``self._config_changes`` has
        the rules). While a file is still open for writing (an in-place save) they wait,
        up to ``CONFIG_MAX_DELAY``, for the close, which the watch reports."""
        loop = asyncio.get_running_loop()
        changes = self._config_changes
        changes.holding = any(t.holding for t in self._config_trees)
        due = changes.due_at()
        if self._config_timer is not None:
            self._config_timer.cancel()
            self._config_timer = None
        if due is None:
            return
        self._config_timer = loop.call_at(due, self._config_settled)

    def _config_settled(self) -> None:
        self._config_timer = None
        changes = self._config_changes
        changes.holding = any(t.holding for t in self._config_trees)
        due = changes.due_at()
        if due is None:
            return
        now = asyncio.get_running_loop().time()
        if due > now:  # still held (or woken a hair early)
            self._arm_config_timer()
            return
        batch = changes.take(now)
        paths = sorted(batch.paths)
        shown = ", ".join(display(p) for p in paths[:5])
        more = f", +{batch.count - 5} more" if batch.count > 5 else ""
        log.info("config changed (%s%s); re-reading it", shown, more)
        self._spawn(self.reload_config())

    # -- status ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        services = [svc.snapshot() for svc in self.services.values()]
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime": round(time.monotonic() - self.started, 3),
            "started": self.started_wall,
            "config": self.config.path,
            "config_error": self.config_error,
            "watches": self.hub.watch_count if self.hub else 0,
            "overflows": self.hub.overflows if self.hub else 0,
            "reloads": sum(s["reloads"] for s in services),
            "services": services,
        }

    def status_line(self) -> str:
        n = len(self.services)
        reloads = sum(s.reloads for s in self.services.values())
        watches = self.hub.watch_count if self.hub else 0
        line = f"{n} service{'s' if n != 1 else ''}, {watches:,} watches, {reloads} reloads"
        if self._last_reload is not None:
            name, when = self._last_reload
            line += f"; last: {name} at {time.strftime('%H:%M:%S', time.localtime(when))}"
        errors = [f"{s.name}: {s.last_error}" for s in self.services.values() if s.last_error]
        if self.config_error:
            line += "; config error: " + self.config_error.splitlines()[0]
        elif errors:
            line += "; error: " + errors[0]
        return line

    def _update_status(self) -> None:
        self.notifier.status(self.status_line())


async def _first(*waits: Coroutine[Any, Any, Any]) -> None:
    """Until the first of ``waits`` is done (the others are cancelled)."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def _watch_changed(spec: ServiceSpec, before: ServiceSpec) -> bool:
    return any(getattr(spec, k) != getattr(before, k) for k in WATCH_KEYS)


__all__ = ["Daemon", "NoSuchService", "Refused"]
