"""The backend choice as a pure function: the f_type table, forcing, unknowns; and the
statfs reader on file systems every Linux box has."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reloadd.watch import LOCAL_FS, REMOTE_FS, choose_backend, fs_type, nearest_existing

DOC = Path(__file__).resolve().parents[2] / "docs" / "backends.md"

# (f_type, expected reason) for every file system auto must poll.
POLLED = [
    (0x6969, "auto: nfs"),
    (0x517B, "auto: smb"),
    (0xFF534D42, "auto: cifs"),
    (0xFE534D42, "auto: smb2"),
    (0x65735546, "auto: fuse"),  # sshfs, bindfs, rclone, GlusterFS client, virtiofs
    (0x01021997, "auto: 9p"),
    (0x786F4256, "auto: vboxsf"),
    (0x7C7C6673, "auto: prl_fs"),
    (0xBACBACBC, "auto: vmhgfs"),
    (0x00C36400, "auto: ceph"),
    (0x5346414F, "auto: afs"),
    (0x6B414653, "auto: afs"),
    (0x0BD00BD0, "auto: lustre"),
    (0x47504653, "auto: gpfs"),
    (0x01161970, "auto: gfs2"),
    (0x7461636F, "auto: ocfs2"),
    (0x19830326, "auto: beegfs"),
    (0x20030528, "auto: orangefs"),
    (0x73757245, "auto: coda"),
    (0x564C, "auto: ncp"),
]

LOCAL = [
    (0xEF53, "auto: local (ext4)"),
    (0x58465342, "auto: local (xfs)"),
    (0x9123683E, "auto: local (btrfs)"),
    (0x01021994, "auto: local (tmpfs)"),
    (0x2FC12FC1, "auto: local (zfs)"),
    (0x794C7630, "auto: local (overlay)"),
    (0x12345678, "auto: local (0x12345678)"),  # unknown: inotify, named by its magic
]


@pytest.mark.parametrize(("magic", "reason"), POLLED)
def test_remote_and_virtual_file_systems_poll(magic: int, reason: str) -> None:
    assert choose_backend("auto", magic) == ("poll", reason)


@pytest.mark.parametrize(("magic", "reason"), LOCAL)
def test_local_file_systems_use_inotify(magic: int, reason: str) -> None:
    assert choose_backend("auto", magic) == ("inotify", reason)


def test_the_table_is_exactly_the_tested_one() -> None:
    assert {m: f"auto: {n}" for m, n in REMOTE_FS.items()} == dict(POLLED)


@pytest.mark.parametrize("magic", [0x6969, 0xEF53, None])
@pytest.mark.parametrize("configured", ["inotify", "poll"])
def test_a_configured_backend_is_forced(configured: str, magic: int | None) -> None:
    assert choose_backend(configured, magic) == (configured, "configured")


@pytest.mark.parametrize("env", ["inotify", "poll"])
def test_environment_forces_only_where_the_config_says_auto(env: str) -> None:
    assert choose_backend("auto", 0x6969, env) == (env, f"RELOADD_BACKEND={env}")
    assert choose_backend("auto", None, env) == (env, f"RELOADD_BACKEND={env}")
    other = "poll" if env == "inotify" else "inotify"
    assert choose_backend(other, 0xEF53, env) == (other, "configured")  # config first


@pytest.mark.parametrize("env", [None, "", "auto", "fanotify"])
def test_environment_auto_or_unknown_detects(env: str | None) -> None:
    assert choose_backend("auto", 0x6969, env) == ("poll", "auto: nfs")


def test_statfs_failure_falls_back_to_inotify() -> None:
    assert choose_backend("auto", None) == ("inotify", "auto: file system unknown")


def test_sign_extended_magic_from_a_32_bit_long() -> None:
    """On 32-bit ABIs f_type is a signed long: CIFS's magic arrives negative."""
    assert choose_backend("auto", 0xFF534D42 - (1 << 32)) == ("poll", "auto: cifs")


def test_unknown_backend_is_a_bug() -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        choose_backend("fanotify", 0xEF53)


def test_no_magic_is_both_local_and_remote() -> None:
    assert not REMOTE_FS.keys() & LOCAL_FS.keys()


def test_docs_table_matches_the_code() -> None:
    """docs/backends.md lists every polled f_type with its name, and nothing else."""
    text = DOC.read_text()
    rows = re.findall(r"^\|\s*`(0x[0-9a-fA-F]+)`\s*\|\s*(\S+)\s*\|", text, re.M)
    assert rows, "no f_type table found in docs/backends.md"
    assert {int(m, 16): name for m, name in rows} == REMOTE_FS


# -- statfs on real file systems -------------------------------------------------------


def test_fs_type_reads_real_magics(tmp_path: Path) -> None:
    assert fs_type("/proc") == 0x9FA0
    assert fs_type("/sys") == 0x62656572
    assert choose_backend("auto", fs_type("/proc")) == ("inotify", "auto: local (proc)")
    assert isinstance(fs_type(str(tmp_path)), int)


def test_fs_type_of_a_missing_path_is_none(tmp_path: Path) -> None:
    assert fs_type(str(tmp_path / "missing")) is None


def test_fs_type_follows_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "proc").symlink_to("/proc")
    assert fs_type(str(tmp_path / "proc")) == 0x9FA0


def test_nearest_existing_ancestor(tmp_path: Path) -> None:
    assert nearest_existing(str(tmp_path / "a" / "b" / "c")) == str(tmp_path)
    assert nearest_existing(str(tmp_path)) == str(tmp_path)
    assert nearest_existing("/proc/self/no/such/thing") == "/proc/self"
    assert nearest_existing("/") == "/"
