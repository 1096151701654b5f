"""``reloadd``: run the daemon in the foreground (or ``--detach``), or ``--check`` a config.

Exit codes: 0 after a graceful stop or a valid ``--check``; 1 for a bad config or a
failure to start (one clear line per problem on stderr, a traceback only with --debug).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from reloadd import __version__
from reloadd.config import Config, ConfigError, load, summary, trust_problems

DEFAULT_CONFIG = "/etc/reloadd.toml"

# sd-daemon(3) priority prefixes for stderr lines read by journald
_JOURNAL_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _JOURNAL_PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines() or [""])


def setup_logging(level: str, stream: TextIO | None = None) -> None:
    """Log to stderr; under journald (JOURNAL_STREAM) with <N> prefixes, no timestamp."""
    stream = stream or sys.stderr
    if hasattr(stream, "reconfigure"):
        # a path with undecodable bytes must never kill a log line
        stream.reconfigure(errors="backslashreplace", line_buffering=True)
    handler = logging.StreamHandler(stream)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%d %H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="reloadd",
        description="Watch the files of long-running servers and reload them.",
    )
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="config file (%(default)s)")
    p.add_argument("--check", action="store_true", help="validate the config and exit")
    p.add_argument("--debug", action="store_true", help="debug logging; tracebacks on errors")
    p.add_argument("--detach", action="store_true", help="run in the background (no systemd)")
    p.add_argument("--pidfile", help="with --detach: write the daemon's pid here (locked)")
    p.add_argument(
        "--log-file", help="with --detach: append logs here (default: /var/log/reloadd.log)"
    )
    p.add_argument("--version", action="version", version=f"reloadd {__version__}")
    return p


def _load(path: str) -> Config | None:
    try:
        return load(path)
    except ConfigError as exc:
        # logging is not set up yet: under journald, mark these lines as errors ourselves
        prefix = "<3>" if os.environ.get("JOURNAL_STREAM") else ""
        for problem in exc.problems:
            print(f"{prefix}reloadd: {problem}", file=sys.stderr)
        return None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = _load(args.config)
    if config is None:
        return 1
    if args.check or args.detach:
        # the foreground daemon refuses these itself (Daemon.run); --check must report
        # them, and --detach must refuse before it forks away from the terminal
        problems = trust_problems(config)
        for problem in problems:
            print(f"reloadd: refusing this config: {problem}", file=sys.stderr)
        if problems:
            return 1
    if args.check:
        for warning in config.warnings:
            print(f"reloadd: warning: {warning}", file=sys.stderr)
        for line in summary(config):
            print(line)
        n = len(config.services)
        print(f"{config.path}: OK, {n} service{'s' if n != 1 else ''}")
        return 0
    if args.detach:
        return _detached(config, args)
    setup_logging("debug" if args.debug else config.daemon.log_level)
    return _run(config, args.debug)


def _without_tls() -> None:
    """Keep OpenSSL out of the daemon: reloadd speaks TLS nowhere, and asyncio imports
    ``ssl`` only to offer it, which maps libssl and libcrypto into a long-running root
    process (4.5 MiB of RSS, about 5 ms of start-up). An entry of None in sys.modules
    makes ``import ssl`` fail, and asyncio then runs as on a Python built without ssl.
    Only the daemon process does this (``reloadctl``, ``--check`` and tests do not)."""
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]


def _run(config: Config, debug: bool) -> int:
    _without_tls()
    import asyncio

    from reloadd.daemon import Daemon

    # The modules and the config live as long as the daemon: take them out of the cyclic
    # collector's view, so the collections that building large watch tables triggers do
    # not traverse them again and again (about 3 ms of start-up on a 100k-file tree).
    gc.freeze()

    try:
        return asyncio.run(Daemon(config).run())
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if debug:
            raise
        logging.getLogger("reloadd").critical("reloadd failed: %s", exc)
        return 1


def _detached(config: Config, args: argparse.Namespace) -> int:
    """Double fork with python-daemon; the pidfile is written once running, and locked."""
    import daemon
    from daemon.pidfile import TimeoutPIDLockFile

    if not args.pidfile:
        print("reloadd: --detach needs --pidfile PATH", file=sys.stderr)
        return 1
    pidfile = os.path.abspath(args.pidfile)
    lock = TimeoutPIDLockFile(pidfile, acquire_timeout=0)
    if lock.is_locked():
        pid = lock.read_pid()
        if pid and _alive(pid):
            print(f"reloadd: already running as pid {pid} (pidfile {pidfile})", file=sys.stderr)
            return 1
        lock.break_lock()  # stale: left by a reloadd that died
    log_path = os.path.abspath(args.log_file or "/var/log/reloadd.log")
    try:
        log_file = open(log_path, "a", buffering=1, encoding="utf-8", errors="backslashreplace")  # noqa: SIM115 (lives as long as the daemon)
    except OSError as exc:
        print(f"reloadd: cannot open log file {log_path}: {exc.strerror}", file=sys.stderr)
        return 1
    context = daemon.DaemonContext(
        pidfile=lock, stdout=log_file, stderr=log_file, working_directory="/", umask=0o022
    )
    try:
        with context:
            setup_logging("debug" if args.debug else config.daemon.log_level, log_file)
            return _run(config, args.debug)
    except Exception as exc:  # AlreadyLocked raced with another start
        print(f"reloadd: cannot detach: {exc}", file=sys.stderr)
        return 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
