"""The daemon: owns the loop, builds services from a Config, routes signals and commands.

Only this module knows all the others (cli.py imports it). Shutdown order: stop taking
commands, ``STOPPING=1``, stop every service (supervised commands get their stop signal,
then SIGKILL after ``stop_timeout``), close the inotify hub.

Signals are commands (STYLE.md): the handlers only enqueue. SIGHUP re-reads the config
(repeated SIGHUPs while one re-read runs coalesce into one more); SIGTERM/SIGINT shut
down gracefully; a second SIGINT skips the graceful stop of supervised commands.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from reloadd import __version__
from reloadd.config import Config, ConfigError, ServiceSpec, load
from reloadd.notify import Notifier
from reloadd.service import Refused, Reload, Service
from reloadd.watch.inotify import Hub

log = logging.getLogger("reloadd")

# Keys that shape the supervised process itself: a change to one of them restarts it.
PROCESS_KEYS = ("command", "user", "group", "environment", "working_directory")

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
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._force = False
        self._reloading: asyncio.Task[tuple[bool, str]] | None = None
        self._reload_again = False
        self._last_reload: tuple[str, float] | None = None

    # -- life cycle -------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.hub = Hub(loop)
        for sig, handler in (
            (signal.SIGTERM, self.shutdown),
            (signal.SIGINT, self._on_sigint),
            (signal.SIGHUP, self._on_sighup),
        ):
            loop.add_signal_handler(sig, handler)
        try:
            for spec in self.config.services:
                self._add(spec)
            for warning in self.config.warnings:
                log.warning("%s", warning)
            self.ready.set()
            self.notifier.ready()
            self.notifier.start_watchdog(loop)
            self._update_status()
            log.info(
                "reloadd %s ready: %d services, %d watches (config %s)",
                __version__,
                len(self.services),
                self.hub.watch_count,
                self.config.path,
            )
            await self._stop.wait()
            log.info("shutting down")
            self.notifier.stopping()
            if self._reloading is not None:
                self._reloading.cancel()
            await self._stop_services(list(self.services.values()))
            return 0
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            self.notifier.close()
            self.hub.close()

    def shutdown(self) -> None:
        self._stop.set()

    def _on_sigint(self) -> None:
        if self._stop.is_set():
            log.warning("second SIGINT: stopping supervised commands with SIGKILL")
            self._force = True
        self._stop.set()

    def _on_sighup(self) -> None:
        asyncio.get_running_loop().create_task(self.reload_config())

    async def _stop_services(self, services: list[Service]) -> None:
        if self._force:
            for svc in services:
                svc.target.spec = dataclasses.replace(svc.target.spec, stop_timeout=0.0)
        results = await asyncio.gather(*(svc.stop() for svc in services), return_exceptions=True)
        for svc, res in zip(services, results, strict=True):
            if isinstance(res, BaseException):
                log.error("%s: error while stopping: %s", svc.name, res)

    # -- services ---------------------------------------------------------------------

    def _add(self, spec: ServiceSpec, target: Any = None) -> Service:
        assert self.hub is not None
        svc = Service(spec, self.hub, on_reload=self._on_reload)
        if target is not None:
            svc.target = target
            target.spec = spec
        svc.arm()
        svc.start()
        self.services[spec.name] = svc
        return svc

    def service(self, name: str) -> Service:
        try:
            return self.services[name]
        except KeyError:
            raise NoSuchService(name) from None

    async def command(self, name: str, cmd: str) -> Any:
        """Run a service command (reload, restart, pause, resume) and return its result."""
        svc = self.service(name)
        result = await svc.command(cmd)
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
        if self._reloading is not None and not self._reloading.done():
            self._reload_again = True
            return await asyncio.shield(self._reloading)
        self._reloading = asyncio.get_running_loop().create_task(self._reload_loop())
        return await asyncio.shield(self._reloading)

    async def _reload_loop(self) -> tuple[bool, str]:
        while True:
            self._reload_again = False
            result = await self._reload_once()
            if not self._reload_again:
                return result

    async def _reload_once(self) -> tuple[bool, str]:
        self.notifier.reloading()
        try:
            try:
                new = load(self.config.path)
            except ConfigError as exc:
                self.config_error = str(exc)
                log.error("config not applied; the old one keeps running:\n%s", exc)
                return False, str(exc)
            summary = await self.apply(new)
            self.config_error = None
            for warning in new.warnings:
                log.warning("%s", warning)
            log.info("config reloaded: %s", summary)
            return True, summary
        finally:
            self._update_status()
            self.notifier.ready()

    async def apply(self, new: Config) -> str:
        """Apply only the difference between the running config and ``new``."""
        old = {s.name: s for s in self.config.services}
        want = {s.name: s for s in new.services}
        removed = [self.services[n] for n in old if n not in want and n in self.services]
        added = [s for n, s in want.items() if n not in old]
        changed = [s for n, s in want.items() if n in old and old[n] != s]
        self.config = new
        for spec in added:
            self._add(spec)
        for spec in changed:
            await self._rebuild(spec, old[spec.name])
        for svc in removed:
            del self.services[svc.name]
        await self._stop_services(removed)
        parts = [f"{len(added)} added", f"{len(changed)} changed", f"{len(removed)} removed"]
        return ", ".join(parts)

    async def _rebuild(self, spec: ServiceSpec, before: ServiceSpec) -> None:
        """Replace a service whose spec changed; keep its process unless it must change."""
        old = self.services[spec.name]
        same_process = spec.target_kind == before.target_kind and all(
            getattr(spec, k) == getattr(before, k) for k in PROCESS_KEYS
        )
        if same_process and spec.target_kind == "command":
            await old.command("detach")
            new = self._add(spec, target=old.target)
        else:
            await old.stop()
            new = self._add(spec)
        if old.coalescer.pending:
            batch = old.coalescer.take(time.monotonic())
            new.coalescer.add(batch.first, batch.paths or (spec.watch[0],))
        new.reloads, new.history = old.reloads, old.history

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


__all__ = ["Daemon", "NoSuchService", "Refused"]
