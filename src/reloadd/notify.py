"""The sd_notify protocol and the systemd watchdog.

reloadd runs as ``Type=notify``: it tells systemd when it is ready, when it is reloading its
configuration, when it is stopping, a one-line STATUS= for ``systemctl status``, and it pings
the watchdog from the event loop so that a stuck loop stops the pings and systemd acts.

Design notes:

- Our own sender, not the ``sdnotify`` package: that one reads ``os.environ`` only (tests
  pass an environment), and it swallows every error (``except: pass``), so a misconfigured
  NOTIFY_SOCKET would fail silently. The protocol is small: one datagram of ``KEY=VALUE``
  lines to an AF_UNIX socket, whose path starts with ``@`` for the abstract namespace
  (sd_notify(3)).
- Without NOTIFY_SOCKET (a developer's terminal, ``--detach``) every method is a no-op.
- A failed send is logged (once until a send works again, so a vanished socket does not log
  every watchdog period) and never raised: losing systemd must not stop the reloads.
- STATUS= is sent only when the line changes, at most once per ``status_interval``; the
  latest line is sent when the interval is over (one ``call_later`` timer, armed only while
  a line is waiting). Nothing runs on a timer while nothing changes.
- WATCHDOG=1 is sent from ``loop.call_later`` every half of WATCHDOG_USEC, as sd_watchdog_enabled(3)
  recommends; it is scheduled on the daemon's loop on purpose, so it is only sent while
  the loop still turns.

Example::

    notifier = Notifier()
    notifier.start_watchdog(asyncio.get_running_loop())
    notifier.status("2 services, 14 watches, 0 reloads")
    notifier.ready()
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

__all__ = ["Notifier"]

log = logging.getLogger(__name__)

# systemd reads the notify socket promptly; a full queue for this long means it is wedged,
# and the daemon's loop must not wait on it any longer than that.
SEND_TIMEOUT = 1.0
STATUS_INTERVAL = 1.0


def _socket_address(value: str) -> str | None:
    """Turn NOTIFY_SOCKET into an AF_UNIX address, or None if it is not one we can use.

    >>> _socket_address("@/org/freedesktop/systemd1/notify/123")
    '\\x00/org/freedesktop/systemd1/notify/123'
    """
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # relative paths and vsock: addresses (systemd 254+) are not supported


def _parse_watchdog_usec(environ: Mapping[str, str]) -> int | None:
    """WATCHDOG_USEC, if the watchdog is meant for this process (sd_watchdog_enabled(3))."""
    usec_text = environ.get("WATCHDOG_USEC")
    if not usec_text:
        return None
    try:
        usec = int(usec_text)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", usec_text)
        return None
    if usec <= 0:
        return None
    pid_text = environ.get("WATCHDOG_PID")
    if pid_text:
        try:
            pid = int(pid_text)
        except ValueError:
            log.warning("ignoring the watchdog: WATCHDOG_PID=%r is not a pid", pid_text)
            return None
        if pid != os.getpid():
            # Inherited from a parent that is watched itself: not ours to ping.
            return None
    return usec


class Notifier:
    """Sends sd_notify messages to systemd; silent when not started by systemd.

    Args:
        environ: the environment to read NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID
            from (default: ``os.environ``).
        status_interval: minimum seconds between two STATUS= messages.
        clock: monotonic clock in seconds, for the rate limit.

    Example::

        notifier = Notifier({"NOTIFY_SOCKET": "/run/systemd/notify"})
        notifier.ready()  # sends "READY=1"
    """

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        *,
        status_interval: float = STATUS_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        env = os.environ if environ is None else environ
        self._status_interval = status_interval
        self._clock = clock
        self._sock: socket.socket | None = None
        self._address: str | None = None
        self._failing = False
        # STATUS= bookkeeping: what systemd shows, what waits for the interval to pass.
        self._sent_status: str | None = None
        self._pending_status: str | None = None
        self._status_sent_at: float | None = None
        self._status_timer: asyncio.TimerHandle | None = None
        self._watchdog_timer: asyncio.TimerHandle | None = None

        value = env.get("NOTIFY_SOCKET", "")
        if value:
            address = _socket_address(value)
            if address is None:
                log.warning("ignoring NOTIFY_SOCKET=%r: not an absolute path or @abstract", value)
            else:
                self._address = address
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.settimeout(SEND_TIMEOUT)
        self.enabled: bool = self._sock is not None
        self.watchdog_usec: int | None = _parse_watchdog_usec(env) if self.enabled else None

    # -- the messages ------------------------------------------------------------------

    def ready(self) -> None:
        """READY=1, with the latest STATUS= line (also one still held back by the rate limit)."""
        if not self.enabled:
            return
        fields = ["READY=1"]
        pending = self._take_pending_status()
        status = pending if pending is not None else self._sent_status
        if status is not None:
            fields.append(f"STATUS={status}")
        if self._send(fields) and pending is not None:
            self._sent_status = pending
            self._status_sent_at = self._clock()

    def reloading(self) -> None:
        """RELOADING=1 with MONOTONIC_USEC=; systemd shows "reloading" until ready()."""
        if not self.enabled:
            return
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(["RELOADING=1", f"MONOTONIC_USEC={now_usec}"])

    def stopping(self) -> None:
        """STOPPING=1: shutting down, supervised commands are stopped next."""
        if not self.enabled:
            return
        self._send(["STOPPING=1"])

    def status(self, line: str) -> None:
        """STATUS=<line>, if it differs from what systemd shows; rate-limited.

        A line that arrives within ``status_interval`` of the previous send waits in a
        single timer and is replaced by any newer line; the newest one is always sent.
        """
        if not self.enabled:
            return
        line = line.replace("\n", " ")  # one datagram line per field
        if line == self._sent_status:
            self._cancel_status_timer()  # a waiting line was superseded by what is shown
            self._pending_status = None
            return
        self._pending_status = line
        if self._status_timer is not None:
            return  # the armed timer sends the newest line
        wait = self._status_wait()
        if wait <= 0:
            self._flush_status()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._flush_status()  # no loop to wait on (start-up, shutdown): send now
            return
        self._status_timer = loop.call_later(wait, self._on_status_timer)

    # -- the watchdog ------------------------------------------------------------------

    def start_watchdog(self, loop: asyncio.AbstractEventLoop) -> None:
        """Ping WATCHDOG=1 every half WATCHDOG_USEC from ``loop``, if systemd asked for it."""
        if not self.enabled or self.watchdog_usec is None or self._watchdog_timer is not None:
            return
        interval = self.watchdog_usec / 2e6
        log.debug("watchdog: pinging every %.3fs", interval)
        self._ping_watchdog(loop, interval)

    def _ping_watchdog(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        self._send(["WATCHDOG=1"])
        self._watchdog_timer = loop.call_later(interval, self._ping_watchdog, loop, interval)

    # -- teardown ----------------------------------------------------------------------

    def close(self) -> None:
        """Cancel the timers and close the socket; later calls are no-ops."""
        self._cancel_status_timer()
        if self._watchdog_timer is not None:
            self._watchdog_timer.cancel()
            self._watchdog_timer = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self.enabled = False

    # -- internals ---------------------------------------------------------------------

    def _status_wait(self) -> float:
        if self._status_sent_at is None:
            return 0.0
        return self._status_sent_at + self._status_interval - self._clock()

    def _take_pending_status(self) -> str | None:
        self._cancel_status_timer()
        status, self._pending_status = self._pending_status, None
        return status

    def _cancel_status_timer(self) -> None:
        if self._status_timer is not None:
            self._status_timer.cancel()
            self._status_timer = None

    def _on_status_timer(self) -> None:
        self._status_timer = None
        self._flush_status()

    def _flush_status(self) -> None:
        status = self._take_pending_status()
        if status is None or status == self._sent_status:
            return
        # Counted as sent even if the send failed: a retry storm helps nobody, and the
        # next change sends the newest line anyway.
        self._send([f"STATUS={status}"])
        self._sent_status = status
        self._status_sent_at = self._clock()

    def _send(self, fields: list[str]) -> bool:
        if self._sock is None or self._address is None:
            return False
        payload = "\n".join(fields).encode("utf-8", "replace")
        try:
            self._sock.sendto(payload, self._address)
        except OSError as exc:
            if not self._failing:
                shown = self._address.replace("\0", "@", 1)
                log.warning("cannot notify systemd at %s (%s): %s", shown, fields[0], exc)
            self._failing = True
            return False
        if self._failing:
            log.info("notifying systemd works again")
        self._failing = False
        return True
