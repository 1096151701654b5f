"""Boot a real systemd (PID 1 of private namespaces) for the tests in this directory.

`boot_systemd` (behind the ``systemd`` fixture of conftest.py) starts
``/lib/systemd/systemd --system`` under ``unshare`` in new PID, mount, network, UTS and IPC
namespaces with a private ``/run``, and yields a `Systemd`: ``systemctl(...)``,
``journal(unit)``, ``show(unit, prop)``, unit and drop-in writers, and ``wait_for(probe)``,
which polls a fact under a deadline and fails with the journal. The systemd is always killed
(SIGKILL through its pidfd; the kernel then kills every process of its PID namespace) and
reaped in a ``finally``.

Safety, because this systemd shares the host's file systems, /dev and cgroup tree:

- SYSTEMD_UNIT_PATH is the test's own unit directory only (no trailing ``:``, which would
  add the distribution's units). ``units/`` holds empty stubs of the targets that default
  dependencies name: the real ``sysinit.target`` starts systemd-tmpfiles-setup, which
  treats this as a boot and empties the host's /tmp.
- Inside the mount namespace /tmp, /var/tmp and /var/log/journal are covered by tmpfs, so
  nothing in there can touch the host's; only pytest's base temporary directory is bound
  back in, so that units see the test's files.
- journald (a trimmed unit in ``units/``) is configured volatile, without reading kmsg and
  without forwarding anywhere.
- The unit files are checked before booting: no ``:`` in the unit path, no tmpfiles unit.
- A canary file in the host's /tmp must survive every boot; the test fails loudly if not.
- Boots are serialised across processes with a lock file: they share the host's cgroup
  hierarchy (``/system.slice/...``), so two at once would step on each other.

Known host-wide traces (harmless): the systemd mounts the unused cgroup v1 hierarchies and
leaves empty unit cgroups (``/sys/fs/cgroup/*/system.slice/*.service``) behind.

Without root, ``unshare`` or systemd these tests skip, unless ``RELOADD_REQUIRE_ALL=1`` is set
(CI), in which case they fail.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import shlex
import shutil
import signal
import subprocess
import sysconfig
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]  # the checkout: recorder.py, packaging/, examples/
STUB_UNITS = HERE / "units"
SYSTEMD_BINARY = Path("/lib/systemd/systemd")
BOOT_TARGET = "reloadd-test.target"
LOCK_PATH = Path(tempfile.gettempdir()) / "reloadd-systemd-tests.lock"

BOOT_TIMEOUT = 30.0
LOCK_TIMEOUT = 600.0
COMMAND_TIMEOUT = 60.0
POLL_INTERVAL = 0.05

# Inside the namespaces: private /run; tmpfs over the host's temporary and journal
# directories, with the directories the tests need (pytest's base temporary directory and
# this checkout, which CI may clone under /tmp) bound back in; our entry points in
# /usr/local/bin; a quiet journald; then systemd as PID 1.
BOOT_SCRIPT = r"""
set -eu
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/systemd
IFS='
'
i=0
for keep in $RELOADD_TEST_KEEP; do
    mkdir -p "/run/reloadd-test-keep/$i"
    mount --bind "$keep" "/run/reloadd-test-keep/$i"
    i=$((i + 1))
done
for dir in /tmp /var/tmp /var/log/journal; do
    if [ -d "$dir" ]; then mount -t tmpfs -o mode=1777 tmpfs "$dir"; fi
done
i=0
for keep in $RELOADD_TEST_KEEP; do
    mkdir -p "$keep"
    mount --move "/run/reloadd-test-keep/$i" "$keep"
    i=$((i + 1))
done
unset IFS
# This checkout's entry points as /usr/local/bin/reloadd and reloadctl, where the shipped unit
# finds them (ExecStart=reloadd ...), without installing anything on the host.
mount --bind "$RELOADD_TEST_BIN" /usr/local/bin
mkdir -p /run/systemd/journald.conf.d
cat > /run/systemd/journald.conf.d/reloadd-test.conf <<'EOF'
[Journal]
Storage=volatile
ReadKMsg=no
ForwardToSyslog=no
ForwardToKMsg=no
ForwardToConsole=no
ForwardToWall=no
EOF
export container=unshare
export SYSTEMD_UNIT_PATH="$RELOADD_TEST_UNITS"
exec /lib/systemd/systemd --system --unit="$RELOADD_TEST_TARGET"
"""

# What commands run inside see: no SYSTEMD_* or NOTIFY_SOCKET leaking in from the test run.
INNER_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "SYSTEMD_COLORS": "0",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_LOG_COLOR": "0",
}

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL unshare if pytest dies, so --kill-child takes systemd down too."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def require(condition: bool, reason: str) -> None:
    """Skip when a dependency is missing, or fail under RELOADD_REQUIRE_ALL=1 (CI)."""
    if condition:
        return
    if os.environ.get("RELOADD_REQUIRE_ALL") == "1":
        pytest.fail(f"RELOADD_REQUIRE_ALL=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def entry_points_dir(directory: Path) -> Path:
    """A directory with symlinks to this environment's reloadd and reloadctl scripts."""
    scripts = Path(sysconfig.get_path("scripts"))
    directory.mkdir()
    for name in ("reloadd", "reloadctl"):
        if (scripts / name).exists():
            (directory / name).symlink_to(scripts / name)
    return directory


def check_prerequisites() -> None:
    require(os.geteuid() == 0, "booting systemd in namespaces needs root")
    for tool in ("unshare", "nsenter", "systemctl", "journalctl", "mount"):
        require(shutil.which(tool) is not None, f"{tool} is not installed")
    require(os.access(SYSTEMD_BINARY, os.X_OK), f"{SYSTEMD_BINARY} is not installed")
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount", "--mount-proc", "--net", "true"],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    require(probe.returncode == 0, f"cannot create namespaces: {probe.stderr.strip()}")


@contextlib.contextmanager
def boot_lock(timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """One booted systemd at a time on this host, across pytest processes."""
    with LOCK_PATH.open("a") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    pytest.fail(f"another test systemd held {LOCK_PATH} for {timeout:.0f}s")
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(field) for field in text.split()]


class Systemd:
    """A running systemd in private namespaces, and helpers to drive it from the host."""

    def __init__(self, pid: int, unit_dir: Path, boot_log: Path) -> None:
        self.pid = pid  # host pid of the namespace's PID 1
        self.unit_dir = unit_dir
        self.boot_log = boot_log

    # -- running things inside ---------------------------------------------------------

    def run(
        self, *argv: str, check: bool = False, timeout: float = COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the namespaces of the booted systemd."""
        cmd = ["nsenter", "-t", str(self.pid), "-m", "-p", "-n", "-u", "-i", "--", *argv]
        result = subprocess.run(
            cmd, capture_output=True, text=True, env=INNER_ENV, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"{shlex.join(argv)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}\n{self.diagnostics()}",
                pytrace=False,
            )
        return result

    def systemctl(
        self, *args: str, check: bool = False, timeout: float = COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", "--no-pager", *args, check=check, timeout=timeout)

    def show(self, unit: str, prop: str) -> str:
        """One property of a unit, e.g. show("reloadd.service", "ActiveState")."""
        return self.systemctl("show", "--value", "-p", prop, unit, check=True).stdout.strip()

    def journal(self, unit: str | None = None, *, output: str = "cat") -> str:
        """The journal (of one unit: its own lines and systemd's about it)."""
        args = ["journalctl", "--no-pager", "-o", output]
        if unit is not None:
            args += ["-u", unit]
        return self.run(*args).stdout

    def diagnostics(self) -> str:
        failed = self.systemctl("list-units", "--all", "--failed").stdout
        journal = self.journal(output="short-monotonic")
        tail = "\n".join(journal.splitlines()[-150:])
        return f"--- failed units ---\n{failed}\n--- journal (tail) ---\n{tail}"

    # -- units -------------------------------------------------------------------------

    def write_unit(self, name: str, text: str) -> Path:
        """Add or replace a unit file (call daemon_reload() after a batch of writes)."""
        path = self.unit_dir / name
        path.write_text(textwrap.dedent(text).lstrip())
        return path

    def write_dropin(self, unit: str, name: str, text: str) -> Path:
        directory = self.unit_dir / f"{unit}.d"
        directory.mkdir(exist_ok=True)
        path = directory / name
        path.write_text(textwrap.dedent(text).lstrip())
        return path

    def daemon_reload(self) -> None:
        self.systemctl("daemon-reload", check=True)

    # -- waiting on facts --------------------------------------------------------------

    def wait_for(self, probe: Callable[[], T], *, what: str, timeout: float = 20.0) -> T:
        """Poll ``probe`` until it returns something truthy; fail with the journal after
        ``timeout`` seconds. The sleep between probes paces the polling; the fact decides.
        """
        deadline = time.monotonic() + timeout
        while True:
            result = probe()
            if result:
                return result
            if time.monotonic() >= deadline:
                pytest.fail(
                    f"timed out after {timeout:.0f}s waiting for {what}\n{self.diagnostics()}",
                    pytrace=False,
                )
            time.sleep(POLL_INTERVAL)

    def wait_for_state(
        self, unit: str, *states: str, prop: str = "ActiveState", timeout: float = 20.0
    ) -> str:
        """Wait until ``prop`` of ``unit`` is one of ``states``; return it."""

        def probe() -> str:
            value = self.show(unit, prop)
            return value if value in states else ""

        return self.wait_for(probe, what=f"{unit} {prop} in {states}", timeout=timeout)


def _find_systemd(unshare: subprocess.Popen[bytes], deadline: float) -> int:
    """The host pid of unshare's child once it has exec'd systemd."""
    while True:
        for child in _children(unshare.pid):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{child}/exe") == str(SYSTEMD_BINARY.resolve()):
                    return child
        if unshare.poll() is not None or time.monotonic() >= deadline:
            raise RuntimeError(f"systemd did not start (unshare exit code {unshare.poll()})")
        time.sleep(POLL_INTERVAL)


def _wait_running(booted: Systemd, unshare: subprocess.Popen[bytes], deadline: float) -> None:
    state = ""
    while time.monotonic() < deadline and unshare.poll() is None:
        state = booted.systemctl("is-system-running").stdout.strip()
        if state == "running":
            return
        if state == "degraded":
            break
        time.sleep(POLL_INTERVAL)
    raise RuntimeError(f"test systemd is not running (state {state!r})\n{booted.diagnostics()}")


@contextlib.contextmanager
def boot_systemd(
    unit_dir: Path, keep_dir: Path, bin_dir: Path, boot_log: Path
) -> Iterator[Systemd]:
    """Boot, yield, and always kill and reap the namespace's systemd.

    ``keep_dir`` and the checkout (under /tmp or not) stay visible inside; ``bin_dir`` is
    mounted on /usr/local/bin inside.
    """
    unit_path = str(unit_dir)
    assert ":" not in unit_path, "SYSTEMD_UNIT_PATH must be the test unit directory only"
    assert not list(unit_dir.glob("systemd-tmpfiles*")), "no tmpfiles units in the test dir"
    env = {
        **INNER_ENV,
        "RELOADD_TEST_UNITS": unit_path,
        # newline-separated: pytest's temporary directory and this checkout
        "RELOADD_TEST_KEEP": f"{keep_dir}\n{REPO}",
        "RELOADD_TEST_BIN": str(bin_dir),
        "RELOADD_TEST_TARGET": BOOT_TARGET,
    }
    deadline = time.monotonic() + BOOT_TIMEOUT
    with boot_log.open("wb") as log:
        unshare = subprocess.Popen(
            [
                "unshare",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount",
                "--mount-proc",
                "--propagation",
                "private",
                "--net",
                "--uts",
                "--ipc",
                "sh",
                "-c",
                BOOT_SCRIPT,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_die_with_parent,
        )
    pidfd: int | None = None
    try:
        pid = _find_systemd(unshare, deadline)
        pidfd = os.pidfd_open(pid)  # signals reach this process even if the pid is reused
        booted = Systemd(pid, unit_dir, boot_log)
        _wait_running(booted, unshare, deadline)
        yield booted
    finally:
        if pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            os.close(pidfd)
        try:
            unshare.wait(timeout=COMMAND_TIMEOUT)
        except subprocess.TimeoutExpired:
            unshare.kill()  # --kill-child: the kernel SIGKILLs systemd with it
            unshare.wait()
