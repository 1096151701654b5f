"""The inotify backend: one kernel instance shared by every service, read from the loop.

A ``Hub`` owns the inotify fd (``loop.add_reader``, no thread) and routes each event by
watch descriptor. The kernel gives the same wd for the same inode however often it is
added, so one wd may serve several trees (two services watching one directory, or one
service's root being another's anchor): the hub keeps a list of *slots* per wd and
removes the kernel watch only when the last slot goes.

A ``Tree`` is one watch path of one service. Its invariants:

- every directory below the root that is not pruned is watched, keyed by its path
  relative to the root; a directory that appears (created, moved in, copied in) is
  watched *first* and listed *second*, and the files found in it are changes — files
  written before the watch existed are not lost;
- a network or FUSE mount point below the root (found in ``/proc/self/mountinfo``, by
  the hub's copy, never by a stat that a hung mount would block) is not entered: it is
  handed to ``on_limit`` and polled, off the loop, as a watch-limit subtree is;
- a mount or unmount at or below the root (which inotify does not report: the hub
  follows the mount table by ``POLLPRI`` on mountinfo) walks that directory again, or
  re-evaluates the root when it is at or above it, and is a change;
- a directory moved out is unwatched with everything below it (otherwise its events
  would keep arriving from wherever it went); an emptied-and-removed one is dropped
  when the kernel says ``IN_IGNORED``;
- the root itself is found through *anchors*, watched without recursion: the nearest
  existing ancestor of the root, or, when symlinks lie on the way, the directory of each
  of them (the root itself, an ancestor such as ``current``, a link in the middle of a
  chain) and of the resolved path. An entry coming or going there re-evaluates the root
  — that is how a root that is created late, deleted and recreated, or swapped
  (``current -> releases/42`` renamed over) is picked up;
- a root that is a single file is compared by its stat signature on each anchor event,
  so a Kubernetes ConfigMap's ``..data`` swap is seen through the symlinks;
- ``IN_Q_OVERFLOW`` re-walks every tree without dropping live watches (dropping them
  would flood the queue with ``IN_IGNORED`` and overflow it again) and counts as a
  change for every service.

Signs that a change set is not complete yet (``holding``): a matching file modified and
not yet closed, a VCS lock (``.git/index.lock``, ``.hg/wlock``) in the tree, or a root
that vanished a moment ago (a deploy that replaces the whole directory).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import select
import stat
import struct
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import inotify_simple

from reloadd.probe import MOUNTINFO, Mount, mounts, remote_mounts_below
from reloadd.watch.filters import VCS_DIRS, PathFilter, display

log = logging.getLogger("reloadd.watch")


class F:
    """The inotify(7) flags (<sys/inotify.h>) as plain ints: ``IntFlag`` arithmetic would
    cost a call per event."""

    MODIFY = 0x2
    ATTRIB = 0x4
    CLOSE_WRITE = 0x8
    MOVED_FROM = 0x40
    MOVED_TO = 0x80
    CREATE = 0x100
    DELETE = 0x200
    DELETE_SELF = 0x400
    MOVE_SELF = 0x800
    Q_OVERFLOW = 0x4000
    IGNORED = 0x8000
    ONLYDIR = 0x1000000
    DONT_FOLLOW = 0x2000000
    EXCL_UNLINK = 0x4000000  # no events for files already unlinked
    ISDIR = 0x40000000


_COMMON = (
    F.CREATE
    | F.DELETE
    | F.MODIFY
    | F.CLOSE_WRITE
    | F.MOVED_FROM
    | F.MOVED_TO
    | F.ATTRIB
    | F.DELETE_SELF
    | F.MOVE_SELF
    | F.ONLYDIR
)
MASK = _COMMON | F.EXCL_UNLINK
# What, seen on an anchor, can change where the root is or what it is: entries that come
# and go (a root created, removed, renamed over, a symlink swapped), the anchor itself
# going, and permissions. Content written there matters only to the root file's own name.
_MOVES_THE_ROOT = (
    F.CREATE | F.DELETE | F.MOVED_FROM | F.MOVED_TO | F.ATTRIB | F.DELETE_SELF | F.MOVE_SELF
) | F.IGNORED
_NOFOLLOW = F.DONT_FOLLOW
_VCS_LOCKS = frozenset({"index.lock", "wlock"})
_READ_SIZE = 1 << 16  # per read; a read is repeated while it comes back (nearly) full
_MAX_EVENT = 16 + 256  # struct inotify_event with the longest name (NAME_MAX + NUL, padded)
_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then name)
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()

Event = tuple[int, int, str]  # wd, mask, name (str as os.fsdecode gives it)

Sink = Callable[["Tree", list[str]], None]
Listing = tuple[list[str], list[str]]  # a directory's real subdirectories, its other entries
_BORN_CAP = 10_000  # temp-file candidates remembered per read; past it, only the nicety is lost


# A change of the mount table is told to the trees this long after it is flagged, from
# one read of the table however many changes came meanwhile.
MOUNT_SETTLE = 0.1

LIMIT = "watch limit"  # Tree.unwatched reason: inotify_add_watch said ENOSPC
MOUNT = "network mount"  # ... a network/FUSE mount point: "network mount (nfs4)"


def mount_reason(fstype: str) -> str:
    """The ``Tree.unwatched`` reason for a mount point of type ``fstype`` (mountinfo's)."""
    return f"{MOUNT} ({fstype})"


def polled_reason(why: str) -> bool:
    """Whether a ``Tree.unwatched`` reason is one its owner polls the subtree for."""
    return why == LIMIT or why.startswith(MOUNT + " (")


class WatchLimitError(OSError):
    """inotify_add_watch said ENOSPC: fs.inotify.max_user_watches is exhausted."""


@dataclass(eq=False, slots=True)
class Slot:
    """What one watch descriptor means to one tree."""

    tree: Tree
    kind: str  # "dir" | "anchor" | "vcs"
    rel: str  # for dir/vcs: path relative to the root; for anchor: the absolute path


class Hub:
    """The one inotify instance; routes events to trees, tracks wd ownership."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.error: str | None = None  # why there is no inotify instance (all trees poll)
        try:
            self.inotify = inotify_simple.INotify(nonblocking=True)
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
                raise
            self.error = "no inotify instance (fs.inotify.max_user_instances)"
            log.warning("cannot create an inotify instance: %s; every watch path polls", exc)
            self.inotify = None
        self.fd = self.inotify.fileno() if self.inotify is not None else -1
        self.slots: dict[int, list[Slot]] = {}
        self.trees: set[Tree] = set()
        self.overflows = 0
        self.read_at = 0.0  # monotonic time of the read being routed
        self.empty_at = 0.0  # monotonic time at which the queue was last read empty
        self._buffer = bytearray(_READ_SIZE)
        self._view = memoryview(self._buffer)
        self.reading = False
        self.loop = loop
        # The mount table: two opens of mountinfo, as each open file has its own change
        # flag: one read from the loop tells the trees (after MOUNT_SETTLE), one is
        # looked at by walks, so a walk never uses a table older than its own start.
        self._mounts_now: list[Mount] = []  # as walks last read it
        self._mounts_told: set[Mount] = set()  # as the trees were last told of it
        self._mount_fds: list[int] = []
        self._mount_epoll: select.epoll | None = None  # on the loop: tells the trees
        self._table_epoll: select.epoll | None = None  # asked by walks
        self._telling: asyncio.TimerHandle | None = None
        if loop is not None and self.inotify is not None:
            loop.add_reader(self.fd, self.read)
            self._watch_mounts(loop)

    def _watch_mounts(self, loop: asyncio.AbstractEventLoop) -> None:
        """Follow the mount table. inotify reports nothing when a file system is mounted
        on (or unmounted from) a watched directory: its watch stays on the directory
        underneath, blind to the new contents. The kernel flags an open mountinfo with
        POLLPRI on every change of the table (proc(5)); epoll is asked for that alone
        (mountinfo is always readable)."""
        try:
            for _ in range(2):
                self._mount_fds.append(os.open(MOUNTINFO, os.O_RDONLY | os.O_CLOEXEC))
            self._mount_epoll, self._table_epoll = select.epoll(), select.epoll()
            self._mount_epoll.register(self._mount_fds[0], select.EPOLLPRI)
            self._table_epoll.register(self._mount_fds[1], select.EPOLLPRI)
        except OSError as exc:
            log.info(
                "cannot follow the mount table (%s): mounts made below a watch path "
                "after its walk are seen only when it is walked again",
                exc.strerror,
            )
            self._close_mounts()
            return
        self._mounts_now = mounts()
        self._mounts_told = set(self._mounts_now)
        loop.add_reader(self._mount_epoll.fileno(), self._on_mounts)

    def _on_mounts(self) -> None:
        """The table changed: tell the trees MOUNT_SETTLE later, from one read of it
        however many changes came meanwhile (a container host mounts and unmounts all
        day; almost none of it is below a watch path)."""
        assert self._mount_epoll is not None
        assert self.loop is not None
        self._mount_epoll.poll(0)  # (the loop's own check has taken the flag already)
        if self._telling is None:
            self._telling = self.loop.call_later(MOUNT_SETTLE, self._tell_trees)

    def mount_table(self) -> list[Mount]:
        """The mounts now, read again only when the table changed since the last read
        (a walk of every new directory asks: reading mountinfo each time would cost a
        millisecond or more on a host with thousands of mounts)."""
        if self._table_epoll is None:
            return mounts()
        if self._table_epoll.poll(0):  # takes the flag: the next change sets it again
            # (empty: mountinfo could not be read, e.g. out of fds; there is always "/")
            self._mounts_now = mounts() or self._mounts_now
        return self._mounts_now

    def _tell_trees(self) -> None:
        self._telling = None
        table = set(mounts())
        if not table:  # mountinfo could not be read (out of fds?): not "all unmounted"
            log.warning("cannot read %s: a change of the mount table is not followed", MOUNTINFO)
            return
        changed = {m.point for m in table ^ self._mounts_told}
        self._mounts_told = table
        for tree in list(self.trees) if changed else ():
            try:
                tree.mounts_changed(changed)
            except Exception:  # a bug in one tree must not keep the others uninformed
                log.exception("%s: following a change of the mount table", display(tree.root))

    def _close_mounts(self) -> None:
        if self._telling is not None:
            self._telling.cancel()
            self._telling = None
        if self._mount_epoll is not None and self.loop is not None:
            with contextlib.suppress(ValueError, KeyError):  # never added: failed on the way
                self.loop.remove_reader(self._mount_epoll.fileno())
        for ep in (self._mount_epoll, self._table_epoll):
            if ep is not None:
                ep.close()
        self._mount_epoll = self._table_epoll = None
        for fd in self._mount_fds:
            os.close(fd)
        self._mount_fds = []

    @property
    def watch_count(self) -> int:
        return len(self.slots)

    def now(self) -> float:
        """When a change being reported happened: the time of the read being routed (the
        debounce counts from the kernel's report, not from the end of a long storm), or
        now for a report made outside a read."""
        return self.read_at if self.reading else time.monotonic()

    def close(self) -> None:
        if self.inotify is None:
            return
        self._close_mounts()
        if self.loop is not None:
            self.loop.remove_reader(self.fd)
        self.inotify.close()

    # -- wd ownership ---------------------------------------------------------------

    def watch(self, slot: Slot, path: str, follow: bool) -> int:
        """Add a kernel watch for ``path`` on behalf of ``slot``; returns the wd.

        Raises OSError (``WatchLimitError`` for ENOSPC) when the kernel refuses.
        """
        if self.inotify is None:
            raise OSError(errno.EMFILE, self.error, path)
        try:
            try:
                wd: int = self.inotify.add_watch(path, MASK if follow else MASK | _NOFOLLOW)
            except OSError as exc:
                if exc.errno != errno.ENAMETOOLONG:
                    raise
                # Deeper than PATH_MAX: reach the directory one component at a time and
                # watch it through its /proc/self/fd link (followed, as it must be: the
                # descriptor itself was opened without following symlinks).
                fd = _open_long(path, os.O_PATH)
                try:
                    wd = self.inotify.add_watch(f"/proc/self/fd/{fd}", MASK)
                finally:
                    os.close(fd)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise WatchLimitError(exc.errno, exc.strerror, path) from None
            raise
        owners = self.slots.get(wd)
        if owners is None:  # the common case: a directory no tree watched yet
            self.slots[wd] = [slot]
        elif not any(s.tree is slot.tree and s.kind == slot.kind for s in owners):
            owners.append(slot)
        else:
            # the same inode under the same role of the same tree (re-walk): refresh rel
            for s in owners:
                if s.tree is slot.tree and s.kind == slot.kind:
                    s.rel = slot.rel
        return wd

    def unwatch(self, tree: Tree, wd: int, kind: str) -> None:
        owners = self.slots.get(wd)
        if owners is None:
            return
        owners[:] = [s for s in owners if not (s.tree is tree and s.kind == kind)]
        if not owners:
            del self.slots[wd]
            try:
                self.inotify.rm_watch(wd)
            except OSError:
                pass  # already gone: the kernel removed it with its inode

    # -- reading --------------------------------------------------------------------

    def _overflowed(self, data: bytes) -> None:
        """Events were lost: a rescan of every tree stands in for all of them (and for
        those that came after the overflow in the same read). Only ``IN_IGNORED`` (the
        kernel dropped a watch) still has to be taken in, so no slot outlives its watch.
        """
        self.overflows += 1
        log.warning(
            "inotify queue overflowed (fs.inotify.max_queued_events): rescanning %d "
            "watch paths; every service counts it as a change",
            len(self.trees),
        )
        for wd in ignored(data):
            for slot in self.slots.pop(wd, ()):
                slot.tree.on_event(slot, wd, F.IGNORED, "")
        trees = list(self.trees)
        for tree in trees:
            tree.rescan()
        for tree in trees:
            tree.flush()

    def drain(self, since: float = float("inf")) -> None:
        """Route what the kernel has queued right now: a batch is not settled while
        events for it are still waiting to be read (a storm outlasting the debounce).
        Nothing to do when the queue was read empty at or after ``since`` (monotonic)."""
        if self.empty_at >= since or self.reading:
            return
        if self.inotify is not None and not self.inotify.closed:
            self.read()

    def read(self) -> None:
        """Drain the fd, route every event, then tell each touched tree's sink."""
        chunks = []
        while True:
            now = time.monotonic()
            try:  # into a buffer kept for it: os.read would map and unmap 1 MiB each time
                size = os.readv(self.fd, [self._buffer])
            except BlockingIOError:
                size = 0
            if size:
                chunks.append(self._view[:size].tobytes())
            # A read takes every queued event that fits: room left for the largest event
            # means the queue was empty when it was read (no second read to hear EAGAIN).
            if size <= _READ_SIZE - _MAX_EVENT:
                self.empty_at = now
                break
        if not chunks:
            return
        # Changes are dated when they were read, not when a long batch (a storm of
        # events) has been processed: the debounce counts from the kernel's report.
        self.read_at, self.reading = now, True
        try:
            self._route(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        finally:
            self.reading = False

    def _route(self, data: bytes) -> None:
        if overflowed(data):
            self._overflowed(data)
            return
        slots = self.slots
        touched: set[Tree] = set()
        for wd, mask, name in parse(data):
            owners = slots.get(wd)
            if owners is None:
                continue
            if mask & F.IGNORED:
                del slots[wd]
            if len(owners) == 1:  # the common case; a handler may change ``owners``
                slot = owners[0]
                slot.tree.on_event(slot, wd, mask, name)
                touched.add(slot.tree)
                continue
            for slot in list(owners):
                slot.tree.on_event(slot, wd, mask, name)
                touched.add(slot.tree)
        for tree in touched:
            tree.flush()


def parse(data: bytes) -> list[Event]:
    """The events in ``data``, as read from an inotify fd.

    A ``MODIFY`` directly followed by ``CLOSE_WRITE`` of the same file is left out: the
    close says all it says (the path changed, and it is not open for writing any more),
    and in a storm of rewrites it halves the events to route.
    """
    events: list[Event] = []
    unpack, size, end, pos = _HEADER.unpack_from, _HEADER.size, len(data), 0
    prev_wd, prev_mask, prev_raw = -1, 0, b""
    while pos < end:
        wd, mask, _cookie, length = unpack(data, pos)
        pos += size + length
        raw = data[pos - length : pos].rstrip(b"\0")
        if mask == F.CLOSE_WRITE and prev_mask == F.MODIFY and wd == prev_wd and raw == prev_raw:
            events.pop()
        prev_wd, prev_mask, prev_raw = wd, mask, raw
        events.append((wd, mask, raw.decode(_FS_ENCODING, _FS_ERRORS)))
    return events


# An overflow means a rescan, so reading its (up to max_queued_events) events one by one
# would be wasted: the overflow record and the IN_IGNORED records are found by a byte
# search instead. It is exact, not a guess: every event starts at a multiple of 16 bytes
# (the kernel pads each name with NULs to a multiple of the 16-byte header), and both
# patterns have a NUL followed by a non-NUL byte, which no name (NUL-terminated, then
# only NUL padding) can hold.
_ALIGN = _HEADER.size
_OVERFLOW = _HEADER.pack(-1, F.Q_OVERFLOW, 0, 0)
_IGNORED_TAIL = _HEADER.pack(0, F.IGNORED, 0, 0)[4:]  # all but the wd


def _aligned(data: bytes, pattern: bytes, offset: int) -> Iterator[int]:
    """The start of each event whose bytes from ``offset`` on begin with ``pattern``."""
    at = data.find(pattern, offset)
    while at >= 0:
        if (at - offset) % _ALIGN == 0:
            yield at - offset
        at = data.find(pattern, at + 1)


def overflowed(data: bytes) -> bool:
    """Whether ``data`` (whole events, as read) holds the queue-overflow record."""
    return next(_aligned(data, _OVERFLOW, 0), None) is not None


def ignored(data: bytes) -> list[int]:
    """The watch descriptors of the ``IN_IGNORED`` records (watch removed) in ``data``."""
    return [_HEADER.unpack_from(data, at)[0] for at in _aligned(data, _IGNORED_TAIL, 4)]


@dataclass(eq=False)
class Tree:
    """One watch path of one service on the shared hub."""

    hub: Hub
    root: str
    filter: PathFilter
    sink: Sink
    hold_lost_for: float = 2.0
    # told of each subtree (rel) that hit the watch limit; its owner polls it instead
    on_limit: Callable[[Tree, str], None] | None = None
    state: str = "waiting"  # waiting | watching
    kind: str = ""  # "dir" | "file" once found
    dirs: dict[str, int] = field(default_factory=dict)
    vcs: dict[str, int] = field(default_factory=dict)
    anchors: dict[str, int] = field(default_factory=dict)
    locks: set[str] = field(default_factory=set)
    open_writes: set[str] = field(default_factory=set)
    unwatched: dict[str, str] = field(default_factory=dict)  # rel -> why (limit, permission)
    lost_at: float | None = None
    _ident: tuple[object, ...] | None = None
    _pending: list[str] = field(default_factory=list)
    _born: set[str] = field(default_factory=set)
    _touched: set[str] = field(default_factory=set)  # files this read has named so far
    _gone: set[str] = field(default_factory=set)  # born this read, and gone again
    _dirty: bool = False
    _warned: set[str] = field(default_factory=set)
    # per anchor, the names there that lead to the root (a symlink on the way, the root)
    _names: dict[str, set[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = os.path.normpath(os.path.abspath(self.root))
        self.hub.trees.add(self)

    # -- public ---------------------------------------------------------------------

    def start(self) -> None:
        """Arm the watches; the first walk is a baseline and reports nothing."""
        self._reevaluate(report=False)

    def close(self) -> None:
        self._teardown()
        for path, wd in list(self.anchors.items()):
            self.hub.unwatch(self, wd, "anchor")
            del self.anchors[path]
        self.hub.trees.discard(self)

    @property
    def holding(self) -> bool:
        if self.open_writes or self.locks:
            return True
        return self.lost_at is not None and time.monotonic() - self.lost_at < self.hold_lost_for

    @property
    def watch_count(self) -> int:
        return len(self.dirs) + len(self.vcs) + len(self.anchors)

    @property
    def ident(self) -> tuple[object, ...] | None:
        """What the root was as last found: ("dir", resolved, dev, ino), ("file", dev, ...)."""
        return self._ident

    def rescan(self) -> None:
        """After a queue overflow: re-walk without dropping live watches; a change."""
        # The lost events may have closed files: assume they did (the walk cannot tell).
        self.open_writes.clear()
        self._walk_again()

    def _walk_again(self) -> None:
        """Walk the whole tree again, keeping the watches it still holds (a directory
        renamed meanwhile has the same wd under its new name), and report the root."""
        self.locks.clear()  # found again by the walk
        if self.state == "watching" and self.kind == "dir":
            old, old_vcs = dict(self.dirs), dict(self.vcs)
            self.dirs.clear()
            self.vcs.clear()
            self._walk("", report=False)
            for table, gone, kind in ((self.dirs, old, "dir"), (self.vcs, old_vcs, "vcs")):
                for wd in set(gone.values()) - set(table.values()):
                    self.hub.unwatch(self, wd, kind)
        self._reevaluate(report=True)
        self._pending.append(self.root)
        self._dirty = True

    @property
    def _base(self) -> str:
        """Where the walked directories are: the resolved root while it is a directory."""
        if self._ident and self._ident[0] == "dir":
            assert isinstance(self._ident[1], str)
            return self._ident[1]
        return self.root

    def mounted(self, rel: str) -> bool:
        """Whether something is mounted at ``rel`` now (by the hub's mount table)."""
        base = self._base
        point = f"{base}/{rel}" if rel else base
        return any(m.point == point for m in self.hub.mount_table())

    def mounts_changed(self, points: set[str]) -> None:
        """File systems were mounted or unmounted at ``points``; inotify says nothing of
        it (a watch stays on the directory a mount hides). At or above the root or an
        anchor: watch the anchors anew and find out what the root is now. Below the
        root: walk those directories again. Either is a change."""
        base = self._base

        def covered(path: str) -> bool:
            return any(path == p or path.startswith(p.rstrip("/") + "/") for p in points)

        if any(covered(path) for path in (self.root, base, *self.anchors)):
            ident = self._ident
            self._reanchor()
            if self._ident != ident:
                self.flush()  # walked anew from the root (or lost): nothing more to do
                return
        prefix = base.rstrip("/") + "/"
        done: list[str] = []
        for rel in sorted(p[len(prefix) :] for p in points if p.startswith(prefix)):
            parent, _, name = rel.rpartition("/")
            if self.state != "watching" or parent not in self.dirs:
                # not in the walked tree (a polled mount point whose directory went away
                # reports its files gone, then ends: WatchPath._on_poll)
                continue
            if any(rel.startswith(f"{top}/") for top in done):
                continue  # inside a mount walked again just now
            done.append(rel)
            for gone in [r for r in self.unwatched if r == rel or r.startswith(rel + "/")]:
                del self.unwatched[gone]  # found again by the walk, if still so
            self._rewalk(rel, name in VCS_DIRS or self.filter.prune_child(parent, name))
        self.flush()

    def _reanchor(self) -> None:
        """Watch every anchor anew (a mount may hide the directory a watch is on), then
        find out what the root is now; old watches go once the new ones exist."""
        old, self.anchors = self.anchors, {}
        self._reevaluate(report=True)
        kept = set(self.anchors.values())
        for wd in set(old.values()) - kept:
            self.hub.unwatch(self, wd, "anchor")

    def _rewalk(self, rel: str, pruned: bool) -> None:
        """Walk ``rel`` again and report it. As ``rescan``, a watch the new walk holds
        again (under any name) is kept, and its slot named after where it is now."""
        name = rel.rpartition("/")[2]

        def under(r: str) -> bool:
            return r == rel or r.startswith(rel + "/")

        full = self._full(rel + "/")
        self.open_writes = {x for x in self.open_writes if not x.startswith(full)}
        inside = {wd for r, wd in self.dirs.items() if under(r)}
        if any(wd in inside for r, wd in self.dirs.items() if not under(r)):
            # part of the tree was bound onto another part: the two share watches, and
            # events in either were named after one of them (a directory made in the
            # source meanwhile only under the mount's name). Rare: walk it all again.
            self._walk_again()
            return
        old, old_vcs = (
            {r: table.pop(r) for r in [r for r in table if under(r)]}
            for table in (self.dirs, self.vcs)
        )
        self.locks = {x for x in self.locks if not x.startswith(rel + "/")}
        if name in VCS_DIRS:
            self._watch_vcs(rel)
        elif not pruned:
            self._walk(rel, report=True)
            if rel not in self.unwatched:
                # what was seen there before is gone (an unmount shows what it hid); a
                # network mount is polled instead, and its first scan reports
                self._pending.append(self._full(rel))
                self._dirty = True
        for table, gone, kind in ((self.dirs, old, "dir"), (self.vcs, old_vcs, "vcs")):
            live = {wd: r for r, wd in table.items()}
            for wd in set(gone.values()):
                if wd not in live:
                    self.hub.unwatch(self, wd, kind)
                    continue
                for slot in self.hub.slots.get(wd, ()):
                    if slot.tree is self and slot.kind == kind:
                        slot.rel = live[wd]

    def flush(self) -> None:
        """Report what this read changed (once per read, for every tree it touched)."""
        # Only a file created *and* removed within this one read is no net change (an
        # editor's or sed's temp file): it is not reported. One created in an earlier
        # read may have been part of a reload already (its removal is then a change), and
        # one created again after its removal is there now.
        if self._gone:
            self._pending = [p for p in self._pending if p not in self._gone]
            self._gone.clear()
        if self._dirty:
            paths, self._pending, self._dirty = self._pending, [], False
            self.sink(self, paths)
        self._born.clear()
        self._touched.clear()

    # -- events ---------------------------------------------------------------------

    def on_event(self, slot: Slot, wd: int, mask: int, name: str) -> None:
        if slot.kind == "anchor":
            self._on_anchor(slot, wd, mask, name)
        elif slot.kind == "vcs":
            self._on_vcs(slot, wd, mask, name)
        else:
            self._on_dir(slot.rel, wd, mask, name)

    def _on_anchor(self, slot: Slot, wd: int, mask: int, name: str) -> None:
        names = self._names.get(slot.rel, ())
        if not mask & _MOVES_THE_ROOT and (self.kind != "file" or name not in names):
            return  # another file there was written (a log): nothing about the root changed
        if mask & F.IGNORED:
            if self.anchors.get(slot.rel) == wd:
                del self.anchors[slot.rel]
        elif self.kind == "file" and name in names:
            self._track_write(self.root, mask)
            self._dirty = True  # a close may end the hold: let the service look again
        self._reevaluate(report=True)

    def _on_vcs(self, slot: Slot, wd: int, mask: int, name: str) -> None:
        lock = slot.rel + "/" + name
        if mask & F.IGNORED:
            if self.vcs.get(slot.rel) == wd:
                del self.vcs[slot.rel]
            self.locks = {x for x in self.locks if not x.startswith(slot.rel + "/")}
        elif name in _VCS_LOCKS:
            if mask & (F.CREATE | F.MOVED_TO):
                self.locks.add(lock)
            elif mask & (F.DELETE | F.MOVED_FROM):
                self.locks.discard(lock)
        self._dirty = True  # the hold may have ended: let the service look again

    def _on_dir(self, rel: str, wd: int, mask: int, name: str) -> None:
        if mask & F.IGNORED:
            if self.dirs.get(rel) == wd:
                del self.dirs[rel]
                if rel == "":
                    self._root_lost()
            return
        if mask & (F.DELETE_SELF | F.MOVE_SELF):
            if rel == "":
                self._root_lost()
            return
        if not name:
            return
        path = f"{rel}/{name}" if rel else name
        if mask & F.ISDIR:
            self._on_subdir(path, mask)
            return
        if not self.filter.matches(path):
            return
        full = self._full(path)
        self._track_write(full, mask)
        # A file that was not there before this read (its first event is its creation)
        # and is not there after it (an editor's or sed's temp file) is no net change:
        # flush leaves it out. A file that was there before and is gone at the end has
        # changed; so has one that is there at the end.
        if mask & F.CREATE and full not in self._touched and len(self._touched) < _BORN_CAP:
            self._born.add(full)
        if mask & (F.DELETE | F.MOVED_FROM):
            if full in self._born:
                self._gone.add(full)
        elif mask & (F.CREATE | F.MOVED_TO):
            self._gone.discard(full)
        if len(self._touched) < _BORN_CAP:
            self._touched.add(full)
        self._pending.append(full)
        self._dirty = True

    def _on_subdir(self, path: str, mask: int) -> None:
        name = path.rpartition("/")[2]
        if name in VCS_DIRS:
            if mask & (F.CREATE | F.MOVED_TO):
                self._watch_vcs(path)
            return
        if self.filter.prune_dir(path):
            return
        if mask & (F.CREATE | F.MOVED_TO):
            self._walk(path, report=True)
        elif mask & F.MOVED_FROM:
            self._drop(path)
            self._pending.append(self._full(path))
            self._dirty = True
        elif mask & F.DELETE:
            wd = self.dirs.pop(path, None)
            if wd is not None:
                self.hub.unwatch(self, wd, "dir")

    def _track_write(self, full: str, mask: int) -> None:
        if mask & F.MODIFY:
            if len(self.open_writes) < 10_000:
                self.open_writes.add(full)
        elif mask & (F.CLOSE_WRITE | F.DELETE | F.MOVED_FROM):
            self.open_writes.discard(full)

    # -- the root ---------------------------------------------------------------------

    def _root_lost(self) -> None:
        """The root directory's own watch says it was deleted or moved away.

        Whatever is at the root path now is another directory, even if its (dev, inode)
        is the old one's: a file system reuses the inode number of a directory deleted a
        moment ago (``rm -rf site && cp -r staging site``), and comparing it would keep
        the dead watch. So the root is looked at afresh.
        """
        self._ident = None
        self._reevaluate(report=True)

    def _reevaluate(self, report: bool) -> None:
        """Find out what the root is now, and follow it."""
        target = self._place_anchors()
        try:
            st = os.stat(self.root)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR) and "stat" not in self._warned:
                self._warned.add("stat")
                log.warning("watch path %s: %s; waiting for it", display(self.root), exc.strerror)
            if self.state == "watching":
                log.warning("watch path %s vanished; waiting for it to return", display(self.root))
                self._teardown()
                self.lost_at = time.monotonic()
                self._dirty = True
            return
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
        ident: tuple[object, ...]
        if kind == "dir":
            ident = (kind, target, st.st_dev, st.st_ino)
        else:
            ident = (kind, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if self.state == "watching" and ident == self._ident:
            return
        was_watching = self.state == "watching"
        if was_watching and (kind == "dir" or self.kind == "dir"):
            self._teardown()
        self._ident, self.kind, self.state, self.lost_at = ident, kind, "watching", None
        self._warned.discard("stat")
        if kind == "dir":
            if was_watching or report:
                log.info("watch path %s is (again) a directory; watching it", display(self.root))
            self._walk("", report=report)
        elif report or was_watching:
            self._pending.append(self.root)
        self._dirty = self._dirty or report or was_watching

    def _place_anchors(self) -> str:
        """Watch the anchors; returns the root's resolved path.

        An anchor is the directory holding something that decides where the root is: the
        root's own name, every symlink met on the way to it (the root itself, an ancestor
        such as Capistrano's ``current``, a link in the middle of a chain), and the
        resolved target. A swap of any of them shows there as an entry that comes or goes.
        """
        resolved, links = _resolve(self.root)
        self._names = {}
        for path in (*links, resolved) if links else (self.root,):
            anchor = _existing_ancestor(os.path.dirname(path))
            below = os.path.relpath(path, anchor).split("/", 1)[0]
            self._names.setdefault(anchor, set()).add(below)
        want = set(self._names)
        for path in list(self.anchors):
            if path not in want:
                self.hub.unwatch(self, self.anchors.pop(path), "anchor")
        for path in want - self.anchors.keys():
            try:
                self.anchors[path] = self.hub.watch(Slot(self, "anchor", path), path, True)
            except OSError as exc:
                self._warn_once(path, f"cannot watch {display(path)}: {exc.strerror}")
        return resolved

    def _teardown(self) -> None:
        for wd in self.dirs.values():
            self.hub.unwatch(self, wd, "dir")
        for wd in self.vcs.values():
            self.hub.unwatch(self, wd, "vcs")
        self.dirs.clear()
        self.vcs.clear()
        self.locks.clear()
        self.open_writes.clear()
        self.unwatched.clear()
        self.state, self._ident = "waiting", None

    # -- walking ----------------------------------------------------------------------

    def _full(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def _walk(self, top: str, report: bool) -> None:
        """Watch ``top`` and every unpruned directory below it; list them after arming."""
        base = self._base
        # Network and FUSE mounts below the root are not entered (told by the mount table
        # from mountinfo, never by a stat that a hung mount would block): a walk on the loop
        # must not meet a hung mount, and inotify does not see writes made elsewhere on
        # one anyway. Each is handed to the owner to poll, as a watch-limit subtree is.
        mounts = remote_mounts_below(base, self.hub.mount_table())
        stack = [top]
        while stack:
            rel = stack.pop()
            path = f"{base}/{rel}" if rel else base
            if mounts and rel and path in mounts:
                self.unwatched[rel] = mount_reason(mounts[path])
                if self.on_limit is not None:
                    self.on_limit(self, rel)  # polled instead, off the loop
                else:
                    self._warn_once(path, f"{display(path)} is a network mount: not watched")
                continue
            try:
                wd = self.hub.watch(Slot(self, "dir", rel), path, follow=rel == "")
            except WatchLimitError:
                self.unwatched[rel] = LIMIT
                if self.on_limit is not None:
                    self.on_limit(self, rel)  # polled instead; the owner warns
                    continue
                self._warn_once(
                    "limit",
                    f"{display(self.root)}: the inotify watch limit is exhausted; "
                    f"{display(path)} and below are not watched. Raise it with "
                    "`sysctl fs.inotify.max_user_watches=524288`",
                )
                continue
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                    self.unwatched[rel] = exc.strerror or "error"
                    self._warn_once(path, f"cannot watch {display(path)}: {exc.strerror}")
                continue
            self.dirs[rel] = wd
            if self.unwatched:
                self.unwatched.pop(rel, None)  # watched now (the mount is gone, room again)
            prefix = f"{rel}/" if rel else ""
            subdirs, files = _listdir(path, self._warn_once, files=report)
            for name in subdirs:
                if name in VCS_DIRS:
                    self._watch_vcs(prefix + name)
                elif not self.filter.prune_child(rel, name):
                    stack.append(prefix + name)
            for name in files:
                if self.filter.matches(prefix + name):
                    self._pending.append(self._full(prefix + name))
                    self._dirty = True

    def _watch_vcs(self, rel: str) -> None:
        base = self._base
        path = f"{base}/{rel}"
        if path in remote_mounts_below(os.path.dirname(path), self.hub.mount_table()):
            return  # a network mount (it may hang): no VCS-lock hold, never a stat in it
        try:
            self.vcs[rel] = self.hub.watch(Slot(self, "vcs", rel), path, follow=False)
        except OSError:
            return  # not fatal: only the VCS-lock hold is lost for this directory
        for lock in _VCS_LOCKS:
            if os.path.lexists(f"{path}/{lock}"):
                self.locks.add(f"{rel}/{lock}")

    def _drop(self, top: str) -> None:
        """Unwatch ``top`` and everything below it (moved out of the tree)."""
        prefix = top + "/"
        for table, kind in ((self.dirs, "dir"), (self.vcs, "vcs")):
            for rel in [r for r in table if r == top or r.startswith(prefix)]:
                self.hub.unwatch(self, table.pop(rel), kind)
        self.locks = {x for x in self.locks if not x.startswith(prefix)}
        self.open_writes = {x for x in self.open_writes if not x.startswith(self._full(prefix))}

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", message)


_MAX_HOPS = 40  # symlinks followed in one resolution, as the kernel's ELOOP limit


def _resolve(path: str) -> tuple[str, list[str]]:
    """``path`` (absolute, normalised) with its symlinks resolved, and the symlinks met on
    the way, each named by its resolved parent directory (which exists).

    The rest of a path that does not exist (or is too long, or loops) is kept as it is,
    like ``os.path.realpath`` does.
    """
    links: list[str] = []
    todo = path.split("/")[::-1]
    done, hops = "", 0
    while todo:
        part = todo.pop()
        if part in ("", "."):
            continue
        if part == "..":
            done = done.rpartition("/")[0]
            continue
        here = f"{done}/{part}"
        try:
            is_link = stat.S_ISLNK(os.lstat(here).st_mode)
            target = os.readlink(here) if is_link and hops < _MAX_HOPS else None
        except OSError:  # missing, or replaced meanwhile: the anchors see what comes next
            target, is_link = None, True
        if not is_link:
            done = here
            continue
        if target is None:  # not there, or a loop: the rest stays as it is
            return os.path.normpath("/".join([here, *todo[::-1]])), links
        hops += 1
        if here not in links:
            links.append(here)
        if target.startswith("/"):
            done = ""
        todo.extend(target.split("/")[::-1])
    return done or "/", links


def _existing_ancestor(path: str) -> str:
    while not os.path.isdir(path) and path not in ("/", ""):
        path = os.path.dirname(path)
    return path or "/"


def _open_long(path: str, flags: int) -> int:
    """Open a directory by an absolute path that may be longer than PATH_MAX.

    Each component is opened relative to the one before (``openat``), without following
    symlinks: the walk only descends into real directories.
    """
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY)
    try:
        parts = [part for part in path.split("/") if part]
        for i, part in enumerate(parts):
            how = flags if i == len(parts) - 1 else os.O_PATH
            nfd = os.open(part, how | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _entries(it: Iterator[os.DirEntry[str]], files: bool) -> Listing:
    subdirs: list[str] = []
    others: list[str] = []
    for entry in it:
        try:  # is_dir() answers from d_type; it only has to stat (and can fail) without one
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False  # gone meanwhile
        if is_dir:
            subdirs.append(entry.name)
        elif files:
            others.append(entry.name)
    return subdirs, others


def _listdir(path: str, warn: Callable[[str, str], None], files: bool = True) -> Listing:
    """The real subdirectories of ``path`` and its other entries (left empty unless
    ``files``); symlinks are not followed. An unreadable directory is warned of, once."""
    try:
        with os.scandir(path) as it:
            return _entries(it, files)
    except OSError as exc:
        error = exc
    if error.errno == errno.ENAMETOOLONG:  # deeper than PATH_MAX: through a descriptor
        try:
            fd = _open_long(path, os.O_RDONLY)
            try:
                with os.scandir(fd) as it:
                    return _entries(it, files)
            finally:
                os.close(fd)
        except OSError as exc:
            error = exc
    if error.errno not in (errno.ENOENT, errno.ENOTDIR):
        warn(path, f"cannot list {display(path)}: {error.strerror}")
    return [], []
