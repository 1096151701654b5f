"""The configuration: TOML files -> frozen dataclasses, with every check in one place.

`load()` reads the main file (``/etc/reloadd.toml``) and its drop-ins (``<stem>.d/*.toml``
beside it, in lexical order), validates everything, and returns a `Config`, or raises one
`ConfigError` that lists *every* problem found in *every* file, each naming the file, the
dotted key path and what was expected, e.g.::

    /etc/reloadd.toml: services.web.signal = "SIGHUPP": unknown signal (did you mean SIGHUP?)

The module is pure apart from reading the config files, stat'ing watch paths (a missing one
is a warning: the service waits for it) and pwd/grp lookups. A watch path is stat'ed in a
daemon thread and given up on after ``probe.PROBE_TIMEOUT`` (5 s; all paths at once): on a
hung mount (a dead NFS server, a stopped FUSE daemon) the stat would block for ever, at
start-up and in a live re-read alike. Such a path is a warning, not an error: reloadd
starts, polls it and shows why in the status (docs/backends.md). Only where reloadd would
run a ``command``/``check``/``exec`` as root over it is it an error: who can write the tree
cannot be checked, and that check fails closed.

Decisions where DESIGN.md is silent (an operator's reasonable expectation, written down):

- Durations: a number of seconds (int or float), or a string of one or more
  ``<number><unit>`` parts: ``ms``, ``s``/``sec``, ``m``/``min`` (minutes, as in systemd),
  ``h``; ``"1min 30s"`` and ``"1m30s"`` work. A quoted number without a unit (``"200"``) is
  an error: ms or s would be a guess. Timeouts and ``poll_interval`` must be > 0; every
  other duration >= 0.
- Enumerated values (``action``, ``scope``, ``backend``, ``restart``, ``log_level``) are
  case-insensitive and stored lower-case.
- ``[defaults]`` is validated once, on its own (its problems are reported as
  ``defaults.KEY``, once); a service's own value replaces it whole, tables and lists alike.
- ``environment`` keys must look like shell variable names; values must be strings (a
  number is an error with the hint to quote it).
- ``restart``, ``restart_delay``, ``stop_signal`` and ``stop_timeout`` set in a service's
  own table for a ``pidfile`` or ``unit`` target are an error: reloadd does not supervise
  those, so the setting would be silently ignored. (From ``[defaults]`` they are fine.)
- ``user``/``group``/``expect_user`` and ``daemon.socket_group`` accept a name (which must
  exist) or a numeric id (which need not). ``user``/``group``/``expect_user`` are stored as
  strings (``33`` -> ``"33"``); ``socket_group`` keeps an int as an int.
- Paths starting with ``~`` are an error (``~`` is not expanded: whose home?). Watch paths
  are normalised but never symlink-resolved; duplicates in one list are dropped.
- ``include``/``exclude`` also accept a single string as one pattern (unlike commands,
  which must be lists: reloadd never shell-splits).
- ``unit = "api"`` becomes ``"api.service"`` (systemctl's rule: append ``.service`` unless
  the name ends in a unit type suffix); a template without an instance (``foo@.service``)
  is an error.
- Service names match ``[A-Za-z0-9_.@-]+`` and must not start with ``-`` (they are
  ``reloadctl`` arguments).
- The main file may be UTF-8 with or without a BOM; anything else, or a file over 1 MiB,
  is an error. A drop-in directory that does not exist is fine; dot-files and non-``.toml``
  names in it (editor backups) are ignored.
- ``daemon.socket`` must fit a Unix socket address (107 bytes).
- A config with no services at all loads, with a warning.
- Keys of later versions (``compare``, ``verify``, ``max_failures``) are errors that say
  so, rather than being ignored.
"""

from __future__ import annotations

import dataclasses
import grp
import math
import os
import pwd
import re
import shlex
import stat
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from signal import Signals
from typing import Any, cast

from reloadd import trust
from reloadd.probe import PROBE_TIMEOUT, Call, remote_mounts_below, shared_call

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "Config",
    "ConfigError",
    "DaemonConfig",
    "Problem",
    "ServiceSpec",
    "check_trusted",
    "format_duration",
    "load",
    "parse_duration",
    "summary",
    "trust_problems",
]

MAX_FILE_SIZE = 1 << 20
_SUN_PATH_MAX = 107  # sizeof(sun_path) - 1 on Linux


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config file.

    Example:
        >>> str(Problem("/etc/reloadd.toml", "services.web.signal", "unknown signal", value='"X"'))
        '/etc/reloadd.toml: services.web.signal = "X": unknown signal'
    """

    file: str
    key: str | None
    message: str
    line: int | None = None
    column: int | None = None
    value: str | None = None  # the offending value as TOML-ish text, shown after the key

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        if self.key is None:
            return f"{where}: {self.message}"
        shown = self.key if self.value is None else f"{self.key} = {self.value}"
        return f"{where}: {shown}: {self.message}"


class ConfigError(Exception):
    """The configuration cannot be used; `problems` lists everything found, in file order."""

    problems: tuple[Problem, ...]

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


@dataclass(frozen=True)
class DaemonConfig:
    socket: str | None = None
    socket_group: str | int | None = None
    socket_mode: int = 0o666
    log_level: str = "info"
    watch_config: bool = True
    include: str = ""


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    source: str
    watch: tuple[str, ...]
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    command: tuple[str, ...] | None = None
    pidfile: str | None = None
    unit: str | None = None
    action: str = "signal"
    signal: Signals = Signals.SIGHUP
    scope: str = "main"
    exec: tuple[str, ...] | None = None
    exec_timeout: float = 30.0
    check: tuple[str, ...] | None = None
    check_timeout: float = 30.0
    debounce: float = 0.02
    max_delay: float = 2.0
    min_interval: float = 0.0
    backend: str = "auto"
    poll_interval: float = 1.0
    restart: str = "on-failure"
    restart_delay: float = 1.0
    stop_signal: Signals = Signals.SIGTERM
    stop_timeout: float = 10.0
    user: str | None = None
    group: str | None = None
    working_directory: str = "/"
    environment: tuple[tuple[str, str], ...] = ()
    expect_user: str | None = None

    @property
    def target_kind(self) -> str:
        """``"command"``, ``"pidfile"`` or ``"unit"``: how reloadd reaches the processes."""
        if self.command is not None:
            return "command"
        if self.pidfile is not None:
            return "pidfile"
        return "unit"


@dataclass(frozen=True)
class Config:
    path: str
    daemon: DaemonConfig
    services: tuple[ServiceSpec, ...]
    files: tuple[str, ...]
    warnings: tuple[str, ...] = field(default=())

    def service(self, name: str) -> ServiceSpec | None:
        for spec in self.services:
            if spec.name == name:
                return spec
        return None


# --------------------------------------------------------------------------- durations

_DURATION_UNITS: dict[str, Decimal] = {
    "ms": Decimal("0.001"),
    "msec": Decimal("0.001"),
    "s": Decimal(1),
    "sec": Decimal(1),
    "secs": Decimal(1),
    "second": Decimal(1),
    "seconds": Decimal(1),
    "m": Decimal(60),
    "min": Decimal(60),
    "mins": Decimal(60),
    "minute": Decimal(60),
    "minutes": Decimal(60),
    "h": Decimal(3600),
    "hr": Decimal(3600),
    "hour": Decimal(3600),
    "hours": Decimal(3600),
}
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*")
_DURATION_HINT = 'expected a duration such as "200ms", "2s" or a number of seconds'


def parse_duration(value: object) -> float:
    """Seconds from "250ms", "2s", "1.5s", "1min", "1m30s", "1h" or a number of seconds.

    Raises ValueError, with a message fit for an operator, for anything else (negative,
    not finite, no unit, unknown unit, wrong type).

    Example:
        >>> parse_duration("1min 30s"), parse_duration("250ms"), parse_duration(2)
        (90.0, 0.25, 2.0)
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(_DURATION_HINT)
    if not isinstance(value, str):
        if not math.isfinite(value):
            raise ValueError(f"{_DURATION_HINT}; got a number that is not finite")
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    text = value.strip().lower()
    if text.startswith("-"):
        raise ValueError("a duration cannot be negative")
    if not text:
        raise ValueError(_DURATION_HINT)
    total = Decimal(0)
    pos = 0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            raise ValueError(_DURATION_HINT)
        number, unit = match.groups()
        if not unit:
            raise ValueError(
                f'"{value}" has no unit: write "{number}ms" or "{number}s" '
                f"(or {number} without quotes for seconds)"
            )
        if unit not in _DURATION_UNITS:
            guess = _did_you_mean(unit, ["ms", "s", "min", "h"])
            raise ValueError(f'unknown unit "{unit}" in "{value}": use ms, s, min or h{guess}')
        total += Decimal(number) * _DURATION_UNITS[unit]
        pos = match.end()
    return float(total)


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of a duration: 0.2 -> ``"200ms"``, 90 -> ``"90s"``.

    ``parse_duration(format_duration(x)) == x`` for every finite x >= 0.
    """
    try:
        exact = Decimal(repr(float(seconds)))
    except InvalidOperation:  # pragma: no cover - inf/nan never get this far
        return str(seconds)
    if exact == 0:
        return "0s"
    if exact < 1:
        return f"{_plain(exact * 1000)}ms"
    if exact % 3600 == 0:
        return f"{_plain(exact / 3600)}h"
    if exact % 60 == 0:
        return f"{_plain(exact / 60)}min"
    return f"{_plain(exact)}s"


def _plain(number: Decimal) -> str:
    return format(number.normalize(), "f")  # 1E+2 -> "100"


# --------------------------------------------------------------------------- helpers


class _Invalid(Exception):
    """A value failed a check; the message says what was expected."""


def _close_match(word: str, choices: Iterable[str]) -> str | None:
    import difflib  # only a typo needs it: kept out of the daemon's start-up

    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    match = _close_match(word, choices)
    return f" (did you mean {match}?)" if match else ""


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(*parts: str) -> str:
    """A dotted key path, quoting parts that are not TOML bare keys: services."my app".watch."""
    return ".".join(p if _BARE_KEY.fullmatch(p) else _show(p) for p in parts)


def _show(value: object, limit: int = 60) -> str:
    """A value as TOML-ish text, for messages."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        escaped = "".join(
            c if c.isprintable() else c.encode("unicode_escape").decode() for c in escaped
        )
        text = f'"{escaped}"'
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(_show(v, limit) for v in value) + "]"
    elif isinstance(value, Mapping):
        inner = ", ".join(f"{_key(str(k))} = {_show(v, limit)}" for k, v in value.items())
        text = "{ " + inner + " }" if inner else "{}"
    elif hasattr(value, "isoformat"):
        text = cast(Any, value).isoformat()
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"


def _string(value: object, what: str = "a string") -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected {what}, got {_type_name(value)}")
    if "\0" in value:
        raise _Invalid("contains a NUL character")
    return value


def _path(value: object, base: str) -> str:
    text = _string(value, "a path (a string)")
    if not text:
        raise _Invalid("expected a path, got an empty string")
    if text.startswith("~"):
        raise _Invalid("~ is not expanded here: write the absolute path")
    return os.path.normpath(os.path.join(base, text))


def _paths(value: object, base: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise _Invalid(f"expected a list of paths, got {_type_name(value)}")
    if not items:
        raise _Invalid("expected at least one path to watch")
    result: list[str] = []
    for index, item in enumerate(items):
        try:
            path = _path(item, base)
        except _Invalid as e:
            raise _Invalid(f"item {index + 1}: {e}") from None
        if path not in result:
            result.append(path)
    return tuple(result)


def _globs(value: object, base: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise _Invalid(
            f'expected a list of gitignore-style patterns such as ["*.py"], got {_type_name(value)}'
        )
    result: list[str] = []
    for index, item in enumerate(items):
        if not isinstance(item, str) or not item.strip() or "\0" in item:
            raise _Invalid(
                f"item {index + 1}: expected a non-empty pattern (a string), got {_show(item)}"
            )
        result.append(item)
    return tuple(result)


def _argv(value: object, base: str) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            example = _show(shlex.split(value), limit=80)
        except ValueError:
            example = '["program", "arg"]'
        raise _Invalid(
            f"expected a list of strings, e.g. {example}: reloadd does not split strings "
            '(for a shell, write ["sh", "-c", "..."])'
        )
    if not isinstance(value, list):
        raise _Invalid(
            f'expected a list of strings such as ["program", "arg"], got {_type_name(value)}'
        )
    if not value:
        raise _Invalid("expected a program to run, got an empty list")
    for index, item in enumerate(value):
        if isinstance(item, (list, dict)):
            raise _Invalid(f"item {index + 1} is {_type_name(item)}: every argument is a string")
        if not isinstance(item, str):
            raise _Invalid(
                f"item {index + 1} is {_type_name(item)}: every argument must be a string "
                f"(write {_show(_show(item))})"
            )
        if "\0" in item:
            raise _Invalid(f"item {index + 1} contains a NUL character")
    if not value[0]:
        raise _Invalid("the program (item 1) is an empty string")
    return tuple(cast("list[str]", value))


def _duration(value: object, base: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as e:
        raise _Invalid(str(e)) from None


def _positive_duration(value: object, base: str) -> float:
    seconds = _duration(value, base)
    if seconds <= 0:
        raise _Invalid("must be more than 0")
    return seconds


def _choice(*choices: str) -> Callable[[object, str], str]:
    def convert(value: object, base: str) -> str:
        listed = ", ".join(f'"{c}"' for c in choices)
        if not isinstance(value, str):
            raise _Invalid(f"expected one of {listed} (a string), got {_type_name(value)}")
        if value.lower() not in choices:
            raise _Invalid(f"expected one of {listed}{_did_you_mean(value.lower(), choices)}")
        return value.lower()

    return convert


_SIGNAL_NAMES = sorted(s.name[3:] for s in Signals if s.name.startswith("SIG"))


def _signal(value: object, base: str) -> Signals:
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return Signals(value)
        except ValueError:
            raise _Invalid(f"no signal has the number {value}") from None
    if not isinstance(value, str):
        raise _Invalid(f'expected a signal name such as "HUP" or "SIGHUP", got {_type_name(value)}')
    name = value.strip().upper()
    bare = name[3:] if name.startswith("SIG") else name
    if bare in _SIGNAL_NAMES:
        return Signals["SIG" + bare]
    if bare.isdigit():
        raise _Invalid("write a signal number without quotes, or better, its name")
    guess = _close_match(bare, _SIGNAL_NAMES)
    hint = f" (did you mean SIG{guess}?)" if guess else ' (e.g. "HUP", "USR1", "USR2")'
    raise _Invalid(f"unknown signal{hint}")


_ID_MAX = 2**32 - 2  # (uid_t)-1 means "unchanged"


def _account(value: object, kind: str) -> str | int:
    """A user or group: a name that must exist, or a numeric id (an int or a digit string)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= _ID_MAX:
            raise _Invalid(f"a {kind} id must be between 0 and {_ID_MAX}")
        return value
    if not isinstance(value, str):
        raise _Invalid(f"expected a {kind} name or numeric id, got {_type_name(value)}")
    if value.isdigit():
        return _account(int(value), kind)
    lookup: Callable[[str], object] = pwd.getpwnam if kind == "user" else grp.getgrnam
    try:
        lookup(value)
    except (KeyError, UnicodeEncodeError, ValueError):
        try:
            names = (
                [p.pw_name for p in pwd.getpwall()]
                if kind == "user"
                else [g.gr_name for g in grp.getgrall()]
            )
        except OSError:  # pragma: no cover - NSS trouble
            names = []
        raise _Invalid(f"no such {kind} {value!r}{_did_you_mean(value, names)}") from None
    return value


def _user(value: object, base: str) -> str:
    return str(_account(value, "user"))


def _group(value: object, base: str) -> str:
    return str(_account(value, "group"))


_UNIT_SUFFIXES = (
    ".service",
    ".socket",
    ".device",
    ".mount",
    ".automount",
    ".swap",
    ".target",
    ".path",
    ".timer",
    ".slice",
    ".scope",
)
_UNIT_NAME = re.compile(r"[A-Za-z0-9:_.\\@-]+")


def _unit(value: object, base: str) -> str:
    name = _string(value, 'a systemd unit name such as "api.service"')
    if not _UNIT_NAME.fullmatch(name):
        raise _Invalid("not a systemd unit name (letters, digits and : _ . \\ @ - only)")
    if not name.endswith(_UNIT_SUFFIXES):
        name += ".service"
    stem = name.rsplit(".", 1)[0]
    if stem.endswith("@"):
        raise _Invalid(f"a template unit needs an instance, e.g. {stem}main.{name.rsplit('.')[-1]}")
    return name


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _environment(value: object, base: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise _Invalid(
            f'expected a table of strings, e.g. environment = {{ PORT = "8000" }}, '
            f"got {_type_name(value)}"
        )
    pairs: list[tuple[str, str]] = []
    for name, item in value.items():
        if not _ENV_NAME.fullmatch(name):
            raise _Invalid(f"{_show(name)} is not a valid variable name (letters, digits, _)")
        if not isinstance(item, str):
            raise _Invalid(
                f"{name} is {_type_name(item)}: values must be strings "
                f"(write {name} = {_show(_show(item))})"
            )
        if "\0" in item:
            raise _Invalid(f"{name} contains a NUL character")
        pairs.append((name, item))
    return tuple(sorted(pairs))


Converter = Callable[[object, str], object]

_SERVICE_KEYS: dict[str, Converter] = {
    "watch": _paths,
    "include": _globs,
    "exclude": _globs,
    "command": _argv,
    "pidfile": _path,
    "unit": _unit,
    "action": _choice("signal", "restart", "exec"),
    "signal": _signal,
    "scope": _choice("main", "group"),
    "exec": _argv,
    "exec_timeout": _positive_duration,
    "check": _argv,
    "check_timeout": _positive_duration,
    "debounce": _duration,
    "max_delay": _duration,
    "min_interval": _duration,
    "backend": _choice("auto", "inotify", "poll"),
    "poll_interval": _positive_duration,
    "restart": _choice("no", "on-failure", "always"),
    "restart_delay": _duration,
    "stop_signal": _signal,
    "stop_timeout": _positive_duration,
    "user": _user,
    "group": _group,
    "working_directory": _path,
    "environment": _environment,
    "expect_user": _user,
}
_TARGET_KEYS = ("command", "pidfile", "unit")
_PER_SERVICE_ONLY = ("watch", *_TARGET_KEYS)
_SUPERVISION_KEYS = ("restart", "restart_delay", "stop_signal", "stop_timeout")
_LATER_KEYS = ("compare", "verify", "max_failures")
_ALIASES = {
    "cmd": "command",
    "argv": "command",
    "path": "watch",
    "paths": "watch",
    "dirs": "watch",
    "env": "environment",
    "cwd": "working_directory",
    "workdir": "working_directory",
    "chdir": "working_directory",
    "directory": "working_directory",
    "ignore": "exclude",
    "ignores": "exclude",
    "pid_file": "pidfile",
    "reload_signal": "signal",
    "kill_signal": "stop_signal",
    "delay": "debounce",
    "timeout": "check_timeout",
}
_SECTIONS = ("daemon", "defaults", "services")
_DAEMON_KEYS = ("socket", "socket_group", "socket_mode", "log_level", "watch_config", "include")
_SERVICE_NAME = re.compile(r"[A-Za-z0-9_.@][A-Za-z0-9_.@-]*")


def _unknown_key(key: str, known: Sequence[str], where: str) -> str:
    if key in _LATER_KEYS:
        return "not supported by this version of reloadd"
    alias = _ALIASES.get(key.lower())
    if alias in known:
        return f"unknown key (did you mean {alias}?)"
    guess = _did_you_mean(key, known)
    if guess:
        return f"unknown key{guess}"
    return f"unknown key; {where} accepts: {', '.join(known)}"


# --------------------------------------------------------------------------- loading


class _Collector:
    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.warnings: list[str] = []
        self.files: list[str] = []
        self.lines: dict[str, dict[tuple[str, ...], int]] = {}

    def add(
        self,
        file: str,
        key: tuple[str, ...] | None,
        message: str,
        value: object = dataclasses.MISSING,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        shown = None if value is dataclasses.MISSING else _show(value)
        dotted = None
        if key is not None:
            dotted = _key(*key)
            if line is None:
                line = self._line_of(file, key)
        self.problems.append(Problem(file, dotted, message, line, column, shown))

    def _line_of(self, file: str, key: tuple[str, ...]) -> int | None:
        index = self.lines.get(file, {})
        for end in range(len(key), 0, -1):
            if key[:end] in index:
                return index[key[:end]]
        return None


# A line scanner that maps key paths to the line that sets them, so that problems found in
# the parsed document can point at a line. Best effort: TOML's own parser keeps no
# positions; a line it cannot place simply gets none.
_KEY_PART = r'\s*(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|\'[^\']*\')\s*'
_KEY_PATH = rf"{_KEY_PART}(?:\.{_KEY_PART})*"
_HEADER_LINE = re.compile(rf"\s*\[\[?({_KEY_PATH})\]\]?\s*(?:#.*)?$")
_ASSIGN_LINE = re.compile(rf"({_KEY_PATH})=")
_KEY_PARTS = re.compile(_KEY_PART)


def _split_key_path(text: str) -> tuple[str, ...]:
    parts = []
    for match in _KEY_PARTS.finditer(text):
        part = match.group().strip()
        if part.startswith('"'):
            try:
                part = tomllib.loads(f"k = {part}")["k"]
            except tomllib.TOMLDecodeError:
                part = part[1:-1]
        elif part.startswith("'"):
            part = part[1:-1]
        parts.append(part)
    return tuple(parts)


def _index_lines(text: str) -> dict[tuple[str, ...], int]:
    index: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER_LINE.match(line)
        if header:
            table = _split_key_path(header[1])
            index.setdefault(table, number)
            continue
        assign = _ASSIGN_LINE.match(line)
        if assign:
            path = table + _split_key_path(assign[1])
            for end in range(len(table) + 1, len(path) + 1):
                index.setdefault(path[:end], number)
    return index


_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


def _key_on_line(text: str, line: int | None) -> tuple[str, ...] | None:
    """The key path that a line sets or opens, to name it in a syntax error there."""
    if line is None:
        return None
    found = [key for key, number in _index_lines(text).items() if number == line]
    return max(found, key=len) if found else None


_LEADING_ZERO = re.compile(r"=\s*[+-]?0\d")


def _syntax_hint(text: str, line: int | None) -> str:
    """A hint for TOML mistakes whose parser message does not name the cause."""
    lines = text.splitlines()
    if line is None or not 0 < line <= len(lines):
        return ""
    if _LEADING_ZERO.search(lines[line - 1]):
        return ' (a number with a leading zero is not valid TOML; for a mode write "0660")'
    return ""


class NotRegular(Exception):
    """A path names something other than a regular file (args[0]: what it is)."""


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return f"file type 0o{stat.S_IFMT(mode):o}"


def read_regular(path: str, limit: int) -> tuple[bytes, os.stat_result]:
    """Up to ``limit`` bytes of the regular file ``path`` (symlinks followed), and its stat
    as opened: for the config files and for pidfiles.

    Opened with O_NONBLOCK, so a FIFO (or a device) at the path cannot block the open
    until a writer appears, then fstat'ed: anything but a regular file is refused with
    ``NotRegular`` before a byte is read (O_NONBLOCK does not affect regular files).
    Raises OSError when it cannot be opened or read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegular(_file_kind(st.st_mode))
        chunks: list[bytes] = []
        left = limit
        while left > 0:
            chunk = os.read(fd, left)
            chunks.append(chunk)
            if len(chunk) < left:  # a regular file reads short only at its end
                break
            left -= len(chunk)
        return b"".join(chunks), st
    finally:
        os.close(fd)


def _read_toml(path: str, out: _Collector) -> dict[str, Any] | None:
    """The parsed document, or None after recording why it cannot be had."""
    try:
        data = read_regular(path, MAX_FILE_SIZE + 1)[0]
    except NotRegular as e:
        what = e.args[0]
        out.add(path, None, f"the config path is not a regular file ({what}); is it the right one?")
        return None
    except OSError as e:
        reason = e.strerror or str(e)
        hint = ""
        if isinstance(e, FileNotFoundError):
            hint = " (reloadd -c FILE names another file)"
        out.add(path, None, f"cannot read the config file: {reason}{hint}")
        return None
    out.files.append(path)
    if len(data) > MAX_FILE_SIZE:
        out.add(path, None, f"larger than {MAX_FILE_SIZE >> 20} MiB; is this the right file?")
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        before = data[: e.start]
        line = before.count(b"\n") + 1
        column = e.start - (before.rfind(b"\n") + 1) + 1
        out.add(
            path,
            None,
            f"not UTF-8 text (byte 0x{data[e.start]:02x}); is this the right file?",
            line=line,
            column=column,
        )
        return None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # tomllib puts the position in the message; newer versions also have attributes
        message = str(e)
        toml_line: int | None = getattr(e, "lineno", None)
        toml_column: int | None = getattr(e, "colno", None)
        match = _TOML_POSITION.search(message)
        if match:
            toml_line, toml_column = int(match[1]), int(match[2])
            message = message[: match.start()]
        out.add(
            path,
            _key_on_line(text, toml_line),
            f"invalid TOML: {message}{_syntax_hint(text, toml_line)}",
            line=toml_line,
            column=toml_column,
        )
        return None
    out.lines[path] = _index_lines(text)
    return doc


def _check_sections(doc: Mapping[str, Any], path: str, out: _Collector, dropin: bool) -> None:
    for key, value in doc.items():
        if dropin and key in ("daemon", "defaults"):
            out.add(
                path,
                (key,),
                f"a drop-in may hold only [services.*] tables; move [{key}] to the main file",
            )
        elif key not in _SECTIONS:
            if key in _SERVICE_KEYS:
                hint = "; service keys go under [services.NAME] or [defaults]"
                out.add(path, (key,), f"unknown top-level key{hint}")
            elif key in _DAEMON_KEYS:
                out.add(path, (key,), "unknown top-level key; put it under [daemon]")
            else:
                out.add(path, (key,), _unknown_key(key, _SECTIONS, "the top level"))
        elif not isinstance(value, dict):
            out.add(path, (key,), f"expected a table [{key}], got {_type_name(value)}", value)


def _convert_keys(
    table: Mapping[str, Any],
    prefix: tuple[str, ...],
    path: str,
    out: _Collector,
    where: str,
    forbidden: Sequence[str] = (),
) -> tuple[dict[str, object], set[str]]:
    """Convert each known service key; returns (good values, keys that were present but bad)."""
    values: dict[str, object] = {}
    bad: set[str] = set()
    base = os.path.dirname(path)
    for key, raw in table.items():
        dotted = (*prefix, key)
        if key in forbidden:
            out.add(
                path,
                dotted,
                "not allowed in [defaults]: watch, command, pidfile and unit are set per "
                "service, in each [services.NAME]",
            )
            continue
        convert = _SERVICE_KEYS.get(key)
        if convert is None:
            out.add(path, dotted, _unknown_key(key, list(_SERVICE_KEYS), where))
            continue
        try:
            values[key] = convert(raw, base)
        except _Invalid as e:
            bad.add(key)
            out.add(path, dotted, str(e), raw)
    return values, bad


def _socket_mode(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        digits = str(value)
        example = f"0{digits}" if all(c in "01234567" for c in digits) else "0660"
        raise _Invalid(
            f'expected an octal string: quote it, socket_mode = "{example}" '
            "(TOML reads a bare number as decimal)"
        )
    text = _string(value, 'an octal string such as "0660"')
    digits = text[2:] if text.lower().startswith("0o") else text
    if not digits or not all(c in "01234567" for c in digits):
        raise _Invalid('expected an octal mode such as "0660" or "0666"')
    mode = int(digits, 8)
    if mode > 0o777:
        raise _Invalid("a socket mode is at most 0777 (permission bits only)")
    return mode


def _daemon(table: Mapping[str, Any], main: str, out: _Collector) -> tuple[DaemonConfig, bool]:
    """The [daemon] section; the bool says whether `include` could be used."""
    base = os.path.dirname(main)
    stem = os.path.splitext(os.path.basename(main))[0]
    values: dict[str, Any] = {"include": os.path.join(base, f"{stem}.d")}
    include_ok = True
    for key, raw in table.items():
        dotted = ("daemon", key)
        try:
            if key == "socket":
                path = _path(raw, base)
                if len(os.fsencode(path)) > _SUN_PATH_MAX:
                    raise _Invalid(
                        f"too long for a Unix socket ({len(os.fsencode(path))} bytes; "
                        f"the limit is {_SUN_PATH_MAX})"
                    )
                values[key] = path
            elif key == "socket_group":
                values[key] = _account(raw, "group")
            elif key == "socket_mode":
                values[key] = _socket_mode(raw)
            elif key == "log_level":
                values[key] = _choice("debug", "info", "warning", "error")(raw, base)
            elif key == "watch_config":
                if not isinstance(raw, bool):
                    raise _Invalid(f"expected true or false, got {_type_name(raw)}")
                values[key] = raw
            elif key == "include":
                values[key] = _path(raw, base)
            else:
                out.add(main, dotted, _unknown_key(key, _DAEMON_KEYS, "[daemon]"))
        except _Invalid as e:
            include_ok = include_ok and key != "include"
            out.add(main, dotted, str(e), raw)
    return DaemonConfig(**values), include_ok


def _dropin_files(directory: str, main: str, out: _Collector) -> list[str]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        out.add(main, ("daemon", "include"), f"{directory} is not a directory")
        return []
    except OSError as e:
        out.add(main, ("daemon", "include"), f"cannot read {directory}: {e.strerror or e}")
        return []
    files = []
    for name in sorted(names):
        full = os.path.join(directory, name)
        if name.startswith(".") or not name.endswith(".toml"):
            continue
        try:
            mode = os.stat(full).st_mode  # a symlink to a regular file is one
        except OSError:
            files.append(full)  # a dangling link, a race: reading it reports why
            continue
        if stat.S_ISDIR(mode):
            continue
        if not stat.S_ISREG(mode):
            # a FIFO would block the read until a writer appears; a device, forever
            out.warnings.append(f"{full} is not a regular file ({_file_kind(mode)}); skipped")
            continue
        files.append(full)
    return files


@dataclass
class _RawService:
    name: str
    file: str
    table: dict[str, Any]


def _collect_services(
    doc: Mapping[str, Any], path: str, out: _Collector, seen: dict[str, str]
) -> list[_RawService]:
    services = doc.get("services", {})
    if not isinstance(services, dict):
        return []  # reported by _check_sections
    found = []
    for name, table in services.items():
        dotted = ("services", name)
        if not isinstance(table, dict):
            out.add(
                path,
                dotted,
                f"expected a table [services.{name}] with the service's keys, "
                f"got {_type_name(table)}",
                table,
            )
            continue
        if not _SERVICE_NAME.fullmatch(name):
            out.add(
                path,
                dotted,
                "invalid service name: use letters, digits and _ . @ -, not starting with - "
                "(it is typed on the reloadctl command line)",
            )
            continue
        if name in seen:
            out.add(
                path,
                dotted,
                f"service {name!r} is defined twice: in {seen[name]} and in {path}",
            )
            continue
        seen[name] = path
        found.append(_RawService(name, path, table))
    return found


def _check_service(
    raw: _RawService,
    values: dict[str, Any],
    bad: set[str],
    from_defaults: set[str],
    out: _Collector,
) -> bool:
    """Cross-key rules; returns whether the service is usable."""
    ok = not bad
    key = ("services", raw.name)
    path = raw.file
    targets = [k for k in _TARGET_KEYS if k in values or k in bad]
    if len(targets) == 0:
        ok = False
        out.add(path, key, "no target: set exactly one of command, pidfile or unit")
    elif len(targets) > 1:
        ok = False
        named = ", ".join(targets[:-1]) + f" and {targets[-1]}"
        out.add(
            path,
            key,
            f"{named} are {'both' if len(targets) == 2 else 'all'} set: a service has exactly "
            "one target (command, pidfile or unit)",
        )
    if "watch" not in values and "watch" not in bad:
        ok = False
        out.add(path, key, 'no watch: set watch = ["/path/to/dir-or-file", ...]')
    action = values.get("action", "signal")
    if "action" in bad:
        return False
    if action == "restart" and "pidfile" in values:
        ok = False
        out.add(
            path,
            ("services", raw.name, "action"),
            "restart needs a command or unit target: reloadd did not start a pidfile "
            'process and cannot start it again; use action = "signal" or "exec"'
            + (" (action is from [defaults])" if "action" in from_defaults else ""),
            action,
        )
    if action == "exec" and "exec" not in values and "exec" not in bad:
        ok = False
        out.add(
            path,
            ("services", raw.name, "action"),
            'needs exec = ["program", "arg", ...], the command that does the reload',
            action,
        )
    if "exec" in values and action != "exec":
        ok = False
        origin = " (from [defaults])" if "exec" in from_defaults else ""
        out.add(
            path,
            ("services", raw.name, "exec"),
            f'set{origin} but action = "{action}": add action = "exec" or remove exec',
        )
    if "debounce" not in bad and "max_delay" not in bad:
        debounce = values.get("debounce", ServiceSpec.debounce)
        max_delay = values.get("max_delay", ServiceSpec.max_delay)
        if debounce > max_delay:
            ok = False
            notes = [
                f"{k} from [defaults]" for k in ("debounce", "max_delay") if k in from_defaults
            ]
            note = f" ({', '.join(notes)})" if notes else ""
            out.add(
                path,
                ("services", raw.name, "debounce"),
                f"debounce ({format_duration(debounce)}) must not exceed max_delay "
                f"({format_duration(max_delay)}){note}",
            )
    if "command" not in values and "command" not in bad:
        for k in _SUPERVISION_KEYS:
            if k in raw.table:
                ok = False
                out.add(
                    path,
                    ("services", raw.name, k),
                    f"only applies to a command target: reloadd does not supervise a "
                    f"{targets[0] if targets else 'pidfile or unit'} target",
                )
    return ok


def _build_service(
    raw: _RawService,
    defaults: dict[str, object],
    defaults_bad: set[str],
    out: _Collector,
) -> ServiceSpec | None:
    own, bad = _convert_keys(
        raw.table, ("services", raw.name), raw.file, out, f"[services.{raw.name}]"
    )
    values: dict[str, Any] = {k: v for k, v in defaults.items() if k not in raw.table}
    values.update(own)
    from_defaults = {k for k in defaults if k not in raw.table}
    # a key that was bad in [defaults] and not overridden is bad here too (reported once)
    bad |= {k for k in defaults_bad if k not in raw.table}
    if not _check_service(raw, values, bad, from_defaults, out):
        return None
    return ServiceSpec(name=raw.name, source=raw.file, **values)


def _check_watch_paths(specs: list[ServiceSpec], out: _Collector) -> list[ServiceSpec]:
    """Stat every watch path (warnings), then refuse services that would run code as root
    over a tree others can write (issue 8). The stats run in daemon threads, all at once,
    each given up on after PROBE_TIMEOUT: a hung mount must not hang validation."""
    calls = {p: shared_call(("stat", p), os.stat, p) for spec in specs for p in spec.watch}
    safe = []
    for spec in specs:
        key = _key("services", spec.name, "watch")
        hung = []
        for path in spec.watch:
            error = _stat_error(calls[path])
            if error is None:
                continue
            if isinstance(error, FileNotFoundError):
                out.warnings.append(f"{key}: {path} does not exist yet; the service waits for it")
            elif isinstance(error, TimeoutError):
                hung.append(path)
                out.warnings.append(
                    f"{key}: {path}: stat did not answer in {PROBE_TIMEOUT:g}s (a hung network "
                    "or FUSE mount?); the service starts and polls it until it answers"
                )
            else:
                out.warnings.append(
                    f"{key}: {path} cannot be checked ({error.strerror or error}); "
                    "the service waits for it"
                )
        runs = _root_runs(spec)
        if runs and hung:
            unsafe: str | None = (
                f"runs {' and '.join(runs)} as root over {hung[0]}, which did not answer a "
                f"stat in {PROBE_TIMEOUT:g}s (a hung mount?), so who can write it cannot be "
                f'checked. Set user = "<the app\'s user>" to run '
                f'{"them" if len(runs) > 1 else "it"} as that user, or user = "root" if root '
                "is really meant"
            )
        else:
            unsafe = root_over_writable_tree(spec)
        if unsafe is not None:  # issue 8: the app's user must not be able to make root run code
            runner = next(k for k in _RUNNER_KEYS if getattr(spec, k) is not None)
            out.add(spec.source, ("services", spec.name, runner), unsafe)
            continue
        safe.append(spec)
    return safe


def _stat_error(call: Call) -> OSError | None:
    """What the stat ``call`` raised, TimeoutError when it did not answer in time, or
    None when it answered."""
    if not call.wait():
        return TimeoutError()
    exc = call.future.exception()
    if exc is None or isinstance(exc, OSError):
        return exc
    raise exc


def load(path: str | os.PathLike[str]) -> Config:
    """Read, validate and return the configuration, or raise ConfigError listing every problem.

    Example:
        >>> config = load("/etc/reloadd.toml")  # doctest: +SKIP
        >>> config.service("api").debounce  # doctest: +SKIP
        0.2
    """
    main = os.path.abspath(os.fspath(path))
    out = _Collector()
    doc = _read_toml(main, out)
    if doc is None and not out.files:
        raise ConfigError(out.problems)  # the main file itself cannot be read
    doc = doc or {}
    _check_sections(doc, main, out, dropin=False)

    daemon_table = doc.get("daemon", {})
    daemon, include_ok = _daemon(daemon_table if isinstance(daemon_table, dict) else {}, main, out)

    defaults_table = doc.get("defaults", {})
    defaults, defaults_bad = _convert_keys(
        defaults_table if isinstance(defaults_table, dict) else {},
        ("defaults",),
        main,
        out,
        "[defaults]",
        forbidden=_PER_SERVICE_ONLY,
    )

    seen: dict[str, str] = {}
    raws = _collect_services(doc, main, out, seen)
    if include_ok:
        for dropin in _dropin_files(daemon.include, main, out):
            dropin_doc = _read_toml(dropin, out)
            if dropin_doc is None:
                continue
            _check_sections(dropin_doc, dropin, out, dropin=True)
            raws.extend(_collect_services(dropin_doc, dropin, out, seen))

    services = []
    for raw in raws:
        spec = _build_service(raw, defaults, defaults_bad, out)
        if spec is not None:
            services.append(spec)
    services = _check_watch_paths(services, out)
    if out.problems:
        raise ConfigError(out.problems)
    if not services:
        out.warnings.append(
            f"no services are defined: add a [services.NAME] table to {main} "
            f"or a file in {daemon.include}"
        )
    return Config(
        path=main,
        daemon=daemon,
        services=tuple(services),
        files=tuple(out.files),
        warnings=tuple(out.warnings),
    )


# --------------------------------------------------------------------------- summary


def _describe_action(spec: ServiceSpec) -> str:
    if spec.action == "restart":
        return "restart"
    if spec.action == "exec":
        assert spec.exec is not None
        return f"exec {shlex.join(spec.exec)}"
    whom = "main pid" if spec.scope == "main" else "process group"
    return f"signal {spec.signal.name} -> {whom}"


def summary(config: Config) -> list[str]:
    """One human line per service, for ``reloadd --check``.

    Example:
        ``api: watch /srv/api/app (+1 more); command gunicorn app:wsgi;
        on change: signal SIGHUP -> main pid; debounce 200ms``
    """
    lines = []
    for spec in config.services:
        watch = spec.watch[0] + (f" (+{len(spec.watch) - 1} more)" if len(spec.watch) > 1 else "")
        if spec.command is not None:
            target = f"command {shlex.join(spec.command)}"
        elif spec.pidfile is not None:
            target = f"pidfile {spec.pidfile}"
        else:
            target = f"unit {spec.unit}"
        parts = [f"{spec.name}: watch {watch}", target]
        if spec.check is not None:
            parts.append(f"check {shlex.join(spec.check)}")
        parts.append(f"on change: {_describe_action(spec)}")
        parts.append(f"debounce {format_duration(spec.debounce)}")
        lines.append("; ".join(parts))
    return lines


# --------------------------------------------------------------------------- trust

# Tests and development trees only: skips the root-ownership check of the config files.
INSECURE_CONFIG_ENV = "RELOADD_INSECURE_CONFIG"


def check_trusted(path: str | os.PathLike[str]) -> str | None:
    """Why a user other than root could change ``path``, or None when only root can.

    The rule is ``trust.writers``' (sshd's StrictModes, with systemd's reading of group
    root): the file and every directory above it must be owned by root and not writable by
    others or by a group other than root's; a root-owned sticky directory above it
    (``/tmp``) is fine, since others cannot replace what root put there. A symlink on the
    way must be root's too, and the chain of what it points to is checked as well. A path
    that does not exist is judged by the directory it would be created in.

    Example:
        >>> check_trusted("/etc/passwd") is None  # doctest: +SKIP
        True
        >>> check_trusted("/tmp/reloadd.toml")  # doctest: +SKIP
        '/tmp/reloadd.toml has mode 0646: others can write it (fix: chmod go-w /tmp/reloadd.toml)'
    """
    named = os.path.abspath(os.fspath(path))
    found = trust.writers(named)
    if found.entries:
        entry = found.entries[0]
        if entry.user is not None:
            owner = trust.user_name(entry.user)
            why = f"is owned by {owner}, not root (fix: chown root {entry.path})"
        else:
            # who the rule counts: group root's write bit is no one else's (trust.judge)
            if entry.group is None:
                who = "others"
            else:
                who = f"group {trust.group_name(entry.group)}"
                who += " and others" if entry.anyone else ""
            why = f"has mode {entry.mode:04o}: {who} can write it (fix: chmod go-w {entry.path})"
        if entry.path == named:
            return f"{named} {why}"
        return f"{named}: {entry.kind} {entry.path} {why}"
    if found.errors:
        here, error = found.errors[0]
        return f"{named}: cannot check {here}: {error}"
    return None


def trust_problems(
    config: Config, *, euid: int | None = None, environ: Mapping[str, str] | None = None
) -> list[str]:
    """Files of ``config`` (main, drop-in dir, drop-ins) that a non-root user could change.

    Empty unless reloadd runs as root: then anyone who can write one of them could make
    root run commands (``command``, ``check``, ``exec``). ``RELOADD_INSECURE_CONFIG=1``
    turns the check off, for tests and development trees only.
    """
    euid = os.geteuid() if euid is None else euid
    environ = os.environ if environ is None else environ
    if euid != 0 or environ.get(INSECURE_CONFIG_ENV) == "1":
        return []
    main, *dropins = config.files or (config.path,)
    paths = [main]
    if os.path.isdir(config.daemon.include):
        paths.append(config.daemon.include)
    paths.extend(dropins)
    problems = [check_trusted(p) for p in paths]
    return [p for p in problems if p is not None]


# --------------------------------------------------------------- root over a writable tree

_RUNNER_KEYS = ("command", "check", "exec")


def root_over_writable_tree(spec: ServiceSpec, *, euid: int | None = None) -> str | None:
    """Why running ``spec``'s commands as root would let a non-root user run code as root.

    DESIGN.md: running as root, reloadd never runs a ``command``, ``check`` or ``exec`` as
    root over a tree that a non-root user can write, unless the service names ``user``
    explicitly (``user = "root"`` when that is really meant). A tree is writable by others
    when ``trust.writers`` finds someone besides root who could change its root (owners,
    group write except root's group, write by everyone, of it and every directory above
    it; symlinks on the way followed; a root-owned sticky directory above it, such as
    /tmp, is fine; a watch path that does not exist yet is judged by the nearest directory
    that does), or when anything in it (directories, files, symlinks; symlinks inside are
    not followed) is owned by a non-root user or writable by a group other than root's or
    by everyone (sticky or not: new files can still be added). None when it is safe.

    Example:
        >>> root_over_writable_tree(spec)  # doctest: +SKIP
        'runs check as root over /srv/api: /srv/api/app is owned by www-data (uid 33), ...'
    """
    runs = _root_runs(spec, euid=euid)
    if not runs:
        return None
    for path in spec.watch:
        try:
            why = _tree_writer(path)
        except _Unanswered as hung:
            return (
                f"runs {' and '.join(runs)} as root over {path}, but {hung} did not answer "
                f"a stat in {PROBE_TIMEOUT:g}s (a hung mount?), so who can write it cannot "
                f'be checked. Set user = "<the app\'s user>" to run '
                f'{"them" if len(runs) > 1 else "it"} as that user, or user = "root" if '
                "root is really meant"
            )
        if why is not None:
            return (
                f"runs {' and '.join(runs)} as root over {path}, but {why}: that user could "
                f'make root run code. Set user = "<the app\'s user>" to run '
                f'{"them" if len(runs) > 1 else "it"} as that user, or user = "root" if '
                "root is really meant"
            )
    return None


def _root_runs(spec: ServiceSpec, *, euid: int | None = None) -> list[str]:
    """The keys (command, check, exec) whose commands reloadd would run as root."""
    euid = os.geteuid() if euid is None else euid
    if euid != 0 or spec.user is not None:
        return []
    return [k for k in _RUNNER_KEYS if getattr(spec, k) is not None]


def _first_entry(path: str) -> None:
    with os.scandir(path) as entries:
        next(entries, None)


class _Unanswered(Exception):
    """A network or FUSE mount below a watched tree did not answer (the message names it)."""


def _tree_writer(path: str) -> str | None:
    """The first entry of the tree at ``path``, or on the way to it, that a non-root user
    could change (described), or None. Raises ``_Unanswered`` for a network or FUSE mount
    below it that does not answer a stat within PROBE_TIMEOUT: the walk would hang there
    (a mount that hangs later, in the middle of the walk, can still stall it)."""
    found = trust.writers(path)
    if found.entries:
        return found.entries[0].describe()
    real = os.path.realpath(path)
    if not os.path.isdir(real):
        return None  # a file, or not there yet (then judged by who can create it, above)
    for point, fstype in sorted(remote_mounts_below(real).items()):
        # listed, not stat'ed: a stat can be answered from an attribute cache while the
        # server is gone, and the walk below lists the directory
        if not shared_call(("list", point), _first_entry, point).wait():
            raise _Unanswered(f"{point} (a {fstype} mount below it)")
    for dirpath, dirnames, filenames in os.walk(real, onerror=None, followlinks=False):
        for name in (*dirnames, *filenames):
            entry_path = os.path.join(dirpath, name)
            try:
                st = os.lstat(entry_path)
            except OSError:
                continue  # vanished meanwhile: nothing to judge
            kind = stat.S_IFMT(st.st_mode)
            if kind not in (stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK):
                continue  # sockets, fifos, devices: no code is loaded from them
            entry = trust.judge(entry_path, st)  # as the end: sticky or not, files can be added
            if entry is not None:
                return entry.describe()
    return None
