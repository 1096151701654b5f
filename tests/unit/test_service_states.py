"""The service state machine: the ``TRANSITIONS`` table, ``Service._move`` and commands.

The table tests are plain functions over the table. The command tests run a real
``Service`` (a real inotify ``Hub``, a real recorder process as the supervised command)
brought into each state by real means, and send it every command: each one either works
or is refused with ``Refused``; none may hit an illegal move (``RuntimeError``) or end the
service task.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import signal
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from reloadd_testing import DEADLINE, Recording, recorder_command, until

from reloadd.config import ServiceSpec
from reloadd.service import TRANSITIONS, Refused, Service, State
from reloadd.target import Supervised
from reloadd.watch.inotify import Hub

PIPELINE = [State.WATCHING, State.PENDING, State.CHECKING, State.RELOADING, State.WATCHING]


# --------------------------------------------------------------------------- the table


def test_every_state_has_an_entry() -> None:
    assert set(TRANSITIONS) == set(State)
    for state, moves in TRANSITIONS.items():
        assert moves <= set(State), state


def test_stopped_is_terminal() -> None:
    assert TRANSITIONS[State.STOPPED] == frozenset()


def test_every_other_state_can_stop() -> None:
    for state in set(State) - {State.STOPPED}:
        assert State.STOPPED in TRANSITIONS[state], state


def test_the_pipeline_path_is_legal() -> None:
    """A change settles, the check passes, the signal is sent, the service rests again."""
    for before, after in itertools.pairwise(PIPELINE):
        assert after in TRANSITIONS[before], f"{before.value} -> {after.value}"


# --------------------------------------------------------------------------- _move


def make_spec(tmp_path: Path, **keys: Any) -> ServiceSpec:
    watched = tmp_path / "watched"
    watched.mkdir(exist_ok=True)
    keys.setdefault("command", tuple(recorder_command(tmp_path / "signals.log")))
    keys.setdefault("restart", "no")  # a killed recorder stays dead: the FAILED state
    keys.setdefault("stop_timeout", 5.0)
    return ServiceSpec(name="app", source="test", watch=(str(watched),), **keys)


@pytest.fixture
def idle_service(tmp_path: Path) -> Iterator[Service]:
    """A Service that is neither armed nor started: only its state machine is used."""
    hub = Hub()
    svc = Service(make_spec(tmp_path), hub)
    try:
        yield svc
    finally:
        svc._close()
        hub.close()


def test_move_follows_the_table(idle_service: Service) -> None:
    """Every listed move is made; every other one raises and leaves the state alone."""
    svc = idle_service
    for before in State:
        for after in State:
            if after is before:
                continue
            svc.state = before
            if after in TRANSITIONS[before]:
                svc._move(after)
                assert svc.state is after
            else:
                with pytest.raises(RuntimeError, match="illegal state change"):
                    svc._move(after)
                assert svc.state is before, f"{before.value} -> {after.value}"


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (State.STOPPED, State.WATCHING),  # nothing comes back from stopped
        (State.WATCHING, State.RELOADING),  # ... is fine; but not past the check:
        (State.PAUSED, State.CHECKING),  # a paused service runs no check
        (State.CHECKING, State.VERIFYING),  # verifying comes after the signal
        (State.FAILED, State.PAUSED),  # only a restart or a config change leaves FAILED
    ],
)
def test_named_moves(idle_service: Service, before: State, after: State) -> None:
    svc = idle_service
    svc.state = before
    if after in TRANSITIONS[before]:
        svc._move(after)
        assert svc.state is after
    else:
        with pytest.raises(RuntimeError, match=f"{before.value} -> {after.value}"):
            svc._move(after)
        assert svc.state is before


def test_the_pipeline_path_moves(idle_service: Service) -> None:
    svc = idle_service
    svc.state = PIPELINE[0]
    for state in PIPELINE[1:]:
        svc._move(state)
        assert svc.state is state


# --------------------------------------------------------------------------- commands

COMMANDS = ("reload", "restart", "pause", "resume")


async def to_waiting(svc: Service, tmp_path: Path) -> None:
    assert svc.state is State.WAITING


async def to_watching(svc: Service, tmp_path: Path) -> None:
    assert svc.state is State.WATCHING


async def to_pending(svc: Service, tmp_path: Path) -> None:
    (tmp_path / "watched" / "app.py").write_text("x = 2\n")  # settles in an hour
    await until(lambda: svc.state is State.PENDING, "the change to be pending")


async def to_paused(svc: Service, tmp_path: Path) -> None:
    await svc.command("pause")
    await until(lambda: svc.state is State.PAUSED, "the service to be paused")


async def to_failed(svc: Service, tmp_path: Path) -> None:
    assert isinstance(svc.target, Supervised)
    assert svc.target.pid is not None
    os.killpg(svc.target.pid, signal.SIGKILL)  # restart = "no": supervision gives up
    await until(lambda: svc.state is State.FAILED, "the service to fail")


async def to_stopped(svc: Service, tmp_path: Path) -> None:
    await svc.stop()
    assert svc.state is State.STOPPED


SETUPS: dict[State, Callable[[Service, Path], Awaitable[None]]] = {
    State.WAITING: to_waiting,
    State.WATCHING: to_watching,
    State.PENDING: to_pending,
    State.PAUSED: to_paused,
    State.FAILED: to_failed,
    State.STOPPED: to_stopped,
}
# CHECKING and RELOADING are never seen by a command: the service task reads its inbox
# only between reloads. Nothing moves a service into VERIFYING or HELD yet.


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("state", list(SETUPS), ids=lambda s: s.value)
def test_command_in_every_state_works_or_is_refused(
    tmp_path: Path, state: State, command: str
) -> None:
    """Each command, in each state a command can meet: a result or ``Refused``, never an
    internal error; the service task is still running afterwards (unless stopped)."""
    spec = make_spec(tmp_path, debounce=3600.0, max_delay=3600.0)
    if state is State.WAITING:
        spec = dataclasses.replace(spec, watch=(str(tmp_path / "missing"),))
    recording = Recording(tmp_path / "signals.log")

    async def run() -> None:
        hub = Hub(asyncio.get_running_loop())
        svc = Service(spec, hub)
        try:
            svc.arm()
            task = svc.start()
            await until(lambda: recording.ready_pids(), "the recorder to start")
            await SETUPS[state](svc, tmp_path)
            assert svc.state is state
            try:
                await asyncio.wait_for(svc.command(command), DEADLINE)
            except Refused:
                pass
            except Exception as exc:  # e.g. RuntimeError: an illegal move
                pytest.fail(f"{command} while {state.value}: {exc!r}, neither a result nor Refused")
            if state is not State.STOPPED:
                assert not task.done(), svc.last_error
                assert "internal error" not in svc.last_error
                assert svc.state is not State.RELOADING  # a restart settled again
        finally:
            await svc.stop()
            hub.close()

    asyncio.run(run())


def test_restart_while_paused_restarts_and_stays_paused(tmp_path: Path) -> None:
    """``reloadctl restart`` on a paused service: a new process, and still paused."""
    spec = make_spec(tmp_path)
    recording = Recording(tmp_path / "signals.log")

    async def run() -> None:
        hub = Hub(asyncio.get_running_loop())
        svc = Service(spec, hub)
        try:
            svc.arm()
            svc.start()
            await until(lambda: recording.ready_pids(), "the recorder to start")
            await svc.command("pause")
            old = svc.target.pid if isinstance(svc.target, Supervised) else None
            result = await asyncio.wait_for(svc.command("restart"), DEADLINE)
            assert isinstance(svc.target, Supervised)
            assert result == f"restarted: pid {old} -> {svc.target.pid}"
            assert svc.state is State.PAUSED
            assert svc.paused
            await until(lambda: len(recording.ready_pids()) == 2, "the new recorder to start")
            with pytest.raises(Refused, match="paused"):
                await svc.command("reload")
        finally:
            await svc.stop()
            hub.close()

    asyncio.run(run())
