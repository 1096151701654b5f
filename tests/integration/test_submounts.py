"""A network or FUSE mount *inside* a watched tree: the inotify walk does not enter it.

The walk runs on the event loop: were it to list a hung mount (a dead NFS server, a
stopped FUSE daemon), the loop would freeze, systemd's watchdog would restart reloadd,
and the new reloadd would hang at the same walk. And inotify does not see writes made
elsewhere on such a mount anyway. So the walk finds the mount points below the root in
/proc/self/mountinfo (never by a stat of the mount) and hands each one, as a subtree, to
be polled in threads, as it does with a subtree that hit the watch limit; the status
says "network mount (fuse): polled".

On a REAL FUSE mount: bindfs mounts a backing directory on ``tree/uploads``; stopping the
bindfs process (SIGSTOP) makes every request to the mount wait for ever. Needs bindfs,
FUSE and root (see ``bindfs_mount`` in conftest.py); the bindfs process is always
continued and the mount lazily unmounted afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from reloadd_testing import (
    DEADLINE,
    BindMount,
    Recording,
    Reloadd,
    bindfs_mount,
    proc_state,
    recorder_command,
    run_reloadctl,
    toml_value,
    wait_for,
    write,
)

from reloadd import probe
from reloadd.probe import PROBE_TIMEOUT

REASON = "network mount (fuse): polled"
STOP_WITHIN = 15.0  # SIGTERM must not wait for the poll scan stuck in the hung mount


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    write(root / "app.py", "v = 0\n")
    write(root / "lib" / "util.py", "u = 0\n")
    return root


@pytest.fixture(params=["plain", "symlinked"])
def watched(request: pytest.FixtureRequest, tmp_path: Path, tree: Path) -> Path:
    """The watch path: the tree itself, or a symlink to it (``current -> tree``: the
    walk starts at the resolved path, where mountinfo names the mount)."""
    if request.param == "plain":
        return tree
    link = tmp_path / "current"
    link.symlink_to(tree)
    return link


@pytest.fixture
def uploads(tmp_path: Path, tree: Path) -> Iterator[BindMount]:
    """``tree/uploads``: a bindfs (FUSE) mount of ``backing``, running."""
    backing = tmp_path / "backing"
    write(backing / "old.txt", "old\n")
    write(backing / "deep" / "a.txt", "a\n")
    with bindfs_mount(backing, tree / "uploads") as mount:
        yield mount


def _config(tmp_path: Path, tree: Path, rec: Recording) -> str:  # tree: the watch path
    return (
        f"[daemon]\nsocket = {toml_value(tmp_path / 'control.sock')}\n"
        f"[services.site]\nwatch = [{toml_value(tree)}]\n"
        'backend = "inotify"\n'
        'poll_interval = "200ms"\n'
        f"command = {toml_value(recorder_command(rec.path))}\n"
        # runs nothing as root over the tree unasked: no owner check walks the mount
        'user = "root"\n'
    )


def _ctl(sock: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_reloadctl(sock, *args, timeout=DEADLINE + PROBE_TIMEOUT)


def _site(sock: Path) -> dict[str, Any]:
    done = _ctl(sock, "status", "--json")
    assert done.returncode == 0, done
    status = json.loads(done.stdout)
    found: dict[str, Any] = next(s for s in status["services"] if s["name"] == "site")
    return found


def _started(
    tmp_path: Path, tree: Path, start_reloadd: Callable[..., Reloadd]
) -> tuple[Reloadd, Recording]:
    rec = Recording(tmp_path / "site.signals")
    started = time.monotonic()
    r = start_reloadd(_config(tmp_path, tree, rec))  # waits for READY=1 (fails after DEADLINE)
    assert time.monotonic() - started < DEADLINE
    wait_for(lambda: rec.ready_pids(), what="the recorder", detail=r.log)
    return r, rec


def _check_status(sock: Path) -> None:
    site = _site(sock)
    watch = site["watch"][0]
    assert watch["state"] == "watching", site
    assert watch["backend"] == "inotify+poll", site
    assert watch["unwatched"] == {"uploads": REASON}, site
    assert watch["backend_reason"] == "configured; 1 network mount polled", site
    assert watch["poll"]["subtrees"] == 1, site
    shown = _ctl(sock, "status", "site")
    assert shown.returncode == 0, shown
    assert REASON in shown.stdout, shown.stdout


def test_a_hung_mount_inside_the_tree_is_polled_not_walked(
    uploads: BindMount,
    tmp_path: Path,
    tree: Path,
    watched: Path,
    start_reloadd: Callable[..., Reloadd],
) -> None:
    """bindfs stopped before reloadd starts: the walk (on the loop) does not enter the
    mount, so READY=1 comes, a write elsewhere in the tree reloads, the status shows the
    mount polled and why, and SIGTERM ends reloadd while the mount is still hung."""
    uploads.stop()
    r, rec = _started(tmp_path, watched, start_reloadd)
    r.wait_log(f"site: {watched}: uploads is a network mount (fuse)")
    sock = tmp_path / "control.sock"
    _check_status(sock)

    write(tree / "lib" / "util.py", "u = 1\n")
    rec.wait_count(1)
    wait_for(lambda: r.reloads("site"), what="the reload line", detail=r.log)
    assert r.reloads("site")[0].paths == (str(watched / "lib" / "util.py"),), r.log()
    # a directory created later is walked (on the loop) as well, past the mount again
    write(tree / "new" / "x.py", "x = 1\n")
    rec.wait_count(2)

    assert proc_state(uploads.proc.pid) == "T"  # still stopped: the mount is still hung
    assert r.terminate(within=STOP_WITHIN) == 0, r.log()


def test_a_write_into_the_mount_is_seen_by_its_poll(
    uploads: BindMount, tmp_path: Path, tree: Path, start_reloadd: Callable[..., Reloadd]
) -> None:
    """Not hung: a write made through the mount (which no inotify watch covers) is
    reloaded, found by the poll of that subtree; the rest stays on inotify."""
    r, rec = _started(tmp_path, tree, start_reloadd)
    sock = tmp_path / "control.sock"
    _check_status(sock)
    wait_for(lambda: _site(sock)["watch"][0]["poll"]["files"] >= 2, what="the first poll scan")

    write(tree / "uploads" / "deep" / "new.txt", "new\n")
    rec.wait_count(1)
    wait_for(lambda: r.reloads("site"), what="the reload line", detail=r.log)
    assert r.reloads("site")[0].paths == (str(tree / "uploads" / "deep" / "new.txt"),), r.log()

    write(tree / "app.py", "v = 1\n")  # and the local part, on inotify
    rec.wait_count(2)
    assert r.wait_reloads("site", 2)[1].paths == (str(tree / "app.py"),), r.log()


def test_a_hung_mount_on_a_vcs_directory_is_not_touched(
    tmp_path: Path, tree: Path, start_reloadd: Callable[..., Reloadd]
) -> None:
    """A ``.git`` is watched (not walked) for its lock files: were it a hung mount, that
    watch and the look for ``index.lock`` would freeze the loop at start-up. It is left
    alone (only the VCS-lock hold is lost for it): READY=1 comes and writes reload."""
    backing = tmp_path / "backing"
    write(backing / "HEAD", "ref: refs/heads/main\n")
    with bindfs_mount(backing, tree / ".git") as git:
        git.stop()
        r, rec = _started(tmp_path, tree, start_reloadd)
        write(tree / "app.py", "v = 1\n")
        rec.wait_count(1)
        assert r.terminate(within=STOP_WITHIN) == 0, r.log()


# --------------------------------------------------------------- the mountinfo parser

_MOUNTINFO = rb"""22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:40 / /srv/app/up\040loads rw,relatime shared:5 - nfs4 srv:/export rw,vers=4.2
31 22 0:41 / /srv/app/sftp rw,nosuid - fuse.sshfs me@host:/ rw,user_id=0
32 22 0:42 / /srv/app/tmp rw - tmpfs tmpfs rw
33 22 0:43 / /srv/app-other/x rw - nfs srv:/b rw
34 22 0:44 / /srv/app/a\134b rw master:7 - cifs //h/s rw
garbage line
""" + (
    b"35 22 0:45 / /srv/app/c\rd rw - nfs4 srv:/c rw\n"  # a real CR: the kernel leaves it
    b"36 22 0:46 / /srv/app/auto rw - autofs systemd-1 rw,fd=40\n"
)


def test_mountinfo_is_parsed_and_unescaped() -> None:
    mounts = probe.parse_mountinfo(_MOUNTINFO)
    assert [m.point for m in mounts] == [
        "/",
        "/srv/app/up loads",
        "/srv/app/sftp",
        "/srv/app/tmp",
        "/srv/app-other/x",
        "/srv/app/a\\b",
        "/srv/app/c\rd",  # the kernel does not escape \r: not a line break
        "/srv/app/auto",
    ]
    assert mounts[1].fstype == "nfs4"
    assert mounts[1].dev == os.makedev(0, 40)
    assert mounts[5].fstype == "cifs"


def test_remote_mounts_below_a_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe, "mounts", lambda: probe.parse_mountinfo(_MOUNTINFO))
    assert probe.remote_mounts_below("/srv/app") == {
        "/srv/app/up loads": "nfs4",
        "/srv/app/sftp": "fuse.sshfs",
        "/srv/app/a\\b": "cifs",
        "/srv/app/c\rd": "nfs4",
        "/srv/app/auto": "autofs",  # an automount point: looking into it mounts a share
    }  # not tmpfs (local), not /srv/app-other (beside, not below)
    assert probe.remote_mounts_below("/srv/app/sftp") == {}  # the root itself: not below
    assert probe.remote_mounts_below("/") == {
        "/srv/app/up loads": "nfs4",
        "/srv/app/sftp": "fuse.sshfs",
        "/srv/app-other/x": "nfs",
        "/srv/app/a\\b": "cifs",
        "/srv/app/c\rd": "nfs4",
        "/srv/app/auto": "autofs",
    }


def test_remote_mounts_below_take_the_top_of_a_stack_but_keep_automounts() -> None:
    """Of mounts stacked on one point the last is what a path there reaches: a tmpfs
    over a FUSE mount is local. An automount point stays one when it has mounted a
    local file system (watched by inotify it would expire idle and come back)."""
    table = probe.parse_mountinfo(
        b"40 1 0:50 / /srv/app/up rw - fuse.sshfs me@h:/ rw\n"
        b"41 40 0:51 / /srv/app/up rw - tmpfs tmpfs rw\n"
        b"42 1 0:52 / /srv/app/data rw - autofs systemd-1 rw,fd=40\n"
        b"43 42 8:17 / /srv/app/data rw - ext4 /dev/sdb1 rw\n"
    )
    assert probe.remote_mounts_below("/srv/app", table) == {"/srv/app/data": "autofs"}
