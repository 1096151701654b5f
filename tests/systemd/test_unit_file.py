"""packaging/systemd/reloadd.service passes `systemd-analyze verify`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from systemd_harness import COMMAND_TIMEOUT, entry_points_dir, require

pytestmark = pytest.mark.slow

UNIT = Path(__file__).resolve().parents[2] / "packaging" / "systemd" / "reloadd.service"


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """verify checks that ExecStart=/ExecReload= binaries exist in systemd's search path
    (/usr/local/bin, /usr/bin, ...): this environment's entry points are mounted on
    /usr/local/bin in a private mount namespace, so nothing is installed on the host."""
    require(shutil.which("systemd-analyze") is not None, "systemd-analyze is not installed")
    require(shutil.which("unshare") is not None, "unshare is not installed")
    bin_dir = entry_points_dir(tmp_path / "bin")
    require((bin_dir / "reloadd").exists(), "reloadd's entry points are not installed (pip -e)")
    result = subprocess.run(
        [
            "unshare",
            "--mount",
            "sh",
            "-c",
            'mount --bind "$1" /usr/local/bin && exec systemd-analyze verify "$2"',
            "sh",
            str(bin_dir),
            str(UNIT),
        ],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    require("unshare failed" not in result.stderr, f"cannot unshare: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # no warnings either
