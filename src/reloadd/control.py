"""The control socket: ``reloadctl`` talks to the daemon here (protocol: protocol.py).

Design notes:

- The socket is created atomically: bound under a temporary name in the same directory,
  given its mode and group, listening, then renamed over the real path, so a client never
  meets a socket with the wrong permissions, and a stale socket left by a crashed run is
  replaced in one step. A path where something still accepts connections means another
  reloadd runs: that is a start-up error, never a silent takeover. At exit the socket is
  removed, unless another daemon has replaced it meanwhile (the inode tells).
- Who may do what is decided per request from the peer's credentials (SO_PEERCRED, fixed
  when the client connected), as systemd does for ``systemctl status``: anyone who can
  connect may run the read-only commands (``protocol.READ_ONLY``). The mutating ones need
  uid 0, the uid reloadd itself runs as (a developer running reloadd unprivileged can
  control it), or membership of ``[daemon] socket_group`` as primary or supplementary
  group. Supplementary groups come from SO_PEERGROUPS (Linux >= 4.13; also fixed at
  connect time), or from ``/proc/PID/status`` when the kernel lacks it or the peer has
  more groups than one getsockopt can return. The socket's path, mode and group are read
  from the config at start; a config reload that changes them is logged by the daemon
  and takes effect when reloadd restarts (the socket is what reloadctl reaches it by).
- Nothing a client does can block the loop or kill the daemon: a request line is read
  under ``idle_timeout`` and ``MAX_REQUEST`` bytes, every write under ``write_timeout``
  (a client that stops reading is dropped), errors become error replies, and an
  unexpected exception in a command is logged and answered with ``internal-error``.
- The number of clients is bounded (``max_clients``); the excess get a ``busy`` error and
  are closed. Unprivileged callers may use all but ``RESERVED`` of the slots, and at
  most ``MAX_PER_UID`` each, so one local user cannot lock root out of ``reloadctl``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import logging
import os
import socket
import stat
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from reloadd import __version__
from reloadd import protocol as p
from reloadd.config import Config

log = logging.getLogger("reloadd.control")

MAX_CLIENTS = 128  # connections at once
RESERVED = 16  # of those, kept for root and reloadd's own uid
MAX_PER_UID = 32  # connections at once from one unprivileged uid
IDLE_TIMEOUT = 10.0  # seconds to send a complete request line
WRITE_TIMEOUT = 10.0  # seconds a client may take to accept a reply
EVENT_BACKLOG = 1000  # events queued for one `events -f` client before it is cut off
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux: asm-generic/socket.h
_PEERGROUPS_BUFLEN = 1024  # CPython's getsockopt limit: 256 groups; more -> /proc


class ControlError(Exception):
    """The control socket cannot be set up; the message says where and why."""


class Controlled(Protocol):
    """What the control server needs from the daemon (daemon.py's ``Daemon``)."""

    @property
    def config(self) -> Config: ...

    @property
    def services(self) -> Mapping[str, Any]: ...

    @property
    def listeners(self) -> set[Callable[[dict[str, Any]], None]]: ...

    def status(self) -> dict[str, Any]: ...

    async def command(self, name: str, cmd: str) -> Any: ...

    async def reload_config(self) -> tuple[bool, str]: ...


# --------------------------------------------------------------------------- credentials


@dataclass
class Peer:
    """Who is on the other end, as the kernel recorded it when they connected."""

    pid: int
    uid: int
    gid: int
    sock: Any = field(repr=False, default=None)
    _groups: frozenset[int] | None = field(default=None, repr=False)

    def groups(self) -> frozenset[int]:
        """Supplementary groups (SO_PEERGROUPS, else /proc/PID/status); empty if unknown."""
        if self._groups is None:
            self._groups = peer_groups(self.sock, self.pid)
        return self._groups


def peer_credentials(sock: Any) -> Peer:
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", data)
    return Peer(pid, uid, gid, sock)


def peer_groups(sock: Any, pid: int) -> frozenset[int]:
    if sock is not None:
        try:
            data = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, _PEERGROUPS_BUFLEN)
        except OSError as exc:
            if exc.errno not in (errno.ERANGE, errno.ENOPROTOOPT, errno.EINVAL):
                log.warning("control: SO_PEERGROUPS failed: %s; reading /proc", exc.strerror)
        else:
            n = len(data) // 4
            return frozenset(struct.unpack(f"{n}I", data[: n * 4]))
    return proc_groups(pid)


def proc_groups(pid: int) -> frozenset[int]:
    """The ``Groups:`` line of /proc/PID/status (empty if the process is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return frozenset(int(g) for g in line.split()[1:] if g.isdigit())
    except OSError:
        pass
    return frozenset()


def may_change(peer: Peer, socket_gid: int | None, daemon_uid: int) -> bool:
    """Whether ``peer`` may run mutating commands (root, reloadd's uid, the socket group)."""
    if peer.uid in (0, daemon_uid):
        return True
    if socket_gid is None:
        return False
    return peer.gid == socket_gid or socket_gid in peer.groups()


# --------------------------------------------------------------------------- the socket file


def _probe(path: str) -> None:
    """Raise ControlError if a live server listens on ``path``; return if stale or absent."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ControlError(f"control socket {path}: {exc.strerror or exc}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlError(
            f"control socket {path}: something else is there (not a socket); remove it or "
            "set [daemon] socket to another path"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        log.info("control: replacing the stale socket %s (left by a reloadd that died)", path)
        return
    except BlockingIOError:
        pass  # connection queued: someone is listening, just busy
    except OSError as exc:
        raise ControlError(
            f"control socket {path}: cannot probe it: {exc.strerror or exc}"
        ) from None
    finally:
        probe.close()
    raise ControlError(
        f"control socket {path}: another reloadd is already listening there; stop it first "
        "(`reloadctl status` shows it), or give this one another [daemon] socket"
    )


def _make_dir(directory: str) -> None:
    if os.path.isdir(directory):
        return
    why = ""
    try:
        os.makedirs(directory, mode=0o755)
        os.chmod(directory, 0o755)  # not narrowed by the umask: clients must reach it
    except FileExistsError:
        if os.path.isdir(directory):
            return  # someone made it meanwhile
        why = "it exists and is not a directory"
    except OSError as exc:
        why = str(exc.strerror or exc)
    if why:
        raise ControlError(
            f"cannot create the control socket directory {directory}: {why} "
            "(set [daemon] socket to a path this user can write)"
        )
    log.info("control: created %s", directory)


def bind_socket(path: str, mode: int, gid: int | None, backlog: int = 128) -> socket.socket:
    """A listening socket at ``path`` with ``mode`` and group ``gid``, put there atomically."""
    directory = os.path.dirname(path) or "."
    _make_dir(directory)
    _probe(path)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(tmp)
        os.chmod(tmp, mode)
        if gid is not None:
            os.chown(tmp, -1, gid)
        sock.listen(backlog)
        os.rename(tmp, path)
    except OSError as exc:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ControlError(
            f"cannot create the control socket {path}: {exc.strerror or exc}"
        ) from None
    return sock


def resolve_group(group: str | int | None) -> int | None:
    """The gid of ``[daemon] socket_group`` (a name or a gid), or None."""
    if group is None or isinstance(group, int):
        return group
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        log.warning("control: socket_group %r does not exist; only root may change", group)
        return None


# --------------------------------------------------------------------------- the server


class _Gone(Exception):
    """The client went away or stopped reading; the connection is dropped."""


_END = object()  # ends an `events -f` stream: reloadd is stopping
_OVERRUN = object()  # ends an `events -f` stream: the client fell behind

Handler = Callable[[p.Request, "_Connection"], Awaitable[dict[str, Any] | None]]


@dataclass
class _Connection:
    peer: Peer
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    queue: asyncio.Queue[object] | None = None  # set while following events


class ControlServer:
    """The asyncio Unix socket server behind ``reloadctl``.

    Example::

        server = ControlServer(daemon)
        await server.start()      # listening before READY=1
        ...
        await server.close()      # first thing at shutdown; removes the socket
    """

    def __init__(
        self,
        daemon: Controlled,
        *,
        max_clients: int = MAX_CLIENTS,
        reserved: int = RESERVED,
        max_per_uid: int = MAX_PER_UID,
        idle_timeout: float = IDLE_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
        event_backlog: int = EVENT_BACKLOG,
    ) -> None:
        self.daemon = daemon
        settings = daemon.config.daemon
        self.path = settings.socket or p.default_socket_path()
        self.max_clients = max_clients
        self.reserved = reserved
        self.max_per_uid = max_per_uid
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout
        self.event_backlog = event_backlog
        self.uid = os.geteuid()
        self._server: asyncio.AbstractServer | None = None
        self._ident: tuple[int, int] | None = None
        self.group = settings.socket_group
        self.mode = settings.socket_mode
        self.gid: int | None = None  # socket_group's gid, resolved once at start()
        self._clients: dict[asyncio.Task[Any], _Connection] = {}
        self._per_uid: Counter[int] = Counter()
        self._busy_since: float | None = None
        self._busy_count = 0
        self._handlers: dict[str, Handler] = {
            "ping": self._ping,
            "version": self._ping,
            "status": self._status,
            "events": self._events,
            "reload": self._reload,
            "restart": self._restart,
            "pause": self._pause_resume,
            "resume": self._pause_resume,
            "reload-config": self._reload_config,
        }
        assert set(self._handlers) == set(p.COMMANDS)

    @property
    def clients(self) -> int:
        """Connections being served now."""
        return len(self._clients)

    # -- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        group, mode = self.group, self.mode
        self.gid = resolve_group(group)
        sock = bind_socket(self.path, mode, self.gid)
        st = os.stat(self.path)
        self._ident = (st.st_dev, st.st_ino)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, sock=sock, limit=p.MAX_REQUEST - 1
            )
        except BaseException:
            sock.close()
            self._unlink()
            raise
        log.info("control: listening on %s (mode %04o, group %s)", self.path, mode, group or "-")

    async def close(self) -> None:
        """Stop listening, end every conversation, remove the socket. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        following = []
        for task, conn in list(self._clients.items()):
            if conn.queue is not None:
                conn.queue.put_nowait(_END)
                following.append(task)
            else:
                task.cancel()
        if following:  # let followers say goodbye; a follower that does not read is cut
            await asyncio.wait(following, timeout=1.0)
        rest = [t for t in self._clients if not t.done()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)
        self._unlink()

    def _unlink(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError:
            return
        if (st.st_dev, st.st_ino) != self._ident:
            log.warning("control: %s was replaced by someone else; leaving it", self.path)
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    # -- connections --------------------------------------------------------------------

    def _admit(self, peer: Peer) -> bool:
        total = len(self._clients)
        if peer.uid in (0, self.uid):
            return total < self.max_clients
        return (
            total < self.max_clients - self.reserved and self._per_uid[peer.uid] < self.max_per_uid
        )

    def _note_busy(self, peer: Peer) -> None:
        """Log refusals at most once per 10 s, with a count: a flood must not flood the log."""
        now = time.monotonic()
        self._busy_count += 1
        if self._busy_since is None or now - self._busy_since >= 10:
            log.warning(
                "control: too many clients (%d connected); refused %d, the latest uid %d pid %d",
                len(self._clients),
                self._busy_count,
                peer.uid,
                peer.pid,
            )
            self._busy_since, self._busy_count = now, 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            peer = peer_credentials(writer.get_extra_info("socket"))
        except OSError as exc:
            log.warning("control: cannot read the peer's credentials: %s", exc.strerror)
            writer.transport.abort()
            return
        if self._server is None:
            writer.transport.abort()
            return
        if not self._admit(peer):
            self._note_busy(peer)
            message = f"reloadd is busy: {len(self._clients)} clients connected; try again"
            writer.write(p.encode(p.error(None, p.BUSY, message)))
            writer.close()  # a short line: it fits the socket buffer, close flushes it
            return
        task = asyncio.current_task()
        assert task is not None
        conn = _Connection(peer, reader, writer)
        self._clients[task] = conn
        self._per_uid[peer.uid] += 1
        try:
            await self._converse(conn)
        except (_Gone, ConnectionError):
            pass
        except OSError as exc:
            log.debug("control: connection from pid %d: %s", peer.pid, exc)
        finally:
            del self._clients[task]
            self._per_uid[peer.uid] -= 1
            if not self._per_uid[peer.uid]:
                del self._per_uid[peer.uid]
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()  # a client that does not read is not waited for
            else:
                writer.close()

    async def _converse(self, conn: _Connection) -> None:
        while True:
            try:
                line = await asyncio.wait_for(conn.reader.readline(), self.idle_timeout)
            except asyncio.TimeoutError:
                message = f"no complete request within {self.idle_timeout:g}s; closing"
                await self._send(conn, p.error(None, p.TIMEOUT, message))
                return
            except ValueError:  # the StreamReader's limit: the line is over MAX_REQUEST
                message = f"request line over {p.MAX_REQUEST} bytes; closing"
                await self._send(conn, p.error(None, p.TOO_LARGE, message))
                return
            if not line:
                return  # the client closed its end
            reply = await self._handle(line, conn)
            if reply is not None:
                await self._send(conn, reply)
            if not line.endswith(b"\n") or self._server is None:
                return  # the last line before EOF was answered, or reloadd is stopping

    async def _send(self, conn: _Connection, message: dict[str, Any]) -> None:
        try:
            data = p.encode(message)
        except (TypeError, ValueError):
            log.exception("control: cannot encode a reply to %s", message.get("id"))
            data = p.encode(p.error(message.get("id"), p.INTERNAL, "reply could not be encoded"))
        writer = conn.writer
        if writer.is_closing():
            raise _Gone
        writer.write(data)
        try:
            await asyncio.wait_for(writer.drain(), self.write_timeout)
        except asyncio.TimeoutError:
            log.warning(
                "control: pid %d has not read a reply for %gs; dropping the connection",
                conn.peer.pid,
                self.write_timeout,
            )
            writer.transport.abort()
            raise _Gone from None
        except (ConnectionError, OSError):
            raise _Gone from None

    async def _handle(self, line: bytes, conn: _Connection) -> dict[str, Any] | None:
        try:
            req = p.parse_request(line)
        except p.ProtocolError as exc:
            return p.error(exc.id, exc.code, exc.message)
        peer = conn.peer
        if req.cmd in p.MUTATING:
            # repr, bounded: a client's argument must not forge a log line of its own
            what = " ".join([req.cmd, *(repr(v)[:100] for v in req.args.values())])
            denial = self._denial(peer, req.cmd)
            if denial:
                log.warning("control: denied %s to uid %d pid %d", what, peer.uid, peer.pid)
                return p.error(req.id, p.PERMISSION_DENIED, denial)
            log.info("control: %s (uid %d, pid %d)", what, peer.uid, peer.pid)
        try:
            return await self._handlers[req.cmd](req, conn)
        except p.CommandError as exc:
            return p.error(req.id, exc.code, exc.message, **exc.extra)
        except (_Gone, ConnectionError):
            raise
        except Exception:
            log.exception("control: %s failed", req.cmd)
            return p.error(req.id, p.INTERNAL, "internal error in reloadd (see its log)")

    def _denial(self, peer: Peer, cmd: str) -> str:
        """Why ``peer`` may not run ``cmd``, or "" if it may."""
        group, gid = self.group, self.gid
        if may_change(peer, gid, self.uid):
            return ""
        who = ["root"]
        if self.uid != 0:
            who.append(f"uid {self.uid} (the user reloadd runs as)")
        if isinstance(group, str):
            who.append(f"members of group {group!r}" + (f" (gid {gid})" if gid is not None else ""))
        elif group is not None:
            who.append(f"members of group {group}")
        needs = who[0] if len(who) == 1 else ", ".join(who[:-1]) + " or " + who[-1]
        hint = "" if group is not None else "; [daemon] socket_group can name a group that may"
        return (
            f"permission denied: `{cmd}` changes what reloadd does and needs {needs}; "
            f"you are uid {peer.uid}, gid {peer.gid}{hint}"
        )

    # -- commands -------------------------------------------------------------------------

    async def _ping(self, req: p.Request, conn: _Connection) -> dict[str, Any]:
        result = {"version": __version__, "protocol": p.VERSION, "pid": os.getpid()}
        return p.ok(req.id, result)

    def _require(self, name: str) -> None:
        if name in self.daemon.services:
            return
        raise p.CommandError(p.NO_SUCH_SERVICE, no_such_service(name, list(self.daemon.services)))

    def _snapshot(self, name: str) -> dict[str, Any] | None:
        for svc in self.daemon.status()["services"]:
            if svc["name"] == name:
                return dict(svc)
        return None

    async def _status(self, req: p.Request, conn: _Connection) -> dict[str, Any]:
        status = self.daemon.status()
        names = req.args.get("services")
        if names:
            known = {svc["name"]: svc for svc in status["services"]}
            for name in names:
                if name not in known:
                    raise p.CommandError(p.NO_SUCH_SERVICE, no_such_service(name, list(known)))
            status = {**status, "services": [known[n] for n in dict.fromkeys(names)]}
        return p.ok(req.id, status)

    async def _events(self, req: p.Request, conn: _Connection) -> dict[str, Any] | None:
        follow = req.args.get("follow", False)
        limit = req.args.get("limit", 10 if follow else 50)
        if not 0 <= limit <= p.MAX_EVENTS:
            raise p.CommandError(p.BAD_ARGUMENT, f"events: 'limit' must be 0..{p.MAX_EVENTS}")
        history = recent_events(self.daemon.status(), limit)
        if not follow:
            return p.ok(req.id, {"events": history})
        return await self._follow(req, conn, history)

    async def _follow(
        self, req: p.Request, conn: _Connection, history: list[dict[str, Any]]
    ) -> dict[str, Any] | None:
        queue: asyncio.Queue[object] = asyncio.Queue()
        dropped = 0

        def listener(record: dict[str, Any]) -> None:  # called by the daemon: never raise
            nonlocal dropped
            if dropped:
                dropped += 1
            elif queue.qsize() >= self.event_backlog:
                dropped = 1
                queue.put_nowait(_OVERRUN)
            else:
                queue.put_nowait(record)

        conn.queue = queue
        self.daemon.listeners.add(listener)
        getter: asyncio.Future[object] | None = None
        eof: asyncio.Future[bytes] | None = None
        try:
            for record in history:
                await self._send(conn, p.event(req.id, record))
            while True:
                getter = getter or asyncio.ensure_future(queue.get())
                eof = eof or asyncio.ensure_future(conn.reader.read(4096))
                waiting: set[asyncio.Future[Any]] = {getter, eof}
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if eof in done:
                    if not eof.result():
                        return None  # the client left: the stream ends quietly
                    eof = None  # input while following is ignored
                if getter in done:
                    item, getter = getter.result(), None
                    if item is _END:
                        return p.error(req.id, p.STOPPING, "reloadd is stopping")
                    if item is _OVERRUN:
                        message = (
                            f"events: the client fell {self.event_backlog} events behind; "
                            f"{dropped} were not sent (reconnect to follow again)"
                        )
                        return p.error(req.id, p.OVERRUN, message)
                    assert isinstance(item, dict)
                    await self._send(conn, p.event(req.id, item))
        finally:
            self.daemon.listeners.discard(listener)
            conn.queue = None
            for fut in (getter, eof):
                if fut is not None:
                    fut.cancel()

    async def _reload(self, req: p.Request, conn: _Connection) -> dict[str, Any]:
        name = req.args["service"]
        result = await self._service_command(name, "reload")
        record = result.to_dict()
        if record.get("result") != "ok":
            message = f"{name}: not reloaded: {record.get('error') or record.get('result')}"
            raise p.CommandError(p.RELOAD_FAILED, message, record=record)
        return p.ok(req.id, {"record": record})

    async def _restart(self, req: p.Request, conn: _Connection) -> dict[str, Any]:
        name = req.args["service"]
        action = await self._service_command(name, "restart")
        snapshot = self._snapshot(name)
        target = (snapshot or {}).get("target") or {}
        if target.get("kind") == "command" and target.get("pid") is None:
            raise p.CommandError(p.FAILED, f"{name}: {action}", service=snapshot)
        return p.ok(req.id, {"action": action, "service": snapshot})

    async def _pause_resume(self, req: p.Request, conn: _Connection) -> dict[str, Any]:
        name = req.args["service"]
        before = self._snapshot(name) or {}
        await self._service_command(name, req.cmd)
        # whether changes were waiting: after a resume they may be reloaded already
        pending = bool(before.get("pending"))
        return p.ok(req.id, {"pending": pending, "service": self._snapshot(name)})

    async def _service_command(self, name: str, cmd: str) -> Any:
        self._require(name)
        return await self.daemon.command(name, cmd)  # raises p.CommandError

    async def _reload_config(self, req: p.Request, conn: _Connection) -> dict[str, Any]:
        applied, message = await self.daemon.reload_config()
        if not applied:
            raise p.CommandError(p.CONFIG_REJECTED, message)
        return p.ok(req.id, {"applied": True, "summary": message})


def recent_events(status: Mapping[str, Any], limit: int) -> list[dict[str, Any]]:
    """The last ``limit`` reload records of all services, oldest first, each with its service."""
    records = [
        {"service": svc["name"], **record}
        for svc in status.get("services", [])
        for record in svc.get("history", [])
    ]
    records.sort(key=lambda r: r.get("when", 0))
    return records[-limit:] if limit else []


def no_such_service(name: str, known: list[str]) -> str:
    """``no such service 'apii' (did you mean 'api'?)``."""
    import difflib  # only a typo needs it: kept out of the daemon's start-up

    close = difflib.get_close_matches(name, known, n=1)
    if close:
        hint = f" (did you mean {close[0]!r}?)"
    elif known:
        hint = f" (services: {', '.join(sorted(known))})"
    else:
        hint = " (no services are configured)"
    return f"no such service {name[:100]!r}{hint}"
