"""Who besides root could change a path: the one rule behind reloadd's trust checks.

reloadd usually runs as root, and three things it does as root depend on files that must
not be in a non-root user's hands: reading its configuration (``config.check_trusted``),
running ``command``/``check``/``exec`` over a watched tree
(``config.root_over_writable_tree``) and believing a pidfile (``target.Pidfile.vet``).
All three ask this module the same question about a path, and apply the same rule:

* The path and every directory above it, up to ``/``, count.
* An entry owned by a user other than root: that user could change it.
* An entry writable by its group: that group, unless the group is root's (gid 0).
* An entry writable by others: anyone.
* A symlink's own mode means nothing, its owner does (in a sticky directory the owner of
  a symlink may replace it); a symlink on the way is followed, and what it points to (and
  every directory above that) is judged as well, hop by hop.
* A directory above the path that is sticky (like ``/tmp``) does not make its entries
  writable by others, however writable it is itself: only an entry's owner (or the
  directory's) may rename or delete it. Its owner still counts, and so does an entry in
  it owned by a user. The path itself gets no such pass: anyone can add to a sticky
  directory.
* A path that does not exist is judged by the nearest directory above it that does:
  whoever can write there can create it.

Decision, gid 0: a group-writable entry whose group is root's (gid 0) does *not* count.
Only root is in group root on a normal Linux system, and this is systemd's rule for
``PIDFile=`` (and was already reloadd's for pidfiles and watched trees); sshd's StrictModes,
which the configuration check first followed, refuses any group write bit. The choice is
the one line ``TRUSTED_GIDS`` below.

Only ``os.lstat``/``os.readlink`` are used on the paths (plus passwd/group look-ups to
name users); nothing is opened or changed.

Example:
    >>> writers("/etc/passwd").root_only  # doctest: +SKIP
    True
    >>> writers("/srv/api/app.py").describe()  # doctest: +SKIP
    'www-data (uid 33)'
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass

TRUSTED_GIDS = frozenset({0})  # groups whose write permission is root's alone (see above)
MAX_SYMLINK_HOPS = 40  # the kernel's limit (ELOOP)


def user_name(uid: int) -> str:
    """``www-data (uid 33)``; ``uid 12345`` when the user has no passwd entry."""
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def group_name(gid: int) -> str:
    """``adm (gid 4)``; ``gid 12345`` when the group has no entry."""
    try:
        return f"{grp.getgrgid(gid).gr_name} (gid {gid})"
    except KeyError:
        return f"gid {gid}"


@dataclass(frozen=True)
class Entry:
    """One entry on the way to a path that lets someone besides root change the path."""

    path: str
    st: os.stat_result  # its lstat
    group: int | None = None  # its group, when that group may write it
    anyone: bool = False  # everyone may write it

    @property
    def mode(self) -> int:
        return stat.S_IMODE(self.st.st_mode)

    @property
    def kind(self) -> str:
        if stat.S_ISLNK(self.st.st_mode):
            return "symlink"
        return "directory" if stat.S_ISDIR(self.st.st_mode) else "file"

    @property
    def user(self) -> int | None:
        """Its owner, when not root."""
        return self.st.st_uid if self.st.st_uid != 0 else None

    @property
    def open(self) -> bool:
        """Writable by a group or by everyone, not only by its owner."""
        return self.anyone or self.group is not None

    def describe(self) -> str:
        """``/srv/api/app is owned by www-data (uid 33) (mode 0755)``, or
        ``/srv/api is writable by everyone (owner root, mode 0777)``."""
        if self.open:
            who = "everyone" if self.anyone else f"group {group_name(self.st.st_gid)}"
            owner = "root" if self.user is None else user_name(self.st.st_uid)
            return f"{self.path} is writable by {who} (owner {owner}, mode {self.mode:04o})"
        return f"{self.path} is owned by {user_name(self.st.st_uid)} (mode {self.mode:04o})"


def judge(path: str, st: os.stat_result, *, above: bool = False) -> Entry | None:
    """What ``st`` (of ``path``) lets others do, or None when only root can change it.

    ``above``: ``path`` is a directory on the way to the path being judged, so a sticky
    directory protects it (its write bits do not count, its owner does).
    """
    mode = st.st_mode
    group, anyone = None, False
    sticky_above = above and stat.S_ISDIR(mode) and mode & stat.S_ISVTX
    if not stat.S_ISLNK(mode) and not sticky_above:
        anyone = bool(mode & stat.S_IWOTH)
        if mode & stat.S_IWGRP and st.st_gid not in TRUSTED_GIDS:
            group = st.st_gid
    if st.st_uid == 0 and group is None and not anyone:
        return None
    return Entry(path, st, group, anyone)


@dataclass(frozen=True)
class Writers:
    """Who besides root could change ``path``, and through which entries on its way."""

    path: str
    entries: tuple[Entry, ...] = ()  # the path's own first, then upwards, then symlink targets
    errors: tuple[tuple[str, str], ...] = ()  # (entry, why) that could not be looked at

    @property
    def users(self) -> frozenset[int]:
        return frozenset(e.user for e in self.entries if e.user is not None)

    @property
    def groups(self) -> frozenset[int]:
        return frozenset(e.group for e in self.entries if e.group is not None)

    @property
    def anyone(self) -> bool:
        return any(e.anyone for e in self.entries)

    @property
    def root_only(self) -> bool:
        return not self.entries

    @property
    def open_by(self) -> Entry | None:
        """The first entry writable by a group or by everyone."""
        return next((e for e in self.entries if e.open), None)

    def describe(self) -> str:
        """``www-data (uid 33), group adm (gid 4) and everyone``, or ``only root``."""
        who = [user_name(u) for u in sorted(self.users)]
        who += [f"group {group_name(g)}" for g in sorted(self.groups)]
        who += ["everyone"] if self.anyone else []
        if not who:
            return "only root"
        return who[0] if len(who) == 1 else f"{', '.join(who[:-1])} and {who[-1]}"


def writers(path: str | os.PathLike[str]) -> Writers:
    """Who besides root could change ``path`` (the module's rule), from ``os.lstat`` alone."""
    named = os.path.abspath(os.fspath(path))
    found = _Walk()
    found.chain(named, end=True, hops=0)
    found.chain(os.path.realpath(named), end=True, hops=0)  # the kernel's view, as a backstop
    return Writers(named, tuple(found.entries), tuple(found.errors))


Signature = tuple[tuple[int, ...], ...]


def _signature(ancestry: list[str]) -> Signature | None:
    """All that ``writers`` depends on for the path whose ``ancestry`` this is, from one
    ``lstat`` per entry; None when that is not enough to tell: a symlink on the way (its
    target is judged too) or an entry that cannot be looked at."""
    out: list[tuple[int, ...]] = []
    for here in ancestry:
        try:
            st = os.lstat(here)
        except (FileNotFoundError, NotADirectoryError):
            out.append(())
            continue
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            return None
        out.append((st.st_dev, st.st_ino, st.st_mode, st.st_uid, st.st_gid))
    return tuple(out)


class Memo:
    """``writers(path)``, judged again only when its lstat signature changed.

    For a path checked on every event (a pidfile before each signal): the entries are
    looked at afresh each time, only the judging is skipped. A verdict is kept only when
    the signature was the same before and after it was made, so a change racing the
    judging is never remembered under the wrong signature.
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self._ancestry = _ancestry(self.path)
        self._key: Signature | None = None
        self._found: Writers | None = None

    def __call__(self) -> Writers:
        key = _signature(self._ancestry)
        if key is not None and key == self._key and self._found is not None:
            return self._found
        found = writers(self.path)
        if key is not None and _signature(self._ancestry) == key:
            self._key, self._found = key, found
        else:
            self._key, self._found = None, None
        return found


class _Walk:
    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.errors: list[tuple[str, str]] = []
        self.seen: set[tuple[str, bool]] = set()

    def chain(self, path: str, *, end: bool, hops: int) -> None:
        """Judge ``path`` (the end of the walk when ``end``) and every directory above it."""
        for here in _ancestry(path):
            if (here, end) in self.seen:
                return  # the rest of the way up was judged already
            self.seen.add((here, end))
            try:
                st = os.lstat(here)
            except (FileNotFoundError, NotADirectoryError):
                continue  # not there (yet): whoever can create it is judged above
            except OSError as e:
                self.errors.append((here, e.strerror or str(e)))
                end = False
                continue
            entry = judge(here, st, above=not end)
            if entry is not None and entry not in self.entries:
                self.entries.append(entry)
            if stat.S_ISLNK(st.st_mode):
                self.follow(here, end=end, hops=hops + 1)
            end = False

    def follow(self, link: str, *, end: bool, hops: int) -> None:
        if hops > MAX_SYMLINK_HOPS:
            self.errors.append((link, "too many levels of symbolic links"))
            return
        try:
            target = os.readlink(link)
        except OSError as e:
            self.errors.append((link, e.strerror or str(e)))
            return
        base = os.path.realpath(os.path.dirname(link))
        self.chain(os.path.normpath(os.path.join(base, target)), end=end, hops=hops)


def _ancestry(path: str) -> list[str]:
    """``path`` and every directory above it, up to ``/``."""
    out = [path]
    while (parent := os.path.dirname(path)) != path:
        out.append(parent)
        path = parent
    return out
