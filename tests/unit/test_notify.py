"""reloadd.notify against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from reloadd.notify import Notifier

DEADLINE = 5.0


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET: a bound datagram socket the test reads."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)

    def recv(self, timeout: float = DEADLINE) -> str:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode()

    async def arecv(self, timeout: float = DEADLINE) -> str:
        """Receive without blocking the loop, so the notifier's timers can fire."""
        self.sock.setblocking(False)
        loop = asyncio.get_running_loop()
        return (await asyncio.wait_for(loop.sock_recv(self.sock, 4096), timeout)).decode()

    def assert_empty(self) -> None:
        self.sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            self.sock.recv(4096)


class FakeClock:
    """The notifier's clock for the rate limit, set by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class RecordingLoop(asyncio.SelectorEventLoop):
    """A real event loop that also keeps every ``call_later``: the tests read what the
    notifier scheduled (``timers_of``) instead of timing what it sent."""

    def __init__(self) -> None:
        super().__init__()
        self._calls: list[tuple[float, object, asyncio.TimerHandle]] = []

    def call_later(self, delay, callback, *args, context=None):  # type: ignore[no-untyped-def]
        handle = super().call_later(delay, callback, *args, context=context)
        self._calls.append((delay, callback, handle))
        return handle

    def timers_of(self, owner: object) -> list[tuple[float, asyncio.TimerHandle]]:
        """``(delay, handle)`` of every timer armed with a method of ``owner``, in order
        (not those of ``asyncio.wait_for`` in ``FakeSystemd.arecv``)."""
        return [(d, h) for d, cb, h in self._calls if getattr(cb, "__self__", None) is owner]


def run_on_recording_loop(coro: Coroutine[Any, Any, None]) -> None:
    loop = RecordingLoop()
    try:
        loop.run_until_complete(coro)
    finally:
        loop.close()


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[tuple[FakeSystemd, dict[str, str]]]:
    path = str(tmp_path / "notify")
    fake = FakeSystemd(path)
    try:
        yield fake, {"NOTIFY_SOCKET": path}
    finally:
        fake.sock.close()


def test_disabled_without_notify_socket() -> None:
    """Without NOTIFY_SOCKET every method is a silent no-op."""
    notifier = Notifier({})
    assert not notifier.enabled

    async def run() -> None:
        notifier.start_watchdog(asyncio.get_running_loop())
        notifier.ready()
        notifier.reloading()
        notifier.status("x")
        notifier.status("y")
        notifier.stopping()
        notifier.close()

    asyncio.run(run())


def test_relative_notify_socket_is_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="reloadd.notify"):
        notifier = Notifier({"NOTIFY_SOCKET": "relative/notify"})
    assert not notifier.enabled
    assert "NOTIFY_SOCKET" in caplog.text


def test_ready_reloading_stopping(systemd: tuple[FakeSystemd, dict[str, str]]) -> None:
    fake, env = systemd
    notifier = Notifier(env)
    assert notifier.enabled
    notifier.ready()
    assert fake.recv() == "READY=1"
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = fake.recv().split("\n")
    assert lines[0] == "RELOADING=1"
    key, value = lines[1].split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after
    notifier.stopping()
    assert fake.recv() == "STOPPING=1"
    notifier.close()


def test_abstract_socket() -> None:
    """'@name' in NOTIFY_SOCKET is the abstract-namespace socket '\\0name'."""
    name = f"reloadd-test-{os.getpid()}-{time.monotonic_ns()}"
    fake = FakeSystemd("\0" + name)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        notifier.ready()
        assert fake.recv() == "READY=1"
        notifier.close()
    finally:
        fake.sock.close()


def test_ready_carries_the_latest_status(systemd: tuple[FakeSystemd, dict[str, str]]) -> None:
    fake, env = systemd
    notifier = Notifier(env)
    notifier.status("1 service, 3 watches, 0 reloads")
    assert fake.recv() == "STATUS=1 service, 3 watches, 0 reloads"
    notifier.ready()
    assert fake.recv() == "READY=1\nSTATUS=1 service, 3 watches, 0 reloads"
    notifier.close()


def test_status_is_sent_only_when_it_changes(systemd: tuple[FakeSystemd, dict[str, str]]) -> None:
    fake, env = systemd
    notifier = Notifier(env, status_interval=0.0)
    notifier.status("a")
    notifier.status("a")
    notifier.status("b")
    notifier.stopping()  # a marker: datagrams arrive in order
    assert [fake.recv() for _ in range(3)] == ["STATUS=a", "STATUS=b", "STOPPING=1"]
    notifier.close()


def test_status_is_rate_limited_and_the_latest_line_wins(
    systemd: tuple[FakeSystemd, dict[str, str]],
) -> None:
    """1. 'a' goes out at once; 2. 'b' and 'c' within the interval: one timer, armed for
    what is left of the interval; nothing is sent until it fires; 3. then only 'c'."""
    fake, env = systemd
    clock = FakeClock(10.0)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, RecordingLoop)
        notifier = Notifier(env, status_interval=0.25, clock=clock)
        notifier.status("a")
        assert await fake.arecv() == "STATUS=a"
        assert loop.timers_of(notifier) == []  # sent at once: nothing waits
        clock.now = 10.125  # half the interval later
        notifier.status("b")
        notifier.status("c")
        # No await since 'b': the loop has not run, so nothing could have fired yet.
        fake.assert_empty()
        [(delay, timer)] = loop.timers_of(notifier)  # one timer for both lines
        assert delay == pytest.approx(0.125)  # the rest of the interval, not all of it
        assert notifier._status_timer is timer
        assert await fake.arecv() == "STATUS=c"  # the timer fires and sends the newest
        assert notifier._status_timer is None
        notifier.stopping()  # a marker: 'b' was never sent
        assert await fake.arecv() == "STOPPING=1"
        assert len(loop.timers_of(notifier)) == 1
        notifier.close()

    run_on_recording_loop(run())


def test_a_waiting_status_that_returns_to_the_shown_line_is_dropped(
    systemd: tuple[FakeSystemd, dict[str, str]],
) -> None:
    fake, env = systemd
    clock = FakeClock(10.0)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, RecordingLoop)
        notifier = Notifier(env, status_interval=60.0, clock=clock)
        notifier.status("a")
        assert await fake.arecv() == "STATUS=a"
        notifier.status("b")  # held back by the rate limit ...
        [(_, timer)] = loop.timers_of(notifier)
        notifier.status("a")  # ... and superseded by what systemd already shows
        assert timer.cancelled()  # so 'b' can never be sent
        assert notifier._status_timer is None
        fake.assert_empty()
        notifier.stopping()
        assert await fake.arecv() == "STOPPING=1"
        assert len(loop.timers_of(notifier)) == 1  # and no other timer was armed
        notifier.close()

    run_on_recording_loop(run())


def test_status_without_a_running_loop_is_sent_at_once(
    systemd: tuple[FakeSystemd, dict[str, str]],
) -> None:
    fake, env = systemd
    notifier = Notifier(env, status_interval=60.0)
    notifier.status("a")
    notifier.status("b")
    assert [fake.recv(), fake.recv()] == ["STATUS=a", "STATUS=b"]
    notifier.close()


def test_watchdog_pings_at_half_the_period(systemd: tuple[FakeSystemd, dict[str, str]]) -> None:
    """One ping at once, then one timer at a time, WATCHDOG_USEC / 2 apart; close()
    cancels the timer that is armed."""
    fake, env = systemd
    env = {**env, "WATCHDOG_USEC": "100000", "WATCHDOG_PID": str(os.getpid())}

    async def run() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, RecordingLoop)
        notifier = Notifier(env)
        assert notifier.watchdog_usec == 100000
        notifier.start_watchdog(loop)
        assert fake.recv() == "WATCHDOG=1"  # the first ping is sent at once
        notifier.start_watchdog(loop)  # idempotent: no second ping, no second timer
        fake.assert_empty()
        [(delay, first)] = loop.timers_of(notifier)
        assert delay == 0.05  # half of 100 ms
        assert notifier._watchdog_timer is first
        assert await fake.arecv() == "WATCHDOG=1"  # the timer fired and pinged ...
        [_, (delay, second)] = loop.timers_of(notifier)  # ... and armed the next one, only that one
        assert delay == 0.05
        assert notifier._watchdog_timer is second
        notifier.close()
        assert second.cancelled()
        assert notifier._watchdog_timer is None
        assert len(loop.timers_of(notifier)) == 2

    run_on_recording_loop(run())


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "junk"},
        {"WATCHDOG_USEC": "100000", "WATCHDOG_PID": "1"},
    ],
)
def test_no_watchdog_unless_meant_for_us(
    systemd: tuple[FakeSystemd, dict[str, str]], extra: dict[str, str]
) -> None:
    fake, env = systemd

    async def run() -> None:
        notifier = Notifier({**env, **extra})
        assert notifier.watchdog_usec is None
        notifier.start_watchdog(asyncio.get_running_loop())
        notifier.stopping()
        assert await fake.arecv() == "STOPPING=1"
        notifier.close()

    asyncio.run(run())


def test_send_failure_is_logged_once_and_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert notifier.enabled
    with caplog.at_level(logging.WARNING, logger="reloadd.notify"):
        notifier.ready()
        notifier.stopping()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "nobody-listens" in warnings[0].getMessage()
    notifier.close()
