"""Watch backends: they turn file-system activity into batches of changed paths.

``inotify.py`` (one shared kernel instance, event-driven) and ``poll.py`` (snapshots
diffed every ``poll_interval``). This module chooses between them per watch path and
builds a ``WatchPath``: the tree for one watch path of one service, on its backend,
plus the polled subtrees that inotify could not take.

Backend choice (``backend = "auto"``, the default): inotify reports only what the local
kernel writes, so a path on a file system whose contents another machine (or a FUSE
daemon, or a VM host) changes is polled. The file system is told by ``statfs(2)``'s
``f_type`` of the watch path (through a symlinked root; the nearest existing ancestor
when the path does not exist yet). ``"inotify"`` and ``"poll"`` force one; where the
config says ``auto``, the environment variable ``RELOADD_BACKEND`` (inotify | poll) may
force one too (STYLE.md: config, then environment, then detection).

==========  ===========  ==========================================================
f_type      name         why polled
==========  ===========  ==========================================================
0x6969      nfs          NFS (v2-v4): writes by other clients or the server
0x517b      smb          smbfs (old SMB1 client)
0xff534d42  cifs         CIFS/SMB client (cifs.ko)
0xfe534d42  smb2         SMB2/3 client (cifs.ko, newer kernels)
0x65735546  fuse         any FUSE file system: sshfs, rclone, s3fs, bindfs, GlusterFS
                         native client, virtiofs (VM shares; it reports the FUSE magic)
0x01021997  9p           9p/virtio-9p (QEMU, WSL2 ``/mnt/c``)
0x786f4256  vboxsf       VirtualBox shared folders
0x7c7c6673  prl_fs       Parallels shared folders
0xbacbacbc  vmhgfs       VMware shared folders (the old kernel module)
0x00c36400  ceph         CephFS (kernel client)
0x5346414f  afs          AFS (kAFS)
0x6b414653  afs          AFS (OpenAFS)
0x0bd00bd0  lustre       Lustre
0x47504653  gpfs         IBM Spectrum Scale / GPFS
0x01161970  gfs2         GFS2 (writes from other cluster nodes)
0x7461636f  ocfs2        OCFS2 (writes from other cluster nodes)
0x19830326  beegfs       BeeGFS
0x20030528  orangefs     OrangeFS / PVFS2
0x73757245  coda         Coda
0x564c      ncp          NetWare (ncpfs)
==========  ===========  ==========================================================

Everything else (ext4, xfs, btrfs, tmpfs, zfs, overlay, ...) is local: inotify. When the
inotify watch limit runs out (``fs.inotify.max_user_watches``: ``inotify_add_watch``
says ENOSPC) the subtrees that could not be watched are polled and the rest stays on
inotify; when no inotify instance can be had at all (``fs.inotify.max_user_instances``:
EMFILE) every watch path polls. The status says which and why, per watch path.

A hung mount (a dead NFS server, a stopped FUSE daemon) makes ``statfs`` and ``stat``
block for ever. Every look at a watch path's file system therefore runs in a daemon
thread and is given up after ``PROBE_TIMEOUT``: ``look_all`` looks at many paths at once
from the loop, and the daemon hands the answers to the ``WatchPath``s it builds
(``looks=``). A path that does not answer is polled (the scans run in threads too) with
the reason "statfs did not answer in 5s", and looked at again every ``poll_interval``
until it answers. The threads are daemon threads of their own, not an executor's: one
stuck in a hung mount must not keep reloadd from exiting (``asyncio.run`` waits for the
default executor's threads, and interpreter exit joins every executor's).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from reloadd.probe import PROBE_TIMEOUT, shared_call, stuck
from reloadd.watch.filters import PathFilter, display
from reloadd.watch.inotify import LIMIT, MOUNT, Hub, Tree, polled_reason
from reloadd.watch.poll import PollTree

log = logging.getLogger("reloadd.watch")

BACKENDS = ("auto", "inotify", "poll")
ENV = "RELOADD_BACKEND"  # forces a backend where the config says "auto" (tests, CI, debugging)

# statfs f_type -> name, for file systems whose changes inotify does not (fully) see.
REMOTE_FS: dict[int, str] = {
    0x6969: "nfs",
    0x517B: "smb",
    0xFF534D42: "cifs",
    0xFE534D42: "smb2",
    0x65735546: "fuse",
    0x01021997: "9p",
    0x786F4256: "vboxsf",
    0x7C7C6673: "prl_fs",
    0xBACBACBC: "vmhgfs",
    0x00C36400: "ceph",
    0x5346414F: "afs",
    0x6B414653: "afs",
    0x0BD00BD0: "lustre",
    0x47504653: "gpfs",
    0x01161970: "gfs2",
    0x7461636F: "ocfs2",
    0x19830326: "beegfs",
    0x20030528: "orangefs",
    0x73757245: "coda",
    0x564C: "ncp",
}

# Names of common local file systems, only to make the status readable.
LOCAL_FS: dict[int, str] = {
    0xEF53: "ext4",  # ext2, ext3 and ext4 share it
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0x01021994: "tmpfs",
    0x2FC12FC1: "zfs",
    0x794C7630: "overlay",
    0xF2F52010: "f2fs",
    0xCA451A4E: "bcachefs",
    0x858458F6: "ramfs",
    0x73717368: "squashfs",
    0xE0F5E1E2: "erofs",
    0x4D44: "vfat",
    0x2011BAB0: "exfat",
    0x7366746E: "ntfs3",
    0x5346544E: "ntfs",
    0x52654973: "reiserfs",
    0x3153464A: "jfs",
    0x3434: "nilfs2",
    0x482B: "hfsplus",
    0x9660: "iso9660",
    0x15013346: "udf",
    0x9FA0: "proc",
    0x62656572: "sysfs",
    0x1CD1: "devpts",
}


def choose_backend(
    configured: str, fs_type_magic: int | None, env: str | None = None
) -> tuple[str, str]:
    """The backend for a watch path and why: pure, from the config, the environment
    (``RELOADD_BACKEND``, consulted only when the config says ``auto``) and statfs's
    f_type. An ``env`` that is not a backend name is ignored (the caller warns).

    >>> choose_backend("auto", 0x6969)
    ('poll', 'auto: nfs')
    >>> choose_backend("auto", 0xEF53)
    ('inotify', 'auto: local (ext4)')
    >>> choose_backend("poll", 0xEF53)
    ('poll', 'configured')
    >>> choose_backend("auto", 0xEF53, env="poll")
    ('poll', 'RELOADD_BACKEND=poll')
    """
    if configured in ("inotify", "poll"):
        return configured, "configured"
    if configured != "auto":
        raise ValueError(f"unknown backend {configured!r}; expected one of {BACKENDS}")
    if env in ("inotify", "poll"):
        return env, f"{ENV}={env}"
    if fs_type_magic is None:
        return "inotify", "auto: file system unknown"
    magic = fs_type_magic & 0xFFFFFFFF
    remote = REMOTE_FS.get(magic)
    if remote is not None:
        return "poll", f"auto: {remote}"
    return "inotify", f"auto: local ({LOCAL_FS.get(magic, f'0x{magic:x}')})"


_env_warned: list[str] = []  # warn about a bad RELOADD_BACKEND once per process

# -- statfs(2) ------------------------------------------------------------------------

_libc: Any = None


def _statfs_fn() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc.statfs


def fs_type(path: str) -> int | None:
    """statfs(2)'s f_type for ``path`` (symlinks followed), or None if statfs fails.

    ``os.statvfs`` does not carry f_type, so libc's statfs is called through ctypes;
    f_type is the first member of ``struct statfs`` (a ``long``, an ``unsigned int`` on
    s390x), and a 256-byte buffer is larger than the struct on every architecture.
    """
    try:
        fn = _statfs_fn()
    except (OSError, AttributeError):
        return None
    buf = ctypes.create_string_buffer(256)
    if fn(os.fsencode(path), buf) != 0:
        return None
    field = ctypes.c_uint if os.uname().machine == "s390x" else ctypes.c_long
    return int(field.from_buffer(buf).value) & 0xFFFFFFFF


def nearest_existing(path: str) -> str:
    """``path`` if it exists (following symlinks), else its nearest existing ancestor."""
    path = os.path.normpath(os.path.abspath(path))
    while not os.path.exists(path) and path != "/":
        path = os.path.dirname(path)
    return path


# -- looking at a path that may be on a hung mount --------------------------------------


class Look(NamedTuple):
    """What a look at a watch path found: statfs's f_type where it is (or of its
    nearest existing ancestor), and whether the path itself exists."""

    magic: int | None
    exists: bool


def look(root: str) -> Look:
    """statfs of ``root``'s nearest existing ancestor, and whether ``root`` exists:
    blocking, and both can hang on a dead network mount (``look_now``/``look_all`` run
    it in a thread)."""
    root = _norm(root)
    near = nearest_existing(root)  # ``root`` itself when it exists
    return Look(fs_type(near), near == root)


def _norm(path: str) -> str:
    return os.path.normpath(os.path.abspath(path))  # (no file-system access)


def _look_key(root: str) -> tuple[str, str]:
    return ("statfs", _norm(root))


def look_now(root: str) -> Look | None:
    """``look(root)`` in a thread, waited for here (blocking) up to ``PROBE_TIMEOUT``
    after it started; None when it did not answer in time."""
    if stuck(_norm(root)):
        return None
    call = shared_call(_look_key(root), look, root)
    if not call.wait():
        return None
    result: Look = call.future.result()
    return result


async def look_async(root: str) -> Look | None:
    """``look_now`` without blocking the loop."""
    if stuck(_norm(root)):
        return None
    call = shared_call(_look_key(root), look, root)
    wait = call.deadline(PROBE_TIMEOUT) - time.monotonic()
    if call.future.done():
        return call.future.result()  # type: ignore[no-any-return]
    waiter = asyncio.wrap_future(call.future)
    try:
        await asyncio.wait([waiter], timeout=max(wait, 0.0))
        return waiter.result() if waiter.done() else None
    finally:
        waiter.cancel()  # (the shared call itself cannot be cancelled: it is running)


def needs_look(configured: str) -> bool:
    """Whether a watch path with this configured backend is looked at before it is
    armed: for ``auto`` to choose, and for ``inotify`` because its walk runs on the loop
    and must not meet a hung mount. ``poll`` (or ``auto`` forced to poll by
    RELOADD_BACKEND) scans in threads anyway."""
    if configured == "poll":
        return False
    return not (configured == "auto" and os.environ.get(ENV) == "poll")


async def look_all(paths: Iterable[tuple[str, str]]) -> dict[str, Look | None]:
    """Look at every ``(path, configured backend)`` that needs it, all at once, each up
    to PROBE_TIMEOUT: the answers (None: no answer in time) for ``WatchPath(looks=)``."""
    roots = sorted({_norm(p) for p, b in paths if needs_look(b)})
    answers = await asyncio.gather(*(look_async(root) for root in roots))
    return dict(zip(roots, answers, strict=True))


# -- one watch path ---------------------------------------------------------------------

Sink = Callable[["WatchPath", list[str]], None]


class WatchPath:
    """One watch path of one service, on the backend chosen for it.

    The surface the service uses: ``root``, ``state``, ``kind``, ``holding``,
    ``watch_count``, ``unwatched``, ``start()``, ``close()``, plus ``backend`` and
    ``reason`` for the status. ``primary`` is an inotify ``Tree`` or a ``PollTree``;
    ``polled`` maps subtrees (relative to the root) that the inotify tree did not watch
    (the watch limit ran out, or a network/FUSE mount point its walk does not enter) to
    the ``PollTree`` that covers them instead.

    While an ``auto`` path is waiting for its root, its file system is looked at again
    every ``poll_interval``: a late mount (NFS at boot) makes no inotify event on the
    directory it covers, and may call for the other backend. So is, at once, a root that
    turns up on another device (``current`` swapped to a release on NFS, or back).
    """

    def __init__(
        self,
        hub: Hub,
        root: str,
        filt: PathFilter,
        sink: Sink,
        *,
        backend: str = "auto",
        poll_interval: float = 1.0,
        max_delay: float = 2.0,
        label: str = "",
        looks: Mapping[str, Look | None] | None = None,
    ) -> None:
        self.hub = hub
        self.root = os.path.normpath(os.path.abspath(root))
        self.filter = filt
        self.sink = sink
        self.configured = backend
        self.poll_interval = poll_interval
        self.max_delay = max_delay
        self.label = label or display(self.root)
        self.polled: dict[str, PollTree] = {}
        self.unanswered = False  # the last look at its file system did not answer in time
        self.backend, self.reason = self._choose(looks or {})
        self._chosen = self.reason  # why this backend, before any fallback
        self.primary: Tree | PollTree = self._make(self.backend)
        self._starting = False
        self._sync_soon: asyncio.Handle | None = None
        self._recheck: asyncio.TimerHandle | None = None
        self._rechecking: asyncio.Task[None] | None = None  # the statfs of a recheck
        self._limit_warning: asyncio.Task[None] | None = None  # waits for the counts
        self._limit_warned = False
        self._closed = False
        self._device: int | None = None  # the root's device when its backend was chosen
        self._moved = False  # the root is on another device now: look at it again
        self._moves = 0  # how often it moved (a look tells whether it moved meanwhile)

    # -- the surface ------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self.primary.state

    @property
    def kind(self) -> str:
        return self.primary.kind

    @property
    def holding(self) -> bool:
        return self.primary.holding or any(p.holding for p in self.polled.values())

    @property
    def watch_count(self) -> int:
        return self.primary.watch_count

    @property
    def unwatched(self) -> dict[str, str]:
        """Subtrees (relative to the root) not watched by inotify, and why."""
        out = {}
        for rel, why in self.primary.unwatched.items():
            out[rel] = f"{why}: polled" if rel in self.polled else why
        for prefix, tree in self.polled.items():
            for rel, why in tree.unwatched.items():
                out[f"{prefix}/{rel}" if rel else prefix] = why
        return out

    @property
    def polled_dirs(self) -> int:
        trees = [self.primary] if isinstance(self.primary, PollTree) else []
        return sum(t.dirs for t in [*trees, *self.polled.values()])

    @property
    def polled_files(self) -> int:
        trees = [self.primary] if isinstance(self.primary, PollTree) else []
        return sum(t.files for t in [*trees, *self.polled.values()])

    def describe(self) -> dict[str, Any]:
        """The status of this watch path, as plain data."""
        out: dict[str, Any] = {
            "path": display(self.root),
            "state": self.state,
            "kind": self.kind or None,
            "backend": self.backend_shown,
            "backend_reason": self.reason,
            "watches": self.watch_count,
            "unwatched": {display(k): v for k, v in self.unwatched.items()},
        }
        if isinstance(self.primary, PollTree) or self.polled:
            out["poll"] = {
                "interval": self.poll_interval,
                "subtrees": len(self.polled),
                "dirs": self.polled_dirs,
                "files": self.polled_files,
            }
        return out

    @property
    def backend_shown(self) -> str:
        """``inotify``, ``poll``, or ``inotify+poll`` (watch-limit fallback subtrees)."""
        return "inotify+poll" if self.polled else self.backend

    def start(self) -> None:
        """Arm the backend; the first walk or scan is a baseline and reports nothing."""
        log.info("%s: %s (%s)", self.label, self.backend, self.reason)
        self._starting = True
        try:
            self.primary.start()
            self._sync()
        finally:
            self._starting = False
        self._device = self._root_device()
        self._arm_recheck()

    async def baseline(self) -> None:
        """Return once every polled tree of this path has its first scan (``start()``
        never waits for one: a large tree must not stall the loop). At once for a path
        whose file system did not answer: its first scan is stuck too."""
        while not self.unanswered:
            trees = [self.primary, *self._limit_subtrees()]
            for tree in trees:
                if isinstance(tree, PollTree):
                    await tree.baseline()
            if trees == [self.primary, *self._limit_subtrees()]:
                break  # nothing was added or switched meanwhile
        warning = self._limit_warning
        if warning is not None and not warning.done():
            await asyncio.wait([warning])  # logged before READY=1

    def _limit_subtrees(self) -> list[PollTree]:
        """The polled subtrees that hit the watch limit. Not the network mounts below
        the root: one may hang, so their first scans are not waited for (a change made
        meanwhile is still seen: the first scan does not swallow what it races)."""
        tree = self.primary
        if not isinstance(tree, Tree):
            return list(self.polled.values())
        return [sub for rel, sub in self.polled.items() if tree.unwatched.get(rel) == LIMIT]

    def close(self) -> None:
        self._closed = True
        for task in (self._rechecking, self._limit_warning):
            if task is not None:
                task.cancel()
        self._rechecking = self._limit_warning = None
        for handle in (self._sync_soon, self._recheck):
            if handle is not None:
                handle.cancel()
        self._sync_soon = self._recheck = None
        self.primary.close()
        for tree in self.polled.values():
            tree.close()
        self.polled.clear()

    # -- building ---------------------------------------------------------------------

    def _choose(self, looks: Mapping[str, Look | None]) -> tuple[str, str]:
        if not needs_look(self.configured):
            return self._decide(None)
        # not looked at by the caller (tests, or built without a loop): look, waiting here
        found = looks[self.root] if self.root in looks else look_now(self.root)
        if found is None:
            return self._no_answer()
        return self._decide(found.magic)

    def _no_answer(self) -> tuple[str, str]:
        """Its file system did not answer in time (a hung mount): poll, which scans in
        threads, and say so; it is looked at again every ``poll_interval``."""
        self.unanswered = True
        reason = f"statfs did not answer in {PROBE_TIMEOUT:g}s"
        log.warning(
            "%s: statfs did not answer in %gs (a hung network or FUSE mount?); polling it, "
            "off the event loop, and looking again every %gs",
            self.label,
            PROBE_TIMEOUT,
            self.poll_interval,
        )
        return "poll", reason

    def _decide(self, magic: int | None) -> tuple[str, str]:
        env = os.environ.get(ENV) or None
        if env is not None and env not in BACKENDS and not _env_warned:
            _env_warned.append(env)
            log.warning("%s=%r is not one of %s; ignored", ENV, env, ", ".join(BACKENDS))
        backend, reason = choose_backend(self.configured, magic, env)
        if backend == "inotify" and self.hub.error:
            return "poll", f"fallback: {self.hub.error}"
        return backend, reason

    def _make(self, backend: str) -> Tree | PollTree:
        if backend == "poll":
            return PollTree(
                self.root,
                self.filter,
                self._on_poll,
                interval=self.poll_interval,
                max_delay=self.max_delay,
                hold_lost_for=self.max_delay,
            )
        tree = Tree(
            self.hub,
            self.root,
            self.filter,
            self._on_inotify,
            hold_lost_for=self.max_delay,
        )
        tree.on_limit = self._on_limit
        return tree

    # -- reports ----------------------------------------------------------------------

    def _on_inotify(self, tree: Tree, paths: list[str]) -> None:
        self._sync()
        self._check_device()
        self._arm_recheck()
        self.sink(self, paths)

    def _root_device(self) -> int | None:
        ident = self.primary.ident
        if ident is None:
            return None
        device = ident[2] if ident[0] == "dir" else ident[1]
        return device if isinstance(device, int) else None

    def _check_device(self) -> None:
        """The root found on another device (``current`` swapped to a release on NFS or
        back, a file system mounted over it): for ``auto``, look at its file system
        again, now, off the loop: it may call for the other backend."""
        if self.configured != "auto":
            return
        device = self._root_device()  # (on every report: cheap checks first)
        if device is None or device == self._device or not needs_look(self.configured):
            return  # (RELOADD_BACKEND=poll: no look could change it)
        self._device, self._moved = device, True
        self._moves += 1  # a look already under way answers for where the root was
        self._look_soon()

    def _look_soon(self) -> None:
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None
        if self._rechecking is None and not self._closed:
            with contextlib.suppress(RuntimeError):  # no loop: looked at when built only
                self._recheck = asyncio.get_running_loop().call_later(0, self._on_recheck)

    def _on_poll(self, tree: PollTree, paths: list[str]) -> None:
        if tree is self.primary:
            self._check_device()
            self._arm_recheck()
        elif tree.kind == "" and not tree.pending and not self._is_mount(tree):
            self._drop_gone(tree)
        self.sink(self, paths)

    def _is_mount(self, sub: PollTree) -> bool:
        """Whether a polled subtree is a network mount point. One that stops answering
        (a FUSE daemon gone: ENOTCONN; a rebooting NFS server: ESTALE, EIO) is still
        mounted: it stays polled, and reports its files again when it answers. Its
        unmount is a change of the mount table, which the hub follows."""
        tree = self.primary
        return (
            isinstance(tree, Tree)
            and tree.unwatched.get(sub.prefix, "").startswith(MOUNT)
            and tree.mounted(sub.prefix)
        )

    # -- the watch-limit fallback -------------------------------------------------------

    def _on_limit(self, tree: Tree, rel: str) -> None:
        """The inotify tree did not watch ``rel`` (ENOSPC, or a network mount point that
        it does not enter): poll it, after the walk."""
        if self._starting or self._closed:
            return  # start() syncs when the first walk is done
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._sync_soon is None:
            self._sync_soon = loop.call_soon(self._sync)

    def _drop_gone(self, sub: PollTree) -> None:
        """A polled subtree is gone and its deletions reported: stop polling it. If it
        comes back, the inotify tree walks it again (and hands it back if still full)."""
        sub.close()
        self.polled.pop(sub.prefix, None)
        if isinstance(self.primary, Tree) and polled_reason(
            self.primary.unwatched.get(sub.prefix, "")
        ):
            del self.primary.unwatched[sub.prefix]
        self._update_reason()

    def _update_reason(self) -> None:
        n = len(self._limit_subtrees())
        m = len(self.polled) - n
        mounts = f"{m} network mount{'s' if m != 1 else ''} polled"
        if n:
            self.reason = f"fallback: watch limit ({n} subtree{'s' if n != 1 else ''} polled)"
            if m:
                self.reason += f"; {mounts}"
            return
        if self._limit_warned:
            self._limit_warned = False  # a new shortage warns again
            if m:
                log.info("%s: no subtree is polled for the watch limit any more", self.label)
            else:
                log.info("%s: no subtree is polled any more; all on inotify", self.label)
        self.reason = f"{self._chosen}; {mounts}" if m else self._chosen

    def _sync(self) -> None:
        """Make ``polled`` match the subtrees the inotify tree could not watch."""
        self._sync_soon = None
        tree = self.primary
        if self._closed or not isinstance(tree, Tree) or not (tree.unwatched or self.polled):
            return  # (the common case, on every report: nothing is or was polled)
        want = {
            rel
            for rel, why in tree.unwatched.items()
            if polled_reason(why) and rel not in tree.dirs
        }
        for rel in [r for r in self.polled if r not in want]:
            self.polled.pop(rel).close()
        added = sorted(want - self.polled.keys())
        for rel in added:
            sub = PollTree(
                f"{self.root}/{rel}" if rel else self.root,
                self.filter,
                self._on_poll,
                interval=self.poll_interval,
                max_delay=self.max_delay,
                hold_lost_for=self.max_delay,
                prefix=rel,
                subtree=True,
            )
            self.polled[rel] = sub
            sub.start(report=not self._starting)
        self._update_reason()
        for rel in added:
            why = tree.unwatched[rel]
            if why != LIMIT:
                log.info(
                    "%s: %s is a %s: not walked by inotify (it may hang, and inotify does "
                    "not see writes made elsewhere on it); polled every %gs instead",
                    self.label,
                    rel,
                    why,
                    self.poll_interval,
                )
        if any(tree.unwatched[rel] == LIMIT for rel in added) and not self._limit_warned:
            self._limit_warned = True
            self._warn_when_counted()

    def _warn_when_counted(self) -> None:
        """Warn about the watch limit once the new subtrees' first scans have counted
        their directories (the scans run in threads: the loop does not wait for them)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._warn_limit()
            return
        subs = self._limit_subtrees()

        async def counted() -> None:
            for sub in subs:
                await sub.baseline()
            if not self._closed:
                self._warn_limit()

        self._limit_warning = loop.create_task(counted())

    def _warn_limit(self) -> None:
        subs = self._limit_subtrees()
        need = sum(max(t.dirs, 1) for t in subs)
        n = len(subs)
        sysctl, limit = (
            "fs.inotify.max_user_watches",
            _read_int("/proc/sys/fs/inotify/max_user_watches"),
        )
        shown = f"{sysctl} = {limit}" if limit is not None else sysctl
        ns_limit = _read_int("/proc/sys/user/max_inotify_watches")  # this user namespace's
        if ns_limit is not None and limit is not None and ns_limit < limit:
            # in a container the namespace's own limit binds first: that is the one to raise
            sysctl, limit = "user.max_inotify_watches", ns_limit
            shown += f"; {sysctl} = {limit} in this user namespace"
        log.warning(
            "%s: the inotify watch limit (%s) is exhausted; %d subtree%s (%d director%s) %s "
            "polled every %gs instead. To watch them with inotify, raise the limit by at "
            "least %d: `sysctl %s=%s` (and in /etc/sysctl.d/ to keep it)",
            self.label,
            shown,
            n,
            "s" if n != 1 else "",
            need,
            "ies" if need != 1 else "y",
            "are" if n != 1 else "is",
            self.poll_interval,
            need,
            sysctl,
            limit + need if limit is not None else "<higher>",
        )

    # -- a waiting auto path, or one that did not answer: look at its file system again

    def _wants_look(self) -> bool:
        if self.unanswered:
            return True  # until it answers
        return self.configured == "auto" and (self.primary.state == "waiting" or self._moved)

    def _arm_recheck(self) -> None:
        if self._closed or self._recheck is not None or self._rechecking is not None:
            return  # (a look that is running re-arms when done)
        if not self._wants_look():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._recheck = loop.call_later(self.poll_interval, self._on_recheck)

    def _on_recheck(self) -> None:
        self._recheck = None
        if self._closed or not self._wants_look() or self._rechecking is not None:
            return
        self._rechecking = asyncio.get_running_loop().create_task(self._recheck_off_loop())

    async def _recheck_off_loop(self) -> None:
        """statfs (and a stat) in a thread, up to PROBE_TIMEOUT: a dead network mount
        can hang both. While one hangs, the next look waits for the same thread."""
        moves = self._moves
        try:
            found = await look_async(self.root)
        except asyncio.CancelledError:
            return  # closed meanwhile
        finally:
            self._rechecking = None
        if self._closed or not self._wants_look():
            return
        if self._moves != moves:
            self._look_soon()  # the root moved while looking: the answer is out of date
            return
        try:
            if found is None:
                if not self.unanswered:
                    backend, reason = self._no_answer()
                    if backend != self.backend:
                        self._switch(backend, reason, exists=False)
                    else:
                        self._chosen = self.reason = reason
            else:
                self._apply_recheck(found.magic, found.exists)
        finally:
            self._arm_recheck()

    def _apply_recheck(self, magic: int | None, exists: bool) -> None:
        was_unanswered, self.unanswered = self.unanswered, False
        moved, self._moved = self._moved, False
        backend, reason = self._decide(magic)
        if was_unanswered:
            log.info("%s: statfs answers again (%s)", self.label, reason)
        if backend != self.backend:
            log.info(
                "%s: the file system under it changed (%s); switching to %s",
                self.label,
                reason,
                backend,
            )
            self._switch(backend, reason, exists)
        elif moved:
            self._chosen = reason  # followed and reported already: only the reason
            self._update_reason()
        elif exists and isinstance(self.primary, Tree):
            self._chosen = reason
            self._update_reason()
            self.primary.rescan()  # it appeared without an event (a mount): look now
            self.primary.flush()
        elif was_unanswered:
            self._chosen = self.reason = reason  # polled as before, now for this reason

    def _switch(self, backend: str, reason: str, exists: bool) -> None:
        """Replace the primary tree by one on ``backend``."""
        for sub in self.polled.values():
            sub.close()
        self.polled.clear()
        self.primary.close()
        self.backend, self.reason = backend, reason
        self._chosen = reason
        self.primary = self._make(backend)
        if isinstance(self.primary, PollTree):
            self.primary.start(report=True)  # content found now is a change
        else:
            self.primary.start()
            self._device = self._root_device()
            if exists:
                self.sink(self, [self.root])  # the root appeared: its content is new
            self._sync()


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


__all__ = [
    "BACKENDS",
    "LOCAL_FS",
    "PROBE_TIMEOUT",
    "REMOTE_FS",
    "Look",
    "PollTree",
    "Tree",
    "WatchPath",
    "choose_backend",
    "fs_type",
    "look",
    "look_all",
    "look_async",
    "look_now",
    "nearest_existing",
    "needs_look",
]
