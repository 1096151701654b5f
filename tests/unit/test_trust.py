"""config.check_trusted / trust_problems: sshd's StrictModes for the config files, on real files.

The ownership cases need root (chown); the tests run as root in CI and skip elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reloadd.config import Config, DaemonConfig, check_trusted, trust_problems
from reloadd.trust import group_name, user_name

NOBODY = 65534

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: chown, and a root-owned tmp")


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    """A config file in a directory of its own, both root's and 0644/0755."""
    d = tmp_path / "etc"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    f = d / "reloadd.toml"
    f.write_text("")
    f.chmod(0o644)
    return f


@root_only
def test_pytest_tmp_path_chain_is_trusted(conf: Path) -> None:
    """The shipped fixtures work as root: /tmp (sticky) and pytest's 0700 dirs are fine."""
    assert check_trusted(conf) is None
    assert check_trusted(conf.parent) is None


@root_only
@pytest.mark.parametrize(
    ("mode", "gid", "who"),
    [
        (0o666, 0, "others"),  # group root's write bit counts for no one else
        (0o666, NOBODY, f"group {group_name(NOBODY)} and others"),
        (0o664, NOBODY, f"group {group_name(NOBODY)}"),
        (0o646, 0, "others"),
    ],
)
def test_writable_file_is_refused(conf: Path, mode: int, gid: int, who: str) -> None:
    os.chown(conf, -1, gid)
    conf.chmod(mode)
    assert check_trusted(conf) == (
        f"{conf} has mode {mode:04o}: {who} can write it (fix: chmod go-w {conf})"
    )


@root_only
def test_file_writable_by_group_root_is_fine(conf: Path) -> None:
    """The gid-0 decision (reloadd.trust): only root is in group root, as systemd reads it."""
    conf.chmod(0o664)
    conf.parent.chmod(0o775)
    assert os.stat(conf).st_gid == 0
    assert check_trusted(conf) is None


@root_only
def test_file_owned_by_another_user_is_refused(conf: Path) -> None:
    os.chown(conf, NOBODY, -1)
    problem = check_trusted(conf)
    assert problem is not None
    assert problem.startswith(f"{conf} is owned by {user_name(NOBODY)}, not root")
    assert f"chown root {conf}" in problem


@root_only
def test_writable_parent_directory_is_refused(conf: Path) -> None:
    conf.parent.chmod(0o777)
    assert check_trusted(conf) == (
        f"{conf}: directory {conf.parent} has mode 0777: others can write it "
        f"(fix: chmod go-w {conf.parent})"
    )


@root_only
def test_parent_directory_owned_by_another_user_is_refused(conf: Path) -> None:
    os.chown(conf.parent.parent, NOBODY, -1)
    problem = check_trusted(conf)
    assert problem is not None
    assert problem.startswith(
        f"{conf}: directory {conf.parent.parent} is owned by {user_name(NOBODY)}"
    )


@root_only
def test_root_owned_sticky_directory_is_fine(conf: Path) -> None:
    conf.parent.chmod(0o1777)
    assert check_trusted(conf) is None


@root_only
def test_sticky_directory_owned_by_another_user_is_refused(conf: Path) -> None:
    conf.parent.chmod(0o1777)
    os.chown(conf.parent, NOBODY, -1)
    assert check_trusted(conf) is not None


@root_only
def test_symlink_owned_by_another_user_is_refused(conf: Path, tmp_path: Path) -> None:
    """In a sticky dir the owner of a symlink may replace it: it must be root's."""
    link = tmp_path / "link.toml"
    link.symlink_to(conf)
    assert check_trusted(link) is None
    os.lchown(link, NOBODY, -1)
    problem = check_trusted(link)
    assert problem is not None
    assert problem.startswith(f"{link} is owned by {user_name(NOBODY)}")


@root_only
def test_symlink_target_chain_is_checked(conf: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.toml"
    link.symlink_to(conf)
    conf.chmod(0o666)
    problem = check_trusted(link)
    assert problem is not None
    assert problem.startswith(f"{link}: file {conf} has mode 0666")


def test_missing_path_is_not_a_trust_problem(tmp_path: Path) -> None:
    assert check_trusted(tmp_path / "nope" / "reloadd.toml") is None


def _config(main: Path, dropins: list[Path]) -> Config:
    return Config(
        path=str(main),
        daemon=DaemonConfig(include=str(main.parent / "reloadd.d")),
        services=(),
        files=(str(main), *map(str, dropins)),
    )


@root_only
def test_trust_problems_covers_dropin_dir_and_dropins(conf: Path) -> None:
    dropin_dir = conf.parent / "reloadd.d"
    dropin_dir.mkdir(mode=0o755)
    dropin_dir.chmod(0o755)
    good, bad = dropin_dir / "10-good.toml", dropin_dir / "20-bad.toml"
    for f in (good, bad):
        f.write_text("")
        f.chmod(0o644)
    os.chown(bad, NOBODY, -1)
    config = _config(conf, [good, bad])
    [problem] = trust_problems(config, euid=0, environ={})
    assert problem.startswith(f"{bad} is owned by {user_name(NOBODY)}")
    os.chown(dropin_dir, -1, NOBODY)
    dropin_dir.chmod(0o775)
    problems = trust_problems(config, euid=0, environ={})
    assert [p.partition(" ")[0] for p in problems] == [str(dropin_dir), f"{good}:", f"{bad}"]


def test_trust_problems_only_as_root_and_not_when_insecure(tmp_path: Path) -> None:
    """A non-root reloadd cannot make root run anything; the escape hatch is explicit."""
    main = tmp_path / "reloadd.toml"
    main.write_text("")
    main.chmod(0o666)
    config = _config(main, [])
    assert trust_problems(config, euid=1000, environ={}) == []
    assert trust_problems(config, euid=0, environ={"RELOADD_INSECURE_CONFIG": "1"}) == []
    assert trust_problems(config, euid=0, environ={"RELOADD_INSECURE_CONFIG": "0"}) != []
