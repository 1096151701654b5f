"""Blocking file-system calls that may never return, run where they cannot stall reloadd.

A stat or statfs of a path on a dead NFS server or a stopped FUSE daemon blocks for ever,
and nothing can interrupt it. Such calls run in daemon threads of their own (one per
``(what, path)`` while it runs: a hung path costs one stuck thread, not one per look), and
their callers give up after ``PROBE_TIMEOUT`` counted from when the call started. Daemon
threads, not an executor's: ``asyncio.run`` and interpreter exit wait for an executor's
threads, and one stuck in a hung mount must not keep reloadd from exiting.

Used by config validation (``config.py``, no event loop) and by the watch paths
(``watch/``, from the loop); it imports neither.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

# How long a statfs/stat of a watch path may take before its mount is taken for hung
# (docs/backends.md). A healthy local or network file system answers in milliseconds; a
# few seconds ride out a busy NFS server, and stay well inside systemd's start timeout.
PROBE_TIMEOUT = 5.0


class Call(NamedTuple):
    """A call running (or done) in its own daemon thread, and when it started."""

    future: concurrent.futures.Future[Any]
    started: float  # time.monotonic()

    def deadline(self, timeout: float) -> float:
        return self.started + timeout

    def wait(self, timeout: float = PROBE_TIMEOUT) -> bool:
        """Block until the call is done, or ``timeout`` after it started; whether it is
        done (its result or exception is then in ``future``)."""
        try:
            self.future.exception(max(self.deadline(timeout) - time.monotonic(), 0.0))
        except concurrent.futures.TimeoutError:
            return False
        return True


_calls: dict[tuple[str, str], Call] = {}  # the calls still running, by (what, path)
_calls_lock = threading.Lock()


def call(fn: Callable[..., Any], *args: Any, name: str = "call") -> Call:
    """``fn(*args)`` in a daemon thread of its own, started now.

    A daemon thread, not an executor's: a call stuck in a hung mount must not hold up
    exit. Waiters give up by their own deadline (``Call.deadline``, counted from when
    the call started, so a call that has hung for long is not waited on again), or wait
    for it without one from the loop (``asyncio.wrap_future(call(...).future)``).
    """
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    future.set_running_or_notify_cancel()  # so no waiter can cancel it for the others

    def run() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # handed to the waiters
            future.set_exception(exc)
        else:
            future.set_result(result)

    threading.Thread(target=run, name=name[:60], daemon=True).start()
    return Call(future, time.monotonic())


def shared_call(key: tuple[str, str], fn: Callable[..., Any], *args: Any) -> Call:
    """``call(fn, *args)``, except that while it runs the same ``key`` gets the same call
    (a path on a hung mount costs one stuck thread, not one per look)."""
    with _calls_lock:
        running = _calls.get(key)
        if running is not None:
            return running

        def forgotten_when_done() -> Any:
            try:
                return fn(*args)
            finally:
                with _calls_lock:
                    _calls.pop(key, None)

        started = _calls[key] = call(forgotten_when_done, name=f"{key[0]} {key[1]}")
        return started


def stuck(path: str) -> bool:
    """Whether a call on ``path`` (a stat by config validation, a statfs) has been
    running for longer than PROBE_TIMEOUT: then the path is taken for hung at once,
    without waiting PROBE_TIMEOUT once more (reloadd's start-up validates, then arms)."""
    now = time.monotonic()
    with _calls_lock:
        return any(k[1] == path and now - c.started > PROBE_TIMEOUT for k, c in _calls.items())


# -- /proc/self/mountinfo ------------------------------------------------------------------
# The mount table, read without touching any mount: it answers even when a mount is hung
# (statfs or stat of a path on it would wait for it).

MOUNTINFO = "/proc/self/mountinfo"

# File systems whose content inotify cannot (fully) see, by their mountinfo names: the
# REMOTE_FS family of ``reloadd.watch`` (told there by statfs's f_type). Every ``fuse.*``
# subtype (``fuse.sshfs``, ``fuse.bindfs``, ``fuse.rclone``...) counts as FUSE.
REMOTE_MOUNT_TYPES = frozenset(
    {
        "nfs",
        "nfs4",
        "smb",
        "smbfs",
        "smb3",
        "cifs",
        "fuse",
        "fuseblk",
        "9p",
        "virtiofs",
        "vboxsf",
        "prl_fs",
        "vmhgfs",
        "ceph",
        "afs",
        "lustre",
        "gpfs",
        "gfs2",
        "ocfs2",
        "beegfs",
        "orangefs",
        "pvfs2",
        "coda",
        "ncpfs",
        "ncp",
        # an automount point (systemd x-systemd.automount, autofs maps), not yet mounted:
        # the first look into it mounts what is behind it, usually a network share
        "autofs",
    }
)


class Mount(NamedTuple):
    """One line of /proc/self/mountinfo: the device, the mount point, the type, and
    what tells two mounts apart when those are equal (a bind of another directory of
    the same file system; a remount that got the freed device number back)."""

    dev: int  # st_dev of the files on it
    point: str  # absolute, unescaped, as seen from this process's root
    fstype: str  # "ext4", "nfs4", "fuse.sshfs", ...
    mount_id: int = 0  # unique while mounted
    subtree: bytes = b"/"  # the directory of the file system mounted there (a bind's)


_ESCAPE = re.compile(rb"\\([0-7]{3})")


def unescape(field: bytes) -> bytes:
    r"""A mountinfo path with the kernel's octal escapes (``\040`` space, ``\011`` tab,
    ``\012`` newline, ``\134`` backslash) undone.

    >>> unescape(rb"/mnt/my\040share")
    b'/mnt/my share'
    """
    if b"\\" not in field:
        return field
    return _ESCAPE.sub(lambda m: bytes([int(m[1], 8) & 0xFF]), field)


def parse_mountinfo(text: bytes) -> list[Mount]:
    """The mounts in mountinfo ``text``; malformed lines are skipped."""
    out = []
    # the kernel escapes only space, tab, newline and backslash (as \ooo): split on those
    for line in text.split(b"\n"):
        fields = line.split(b" ")
        try:  # ID PARENT MAJOR:MINOR ROOT POINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER
            kind = fields[fields.index(b"-", 6) + 1]
            major, minor = fields[2].split(b":")
            dev = os.makedev(int(major), int(minor))
            mount_id = int(fields[0])
        except (ValueError, IndexError):
            continue
        point = os.fsdecode(unescape(fields[4]))
        out.append(Mount(dev, point, kind.decode("ascii", "replace"), mount_id, fields[3]))
    return out


def mounts() -> list[Mount]:
    """This process's mounts, from /proc/self/mountinfo (never a stat or statfs of a
    mount); nothing when it cannot be read."""
    try:
        with open(MOUNTINFO, "rb") as f:
            text = f.read()
    except OSError:
        return []
    return parse_mountinfo(text)


def remote_type(fstype: str) -> bool:
    """Whether a mountinfo type names a file system inotify cannot fully see."""
    return fstype in REMOTE_MOUNT_TYPES or fstype.startswith("fuse.")


def remote_mounts_below(base: str, table: Iterable[Mount] | None = None) -> dict[str, str]:
    """The mount points strictly below the directory ``base`` (absolute, resolved) of
    file systems inotify cannot fully see, and their types: ``{"/srv/app/uploads":
    "nfs4"}``. From ``table``, else read from mountinfo: a hung mount answers too."""
    prefix = base.rstrip("/") + "/"
    # mountinfo lists mounts in the order they were made: of two stacked on one point,
    # the later one is on top, and is what a path there reaches. An automount point
    # stays one whatever it mounts: watched by inotify when its (local) file system is
    # up, it would expire idle, come back at the next look, expire again...
    top: dict[str, str] = {}
    for m in mounts() if table is None else table:
        if m.point.startswith(prefix) and top.get(m.point) != "autofs":
            top[m.point] = m.fstype
    return {point: t for point, t in top.items() if remote_type(t)}
