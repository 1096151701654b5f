"""Tests for reloadd.config: TOML -> Config, and every way a config can be wrong."""

from __future__ import annotations

import dataclasses
import grp
import os
import pwd
import signal
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reloadd import config
from reloadd.config import ConfigError, Problem, ServiceSpec, load, parse_duration

REPO = Path(__file__).resolve().parents[2]

MINIMAL = """
[services.api]
watch = ["/srv/api"]
command = ["gunicorn", "app:wsgi"]
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str) -> config.Config:
    return load(write(tmp_path / "reloadd.toml", text))


def errors(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    return info.value


def only_problem(tmp_path: Path, text: str) -> Problem:
    err = errors(tmp_path, text)
    assert len(err.problems) == 1, str(err)
    return err.problems[0]


def service(key_lines: str, target: str = 'command = ["app"]') -> str:
    return f'[services.api]\nwatch = ["/srv/api"]\n{target}\n{key_lines}\n'


def a_user_other_than_root() -> str:
    return next(p.pw_name for p in pwd.getpwall() if p.pw_uid != 0)


# --------------------------------------------------------------------------- happy path


def test_minimal_service_gets_builtin_defaults(tmp_path):
    """A service with just watch and a target gets every documented default."""
    cfg = load_text(tmp_path, MINIMAL)
    (api,) = cfg.services
    assert api == ServiceSpec(
        name="api",
        source=str(tmp_path / "reloadd.toml"),
        watch=("/srv/api",),
        command=("gunicorn", "app:wsgi"),
    )
    assert api.debounce == 0.02
    assert api.max_delay == 2.0
    assert api.signal is signal.SIGHUP
    assert api.stop_signal is signal.SIGTERM
    assert api.working_directory == "/"
    assert api.target_kind == "command"
    assert cfg.service("api") is api
    assert cfg.service("nope") is None
    assert cfg.path == str(tmp_path / "reloadd.toml")
    assert cfg.files == (cfg.path,)


def test_daemon_defaults(tmp_path):
    cfg = load_text(tmp_path, MINIMAL)
    assert cfg.daemon == config.DaemonConfig(
        socket=None,
        socket_group=None,
        socket_mode=0o666,
        log_level="info",
        watch_config=True,
        include=str(tmp_path / "reloadd.d"),
    )


def test_daemon_section(tmp_path):
    gid = os.getgid()
    group_name = grp.getgrgid(gid).gr_name
    cfg = load_text(
        tmp_path,
        f"""
        [daemon]
        socket = "run/control.sock"
        socket_group = "{group_name}"
        socket_mode = "0660"
        log_level = "DEBUG"
        watch_config = false
        include = "conf.d"
        """,
    )
    assert cfg.daemon.socket == str(tmp_path / "run" / "control.sock")
    assert cfg.daemon.socket_group == group_name
    assert cfg.daemon.socket_mode == 0o660
    assert cfg.daemon.log_level == "debug"
    assert cfg.daemon.watch_config is False
    assert cfg.daemon.include == str(tmp_path / "conf.d")


def test_socket_group_numeric_stays_int(tmp_path):
    cfg = load_text(tmp_path, "[daemon]\nsocket_group = 4242\n")
    assert cfg.daemon.socket_group == 4242


def test_include_dir_follows_the_main_file_stem(tmp_path):
    cfg = load(write(tmp_path / "other.toml", MINIMAL))
    assert cfg.daemon.include == str(tmp_path / "other.d")


def test_full_service(tmp_path):
    user = a_user_other_than_root()
    cfg = load_text(
        tmp_path,
        f"""
        [services."web@1"]
        watch = "app"
        include = "*.py"
        exclude = ["**/__pycache__/**"]
        unit = "web@1"
        action = "exec"
        exec = ["systemctl", "reload", "web@1"]
        exec_timeout = 5
        signal = "usr2"
        scope = "GROUP"
        check = ["python3", "-m", "compileall", "-q", "app"]
        check_timeout = "1min 30s"
        debounce = "250ms"
        max_delay = 3.5
        min_interval = "1s"
        backend = "poll"
        poll_interval = "500ms"
        user = "{user}"
        group = 0
        working_directory = "srv"
        environment = {{ B = "2", A = "1" }}
        expect_user = "root"
        """,
    )
    (web,) = cfg.services
    assert web.name == "web@1"
    assert web.watch == (str(tmp_path / "app"),)
    assert web.include == ("*.py",)
    assert web.exclude == ("**/__pycache__/**",)
    assert web.unit == "web@1.service"
    assert web.target_kind == "unit"
    assert web.action == "exec"
    assert web.exec == ("systemctl", "reload", "web@1")
    assert web.exec_timeout == 5.0
    assert web.signal is signal.SIGUSR2
    assert web.scope == "group"
    assert web.check == ("python3", "-m", "compileall", "-q", "app")  # not resolved
    assert web.check_timeout == 90.0
    assert (web.debounce, web.max_delay, web.min_interval) == (0.25, 3.5, 1.0)
    assert (web.backend, web.poll_interval) == ("poll", 0.5)
    assert (web.user, web.group, web.expect_user) == (user, "0", "root")
    assert web.working_directory == str(tmp_path / "srv")
    assert web.environment == (("A", "1"), ("B", "2"))


def test_pidfile_target(tmp_path):
    cfg = load_text(tmp_path, service("", 'pidfile = "run/nginx.pid"'))
    assert cfg.services[0].pidfile == str(tmp_path / "run" / "nginx.pid")
    assert cfg.services[0].target_kind == "pidfile"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("api", "api.service"),
        ("api.service", "api.service"),
        ("php8.2-fpm", "php8.2-fpm.service"),
        ("user.slice", "user.slice"),
        ("session-1.scope", "session-1.scope"),
    ],
)
def test_unit_gets_service_suffix_like_systemctl(tmp_path, given, expected):
    cfg = load_text(tmp_path, service("", f'unit = "{given}"'))
    assert cfg.services[0].unit == expected


def test_unit_template_without_instance(tmp_path):
    problem = only_problem(tmp_path, service("", 'unit = "web@"'))
    assert problem.key == "services.api.unit"
    assert "template" in problem.message
    assert "web@main.service" in problem.message


@pytest.mark.parametrize("name", ["SIGHUP", "HUP", "hup", "SigHup", " HUP "])
def test_signal_spellings(tmp_path, name):
    cfg = load_text(tmp_path, service(f'signal = "{name}"'))
    assert cfg.services[0].signal is signal.SIGHUP


def test_signal_as_number(tmp_path):
    cfg = load_text(tmp_path, service("signal = 10"))
    assert cfg.services[0].signal is signal.SIGUSR1


def test_services_keep_definition_order(tmp_path):
    text = "".join(
        f'[services.{n}]\nwatch = ["/srv/{n}"]\nunit = "{n}"\n' for n in ["zeta", "alpha", "mid"]
    )
    assert [s.name for s in load_text(tmp_path, text).services] == ["zeta", "alpha", "mid"]


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "reloadd.toml"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert load(path).services[0].name == "api"


def test_pathlike_and_relative_main_path(tmp_path, monkeypatch):
    write(tmp_path / "reloadd.toml", MINIMAL)
    monkeypatch.chdir(tmp_path)
    cfg = load("reloadd.toml")
    assert cfg.path == str(tmp_path / "reloadd.toml")


def test_config_is_frozen(tmp_path):
    cfg = load_text(tmp_path, MINIMAL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.services[0].debounce = 1.0  # type: ignore[misc]


def test_service_keys_match_the_dataclass():
    """Every ServiceSpec field except name/source is a config key, and vice versa."""
    fields = {f.name for f in dataclasses.fields(ServiceSpec)} - {"name", "source"}
    assert fields == set(config._SERVICE_KEYS)


# --------------------------------------------------------------------------- defaults


def test_defaults_apply_and_service_value_replaces(tmp_path):
    cfg = load_text(
        tmp_path,
        """
        [defaults]
        debounce = "100ms"
        exclude = ["*.log"]
        environment = { A = "1" }
        signal = "USR1"

        [services.one]
        watch = ["/srv/one"]
        unit = "one"

        [services.two]
        watch = ["/srv/two"]
        unit = "two"
        debounce = "300ms"
        exclude = ["*.tmp"]
        environment = { B = "2" }
        """,
    )
    one, two = cfg.services
    assert (one.debounce, one.exclude, one.environment) == (0.1, ("*.log",), (("A", "1"),))
    assert (two.debounce, two.exclude, two.environment) == (0.3, ("*.tmp",), (("B", "2"),))
    assert one.signal is two.signal is signal.SIGUSR1


def test_defaults_working_directory_resolves_against_main_file(tmp_path):
    write(tmp_path / "reloadd.d" / "x.toml", '[services.x]\nwatch = ["w"]\nunit = "x"\n')
    cfg = load_text(tmp_path, '[defaults]\nworking_directory = "apps"\n')
    (x,) = cfg.services
    assert x.working_directory == str(tmp_path / "apps")
    assert x.watch == (str(tmp_path / "reloadd.d" / "w"),)


@pytest.mark.parametrize("key", ["watch", "command", "pidfile", "unit"])
def test_per_service_keys_are_not_allowed_in_defaults(tmp_path, key):
    err = errors(tmp_path, f'[defaults]\n{key} = ["x"]\n' + MINIMAL)
    (problem,) = err.problems
    assert problem.key == f"defaults.{key}"
    assert "not allowed in [defaults]" in problem.message
    assert "watch, command, pidfile and unit are set per service" in problem.message


def test_bad_default_is_reported_once_not_per_service(tmp_path):
    text = '[defaults]\ndebounce = "fast"\n' + "".join(
        f'[services.s{i}]\nwatch = ["/w"]\nunit = "s{i}"\n' for i in range(3)
    )
    err = errors(tmp_path, text)
    assert [p.key for p in err.problems] == ["defaults.debounce"]


def test_bad_default_overridden_by_service_still_reported(tmp_path):
    err = errors(tmp_path, '[defaults]\ndebounce = "fast"\n' + service('debounce = "1s"'))
    assert [p.key for p in err.problems] == ["defaults.debounce"]


# --------------------------------------------------------------------------- relative paths


def test_relative_paths_resolve_against_the_naming_file(tmp_path):
    etc = tmp_path / "etc"
    write(
        etc / "reloadd.toml",
        """
        [daemon]
        socket = "../run/ctl.sock"
        include = "more"

        [services.a]
        watch = ["app", "./conf/../conf/x.yaml", "/abs//path/"]
        pidfile = "a.pid"
        working_directory = "."
        check = ["bin/check", "rel/arg"]
        """,
    )
    write(
        etc / "more" / "b.toml",
        """
        [services.b]
        watch = "b-app"
        command = ["./run-b"]
        """,
    )
    cfg = load(etc / "reloadd.toml")
    a, b = cfg.services
    assert cfg.daemon.socket == str(tmp_path / "run" / "ctl.sock")
    assert cfg.daemon.include == str(etc / "more")
    assert a.watch == (str(etc / "app"), str(etc / "conf" / "x.yaml"), "/abs/path")
    assert a.pidfile == str(etc / "a.pid")
    assert a.working_directory == str(etc)
    assert a.check == ("bin/check", "rel/arg")
    assert b.watch == (str(etc / "more" / "b-app"),)
    assert b.command == ("./run-b",), "command[0] is looked up at run time, not resolved"
    assert b.source == str(etc / "more" / "b.toml")


def test_watch_symlink_is_not_resolved(tmp_path):
    (tmp_path / "releases" / "42").mkdir(parents=True)
    (tmp_path / "current").symlink_to(tmp_path / "releases" / "42")
    cfg = load_text(tmp_path, service("", 'unit = "x"').replace('"/srv/api"', '"current"'))
    assert cfg.services[0].watch == (str(tmp_path / "current"),)
    assert cfg.warnings == ()


def test_tilde_is_refused(tmp_path):
    problem = only_problem(tmp_path, service('working_directory = "~/app"'))
    assert problem.key == "services.api.working_directory"
    assert "absolute path" in problem.message


def test_duplicate_watch_paths_are_dropped(tmp_path):
    cfg = load_text(tmp_path, service("", 'unit = "x"').replace('"/srv/api"', '"/a", "/a/"'))
    assert cfg.services[0].watch == ("/a",)


# --------------------------------------------------------------------------- warnings


def test_missing_watch_path_is_a_warning(tmp_path):
    (tmp_path / "there").mkdir()
    cfg = load_text(
        tmp_path,
        '[services.api]\nwatch = ["there", "not-yet"]\nunit = "api"\n',
    )
    assert cfg.warnings == (
        f"services.api.watch: {tmp_path / 'not-yet'} does not exist yet; the service waits for it",
    )
    assert cfg.services[0].watch == (str(tmp_path / "there"), str(tmp_path / "not-yet"))


def test_no_services_is_a_warning(tmp_path):
    cfg = load_text(tmp_path, "[daemon]\n")
    assert cfg.services == ()
    assert any("no services" in w for w in cfg.warnings)


# --------------------------------------------------------------------------- syntax and files


def test_toml_syntax_error_shows_line_and_column(tmp_path):
    problem = only_problem(tmp_path, '[services.api]\nwatch = ["/a"]\ncommand "x"\n')
    assert problem.key is None
    assert problem.line == 3
    assert problem.column is not None
    assert problem.message.startswith("invalid TOML: ")
    assert "(at line" not in problem.message
    assert str(problem).startswith(f"{tmp_path / 'reloadd.toml'}:3:{problem.column}: invalid TOML")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "nope.toml")
    (problem,) = info.value.problems
    assert problem.file == str(tmp_path / "nope.toml")
    assert "No such file or directory" in str(info.value)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ConfigError, match=r"not a regular file \(a directory\)"):
        load(tmp_path)


def test_non_utf8_file(tmp_path):
    path = tmp_path / "reloadd.toml"
    path.write_bytes(b'[daemon]\nlog_level = "caf\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load(path)
    (problem,) = info.value.problems
    assert "not UTF-8" in problem.message
    assert (problem.line, problem.column) == (2, 17)


@pytest.mark.parametrize(
    "garbage",
    [
        bytes(range(256)),
        b"\x00\x00\x00\x00",
        b"\x7fELF\x02\x01\x01\x00" + bytes(64),
        b'a = "\x00"',
        b"\x89PNG\r\n\x1a\n",
    ],
)
def test_binary_garbage_is_a_config_error(tmp_path, garbage):
    path = tmp_path / "reloadd.toml"
    path.write_bytes(garbage)
    with pytest.raises(ConfigError):
        load(path)


def test_huge_file_is_refused(tmp_path):
    path = tmp_path / "reloadd.toml"
    path.write_bytes(b"#" * (config.MAX_FILE_SIZE + 10))
    with pytest.raises(ConfigError, match="larger than"):
        load(path)


# --------------------------------------------------------------------------- unknown names


def test_unknown_service_key_suggests(tmp_path):
    problem = only_problem(tmp_path, service('debounse = "1s"'))
    assert problem.key == "services.api.debounse"
    assert problem.message == "unknown key (did you mean debounce?)"
    assert str(problem) == (
        f"{tmp_path / 'reloadd.toml'}:4: "
        "services.api.debounse: unknown key (did you mean debounce?)"
    )


@pytest.mark.parametrize(
    ("key", "meant"),
    [("cmd", "command"), ("env", "environment"), ("cwd", "working_directory"), ("paths", "watch")],
)
def test_common_aliases_are_suggested(tmp_path, key, meant):
    problem = next(
        p for p in errors(tmp_path, service(f'{key} = "x"')).problems if p.key.endswith(key)
    )
    assert f"did you mean {meant}?" in problem.message


def test_unknown_key_without_close_match_lists_keys(tmp_path):
    problem = only_problem(tmp_path, service("zzzzz = 1"))
    assert "accepts:" in problem.message
    assert "debounce" in problem.message


def test_later_version_keys_say_so(tmp_path):
    problem = only_problem(tmp_path, service('compare = "content"'))
    assert "not supported by this version" in problem.message


def test_unknown_daemon_key(tmp_path):
    problem = only_problem(tmp_path, '[daemon]\nlog_levl = "info"\n')
    assert problem.key == "daemon.log_levl"
    assert "did you mean log_level?" in problem.message


def test_unknown_section_suggests(tmp_path):
    problem = only_problem(tmp_path, '[service.api]\nwatch = ["/a"]\n')
    assert problem.key == "service"
    assert "did you mean services?" in problem.message


def test_service_key_at_top_level(tmp_path):
    problem = only_problem(tmp_path, 'debounce = "1s"\n' + MINIMAL)
    assert problem.key == "debounce"
    assert "[services.NAME] or [defaults]" in problem.message


def test_daemon_key_at_top_level(tmp_path):
    problem = only_problem(tmp_path, 'log_level = "info"\n' + MINIMAL)
    assert "under [daemon]" in problem.message


def test_section_that_is_not_a_table(tmp_path):
    problem = only_problem(tmp_path, 'daemon = "x"\n')
    assert problem.key == "daemon"
    assert "expected a table" in problem.message


def test_service_that_is_not_a_table(tmp_path):
    problem = only_problem(tmp_path, '[services]\napi = "x"\n')
    assert problem.key == "services.api"
    assert "expected a table" in problem.message


@pytest.mark.parametrize("name", ["my api", "api/v2", "-api", "ápi", ""])
def test_bad_service_names(tmp_path, name):
    problem = only_problem(tmp_path, f'[services."{name}"]\nwatch = ["/a"]\nunit = "a"\n')
    assert "invalid service name" in problem.message
    assert problem.key == (f"services.{name}" if name == "-api" else f'services."{name}"')


@pytest.mark.parametrize("name", ["api", "web@1", "api.v2", "a_b-c", "0"])
def test_good_service_names(tmp_path, name):
    cfg = load_text(tmp_path, f'[services."{name}"]\nwatch = ["/a"]\nunit = "a"\n')
    assert cfg.services[0].name == name


# --------------------------------------------------------------------------- targets and actions


def test_two_targets(tmp_path):
    problem = only_problem(tmp_path, service('pidfile = "/run/a.pid"'))
    assert problem.key == "services.api"
    assert "command and pidfile are both set" in problem.message
    assert "exactly one target" in problem.message


def test_three_targets(tmp_path):
    problem = only_problem(tmp_path, service('pidfile = "/run/a.pid"\nunit = "a"'))
    assert "command, pidfile and unit are all set" in problem.message


def test_no_target(tmp_path):
    problem = only_problem(tmp_path, '[services.api]\nwatch = ["/a"]\n')
    assert problem.key == "services.api"
    assert "no target" in problem.message
    assert "command, pidfile or unit" in problem.message


def test_watch_is_required(tmp_path):
    problem = only_problem(tmp_path, '[services.api]\nunit = "a"\n')
    assert "no watch" in problem.message


def test_watch_must_not_be_empty(tmp_path):
    problem = only_problem(tmp_path, '[services.api]\nwatch = []\nunit = "a"\n')
    assert problem.key == "services.api.watch"
    assert "at least one path" in problem.message


def test_restart_action_needs_command_or_unit(tmp_path):
    problem = only_problem(tmp_path, service('action = "restart"', 'pidfile = "/run/nginx.pid"'))
    assert problem.key == "services.api.action"
    assert "command or unit" in problem.message
    for target in ('command = ["x"]', 'unit = "x"'):
        assert load_text(tmp_path, service('action = "restart"', target)).services


def test_exec_action_needs_exec(tmp_path):
    problem = only_problem(tmp_path, service('action = "exec"'))
    assert problem.key == "services.api.action"
    assert str(problem).endswith('services.api.action = "exec": ' + problem.message)
    assert "exec = [" in problem.message


def test_exec_without_exec_action(tmp_path):
    problem = only_problem(tmp_path, service('exec = ["reload-it"]'))
    assert problem.key == "services.api.exec"
    assert 'action = "exec"' in problem.message


def test_exec_in_defaults_without_action_names_defaults(tmp_path):
    problem = only_problem(tmp_path, '[defaults]\nexec = ["x"]\n' + service(""))
    assert "[defaults]" in problem.message


def test_supervision_keys_only_for_command(tmp_path):
    problem = only_problem(tmp_path, service('restart = "always"', 'unit = "x"'))
    assert problem.key == "services.api.restart"
    assert "only applies to a command target" in problem.message


def test_supervision_keys_from_defaults_are_fine_for_other_targets(tmp_path):
    cfg = load_text(tmp_path, '[defaults]\nrestart = "always"\n' + service("", 'unit = "x"'))
    assert cfg.services[0].restart == "always"


# --------------------------------------------------------------------------- values


def test_command_as_string_hints_at_list(tmp_path):
    problem = only_problem(tmp_path, service("", 'command = "gunicorn app:wsgi -b :80"'))
    assert problem.key == "services.api.command"
    assert '["gunicorn", "app:wsgi", "-b", ":80"]' in problem.message
    assert "does not split" in problem.message


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("[]", "empty list"),
        ('[""]', "empty string"),
        ('["a", 1]', 'item 2 is an integer: every argument must be a string (write "1")'),
        ("42", "expected a list of strings"),
    ],
)
def test_bad_commands(tmp_path, value, fragment):
    problem = only_problem(tmp_path, service(f"check = {value}"))
    assert problem.key == "services.api.check"
    assert fragment in problem.message


def test_wrong_type_for_duration(tmp_path):
    problem = only_problem(tmp_path, service("debounce = [1]"))
    assert str(problem) == (
        f"{tmp_path / 'reloadd.toml'}:4: services.api.debounce = [1]: "
        'expected a duration such as "200ms", "2s" or a number of seconds'
    )


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ('"fast"', "expected a duration"),
        ('"200"', 'has no unit: write "200ms" or "200s"'),
        ('"2 sex"', 'unknown unit "sex"'),
        ('"-1s"', "cannot be negative"),
        ("-1", "cannot be negative"),
        ("nan", "not finite"),
        ("inf", "not finite"),
        ("true", "expected a duration"),
    ],
)
def test_bad_durations(tmp_path, value, fragment):
    problem = only_problem(tmp_path, service(f"min_interval = {value}"))
    assert problem.key == "services.api.min_interval"
    assert fragment in problem.message


@pytest.mark.parametrize("key", ["check_timeout", "exec_timeout", "poll_interval", "stop_timeout"])
def test_timeouts_must_be_positive(tmp_path, key):
    problem = only_problem(tmp_path, service(f"{key} = 0"))
    assert "more than 0" in problem.message


def test_debounce_must_not_exceed_max_delay(tmp_path):
    problem = only_problem(tmp_path, service('debounce = "3s"\nmax_delay = "2s"'))
    assert problem.key == "services.api.debounce"
    assert "debounce (3s) must not exceed max_delay (2s)" in problem.message


def test_debounce_against_builtin_max_delay_names_defaults(tmp_path):
    problem = only_problem(tmp_path, '[defaults]\ndebounce = "5s"\n' + service(""))
    assert "debounce from [defaults]" in problem.message


def test_unknown_signal_suggests(tmp_path):
    problem = only_problem(tmp_path, service('signal = "SIGHUPP"'))
    assert str(problem) == (
        f'{tmp_path / "reloadd.toml"}:4: services.api.signal = "SIGHUPP": '
        "unknown signal (did you mean SIGHUP?)"
    )


@pytest.mark.parametrize(
    ("value", "fragment"), [("9999", "no signal has the number"), ('"QQQQQQ"', "e.g.")]
)
def test_other_bad_signals(tmp_path, value, fragment):
    problem = only_problem(tmp_path, service(f"stop_signal = {value}"))
    assert problem.key == "services.api.stop_signal"
    assert fragment in problem.message


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("action", '"reload"', 'expected one of "signal", "restart", "exec"'),
        ("scope", '"mian"', "(did you mean main?)"),
        ("backend", '"inotifyy"', "(did you mean inotify?)"),
        ("restart", "false", "(a string), got a boolean"),
    ],
)
def test_bad_choices(tmp_path, key, value, fragment):
    problem = only_problem(tmp_path, service(f"{key} = {value}"))
    assert problem.key == f"services.api.{key}"
    assert fragment in problem.message


def test_unknown_user_suggests(tmp_path):
    problem = only_problem(tmp_path, service('user = "rooot"'))
    assert problem.message == "no such user 'rooot' (did you mean root?)"


def test_unknown_group_and_expect_user(tmp_path):
    err = errors(tmp_path, service('group = "no-such-group-x"\nexpect_user = "no-such-user-x"'))
    assert [p.message.split(" (")[0] for p in err.problems] == [
        "no such group 'no-such-group-x'",
        "no such user 'no-such-user-x'",
    ]


def test_numeric_user_ids(tmp_path):
    cfg = load_text(tmp_path, service('user = 12345\ngroup = "54321"'))
    assert (cfg.services[0].user, cfg.services[0].group) == ("12345", "54321")


def test_environment_checks(tmp_path):
    err = errors(tmp_path, service("environment = { PORT = 8000 }"))
    assert 'write PORT = "8000"' in err.problems[0].message
    err = errors(tmp_path, service('environment = { "A B" = "x" }'))
    assert "not a valid variable name" in err.problems[0].message
    err = errors(tmp_path, service('environment = ["A=1"]'))
    assert "expected a table of strings" in err.problems[0].message


@pytest.mark.parametrize("value", ["0660", "660", "0o660"])
def test_socket_mode_spellings(tmp_path, value):
    assert load_text(tmp_path, f'[daemon]\nsocket_mode = "{value}"\n').daemon.socket_mode == 0o660


def test_socket_mode_as_integer_hints_to_quote(tmp_path):
    problem = only_problem(tmp_path, "[daemon]\nsocket_mode = 660\n")
    assert problem.key == "daemon.socket_mode"
    assert 'quote it, socket_mode = "0660"' in problem.message


@pytest.mark.parametrize("value", ['"0999"', '"rw-rw----"', '"01777"'])
def test_bad_socket_modes(tmp_path, value):
    assert only_problem(tmp_path, f"[daemon]\nsocket_mode = {value}\n").key == "daemon.socket_mode"


def test_socket_path_too_long(tmp_path):
    problem = only_problem(tmp_path, f'[daemon]\nsocket = "/{"x" * 200}"\n')
    assert "too long for a Unix socket" in problem.message


def test_bad_log_level_and_watch_config(tmp_path):
    err = errors(tmp_path, '[daemon]\nlog_level = "verbose"\nwatch_config = "yes"\n')
    assert [p.key for p in err.problems] == ["daemon.log_level", "daemon.watch_config"]
    assert "expected true or false" in err.problems[1].message


def test_unknown_socket_group(tmp_path):
    problem = only_problem(tmp_path, '[daemon]\nsocket_group = "no-such-group-x"\n')
    assert problem.message.startswith("no such group 'no-such-group-x'")


def test_long_values_are_shortened_in_messages(tmp_path):
    problem = only_problem(tmp_path, service(f'signal = "{"X" * 500}"'))
    assert problem.value is not None
    assert len(problem.value) <= 60
    assert problem.value.endswith("...")


# --------------------------------------------------------------------------- drop-ins


def test_dropins_load_in_lexical_order_after_main(tmp_path):
    for name in ["20-b.toml", "10-a.toml", "30-c.toml"]:
        stem = name[3]
        write(
            tmp_path / "reloadd.d" / name, f'[services.{stem}]\nwatch = ["/{stem}"]\nunit = "x"\n'
        )
    write(tmp_path / "reloadd.d" / "99-backup.toml~", "garbage [[[")
    write(tmp_path / "reloadd.d" / ".#10-a.toml", "garbage [[[")
    write(tmp_path / "reloadd.d" / "notes.txt", "garbage [[[")
    (tmp_path / "reloadd.d" / "dir.toml").mkdir()
    cfg = load_text(tmp_path, MINIMAL)
    assert [s.name for s in cfg.services] == ["api", "a", "b", "c"]
    assert cfg.files == (
        str(tmp_path / "reloadd.toml"),
        str(tmp_path / "reloadd.d" / "10-a.toml"),
        str(tmp_path / "reloadd.d" / "20-b.toml"),
        str(tmp_path / "reloadd.d" / "30-c.toml"),
    )


def test_dropins_that_are_not_regular_files_are_skipped(tmp_path):
    """A FIFO named *.toml would block the read until a writer appears (a device, for
    ever): skipped with a warning; a symlink to a regular file is read like one."""
    dropins = tmp_path / "reloadd.d"
    write(tmp_path / "elsewhere" / "real.toml", '[services.b]\nwatch = ["/b"]\nunit = "b"\n')
    dropins.mkdir()
    os.mkfifo(dropins / "10-fifo.toml")
    (dropins / "20-link.toml").symlink_to(tmp_path / "elsewhere" / "real.toml")
    (dropins / "30-dev.toml").symlink_to("/dev/zero")
    cfg = load_text(tmp_path, MINIMAL)
    assert [s.name for s in cfg.services] == ["api", "b"]
    assert cfg.files == (str(tmp_path / "reloadd.toml"), str(dropins / "20-link.toml"))
    assert [w for w in cfg.warnings if "regular" in w] == [
        f"{dropins / '10-fifo.toml'} is not a regular file (a FIFO); skipped",
        f"{dropins / '30-dev.toml'} is not a regular file (a character device); skipped",
    ]


@pytest.mark.parametrize("kind", ["fifo", "fifo-link", "device"])
def test_config_file_that_is_not_regular_is_a_clear_error(tmp_path, kind):
    """Named directly, a FIFO is refused at once (opened O_NONBLOCK, then fstat'ed), not
    read: no hang waiting for a writer."""
    path = tmp_path / "reloadd.toml"
    if kind == "device":
        path.symlink_to("/dev/null")
    elif kind == "fifo-link":
        os.mkfifo(tmp_path / "fifo")
        path.symlink_to(tmp_path / "fifo")
    else:
        os.mkfifo(path)
    with pytest.raises(ConfigError) as info:
        load(path)
    (problem,) = info.value.problems
    what = "a character device" if kind == "device" else "a FIFO"
    assert problem.file == str(path)
    assert f"is not a regular file ({what})" in problem.message


def test_dropin_gets_defaults_from_main(tmp_path):
    write(tmp_path / "reloadd.d" / "x.toml", '[services.x]\nwatch = ["/x"]\nunit = "x"\n')
    cfg = load_text(tmp_path, '[defaults]\ndebounce = "1s"\n')
    assert cfg.services[0].debounce == 1.0


def test_duplicate_across_two_dropins_names_both_files(tmp_path):
    a = write(tmp_path / "reloadd.d" / "a.toml", '[services.x]\nwatch = ["/x"]\nunit = "x"\n')
    b = write(tmp_path / "reloadd.d" / "b.toml", '[services.x]\nwatch = ["/y"]\nunit = "y"\n')
    problem = only_problem(tmp_path, MINIMAL)
    assert problem.file == str(b)
    assert problem.key == "services.x"
    assert str(a) in problem.message
    assert str(b) in problem.message


def test_duplicate_between_main_and_dropin(tmp_path):
    write(tmp_path / "reloadd.d" / "api.toml", MINIMAL)
    problem = only_problem(tmp_path, MINIMAL)
    assert str(tmp_path / "reloadd.toml") in problem.message
    assert str(tmp_path / "reloadd.d" / "api.toml") in problem.message


@pytest.mark.parametrize("section", ["daemon", "defaults"])
def test_dropin_may_hold_only_services(tmp_path, section):
    dropin = write(tmp_path / "reloadd.d" / "x.toml", f'[{section}]\nlog_level = "info"\n')
    problem = only_problem(tmp_path, MINIMAL)
    assert problem.file == str(dropin)
    assert problem.key == section
    assert "only [services.*]" in problem.message


def test_dropin_syntax_error_names_the_dropin(tmp_path):
    dropin = write(tmp_path / "reloadd.d" / "x.toml", "[services.x\n")
    problem = only_problem(tmp_path, MINIMAL)
    assert problem.file == str(dropin)
    assert problem.line == 1


def test_include_that_is_a_file(tmp_path):
    write(tmp_path / "reloadd.d", "x")
    problem = only_problem(tmp_path, MINIMAL)
    assert problem.key == "daemon.include"
    assert "not a directory" in problem.message


def test_missing_dropin_dir_is_fine(tmp_path):
    cfg = load_text(tmp_path, '[daemon]\ninclude = "/nonexistent/reloadd.d"\n' + MINIMAL)
    assert len(cfg.services) == 1


# --------------------------------------------------------------------------- many problems


def test_every_problem_in_every_file_is_reported(tmp_path):
    write(tmp_path / "reloadd.d" / "a.toml", '[services.b]\nwatch = ["/b"]\nsignal = "HUPP"\n')
    write(tmp_path / "reloadd.d" / "b.toml", "this is not toml\n")
    err = errors(
        tmp_path,
        """
        [daemon]
        log_level = "loud"

        [defaults]
        debounce = "soon"

        [services.a]
        watch = ["/a"]
        command = "run a"
        pidfile = "/run/a.pid"
        stop_timeout = -1
        """,
    )
    main = str(tmp_path / "reloadd.toml")
    a = str(tmp_path / "reloadd.d" / "a.toml")
    b = str(tmp_path / "reloadd.d" / "b.toml")
    assert [(p.file, p.key) for p in err.problems] == [
        (main, "daemon.log_level"),
        (main, "defaults.debounce"),
        (b, None),
        (main, "services.a.command"),
        (main, "services.a.stop_timeout"),
        (main, "services.a"),  # two targets
        (a, "services.b.signal"),
        (a, "services.b"),  # no target
    ]
    assert len(str(err).splitlines()) == len(err.problems)


def test_problems_point_at_the_line(tmp_path):
    """Problems found after parsing still name the line that set the key, where it can be found."""
    write(
        tmp_path / "reloadd.d" / "x.toml",
        """
        # a comment
        [services."x.y"]
        watch = ["/x"]
        unit = "x"
        signal = "NOPE"
        """,
    )
    err = errors(
        tmp_path,
        """
        [daemon]
        log_level = "loud"   # comment

        [ services . api ]
        watch = "/a"
        command = ["a"]
        pidfile = "/a.pid"
        environment = { PORT = 1 }

        [services.b]
        watch = "/b"
        unit = "b"
        services.c.unit = "c"
        """,
    )
    lines = {(Path(p.file).name, p.key): p.line for p in err.problems}
    assert lines == {
        ("reloadd.toml", "daemon.log_level"): 3,
        ("reloadd.toml", "services.api.environment"): 9,
        ("reloadd.toml", "services.api"): 5,  # two targets: the table header
        ("reloadd.toml", "services.b.services"): 14,
        ("x.toml", 'services."x.y".signal'): 6,
    }


def test_config_error_str_is_one_line_per_problem():
    err = ConfigError(
        [
            Problem("/etc/reloadd.toml", None, "invalid TOML: Expected '='", line=3, column=7),
            Problem("/etc/reloadd.toml", "daemon.log_level", "bad", value='"x"'),
        ]
    )
    assert str(err) == (
        "/etc/reloadd.toml:3:7: invalid TOML: Expected '='\n"
        '/etc/reloadd.toml: daemon.log_level = "x": bad'
    )


# --------------------------------------------------------------------------- parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("2s", 2.0),
        ("1.5s", 1.5),
        ("1min", 60.0),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("1 min 30 s", 90.0),
        ("0", None),
        (".5s", 0.5),
        ("2 seconds", 2.0),
        ("100MS", 0.1),
        (0, 0.0),
        (3, 3.0),
        (0.02, 0.02),
    ],
)
def test_parse_duration(text, seconds):
    if seconds is None:
        with pytest.raises(ValueError, match="no unit"):
            parse_duration(text)
    else:
        assert parse_duration(text) == seconds


@pytest.mark.parametrize("value", ["", "s", "1x", "ms5", "1s 2", None, [1], {}, True, "1e3s"])
def test_parse_duration_rejects(value):
    with pytest.raises(ValueError):  # noqa: PT011 - the messages are tested above
        parse_duration(value)


@given(st.integers(min_value=0, max_value=10**9))
def test_duration_milliseconds_roundtrip(ms):
    assert parse_duration(f"{ms}ms") == ms / 1000


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_format_duration_roundtrip(seconds):
    text = config.format_duration(seconds)
    assert parse_duration(text) == seconds
    assert "e" not in text.lower().replace("sec", "")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.2, "200ms"),
        (0.02, "20ms"),
        (2, "2s"),
        (1.5, "1.5s"),
        (60, "1min"),
        (3600, "1h"),
    ],
)
def test_format_duration(seconds, text):
    assert config.format_duration(seconds) == text


# --------------------------------------------------------------------------- summary


def test_summary(tmp_path):
    cfg = load_text(
        tmp_path,
        """
        [services.api]
        watch = ["/srv/api/app", "/srv/api/config.yaml"]
        command = ["gunicorn", "app:wsgi"]
        debounce = "200ms"

        [services.nginx]
        watch = "/etc/nginx"
        pidfile = "/run/nginx.pid"
        check = ["nginx", "-t"]
        scope = "group"
        signal = "USR2"

        [services.fpm]
        watch = "/srv/shop"
        unit = "php-fpm"
        action = "exec"
        exec = ["systemctl", "reload", "php fpm"]
        """,
    )
    assert config.summary(cfg) == [
        "api: watch /srv/api/app (+1 more); command gunicorn app:wsgi; "
        "on change: signal SIGHUP -> main pid; debounce 200ms",
        "nginx: watch /etc/nginx; pidfile /run/nginx.pid; check nginx -t; "
        "on change: signal SIGUSR2 -> process group; debounce 20ms",
        "fpm: watch /srv/shop; unit php-fpm.service; "
        "on change: exec systemctl reload 'php fpm'; debounce 20ms",
    ]


# --------------------------------------------------------------------------- shipped example


def test_shipped_example_loads():
    """etc/reloadd.toml loads; missing watch paths are only warnings."""
    cfg = load(REPO / "etc" / "reloadd.toml")
    assert {s.name for s in cfg.services} >= {"nginx", "api", "php-fpm", "swoole"}
    assert {s.target_kind for s in cfg.services} == {"command", "pidfile", "unit"}
    assert {s.action for s in cfg.services} == {"signal", "restart", "exec"}
    assert all("does not exist" in w or "cannot be checked" in w for w in cfg.warnings)
    assert len(config.summary(cfg)) == len(cfg.services)


def test_shipped_example_mentions_every_key():
    text = (REPO / "etc" / "reloadd.toml").read_text()
    for key in [*config._SERVICE_KEYS, *config._DAEMON_KEYS]:
        assert f"{key} =" in text, key


def test_unquoted_octal_mode_gets_a_hint(tmp_path):
    """`socket_mode = 0660` is a TOML syntax error whose parser message names no cause."""
    problem = only_problem(tmp_path, "[daemon]\nsocket_mode = 0660\n")
    assert problem.line == 2
    assert 'leading zero is not valid TOML; for a mode write "0660"' in problem.message
