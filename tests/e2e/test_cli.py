"""``reloadd`` on broken configs and ``reloadd --check``: the operator's first contact.

A broken config gives one clear line on stderr that names the file, the line and the key,
exit code 1, and starts nothing (the would-be target is a recorder, which writes a
``READY`` line as soon as it runs). The fast tests call ``cli.main`` in-process; the slow
ones run the real ``python -m reloadd``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from reloadd_testing import Recording, recorder_command, toml_value

from reloadd import cli

# (id, the service's lines after watch/command, what the message must name, its line)
BROKEN = [
    ("toml-syntax", "signal = HUP", "services.api.signal", 5),
    ("unknown-key", 'debounse = "1s"', "services.api.debounse", 5),
    ("two-targets", 'pidfile = "/run/api.pid"', "services.api", 3),
    ("bad-duration", 'debounce = "fast"', "services.api.debounce", 5),
    ("unknown-signal", 'signal = "SIGHUPP"', "services.api.signal", 5),
]
HINTS = {
    "toml-syntax": "invalid TOML",
    "unknown-key": "did you mean debounce?",
    "two-targets": "exactly one target",
    "bad-duration": 'expected a duration such as "200ms"',
    "unknown-signal": "did you mean SIGHUP?",
}


def write_config(tmp_path: Path, extra: str) -> tuple[Path, Recording]:
    """A one-service config whose target would be a recorder, plus ``extra`` lines."""
    (tmp_path / "app").mkdir(exist_ok=True)
    log = tmp_path / "signals.log"
    text = textwrap.dedent(
        f"""\
        [daemon]
        socket = {toml_value(tmp_path / "control.sock")}
        [services.api]
        watch = [{toml_value(tmp_path / "app")}]
        command = {toml_value(recorder_command(log))}
        """
    )
    path = tmp_path / "reloadd.toml"
    path.write_text(text.replace("command =", f"{extra}\ncommand =") if extra else text)
    return path, Recording(log)


def check_message(err: str, path: Path, key: str, line: int, hint: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    [message] = lines
    assert message.startswith(f"reloadd: {path}:{line}"), message
    assert key in message, message
    assert hint in message, message


@pytest.mark.parametrize(("case", "extra", "key", "line"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_config_in_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, extra: str, key: str, line: int
) -> None:
    """``main`` on a broken config: exit 1, one line naming file:line and key, no target."""
    path, rec = write_config(tmp_path, extra)
    assert cli.main(["-c", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    check_message(err, path, key, line, HINTS[case])
    assert not rec.path.exists()


@pytest.mark.parametrize(("case", "extra", "key", "line"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_config_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, extra: str, key: str, line: int
) -> None:
    """``--check`` on a broken config: the same one line, exit 1."""
    path, _ = write_config(tmp_path, extra)
    assert cli.main(["--check", "-c", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    check_message(err, path, key, line, HINTS[case])


def test_check_valid_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--check`` on a good config: a line per service, ``OK``, exit 0, nothing started."""
    path, rec = write_config(tmp_path, 'debounce = "250ms"')
    assert cli.main(["--check", "-c", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "api" in out
    assert out.strip().splitlines()[-1] == f"{path}: OK, 1 service"
    assert not rec.path.exists()


def test_check_warns_about_a_missing_watch_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A watch path that does not exist yet is a warning, not an error: exit 0."""
    path, _ = write_config(tmp_path, "")
    (tmp_path / "app").rmdir()
    assert cli.main(["--check", "-c", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "warning" in err
    assert "services.api.watch" in err
    assert "does not exist yet" in err
    assert out.strip().endswith("OK, 1 service")


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A config file that is not there: exit 1, one line naming it."""
    missing = tmp_path / "nope.toml"
    assert cli.main(["-c", str(missing)]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"reloadd: {missing}: cannot read the config file: No such file or directory "
        "(reloadd -c FILE names another file)"
    ]


@pytest.mark.slow
@pytest.mark.parametrize(("case", "extra", "key", "line"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_config_real_process(
    tmp_path: Path, case: str, extra: str, key: str, line: int
) -> None:
    """The real ``python -m reloadd``: exit 1, one stderr line, nothing on stdout, and no
    target process ever ran."""
    path, rec = write_config(tmp_path, extra)
    res = subprocess.run(
        [sys.executable, "-m", "reloadd", "-c", str(path)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert res.returncode == 1, res.stderr
    assert res.stdout == ""
    check_message(res.stderr, path, key, line, HINTS[case])
    assert "Traceback" not in res.stderr
    assert not rec.path.exists()
