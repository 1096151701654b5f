"""The README's promises: its first command runs the bundled demo, and editing the demo's
settings visibly reloads it; its test command is what CI runs."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def first_block() -> list[str]:
    block = re.search(r"```(?:sh|bash|console)?\n(.*?)```", README, re.S)
    assert block, "README has no code block"
    return [ln.split("#")[0].strip() for ln in block.group(1).splitlines() if ln.strip()]


def test_readme_starts_with_the_two_commands():
    run_demo, run_tests = first_block()[:2]
    assert run_demo == "pip install . && reloadd -c examples/reloadd.toml"
    assert run_tests == "pip install '.[test]' && python -m pytest"
    assert run_tests in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
def test_demo_reloads_when_its_settings_change(tmp_path):
    """`reloadd -c examples/reloadd.toml` (on a copy): save settings -> the demo reloads."""
    examples = tmp_path / "examples"
    shutil.copytree(ROOT / "examples", examples, ignore=shutil.ignore_patterns("__pycache__"))
    config = examples / "reloadd.toml"
    config.write_text(config.read_text().replace("/tmp/reloadd-demo.sock", str(tmp_path / "s")))
    log = tmp_path / "demo.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "reloadd", "-c", str(config)], stdout=out, stderr=out
        )
    try:
        text = lambda: log.read_text(errors="replace")  # noqa: E731
        wait_for(lambda: "serving version 1" in text(), what="the demo to start", detail=text)
        settings = examples / "demo" / "app" / "settings.toml"
        settings.write_text(settings.read_text().replace("version = 1", "version = 2"))
        wait_for(
            lambda: "got SIGHUP; now serving version 2" in text(),
            what="the demo to reload",
            detail=text,
        )
        assert "demo: reloaded: 1 path changed" in text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0
    assert "got SIGTERM; bye" in log.read_text()
