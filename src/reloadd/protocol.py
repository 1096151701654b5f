"""The control protocol between ``reloadctl`` and ``reloadd``: message shapes and framing.

Pure (no I/O): both ends import it, so they agree on the shapes by construction.

Framing
    One JSON object per line, UTF-8, each way, over a Unix stream socket. A request line,
    newline included, is at most ``MAX_REQUEST`` bytes (64 KiB); a longer one gets a
    ``too-large`` error and the connection is closed (the rest of that line cannot be told
    apart from the next request). Replies have no size limit (a status with many
    services and their histories can be large). A client may send several requests on one
    connection; they are answered in order. The server closes a connection that has not
    sent a complete line within its idle timeout (``timeout`` error).

Versioning
    Every message carries ``"v": 1`` (``VERSION``). A request with another version gets an
    ``unsupported-version`` error (which itself says ``"v": 1``, so a newer client learns
    what the daemon speaks); a client that reads a reply with another version stops with
    a clear message rather than guessing. Within one version, fields are only ever
    added: readers ignore result fields they do not know. Unknown *arguments* are errors,
    so a newer client's option is never silently ignored by an older daemon.

Requests
    ``{"v": 1, "cmd": "status", "id": 7, "args": {"services": ["api"]}}``. ``id`` is
    optional (a string, an integer or null) and is echoed in the reply; ``args`` is
    optional, an object whose keys ``COMMANDS`` lists per command.

Replies
    ``{"v": 1, "id": 7, "ok": true, "result": {...}}`` or
    ``{"v": 1, "id": 7, "ok": false, "error": {"code": "no-such-service", "message": "..."}}``.
    ``code`` is one of ``ERROR_CODES``; ``message`` is one human line (or several, for
    config problems); an error may carry more fields (``reload-failed`` carries the reload
    ``record``).

Streams
    ``events`` with ``"follow": true`` answers with any number of event lines
    ``{"v": 1, "id": 7, "event": {...}}`` (a reload record plus ``"service"``), first the
    recent history (``limit``), then each reload as it happens, until the client closes
    the connection. If the daemon ends the stream (it is stopping, or the client read too
    slowly to keep up) a final ordinary reply follows. A line with ``"event"`` is never a
    reply, a line with ``"ok"`` always is.

Example::

    >>> encode(request("status", {"services": ["api"]}, id=1))
    b'{"v":1,"cmd":"status","id":1,"args":{"services":["api"]}}\\n'
    >>> parse_request(b'{"v":1,"cmd":"reload","args":{"service":"api"}}\\n')
    Request(cmd='reload', id=None, args={'service': 'api'})
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

VERSION = 1
MAX_REQUEST = 64 * 1024  # bytes per request line, newline included
DEFAULT_SOCKET = "/run/reloadd/control.sock"
SOCKET_NAME = "control.sock"
MAX_EVENTS = 1000  # the most history records one `events` request may ask for

# error codes: what went wrong, for programs; the message says it for people
BAD_REQUEST = "bad-request"  # not JSON, not an object, not UTF-8, a field of the wrong type
TOO_LARGE = "too-large"  # a request line over MAX_REQUEST bytes (then the connection closes)
UNSUPPORTED_VERSION = "unsupported-version"
UNKNOWN_COMMAND = "unknown-command"
BAD_ARGUMENT = "bad-argument"  # a missing, unknown or ill-typed argument
PERMISSION_DENIED = "permission-denied"
NO_SUCH_SERVICE = "no-such-service"
REFUSED = "refused"  # the service's state does not allow it (e.g. reload while paused)
RELOAD_FAILED = "reload-failed"  # the check failed or the signal could not be delivered
FAILED = "failed"  # a restart (or another action) did not work
CONFIG_REJECTED = "config-rejected"  # reload-config: the new config has errors; old one runs
BUSY = "busy"  # too many clients; the connection is closed
TIMEOUT = "timeout"  # nothing (or no complete line) arrived in time; the connection is closed
OVERRUN = "overrun"  # an `events -f` client read too slowly; the stream is ended
INTERNAL = "internal-error"  # a bug in reloadd; it is logged and reloadd keeps running
STOPPING = "stopping"  # reloadd is shutting down

ERROR_CODES = frozenset(
    {
        BAD_REQUEST,
        TOO_LARGE,
        UNSUPPORTED_VERSION,
        UNKNOWN_COMMAND,
        BAD_ARGUMENT,
        PERMISSION_DENIED,
        NO_SUCH_SERVICE,
        REFUSED,
        RELOAD_FAILED,
        FAILED,
        CONFIG_REJECTED,
        BUSY,
        TIMEOUT,
        OVERRUN,
        INTERNAL,
        STOPPING,
    }
)


@dataclass(frozen=True)
class Arg:
    """One argument of a command: its JSON type and whether it must be given."""

    kind: type
    required: bool = False
    items: type | None = None  # for lists: the type of each item


_SERVICE = {"service": Arg(str, required=True)}

# command -> its arguments. Anyone who can connect may run a read-only command; the
# others change what reloadd does and need privilege (see control.py).
COMMANDS: dict[str, dict[str, Arg]] = {
    "ping": {},
    "version": {},
    "status": {"services": Arg(list, items=str)},
    "events": {"follow": Arg(bool), "limit": Arg(int)},
    "reload": _SERVICE,
    "restart": _SERVICE,
    "pause": _SERVICE,
    "resume": _SERVICE,
    "reload-config": {},
}
READ_ONLY = frozenset({"ping", "version", "status", "events"})
MUTATING = frozenset(COMMANDS) - READ_ONLY


class ProtocolError(Exception):
    """A message that breaks the protocol; ``code`` is one of ``ERROR_CODES``."""

    def __init__(self, code: str, message: str, id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.id = id


class CommandError(Exception):
    """A command that could not be carried out, with the reply's error code.

    Raised by the daemon side (daemon.py turns a service's refusals and delivery failures
    into these), turned into an error reply by the control server.
    """

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code, self.message, self.extra = code, message, extra


@dataclass(frozen=True)
class Request:
    cmd: str
    id: Any = None
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    """One line from the daemon: a reply (``ok`` set) or a streamed ``event``."""

    id: Any
    ok: bool | None
    result: Any = None
    error: dict[str, Any] | None = None
    event: dict[str, Any] | None = None

    @property
    def is_event(self) -> bool:
        return self.event is not None


# --------------------------------------------------------------------------- building


def encode(message: Mapping[str, Any]) -> bytes:
    """One message as one line: compact ASCII JSON (non-ASCII and odd bytes escaped)."""
    return (
        json.dumps(message, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode(
            "ascii"
        )
        + b"\n"
    )


def request(cmd: str, args: Mapping[str, Any] | None = None, id: Any = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"v": VERSION, "cmd": cmd}
    if id is not None:
        msg["id"] = id
    if args:
        msg["args"] = dict(args)
    return msg


def ok(id: Any, result: Any = None) -> dict[str, Any]:
    return {"v": VERSION, "id": id, "ok": True, "result": result}


def error(id: Any, code: str, message: str, **extra: Any) -> dict[str, Any]:
    assert code in ERROR_CODES, code
    return {
        "v": VERSION,
        "id": id,
        "ok": False,
        "error": {"code": code, "message": message, **extra},
    }


def event(id: Any, record: Mapping[str, Any]) -> dict[str, Any]:
    return {"v": VERSION, "id": id, "event": dict(record)}


# --------------------------------------------------------------------------- parsing


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(line: bytes, what: str) -> Any:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(BAD_REQUEST, f"{what} is not UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text, parse_constant=_no_constants)
    except RecursionError:
        raise ProtocolError(BAD_REQUEST, f"{what} is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, NaN, an integer with too many digits
        raise ProtocolError(BAD_REQUEST, f"{what} is not valid JSON: {exc}") from None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", list: "a list"}
_PLURAL_NAMES = {str: "strings", int: "integers"}


def _check_arg(cmd: str, name: str, spec: Arg, value: object, id: Any) -> None:
    good = _is_int(value) if spec.kind is int else isinstance(value, spec.kind)
    if good and spec.items is not None:
        good = all(isinstance(v, spec.items) for v in value)  # type: ignore[attr-defined]
    if not good:
        want = _TYPE_NAMES[spec.kind]
        if spec.items is not None:
            want += f" of {_PLURAL_NAMES[spec.items]}"
        raise ProtocolError(
            BAD_ARGUMENT, f"{cmd}: argument {name!r} must be {want}, not {_json_type(value)}", id
        )


def parse_request(line: bytes) -> Request:
    """Validate one request line; raise ProtocolError (with the id, when known).

    >>> parse_request(b'{"v":1,"cmd":"status"}')
    Request(cmd='status', id=None, args={})
    """
    if len(line) > MAX_REQUEST:
        raise ProtocolError(TOO_LARGE, f"request line over {MAX_REQUEST} bytes")
    msg = _loads(line, "request")
    if not isinstance(msg, dict):
        raise ProtocolError(BAD_REQUEST, f"a request must be a JSON object, not {_json_type(msg)}")
    id = msg.get("id")
    if id is not None and not (isinstance(id, str) or _is_int(id)):
        raise ProtocolError(
            BAD_REQUEST, f"'id' must be a string or an integer, not {_json_type(id)}"
        )
    if "v" not in msg:
        raise ProtocolError(BAD_REQUEST, f'missing "v" (the protocol version, {VERSION})', id)
    version = msg["v"]
    if version != VERSION or not _is_int(version):
        raise ProtocolError(
            UNSUPPORTED_VERSION,
            f"this reloadd speaks control protocol version {VERSION}; the client sent "
            f"{json.dumps(version)} (use the reloadctl that came with this reloadd)",
            id,
        )
    cmd = msg.get("cmd")
    if not isinstance(cmd, str):
        what = "missing" if cmd is None else f"must be a string, not {_json_type(cmd)}"
        raise ProtocolError(BAD_REQUEST, f"'cmd' {what}", id)
    if cmd not in COMMANDS:
        known = ", ".join(sorted(COMMANDS))
        raise ProtocolError(UNKNOWN_COMMAND, f"unknown command {cmd[:80]!r} (known: {known})", id)
    args = msg.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ProtocolError(BAD_ARGUMENT, f"'args' must be an object, not {_json_type(args)}", id)
    specs = COMMANDS[cmd]
    for name in args:
        if name not in specs:
            known = ", ".join(sorted(specs)) or "none"
            raise ProtocolError(
                BAD_ARGUMENT, f"{cmd}: unknown argument {name[:80]!r} (known: {known})", id
            )
    for name, spec in specs.items():
        if name in args:
            _check_arg(cmd, name, spec, args[name], id)
        elif spec.required:
            raise ProtocolError(BAD_ARGUMENT, f"{cmd}: missing argument {name!r}", id)
    return Request(cmd, id, args)


def parse_reply(line: bytes) -> Reply:
    """Validate one line from the daemon (client side); raise ProtocolError if it is not one.

    >>> parse_reply(b'{"v":1,"id":null,"ok":true,"result":{"pong":true}}').result
    {'pong': True}
    """
    msg = _loads(line, "reply")
    if not isinstance(msg, dict):
        raise ProtocolError(BAD_REQUEST, f"the reply is not a JSON object but {_json_type(msg)}")
    version = msg.get("v")
    if version != VERSION:
        raise ProtocolError(
            UNSUPPORTED_VERSION,
            f"reloadd answered in control protocol version {json.dumps(version)}; this "
            f"reloadctl speaks version {VERSION} (use the reloadctl that came with the "
            "running reloadd)",
        )
    if isinstance(msg.get("event"), dict):
        return Reply(msg.get("id"), None, event=msg["event"])
    status = msg.get("ok")
    if status is True:
        return Reply(msg.get("id"), True, result=msg.get("result"))
    err = msg.get("error")
    if status is False and isinstance(err, dict):
        code, message = err.get("code"), err.get("message")
        if isinstance(code, str) and isinstance(message, str):
            return Reply(msg.get("id"), False, error=err)
    raise ProtocolError(BAD_REQUEST, "the reply has neither a result, an error nor an event")


# --------------------------------------------------------------------------- the socket


def default_socket_path(environ: Mapping[str, str] | None = None) -> str:
    """Where the socket is when the config does not say: systemd's RuntimeDirectory= first.

    ``$RUNTIME_DIRECTORY`` may list several directories (separated by ``:``); the first
    one is reloadd's.

    >>> default_socket_path({"RUNTIME_DIRECTORY": "/run/reloadd"})
    '/run/reloadd/control.sock'
    >>> default_socket_path({})
    '/run/reloadd/control.sock'
    """
    env = os.environ if environ is None else environ
    runtime = env.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime.startswith("/"):
        return os.path.join(runtime, SOCKET_NAME)
    return DEFAULT_SOCKET
