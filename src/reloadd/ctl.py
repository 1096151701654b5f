"""``reloadctl``: talk to a running reloadd over its control socket (docs/protocol.md).

    reloadctl status [SERVICE...] [--json]   what is watched, what was reloaded, when, why
    reloadctl reload|restart|pause|resume SERVICE
    reloadctl reload-config                  returns once applied; fails with the reason
    reloadctl events [-f] [--json]           reload records (-f: as they happen)
    reloadctl why SERVICE                    the last reload in full
    reloadctl check [FILE]                   validate a config offline (no daemon needed)

The socket is ``--socket PATH``, else ``$RELOADD_SOCKET``, else ``[daemon] socket`` of the
config (``-c FILE``, default /etc/reloadd.toml), else ``$RUNTIME_DIRECTORY/control.sock``
(as under systemd's ``ExecReload=``), else /run/reloadd/control.sock.

Exit codes follow systemctl: 0 ok, 1 failure, 2 usage, 3 reloadd is not running, 4 no such
service, 130 interrupted.

The human renderings (``render_status``, ``render_why``, ``render_event``) are pure
functions of the daemon's status data and a clock, so their layout is tested as text.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any, TextIO

from reloadd import __version__
from reloadd import protocol as p

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
EXIT_NO_SUCH_SERVICE = 4
EXIT_INTERRUPTED = 130

DEFAULT_CONFIG = "/etc/reloadd.toml"
REPLY_TIMEOUT = 120.0  # seconds; a check or a graceful restart can take a while
MAX_REPLY = 64 * 1024 * 1024  # a sanity cap on one reply line
LABEL = 12  # width of the right-aligned field labels, as in `systemctl status`
INDENT = " " * (LABEL + 2)
SHOWN_PATHS = 3  # trigger paths named in `status`; `why` names all that were kept

# The clock and time zone of the human output; tests pin them.
clock: Callable[[], float] = time.time
TZ: tzinfo | None = None  # None: local time

# -- errors ------------------------------------------------------------------------------


class CtlError(Exception):
    """A failure reported as one ``reloadctl: ...`` line (or a few) and an exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class RemoteError(CtlError):
    """reloadd answered with an error reply."""

    def __init__(self, error: Mapping[str, Any]) -> None:
        self.code = str(error.get("code"))
        self.error = dict(error)
        code = EXIT_NO_SUCH_SERVICE if self.code == p.NO_SUCH_SERVICE else EXIT_FAILURE
        super().__init__(str(error.get("message")), code)


# -- finding the socket ------------------------------------------------------------------


def config_socket(path: str) -> str | None:
    """``[daemon] socket`` of a config file (relative to the file), or None if unset.

    Only that key is read, so a config with an error elsewhere still leads to the daemon.
    Raises OSError or ValueError (TOML) if the file cannot be read.
    """
    with open(path, "rb") as f:
        doc = tomllib.load(f)
    daemon = doc.get("daemon")
    value = daemon.get("socket") if isinstance(daemon, dict) else None
    if not isinstance(value, str) or not value:
        return None
    return os.path.join(os.path.dirname(os.path.abspath(path)), value)


def find_socket(
    option: str | None,
    config: str | None,
    environ: Mapping[str, str],
    warn: Callable[[str], None] | None = None,
) -> str:
    """The socket path: --socket, $RELOADD_SOCKET, the config's [daemon] socket, the default.

    ``config`` is the ``-c`` value (None: the default config, which may well not exist).
    """
    if option:
        return option
    if environ.get("RELOADD_SOCKET"):
        return environ["RELOADD_SOCKET"]
    path = config or DEFAULT_CONFIG
    try:
        found = config_socket(path)
    except (OSError, ValueError) as exc:
        found = None
        if config is not None and warn is not None:
            why = exc.strerror if isinstance(exc, OSError) else f"not valid TOML ({exc})"
            warn(f"cannot read {path}: {why}; using the default socket")
    return found or p.default_socket_path(environ)


# -- the client --------------------------------------------------------------------------


class Client:
    """One connection to reloadd; requests are answered in order."""

    def __init__(self, path: str, timeout: float | None = REPLY_TIMEOUT) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if timeout:
            # A blocking connect waits while the listen queue is full, for at most
            # SO_SNDTIMEO; a socket with a Python timeout would fail at once (EAGAIN).
            tv = struct.pack("ll", int(timeout), int(timeout % 1 * 1_000_000))
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        try:
            self.sock.connect(path)
        except BlockingIOError:
            self.sock.close()
            raise CtlError(f"reloadd did not accept the connection within {timeout:g}s") from None
        except FileNotFoundError:
            self.sock.close()
            raise _not_running(f"no socket at {path}") from None
        except ConnectionRefusedError:
            self.sock.close()
            raise _not_running(f"nothing listens on {path}") from None
        except PermissionError:
            self.sock.close()
            raise CtlError(
                f"cannot connect to {path}: permission denied (the socket's mode, "
                "[daemon] socket_mode, keeps this user out)"
            ) from None
        except OSError as exc:
            self.sock.close()
            raise CtlError(f"cannot connect to {path}: {exc.strerror or exc}") from None
        self.sock.settimeout(timeout)
        self.file = self.sock.makefile("rb")
        self._next_id = 0

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, cmd: str, args: Mapping[str, Any] | None = None) -> int:
        self._next_id += 1
        try:
            self.sock.sendall(p.encode(p.request(cmd, args, id=self._next_id)))
        except OSError as exc:
            raise CtlError(f"lost the connection to reloadd: {exc.strerror or exc}") from None
        return self._next_id

    def read(self) -> p.Reply:
        try:
            line = self.file.readline(MAX_REPLY)
        except TimeoutError:
            raise CtlError(
                f"no answer from reloadd within {self.sock.gettimeout():g}s "
                "(--timeout sets how long to wait)"
            ) from None
        except OSError as exc:
            raise CtlError(f"lost the connection to reloadd: {exc.strerror or exc}") from None
        if not line:
            raise CtlError("reloadd closed the connection without an answer")
        if not line.endswith(b"\n"):
            raise CtlError("reloadd's answer was cut off")
        try:
            return p.parse_reply(line)
        except p.ProtocolError as exc:
            raise CtlError(exc.message) from None

    def call(self, cmd: str, args: Mapping[str, Any] | None = None) -> Any:
        """Send one request and return its result; an error reply raises RemoteError."""
        self.send(cmd, args)
        while True:
            reply = self.read()
            if not reply.is_event:
                break
        if not reply.ok:
            assert reply.error is not None
            raise RemoteError(reply.error)
        return reply.result

    def stream(self, cmd: str, args: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        """Events until the daemon ends the stream (then its error raises, if any)."""
        self.send(cmd, args)
        while True:
            reply = self.read()
            if reply.event is not None:
                yield reply.event
                continue
            if not reply.ok:
                assert reply.error is not None
                raise RemoteError(reply.error)
            return


def _not_running(why: str) -> CtlError:
    return CtlError(
        f"reloadd is not running ({why}); start it with `systemctl start reloadd`",
        EXIT_NOT_RUNNING,
    )


# -- rendering ---------------------------------------------------------------------------

_GREEN, _YELLOW, _RED, _RESET = "\033[32m", "\033[33m", "\033[31m", "\033[0m"
_STATE_COLOUR = {
    "watching": _GREEN,
    "pending": _GREEN,
    "checking": _GREEN,
    "reloading": _GREEN,
    "verifying": _GREEN,
    "waiting": _YELLOW,
    "paused": _YELLOW,
    "held": _RED,
    "failed": _RED,
    "stopped": "",
}
_STATE_NOTE = {
    "waiting": "a watch path is missing; waiting for it",
    "pending": "changes are settling",
    "paused": "changes are collected and reloaded once on resume",
    "held": "reloads keep failing; waiting for an operator",
}


@dataclass(frozen=True)
class Style:
    """How to decorate: a state dot (a terminal only) and colour (unless NO_COLOR)."""

    dot: bool = False
    colour: bool = False

    @classmethod
    def for_stream(cls, stream: TextIO, environ: Mapping[str, str] | None = None) -> Style:
        env = os.environ if environ is None else environ
        try:
            tty = stream.isatty()
        except (AttributeError, ValueError):
            tty = False
        colour = tty and not env.get("NO_COLOR") and env.get("TERM") != "dumb"
        return cls(dot=tty, colour=colour)

    def mark(self, colour: str) -> str:
        """The state dot and a space, or nothing."""
        if not self.dot:
            return ""
        if self.colour and colour:
            return f"{colour}●{_RESET} "
        return "● "


def format_ago(seconds: float) -> str:
    """A relative time in its two largest units, as systemd writes them.

    >>> format_ago(3.2), format_ago(125), format_ago(3 * 3600 + 120), format_ago(90000)
    ('3s ago', '2min 5s ago', '3h 2min ago', '1 day 1h ago')
    """
    s = max(0, int(seconds))
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    units = [
        (days, f"{days} day{'s' if days != 1 else ''}"),
        (hours, f"{hours}h"),
        (minutes, f"{minutes}min"),
        (secs, f"{secs}s"),
    ]
    first = next((i for i, (value, _) in enumerate(units) if value), len(units) - 1)
    parts = [units[first][1]]
    if first + 1 < len(units) and units[first + 1][0]:
        parts.append(units[first + 1][1])
    return " ".join(parts) + " ago"


def format_ms(ms: float) -> str:
    """Milliseconds for people.

    >>> format_ms(21.44), format_ms(1520.0)
    ('21.4 ms', '1.52 s')
    """
    return f"{ms:.1f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


def format_wall(when: float, tz: tzinfo | None = None) -> str:
    """``Tue 2024-05-07 12:02:01 UTC`` (local time unless ``tz``)."""
    moment = datetime.fromtimestamp(when, tz) if tz else datetime.fromtimestamp(when).astimezone()
    return moment.strftime("%a %Y-%m-%d %H:%M:%S %Z").strip()


def _field(label: str, value: str | list[str]) -> list[str]:
    lines = value if isinstance(value, list) else [value]
    if not lines:
        return []
    out = [f"{label:>{LABEL}}: {lines[0]}"]
    out.extend(f"{INDENT}{line}" for line in lines[1:])
    return out


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else (plural or word + 's')}"


def describe_target(target: Mapping[str, Any]) -> str:
    kind = target.get("kind")
    pid, pgid = target.get("pid"), target.get("pgid")
    if kind == "command":
        what = f"command {shlex.join(target.get('command') or [])}"
        if pid is None:
            return f"{what} (not running: {target.get('last_exit') or 'not started'})"
        return f"{what} (pid {pid}, pgid {pgid})"
    if kind == "pidfile":
        what = f"pidfile {target.get('pidfile')}"
        if pid is None:
            return f"{what} (no live process in it)"
        return f"{what} (pid {pid}, pgid {pgid})" if pgid is not None else f"{what} (pid {pid})"
    if kind == "unit":
        main = pid if pid is not None else "-"
        active = target.get("active_state") or "unknown"
        return f"unit {target.get('unit')} (MainPID {main}, ActiveState {active})"
    return str(kind)


def _describe_action(svc: Mapping[str, Any]) -> str:
    action = svc.get("action")
    if action == "signal":
        whom = "process group" if svc.get("scope") == "group" else "main pid"
        return f"signal {svc.get('signal')} -> {whom}"
    return str(action)


def _describe_watch(watch: Mapping[str, Any]) -> str:
    path = watch.get("path")
    if watch.get("state") != "watching":
        return f"{path} (missing; waiting for it)"
    parts = []
    if watch.get("kind") == "file":
        parts.append("file")
    elif watch.get("watches"):
        parts.append(_plural(int(watch["watches"]), "watch", "watches"))
    poll = watch.get("poll")
    if isinstance(poll, dict):
        dirs, files = int(poll.get("dirs") or 0), int(poll.get("files") or 0)
        polled = f"{_plural(dirs, 'directory', 'directories')}, {_plural(files, 'file')}"
        parts.append(f"polled every {float(poll.get('interval') or 0):g}s: {polled}")
    text = f"{path} ({'; '.join(parts)})" if parts else str(path)
    unwatched = watch.get("unwatched") or {}
    if unwatched:
        reasons = sorted(set(unwatched.values()))
        text += f"; {_plural(len(unwatched), 'subtree')} not watched: {', '.join(reasons)}"
    return text


def describe_trigger(record: Mapping[str, Any], shown: int | None = SHOWN_PATHS) -> str:
    if record.get("trigger") == "manual":
        return "manual reload"
    paths = list(record.get("paths") or [])
    count = max(int(record.get("count") or 0), len(paths))
    if not count:
        return "a change (a rescan after lost events)"
    head = f"{_plural(count, 'path')} changed"
    if shown is None:
        return head
    names = ", ".join(paths[:shown])
    more = count - min(len(paths), shown)
    return f"{head}: {names}" + (f" (+{more} more)" if more > 0 else "")


def _last_reload_lines(record: Mapping[str, Any], now: float, tz: tzinfo | None) -> list[str]:
    when = float(record.get("when") or 0)
    result = record.get("result", "?")
    lines = [f"{format_ago(now - when)} ({format_wall(when, tz)}): {result}"]
    lines.append(f"trigger: {describe_trigger(record)}")
    if record.get("action"):
        lines.append(f"action:  {record['action']}")
    if record.get("error"):
        lines.append(f"error:   {record['error']}")
    took = record.get("duration_ms")
    if record.get("latency_ms") is not None:
        latency = f"latency: {format_ms(record['latency_ms'])} after the last change"
        lines.append(latency + (f" (took {format_ms(took)})" if took is not None else ""))
    elif took is not None:
        lines.append(f"took:    {format_ms(took)}")
    return lines


def _service_colour(svc: Mapping[str, Any]) -> str:
    colour = _STATE_COLOUR.get(str(svc.get("state")), "")
    if svc.get("last_error") and colour == _GREEN:
        return _RED
    return colour


def render_service(
    svc: Mapping[str, Any], *, now: float, style: Style | None = None, tz: tzinfo | None = None
) -> list[str]:
    """One block of ``render_status``: a header line and aligned fields."""
    style = style or Style()
    state = str(svc.get("state"))
    target = svc.get("target") or {}
    note = target.get("failed") if state == "failed" else _STATE_NOTE.get(state)
    if state == "paused" and svc.get("pending"):
        note = "changes arrived; they are reloaded once on resume"
    lines = [f"{style.mark(_service_colour(svc))}{svc.get('name')}"]
    lines += _field("State", f"{state} ({note})" if note else state)
    lines += _field("Target", describe_target(target))
    lines += _field("Action", _describe_action(svc))
    backend = str(svc.get("backend"))
    if svc.get("backend_reason"):
        backend += f" ({svc['backend_reason']})"
    lines += _field("Backend", backend)
    lines += _field("Watches", [_describe_watch(w) for w in svc.get("watch") or []] or ["none"])
    lines += _field("Reloads", str(svc.get("reloads", 0)))
    last = svc.get("last_reload")
    if last:
        lines += _field("Last reload", _last_reload_lines(last, now, tz))
    if svc.get("last_error"):
        lines += _field("Last error", str(svc["last_error"]).splitlines() or [""])
    return lines


def render_status(
    status: Mapping[str, Any], *, now: float, style: Style | None = None, tz: tzinfo | None = None
) -> str:
    """The human ``reloadctl status``: the daemon, then one block per service.

    A pure function of the status (as ``status --json`` prints it) and the time, so its
    layout is pinned by a test.
    """
    style = style or Style()
    services = list(status.get("services") or [])
    colours = [_service_colour(s) for s in services]
    if status.get("config_error") or _RED in colours:
        head = _RED
    elif _YELLOW in colours:
        head = _YELLOW
    else:
        head = _GREEN
    uptime = float(status.get("uptime") or 0)
    started = float(status.get("started") or now - uptime)
    lines = [f"{style.mark(head)}reloadd {status.get('version')} (pid {status.get('pid')})"]
    lines += _field("Active", f"running since {format_wall(started, tz)}; {format_ago(uptime)}")
    lines += _field("Config", str(status.get("config")))
    if status.get("config_error"):
        lines += _field(
            "Config error",
            [
                "not applied; the previous config keeps running:",
                *str(status["config_error"]).splitlines(),
            ],
        )
    counts: dict[str, int] = {}
    for svc in services:
        counts[str(svc.get("state"))] = counts.get(str(svc.get("state")), 0) + 1
    breakdown = ", ".join(f"{n} {state}" for state, n in counts.items())
    lines += _field("Services", f"{len(services)}" + (f" ({breakdown})" if breakdown else ""))
    watches = f"{status.get('watches', 0)}"
    if status.get("overflows"):
        watches += f" ({_plural(status['overflows'], 'event queue overflow')}, rescanned)"
    lines += _field("Watches", watches)
    lines += _field("Reloads", str(status.get("reloads", 0)))
    out = "\n".join(lines) + "\n"
    for svc in services:
        out += "\n" + "\n".join(render_service(svc, now=now, style=style, tz=tz)) + "\n"
    return out


def render_why(svc: Mapping[str, Any], *, now: float, tz: tzinfo | None = None) -> str:
    """``reloadctl why SERVICE``: the last reload in full (every path kept, the output)."""
    name = svc.get("name")
    record = svc.get("last_reload")
    if not record:
        return f"{name}: no reload since reloadd started (state: {svc.get('state')})\n"
    when = float(record.get("when") or 0)
    result = record.get("result")
    verb = "reloaded" if result == "ok" else "reload attempted"
    lines = [f"{name}: {verb} {format_ago(now - when)} ({format_wall(when, tz)}): {result}"]
    width = 9
    trigger = [describe_trigger(record, shown=None)]
    if record.get("trigger") != "manual":
        trigger += list(record.get("paths") or [])
        kept = len(record.get("paths") or [])
        if int(record.get("count") or 0) > kept:
            trigger.append(f"(+{int(record['count']) - kept} more, not kept)")
    fields: list[tuple[str, list[str]]] = [("Trigger", trigger)]
    if record.get("action"):
        fields.append(("Action", [str(record["action"])]))
    if record.get("error"):
        fields.append(("Error", [str(record["error"])]))
    took = record.get("duration_ms")
    if record.get("latency_ms") is not None:
        latency = f"{format_ms(record['latency_ms'])} from the last change to delivery"
        if took is not None:
            latency += f"; the reload took {format_ms(took)}"
        fields.append(("Latency", [latency]))
    elif took is not None:
        fields.append(("Took", [format_ms(took)]))
    output = str(record.get("output") or "").rstrip("\n")
    if output:
        fields.append(("Output", [f"| {line}" for line in output.splitlines()[-20:]]))
    for label, values in fields:
        lines.append(f"{label:>{width}}: {values[0]}")
        lines.extend(" " * (width + 2) + v for v in values[1:])
    return "\n".join(lines) + "\n"


def render_event(record: Mapping[str, Any], tz: tzinfo | None = None) -> str:
    """One line per reload: ``2024-05-07 12:02:01 api: ok: SIGHUP -> pid 7 (1 path ...)``."""
    when = float(record.get("when") or 0)
    moment = datetime.fromtimestamp(when, tz) if tz else datetime.fromtimestamp(when)
    result = record.get("result")
    what = record.get("action") if result == "ok" else record.get("error") or result
    detail = [describe_trigger(record)]
    if record.get("latency_ms") is not None:
        detail.append(format_ms(record["latency_ms"]))
    text = f"{moment:%Y-%m-%d %H:%M:%S} {record.get('service')}: {result}: {what}"
    return f"{text} ({'; '.join(detail)})"


# -- commands ----------------------------------------------------------------------------


@dataclass
class Context:
    args: argparse.Namespace
    out: TextIO
    err: TextIO
    environ: Mapping[str, str]

    def connect(self, timeout: float | None = None) -> Client:
        path = find_socket(self.args.socket, self.args.config, self.environ, self.warn)
        wait = self.args.timeout if timeout is None else timeout
        return Client(path, wait if wait and wait > 0 else None)

    def warn(self, message: str) -> None:
        print(f"reloadctl: warning: {message}", file=self.err)

    def print(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)


def cmd_status(ctx: Context) -> int:
    names = ctx.args.services
    with ctx.connect() as client:
        status = client.call("status", {"services": names} if names else None)
    if ctx.args.json:
        ctx.print(json.dumps(status, indent=2, ensure_ascii=False))
    else:
        style = Style.for_stream(ctx.out, ctx.environ)
        ctx.out.write(render_status(status, now=clock(), style=style, tz=TZ))
    return EXIT_OK


def cmd_reload(ctx: Context) -> int:
    name = ctx.args.service
    with ctx.connect() as client:
        try:
            result = client.call("reload", {"service": name})
        except RemoteError as exc:
            record = exc.error.get("record")
            if exc.code == p.RELOAD_FAILED and isinstance(record, dict):
                output = str(record.get("output") or "").rstrip("\n").splitlines()[-10:]
                exc.message = "\n".join([exc.message, *(f"  | {line}" for line in output)])
            raise
    record = result["record"]
    ctx.print(f"{name}: reloaded: {record.get('action')} (took {format_ms(record['duration_ms'])})")
    return EXIT_OK


def cmd_restart(ctx: Context) -> int:
    name = ctx.args.service
    with ctx.connect() as client:
        result = client.call("restart", {"service": name})
    ctx.print(f"{name}: {result.get('action')}")
    return EXIT_OK


def cmd_pause(ctx: Context) -> int:
    name = ctx.args.service
    with ctx.connect() as client:
        client.call("pause", {"service": name})
    ctx.print(
        f"{name}: paused; changes are collected and reloaded once on `reloadctl resume {name}`"
    )
    return EXIT_OK


def cmd_resume(ctx: Context) -> int:
    name = ctx.args.service
    with ctx.connect() as client:
        result = client.call("resume", {"service": name})
    pending = result.get("pending")
    later = "; the changes made while paused are reloaded now" if pending else ""
    ctx.print(f"{name}: resumed{later}")
    return EXIT_OK


def cmd_reload_config(ctx: Context) -> int:
    with ctx.connect() as client:
        try:
            result = client.call("reload-config")
        except RemoteError as exc:
            if exc.code != p.CONFIG_REJECTED:
                raise
            head = "config not applied; reloadd keeps running the previous one:"
            for line in [head, *exc.message.splitlines()]:
                print(f"reloadctl: {line}", file=ctx.err)
            return EXIT_FAILURE
    ctx.print(f"reloadd: config applied ({result.get('summary')})")
    return EXIT_OK


def cmd_events(ctx: Context) -> int:
    args = ctx.args
    request: dict[str, Any] = {}
    if args.lines is not None:
        request["limit"] = args.lines

    def show(record: Mapping[str, Any]) -> None:
        ctx.print(json.dumps(record, ensure_ascii=False) if args.json else render_event(record, TZ))

    if not args.follow:
        with ctx.connect() as client:
            result = client.call("events", request)
        for record in result.get("events", []):
            show(record)
        return EXIT_OK
    with ctx.connect(timeout=0) as client:
        try:
            for record in client.stream("events", {**request, "follow": True}):
                show(record)
        except RemoteError as exc:
            if exc.code == p.STOPPING:
                print("reloadctl: reloadd is stopping; no more events", file=ctx.err)
                return EXIT_OK
            raise
    return EXIT_OK


def cmd_why(ctx: Context) -> int:
    with ctx.connect() as client:
        status = client.call("status", {"services": [ctx.args.service]})
    ctx.out.write(render_why(status["services"][0], now=clock(), tz=TZ))
    return EXIT_OK


def cmd_check(ctx: Context) -> int:
    from reloadd.cli import main as reloadd_main  # the same messages as `reloadd --check`

    return reloadd_main(["-c", ctx.args.file or ctx.args.config or DEFAULT_CONFIG, "--check"])


COMMANDS: dict[str, Callable[[Context], int]] = {
    "status": cmd_status,
    "reload": cmd_reload,
    "restart": cmd_restart,
    "pause": cmd_pause,
    "resume": cmd_resume,
    "reload-config": cmd_reload_config,
    "events": cmd_events,
    "why": cmd_why,
    "check": cmd_check,
}


# -- arguments ---------------------------------------------------------------------------


def _common(defaults: bool) -> argparse.ArgumentParser:
    """Options accepted before and after the command (``reloadctl --json status`` and
    ``reloadctl status --json`` alike); the subcommand copies do not reset them."""
    keep: Any = None if defaults else argparse.SUPPRESS
    c = argparse.ArgumentParser(add_help=False)
    c.add_argument("--socket", metavar="PATH", default=keep, help="the control socket")
    c.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        default=keep,
        help=f"find the socket in this config's [daemon] socket (default {DEFAULT_CONFIG})",
    )
    c.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        default=REPLY_TIMEOUT if defaults else argparse.SUPPRESS,
        help="how long to wait for an answer (0: no limit; default %(default)s)",
    )
    c.add_argument("--debug", action="store_true", default=False if defaults else argparse.SUPPRESS)
    return c


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="reloadctl",
        description="Control and inspect a running reloadd.",
        parents=[_common(True)],
        epilog="Exit codes: 0 ok, 1 failure, 2 usage, 3 reloadd not running, 4 no such service.",
    )
    top.add_argument("--version", action="version", version=f"reloadctl {__version__}")
    sub = top.add_subparsers(dest="command", metavar="COMMAND")
    common = [_common(False)]

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=common)

    s = command("status", "show the daemon and its services")
    s.add_argument("services", nargs="*", metavar="SERVICE")
    s.add_argument("--json", action="store_true", help="the raw status (docs/status.schema.json)")
    for name, text in (
        ("reload", "reload a service now (the check runs first); fails if the reload fails"),
        ("restart", "restart a service's command or unit"),
        ("pause", "stop reloading a service; changes are collected"),
        ("resume", "reload again; one reload if changes arrived while paused"),
        ("why", "the last reload of a service: trigger, action, result"),
    ):
        command(name, text).add_argument("service", metavar="SERVICE")
    command("reload-config", "re-read the config; returns once applied, fails if rejected")
    e = command("events", "reload records of all services, oldest first")
    e.add_argument("-f", "--follow", action="store_true", help="keep printing them as they happen")
    e.add_argument("-n", "--lines", type=int, metavar="N", help="how many recent ones to show")
    e.add_argument("--json", action="store_true", help="one JSON object per line")
    c = command("check", "validate a config file offline (no daemon needed)")
    c.add_argument("file", nargs="?", metavar="FILE", help="default: -c, else /etc/reloadd.toml")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        args = parser().parse_args([*(argv if argv is not None else sys.argv[1:]), "status"])
    if getattr(args, "lines", None) is not None and not 0 <= args.lines <= p.MAX_EVENTS:
        print(f"reloadctl: -n must be between 0 and {p.MAX_EVENTS}", file=sys.stderr)
        return EXIT_USAGE
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")  # odd bytes in a path never kill us
    ctx = Context(args, sys.stdout, sys.stderr, os.environ)
    try:
        return COMMANDS[args.command](ctx)
    except CtlError as exc:
        for line in exc.message.splitlines() or [""]:
            print(f"reloadctl: {line}" if not line.startswith("  ") else line, file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `reloadctl events -f | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except Exception as exc:
        if args.debug:
            raise
        print(f"reloadctl: unexpected error: {exc!r} (--debug shows where)", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
