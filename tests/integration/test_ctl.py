"""reloadctl: its human output (pinned as text), its socket lookup, its exit codes, and every
command against a fixture daemon and against the real one."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import timezone
from pathlib import Path
from typing import Any

import pytest
from reloadd_testing import (
    DEADLINE,
    Recording,
    Reloadd,
    StubDaemon,
    recorded_service,
    recorder_command,
    served,
    start_recorded,
    toml_value,
    wait_for,
)

from reloadd import cli, ctl
from reloadd.ctl import Style, find_socket, format_ago, render_event, render_status, render_why

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "docs" / "status.schema.json"

# --------------------------------------------------------------------------- the fixture

NOW = 1_715_083_321.0  # Tue 2024-05-07 12:02:01 UTC


def record(**keys: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "when": NOW - 3,
        "trigger": "change",
        "paths": [],
        "count": 0,
        "action": "",
        "result": "ok",
        "latency_ms": None,
        "duration_ms": 2.1,
        "error": "",
        "output": "",
    }
    return {**base, **keys}


API_LAST = record(
    paths=[
        "/srv/api/app/views.py",
        "/srv/api/app/models.py",
        "/srv/api/app/urls.py",
        "/srv/api/config.yaml",
    ],
    count=5,
    action="SIGHUP -> pid 1234",
    latency_ms=21.44,
)
WEB_LAST = record(
    when=NOW - 125,
    trigger="manual",
    result="check-failed",
    error="check failed: nginx exited with status 1",
    duration_ms=84.0,
    output='nginx: [emerg] unknown directive "servr" in /etc/nginx/sites/web.conf:3\n'
    "nginx: configuration file /etc/nginx/nginx.conf test failed\n",
)
STATUS: dict[str, Any] = {
    "version": "0.1.0",
    "pid": 4242,
    "uptime": 3 * 3600 + 125.5,
    "started": NOW - (3 * 3600 + 125.5),
    "config": "/etc/reloadd.toml",
    "config_error": '/etc/reloadd.toml:12: [services.web] signal = "SIGHUPP": unknown signal '
    "(did you mean SIGHUP?)",
    "watches": 14,
    "overflows": 1,
    "reloads": 7,
    "services": [
        {
            "name": "api",
            "state": "watching",
            "paused": False,
            "target": {
                "kind": "command",
                "command": ["gunicorn", "app:wsgi", "--bind", "unix:/run/api.sock"],
                "pid": 1234,
                "pgid": 1234,
                "starts": 1,
                "last_exit": None,
                "failed": None,
            },
            "action": "signal",
            "signal": "SIGHUP",
            "scope": "main",
            "backend": "inotify",
            "backend_reason": "auto: local (ext4)",
            "watch": [
                {
                    "path": "/srv/api/app",
                    "state": "watching",
                    "kind": "dir",
                    "watches": 12,
                    "unwatched": {},
                },
                {
                    "path": "/srv/api/config.yaml",
                    "state": "watching",
                    "kind": "file",
                    "watches": 1,
                    "unwatched": {},
                },
            ],
            "watches": 13,
            "reloads": 7,
            "pending": False,
            "last_reload": API_LAST,
            "last_error": None,
            "history": [API_LAST],
        },
        {
            "name": "web",
            "state": "watching",
            "paused": False,
            "target": {
                "kind": "unit",
                "unit": "nginx.service",
                "pid": 880,
                "pgid": None,
                "active_state": "active",
            },
            "action": "signal",
            "signal": "SIGHUP",
            "scope": "main",
            "backend": "inotify",
            "backend_reason": "auto: local (ext4)",
            "watch": [
                {
                    "path": "/etc/nginx/sites",
                    "state": "watching",
                    "kind": "dir",
                    "watches": 1,
                    "unwatched": {},
                }
            ],
            "watches": 1,
            "reloads": 0,
            "pending": False,
            "last_reload": WEB_LAST,
            "last_error": "check failed: nginx exited with status 1: nginx: configuration file "
            "/etc/nginx/nginx.conf test failed",
            "history": [WEB_LAST],
        },
        {
            "name": "worker",
            "state": "paused",
            "paused": True,
            "target": {"kind": "pidfile", "pidfile": "/run/worker.pid", "pid": None, "pgid": None},
            "action": "signal",
            "signal": "SIGUSR2",
            "scope": "group",
            "backend": "poll",
            "backend_reason": "auto: nfs4 (inotify cannot see remote writes)",
            "watch": [
                {
                    "path": "/mnt/shared/worker",
                    "state": "watching",
                    "kind": "dir",
                    "watches": 0,
                    "unwatched": {},
                    "poll": {"interval": 1.0, "subtrees": 0, "dirs": 3, "files": 41},
                },
                {
                    "path": "/srv/worker/extra",
                    "state": "waiting",
                    "kind": None,
                    "watches": 1,
                    "unwatched": {},
                },
            ],
            "watches": 1,
            "reloads": 0,
            "pending": True,
            "last_reload": None,
            "last_error": None,
            "history": [],
        },
    ],
}

GOLDEN = "\n".join(
    [
        "reloadd 0.1.0 (pid 4242)",
        "      Active: running since Tue 2024-05-07 08:59:55 UTC; 3h 2min ago",
        "      Config: /etc/reloadd.toml",
        "Config error: not applied; the previous config keeps running:",
        '              /etc/reloadd.toml:12: [services.web] signal = "SIGHUPP": unknown '
        "signal (did you mean SIGHUP?)",
        "    Services: 3 (2 watching, 1 paused)",
        "     Watches: 14 (1 event queue overflow, rescanned)",
        "     Reloads: 7",
        "",
        "api",
        "       State: watching",
        "      Target: command gunicorn app:wsgi --bind unix:/run/api.sock (pid 1234, pgid 1234)",
        "      Action: signal SIGHUP -> main pid",
        "     Backend: inotify (auto: local (ext4))",
        "     Watches: /srv/api/app (12 watches)",
        "              /srv/api/config.yaml (file)",
        "     Reloads: 7",
        " Last reload: 3s ago (Tue 2024-05-07 12:01:58 UTC): ok",
        "              trigger: 5 paths changed: /srv/api/app/views.py, "
        "/srv/api/app/models.py, /srv/api/app/urls.py (+2 more)",
        "              action:  SIGHUP -> pid 1234",
        "              latency: 21.4 ms after the last change (took 2.1 ms)",
        "",
        "web",
        "       State: watching",
        "      Target: unit nginx.service (MainPID 880, ActiveState active)",
        "      Action: signal SIGHUP -> main pid",
        "     Backend: inotify (auto: local (ext4))",
        "     Watches: /etc/nginx/sites (1 watch)",
        "     Reloads: 0",
        " Last reload: 2min 5s ago (Tue 2024-05-07 11:59:56 UTC): check-failed",
        "              trigger: manual reload",
        "              error:   check failed: nginx exited with status 1",
        "              took:    84.0 ms",
        "  Last error: check failed: nginx exited with status 1: nginx: configuration "
        "file /etc/nginx/nginx.conf test failed",
        "",
        "worker",
        "       State: paused (changes arrived; they are reloaded once on resume)",
        "      Target: pidfile /run/worker.pid (no live process in it)",
        "      Action: signal SIGUSR2 -> process group",
        "     Backend: poll (auto: nfs4 (inotify cannot see remote writes))",
        "     Watches: /mnt/shared/worker (polled every 1s: 3 directories, 41 files)",
        "              /srv/worker/extra (missing; waiting for it)",
        "     Reloads: 0",
        "",
    ]
)


def test_status_layout_is_pinned() -> None:
    """The human status of the fixture, as text: aligned labels, one block per service."""
    assert render_status(STATUS, now=NOW, tz=timezone.utc) == GOLDEN


def test_on_a_terminal_each_block_gets_a_coloured_state_dot() -> None:
    """Red for a config error or a failed reload, green when fine, yellow when paused;
    without the dots the text is the same."""
    text = render_status(STATUS, now=NOW, style=Style(dot=True, colour=True), tz=timezone.utc)
    heads = [line for line in text.splitlines() if "●" in line]
    assert heads == [
        "\x1b[31m●\x1b[0m reloadd 0.1.0 (pid 4242)",
        "\x1b[32m●\x1b[0m api",
        "\x1b[31m●\x1b[0m web",
        "\x1b[33m●\x1b[0m worker",
    ]
    assert re.sub(r"\x1b\[\d+m●\x1b\[0m ", "", text) == GOLDEN


class FakeStream:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(
    ("tty", "env", "style"),
    [
        (False, {}, Style(dot=False, colour=False)),
        (False, {"TERM": "xterm"}, Style(dot=False, colour=False)),
        (True, {"TERM": "xterm"}, Style(dot=True, colour=True)),
        (True, {"TERM": "xterm", "NO_COLOR": "1"}, Style(dot=True, colour=False)),
        (True, {"TERM": "xterm", "NO_COLOR": ""}, Style(dot=True, colour=True)),
        (True, {"TERM": "dumb"}, Style(dot=True, colour=False)),
    ],
)
def test_dot_only_on_a_terminal_colour_unless_no_color(
    tty: bool, env: dict[str, str], style: Style
) -> None:
    assert Style.for_stream(FakeStream(tty), env) == style  # type: ignore[arg-type]


def test_no_color_keeps_a_plain_dot() -> None:
    text = render_status(STATUS, now=NOW, style=Style(dot=True), tz=timezone.utc)
    assert "\x1b" not in text
    assert text.splitlines()[0] == "● reloadd 0.1.0 (pid 4242)"


def test_why_tells_the_whole_last_reload() -> None:
    api, web, worker = STATUS["services"]
    assert render_why(api, now=NOW, tz=timezone.utc) == (
        "api: reloaded 3s ago (Tue 2024-05-07 12:01:58 UTC): ok\n"
        "  Trigger: 5 paths changed\n"
        "           /srv/api/app/views.py\n"
        "           /srv/api/app/models.py\n"
        "           /srv/api/app/urls.py\n"
        "           /srv/api/config.yaml\n"
        "           (+1 more, not kept)\n"
        "   Action: SIGHUP -> pid 1234\n"
        "  Latency: 21.4 ms from the last change to delivery; the reload took 2.1 ms\n"
    )
    assert render_why(web, now=NOW, tz=timezone.utc) == (
        "web: reload attempted 2min 5s ago (Tue 2024-05-07 11:59:56 UTC): check-failed\n"
        "  Trigger: manual reload\n"
        "    Error: check failed: nginx exited with status 1\n"
        "     Took: 84.0 ms\n"
        '   Output: | nginx: [emerg] unknown directive "servr" in /etc/nginx/sites/web.conf:3\n'
        "           | nginx: configuration file /etc/nginx/nginx.conf test failed\n"
    )
    assert (
        render_why(worker, now=NOW) == "worker: no reload since reloadd started (state: paused)\n"
    )


def test_events_are_one_line_each() -> None:
    assert render_event({"service": "api", **API_LAST}, timezone.utc) == (
        "2024-05-07 12:01:58 api: ok: SIGHUP -> pid 1234 (5 paths changed: "
        "/srv/api/app/views.py, /srv/api/app/models.py, /srv/api/app/urls.py (+2 more); 21.4 ms)"
    )
    assert render_event({"service": "web", **WEB_LAST}, timezone.utc) == (
        "2024-05-07 11:59:56 web: check-failed: check failed: nginx exited with status 1 "
        "(manual reload)"
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-5, "0s ago"),
        (0.4, "0s ago"),
        (59, "59s ago"),
        (60, "1min ago"),
        (125, "2min 5s ago"),
        (3600 + 5, "1h ago"),
        (3 * 3600 + 125, "3h 2min ago"),
        (86400, "1 day ago"),
        (2 * 86400 + 5 * 3600, "2 days 5h ago"),
    ],
)
def test_relative_times(seconds: float, text: str) -> None:
    assert format_ago(seconds) == text


# --------------------------------------------------------------------------- the socket lookup


def test_socket_lookup_order(tmp_path: Path) -> None:
    """--socket, then $RELOADD_SOCKET, then the config's [daemon] socket, then the default."""
    config = tmp_path / "etc" / "reloadd.toml"
    config.parent.mkdir()
    config.write_text('[daemon]\nsocket = "run/c.sock"\n[services.x]\nbroken = [\n')
    env = {"RELOADD_SOCKET": "/env.sock"}
    assert find_socket("/opt.sock", str(config), env) == "/opt.sock"
    assert find_socket(None, str(config), env) == "/env.sock"
    config.write_text('[daemon]\nsocket = "run/c.sock"\n')
    assert find_socket(None, str(config), {}) == str(tmp_path / "etc" / "run" / "c.sock")
    config.write_text('[services.api]\nwatch = ["/x"]\n')
    assert find_socket(None, str(config), {}) == "/run/reloadd/control.sock"
    assert (
        find_socket(None, str(config), {"RUNTIME_DIRECTORY": "/run/rd"}) == "/run/rd/control.sock"
    )


def test_an_unreadable_config_means_the_default_socket(tmp_path: Path) -> None:
    """The default config may not exist: silently the default; a named one: with a warning."""
    warnings: list[str] = []
    missing = str(tmp_path / "missing.toml")
    assert find_socket(None, missing, {}, warnings.append) == "/run/reloadd/control.sock"
    assert warnings == [
        f"cannot read {missing}: No such file or directory; using the default socket"
    ]
    broken = tmp_path / "broken.toml"
    broken.write_text("[daemon\n")
    assert find_socket(None, str(broken), {}, warnings.append) == "/run/reloadd/control.sock"
    assert "not valid TOML" in warnings[-1]
    warnings.clear()
    if not os.path.exists(ctl.DEFAULT_CONFIG):
        assert find_socket(None, None, {}, warnings.append) == "/run/reloadd/control.sock"
        assert warnings == []


# --------------------------------------------------------------------------- a fixture daemon


class FixtureDaemon(StubDaemon):
    """Serves the fixture status; records commands; refuses reload-config."""

    def __init__(self, sock: Path, status: dict[str, Any]) -> None:
        super().__init__(sock, {svc["name"]: svc for svc in status["services"]})
        self._status = status

    def status(self) -> dict[str, Any]:
        return self._status

    async def reload_config(self) -> tuple[bool, str]:
        return False, "/etc/reloadd.toml:3: [services.x] watch: expected a list\nsecond problem"


@contextlib.contextmanager
def fixture_daemon(sock: Path, status: dict[str, Any] = STATUS) -> Iterator[FixtureDaemon]:
    """The real ControlServer over the fixture, on a loop in a thread (reloadctl blocks)."""
    daemon = FixtureDaemon(sock, status)
    with served(daemon):
        yield daemon


def reloadctl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = ctl.main(["--timeout", str(DEADLINE), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_status_through_the_socket_prints_the_pinned_layout(
    sockdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`reloadctl status` against a fixture daemon prints exactly the golden text (no dot,
    no colour: stdout is not a terminal)."""
    monkeypatch.setattr(ctl, "clock", lambda: NOW)
    monkeypatch.setattr(ctl, "TZ", timezone.utc)
    sock = sockdir / "c.sock"
    with fixture_daemon(sock):
        assert reloadctl(capsys, "--socket", str(sock), "status") == (0, GOLDEN, "")
        code, out, _ = reloadctl(capsys, "--socket", str(sock), "status", "--json")
        assert code == 0
        assert json.loads(out) == STATUS
        code, out, _ = reloadctl(capsys, "status", "web", "--socket", str(sock))
        assert code == 0
        assert "\nweb\n" in out
        assert "\napi\n" not in out


def test_unknown_service_exits_4(sockdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sock = sockdir / "c.sock"
    with fixture_daemon(sock) as daemon:
        for argv in (["status", "api", "wbe"], ["reload", "wbe"], ["pause", "nope"], ["why", "x"]):
            code, out, err = reloadctl(capsys, "--socket", str(sock), *argv)
            assert code == 4, (argv, err)
            assert out == ""
            assert err.startswith(f"reloadctl: no such service '{argv[-1]}'")
        assert (
            "(did you mean 'web'?)" in reloadctl(capsys, "--socket", str(sock), "reload", "wbe")[2]
        )
        assert daemon.calls == []


def test_rejected_reload_config_exits_1_with_every_problem(
    sockdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = sockdir / "c.sock"
    with fixture_daemon(sock):
        code, out, err = reloadctl(capsys, "--socket", str(sock), "reload-config")
    assert code == 1
    assert out == ""
    assert err == (
        "reloadctl: config not applied; reloadd keeps running the previous one:\n"
        "reloadctl: /etc/reloadd.toml:3: [services.x] watch: expected a list\n"
        "reloadctl: second problem\n"
    )


def test_no_daemon_exits_3_with_a_one_line_hint(
    sockdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = sockdir / "c.sock"
    code, out, err = reloadctl(capsys, "--socket", str(sock), "status")
    assert code == 3
    assert out == ""
    assert err == (
        f"reloadctl: reloadd is not running (no socket at {sock}); "
        "start it with `systemctl start reloadd`\n"
    )
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # bound, nobody listening
    stale.bind(str(sock))
    try:
        code, _, err = reloadctl(capsys, "--socket", str(sock), "reload", "api")
    finally:
        stale.close()
    assert code == 3
    assert err == (
        f"reloadctl: reloadd is not running (nothing listens on {sock}); "
        "start it with `systemctl start reloadd`\n"
    )


def test_the_socket_comes_from_the_environment_and_the_config(
    sockdir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sock = sockdir / "c.sock"
    config = tmp_path / "reloadd.toml"
    config.write_text(f"[daemon]\nsocket = {toml_value(sock)}\n")
    with fixture_daemon(sock):
        assert reloadctl(capsys, "-c", str(config), "status", "--json")[0] == 0
        monkeypatch.setenv("RELOADD_SOCKET", str(sock))
        assert reloadctl(capsys, "status", "--json")[0] == 0


def test_a_newer_daemon_fails_clearly(sockdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A reply in another protocol version is not guessed at."""
    sock = sockdir / "c.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock))
    listener.listen()

    def answer() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.makefile("rb").readline()
            conn.sendall(b'{"v":2,"id":1,"ok":true,"result":{}}\n')

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        code, out, err = reloadctl(capsys, "--socket", str(sock), "status")
    finally:
        thread.join(DEADLINE)
        listener.close()
    assert (code, out) == (1, "")
    assert err == (
        "reloadctl: reloadd answered in control protocol version 2; this reloadctl speaks "
        "version 1 (use the reloadctl that came with the running reloadd)\n"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["frobnicate"],
        ["reload"],
        ["status", "--jsn"],
        ["events", "-n", "x"],
        ["events", "-n", "5000"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl.main(argv) == 2
    assert capsys.readouterr().err


def test_check_says_what_reloadd_check_says(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Offline: no daemon, the same messages and exit codes as `reloadd --check`."""
    good = tmp_path / "good.toml"
    good.write_text('[services.api]\nwatch = ["/srv/api"]\ncommand = ["gunicorn", "app:wsgi"]\n')
    bad = tmp_path / "bad.toml"
    bad.write_text('[services.api]\nwatch = ["/srv/api"]\ncommand = ["app"]\nsignal = "SIGHUPP"\n')
    for path, code in ((good, 0), (bad, 1)):
        expected = (cli.main(["-c", str(path), "--check"]), *capsys.readouterr())
        assert expected[0] == code
        assert reloadctl(capsys, "check", str(path)) == expected
        assert reloadctl(capsys, "-c", str(path), "check") == expected
    assert "did you mean SIGHUP?" in expected[2]


# --------------------------------------------------------------------------- the real daemon


def reloadctl_argv() -> list[str]:
    script = Path(sys.executable).with_name("reloadctl")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from reloadd.ctl import main; sys.exit(main())"]


def start_with_app(
    start_reloadd: Callable[..., Reloadd], tmp_path: Path, sock: Path, **more: dict[str, object]
) -> tuple[Reloadd, Recording]:
    """reloadd (not watching its config) with a recorded service ``app`` and ``more``
    services; returns it and app's recording."""
    services = {"app": recorded_service(tmp_path, "app"), **more}
    r, recs = start_recorded(start_reloadd, tmp_path, sock, services, "watch_config = false")
    return r, recs["app"]


@pytest.mark.slow
def test_every_command_against_the_real_daemon(
    start_reloadd: Callable[..., Reloadd],
    tmp_path: Path,
    sockdir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """status, reload, why, events, pause/resume, restart, reload-config on a real reloadd;
    `status --json` validates against docs/status.schema.json."""
    jsonschema = pytest.importorskip("jsonschema")
    sock = sockdir / "control.sock"
    fail = ["sh", "-c", "echo checking; echo 'syntax error' >&2; exit 3"]
    checked = recorded_service(tmp_path, "checked", check=fail)
    r, rec = start_with_app(start_reloadd, tmp_path, sock, checked=checked)
    pid = rec.ready_pids()[-1]
    run = lambda *argv: reloadctl(capsys, "--socket", str(sock), *argv)  # noqa: E731

    code, out, err = run("reload", "app")
    assert code == 0, err
    assert re.fullmatch(rf"app: reloaded: SIGHUP -> pid {pid} \(took [\d.]+ ms\)\n", out)
    rec.wait_count(1)
    code, out, err = run("reload", "checked")
    assert code == 1
    assert out == ""
    assert err.splitlines() == [
        "reloadctl: checked: not reloaded: check failed: sh exited with status 3",
        "  | checking",
        "  | syntax error",
    ]

    code, out, _ = run("status", "--json")
    assert code == 0
    status = json.loads(out)
    jsonschema.validate(status, json.loads(SCHEMA.read_text()))
    assert [s["name"] for s in status["services"]] == ["app", "checked"]

    code, out, _ = run("status")
    assert code == 0
    assert out.startswith(f"reloadd {status['version']} (pid {r.proc.pid})\n")
    assert f"      Target: command {recorder_command(tmp_path / 'app.log')[0]}" in out
    assert f"              action:  SIGHUP -> pid {pid}\n" in out
    assert "\x1b" not in out

    code, out, _ = run("why", "app")
    assert code == 0
    assert out.startswith("app: reloaded ")
    assert "  Trigger: manual reload\n" in out

    code, out, _ = run("events", "--json")
    assert code == 0
    events = [json.loads(line) for line in out.splitlines()]
    assert [(e["service"], e["result"]) for e in events] == [
        ("app", "ok"),
        ("checked", "check-failed"),
    ]

    assert run("pause", "app")[0] == 0
    code, out, err = run("reload", "app")
    assert (code, out) == (1, "")
    assert err == "reloadctl: app is paused; `reloadctl resume app` first\n"
    (tmp_path / "app" / "changed.py").write_text("x\n")
    wait_for(lambda: json.loads(run("status", "app", "--json")[1])["services"][0]["pending"])
    code, out, _ = run("resume", "app")
    assert (code, out) == (0, "app: resumed; the changes made while paused are reloaded now\n")
    rec.wait_count(2)

    code, out, err = run("restart", "app")
    assert code == 0, err
    assert re.fullmatch(rf"app: restarted: pid {pid} -> (\d+)\n", out)
    wait_for(lambda: len(rec.ready_pids()) == 2, what="the restarted recorder")

    assert run("reload-config") == (
        0,
        "reloadd: config applied (0 added, 0 changed, 0 removed)\n",
        "",
    )
    r.config.write_text(r.config.read_text() + "[services.bad]\nwatch = 3\n")
    code, out, err = run("reload-config")
    assert (code, out) == (1, "")
    assert err.startswith(
        "reloadctl: config not applied; reloadd keeps running the previous one:\n"
    )
    assert "services.bad.watch" in err
    code, out, _ = run("status", "--json")
    assert "services.bad.watch" in json.loads(out)["config_error"]
    assert "Config error: not applied; the previous config keeps running:" in run("status")[1]
    r.wait_log(f"control: reload-config (uid 0, pid {os.getpid()})")


@pytest.mark.slow
def test_events_follow_prints_reloads_as_they_happen_until_ctrl_c(
    start_reloadd: Callable[..., Reloadd], tmp_path: Path, sockdir: Path
) -> None:
    """`reloadctl events -f --json` (the installed script) prints each reload as it happens
    and exits 130 on Ctrl-C."""
    sock = sockdir / "control.sock"
    _, rec = start_with_app(start_reloadd, tmp_path, sock)
    out = tmp_path / "events.out"
    with open(out, "wb") as f:
        follower = subprocess.Popen(
            [*reloadctl_argv(), "--socket", str(sock), "events", "-f", "--json"],
            stdout=f,
            stderr=subprocess.PIPE,
        )
    try:
        (tmp_path / "app" / "a.py").write_text("x\n")
        rec.wait_count(1)
        lines = wait_for(lambda: out.read_text().splitlines(), what="an event line")
        assert isinstance(lines, list)
        event = json.loads(lines[0])
        assert event["service"] == "app"
        assert event["paths"] == [str(tmp_path / "app" / "a.py")]
        follower.send_signal(signal.SIGINT)
        assert follower.wait(DEADLINE) == 130
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
        assert follower.stderr is not None
        follower.stderr.close()
