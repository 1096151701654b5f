"""When inotify runs out, reloadd polls instead — shown for real, without touching the
host's limits: the daemon runs in a child user namespace whose own inotify limits
(``/proc/sys/user/max_inotify_watches`` and ``max_inotify_instances``, per user
namespace since Linux 4.9) are set low, so the kernel itself says ENOSPC or EMFILE.

Needs ``unshare`` (util-linux) and unprivileged-or-root user namespaces.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from reloadd_testing import (
    DEADLINE,
    Recording,
    Reloadd,
    recorder_command,
    require,
    require_tool,
    toml_value,
    wait_for,
    write,
)

pytestmark = pytest.mark.slow

Start = Callable[..., Reloadd]


def userns_works(unshare: str) -> bool:
    probe = "echo 1 > /proc/sys/user/max_inotify_watches"
    argv = [unshare, "--user", "--map-root-user", "sh", "-c", probe]
    return subprocess.run(argv, stderr=subprocess.DEVNULL, check=False).returncode == 0


@pytest.fixture
def start_in_userns(start_reloadd: Start, tmp_path: Path) -> Start:
    """``start_reloadd`` in a new user namespace with ``limits`` ({"max_inotify_watches":
    N}) written to /proc/sys/user/ first; waits for READY=1; stopped afterwards."""
    unshare = require_tool("unshare", "util-linux")
    require(userns_works(unshare), "user namespaces with writable /proc/sys/user limits")

    def start(config_text: str, limits: dict[str, int]) -> Reloadd:
        own_socket = f"[daemon]\nsocket = {toml_value(tmp_path / 'control.sock')}\n"
        setup = " && ".join(f"echo {n} > /proc/sys/user/{k}" for k, n in limits.items())
        wrapper = (unshare, "--user", "--map-root-user", "sh", "-c", f'{setup} && exec "$@"', "sh")
        return start_reloadd(textwrap.dedent(config_text) + own_socket, wrapper=wrapper)

    return start


def service(name: str, watch: Path, log: Path, **keys: str) -> str:
    lines = [
        f"[services.{name}]",
        f"watch = [{toml_value(watch)}]",
        f"command = {toml_value(recorder_command(log))}",
        'debounce = "200ms"',
        *(f"{k} = {toml_value(v)}" for k, v in keys.items()),
    ]
    return "\n".join(lines) + "\n"


def test_watch_limit_polls_the_unwatched_subtrees(start_in_userns: Start, tmp_path: Path) -> None:
    """34 directories, a limit of 12 watches: the first 10 directories (plus the root and
    its anchor) are inotify watches, the other 23 are polled; writes reload in both."""
    app = tmp_path / "app"
    for a in range(3):
        for b in range(10):
            write(app / f"a{a}" / f"b{b}" / "file.txt")
    log = tmp_path / "signals.log"
    limit = 12
    r = start_in_userns(
        service("app", app, log, poll_interval="100ms"), {"max_inotify_watches": limit}
    )
    rec = Recording(log)
    wait_for(lambda: rec.ready_pids(), what="the recorder", detail=r.log)
    text = r.log()
    m = re.search(
        r"app: (\S+): the inotify watch limit \(fs\.inotify\.max_user_watches = \d+; "
        r"user\.max_inotify_watches = 12 in this user namespace\) is exhausted; "
        r"(\d+) subtrees \((\d+) directories\) are polled every 0\.1s instead\. .*"
        r"raise the limit by at least (\d+): `sysctl user\.max_inotify_watches=(\d+)`",
        text,
    )
    assert m, text
    assert m[1] == str(app)
    watched = limit - 1  # one watch is the anchor on the root's parent
    assert int(m[3]) == int(m[4]) == 34 - watched  # 1 + 3 + 30 directories in all
    assert int(m[5]) == limit + int(m[4])
    assert text.count("the inotify watch limit") == 1
    assert f"app: {app}: inotify (auto: local" in text

    # a file in a polled subtree, then one in a watched directory: one reload each
    polled_dirs = sorted(p for p in app.glob("a*/b*"))
    write(polled_dirs[-1] / "file.txt", "changed in a polled subtree")
    rec.wait_count(1)
    write(app / "new.txt", "in the watched root")
    rec.wait_count(2)
    # a new directory inside a polled subtree is seen too
    write(polled_dirs[-1] / "deeper" / "more.txt")
    rec.wait_count(3)
    lines = r.wait_reloads("app", 3)
    assert [x.paths for x in lines] == [
        (str(polled_dirs[-1] / "file.txt"),),
        (str(app / "new.txt"),),
        (str(polled_dirs[-1] / "deeper" / "more.txt"),),
    ]
    assert r.proc.poll() is None


def test_no_inotify_instance_polls_everything(start_in_userns: Start, tmp_path: Path) -> None:
    """max_inotify_instances = 0: the daemon starts anyway, every service polls."""
    app = tmp_path / "app"
    write(app / "app.py")
    log = tmp_path / "signals.log"
    r = start_in_userns(
        service("app", app, log, poll_interval="100ms"), {"max_inotify_instances": 0}
    )
    rec = Recording(log)
    wait_for(lambda: rec.ready_pids(), what="the recorder", detail=r.log)
    text = r.log()
    assert "cannot create an inotify instance" in text
    assert (
        f"app: {app}: poll (fallback: no inotify instance (fs.inotify.max_user_instances))" in text
    )
    write(app / "app.py", "changed")
    rec.wait_count(1, timeout=DEADLINE)
    assert [x.paths for x in r.wait_reloads("app", 1)] == [(str(app / "app.py"),)]


def test_polled_subtrees_end_when_they_are_gone(start_in_userns: Start, tmp_path: Path) -> None:
    """Polled subtrees that are removed stop being polled (after their deletions were
    reported); a directory created when watches are free again is an inotify watch."""
    app = tmp_path / "app"
    for b in range(6):
        write(app / f"b{b}" / "file.txt")
    log = tmp_path / "signals.log"
    r = start_in_userns(service("app", app, log, poll_interval="100ms"), {"max_inotify_watches": 5})
    rec = Recording(log)
    wait_for(lambda: rec.ready_pids(), what="the recorder", detail=r.log)
    assert "3 subtrees (3 directories) are polled" in r.log()  # anchor + root + 3 watched
    for d in sorted(app.iterdir()):
        shutil.rmtree(d)  # frees the 3 watches; the 3 pollers report and end
    r.wait_log(f"app: {app}: no subtree is polled any more; all on inotify")
    wait_for(
        lambda: sum(x.count or 0 for x in r.reloads("app")) == 6,
        what="the six deletions reported",
        detail=r.log,
    )
    again = write(app / "again" / "file.txt")
    wait_for(lambda: any(str(again) in x.paths for x in r.reloads("app")), detail=r.log)
    n = len(r.reloads("app"))
    write(again, "changed")
    wait_for(lambda: len(r.reloads("app")) > n, detail=r.log)
    assert r.reloads("app")[-1].paths == (str(again),)
    assert r.log().count("the inotify watch limit") == 1  # "again" found a free watch
    assert r.proc.poll() is None
