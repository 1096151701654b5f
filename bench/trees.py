"""Trees to watch, made fast with os.open/os.write (one syscall trio per file, no subprocess).

Layout: ``ROOT/gNNN/dNNN/fN.txt``: ``per_dir`` files in each leaf directory, at most 100
leaves per group directory, so a 300,000-file tree has 30,000 leaves and 300 groups.

Every file holds one fixed-size record, and changes overwrite it in place with new bytes
(open without O_TRUNC, write, close: IN_MODIFY + IN_CLOSE_WRITE). On ext4 a truncating
rewrite frees and reallocates blocks through the journal and runs 5-30 times slower, which
would turn a "storm" into a drizzle that any watcher keeps up with.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from proc import now_ns

WRITE_FLAGS = os.O_WRONLY | os.O_CLOEXEC
LEAVES_PER_GROUP = 100
RECORD_SIZE = 24
_generations = itertools.count(1)


def record(text: str) -> bytes:
    """``text`` as one fixed-size record (cut or padded), newline-terminated."""
    return text.encode()[: RECORD_SIZE - 1].ljust(RECORD_SIZE - 1) + b"\n"


def new_record(label: str = "") -> bytes:
    """A record no file in this run has held before, so every write changes the content."""
    return record(f"{next(_generations)} {label}")


@dataclass(frozen=True)
class Tree:
    root: Path
    files: list[str]
    dirs: int  # directories including the root: what an inotify watcher must watch

    @property
    def size(self) -> int:
        return len(self.files)

    def spread(self, n: int) -> list[str]:
        """``n`` files spread evenly over the tree (so no two samples hit one directory)."""
        step = max(1, len(self.files) // max(1, n))
        picked = self.files[::step]
        return (picked * (n // max(1, len(picked)) + 1))[:n]


def make_tree(root: Path, nfiles: int, per_dir: int = 10) -> Tree:
    root.mkdir(parents=True)
    files: list[str] = []
    dirs = 1
    leaves = -(-nfiles // per_dir)
    create = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    for leaf in range(leaves):
        group, index = divmod(leaf, LEAVES_PER_GROUP)
        group_dir = f"{root}/g{group:03d}"
        if index == 0:
            os.mkdir(group_dir)
            dirs += 1
        leaf_dir = f"{group_dir}/d{index:03d}"
        os.mkdir(leaf_dir)
        dirs += 1
        for i in range(min(per_dir, nfiles - leaf * per_dir)):
            path = f"{leaf_dir}/f{i}.txt"
            fd = os.open(path, create, 0o644)
            os.write(fd, record("v0"))
            os.close(fd)
            files.append(path)
    return Tree(root, files, dirs)


def write_file(path: str, data: bytes) -> int:
    """Overwrite one file in place; return CLOCK_MONOTONIC just after close()."""
    fd = os.open(path, WRITE_FLAGS)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return now_ns()


def rewrite_all(paths: list[str]) -> tuple[int, int]:
    """Overwrite every file with new bytes as fast as one thread can; (first, last close) ns."""
    data = new_record("storm")
    first = 0
    for path in paths:
        fd = os.open(path, WRITE_FLAGS)
        os.write(fd, data)
        os.close(fd)
        if not first:
            first = now_ns()
    return first, now_ns()


# --- a git repository with two commits that differ in every file -----------------------

GIT_ENV = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "HOME": "/nonexistent",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@localhost",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@localhost",
}


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args],
        env=GIT_ENV,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


@dataclass(frozen=True)
class GitRepo:
    tree: Tree
    revs: tuple[str, str]

    def checkout(self, rev: str) -> tuple[int, int]:
        """``git checkout`` REV; (start, end) of the git process in CLOCK_MONOTONIC ns."""
        start = now_ns()
        git(self.tree.root, "checkout", "-q", rev)
        return start, now_ns()


def make_git_repo(root: Path, nfiles: int) -> GitRepo:
    tree = make_tree(root, nfiles)
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "a")
    rev_a = git(root, "rev-parse", "HEAD")
    rewrite_all(tree.files)
    git(root, "commit", "-q", "-a", "-m", "b")
    rev_b = git(root, "rev-parse", "HEAD")
    git(root, "checkout", "-q", "--detach", rev_b)
    return GitRepo(tree, (rev_a, rev_b))
