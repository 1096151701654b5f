"""reloadd.protocol: message shapes, framing and validation, as plain functions."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reloadd import protocol as p
from reloadd.protocol import ProtocolError, Request, parse_reply, parse_request


def line(obj: object) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def rejected(raw: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_request(raw)
    assert info.value.code in p.ERROR_CODES
    return info.value


# --------------------------------------------------------------------------- requests


@pytest.mark.parametrize(
    ("cmd", "args"),
    [
        ("ping", {}),
        ("version", {}),
        ("status", {}),
        ("status", {"services": ["api", "web"]}),
        ("events", {"follow": True, "limit": 5}),
        ("reload", {"service": "api"}),
        ("restart", {"service": "api"}),
        ("pause", {"service": "api"}),
        ("resume", {"service": "api"}),
        ("reload-config", {}),
    ],
)
def test_every_command_round_trips(cmd: str, args: dict[str, object]) -> None:
    """What the client builds, the server parses back unchanged."""
    assert parse_request(p.encode(p.request(cmd, args, id=7))) == Request(cmd, 7, args)


def test_encode_is_one_ascii_line_whatever_the_strings_hold() -> None:
    """Newlines, non-ASCII and surrogate-escaped bytes never break the framing."""
    data = p.encode(p.ok(1, {"path": "caf\udcc3\n\u00e9\u2028"}))
    assert data.endswith(b"\n")
    assert data.count(b"\n") == 1
    assert data.isascii()
    assert json.loads(data)["result"]["path"] == "caf\udcc3\n\u00e9\u2028"


def test_ids_are_echoed_and_may_be_strings_integers_or_absent() -> None:
    assert parse_request(line({"v": 1, "cmd": "ping", "id": "abc"})).id == "abc"
    assert parse_request(line({"v": 1, "cmd": "ping", "id": 12})).id == 12
    assert parse_request(line({"v": 1, "cmd": "ping"})).id is None
    assert rejected(line({"v": 1, "cmd": "ping", "id": [1]})).code == p.BAD_REQUEST
    assert rejected(line({"v": 1, "cmd": "ping", "id": True})).code == p.BAD_REQUEST


def test_a_final_line_without_newline_still_parses() -> None:
    assert parse_request(b'{"v":1,"cmd":"ping"}').cmd == "ping"


def test_args_null_is_no_args() -> None:
    assert parse_request(line({"v": 1, "cmd": "status", "args": None})).args == {}


@pytest.mark.parametrize(
    ("raw", "code", "words"),
    [
        (b"hello\n", p.BAD_REQUEST, "not valid JSON"),
        (b"\n", p.BAD_REQUEST, "not valid JSON"),
        (b"[1, 2]\n", p.BAD_REQUEST, "must be a JSON object, not a list"),
        (b'"status"\n', p.BAD_REQUEST, "not a string"),
        (b'{"v":1,"cmd":"ping"\xff}\n', p.BAD_REQUEST, "not UTF-8"),
        (b'{"cmd":"status"}\n', p.BAD_REQUEST, 'missing "v"'),
        (b'{"v":2,"cmd":"status"}\n', p.UNSUPPORTED_VERSION, "version 1; the client sent 2"),
        (b'{"v":"1","cmd":"status"}\n', p.UNSUPPORTED_VERSION, 'sent "1"'),
        (b'{"v":true,"cmd":"status"}\n', p.UNSUPPORTED_VERSION, "sent true"),
        (b'{"v":1.0,"cmd":"status"}\n', p.UNSUPPORTED_VERSION, "sent 1.0"),
        (b'{"v":1}\n', p.BAD_REQUEST, "'cmd' missing"),
        (b'{"v":1,"cmd":7}\n', p.BAD_REQUEST, "'cmd' must be a string, not a number"),
        (b'{"v":1,"cmd":"stauts"}\n', p.UNKNOWN_COMMAND, "unknown command 'stauts' (known:"),
        (b'{"v":1,"cmd":"reload"}\n', p.BAD_ARGUMENT, "reload: missing argument 'service'"),
        (b'{"v":1,"cmd":"reload","args":[]}\n', p.BAD_ARGUMENT, "'args' must be an object"),
        (
            b'{"v":1,"cmd":"reload","args":{"service":3}}\n',
            p.BAD_ARGUMENT,
            "argument 'service' must be a string, not a number",
        ),
        (
            b'{"v":1,"cmd":"reload","args":{"service":"a","force":true}}\n',
            p.BAD_ARGUMENT,
            "unknown argument 'force' (known: service)",
        ),
        (
            b'{"v":1,"cmd":"status","args":{"services":["a",1]}}\n',
            p.BAD_ARGUMENT,
            "must be a list of strings",
        ),
        (
            b'{"v":1,"cmd":"events","args":{"limit":true}}\n',
            p.BAD_ARGUMENT,
            "'limit' must be an integer, not a boolean",
        ),
        (b'{"v":1,"cmd":"ping","x":NaN}\n', p.BAD_REQUEST, "NaN is not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, p.TOO_LARGE, "over 65536 bytes"),
        (b"[" * 30_000 + b"]" * 30_000, p.BAD_REQUEST, "nested too deeply"),
        (b'{"v":1,"cmd":"ping","n":' + b"9" * 5000 + b"}", p.BAD_REQUEST, "not valid JSON"),
    ],
)
def test_bad_requests_are_named(raw: bytes, code: str, words: str) -> None:
    """Each kind of bad input gets its own code and a message that says what is wrong."""
    err = rejected(raw)
    assert err.code == code
    assert words in err.message


def test_errors_after_the_id_carry_it() -> None:
    err = rejected(line({"v": 1, "cmd": "nope", "id": 42}))
    assert err.id == 42
    reply = p.error(err.id, err.code, err.message)
    assert reply == {
        "v": 1,
        "id": 42,
        "ok": False,
        "error": {"code": "unknown-command", "message": err.message},
    }


def test_mutating_and_read_only_partition_the_commands() -> None:
    assert set(p.COMMANDS) == p.READ_ONLY | p.MUTATING
    assert not p.READ_ONLY & p.MUTATING
    assert {"reload", "restart", "pause", "resume", "reload-config"} == p.MUTATING


@pytest.mark.slow
@given(st.binary(max_size=300))
def test_any_bytes_give_a_request_or_a_protocol_error(raw: bytes) -> None:
    try:
        req = parse_request(raw)
    except ProtocolError as exc:
        error = exc
    else:
        assert req.cmd in p.COMMANDS
        return
    assert error.code in p.ERROR_CODES
    assert error.message


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@pytest.mark.slow
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "v": st.sampled_from([1, 2, "1", None, True]) | _json,
            "cmd": st.sampled_from(sorted(p.COMMANDS)) | _json,
            "id": _json,
            "args": st.dictionaries(
                st.sampled_from(["service", "services", "follow", "limit", "x"]), _json
            )
            | _json,
        },
    )
)
def test_any_json_object_gives_a_request_or_a_protocol_error(msg: dict[str, object]) -> None:
    try:
        req = parse_request(line(msg))
    except ProtocolError as exc:
        error = exc
    else:
        assert req.cmd in p.COMMANDS
        for name, arg in p.COMMANDS[req.cmd].items():
            assert name in req.args or not arg.required
        return
    assert error.code in p.ERROR_CODES
    assert error.message


# --------------------------------------------------------------------------- replies


def test_replies_parse_by_kind() -> None:
    assert parse_reply(p.encode(p.ok(3, {"a": 1}))) == p.Reply(3, True, result={"a": 1})
    err = parse_reply(p.encode(p.error(3, p.REFUSED, "paused", record={"x": 1})))
    assert not err.ok
    assert err.error == {"code": "refused", "message": "paused", "record": {"x": 1}}
    ev = parse_reply(p.encode(p.event(3, {"service": "api"})))
    assert ev.is_event
    assert ev.event == {"service": "api"}
    assert ev.ok is None


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b'{"v":2,"id":1,"ok":true,"result":null}', "protocol version 2; this reloadctl speaks"),
        (b'{"id":1,"ok":true}', "protocol version null"),
        (b"not json", "not valid JSON"),
        (b"[]", "not a JSON object"),
        (b'{"v":1,"ok":false}', "neither a result"),
        (b'{"v":1,"ok":false,"error":{"code":1}}', "neither a result"),
    ],
)
def test_bad_replies_fail_clearly(raw: bytes, words: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_reply(raw)
    assert words in info.value.message


# --------------------------------------------------------------------------- the socket path


@pytest.mark.parametrize(
    ("env", "path"),
    [
        ({}, "/run/reloadd/control.sock"),
        ({"RUNTIME_DIRECTORY": "/run/reloadd"}, "/run/reloadd/control.sock"),
        ({"RUNTIME_DIRECTORY": "/run/rd:/run/other"}, "/run/rd/control.sock"),
        ({"RUNTIME_DIRECTORY": "relative"}, "/run/reloadd/control.sock"),
        ({"RUNTIME_DIRECTORY": ""}, "/run/reloadd/control.sock"),
    ],
)
def test_default_socket_path(env: dict[str, str], path: str) -> None:
    assert p.default_socket_path(env) == path
