"""The ``systemd`` fixture: a real systemd booted in private namespaces (systemd_harness.py)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from systemd_harness import (
    STUB_UNITS,
    Systemd,
    boot_lock,
    boot_systemd,
    check_prerequisites,
    entry_points_dir,
)

_BOOTED = pytest.StashKey[Systemd]()


@pytest.fixture
def systemd(
    request: pytest.FixtureRequest, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Systemd]:
    """A freshly booted systemd; its unit directory is a copy of ``units/`` in tmp_path."""
    check_prerequisites()
    unit_dir = tmp_path / "units"
    shutil.copytree(STUB_UNITS, unit_dir)
    canary = Path(tempfile.gettempdir()) / f"reloadd-canary-{uuid.uuid4().hex}"
    canary.write_text("if this file is gone, a test systemd emptied /tmp\n")
    try:
        with (
            boot_lock(),
            boot_systemd(
                unit_dir,
                tmp_path_factory.getbasetemp(),
                entry_points_dir(tmp_path / "bin"),
                tmp_path / "boot.log",
            ) as booted,
        ):
            request.node.stash[_BOOTED] = booted
            yield booted
    finally:
        survived = canary.exists()
        canary.unlink(missing_ok=True)
        with contextlib.suppress(KeyError):
            del request.node.stash[_BOOTED]
        if not survived:
            pytest.fail("DANGER: the canary in the host's /tmp is gone: a test systemd emptied it")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the test systemd's journal to the report of a failed test."""
    report = yield
    booted = item.stash.get(_BOOTED, None)
    if booted is not None and report.failed and call.when == "call":
        with contextlib.suppress(Exception):
            report.sections.append(
                ("test systemd journal", booted.journal(output="short-monotonic"))
            )
    return report
