"""Missing prerequisites skip the systemd tests on a developer machine, but fail in CI."""

from __future__ import annotations

import pytest
from systemd_harness import require


def test_missing_dependency_skips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RELOADD_REQUIRE_ALL", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no frobnicator"):
        require(False, "no frobnicator")


def test_missing_dependency_fails_when_everything_is_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RELOADD_REQUIRE_ALL", "1")
    with pytest.raises(pytest.fail.Exception, match="RELOADD_REQUIRE_ALL=1 but no frobnicator"):
        require(False, "no frobnicator")


def test_present_dependency_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELOADD_REQUIRE_ALL", "1")
    require(True, "never shown")
