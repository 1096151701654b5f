"""The test systemd itself: boots, runs a Type=notify unit, shows its STATUS=, logs it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from systemd_harness import REPO, Systemd

pytestmark = [pytest.mark.systemd, pytest.mark.slow]

# Independent of reloadd's code: the raw protocol, as sd_notify(3) describes it.
RAW_NOTIFY = """\
import os, signal, socket, sys
address = os.environ["NOTIFY_SOCKET"]
if address.startswith("@"):
    address = "\\0" + address[1:]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
print("hello from the demo", flush=True)
sock.sendto(b"READY=1\\nSTATUS=demo is up", address)
signal.sigwait({signal.SIGTERM})
sock.sendto(b"STOPPING=1", address)
print("demo stopping", flush=True)
"""


def test_type_notify_unit(systemd: Systemd, tmp_path: Path) -> None:
    """1. start returns after READY=1; 2. status shows STATUS=; 3. stdout is in the journal."""
    script = tmp_path / "raw_notify.py"
    script.write_text(RAW_NOTIFY)
    systemd.write_unit(
        "demo.service",
        f"""
        [Service]
        Type=notify
        ExecStart={sys.executable} {script}
        TimeoutStartSec=20s
        """,
    )
    systemd.daemon_reload()
    systemd.systemctl("start", "demo.service", check=True)
    # No waiting: a Type=notify start job completes only at READY=1.
    assert systemd.show("demo.service", "ActiveState") == "active"
    assert systemd.show("demo.service", "StatusText") == "demo is up"
    status = systemd.systemctl("status", "demo.service").stdout
    assert "active (running)" in status
    assert 'Status: "demo is up"' in status
    systemd.wait_for(
        lambda: "hello from the demo" in systemd.journal("demo.service"),
        what="the demo's stdout in the journal",
    )
    systemd.systemctl("stop", "demo.service", check=True)
    assert systemd.show("demo.service", "ActiveState") == "inactive"
    systemd.wait_for(
        lambda: "demo stopping" in systemd.journal("demo.service"),
        what="the demo's last line in the journal",
    )


def test_host_tmp_is_hidden_but_the_test_dir_is_shared(
    systemd: Systemd, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Units see the test's files, and a private /tmp instead of the host's."""
    (tmp_path / "from-the-host").write_text("x")
    assert systemd.run("cat", str(tmp_path / "from-the-host"), check=True).stdout == "x"
    basetemp = tmp_path_factory.getbasetemp()
    # Only the paths down to what the harness keeps (pytest's base temporary directory and
    # the checkout, which CI may clone under /tmp) exist in the private /tmp.
    kept = (basetemp.resolve(), REPO)
    expected = sorted({p.parts[2] for p in kept if p.parts[1] == "tmp"})
    assert sorted(systemd.run("ls", "-A", "/tmp", check=True).stdout.split()) == expected
