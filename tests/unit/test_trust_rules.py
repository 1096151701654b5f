"""The trust rules of issue 8 as plain functions: pidfile parsing, who could have written
a pidfile (systemd's PIDFile= rule), and the refusal to run commands as root over a tree
that a non-root user can write. Ownership is set with chown, so most of these need root
(the suite runs as root in CI)."""

from __future__ import annotations

import os
import pwd
import sys
from pathlib import Path

import pytest

from reloadd.config import ConfigError, ServiceSpec, load, root_over_writable_tree
from reloadd.target import DeliveryError, RunResult, parse_pid, path_writers

NOBODY = pwd.getpwnam("nobody").pw_uid
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown)")


# -- pidfile contents --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "is empty"),
        (b"  \n", "is empty"),
        (b"12abc\n", "does not hold a pid: '12abc'"),
        (b"-5", "does not hold a pid"),
        (b"+5", "does not hold a pid"),
        (b"12 13", "does not hold a pid"),
        ("\u0661\u0662".encode(), "does not hold a pid"),  # Arabic-Indic digits: not ASCII
        (b"99999999999", "beyond the kernel's pid_max"),
        (b"0", "holds pid 0: refusing"),
        (b"1\n", "holds pid 1: refusing"),
        (b"7" * 65, "over 64 bytes"),
    ],
)
def test_bad_pidfile_contents_are_refused(raw: bytes, message: str) -> None:
    with pytest.raises(DeliveryError, match=message.replace("+", r"\+")):
        parse_pid(raw, "/run/x.pid")


def test_own_pid_is_refused() -> None:
    with pytest.raises(DeliveryError, match="that is reloadd itself"):
        parse_pid(f"{os.getpid()}\n".encode(), "/run/x.pid")


def test_good_pid_parses() -> None:
    assert parse_pid(b" 4242\n", "/run/x.pid") == 4242


# -- who could have written a pidfile ------------------------------------------------------


def _pidfile(directory: Path, uid: int = 0, mode: int = 0o644) -> tuple[str, os.stat_result]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "app.pid"
    path.write_text("4242\n")
    os.chown(path, uid, -1)
    path.chmod(mode)
    return str(path), os.stat(path)


@needs_root
def test_root_only_pidfile_has_no_other_writers(tmp_path: Path) -> None:
    w = path_writers(*_pidfile(tmp_path / "run"))
    assert w.root_only


@needs_root
def test_directory_owned_by_a_user_makes_that_user_a_writer(tmp_path: Path) -> None:
    d = tmp_path / "run"
    d.mkdir()
    os.chown(d, NOBODY, -1)
    w = path_writers(*_pidfile(d))
    assert w.users == {NOBODY}
    assert w.open_by is None


@needs_root
def test_file_owned_by_a_user_in_a_root_sticky_dir_is_that_users(tmp_path: Path) -> None:
    d = tmp_path / "tmp"
    d.mkdir()
    d.chmod(0o1777)
    w = path_writers(*_pidfile(d, uid=NOBODY))
    assert w.users == {NOBODY}
    assert w.open_by is None


@needs_root
def test_root_file_in_a_root_sticky_dir_is_trusted(tmp_path: Path) -> None:
    """/tmp-like: others may create files there, but cannot replace root's."""
    d = tmp_path / "tmp"
    d.mkdir()
    d.chmod(0o1777)
    assert path_writers(*_pidfile(d)).root_only


@needs_root
def test_world_writable_directory_without_sticky_is_open(tmp_path: Path) -> None:
    d = tmp_path / "run"
    d.mkdir()
    d.chmod(0o777)
    w = path_writers(*_pidfile(d))
    assert w.open_by is not None
    assert f"{d} is writable by everyone (owner root, mode 0777)" == w.open_by.describe()


@needs_root
def test_group_writable_file_is_open(tmp_path: Path) -> None:
    path, _ = _pidfile(tmp_path / "run")
    os.chown(path, 0, NOBODY)
    os.chmod(path, 0o664)
    w = path_writers(path, os.stat(path))
    assert w.open_by is not None
    assert f"{path} is writable by group" in w.open_by.describe()


@needs_root
def test_symlink_planted_in_a_users_directory_is_judged_by_that_directory(
    tmp_path: Path,
) -> None:
    """A user who owns /run/app cannot point root at another (root-only) pidfile."""
    real, st = _pidfile(tmp_path / "root-only")
    user_dir = tmp_path / "user"
    user_dir.mkdir()
    os.chown(user_dir, NOBODY, -1)
    link = user_dir / "app.pid"
    link.symlink_to(real)
    assert path_writers(str(link), st).users == {NOBODY}


# -- root over a writable tree -------------------------------------------------------------


def _spec(tree: Path, **keys: object) -> ServiceSpec:
    values: dict[str, object] = {"command": (sys.executable, "-V")}
    values.update(keys)
    return ServiceSpec(name="api", source="/etc/reloadd.toml", watch=(str(tree),), **values)  # type: ignore[arg-type]


def _tree(tmp_path: Path) -> Path:
    tree = tmp_path / "srv" / "api"
    (tree / "app" / "lib").mkdir(parents=True)
    (tree / "app" / "lib" / "mod.py").write_text("x = 1\n")
    return tree


def test_root_owned_tree_is_fine(tmp_path: Path) -> None:
    assert root_over_writable_tree(_spec(_tree(tmp_path)), euid=0) is None


@needs_root
def test_file_deep_in_the_tree_owned_by_a_user_is_refused(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    os.chown(tree / "app" / "lib" / "mod.py", NOBODY, -1)
    why = root_over_writable_tree(_spec(tree), euid=0)
    assert why is not None
    assert "runs command as root over" in why
    assert f"{tree}/app/lib/mod.py is owned by nobody (uid {NOBODY}) (mode 0644)" in why
    assert 'user = "root"' in why


def test_world_writable_sticky_directory_inside_the_tree_is_refused(tmp_path: Path) -> None:
    """Sticky protects existing files, not the tree: a new module can still be added."""
    tree = _tree(tmp_path)
    (tree / "app").chmod(0o1777)
    why = root_over_writable_tree(_spec(tree, command=None, check=("true",)), euid=0)
    assert why is not None
    assert "runs check as root" in why
    assert "app is writable by everyone (owner root, mode 1777)" in why


@needs_root
def test_directory_above_the_tree_owned_by_a_user_is_refused(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    os.chown(tree.parent, NOBODY, -1)
    why = root_over_writable_tree(_spec(tree), euid=0)
    assert why is not None
    assert f"{tree.parent} is owned by nobody" in why


def test_root_sticky_directory_above_the_tree_is_fine(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    tree.parent.chmod(0o1777)
    assert root_over_writable_tree(_spec(tree), euid=0) is None


def test_missing_watch_path_is_judged_by_who_can_create_it(tmp_path: Path) -> None:
    sticky = tmp_path / "drop"
    sticky.mkdir()
    sticky.chmod(0o1777)
    why = root_over_writable_tree(_spec(sticky / "later" / "app"), euid=0)
    assert why is not None
    assert f"{sticky} is writable by everyone" in why


@needs_root
def test_explicit_user_or_not_root_or_nothing_to_run_is_allowed(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    os.chown(tree / "app", NOBODY, -1)
    assert root_over_writable_tree(_spec(tree), euid=0) is not None
    assert root_over_writable_tree(_spec(tree, user="root"), euid=0) is None
    assert root_over_writable_tree(_spec(tree, user="nobody"), euid=0) is None
    assert root_over_writable_tree(_spec(tree), euid=1000) is None
    pid_only = _spec(tree, command=None, pidfile="/run/x.pid")
    assert root_over_writable_tree(pid_only, euid=0) is None


# -- run results ------------------------------------------------------------------------------


def test_run_result_descriptions() -> None:
    argv = ("/usr/sbin/nginx", "-t")
    assert RunResult(argv, 1, "").describe() == "nginx exited with status 1"
    assert RunResult(argv, -9, "").describe() == "nginx was killed by SIGKILL"
    timed = RunResult(argv, None, "", timed_out=True, timeout=2.5).describe()
    assert timed == "nginx timed out after 2.5s and was killed with its group"
    err = RunResult(argv, None, "", error="No such file or directory: /usr/sbin/nginx")
    want = "nginx could not be started: No such file or directory: /usr/sbin/nginx"
    assert err.describe() == want


@needs_root
def test_config_load_refuses_it_naming_the_file_key_path_and_owner(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    os.chown(tree / "app", NOBODY, -1)
    cfg = tmp_path / "reloadd.toml"
    cfg.write_text(
        f'[services.api]\nwatch = ["{tree}"]\npidfile = "/run/api.pid"\ncheck = ["true"]\n'
    )
    with pytest.raises(ConfigError) as info:
        load(cfg)
    text = str(info.value)
    assert f"{cfg}:4: services.api.check" in text
    assert f"{tree}/app is owned by nobody (uid {NOBODY}) (mode 0755)" in text
    cfg.write_text(cfg.read_text() + 'user = "nobody"\n')
    assert load(cfg).services[0].user == "nobody"


# -- bounded resources ----------------------------------------------------------------------


def test_inbox_changes_merge_to_distinct_paths_with_a_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """A storm during a long check grows the inbox by distinct paths, never by events."""
    from reloadd import service

    monkeypatch.setattr(service, "INBOX_PATHS", 100)
    head = service._Change(1.0, ["/a/0"])
    for i in range(10_000):
        assert head.merge(service._Change(1.0 + i / 1000, [f"/a/{i % 300}"]))
    assert head.first == 1.0
    assert head.at == pytest.approx(1.0 + 9_999 / 1000)
    assert len(head.paths) == 100
    assert len(set(head.paths)) == 100
    # an empty report (a read of temp files only) adds no item: it only asks for a look
    assert head.merge(service._Change(30.0, []))
    assert head.at == pytest.approx(1.0 + 9_999 / 1000)
