"""reloadd.trust: the one rule for "who besides root could change this path", on real files.

Each case builds a small tree in tmp_path (chown'ed to nobody where it says so) and names
the path to judge and who could change it. Ownership needs root: the suite runs as root.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable
from pathlib import Path

import pytest
from reloadd_testing import require

from reloadd import trust

NOBODY = pwd.getpwnam("nobody").pw_uid
NOGROUP = 65534  # nobody's group (nogroup / nobody), not root's


def _root_dir(tmp_path: Path, name: str = "d", mode: int = 0o755) -> Path:
    d = tmp_path / name
    d.mkdir()
    d.chmod(mode)
    return d


def _file(directory: Path, uid: int = 0, gid: int = 0, mode: int = 0o644) -> Path:
    f = directory / "f"
    f.write_text("x\n")
    os.chown(f, uid, gid)
    f.chmod(mode)
    return f


def owner_nobody(tmp_path: Path) -> Path:
    return _file(_root_dir(tmp_path), uid=NOBODY)


def group_writable_gid0(tmp_path: Path) -> Path:
    return _file(_root_dir(tmp_path, mode=0o775), mode=0o664)


def group_writable_other_gid(tmp_path: Path) -> Path:
    return _file(_root_dir(tmp_path), gid=NOGROUP, mode=0o664)


def group_writable_dir_other_gid(tmp_path: Path) -> Path:
    d = _root_dir(tmp_path, mode=0o775)
    os.chown(d, 0, NOGROUP)
    return _file(d)


def other_writable(tmp_path: Path) -> Path:
    return _file(_root_dir(tmp_path), mode=0o646)


def other_writable_dir(tmp_path: Path) -> Path:
    return _file(_root_dir(tmp_path, mode=0o777))


def root_entry_in_sticky_root_dir(tmp_path: Path) -> Path:
    return _file(_root_dir(tmp_path, mode=0o1777))


def user_entry_in_sticky_root_dir(tmp_path: Path) -> Path:
    return _file(_root_dir(tmp_path, mode=0o1777), uid=NOBODY)


def sticky_root_dir_itself(tmp_path: Path) -> Path:
    """The path itself gets no sticky pass: anyone can add to it."""
    return _root_dir(tmp_path, mode=0o1777)


def missing_path_in_sticky_root_dir(tmp_path: Path) -> Path:
    """Not there yet: judged by who can create it."""
    return _root_dir(tmp_path, mode=0o1777) / "later" / "f"


def sticky_dir_owned_by_nobody(tmp_path: Path) -> Path:
    d = _root_dir(tmp_path, mode=0o1777)
    os.chown(d, NOBODY, -1)
    return _file(d)


def symlink_to_user_writable_target(tmp_path: Path) -> Path:
    target = _file(_root_dir(tmp_path, "real"), uid=NOBODY)
    link = _root_dir(tmp_path, "links") / "f"
    link.symlink_to(target)
    return link


def symlink_to_world_writable_target(tmp_path: Path) -> Path:
    target = _file(_root_dir(tmp_path, "real"), mode=0o666)
    link = _root_dir(tmp_path, "links") / "f"
    link.symlink_to(target)
    return link


def symlink_owned_by_nobody_to_root_target(tmp_path: Path) -> Path:
    """A symlink's owner may replace it (in a sticky directory, say): it counts."""
    target = _file(_root_dir(tmp_path, "real"))
    link = _root_dir(tmp_path, "links", mode=0o1777) / "f"
    link.symlink_to(target)
    os.lchown(link, NOBODY, -1)
    return link


def symlinked_dir_through_a_users_dir(tmp_path: Path) -> Path:
    """Two hops: links/app -> user/hop -> real; user/ is nobody's, so is the way."""
    real = _root_dir(tmp_path, "real")
    _file(real)
    user = _root_dir(tmp_path, "user")
    (user / "hop").symlink_to(real)
    os.lchown(user / "hop", 0, 0)
    os.chown(user, NOBODY, -1)
    links = _root_dir(tmp_path, "links")
    (links / "app").symlink_to(user / "hop")
    return links / "app" / "f"


def root_symlink_to_root_target(tmp_path: Path) -> Path:
    target = _file(_root_dir(tmp_path, "real"))
    link = _root_dir(tmp_path, "links") / "f"
    link.symlink_to(target)
    return link


def parent_dir_owned_by_nobody(tmp_path: Path) -> Path:
    d = _root_dir(tmp_path)
    sub = _root_dir(d, "sub")
    os.chown(d, NOBODY, -1)
    return _file(sub)


def all_root(tmp_path: Path) -> Path:
    return _file(_root_dir(tmp_path))


Case = Callable[[Path], Path]

# (build, users, groups, anyone)
CASES: list[tuple[Case, set[int], set[int], bool]] = [
    (all_root, set(), set(), False),
    (owner_nobody, {NOBODY}, set(), False),
    (group_writable_gid0, set(), set(), False),  # the gid-0 decision
    (group_writable_other_gid, set(), {NOGROUP}, False),
    (group_writable_dir_other_gid, set(), {NOGROUP}, False),
    (other_writable, set(), set(), True),
    (other_writable_dir, set(), set(), True),
    (root_entry_in_sticky_root_dir, set(), set(), False),
    (user_entry_in_sticky_root_dir, {NOBODY}, set(), False),
    (sticky_root_dir_itself, set(), set(), True),
    (missing_path_in_sticky_root_dir, set(), set(), True),
    (sticky_dir_owned_by_nobody, {NOBODY}, set(), False),
    (symlink_to_user_writable_target, {NOBODY}, set(), False),
    (symlink_to_world_writable_target, set(), set(), True),
    (symlink_owned_by_nobody_to_root_target, {NOBODY}, set(), False),
    (symlinked_dir_through_a_users_dir, {NOBODY}, set(), False),
    (root_symlink_to_root_target, set(), set(), False),
    (parent_dir_owned_by_nobody, {NOBODY}, set(), False),
]


@pytest.mark.parametrize(
    ("build", "users", "groups", "anyone"), CASES, ids=[c[0].__name__ for c in CASES]
)
def test_who_could_change_the_path(
    tmp_path: Path, build: Case, users: set[int], groups: set[int], anyone: bool
) -> None:
    require(os.geteuid() == 0, "root")
    found = trust.writers(build(tmp_path))
    assert (set(found.users), set(found.groups), found.anyone) == (users, groups, anyone)
    assert found.root_only == (not users and not groups and not anyone)
    assert found.errors == ()


def test_descriptions(tmp_path: Path) -> None:
    require(os.geteuid() == 0, "root")
    path = group_writable_other_gid(tmp_path)
    found = trust.writers(path)
    assert found.open_by is not None
    assert found.open_by.kind == "file"
    assert found.open_by.describe() == (
        f"{path} is writable by group {trust.group_name(NOGROUP)} (owner root, mode 0664)"
    )
    assert found.describe() == f"group {trust.group_name(NOGROUP)}"

    d = _root_dir(tmp_path, "other", mode=0o777)
    os.chown(d, NOBODY, -1)
    found = trust.writers(_file(d))
    assert [e.describe() for e in found.entries] == [
        f"{d} is writable by everyone (owner nobody (uid {NOBODY}), mode 0777)"
    ]
    assert found.describe() == f"nobody (uid {NOBODY}) and everyone"

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    found = trust.writers(owner_nobody(fresh))
    assert found.entries[0].describe().endswith(f"is owned by nobody (uid {NOBODY}) (mode 0644)")
    assert trust.writers("/").describe() == "only root"


def test_names() -> None:
    assert trust.user_name(0) == "root (uid 0)"
    assert trust.user_name(NOBODY) == f"nobody (uid {NOBODY})"
    assert trust.group_name(0) == "root (gid 0)"
    unknown = 2**31 - 7
    assert trust.user_name(unknown) == f"uid {unknown}"
    assert trust.group_name(unknown) == f"gid {unknown}"


def test_the_gid_0_decision_is_one_constant() -> None:
    assert frozenset({0}) == trust.TRUSTED_GIDS


def test_symlink_loop_is_an_error_not_a_hang(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    found = trust.writers(tmp_path / "a" / "f")  # returns: each entry is looked at once
    assert found.path == str(tmp_path / "a" / "f")


def test_memo_judges_again_whenever_an_entry_on_the_way_changes(tmp_path: Path) -> None:
    d = _root_dir(tmp_path)
    f = _file(d)
    memo = trust.Memo(str(f))
    assert memo().root_only
    assert memo() is memo()  # nothing changed: the verdict is reused

    f.chmod(0o666)  # the file itself
    assert memo().anyone
    f.chmod(0o644)
    assert memo().root_only

    d.chmod(0o777)  # a directory above it
    assert memo().anyone
    d.chmod(0o755)
    os.chown(d, NOBODY, 0)
    assert memo().users == {NOBODY}
    os.chown(d, 0, 0)
    assert memo().root_only

    # the directory replaced by another with the same mode and owner, holding a file
    # owned by nobody: a new inode on the way, judged afresh
    other = _root_dir(tmp_path, "other")
    _file(other, uid=NOBODY)
    d.rename(tmp_path / "old")
    other.rename(d)
    assert memo().users == {NOBODY}


def test_memo_with_a_symlink_on_the_way_judges_every_time(tmp_path: Path) -> None:
    real = _root_dir(tmp_path, "real")
    _file(real)
    (tmp_path / "link").symlink_to(real)
    memo = trust.Memo(str(tmp_path / "link" / "f"))
    assert memo().root_only
    assert memo() is not memo()  # not remembered: judged afresh each time
    real.chmod(0o777)  # the link's target: only a full judging sees it
    assert memo().anyone
