"""The control socket: its file, its limits, its permissions, and the real daemon behind it.

Two kinds of test: ``ControlServer`` in this process over a hand-written ``FakeDaemon``
(small limits and timeouts, so the edge cases are quick), and a real ``python -m
reloadd`` driven through its real socket. Non-root clients are real processes: a fork of
the test that drops to ``nobody`` (tests run as root) and then runs the real client code.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import pwd
import socket
import stat
import subprocess
import sys
import tempfile
import traceback
import uuid
import warnings
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from reloadd_testing import (
    DEADLINE,
    Reloadd,
    StubDaemon,
    control_config,
    recorded_service,
    require,
    require_tool,
    served,
    start_recorded,
    until,
    wait_for,
)

from reloadd import __version__, ctl
from reloadd import protocol as p
from reloadd.control import (
    ControlError,
    ControlServer,
    Peer,
    may_change,
    no_such_service,
    proc_groups,
    recent_events,
)

NOBODY = pwd.getpwnam("nobody").pw_uid if "nobody" in {u.pw_name for u in pwd.getpwall()} else None
NOGROUP = 65534


# --------------------------------------------------------------------------- helpers


async def following(daemon: FakeDaemon, path: Path) -> Conn:
    """A connection following events: its first event proves the listener is registered."""
    daemon.history = [{"service": "api", "when": 0.0}]
    conn = await Conn.open(path)
    await conn.send(p.encode(p.request("events", {"follow": True, "limit": 1}, id=1)))
    first = await conn.read()
    assert first == {"v": 1, "id": 1, "event": {"service": "api", "when": 0.0}}
    return conn


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run one async test body under the deadline."""

    async def bounded() -> Any:
        return await asyncio.wait_for(coro, DEADLINE)

    return asyncio.run(bounded())


class FakeDaemon(StubDaemon):
    """A canned status of the services api and web, with their history, padding and a bug
    on demand; reload-config succeeds."""

    def __init__(self, sock: Path, group: str | int | None = None, mode: int = 0o666) -> None:
        super().__init__(sock, {"api": None, "web": None}, group, mode)
        self.history: list[dict[str, Any]] = []
        self.pad = ""  # makes the status as large as a test needs
        self.broken = False

    def status(self) -> dict[str, Any]:
        if self.broken:
            raise RuntimeError("a bug")
        return {
            "version": "9.9",
            "pad": self.pad,
            "services": [
                {"name": name, "history": [r for r in self.history if r["service"] == name]}
                for name in self.services
            ],
        }

    async def reload_config(self) -> tuple[bool, str]:
        return True, "0 added, 0 changed, 0 removed"


class Conn:
    """A raw protocol client on asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, path: Path) -> Conn:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=2**26)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read(self) -> dict[str, Any] | None:
        line = await asyncio.wait_for(self.reader.readline(), DEADLINE)
        return json.loads(line) if line else None

    async def ask(self, cmd: str, **args: Any) -> dict[str, Any]:
        await self.send(p.encode(p.request(cmd, args, id=1)))
        reply = await self.read()
        assert reply is not None, "the server closed the connection"
        return reply

    def close(self) -> None:
        self.writer.close()


def as_user(
    fn: Callable[[], int], uid: int, gid: int, groups: tuple[int, ...] = ()
) -> tuple[int, str, str]:
    """Run ``fn`` in a forked child that has become ``uid``/``gid`` (plus ``groups``).

    Returns the child's exit status (fn's return value) and what it wrote to stdout and
    stderr. Everything the child needs must be imported already: it cannot read /root.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child; it always leaves through os._exit
            code = 99
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
                sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
                os.setgroups(list(groups))
                os.setgid(gid)
                os.setuid(uid)
                code = fn()
            except BaseException:
                traceback.print_exc()
            finally:
                with contextlib.suppress(BaseException):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        status: list[int] = []

        def reaped() -> bool:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status.append(st)
            return bool(done)

        try:
            wait_for(reaped, what=f"the child running as uid {uid}")
        finally:
            if not status:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
        out.seek(0)
        err.seek(0)
        return os.waitstatus_to_exitcode(status[0]), out.read().decode(), err.read().decode()


def reloadctl_as(uid: int, gid: int, groups: tuple[int, ...], *argv: str) -> tuple[int, str, str]:
    return as_user(lambda: ctl.main(["--timeout", str(DEADLINE), *argv]), uid, gid, groups)


def need_nobody() -> int:
    require(os.geteuid() == 0, "root (to setuid() a client to nobody)")
    require(NOBODY is not None, "a user named nobody")
    assert NOBODY is not None
    return NOBODY


@pytest.fixture
def test_group() -> Iterator[tuple[str, int]]:
    """A fresh group (groupadd), removed afterwards: (name, gid)."""
    require(os.geteuid() == 0, "root (groupadd)")
    groupadd = require_tool("groupadd", "passwd")
    name = f"rldt{uuid.uuid4().hex[:8]}"
    subprocess.run([groupadd, name], check=True, capture_output=True)
    try:
        yield name, grp.getgrnam(name).gr_gid
    finally:
        subprocess.run([require_tool("groupdel", "passwd"), name], check=False, capture_output=True)


# --------------------------------------------------------------------------- pure parts


def test_who_may_change() -> None:
    """Root, reloadd's own uid, the socket group (primary or supplementary); no one else."""
    assert may_change(Peer(1, 0, 0), None, 0)
    assert may_change(Peer(1, 1000, 1000), None, 1000)
    assert not may_change(Peer(1, 1000, 1000), None, 0)
    assert may_change(Peer(1, 1000, 50), 50, 0)
    assert may_change(Peer(1, 1000, 1000, _groups=frozenset({7, 50})), 50, 0)
    assert not may_change(Peer(1, 1000, 1000, _groups=frozenset({7})), 50, 0)


def test_proc_groups_reads_our_own_groups() -> None:
    assert proc_groups(os.getpid()) == frozenset(os.getgroups())
    assert proc_groups(2**22 + 1) == frozenset()  # no such process: no groups, no error


def test_recent_events_merge_services_oldest_first() -> None:
    status = {
        "services": [
            {"name": "a", "history": [{"when": 1.0}, {"when": 4.0}]},
            {"name": "b", "history": [{"when": 2.0}, {"when": 3.0}]},
        ]
    }
    assert [(e["service"], e["when"]) for e in recent_events(status, 3)] == [
        ("b", 2.0),
        ("b", 3.0),
        ("a", 4.0),
    ]
    assert recent_events(status, 0) == []


def test_no_such_service_suggests() -> None:
    assert no_such_service("apii", ["api", "web"]) == "no such service 'apii' (did you mean 'api'?)"
    assert no_such_service("zzz", ["web", "api"]) == "no such service 'zzz' (services: api, web)"
    assert no_such_service("x", []) == "no such service 'x' (no services are configured)"


# --------------------------------------------------------------------------- the socket file


def test_socket_is_created_with_mode_and_group_and_removed(sockdir: Path) -> None:
    """The socket appears with its mode and group and no temporary name left; it goes at close."""
    path = sockdir / "sub" / "control.sock"

    async def body() -> None:
        server = ControlServer(FakeDaemon(path, group=NOGROUP, mode=0o660))
        await server.start()
        st = path.stat()
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert st.st_gid == NOGROUP
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755  # created, not umask-narrowed
        assert os.listdir(path.parent) == ["control.sock"]
        conn = await Conn.open(path)
        assert (await conn.ask("ping"))["result"]["protocol"] == 1
        conn.close()
        await server.close()
        assert not path.exists()
        await server.close()  # idempotent

    run(body())


def test_stale_socket_is_replaced(sockdir: Path) -> None:
    """A socket nobody listens on (a crashed reloadd's) is replaced."""
    path = sockdir / "control.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()

    async def body() -> None:
        server = ControlServer(FakeDaemon(path))
        await server.start()
        conn = await Conn.open(path)
        assert (await conn.ask("ping"))["ok"] is True
        conn.close()
        await server.close()

    run(body())


def test_live_socket_is_a_start_up_error(sockdir: Path) -> None:
    path = sockdir / "control.sock"
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(path))
    live.listen()
    try:
        with pytest.raises(ControlError, match="another reloadd is already listening there"):
            run(ControlServer(FakeDaemon(path)).start())
        assert path.exists()  # still the other one's
    finally:
        live.close()


def test_something_else_at_the_path_is_not_clobbered(sockdir: Path) -> None:
    path = sockdir / "control.sock"
    path.write_text("precious\n")
    with pytest.raises(ControlError, match="something else is there"):
        run(ControlServer(FakeDaemon(path)).start())
    assert path.read_text() == "precious\n"


def test_a_socket_replaced_by_another_daemon_is_left_alone(sockdir: Path) -> None:
    path = sockdir / "control.sock"

    async def body() -> None:
        first = ControlServer(FakeDaemon(path))
        await first.start()
        path.unlink()  # as if another reloadd took the path over
        other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        other.bind(str(path))
        try:
            await first.close()
            assert path.exists()
        finally:
            other.close()

    run(body())


def test_unwritable_directory_is_a_clear_error(sockdir: Path) -> None:
    path = sockdir / "file" / "control.sock"
    (sockdir / "file").write_text("")
    with pytest.raises(ControlError, match="cannot create the control socket directory"):
        run(ControlServer(FakeDaemon(path)).start())


# --------------------------------------------------------------------------- conversations


def test_requests_on_one_connection_are_answered_in_order(sockdir: Path) -> None:
    path = sockdir / "c.sock"

    async def body() -> None:
        daemon = FakeDaemon(path)
        server = ControlServer(daemon)
        await server.start()
        conn = await Conn.open(path)
        await conn.send(
            b"".join(
                p.encode(p.request(c, a, id=i))
                for i, (c, a) in enumerate(
                    [("ping", {}), ("status", {"services": ["web"]}), ("pause", {"service": "api"})]
                )
            )
        )
        replies = [await conn.read() for _ in range(3)]
        assert [r["id"] for r in replies if r] == [0, 1, 2]
        assert replies[0]
        assert replies[0]["result"]["version"] == __version__
        assert replies[1]
        assert [s["name"] for s in replies[1]["result"]["services"]] == ["web"]
        assert daemon.calls == [("api", "pause")]
        conn.close()
        await server.close()

    run(body())


def test_idle_client_is_closed_and_others_are_served_meanwhile(sockdir: Path) -> None:
    path = sockdir / "c.sock"

    async def body() -> None:
        server = ControlServer(FakeDaemon(path), idle_timeout=0.1)
        await server.start()
        idle = await Conn.open(path)
        await idle.send(b'{"v":1,')  # half a request, then silence
        busy = await Conn.open(path)
        assert (await busy.ask("ping"))["ok"] is True
        reply = await idle.read()
        assert reply
        assert reply["error"]["code"] == p.TIMEOUT
        assert await idle.read() is None  # closed
        idle.close()
        busy.close()
        await server.close()

    run(body())


def test_excess_clients_get_busy_and_a_slot_frees_when_one_leaves(sockdir: Path) -> None:
    path = sockdir / "c.sock"

    async def body() -> None:
        server = ControlServer(FakeDaemon(path), max_clients=3)
        await server.start()
        conns = [await Conn.open(path) for _ in range(3)]
        for conn in conns:  # each is admitted (and counted) once it is answered
            assert (await conn.ask("ping"))["ok"] is True
        extra = await Conn.open(path)
        reply = await extra.read()
        assert reply
        assert reply["error"]["code"] == p.BUSY
        assert await extra.read() is None
        extra.close()
        conns[0].close()
        for _ in range(500):  # the slot is free once the server has read the EOF
            again = await Conn.open(path)
            reply = await again.ask("ping")
            again.close()
            if reply["ok"]:
                break
            assert reply["error"]["code"] == p.BUSY
            await asyncio.sleep(0.01)
        else:
            pytest.fail("no slot became free")
        for conn in conns[1:]:
            conn.close()
        await server.close()

    run(body())


def test_a_client_that_stops_reading_is_dropped(sockdir: Path) -> None:
    """A reply the client never reads does not hold the server: the write times out."""
    path = sockdir / "c.sock"

    async def body() -> None:
        daemon = FakeDaemon(path)
        daemon.pad = "x" * (2 * 1024 * 1024)  # more than the socket buffers hold
        server = ControlServer(daemon, write_timeout=0.05)
        await server.start()
        sleeper = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # it never reads
        sleeper.connect(str(path))
        sleeper.sendall(p.encode(p.request("status")))
        other = await Conn.open(path)
        assert (await other.ask("ping"))["ok"] is True
        await until(lambda: server.clients == 1, "the sleeper to be dropped")
        sleeper.settimeout(DEADLINE)
        data = b"".join(iter(lambda: sleeper.recv(1 << 20), b""))  # what was sent, then EOF
        assert 0 < len(data) < len(daemon.pad), "the reply should have been cut off"
        sleeper.close()
        other.close()
        await server.close()

    run(body())


def test_a_bug_in_a_command_is_an_internal_error_not_a_crash(sockdir: Path) -> None:
    path = sockdir / "c.sock"

    async def body() -> None:
        daemon = FakeDaemon(path)
        server = ControlServer(daemon)
        await server.start()
        conn = await Conn.open(path)
        daemon.broken = True
        reply = await conn.ask("status")
        assert reply["error"]["code"] == p.INTERNAL
        daemon.broken = False
        assert (await conn.ask("status"))["ok"] is True
        conn.close()
        await server.close()

    run(body())


def test_events_follow_streams_until_the_client_leaves(sockdir: Path) -> None:
    path = sockdir / "c.sock"

    async def body() -> None:
        daemon = FakeDaemon(path)
        daemon.history = [{"service": "api", "when": 1.0, "result": "ok"}]
        server = ControlServer(daemon)
        await server.start()
        conn = await Conn.open(path)
        await conn.send(p.encode(p.request("events", {"follow": True}, id="f")))
        first = await conn.read()
        assert first == {
            "v": 1,
            "id": "f",
            "event": {"service": "api", "when": 1.0, "result": "ok"},
        }
        assert len(daemon.listeners) == 1
        daemon.emit({"service": "web", "when": 2.0, "result": "ok"})
        second = await conn.read()
        assert second
        assert second["event"]["service"] == "web"
        conn.close()
        await until(lambda: not daemon.listeners, "the listener to go with its client")
        await server.close()

    run(body())


def test_followers_are_told_when_reloadd_stops(sockdir: Path) -> None:
    path = sockdir / "c.sock"

    async def body() -> None:
        daemon = FakeDaemon(path)
        server = ControlServer(daemon)
        await server.start()
        conn = await following(daemon, path)
        await server.close()
        reply = await conn.read()
        assert reply
        assert reply["error"]["code"] == p.STOPPING
        assert await conn.read() is None
        conn.close()

    run(body())


def test_a_follower_that_falls_behind_is_cut_off(sockdir: Path) -> None:
    path = sockdir / "c.sock"

    async def body() -> None:
        daemon = FakeDaemon(path)
        server = ControlServer(daemon, event_backlog=10)
        await server.start()
        conn = await following(daemon, path)
        for i in range(30):  # all at once, while the server has no chance to send
            daemon.emit({"service": "api", "when": float(i)})
        events = 0
        while True:
            reply = await conn.read()
            assert reply is not None
            if "event" not in reply:
                break
            events += 1
        assert reply["error"]["code"] == p.OVERRUN
        assert events == 10
        assert "fell 10 events behind; 20 were not sent" in reply["error"]["message"]
        conn.close()
        await server.close()

    run(body())


# --------------------------------------------------------------------------- non-root clients


@pytest.mark.slow
def test_nobody_may_read_but_not_change_and_reloadd_s_own_uid_may(sockdir: Path) -> None:
    """As nobody: status works, reload is denied with the reason; a server running as
    nobody's uid lets nobody change things; one uid cannot take every slot."""
    nobody = need_nobody()
    path = sockdir / "c.sock"
    daemon = FakeDaemon(path)
    with served(daemon, max_clients=8, reserved=2, max_per_uid=3) as server:
        code, out, err = reloadctl_as(
            nobody, NOGROUP, (), "--socket", str(path), "status", "--json"
        )
        assert code == 0, err
        assert json.loads(out)["version"] == "9.9"
        code, out, err = reloadctl_as(nobody, NOGROUP, (), "--socket", str(path), "pause", "api")
        assert code == 1
        assert err.startswith("reloadctl: permission denied: `pause` changes what reloadd does")
        assert f"needs root; you are uid {nobody}" in err
        assert "[daemon] socket_group can name a group that may" in err
        assert daemon.calls == []

        def hog() -> int:
            conns = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(4)]
            replies = []
            for conn in conns:
                conn.connect(str(path))
                conn.sendall(p.encode(p.request("ping")))
                replies.append(json.loads(conn.makefile("rb").readline()))
            print(json.dumps([r.get("ok") is True or r["error"]["code"] for r in replies]))
            return 0

        code, out, err = as_user(hog, nobody, NOGROUP)
        assert (code, json.loads(out)) == (0, [True, True, True, "busy"]), err

        server.uid = nobody  # as if reloadd ran as nobody: its own uid may change things
        code, out, err = reloadctl_as(nobody, NOGROUP, (), "--socket", str(path), "pause", "api")
        assert code == 0, err
        assert daemon.calls == [("api", "pause")]


# --------------------------------------------------------------------------- the real daemon


def ask(path: Path, cmd: str, **args: Any) -> dict[str, Any]:
    """One request over a fresh connection to the real daemon (blocking)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(DEADLINE)
        s.connect(str(path))
        s.sendall(p.encode(p.request(cmd, args, id=cmd)))
        reply: dict[str, Any] = json.loads(s.makefile("rb").readline())
    assert reply["v"] == 1
    assert reply["id"] == cmd
    return reply


def service(path: Path, name: str) -> dict[str, Any]:
    reply = ask(path, "status", services=[name])
    assert reply["ok"], reply
    svc: dict[str, Any] = reply["result"]["services"][0]
    return svc


@pytest.mark.slow
def test_status_fields_after_real_reloads(
    start_reloadd: Callable[..., Reloadd], tmp_path: Path, sockdir: Path
) -> None:
    """1. A change reloads `app`; a manual reload of `checked` fails its check.
    2. The status names the daemon, each target, each reload and each error correctly."""
    sock = sockdir / "control.sock"
    fail = ["sh", "-c", "echo checking; echo 'syntax error' >&2; exit 3"]
    services = {
        "app": recorded_service(tmp_path, "app"),
        "checked": recorded_service(tmp_path, "checked", check=fail),
    }
    r, recs = start_recorded(start_reloadd, tmp_path, sock, services)
    pid = recs["app"].ready_pids()[-1]
    (tmp_path / "app" / "one.py").write_text("1\n")
    (tmp_path / "app" / "two.py").write_text("2\n")
    recs["app"].wait_count(1)

    failed = ask(sock, "reload", service="checked")
    assert failed["ok"] is False
    assert failed["error"]["code"] == p.RELOAD_FAILED
    assert failed["error"]["record"]["result"] == "check-failed"
    assert "syntax error" in failed["error"]["record"]["output"]
    assert recs["checked"].count() == 0

    status = ask(sock, "status")["result"]
    assert status["version"] == __version__
    assert status["pid"] == r.proc.pid
    assert 0 < status["uptime"] < 600
    assert status["config"] == str(r.config)
    assert status["config_error"] is None
    assert status["reloads"] == 1
    assert status["watches"] >= 2
    app, checked = status["services"]
    assert app["name"] == "app"
    assert app["state"] == "watching"
    assert not app["paused"]
    assert app["target"]["kind"] == "command"
    assert app["target"]["pid"] == pid
    assert app["target"]["pgid"] == pid
    assert app["backend"] == "inotify"
    assert app["backend_reason"]
    assert app["watch"][0]["path"] == str(tmp_path / "app")
    assert app["watch"][0]["kind"] == "dir"
    assert app["watch"][0]["state"] == "watching"
    assert app["reloads"] == 1
    assert app["last_error"] is None
    assert not app["pending"]
    last = app["last_reload"]
    assert last["trigger"] == "change"
    assert last["result"] == "ok"
    assert sorted(last["paths"]) == [
        str(tmp_path / "app" / "one.py"),
        str(tmp_path / "app" / "two.py"),
    ]
    assert last["count"] == 2
    assert last["action"] == f"SIGHUP -> pid {pid}"
    assert last["latency_ms"] > 0
    assert last["duration_ms"] >= 0
    assert app["history"] == [last]
    assert checked["reloads"] == 0
    assert checked["last_reload"]["trigger"] == "manual"
    assert checked["last_reload"]["result"] == "check-failed"
    assert checked["last_error"].startswith("check failed:")
    assert "syntax error" in checked["last_error"]
    r.wait_log(f"control: reload 'checked' (uid 0, pid {os.getpid()})")


@pytest.mark.slow
def test_paused_service_refuses_reload_and_resume_reloads_once(
    start_reloadd: Callable[..., Reloadd], tmp_path: Path, sockdir: Path
) -> None:
    """1. pause app; a reload is refused and says how to resume. 2. Three changes while
    paused (seen: a later change to `side` on the same inotify queue has been reloaded).
    3. resume: one reload carrying all three. 4. A manual reload is the next one: nothing
    else was on its way."""
    sock = sockdir / "control.sock"
    services = {
        "app": recorded_service(tmp_path, "app"),
        "side": recorded_service(tmp_path, "side"),
    }
    _, recs = start_recorded(start_reloadd, tmp_path, sock, services)
    assert ask(sock, "pause", service="app")["result"]["service"]["state"] == "paused"
    refused = ask(sock, "reload", service="app")
    assert refused["error"] == {
        "code": "refused",
        "message": "app is paused; `reloadctl resume app` first",
    }
    changed = [tmp_path / "app" / f"f{i}.py" for i in range(3)]
    for path in changed:
        path.write_text("x\n")
    (tmp_path / "side" / "sentinel").write_text("x\n")
    recs["side"].wait_count(1)
    svc = service(sock, "app")
    assert svc["state"] == "paused"
    assert svc["pending"]
    assert svc["reloads"] == 0
    assert recs["app"].count() == 0

    resumed = ask(sock, "resume", service="app")["result"]
    assert resumed["pending"] is True
    recs["app"].wait_count(1)
    manual = ask(sock, "reload", service="app")["result"]["record"]
    assert manual["trigger"] == "manual"
    recs["app"].wait_count(2)
    history = service(sock, "app")["history"]
    assert [h["trigger"] for h in history] == ["change", "manual"]
    assert sorted(history[0]["paths"]) == [str(p_) for p_ in changed]
    assert recs["app"].count() == 2


@pytest.mark.slow
def test_socket_group_members_may_change(
    start_reloadd: Callable[..., Reloadd],
    tmp_path: Path,
    sockdir: Path,
    test_group: tuple[str, int],
) -> None:
    """nobody in the socket group (supplementary or primary) may reload; outside it, not."""
    nobody = need_nobody()
    name, gid = test_group
    sock = sockdir / "control.sock"
    r, recs = start_recorded(
        start_reloadd,
        tmp_path,
        sock,
        {"app": recorded_service(tmp_path, "app")},
        daemon=f'socket_group = "{name}"\nsocket_mode = "0666"',
    )
    rec = recs["app"]
    assert sock.stat().st_gid == gid

    code, out, err = reloadctl_as(nobody, NOGROUP, (), "--socket", str(sock), "status")
    assert code == 0, err
    assert "app" in out

    code, out, err = reloadctl_as(nobody, NOGROUP, (), "--socket", str(sock), "reload", "app")
    assert code == 1
    assert f"needs root or members of group '{name}' (gid {gid}); you are uid {nobody}" in err
    r.wait_log(f"control: denied reload 'app' to uid {nobody}")
    assert rec.count() == 0

    code, out, err = reloadctl_as(nobody, NOGROUP, (gid,), "--socket", str(sock), "reload", "app")
    assert code == 0, err
    assert out.startswith("app: reloaded: SIGHUP -> pid")
    rec.wait_count(1)

    code, out, err = reloadctl_as(nobody, gid, (), "--socket", str(sock), "reload", "app")
    assert code == 0, err
    rec.wait_count(2)
    r.wait_log(f"control: reload 'app' (uid {nobody}, pid ")


@pytest.mark.slow
def test_second_daemon_on_a_live_socket_fails_and_a_stale_one_is_replaced(
    start_reloadd: Callable[..., Reloadd], tmp_path: Path, sockdir: Path
) -> None:
    """1. A second reloadd on the same socket exits 1, saying why; the first keeps serving.
    2. The first is killed (its socket stays); a new one replaces the stale socket.
    3. A graceful stop removes the socket."""
    sock = sockdir / "control.sock"
    text = control_config(sock, {})
    first = start_reloadd(text)
    second = start_reloadd(text, wait_ready=False, name="second.toml")
    assert second.proc.wait(DEADLINE) == 1
    assert "another reloadd is already listening there" in second.log()
    assert "Traceback" not in second.log()
    assert ask(sock, "ping")["result"]["pid"] == first.proc.pid

    first.proc.kill()
    first.proc.wait(DEADLINE)
    assert sock.exists()
    third = start_reloadd(text, name="third.toml")
    assert ask(sock, "ping")["result"]["pid"] == third.proc.pid
    assert third.stop() == 0
    assert not sock.exists()
