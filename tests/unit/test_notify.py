"""reloadd.notify against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

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
    """1. 'a' goes out at once; 2. 'b' and 'c' within the interval: only 'c', later."""
    fake, env = systemd
    interval = 0.2

    async def run() -> None:
        notifier = Notifier(env, status_interval=interval)
        notifier.status("a")
        sent_a = time.monotonic()
        assert await fake.arecv() == "STATUS=a"
        notifier.status("b")
        notifier.status("c")
        assert await fake.arecv() == "STATUS=c"
        assert time.monotonic() - sent_a >= interval * 0.9
        notifier.stopping()
        assert await fake.arecv() == "STOPPING=1"
        notifier.close()

    asyncio.run(run())


def test_a_waiting_status_that_returns_to_the_shown_line_is_dropped(
    systemd: tuple[FakeSystemd, dict[str, str]],
) -> None:
    fake, env = systemd

    async def run() -> None:
        notifier = Notifier(env, status_interval=0.05)
        notifier.status("a")
        assert await fake.arecv() == "STATUS=a"
        notifier.status("b")  # held back by the rate limit ...
        notifier.status("a")  # ... and superseded by what systemd already shows
        await asyncio.sleep(0.15)  # three intervals: long enough for a stray timer
        notifier.stopping()
        assert await fake.arecv() == "STOPPING=1"
        notifier.close()

    asyncio.run(run())


def test_status_without_a_running_loop_is_sent_at_once(
    systemd: tuple[FakeSystemd, dict[str, str]],
) -> None:
    fake, env = systemd
    notifier = Notifier(env, status_interval=60.0)
    notifier.status("a")
    notifier.status("b")
    assert [fake.recv(), fake.recv()] == ["STATUS=a", "STATUS=b"]
    notifier.close()


@pytest.mark.slow
def test_watchdog_pings_at_half_the_period(systemd: tuple[FakeSystemd, dict[str, str]]) -> None:
    fake, env = systemd
    env = {**env, "WATCHDOG_USEC": "100000", "WATCHDOG_PID": str(os.getpid())}

    async def run() -> None:
        notifier = Notifier(env)
        assert notifier.watchdog_usec == 100000
        start = time.monotonic()
        notifier.start_watchdog(asyncio.get_running_loop())
        notifier.start_watchdog(asyncio.get_running_loop())  # idempotent
        for _ in range(4):
            assert await fake.arecv() == "WATCHDOG=1"
        elapsed = time.monotonic() - start
        # 4 pings = the immediate one + 3 periods of 50 ms; a second timer would halve that.
        assert elapsed >= 0.14
        notifier.close()
        await asyncio.sleep(0.15)  # three periods: a leaked timer would have pinged
        fake.assert_empty()

    asyncio.run(run())


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
