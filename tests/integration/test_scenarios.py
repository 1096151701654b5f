"""Acceptance scenarios of issue 2: real reloadd, real kernel inotify, a recording target.

Each scenario makes one kind of change to a watched tree and proves how many SIGHUPs the
target got: "exactly one" is proven by ``Scenario.confirm`` (a sentinel write after the
change must be the next, separate reload), never by waiting and hoping. The debounce is
a few hundred milliseconds so that a loaded machine cannot split one change into two.

Every scenario takes the ``backend`` fixture, so it runs on every backend in
``conftest.BACKENDS``; the few that test an inotify-only mechanism (queue overflow, the
open-for-write hold) pin ``backend = "inotify"``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from reloadd_testing import (
    Recording,
    Scenario,
    recorder_command,
    require_tool,
    toml_value,
    wait_for,
    write,
)

pytestmark = pytest.mark.slow

Start = Callable[..., Scenario]


# --------------------------------------------------------------------------- saves


def test_one_file_written(scenario: Start, backend: str, app: Path) -> None:
    """1. A file is written. 2. Exactly one SIGHUP reaches the target, naming the file."""
    s = scenario(app, backend=backend)
    write(app / "app.py", "version = 2\n")
    [line] = s.confirm(1)
    assert line.paths == (str(app / "app.py"),)
    assert s.recording.signals()[0] == s.pid


def test_vim_style_save_imitated(scenario: Start, backend: str, app: Path) -> None:
    """vim's rename dance (backupcopy=no), step by step as vim does it: one SIGHUP.

    1. probe ``4913`` created and removed; 2. ``app.py`` renamed to ``app.py~``;
    3. a new ``app.py`` written, fsynced, chmodded; 4. the backup removed.
    """
    s = scenario(app, backend=backend)
    target = app / "app.py"
    probe = app / "4913"
    fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o644)
    os.close(fd)
    os.unlink(probe)
    os.rename(target, app / "app.py~")
    with open(target, "w") as f:
        f.write("version = 2\n")
        f.flush()
        os.fsync(f.fileno())
    os.chmod(target, 0o644)
    os.unlink(app / "app.py~")
    [line] = s.confirm(1)
    assert line.paths == (str(target),)


def test_vim_save(scenario: Start, backend: str, app: Path) -> None:
    """A real vim (no vimrc, rename-style backup) saving a file: one SIGHUP."""
    vim = require_tool("vim")
    s = scenario(app, backend=backend)
    target = app / "app.py"
    subprocess.run(
        [vim, "-u", "NONE", "-i", "NONE", "-n", "-Es",
         "-c", "set nocompatible backupcopy=no writebackup nobackup",
         "-c", "%s/1/2/", "-c", "wq", str(target)],
        check=True, stdin=subprocess.DEVNULL, timeout=60,
    )  # fmt: skip
    assert target.read_text() == "version = 2\n"
    [line] = s.confirm(1)
    assert line.paths == (str(target),)


def vim_save(path: Path, text: str) -> None:
    """What vim does on ``:w`` with backupcopy=no: probe, rename to backup, write, clean up."""
    probe = path.parent / "4913"
    os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o644))
    os.unlink(probe)
    backup = path.with_name(path.name + "~")
    os.rename(path, backup)
    with open(path, "w") as f:
        f.write(text)
    os.unlink(backup)


def test_repeated_saves_each_reload(scenario: Start, backend: str, app: Path) -> None:
    """The same file saved vim-style three times, each save settling first: three SIGHUPs
    (a file created by one save and replaced by the next is a change every time)."""
    s = scenario(app, backend=backend)
    for n in (1, 2, 3):
        vim_save(app / "app.py", f"version = {n + 1}\n")
        lines = s.wait_reloads(2 * n - 1)
        assert lines[-1].paths == (str(app / "app.py"),)
        s.confirm(2 * n - 1)


def test_new_file_then_deleted(scenario: Start, backend: str, app: Path) -> None:
    """1. a new file appears: one SIGHUP; 2. it is deleted later: one more SIGHUP (the
    server must forget it)."""
    (app / "plugins").mkdir()
    s = scenario(app, backend=backend)
    plugin = write(app / "plugins" / "new.py", "x = 1\n")
    [added] = s.confirm(1)
    assert added.paths == (str(plugin),)
    plugin.unlink()
    lines = s.wait_reloads(3)
    assert lines[2].paths == (str(plugin),)
    s.confirm(3)


def test_temp_file_created_and_removed_in_one_read(scenario: Start, app: Path) -> None:
    """A temp file created and removed again before reloadd reads the events (made
    certain by stopping reloadd meanwhile): no net change, no reload. (inotify only: a
    poll never sees such a file.)"""
    s = scenario(app, backend="inotify")
    s.reloadd.proc.send_signal(signal.SIGSTOP)
    try:
        write(app / "scratch.txt").unlink()
        write(app / "pkg" / ".~lock.tmp").unlink()
    finally:
        s.reloadd.proc.send_signal(signal.SIGCONT)
    s.confirm(0)


def test_file_removed_recreated_and_removed_in_one_read(scenario: Start, app: Path) -> None:
    """An existing file removed, created again and removed again before reloadd reads the
    events: its last life was a created-and-removed one, but the file that was there is
    gone, which is a change: one SIGHUP naming it."""
    s = scenario(app, backend="inotify")
    s.reloadd.proc.send_signal(signal.SIGSTOP)
    try:
        (app / "app.py").unlink()
        write(app / "app.py").unlink()
    finally:
        s.reloadd.proc.send_signal(signal.SIGCONT)
    [line] = s.confirm(1)
    assert line.paths == (str(app / "app.py"),)


def test_new_files_created_removed_and_back_in_one_read(scenario: Start, app: Path) -> None:
    """Before reloadd reads the events: a new file is created, removed and created again;
    another is created, removed and then renamed into place. Both are there at the end:
    one SIGHUP naming both (not retracted as temp files)."""
    s = scenario(app, backend="inotify")
    s.reloadd.proc.send_signal(signal.SIGSTOP)
    try:
        write(app / "new.conf", "x").unlink()
        write(app / "new.conf", "y")
        write(app / "moved.conf", "x").unlink()
        write(app / "moved.tmp", "y").rename(app / "moved.conf")
    finally:
        s.reloadd.proc.send_signal(signal.SIGCONT)
    [line] = s.confirm(1)
    assert set(line.paths) >= {str(app / "new.conf"), str(app / "moved.conf")}


def test_atomic_replace(scenario: Start, backend: str, app: Path) -> None:
    """A temp file written beside the target and ``os.replace``d over it: one SIGHUP."""
    s = scenario(app, backend=backend)
    tmp = write(app / ".config.yaml.tmp-123", "debug: true\n")
    os.replace(tmp, app / "config.yaml")
    [line] = s.confirm(1)
    assert str(app / "config.yaml") in line.paths


def test_sed_in_place(scenario: Start, backend: str, app: Path) -> None:
    """``sed -i`` (temp file ``sedXXXXXX`` renamed over the original): one SIGHUP."""
    sed = require_tool("sed")
    s = scenario(app, backend=backend)
    subprocess.run([sed, "-i", "s/false/true/", str(app / "config.yaml")], check=True)
    assert (app / "config.yaml").read_text() == "debug: true\n"
    [line] = s.confirm(1)
    assert str(app / "config.yaml") in line.paths


def test_burst_of_500_files(scenario: Start, backend: str, app: Path) -> None:
    """500 files rewritten as fast as Python can: one SIGHUP counting all 500."""
    files = [write(app / "many" / f"m{i:03}.py", "a\n") for i in range(500)]
    s = scenario(app, backend=backend)
    for f in files:
        f.write_text("b\n")
    [line] = s.confirm(1)
    assert line.count == 500


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def test_git_checkout_200_files(scenario: Start, backend: str, app: Path) -> None:
    """``git checkout`` between commits that differ in 200 files: one SIGHUP, .git unseen."""
    require_tool("git")
    git(app, "init", "-q", "-b", "main")
    for i in range(200):
        write(app / "src" / f"f{i:03}.py", f"v = {i}\n")
    git(app, "add", "-A")
    git(app, "commit", "-q", "-m", "one")
    for i in range(200):
        write(app / "src" / f"f{i:03}.py", f"v = {i + 1000}\n")
    git(app, "commit", "-q", "-am", "two")
    s = scenario(app, backend=backend)
    git(app, "checkout", "-q", "HEAD~1")
    assert (app / "src" / "f007.py").read_text() == "v = 7\n"
    [line] = s.confirm(1)
    assert line.count == 200
    assert not any("/.git/" in p for p in line.paths)


def make_tree(top: Path, depth: int = 3, width: int = 3) -> list[Path]:
    """A tree ``depth`` directories deep, ``width`` files and subdirectories per level."""
    files = []
    level = [top]
    for d in range(depth):
        below = []
        for parent in level:
            files += [write(parent / f"file{d}{i}.txt") for i in range(width)]
            if d + 1 < depth:
                below += [parent / f"dir{d}{i}" for i in range(width)]
        level = below
    return files


def test_cp_r_tree_then_deep_write(
    scenario: Start, backend: str, app: Path, tmp_path: Path
) -> None:
    """1. ``cp -r`` of a 3-level tree in: one SIGHUP naming its files.
    2. a later write deep inside the copy: one more (the new directories are watched).
    """
    files = make_tree(tmp_path / "outside" / "tree")
    s = scenario(app, backend=backend)
    subprocess.run(["cp", "-r", str(tmp_path / "outside" / "tree"), str(app)], check=True)
    [first] = s.confirm(1)
    assert first.count == len(files)
    deep = app / "tree" / "dir00" / "dir11" / "file20.txt"
    assert deep.exists()
    deep.write_text("changed\n")
    lines = s.wait_reloads(3)  # the sentinel's reload was the second
    assert lines[2].paths == (str(deep),)
    s.sentinel_dir = deep.parent
    s.confirm(3)


def test_directory_moved_in_then_written(
    scenario: Start, backend: str, app: Path, tmp_path: Path
) -> None:
    """1. a directory with files moved in from outside: one SIGHUP.
    2. a later write inside it: one more; two in total (plus the sentinels').
    """
    outside = tmp_path / "staging" / "plugin"
    write(outside / "plugin.py")
    write(outside / "sub" / "helper.py")
    s = scenario(app, backend=backend)
    os.rename(outside, app / "plugin")
    [moved] = s.confirm(1)
    assert set(moved.paths) == {
        str(app / "plugin" / "plugin.py"),
        str(app / "plugin" / "sub" / "helper.py"),
    }
    (app / "plugin" / "sub" / "helper.py").write_text("changed\n")
    lines = s.wait_reloads(3)
    assert lines[2].paths == (str(app / "plugin" / "sub" / "helper.py"),)
    s.confirm(3)


def configmap(root: Path, version: int, text: str) -> None:
    """Lay out (or update) a Kubernetes ConfigMap volume the way the kubelet does.

    ``..<ts>/config.yaml`` holds the data, ``..data -> ..<ts>``, ``config.yaml ->
    ..data/config.yaml``; an update writes a new ``..<ts>``, points ``..data_tmp`` at it,
    renames ``..data_tmp`` over ``..data`` and removes the old timestamped directory.
    """
    stamp = root / f"..2024_01_0{version}"
    write(stamp / "config.yaml", text)
    old = os.readlink(root / "..data") if (root / "..data").is_symlink() else None
    os.symlink(stamp.name, root / "..data_tmp")
    os.rename(root / "..data_tmp", root / "..data")
    if not (root / "config.yaml").is_symlink():
        os.symlink("..data/config.yaml", root / "config.yaml")
    if old is not None:
        shutil.rmtree(root / old)


def test_configmap_swap_directory(scenario: Start, backend: str, tmp_path: Path) -> None:
    """A ConfigMap ``..data`` swap in a watched directory: one SIGHUP."""
    cm = tmp_path / "cm"
    cm.mkdir()
    configmap(cm, 1, "a: 1\n")
    s = scenario(cm, backend=backend)
    configmap(cm, 2, "a: 2\n")
    assert (cm / "config.yaml").read_text() == "a: 2\n"
    s.confirm(1)


def test_configmap_swap_single_file(scenario: Start, backend: str, tmp_path: Path) -> None:
    """A single-file watch on the ConfigMap's symlinked ``config.yaml``: one SIGHUP per
    ``..data`` swap, also for the second swap (the watch follows the new target)."""
    cm = tmp_path / "cm"
    cm.mkdir()
    configmap(cm, 1, "a: 1\n")
    other = tmp_path / "other"
    other.mkdir()
    s = scenario([cm / "config.yaml", other], backend=backend, sentinel_dir=other)
    configmap(cm, 2, "a: 2\n")
    [line] = s.confirm(1)
    assert line.paths == (str(cm / "config.yaml"),)
    configmap(cm, 3, "a: 3\n")
    lines = s.wait_reloads(3)
    assert lines[2].paths == (str(cm / "config.yaml"),)
    s.confirm(3)


# --------------------------------------------------------------------------- ignored


def test_ignored_files_only(scenario: Start, backend: str, app: Path) -> None:
    """Swap files, backups, emacs droppings, JetBrains temp files, bytecode and anything
    under ``.git/`` change: no SIGHUP (the sentinel's reload is the only one)."""
    (app / ".git" / "objects").mkdir(parents=True)
    s = scenario(app, backend=backend)
    for name in (".app.py.swp", ".app.py.swx", "app.py~", ".#app.py", "#app.py#", "4913",
                 "app.py___jb_tmp___", "app.py___jb_old___"):  # fmt: skip
        write(app / name)
        write(app / "pkg" / name)
    write(app / ".git" / "HEAD", "ref: refs/heads/x\n")
    write(app / ".git" / "objects" / "ab" / "cdef", "blob")
    write(app / "pkg" / "__pycache__" / "models.cpython-311.pyc", "bytecode")
    (app / "app.py~").unlink()
    s.confirm(0)


def test_excluded_paths_only(scenario: Start, backend: str, app: Path) -> None:
    """Only excluded paths change (a pruned directory, a glob at any depth, an anchored
    glob): no SIGHUP; an included file still reloads."""
    write(app / "logs" / "old.log")
    s = scenario(app, backend=backend, exclude=["logs/", "*.log", "/pkg/generated/**"])
    write(app / "logs" / "today.txt")
    write(app / "logs" / "deeper" / "x.txt")
    write(app / "pkg" / "debug.log")
    write(app / "pkg" / "generated" / "out.py")
    write(app / "pkg" / "generated" / "sub" / "more.py")
    s.confirm(0)


# --------------------------------------------------------------------------- the root


def test_root_deleted_and_recreated(scenario: Start, backend: str, tmp_path: Path) -> None:
    """1. the watch root is removed and recreated with content: one SIGHUP.
    2. later writes in the new root still reload.
    """
    root = tmp_path / "site"
    write(root / "index.html", "v1")
    write(root / "css" / "site.css", "v1")
    staging = tmp_path / "staging"
    write(staging / "index.html", "v2")
    write(staging / "css" / "site.css", "v2")
    s = scenario(root, backend=backend)
    shutil.rmtree(root)
    shutil.copytree(staging, root)
    [line] = s.confirm(1)
    assert line.count >= 2
    write(root / "css" / "site.css", "v3")
    lines = s.wait_reloads(3)
    assert lines[2].paths == (str(root / "css" / "site.css"),)
    s.confirm(3)


def test_root_recreated_while_reloadd_was_not_reading(
    scenario: Start, backend: str, tmp_path: Path
) -> None:
    """The root is removed and recreated before reloadd reads a single event (it is
    stopped meanwhile), so the new root usually even has the old inode number: one
    SIGHUP, and writes in the new root still reload."""
    root = tmp_path / "site"
    write(root / "index.html", "v1")
    s = scenario(root, backend=backend)
    s.reloadd.proc.send_signal(signal.SIGSTOP)
    try:
        shutil.rmtree(root)
        write(root / "index.html", "v2")
    finally:
        s.reloadd.proc.send_signal(signal.SIGCONT)
    [line] = s.confirm(1)
    assert line.paths == (str(root / "index.html"),)
    write(root / "new.html", "v3")
    lines = s.wait_reloads(3)
    assert lines[2].paths == (str(root / "new.html"),)
    s.confirm(3)


def test_root_renamed_away_and_replaced(scenario: Start, backend: str, tmp_path: Path) -> None:
    """A deploy by renames (``mv site site.old; mv staging site``): one SIGHUP; then
    writes in the new root reload and writes in the old one do not."""
    root = tmp_path / "site"
    write(root / "index.html", "v1")
    staging = tmp_path / "staging"
    write(staging / "index.html", "v2")
    write(staging / "js" / "app.js", "v2")
    s = scenario(root, backend=backend)
    os.rename(root, tmp_path / "site.old")
    os.rename(staging, root)
    [line] = s.confirm(1)
    assert line.count >= 1
    write(tmp_path / "site.old" / "index.html", "old tree, no longer watched")
    write(root / "js" / "app.js", "v3")
    lines = s.wait_reloads(3)
    assert lines[2].paths == (str(root / "js" / "app.js"),)
    s.confirm(3)


def test_directory_renamed_inside_then_moved_out(
    scenario: Start, backend: str, app: Path, tmp_path: Path
) -> None:
    """1. ``pkg`` renamed to ``lib`` inside the tree: one SIGHUP; 2. a write in ``lib``
    reloads with its new path; 3. ``lib`` moved out of the tree: one SIGHUP; 4. writes
    in it out there reload nothing."""
    s = scenario(app, backend=backend)
    os.rename(app / "pkg", app / "lib")
    s.confirm(1)
    write(app / "lib" / "models.py", "x = 3\n")
    lines = s.wait_reloads(3)
    assert lines[2].paths == (str(app / "lib" / "models.py"),)
    s.confirm(3)
    os.rename(app / "lib", tmp_path / "lib.out")
    [moved] = s.confirm(5)[4:]
    lib = str(app / "lib")
    assert all(p == lib or p.startswith(lib + "/") for p in moved.paths), moved
    write(tmp_path / "lib.out" / "models.py", "x = 4\n")
    write(tmp_path / "lib.out" / "new.py", "x = 4\n")
    s.confirm(6)  # the sentinels' reloads and the moves': nothing for lib.out


def test_single_file_appended_in_place(scenario: Start, backend: str, tmp_path: Path) -> None:
    """A single-file watch path appended to in place (``>>``): one SIGHUP per write."""
    conf = write(tmp_path / "etc" / "app.conf", "a = 1\n")
    other = tmp_path / "other"
    other.mkdir()
    s = scenario([conf, other], backend=backend, sentinel_dir=other)
    with open(conf, "a") as f:
        f.write("b = 2\n")
    [line] = s.confirm(1)
    assert line.paths == (str(conf),)
    write(tmp_path / "etc" / "unrelated.conf", "not watched")
    s.confirm(2)


def test_symlinked_single_file_written_through_its_target(
    scenario: Start, backend: str, tmp_path: Path
) -> None:
    """A single-file watch path that is a symlink to a file of another name: writing the
    target in place is one SIGHUP; a file written next to the target or the link is none."""
    target = write(tmp_path / "shared" / "actual-name.conf", "a = 1\n")
    link = tmp_path / "etc" / "app.conf"
    link.parent.mkdir()
    link.symlink_to(target)
    other = tmp_path / "other"
    other.mkdir()
    s = scenario([link, other], backend=backend, sentinel_dir=other)
    write(tmp_path / "shared" / "neighbour.log", "not watched")
    write(tmp_path / "etc" / "neighbour.log", "not watched")
    s.confirm(0)
    with open(target, "a") as f:
        f.write("b = 2\n")
    assert s.confirm(2)[1].paths == (str(link),)


def test_two_services_share_a_directory(
    start_reloadd: Callable[..., object], backend: str, tmp_path: Path
) -> None:
    """Two services watch one directory (one shared kernel watch), a third a subdirectory
    of it: a change in the subdirectory reloads all three once, a change beside it only
    the two."""
    shared = tmp_path / "shared"
    write(shared / "conf" / "a.yaml")
    watches = {"one": shared, "two": shared, "three": shared / "conf"}
    text = "".join(
        f"[services.{name}]\nwatch = [{toml_value(path)}]\n"
        f"command = {toml_value(recorder_command(tmp_path / f'{name}.log'))}\n"
        f'debounce = "300ms"\nbackend = "{backend}"\n'
        for name, path in watches.items()
    )
    text += f"[daemon]\nsocket = {toml_value(tmp_path / 'control.sock')}\n"
    r = start_reloadd(text)
    recs = {name: Recording(tmp_path / f"{name}.log") for name in watches}
    wait_for(lambda: all(rec.ready_pids() for rec in recs.values()), what="three recorders")
    write(shared / "conf" / "a.yaml", "changed")
    for rec in recs.values():
        rec.wait_count(1)
    write(shared / "top.txt")
    recs["one"].wait_count(2)
    recs["two"].wait_count(2)
    write(shared / "conf" / "b.yaml")  # a later fact for "three": its second reload
    recs["three"].wait_count(2)
    by_service = {n: [x.paths for x in r.wait_reloads(n, 2)] for n in watches}  # type: ignore[attr-defined]
    top, a, b = (
        str(p) for p in (shared / "top.txt", shared / "conf/a.yaml", shared / "conf/b.yaml")
    )
    assert by_service["three"] == [(a,), (b,)]
    assert by_service["one"][:2] == [(a,), (top,)]
    assert by_service["two"][:2] == [(a,), (top,)]


def test_symlinked_root_swapped(scenario: Start, backend: str, tmp_path: Path) -> None:
    """``current -> releases/1`` swapped atomically to ``releases/2``: one SIGHUP; then
    writes in releases/2 reload and writes in releases/1 do not."""
    rel1 = tmp_path / "releases" / "1"
    rel2 = tmp_path / "releases" / "2"
    write(rel1 / "app.py", "v1")
    write(rel1 / "lib" / "util.py", "v1")
    current = tmp_path / "current"
    current.symlink_to("releases/1")
    s = scenario(current, backend=backend)
    write(rel2 / "app.py", "v2")
    write(rel2 / "lib" / "util.py", "v2")
    (tmp_path / "current.tmp").symlink_to("releases/2")
    os.replace(tmp_path / "current.tmp", current)
    [line] = s.confirm(1)
    assert line.count >= 1
    write(rel1 / "lib" / "only_in_old.py", "old release, not watched any more")
    write(rel2 / "lib" / "util.py", "v3")
    lines = s.wait_reloads(3)
    assert lines[2].paths == (str(current / "lib" / "util.py"),)
    s.confirm(3)


def test_missing_watch_path_appears(start_reloadd: Callable[..., object], tmp_path: Path) -> None:
    """A service whose watch path does not exist yet: a warning, the daemon starts, the
    other service reloads; when the path appears with content, one SIGHUP."""
    late = tmp_path / "late"
    ok = tmp_path / "ok"
    ok.mkdir()
    logs = {name: tmp_path / f"{name}.log" for name in ("late", "ok")}
    text = "".join(
        f"[services.{name}]\nwatch = [{toml_value(path)}]\n"
        f'command = {toml_value(recorder_command(logs[name]))}\ndebounce = "300ms"\n'
        for name, path in (("late", late), ("ok", ok))
    )
    text += f"[daemon]\nsocket = {toml_value(tmp_path / 'control.sock')}\n"
    r = start_reloadd(text)
    recs = {name: Recording(path) for name, path in logs.items()}
    wait_for(lambda: all(rec.ready_pids() for rec in recs.values()), what="both recorders")
    assert "does not exist yet" in r.log()  # type: ignore[attr-defined]
    write(ok / "a.txt")
    recs["ok"].wait_count(1)
    staging = tmp_path / "staging"
    write(staging / "index.html")
    write(staging / "sub" / "more.html")
    os.rename(staging, late)
    recs["late"].wait_count(1)
    write(late / "sub" / "more.html", "again")
    recs["late"].wait_count(2)
    # the second reload is the later write's, alone: the appearance gave exactly one
    wait_for(lambda: len(r.reloads("late")) == 2, what="two reload lines")  # type: ignore[attr-defined]
    assert r.reloads("late")[1].paths == (str(late / "sub" / "more.html"),)  # type: ignore[attr-defined]
    assert [x.service for x in r.reloads()] == ["ok", "late", "late"]  # type: ignore[attr-defined]
    assert recs["late"].count() == 2
    assert recs["ok"].count() == 1


# --------------------------------------------------------------------------- hostile trees


def test_non_utf8_names(scenario: Start, backend: str, app: Path) -> None:
    """Files and directories whose names are not UTF-8: no crash, a reload, a decodable log."""
    s = scenario(app, backend=backend)
    raw = os.fsencode(app)
    with open(raw + b"/caf\xe9.txt", "wb") as f:
        f.write(b"x")
    [line] = s.confirm(1)
    assert line.paths == (str(app) + "/caf\\xe9.txt",)
    os.mkdir(raw + b"/d\xff\xfe")
    with open(raw + b"/d\xff\xfe/\x80.py", "wb") as f:
        f.write(b"x")
    lines = s.wait_reloads(3)
    assert lines[2].count == 1
    (app / "app.py").write_text("still works\n")
    s.wait_reloads(4)
    s.reloadd.stderr_path.read_bytes().decode("utf-8")  # strict: the log stays decodable
    assert s.reloadd.proc.poll() is None


def test_deep_tree(scenario: Start, backend: str, app: Path) -> None:
    """A directory chain 120 levels deep, longer in total than PATH_MAX (4096), made with
    relative paths: a file written at the bottom reloads once (the directories past
    PATH_MAX are watched too), normal files still reload, the log stays decodable."""
    s = scenario(app, backend=backend)
    name = "d" * 40
    fd = os.open(app, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(120):  # 120 * 41 bytes > PATH_MAX
            os.mkdir(name, dir_fd=fd)
            new = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = new
        leaf = os.open("leaf.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(leaf, b"x")
        os.close(leaf)
        [line] = s.confirm(1)
        deep = str(app) + ("/" + name) * 120 + "/leaf.txt"
        assert len(deep) > 4096
        assert line.paths == (deep,)
        leaf = os.open("leaf.txt", os.O_WRONLY | os.O_APPEND, dir_fd=fd)
        os.write(leaf, b"more")
        os.close(leaf)
        lines = s.wait_reloads(3)
        assert lines[2].paths == (deep,)
    finally:
        os.close(fd)
    (app / "app.py").write_text("after\n")
    lines = s.wait_reloads(4)
    assert lines[3].paths == (str(app / "app.py"),)
    s.confirm(4)
    assert "File name too long" not in s.reloadd.log()
    s.reloadd.stderr_path.read_bytes().decode("utf-8")  # strict: the log stays decodable
    assert s.reloadd.proc.poll() is None


def test_symlink_loop(scenario: Start, backend: str, app: Path) -> None:
    """Symlink loops in the tree (to an ancestor, to itself): not followed, no crash."""
    (app / "pkg" / "up").symlink_to("..")
    (app / "pkg" / "self").symlink_to("self")
    s = scenario(app, backend=backend)
    (app / "loop").symlink_to(".")
    (app / "pkg" / "models.py").write_text("y = 2\n")
    [line] = s.confirm(1)
    assert set(line.paths) == {str(app / "loop"), str(app / "pkg" / "models.py")}
    assert s.reloadd.proc.poll() is None


# --------------------------------------------------------------------------- holds


def with_clock(tmp_path: Path, backend: str | None = None) -> tuple[Path, str]:
    """A second service ``clock`` with the same debounce, watching its own directory.

    Its reload is the positive fact that a debounce has passed: a change written to
    ``clock/`` *after* a change to the app settles later than the app's would have, so
    when ``clock`` has reloaded and the app has not, the app's batch is being held.
    ``backend`` gives the clock the app's backend (and, for poll, the scenario's
    poll_interval), so that its changes take as long to be seen as the app's.
    """
    clock = tmp_path / "clock"
    clock.mkdir()
    text = (
        "[services.clock]\n"
        f"watch = [{toml_value(clock)}]\n"
        f"command = {toml_value(recorder_command(tmp_path / 'clock.log'))}\n"
        'debounce = "300ms"\n'
    )
    if backend is not None:
        text += f"backend = {toml_value(backend)}\n"
        if backend == "poll":
            text += 'poll_interval = "100ms"\n'
    return clock, text


# The bound of the two "bounded by max_delay" tests: longer than two clock reloads take
# on a loaded machine (the hold is proven first), short enough to wait for.
HOLD_BOUND = "4s"


def debounce_passed(s: Scenario, clock: Path, n: int) -> None:
    """Write to ``clock/`` and wait for the clock service's ``n``-th reload."""
    write(clock / f"tick{n}.txt")
    wait_for(
        lambda: len(s.reloadd.reloads("clock")) >= n,
        what=f"clock reload {n}",
        detail=s.reloadd.log,
    )


def test_half_written_file_is_held(scenario: Start, app: Path, tmp_path: Path) -> None:
    """1. a file is opened and half written; 2. it stays open past the debounce: no
    reload; 3. it is finished and closed: exactly one SIGHUP, after the close.
    (inotify only: the hold rests on IN_MODIFY without IN_CLOSE_WRITE.)"""
    clock, clock_toml = with_clock(tmp_path)
    s = scenario(app, backend="inotify", max_delay="8s", extra_toml=clock_toml)
    upload = app / "upload.bin"
    with open(upload, "wb") as f:
        f.write(b"first half")
        f.flush()
        debounce_passed(s, clock, 1)
        assert s.reloads() == [], s.reloadd.log()
        assert s.recording.count() == 0
        f.write(b"second half")
    [line] = s.confirm(1)
    assert line.paths == (str(upload),)


def test_single_file_held_while_open_fires_at_close(
    scenario: Start, app: Path, tmp_path: Path
) -> None:
    """A single-file watch path written slowly: held while open, and the close alone (it
    changes neither size nor mtime) ends the hold: one SIGHUP right after the close,
    not ``max_delay`` later. (inotify only: the hold rests on IN_MODIFY.)"""
    clock, clock_toml = with_clock(tmp_path)
    conf = write(tmp_path / "etc" / "app.conf", "a = 1\n")
    s = scenario(
        [conf, app], max_delay="60s", extra_toml=clock_toml, backend="inotify", sentinel_dir=app
    )
    with open(conf, "a") as f:
        f.write("b = 2\n")
        f.flush()
        debounce_passed(s, clock, 1)
        assert s.reloads() == [], s.reloadd.log()
    [line] = s.wait_reloads(1, timeout=20)  # max_delay is 60 s: the close ended the hold
    assert line.paths == (str(conf),)
    s.confirm(1)


def test_symlinked_file_not_held_by_a_namesake_next_to_the_link(
    scenario: Start, app: Path, tmp_path: Path
) -> None:
    """``etc/app.conf -> ../shared/real.conf``, and an unrelated ``etc/real.conf`` held
    open for writing: the target's changes are not held by it (max_delay is 60 s)."""
    target = write(tmp_path / "shared" / "real.conf", "a = 1\n")
    link = tmp_path / "etc" / "app.conf"
    link.parent.mkdir()
    link.symlink_to(target)
    s = scenario([link, app], backend="inotify", max_delay="60s", sentinel_dir=app)
    write(target, "a = 2\n")
    with open(tmp_path / "etc" / "real.conf", "w") as namesake:
        namesake.write("a log that happens to have the target's name\n")
        namesake.flush()  # while the change above is pending (debounce 300 ms)
        [line] = s.wait_reloads(1, timeout=20)
    assert line.paths == (str(link),)
    s.confirm(1)


def test_open_file_hold_bounded_by_max_delay(scenario: Start, app: Path, tmp_path: Path) -> None:
    """1. a file is left open after a write: no reload after two debounces (the hold
    works); 2. still open, it reloads anyway once ``max_delay`` has passed; 3. it is
    closed (complete now): one more, for the finished file."""
    clock, clock_toml = with_clock(tmp_path)
    s = scenario(app, backend="inotify", max_delay=HOLD_BOUND, extra_toml=clock_toml)
    stuck = app / "stuck.txt"
    with open(stuck, "wb") as f:
        f.write(b"partial")
        f.flush()
        # two ticks: the second is written after the first has reloaded, so it settles
        # well after an unheld reload of the app would have been logged
        debounce_passed(s, clock, 1)
        debounce_passed(s, clock, 2)
        assert s.reloads() == [], s.reloadd.log()
        assert s.recording.count() == 0
        [line] = s.wait_reloads(1)  # the file is still open: only max_delay fired it
        assert line.paths == (str(stuck),)
    lines = s.wait_reloads(2)
    assert lines[1].paths == (str(stuck),)
    s.confirm(2)


def test_git_index_lock_holds(scenario: Start, backend: str, app: Path, tmp_path: Path) -> None:
    """1. ``.git/index.lock`` appears; 2. files change and settle: no reload while the
    lock exists; 3. the lock goes: exactly one SIGHUP."""
    (app / ".git").mkdir()
    clock, clock_toml = with_clock(tmp_path)
    s = scenario(app, backend=backend, max_delay="8s", extra_toml=clock_toml)
    lock = write(app / ".git" / "index.lock", "")
    write(app / "app.py", "version = 2\n")
    debounce_passed(s, clock, 1)
    assert s.reloads() == [], s.reloadd.log()
    write(app / "pkg" / "models.py", "x = 2\n")
    debounce_passed(s, clock, 2)
    assert s.reloads() == [], s.reloadd.log()
    lock.unlink()
    [line] = s.confirm(1)
    assert set(line.paths) == {str(app / "app.py"), str(app / "pkg" / "models.py")}


def test_git_index_lock_bounded_by_max_delay(
    scenario: Start, backend: str, app: Path, tmp_path: Path
) -> None:
    """A stale ``.git/index.lock`` delays a change by ``max_delay`` at most: no reload
    after two debounces (the lock holds it), then one while the lock is still there."""
    lock = write(app / ".git" / "index.lock", "")  # present before start: found by the walk
    clock, clock_toml = with_clock(tmp_path, backend)
    s = scenario(app, backend=backend, max_delay=HOLD_BOUND, extra_toml=clock_toml)
    write(app / "app.py", "version = 2\n")
    debounce_passed(s, clock, 1)
    debounce_passed(s, clock, 2)
    assert s.reloads() == [], s.reloadd.log()
    assert s.recording.count() == 0
    [line] = s.wait_reloads(1)  # the lock was never removed: only max_delay fired it
    assert line.paths == (str(app / "app.py"),)
    assert lock.exists()


# --------------------------------------------------------------------------- overflow


def test_queue_overflow_rescans_and_reloads_once(
    scenario: Start, app: Path, tmp_path: Path
) -> None:
    """1. reloadd is stopped (SIGSTOP) so it cannot read; 2. 20,000 files are written,
    three events each, far past the 16,384-event queue; 3. it continues: the overflow is
    logged, the trees are rescanned, and exactly one SIGHUP follows."""
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    n = 20_000
    assert n * 3 > limit, f"fs.inotify.max_queued_events={limit} is too large to overflow"
    bulk = app / "bulk"
    bulk.mkdir()
    s = scenario(app, backend="inotify", debounce="500ms")
    s.reloadd.proc.send_signal(signal.SIGSTOP)
    try:
        for i in range(n):
            with open(bulk / f"f{i:05}", "wb") as f:
                f.write(b"x")
    finally:
        s.reloadd.proc.send_signal(signal.SIGCONT)
    s.reloadd.wait_log("inotify queue overflowed")
    [line] = s.confirm(1)
    assert line.count >= 1


def test_overflow_rescan_follows_renames_and_locks(scenario: Start, app: Path) -> None:
    """What changed while the queue overflowed is found by the rescan:
    1. reloadd is stopped; the queue overflows; then ``pkg`` is renamed to ``lib`` and a
       ``.git/index.lock`` that existed is removed (their events are lost);
    2. reloadd continues: one SIGHUP for the overflow;
    3. a write in ``lib`` reloads within the debounce: ``lib`` is watched (the old name's
       watch was the same inode and must not be dropped) and no stale lock holds it."""
    bulk = app / "bulk"
    bulk.mkdir()
    lock = write(app / ".git" / "index.lock", "")
    s = scenario(app, backend="inotify", debounce="500ms", max_delay="120s")
    s.reloadd.proc.send_signal(signal.SIGSTOP)
    try:
        for i in range(20_000):
            with open(bulk / f"f{i:05}", "wb") as f:
                f.write(b"x")
        os.rename(app / "pkg", app / "lib")
        lock.unlink()
    finally:
        s.reloadd.proc.send_signal(signal.SIGCONT)
    s.reloadd.wait_log("inotify queue overflowed")
    # a stale lock would hold every batch for max_delay (120 s); 20 s is plenty for 0.5 s
    s.wait_reloads(1, timeout=20)
    write(app / "lib" / "models.py", "x = 5\n")
    lines = s.wait_reloads(2, timeout=20)
    assert lines[1].paths == (str(app / "lib" / "models.py"),)
    s.confirm(2)


def test_watch_path_below_a_swapped_symlink(scenario: Start, backend: str, tmp_path: Path) -> None:
    """``watch = [".../current/lib"]`` with ``current -> releases/1`` (the link is an
    ancestor, not the watch path): swapping ``current`` to ``releases/2`` is a change, and
    then writes in releases/2/lib reload and writes in releases/1/lib do not."""
    rel1 = tmp_path / "releases" / "1"
    rel2 = tmp_path / "releases" / "2"
    write(rel1 / "lib" / "util.py", "v1")
    write(rel2 / "lib" / "util.py", "v2")  # before the start: the swap is the only event
    current = tmp_path / "current"
    current.symlink_to("releases/1")
    s = scenario(current / "lib", backend=backend)
    (tmp_path / "current.tmp").symlink_to("releases/2")
    os.replace(tmp_path / "current.tmp", current)
    s.confirm(1)
    # a name only the old release has: were it still watched, it would be reported (as
    # current/lib/only_in_old.py) before or with the new release's change
    write(rel1 / "lib" / "only_in_old.py", "old release, not watched any more")
    write(rel2 / "lib" / "util.py", "v3")
    lines = s.wait_reloads(3)
    assert lines[2].paths == (str(current / "lib" / "util.py"),)
    s.confirm(3)


def test_symlink_chain_middle_link_swapped(scenario: Start, backend: str, tmp_path: Path) -> None:
    """``etc/app -> ../srv/current`` and ``srv/current -> releases/1``: swapping the
    middle link (``srv/current``) to ``releases/2`` is a change, and the new release is
    the one watched from then on."""
    rel1 = tmp_path / "srv" / "releases" / "1"
    rel2 = tmp_path / "srv" / "releases" / "2"
    write(rel1 / "app.py", "v1")
    current = tmp_path / "srv" / "current"
    current.symlink_to("releases/1")
    link = tmp_path / "etc" / "app"
    link.parent.mkdir()
    link.symlink_to("../srv/current")
    write(rel2 / "app.py", "v2")  # before the start: the swap is the only event
    s = scenario(link, backend=backend)
    (tmp_path / "srv" / "current.tmp").symlink_to("releases/2")
    os.replace(tmp_path / "srv" / "current.tmp", current)
    s.confirm(1)
    write(rel1 / "only_in_old.py", "old release, not watched any more")  # (see above)
    write(rel2 / "app.py", "v3")
    lines = s.wait_reloads(3)
    assert lines[2].paths == (str(link / "app.py"),)
    s.confirm(3)
