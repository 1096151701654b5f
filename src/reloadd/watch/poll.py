"""The poll backend: periodic snapshots of a tree, diffed, for where inotify sees nothing.

inotify reports only writes made through the local kernel; a file changed by another NFS
client, on an SMB server, inside a VM share or behind a FUSE daemon changes silently.
A ``PollTree`` has the same surface as the inotify ``Tree`` (``sink(tree, paths)``,
``state``, ``kind``, ``holding``, ``watch_count``, ``unwatched``, ``start``, ``close``,
``root``) and finds changes by comparing snapshots instead.

A snapshot holds, per directory below the root (keyed by its path relative to the root),
``{name: signature}`` where a file's signature is ``(inode, mtime_ns, ctime_ns, size,
mode)``. So created, deleted, modified (even with the mtime put back: the size or ctime
moves), replaced (same size and mtime, new inode) and renamed (same inode, new name: the
old name is gone, the new one is new) files all differ. Files the filters reject are
kept as ``None`` and directories they prune as ``PRUNED`` (never stat'ed, never
reported, judged again only when the name turns into the other kind), and a
subdirectory's signature omits its times so that a change inside it does not make its
parent's entry differ. Unchanged directories are shared between consecutive snapshots,
so the diff costs one dict comparison per directory plus one lookup per entry of a
directory that did change: linear in the tree, never quadratic.

A scan costs one lstat per file (and per directory): a directory whose names cannot
have changed since it was last read is not read again, on the local file systems where
its ctime proves that (``_Walker`` has the rule); elsewhere every directory is read.

Rules (the same as the inotify backend's where they overlap):

- the filters and built-in ignores decide what counts; pruned directories are never read;
- paths longer than PATH_MAX are read through directory fds opened piece by piece;
- symlinks below the root are entries, never followed (so no symlink loop can be walked);
  the root itself is followed, and a symlinked root swapped to another directory is a
  change even when the new directory holds hard links with equal signatures;
  a directory reached twice (a bind mount of an ancestor inside the tree) is skipped;
- an unreadable directory is skipped with one warning and listed in ``unwatched``; what
  was known about it is carried over, so a passing EIO on a network mount is no change;
- the first scan is a baseline; a root that is missing makes the tree ``waiting``, and
  when it comes back with content that content is a change; a root that vanishes holds
  the reload for ``hold_lost_for`` (a deploy that replaces the directory);
- a change seen by a scan *settles* only when a later scan sees nothing new: the paths
  are reported then, once, so one burst that spans two scans is one reload. What is
  reported is the net difference since the last report (a temp file created and removed
  within the burst is no change). A tree that keeps changing reports after ``max_delay``.

Each periodic scan runs in a daemon thread and hands its result to the loop with
``call_soon_threadsafe``: the loop keeps serving other services and control requests
while a large tree is read, and a scan stuck on a hung network mount never blocks
shutdown. One scan per tree at a time; the next starts ``interval`` after the previous
one ended, so a slow scan stretches the period instead of piling up threads. ``scan()``
does one scan synchronously, for tests and for driving the tree without timers.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from reloadd.probe import mounts
from reloadd.watch.filters import VCS_DIRS, PathFilter, display

log = logging.getLogger("reloadd.watch")

Sig = tuple[int, int, int, int, int]  # (inode, mtime_ns, ctime_ns, size, mode)
DirSnap = dict[str, "Sig | None"]  # name -> signature (None, PRUNED: filtered out)
Snap = dict[str, DirSnap]  # directory relative to the root ("" = the root) -> its entries
Ident = tuple[object, ...]  # what the root is: kind, real path, device, inode
DirKey = tuple[int, int, int, int, int, int]  # a directory's dev, ino, mtime/ctime_ns, size, mode
Listed = dict[str, DirKey]  # directory -> its lstat when its names were read (see _Walker)
Walk = tuple[str, "DirKey | None"]  # a directory to walk, and its lstat when known

PollSink = Callable[["PollTree", list[str]], None]

BASELINE_WAIT = 5.0  # seconds: a first scan slower than this is worth a warning
# The clock the kernel stamps ctime from (Linux's CLOCK_REALTIME_COARSE; the time module
# does not name it). A write made after a reading of it gets a ctime not older than that
# reading (fine-grained "multigrain" stamps are never older either), so a file whose ctime
# is not older than the start of the baseline scan may have changed while the scan ran;
# one written up to a clock tick (1-10 ms) before the scan can look so too.
CTIME_CLOCK = 5


def ctime_now() -> int:
    """Now, in ns, on the clock ctime is stamped from."""
    try:
        return time.clock_gettime_ns(CTIME_CLOCK)
    except OSError:
        return time.time_ns() - 20_000_000  # no coarse clock: a generous tick


# A directory the filters prune (or a VCS directory): kept in its parent's entries so
# that the decision is made once, never stat'ed, never walked. Its size -1 (like a walked
# directory's) can never equal a file's signature.
PRUNED: Sig = (0, 0, 0, -1, stat.S_IFDIR)
_MISSING = object()  # not in the previous snapshot
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# A directory's names are trusted without reading them (see _Walker) only when its ctime
# is older than the scan by this much: the clock tick (1-10 ms) and, on file systems that
# keep whole seconds (ext2/3, ext4 with 128-byte inodes), the second the stamp is cut to.
_SETTLED = 2_000_000_000
# The file systems (as /proc/self/mountinfo names them) whose kernel code moves a
# directory's ctime whenever an entry is created, removed or renamed in it, and shows it
# to stat at once. Network and FUSE file systems are left out (times cached for seconds,
# kept by a server or made up by a daemon): every scan reads their directories.
_LISTING_FS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs", "zfs", "overlay"})
_VCS_LOCKS = (("index.lock", ".git"), ("wlock", ".hg"))
_LONG = 4000  # bytes: paths this long are opened piecewise (PATH_MAX is 4096)


class _Closed(Exception):
    """The tree was closed while its scan ran: the scan stops early."""


@dataclass
class ScanResult:
    """One scan of the file system; made off the loop, applied on it."""

    ident: Ident | None  # None: the root is missing
    kind: str  # "dir" | "file" | "" (missing)
    snap: Snap
    changed: list[str]  # paths (relative to the root) whose signature differs from before
    dirs: int = 0
    files: int = 0
    locks: frozenset[str] = frozenset()
    unreadable: dict[str, str] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (once-key, message)
    seconds: float = 0.0
    racy: list[str] = field(default_factory=list)  # files with a ctime >= ``since``
    listed: Listed = field(default_factory=dict)  # for the next scan: see _Walker


def _is_dir_sig(sig: object) -> bool:
    return isinstance(sig, tuple) and stat.S_ISDIR(sig[4])


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


def _files(rel: str, entries: DirSnap) -> list[str]:
    return [_join(rel, n) for n, s in entries.items() if s is not None and not _is_dir_sig(s)]


def lookup(snap: Snap, rel: str) -> Sig | None:
    """The signature of a file in a snapshot (``rel`` relative to the root)."""
    parent, _, name = rel.rpartition("/")
    return snap.get(parent, {}).get(name)


def diff(old: Snap, new: Snap) -> list[str]:
    """Paths of files (not directories) whose signature differs between two snapshots.

    Linear: directories shared between the snapshots (``is``) or equal cost one
    comparison; only the entries of a changed directory are looked at one by one.

    >>> a = {"": {"x": (1, 1, 1, 1, 0o100644), "d": (2, 0, 0, 0, 0o40755)}, "d": {}}
    >>> b = {"": {"x": (1, 2, 2, 1, 0o100644), "d": (2, 0, 0, 0, 0o40755)}, "d": {"y": None}}
    >>> diff(a, b)
    ['x']
    """
    out: list[str] = []
    for rel, entries in new.items():
        before = old.get(rel)
        if before is entries:
            continue
        if before is None:
            out.extend(_files(rel, entries))
            continue
        if before == entries:
            continue
        for name, sig in entries.items():
            was = before.get(name)
            if was == sig or (was is None and sig is None):
                continue
            if _is_dir_sig(sig) and (was is None or _is_dir_sig(was)):
                continue  # a directory (or a filtered name turned directory): not a change
            out.append(_join(rel, name))
        for name, was in before.items():
            if name not in entries and was is not None and not _is_dir_sig(was):
                out.append(_join(rel, name))
    for rel, before in old.items():
        if rel not in new:
            out.extend(_files(rel, before))
    return out


def _without(snap: Snap, paths: list[str]) -> Snap:
    """``snap`` with the files ``paths`` left out (copying only the directories touched)."""
    if not paths:
        return snap
    out = dict(snap)
    for rel in paths:
        parent, _, name = rel.rpartition("/")
        if parent in out:
            if out[parent] is snap[parent]:
                out[parent] = dict(snap[parent])
            out[parent].pop(name, None)
    return out


def _carry(old: Snap, top: str, into: Snap) -> None:
    """Copy what ``old`` knew about ``top`` and everything below it into ``into``."""
    stack = [top]
    while stack:
        rel = stack.pop()
        entries = old.get(rel)
        if entries is None:
            continue
        into[rel] = entries
        stack.extend(_join(rel, n) for n, s in entries.items() if _is_dir_sig(s))


def scan_tree(
    root: str,
    filt: PathFilter,
    old: Snap,
    prefix: str = "",
    closed: Callable[[], bool] = lambda: False,
    since: int | None = None,
    listed: Listed | None = None,
) -> ScanResult:
    """Read the tree at ``root`` (following ``root`` itself, nothing below it) and diff it.

    ``prefix`` is the root's path relative to the watch root, for the filters: a subtree
    polled as the watch-limit fallback is filtered like the rest of its watch path.
    With ``since`` (ns, wall clock), files whose ctime is not older are listed in
    ``racy``: they may have changed while this scan ran. ``listed`` is the ``listed`` of
    the scan that made ``old``: the directories whose names need not be read again while
    they look the same (see ``_Walker``).
    Blocking; meant for a worker thread. Never raises for file-system errors.
    """
    started = time.monotonic()
    clock = ctime_now()  # before any directory is read: see _Walker
    try:
        st = os.stat(root)
    except OSError as exc:
        problems = []
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            what = "a symlink loop" if exc.errno == errno.ELOOP else exc.strerror
            problems.append(("root", f"watch path {display(root)}: {what}; waiting for it"))
        return ScanResult(None, "", {}, diff(old, {}), problems=problems)
    if not stat.S_ISDIR(st.st_mode):
        snap: Snap = {"": {"": (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_mode)}}
        racy = [""] if since is not None and st.st_ctime_ns >= since else []
        return ScanResult(("file", st.st_dev), "file", snap, diff(old, snap), files=1, racy=racy)
    real = os.path.realpath(root)
    walker = _Walker(real, filt, old, prefix, closed, {(st.st_dev, st.st_ino)}, since)
    walker.clock, walker.was_listed = clock, listed or {}
    try:
        rs = os.stat(real)  # what is read below: ``st`` may be another directory by now
        key: DirKey | None = (
            rs.st_dev,
            rs.st_ino,
            rs.st_mtime_ns,
            rs.st_ctime_ns,
            rs.st_size,
            rs.st_mode,
        )
    except OSError:
        key = None  # (the walk below finds out what is wrong)
    walker.walk(key)
    return ScanResult(
        ("dir", real, st.st_dev, st.st_ino),
        "dir",
        walker.snap,
        diff(old, walker.snap),
        dirs=len(walker.snap),
        files=walker.files,
        locks=frozenset(walker.locks),
        unreadable=walker.unreadable,
        problems=walker.problems,
        seconds=time.monotonic() - started,
        racy=walker.racy,
        listed=walker.listed,
    )


@dataclass
class _Walker:
    """One walk of a directory tree into a snapshot (see ``scan_tree``).

    Polling costs one lstat per file per interval (issue 6: a 100,000-file tree every
    second), so the walk does little else:

    - A directory is read (``scandir``) only when its names may have changed. Creating,
      removing or renaming an entry moves the directory's ctime, which nobody can set; so
      when a directory's (device, inode, mtime, ctime, size, mode) are what they were
      when it was last read, its names are those of the last snapshot, and its files are
      lstat'ed by name without reading it. This holds on the file systems whose kernel
      code keeps the times itself (``_LISTING_FS``: ext4, xfs, btrfs, tmpfs, ...), and
      only for a read made ``_SETTLED`` (2 s) or more after the directory's ctime: a
      change made after the read gets a ctime not older than ``clock`` (read before any
      directory; cut to the second on file systems that keep whole seconds), so it
      cannot leave the ctime as it was. Anywhere else (NFS, SMB, FUSE,
      9p..., where a directory's times may be cached, synthetic or the server's), and
      for a directory with an entry that could not be judged, every scan reads it.
      A file's content changes do not move its directory's times: every file is
      lstat'ed every scan either way.
    - When a directory is read, an entry known as a file is lstat'ed once
      (``DirEntry.stat`` caches it), its signature built and compared with the last
      one; when equal, the old signature object is kept and nothing else happens.
      Everything else goes through ``_entry``. A directory whose every entry took that
      way is its previous ``DirSnap`` again, shared without a comparison.
    """

    real: str  # the root, symlinks resolved (a swap during the walk cannot mix trees)
    filt: PathFilter
    old: Snap
    prefix: str
    closed: Callable[[], bool]
    seen: set[tuple[int, int]]  # (device, inode) of every directory walked
    since: int | None = None  # see scan_tree
    clock: int = 0  # the ctime clock before any directory was read; 0: trust none
    was_listed: Listed = field(default_factory=dict)  # ``listed`` of the scan of ``old``
    listed: Listed = field(default_factory=dict)  # directories whose names can be trusted
    snap: Snap = field(default_factory=dict)
    racy: list[str] = field(default_factory=list)
    files: int = 0
    locks: set[str] = field(default_factory=set)
    unreadable: dict[str, str] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)
    _devices: frozenset[int] | None = None  # of the _LISTING_FS file systems, once read

    def walk(self, key: DirKey | None) -> None:
        """Walk from the root, whose lstat is ``key`` (None: unknown)."""
        stack: list[Walk] = [("", key)]
        old, snap, real, closed = self.old, self.snap, self.real, self.closed
        was_listed = self.was_listed
        since = self.since
        while stack:
            if closed():
                raise _Closed
            rel, key = stack.pop()
            path = f"{real}/{rel}" if rel else real
            prev = old.get(rel)
            long = len(path) * 4 >= _LONG and len(os.fsencode(path)) >= _LONG
            if (
                key is not None
                and prev is not None
                and since is None
                and was_listed.get(rel) == key
            ):
                try:
                    dfd = _open_long(path) if long else os.open(path, _DIR_FLAGS)
                except OSError:
                    pass  # read below, which judges the error
                else:
                    try:
                        unread = self._unread(rel, path, dfd, prev, key, stack)
                    finally:
                        os.close(dfd)
                    if unread:
                        continue
            fd = None
            try:
                if long:
                    fd = _open_long(path)  # past PATH_MAX: read it through a dir fd
                entries, whole = self._read(rel, path, fd, prev, stack)
            except OSError as exc:
                if self._failed(rel, path, exc):
                    _carry(old, rel, snap)  # what we knew stands: no change
                continue
            finally:
                if fd is not None:
                    os.close(fd)
            snap[rel] = entries
            if whole and key is not None and self._may_list(key):
                self.listed[rel] = key

    def _may_list(self, key: DirKey) -> bool:
        """Whether the names just read of a directory (lstat ``key``, taken before they were
        read) may stand for the directory for as long as its lstat stays ``key``."""
        if key[3] > self.clock - _SETTLED:
            return False  # changed too recently: a change after the read could hide
        if self._devices is None:
            self._devices = _listing_devices()  # once per scan: a device may be reused
        return key[0] in self._devices

    def _unread(
        self,
        rel: str,
        path: str,
        fd: int,
        prev: DirSnap,
        key: DirKey,
        stack: list[Walk],
    ) -> bool:
        """Take the directory at ``path`` (open as ``fd``) as ``prev`` without reading it,
        when it still is: its files lstat'ed by name (relative to ``fd``) unchanged, its
        walked subdirectories still the same directories (not seen elsewhere in this
        walk). False, having changed nothing, when anything differs: it is then read."""
        lstat = os.lstat
        files = 0
        kids: list[Walk] = []
        vcs: list[str] = []
        for name, was in prev.items():
            if was is None:
                continue  # a file the filters reject: it cannot turn into another kind
            if was is PRUNED:  # without the directory's ctime moving
                if name in VCS_DIRS:
                    vcs.append(name)
                continue
            try:
                fs = lstat(name, dir_fd=fd)
            except OSError:
                return False
            sig = (fs.st_ino, fs.st_mtime_ns, fs.st_ctime_ns, fs.st_size, fs.st_mode)
            if sig == was:  # an unchanged file (never a directory: its sig has size -1)
                files += 1
            elif was[3] == -1 and sig[0] == was[0] and sig[4] == was[4]:  # the same directory
                kids.append((f"{rel}/{name}" if rel else name, (fs.st_dev, *sig)))
            else:
                return False
        if kids:
            ids: set[tuple[int, int]] = set()
            for _, got in kids:
                if got is None or (got[0], got[1]) in self.seen or (got[0], got[1]) in ids:
                    return False  # a directory reached twice: reading this one judges it
                ids.add((got[0], got[1]))
            self.seen |= ids
            stack.extend(kids)
        for name in vcs:
            self._vcs(path, fd, name, _join(rel, name))
        self.files += files
        self.snap[rel] = prev
        self.listed[rel] = key
        return True

    def _read(
        self,
        rel: str,
        path: str,
        fd: int | None,
        prev: DirSnap | None,
        stack: list[Walk],
    ) -> tuple[DirSnap, bool]:
        """The entries of one directory (read through ``fd`` when given: then the entries
        are stat'ed relative to it), or ``prev`` itself when they are equal to it, and
        whether every name read is in them, judged; subdirectories to walk are pushed on
        ``stack``."""
        known = prev is not None
        if prev is None:
            prev = {}
        entries: DirSnap = {}
        get = prev.get
        since, seen = self.since, self.seen
        same = whole = True
        files = 0
        fs: os.stat_result | None
        with os.scandir(fd) if fd is not None else os.scandir(path) as it:
            for entry in it:
                name = entry.name
                was = get(name)
                if was is not None and was is not PRUNED and since is None:
                    try:
                        fs = entry.stat(follow_symlinks=False)
                    except OSError:
                        fs = None  # _entry tries again and judges the error
                    else:
                        sig = (fs.st_ino, fs.st_mtime_ns, fs.st_ctime_ns, fs.st_size, fs.st_mode)
                        if sig == was:  # never true for a directory: its sig has size -1
                            entries[name] = was
                            files += 1
                            continue
                        if (
                            was[3] == -1  # the directory walked last time, still here
                            and was[0] == sig[0]
                            and was[4] == sig[4]
                            and (fs.st_dev, sig[0]) not in seen
                        ):
                            seen.add((fs.st_dev, sig[0]))
                            entries[name] = was
                            stack.append((f"{rel}/{name}" if rel else name, (fs.st_dev, *sig)))
                            continue
                else:
                    fs = None
                same = False
                if not self._entry(entry, rel, path, fd, prev, fs, entries, stack):
                    whole = False
        self.files += files
        if known and ((same and len(entries) == len(prev)) or entries == prev):
            return prev, whole
        return entries, whole

    def _entry(
        self,
        entry: os.DirEntry[str],
        rel: str,
        path: str,
        fd: int | None,
        prev: DirSnap,
        fs: os.stat_result | None,
        entries: DirSnap,
        stack: list[Walk],
    ) -> bool:
        """Judge one entry that is not a known, unchanged file: store its signature (or
        ``None``/``PRUNED``) in ``entries``, or nothing when it is gone or skipped (then
        False: the directory's names are not to be trusted without reading it).

        ``fs`` is its lstat when already taken. The filters' decision is kept in the
        snapshot with the entry's kind: ``None`` a file they reject, ``PRUNED`` a
        directory they prune. When a name changes kind (a file removed and a directory
        made under its name between two scans), it is judged again as what it is now.
        """
        name = entry.name
        was = prev.get(name, _MISSING)
        if fs is not None:
            is_dir = stat.S_ISDIR(fs.st_mode)
        else:
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
        if is_dir:
            child = _join(rel, name)
            if name in VCS_DIRS:
                self._vcs(path, fd, name, child)
                entries[name] = PRUNED
            elif was is PRUNED or (not _is_dir_sig(was) and self.filt.prune_dir(self._frel(child))):
                entries[name] = PRUNED
            else:
                return self._subdir(entry, path, child, was, entries, stack)
            return True
        if was is None:
            entries[name] = None  # a file the filters rejected, still a file
            return True
        if (not isinstance(was, tuple) or _is_dir_sig(was)) and not self.filt.matches(
            self._frel(_join(rel, name))
        ):
            entries[name] = None  # new, or a directory before: judged now
            return True
        if fs is None:
            try:
                fs = entry.stat(follow_symlinks=False)
            except OSError as exc:
                failed = self._failed(_join(rel, name), f"{path}/{name}", exc)
                if failed and isinstance(was, tuple):
                    entries[name] = was  # unreadable now: what we knew stands
                    if _is_dir_sig(was):
                        _carry(self.old, _join(rel, name), self.snap)
                return False
        entries[name] = (fs.st_ino, fs.st_mtime_ns, fs.st_ctime_ns, fs.st_size, fs.st_mode)
        self.files += 1
        if self.since is not None and fs.st_ctime_ns >= self.since:
            self.racy.append(_join(rel, name))
        return True

    def _failed(self, rel: str, path: str, exc: OSError) -> bool:
        """An entry could not be read: gone (False), or unreadable (True, one warning)."""
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return False  # removed while we were scanning: it is gone
        self.unreadable[rel] = exc.strerror or "error"
        self.problems.append(
            (f"read:{rel}", f"cannot read {display(path)}: {exc.strerror}; skipped")
        )
        return True

    def _frel(self, rel: str) -> str:
        """``rel`` as the filters see it: relative to the watch root."""
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _subdir(
        self,
        entry: os.DirEntry[str],
        path: str,
        child: str,
        was: object,
        entries: DirSnap,
        stack: list[Walk],
    ) -> bool:
        """Store the signature of a subdirectory and push it on ``stack`` to be walked;
        when it cannot be stat'ed now but was known, store ``was`` and carry over what
        was known below it. False when it is not walked (gone, unreadable, a loop)."""
        name = entry.name
        try:
            ds = entry.stat(follow_symlinks=False)
        except OSError as exc:
            if self._failed(child, f"{path}/{name}", exc) and isinstance(was, tuple):
                _carry(self.old, child, self.snap)  # unreadable now: what we knew stands
                entries[name] = was
            return False
        if (ds.st_dev, ds.st_ino) in self.seen:
            self.problems.append(
                (
                    f"loop:{child}",
                    f"{display(path)}/{display(name)} is a directory already seen in "
                    "this tree (a bind mount loop?); skipped",
                )
            )
            return False
        self.seen.add((ds.st_dev, ds.st_ino))
        # no times: a change inside is not its change; size -1: never a file's signature
        entries[name] = (ds.st_ino, 0, 0, -1, ds.st_mode)
        key = (ds.st_dev, ds.st_ino, ds.st_mtime_ns, ds.st_ctime_ns, ds.st_size, ds.st_mode)
        stack.append((child, key))
        return True

    def _vcs(self, path: str, fd: int | None, name: str, child: str) -> None:
        for lock, owner in _VCS_LOCKS:
            if name != owner:
                continue
            try:
                if fd is not None:
                    os.lstat(f"{name}/{lock}", dir_fd=fd)
                else:
                    os.lstat(f"{path}/{name}/{lock}")
            except OSError:
                continue
            self.locks.add(f"{child}/{lock}")


def _listing_devices() -> frozenset[int]:
    """The devices (``st_dev``) of the mounted ``_LISTING_FS`` file systems.

    Read from /proc/self/mountinfo, which answers even when a mount is hung (statfs
    would wait for it). Nothing when it cannot be read: then every directory is read.
    """
    return frozenset(m.dev for m in mounts() if m.fstype in _LISTING_FS)


def _open_long(path: str) -> int:
    """A directory fd for an absolute ``path`` longer than PATH_MAX, opened piecewise."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    rest = os.fsencode(path).lstrip(b"/")
    fd = os.open("/", flags)
    try:
        while rest:
            if len(rest) < _LONG:
                piece, rest = rest, b""
            else:
                cut = rest.rfind(b"/", 0, _LONG)
                if cut <= 0:
                    raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), path)
                piece, rest = rest[:cut], rest[cut + 1 :]
            new = os.open(piece, flags, dir_fd=fd)
            os.close(fd)
            fd = new
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass(eq=False)
class PollTree:
    """One watch path (or, as the watch-limit fallback, one subtree of it), polled."""

    root: str
    filter: PathFilter
    sink: PollSink
    interval: float = 1.0
    max_delay: float = 2.0  # report a tree that keeps changing at least this often
    hold_lost_for: float = 2.0
    prefix: str = ""  # the root relative to the watch root (fallback subtrees)
    subtree: bool = False  # a fallback subtree: its absence is not "waiting"
    state: str = "waiting"  # waiting | watching
    kind: str = ""
    unwatched: dict[str, str] = field(default_factory=dict)  # unreadable directories
    locks: frozenset[str] = frozenset()
    lost_at: float | None = None
    dirs: int = 0  # directories and files in the last scan
    files: int = 0
    scans: int = 0
    last_scan_seconds: float = 0.0
    _ident: Ident | None = None  # the root as of the last scan
    _current: Snap = field(default_factory=dict)  # the last scan
    _listed: Listed = field(default_factory=dict)  # and its ScanResult.listed
    _settled: Snap = field(default_factory=dict)  # as of the last report
    _settled_ident: Ident | None = None
    _pending: set[str] = field(default_factory=set)
    _pending_since: float | None = None
    _based: bool = False  # the baseline scan has been applied
    _closed: bool = False
    _loop: asyncio.AbstractEventLoop | None = None
    _timer: asyncio.TimerHandle | None = None
    _slow_timer: asyncio.TimerHandle | None = None  # warns when the first scan is slow
    _first_done: asyncio.Event | None = None  # set when the first scan has been applied
    _scanning: bool = False
    _warned: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.root = os.path.normpath(os.path.abspath(self.root))

    # -- public ---------------------------------------------------------------------

    @property
    def holding(self) -> bool:
        if self.locks:
            return True
        return self.lost_at is not None and time.monotonic() - self.lost_at < self.hold_lost_for

    @property
    def ident(self) -> tuple[object, ...] | None:
        """What the root was as last found: ("dir", resolved, dev, ino), ("file", dev, ...)."""
        return self._ident

    @property
    def pending(self) -> bool:
        """Changes seen and not reported yet (waiting for a quiet scan)."""
        return bool(self._pending)

    @property
    def watch_count(self) -> int:
        return 0  # no inotify watches: see ``dirs`` and ``files``

    def start(self, report: bool = False) -> None:
        """Take the first scan (a baseline, or with ``report`` a change) and arm the timer.

        Never blocks: under a running loop the first scan runs in a thread like every
        other scan, and the tree stays ``waiting`` until it lands on the loop (await
        ``baseline()`` for that). A file created or modified while the baseline scan runs
        is not folded into it silently: its ctime is not older than the scan, so it is
        left out of the settled state and reported after the next quiet scan (a deletion
        made before the walk reached the file leaves nothing to compare and is not seen).
        """
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None  # driven by scan() only
        self._based = report
        if self._loop is None:
            self._apply(self._collect(self._current, None, self._listed))
            self._baselined().set()
            return
        self._baselined()
        self._scanning = True
        old, listed = self._current, self._listed
        since = None if report else ctime_now()

        def first() -> None:
            self._deliver(self._run(old, since, listed))

        threading.Thread(target=first, name=f"poll {self.root}", daemon=True).start()
        self._slow_timer = self._loop.call_later(BASELINE_WAIT, self._slow_first)

    async def baseline(self) -> None:
        """Return once the first scan has been applied (or the tree was closed)."""
        await self._baselined().wait()

    def _baselined(self) -> asyncio.Event:
        if self._first_done is None:
            self._first_done = asyncio.Event()
        return self._first_done

    def _slow_first(self) -> None:
        self._slow_timer = None
        if self._closed or self.scans:
            return
        log.warning(
            "watch path %s: the first scan takes longer than %.0fs (a large tree or a slow "
            "mount?); changes are seen once it completes",
            display(self.root),
            BASELINE_WAIT,
        )

    def scan(self) -> None:
        """One scan now, on this thread (tests; trees without a loop)."""
        self._apply(self._collect(self._current, None, self._listed))

    def close(self) -> None:
        self._closed = True
        for handle in (self._timer, self._slow_timer):
            if handle is not None:
                handle.cancel()
        self._timer = self._slow_timer = None
        if self._first_done is not None:
            self._first_done.set()  # nobody waits for a baseline that will never come

    # -- scanning -------------------------------------------------------------------

    def _collect(self, old: Snap, since: int | None, listed: Listed) -> ScanResult:
        return scan_tree(
            self.root, self.filter, old, self.prefix, lambda: self._closed, since, listed
        )

    def _schedule(self) -> None:
        if self._loop is not None and not self._closed and self._timer is None:
            self._timer = self._loop.call_later(self.interval, self._kick)

    def _kick(self) -> None:
        self._timer = None
        if self._closed or self._scanning:
            return
        self._scanning = True
        old, listed = self._current, self._listed

        threading.Thread(
            target=lambda: self._deliver(self._run(old, None, listed)),
            name=f"poll {self.root}",
            daemon=True,
        ).start()

    def _run(self, old: Snap, since: int | None, listed: Listed) -> ScanResult | None:
        """One scan, on a worker thread; None when it was abandoned or failed."""
        try:
            return self._collect(old, since, listed)
        except _Closed:
            return None
        except Exception:
            log.exception("scan of %s failed", display(self.root))
            return None

    def _deliver(self, result: ScanResult | None) -> None:
        """From the scan thread: hand the result to the loop."""
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._finish, result)
        except RuntimeError:
            pass  # the loop is closed: the daemon is gone

    def _finish(self, result: ScanResult | None) -> None:
        self._scanning = False
        if self._closed:
            return
        try:
            if result is not None:
                self._apply(result)
        except Exception:
            log.exception("applying a scan of %s failed", display(self.root))
        finally:
            if self._first_done is not None:
                self._first_done.set()  # a failed first scan is retried by the next one
            self._schedule()  # a bug in one scan must not end the polling

    # -- applying -------------------------------------------------------------------

    def _apply(self, res: ScanResult) -> None:
        """Fold one scan into the state; report settled changes to the sink."""
        now = time.monotonic()
        self.scans += 1
        self.last_scan_seconds = res.seconds
        for key, message in res.problems:
            self._warn_once(key, message)
        self.unwatched = dict(res.unreadable)
        nudge = res.locks != self.locks  # a hold began or ended: the service looks again
        self.locks = res.locks
        self.dirs, self.files = res.dirs, res.files
        self._warn_cost(res)
        was = self.state, self.kind
        if res.ident is None:
            self.state, self.kind = ("watching" if self.subtree else "waiting"), ""
            if was[0] == "watching" and self._based and not self.subtree:
                log.warning("watch path %s vanished; waiting for it to return", display(self.root))
                self.lost_at = now
        else:
            if was[0] == "waiting" and self._based and self.scans > 1:
                log.info("watch path %s is back; polling it", display(self.root))
            self.state, self.kind, self.lost_at = "watching", res.kind, None
        if not self._based:  # the baseline
            self._based = True
            log.log(
                logging.DEBUG if self.subtree else logging.INFO,
                "polling %s every %gs: %d files in %d directories (first scan %.3fs)",
                display(self.root),
                self.interval,
                res.files,
                res.dirs,
                res.seconds,
            )
            self._current, self._listed, self._ident = res.snap, res.listed, res.ident
            self._settled, self._settled_ident = _without(res.snap, res.racy), res.ident
            if res.racy:
                # changed while the baseline was read: reported after the next quiet scan
                self._pending.update(res.racy)
                self._pending_since = now
            if self._loop is not None and (self.state, self.kind) != was:
                self.sink(self, [])  # the baseline landed after start(): look again
            return
        changed = list(res.changed)
        if res.ident != self._ident and res.ident is not None and self._ident is not None:
            changed.append("")  # the root itself was swapped
        self._current, self._listed, self._ident = res.snap, res.listed, res.ident
        if changed:
            self._pending.update(changed)
            if self._pending_since is None:
                self._pending_since = now
            if now - self._pending_since < self.max_delay:
                if nudge or (self.state, self.kind) != was:
                    self.sink(self, [])  # let the service re-derive its state
                return
        if self._pending:
            self._report()
        elif nudge or (self.state, self.kind) != was:
            self.sink(self, [])

    def _report(self) -> None:
        settled, current = self._settled, self._current
        net = []
        for rel in sorted(self._pending):
            if rel == "":
                if self._settled_ident != self._ident or lookup(settled, "") != lookup(current, ""):
                    net.append(self.root)
            elif lookup(settled, rel) != lookup(current, rel):
                net.append(f"{self.root}/{rel}")
        self._settled, self._settled_ident = current, self._ident
        self._pending, self._pending_since = set(), None
        self.sink(self, net)  # an empty list still tells the service to look again

    def _warn_cost(self, res: ScanResult) -> None:
        if res.seconds > self.interval / 2 and res.kind == "dir":
            self._warn_once(
                "cost",
                f"polling {display(self.root)} ({res.files:,} files in {res.dirs:,} "
                f"directories) takes {res.seconds:.2f}s per scan every {self.interval:g}s: "
                "a large share of a CPU; consider a longer poll_interval or excluding "
                "what does not need watching",
            )

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", message)
