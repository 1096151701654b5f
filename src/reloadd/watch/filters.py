"""Which paths under a watch root matter: built-in ignores, then include/exclude globs.

Globs follow gitignore: a pattern without ``/`` matches a name at any depth, one with a
``/`` is anchored at the watch root, ``**`` spans directories, a trailing ``/`` matches
directories only, a backslash makes the next character literal (``\\[draft\\].md``). A
pattern that matches a directory matches everything below it, so ``exclude =
["node_modules"]`` prunes the whole tree (and it is never watched).

Paths are relative to the watch root, ``/``-separated ``str`` as ``os.fsdecode`` gives
them: a file name that is not valid UTF-8 arrives with surrogate escapes and is matched
like any other (``display`` turns it into something printable).

Built-in ignores (DESIGN.md), plus one choice of ours: ``__pycache__`` directories and
``*.pyc``/``*.pyo`` files are derived output that a reloaded Python server writes itself,
so watching them would make a reload trigger the next one.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence

VCS_DIRS = frozenset({".git", ".hg", ".svn"})
IGNORED_DIRS = VCS_DIRS | {"__pycache__"}

_CACHE_CAP = 65_536  # path decisions remembered per filter
_DROPPING_NAMES = frozenset({"4913"})  # vim's "can I write here" probe
_DROPPING_SUFFIXES = (".swp", ".swx", "~", "___jb_tmp___", "___jb_old___", ".pyc", ".pyo")


def is_dropping(name: str) -> bool:
    """True for editor droppings and bytecode that never trigger a reload.

    >>> is_dropping(".app.py.swp"), is_dropping("app.py~"), is_dropping("app.py")
    (True, True, False)
    """
    if name in _DROPPING_NAMES or name.endswith(_DROPPING_SUFFIXES):
        return True
    if name.startswith(".#"):  # emacs lock link
        return True
    return len(name) > 1 and name.startswith("#") and name.endswith("#")  # emacs autosave


def display(path: str) -> str:
    r"""A printable form of a path that may hold surrogate-escaped bytes.

    >>> display("caf\udcc3")
    'caf\\xc3'
    """
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _translate(body: str) -> str:
    """A glob body (no leading/trailing slash handling) as a regular expression."""
    out: list[str] = []
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c == "\\" and i + 1 < n:  # gitignore: a backslash makes the next char literal
            out.append(re.escape(body[i + 1]))
            i += 2
        elif body.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif body.startswith("/**", i) and i + 3 == n:
            out.append("/.*")
            i += 3
        elif body.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = body.find("]", i + 2 if body[i + 1 : i + 2] in ("!", "]") else i + 1)
            if j < 0:
                out.append(re.escape(c))
                i += 1
                continue
            cls = fnmatch.translate(body[i : j + 1])  # reuse fnmatch's class handling
            out.append(cls[cls.index("[") : cls.rindex("]") + 1])
            i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def compile_glob(pattern: str) -> re.Pattern[str]:
    """Compile one gitignore-style pattern to a regex over root-relative paths.

    Directory paths are tested with a trailing ``/`` so that ``dir/`` patterns and
    "everything below a matched directory" both work.

    >>> bool(compile_glob("*.py").match("app/models/user.py"))
    True
    >>> bool(compile_glob("config/**").match("app/config/x.yaml"))
    False
    """
    body = pattern.strip()
    dir_only = body.endswith("/")
    body = body.rstrip("/")
    anchored = "/" in body
    body = body.lstrip("/")
    prefix = "" if anchored else "(?:.*/)?"
    tail = "/.*" if dir_only else "(?:/.*)?"
    return re.compile(prefix + _translate(body) + tail + r"\Z", re.DOTALL)


class PathFilter:
    """Decides, for root-relative paths, what is ignored, pruned and included."""

    def __init__(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> None:
        self.include = tuple(compile_glob(p) for p in include)
        self.exclude = tuple(compile_glob(p) for p in exclude)
        self._cache: dict[str, bool] = {}

    def prune_dir(self, rel: str) -> bool:
        """True when a directory (root-relative, non-empty) is not to be watched at all."""
        # Asked once per directory of every walk: set operations, no per-part generator.
        if not IGNORED_DIRS.isdisjoint(rel.split("/")):
            return True
        if not self.exclude:
            return False
        probe = rel + "/"
        return any(rx.match(probe) for rx in self.exclude)

    def prune_child(self, parent: str, name: str) -> bool:
        """``prune_dir`` for the subdirectory ``name`` of ``parent`` (root-relative, ""
        for the root), which is itself not pruned: what a walk asks of every directory."""
        if name in IGNORED_DIRS:
            return True
        if not self.exclude:
            return False
        probe = f"{parent}/{name}/" if parent else f"{name}/"
        return any(rx.match(probe) for rx in self.exclude)

    def matches(self, rel: str) -> bool:
        """True when a change to this file (root-relative) should trigger a reload."""
        # A storm repeats the same paths (modify, then close, for every file): decide
        # each path once; the cache is bounded and simply starts over when full.
        cached = self._cache.get(rel)
        if cached is None:
            if len(self._cache) >= _CACHE_CAP:
                self._cache.clear()
            cached = self._cache[rel] = self._decide(rel)
        return cached

    def _decide(self, rel: str) -> bool:
        parts = rel.split("/")
        if is_dropping(parts[-1]) or not IGNORED_DIRS.isdisjoint(parts[:-1]):
            return False
        if any(rx.match(rel) for rx in self.exclude):
            return False
        return not self.include or any(rx.match(rel) for rx in self.include)
