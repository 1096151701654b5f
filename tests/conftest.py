"""Shared fixtures: a real reloadd process, real signal-recording targets, deadline waits.

Nothing here sleeps to synchronise: ``wait_for`` polls a condition under a deadline,
readiness is the daemon's own ``READY=1`` on a notify socket the test binds, and a
reload is a line the target wrote when the signal arrived.

``RELOADD_REQUIRE_ALL=1`` (set by CI) turns every "missing dependency" skip into a
failure, so CI never passes by skipping; use ``require(...)`` for such checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from reloadd.control import ControlServer

# Hypothesis times its own input generation and each example: on a loaded 2-core machine
# those health checks fail tests whose properties hold (CI failed once on too_slow). Tests
# carry no timing asserts (issue 6: speed lives in bench/), so none come from Hypothesis.
with contextlib.suppress(ImportError):
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "reloadd", deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    settings.load_profile("reloadd")

RECORDER = str(Path(__file__).with_name("recorder.py"))
DEADLINE = float(os.environ.get("RELOADD_TEST_DEADLINE", "20"))

# The watch backends the scenario tests run on (the ``backend`` fixture); a new backend
# joins every scenario by being added here.
BACKENDS = ("inotify", "poll")

# Test modules import the helpers below as ``from reloadd_testing import ...``: the name
# "conftest" is ambiguous once several conftest.py files are loaded (tests/systemd has one).
sys.modules.setdefault("reloadd_testing", sys.modules[__name__])

# "<service>: reloaded: <N>[+] path[s] changed (<paths>[, +M more]); <action>[; ... ms ...]"
_RELOADED = re.compile(
    r"(?P<service>\S+): reloaded: (?:(?P<count>\d+)\+? paths? changed \((?P<paths>.*)\)"
    r"|manual reload); (?P<action>.*?)(?:; [\d.]+ ms after the last change)?$"
)


def require(condition: bool, what: str) -> None:
    """Skip (developer machine) or fail (CI: RELOADD_REQUIRE_ALL=1) when a dependency is missing."""
    if condition:
        return
    if os.environ.get("RELOADD_REQUIRE_ALL") == "1":
        pytest.fail(f"missing dependency (RELOADD_REQUIRE_ALL=1): {what}")
    pytest.skip(f"missing dependency: {what}")


_MOUNT_WORKS: list[bool] = []


def require_mount() -> None:
    """Skip (or fail under RELOADD_REQUIRE_ALL=1) where this process cannot mount: not
    root, no mount(8), or root without CAP_SYS_ADMIN (a default container). Tried once,
    with a throwaway tmpfs."""
    if not _MOUNT_WORKS:
        works = os.geteuid() == 0 and shutil.which("mount") is not None
        if works:
            with tempfile.TemporaryDirectory() as point:
                argv = ["mount", "-t", "tmpfs", "-o", "size=64k", "reloadd-probe", point]
                works = subprocess.run(argv, stderr=subprocess.DEVNULL).returncode == 0
                if works:
                    subprocess.run(["umount", point], check=True)
        _MOUNT_WORKS.append(works)
    require(_MOUNT_WORKS[0], "mounting (root with CAP_SYS_ADMIN, and mount(8))")


def require_tool(name: str, package: str | None = None) -> str:
    path = shutil.which(name)
    require(path is not None, f"{name} (apt-get install {package or name})")
    assert path is not None
    return path


def gone(pid: int) -> bool:
    """No such process, or only a zombie waiting for its (new) parent to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def wait_for(
    predicate: Callable[[], object],
    timeout: float = DEADLINE,
    what: str = "condition",
    detail: Callable[[], str] | None = None,
) -> object:
    """Poll ``predicate`` until truthy or the deadline passes (then fail, with detail)."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{detail()}" if detail else ""
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


# --------------------------------------------------------------------------- FUSE mounts

FUSE_MAGIC = 0x65735546  # statfs f_type of every FUSE file system


@dataclass
class BindMount:
    """A bindfs (FUSE) mount of ``backing`` on ``mount``, run by ``proc`` (bindfs -f).

    ``stop()`` (SIGSTOP) makes every request to the mount wait for an answer that does
    not come, exactly like a dead NFS server or a stuck sshfs; ``resume()`` continues it.
    """

    backing: Path
    mount: Path
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)
        wait_for(lambda: proc_state(self.proc.pid) == "T", what="bindfs stopped")

    def resume(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)


def proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@contextlib.contextmanager
def bindfs_mount(backing: Path, mount: Path) -> Iterator[BindMount]:
    """Mount ``backing`` (a directory) on ``mount`` (created) with bindfs; afterwards the
    bindfs process is always continued, the mount lazily unmounted and bindfs ended.

    Needs bindfs and FUSE (``apt-get install bindfs fuse3``; ``/dev/fuse``), and root.
    """
    from reloadd.watch import fs_type

    bindfs = require_tool("bindfs", "bindfs fuse3")
    require(os.path.exists("/dev/fuse"), "/dev/fuse (FUSE kernel support)")
    require_mount()
    mount.mkdir(parents=True, exist_ok=True)
    # -f: bindfs stays in the foreground, so its pid is this Popen's
    proc = subprocess.Popen(
        [bindfs, "-f", "--no-allow-other", str(backing), str(mount)],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    m = BindMount(backing, mount, proc)
    try:
        wait_for(
            lambda: fs_type(str(mount)) == FUSE_MAGIC or proc.poll() is not None,
            what="the bindfs mount",
        )
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        yield m
    finally:
        m.resume()
        umount = shutil.which("fusermount3") or shutil.which("fusermount")
        argv = [umount, "-u", "-z", str(mount)] if umount else ["umount", "-l", str(mount)]
        subprocess.run(argv, check=False, stderr=subprocess.DEVNULL)
        try:
            proc.wait(DEADLINE)  # bindfs exits once unmounted
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@dataclass
class Recording:
    """The log a recorder process writes: ``<SIGNAME> <pid>`` per line."""

    path: Path

    def lines(self) -> list[tuple[str, int]]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            name, _, pid = line.partition(" ")
            if pid.isdigit():
                out.append((name, int(pid)))
        return out

    def signals(self, name: str = "SIGHUP", pid: int | None = None) -> list[int]:
        """Pids that received ``name`` (one entry per receipt)."""
        return [p for n, p in self.lines() if n == name and (pid is None or p == pid)]

    def count(self, name: str = "SIGHUP") -> int:
        return len(self.signals(name))

    def ready_pids(self) -> list[int]:
        return [p for n, p in self.lines() if n == "READY"]

    def wait_count(self, n: int, name: str = "SIGHUP", timeout: float = DEADLINE) -> None:
        wait_for(
            lambda: self.count(name) >= n,
            timeout,
            f"{n} x {name} in {self.path.name}",
            lambda: f"recorded: {self.lines()}",
        )


def recorder_command(log: Path, *extra: str) -> list[str]:
    return [sys.executable, RECORDER, str(log), *extra]


def write(path: Path, text: str = "x\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """A watched application tree with a few files already in it (the baseline)."""
    root = tmp_path / "app"
    write(root / "app.py", "version = 1\n")
    write(root / "config.yaml", "debug: false\n")
    write(root / "pkg" / "models.py", "x = 1\n")
    return root


def run_reloadctl(
    sock: Path, *args: str, timeout: float = DEADLINE
) -> subprocess.CompletedProcess[str]:
    """``reloadctl --socket SOCK ARGS...`` in a process of its own (its output captured)."""
    argv = [sys.executable, "-c", "import sys; from reloadd.ctl import main; sys.exit(main())"]
    return subprocess.run(
        [*argv, "--socket", str(sock), *args], capture_output=True, text=True, timeout=timeout
    )


def toml_value(value: object) -> str:
    """A str, path, number, bool or list of those as TOML (JSON strings are TOML strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Path):
        value = str(value)
    return json.dumps(value)


async def until(predicate: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    """``wait_for`` inside the event loop of an in-process daemon (which runs meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def running(tmp_path: Path, services: str) -> AsyncIterator[Any]:
    """An in-process Daemon on a config file; shut down (services stopped) afterwards."""
    from reloadd.config import load
    from reloadd.daemon import Daemon

    cfg = tmp_path / "inproc.toml"
    head = f"[daemon]\nsocket = {toml_value(tmp_path / 'ctl.sock')}\n\n"
    cfg.write_text(head + textwrap.dedent(services))
    daemon = Daemon(load(cfg))
    task = asyncio.ensure_future(daemon.run())
    ready = asyncio.ensure_future(daemon.ready.wait())
    try:
        await asyncio.wait({task, ready}, timeout=DEADLINE, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            exit_code = task.result() if task.done() else "?"
            pytest.fail(f"the daemon did not get ready (exit {exit_code})")
        yield daemon
    finally:
        # also when it never got ready: whatever it started must be stopped
        daemon.shutdown()
        await asyncio.wait_for(task, 60)


@dataclass(frozen=True)
class ReloadLine:
    """One ``reloaded:`` line of the daemon log, parsed."""

    service: str
    count: int | None  # None for a manual reload
    paths: tuple[str, ...]  # the paths shown (the first few), without the "+M more"
    more: int  # how many changed paths were not shown
    action: str  # "SIGHUP -> pid 123", "restarted: pid 1 -> 2", ...

    @classmethod
    def parse(cls, line: str) -> ReloadLine | None:
        m = _RELOADED.search(line)
        if m is None:
            return None
        shown = m["paths"].split(", ") if m["paths"] else []
        more = 0
        if shown and re.fullmatch(r"\+\d+ more", shown[-1]):
            more = int(shown.pop()[1:-5])
        count = int(m["count"]) if m["count"] else None
        return cls(m["service"], count, tuple(shown), more, m["action"])


@dataclass
class Reloadd:
    """A running ``python -m reloadd`` with its own notify socket and captured stderr."""

    proc: subprocess.Popen[bytes]
    config: Path
    stderr_path: Path
    notify: socket.socket
    messages: list[str] = field(default_factory=list)

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def read_notify(self) -> list[str]:
        """Drain the notify socket; every datagram is kept in ``messages``."""
        while True:
            try:
                data = self.notify.recv(65536)
            except BlockingIOError:
                return self.messages
            self.messages.append(data.decode(errors="replace"))

    def notified(self, field_: str) -> bool:
        return any(field_ in m.split("\n") for m in self.read_notify())

    def wait_log(self, text: str, timeout: float = DEADLINE) -> None:
        wait_for(lambda: text in self.log(), timeout, f"log line {text!r}", self.log)

    def reloads(self, service: str | None = None) -> list[ReloadLine]:
        """The ``reloaded:`` lines logged so far (of one service, or all), in order."""
        out = []
        for line in self.log().splitlines():
            parsed = ReloadLine.parse(line)
            if parsed is not None and (service is None or parsed.service == service):
                out.append(parsed)
        return out

    def wait_reloads(self, service: str, n: int) -> list[ReloadLine]:
        """The ``reloaded:`` lines of ``service`` once there are ``n``: a target may
        record its signal before reloadd has written the line."""
        wait_for(
            lambda: len(self.reloads(service)) >= n, DEADLINE, f"{n} reloads of {service}", self.log
        )
        return self.reloads(service)

    def terminate(self, within: float) -> int:
        """SIGTERM, and its exit code; fails the test (with the log) if it takes longer
        than ``within`` seconds."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(within)
        except subprocess.TimeoutExpired:
            pytest.fail(f"reloadd did not exit within {within:g}s of SIGTERM:\n{self.log()}")

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def start_reloadd(tmp_path: Path) -> Iterator[Callable[..., Reloadd]]:
    """Start reloadd on a config text; waits for READY=1; always stopped afterwards."""
    started: list[Reloadd] = []

    def start(
        config_text: str,
        *,
        wait_ready: bool = True,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        name: str = "reloadd.toml",
        wrapper: Sequence[str] = (),
    ) -> Reloadd:
        """``wrapper`` is an argv prefix that must end by exec'ing the rest (``unshare
        ... sh -c '...; exec "$@"' sh``), so that the process started is reloadd itself."""
        config = tmp_path / name
        config.write_text(textwrap.dedent(config_text))
        sock_path = tmp_path / f"notify-{len(started)}.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(sock_path))
        sock.setblocking(False)
        stderr_path = tmp_path / f"reloadd-{len(started)}.log"
        full_env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM",)}
        full_env.update({"NOTIFY_SOCKET": str(sock_path), "PYTHONUNBUFFERED": "1"})
        # a private control socket unless the config names one: tests never share
        # /run/reloadd/control.sock with each other or with a reloadd on this machine
        full_env.setdefault("RUNTIME_DIRECTORY", str(tmp_path))
        full_env.update(env or {})
        with open(stderr_path, "wb") as err:
            proc = subprocess.Popen(
                [*wrapper, sys.executable, "-m", "reloadd", "-c", str(config), *args],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                env=full_env,
                cwd=tmp_path,
            )
        r = Reloadd(proc, config, stderr_path, sock)
        started.append(r)
        if wait_ready:
            wait_for(
                lambda: r.notified("READY=1") or proc.poll() is not None,
                what="READY=1 from reloadd",
                detail=r.log,
            )
            if proc.poll() is not None:
                pytest.fail(f"reloadd exited with {proc.returncode}:\n{r.log()}")
        return r

    yield start
    for r in started:
        r.stop()
        r.notify.close()


# --------------------------------------------------------------------------- control socket


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short, world-searchable directory for sockets: tmp_path can be too long for
    sun_path, and 0700 (closed to a client that dropped to nobody)."""
    path = Path(tempfile.mkdtemp(prefix="rld-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


class StubDaemon:
    """What ControlServer needs of the daemon, without one: a config naming the socket,
    the service names, the event listeners; commands are recorded, not carried out.
    Subclasses say what ``status`` and ``reload_config`` answer."""

    def __init__(
        self,
        sock: Path,
        services: dict[str, Any],
        group: str | int | None = None,
        mode: int = 0o666,
    ) -> None:
        from reloadd.config import Config, DaemonConfig

        daemon = DaemonConfig(socket=str(sock), socket_group=group, socket_mode=mode)
        self.config = Config("/etc/reloadd.toml", daemon, (), ())
        self.services = services
        self.listeners: set[Callable[[dict[str, Any]], None]] = set()
        self.calls: list[tuple[str, str]] = []

    def status(self) -> dict[str, Any]:
        raise NotImplementedError

    async def command(self, name: str, cmd: str) -> Any:
        self.calls.append((name, cmd))
        return None

    async def reload_config(self) -> tuple[bool, str]:
        raise NotImplementedError

    def emit(self, record: dict[str, Any]) -> None:
        for listener in list(self.listeners):
            listener(record)


@contextlib.contextmanager
def served(daemon: StubDaemon, **limits: Any) -> Iterator[ControlServer]:
    """The real ControlServer over ``daemon`` on its own loop in a thread, for clients
    that block (reloadctl, a forked client); yields the server, closed afterwards."""
    from reloadd.control import ControlServer

    loop = asyncio.new_event_loop()
    server = ControlServer(daemon, **limits)
    up = threading.Event()
    failed: list[BaseException] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.start())
        except BaseException as exc:
            failed.append(exc)
            up.set()
            return
        up.set()
        loop.run_forever()
        loop.run_until_complete(server.close())

    thread = threading.Thread(target=serve, name="control-server")
    thread.start()
    try:
        assert up.wait(DEADLINE), "the server thread did not start"
        assert not failed, failed
        yield server
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(DEADLINE)
        loop.close()


def recorded_service(tmp_path: Path, name: str, **keys: object) -> dict[str, object]:
    """The keys of a service ``name`` watching tmp_path/<name> (made here) whose target is
    a recorder logging to tmp_path/<name>.log; ``keys`` add to or replace them."""
    tree = tmp_path / name
    tree.mkdir(exist_ok=True)
    return {
        "watch": [str(tree)],
        "command": recorder_command(tmp_path / f"{name}.log"),
        "debounce": "50ms",
        **keys,
    }


def control_config(sock: Path, services: dict[str, dict[str, object]], daemon: str = "") -> str:
    """A config text: the control socket ``sock`` (plus ``daemon`` lines) and ``services``."""
    lines = ["[daemon]", f"socket = {toml_value(sock)}", daemon]
    for name, keys in services.items():
        lines.append(f"[services.{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


def start_recorded(
    start_reloadd: Callable[..., Reloadd],
    tmp_path: Path,
    sock: Path,
    services: dict[str, dict[str, object]],
    daemon: str = "",
) -> tuple[Reloadd, dict[str, Recording]]:
    """reloadd on the control socket ``sock`` with ``services`` (``recorded_service``
    ones); waits for READY=1 and for each service's recorder to start."""
    r = start_reloadd(control_config(sock, services, daemon))
    recs = {name: Recording(tmp_path / f"{name}.log") for name in services}
    for name, rec in recs.items():
        wait_for(rec.ready_pids, what=f"{name}'s recorder to start", detail=r.log)
    return r, recs


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The watch backend a scenario runs on; every scenario runs on each of BACKENDS."""
    return str(request.param)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start a helper process (e.g. a recorder behind a pidfile); killed afterwards."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True, **kwargs)  # type: ignore[call-overload]
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


@dataclass
class Scenario:
    """One reloadd with one service whose target is a recorder; see ``scenario``."""

    reloadd: Reloadd
    recording: Recording
    service: str
    sentinel_dir: Path

    def started_pids(self) -> list[int]:
        """The pids reloadd logged as started for the service (``app: started ... (pid N)``)."""
        found = re.findall(
            rf"^.* {re.escape(self.service)}: started .* \(pid (\d+)\)$", self.reloadd.log(), re.M
        )
        return [int(pid) for pid in found]

    @property
    def pid(self) -> int:
        """The service's current main pid, as reloadd logged it when it started it."""
        pids = self.started_pids()
        assert pids, f"{self.service} was never started\n{self.reloadd.log()}"
        return pids[-1]

    def reloads(self) -> list[ReloadLine]:
        return self.reloadd.reloads(self.service)

    def _detail(self) -> str:
        return f"recorded: {self.recording.lines()}\n--- reloadd log ---\n{self.reloadd.log()}"

    def wait_reloads(
        self, n: int, timeout: float = DEADLINE, signal: str | None = "SIGHUP"
    ) -> list[ReloadLine]:
        """Wait until ``n`` reloads were logged *and* (unless ``signal`` is None, as for
        ``action = "restart"``) ``n`` such signals recorded."""
        wait_for(
            lambda: (
                len(self.reloads()) >= n and (signal is None or self.recording.count(signal) >= n)
            ),
            timeout,
            f"{n} reload(s) of {self.service}",
            self._detail,
        )
        return self.reloads()

    def confirm(self, n: int, *, timeout: float = DEADLINE) -> list[ReloadLine]:
        """Prove that exactly ``n`` reloads happened and no other is still on its way.

        Writes a fresh sentinel file under ``sentinel_dir`` (a watched directory) and waits
        for the reload it causes: every change made before it has been read from the queue
        by then, so any extra reload would have come first or been merged into this one.
        Returns the ``n`` reload lines before the sentinel's.
        """
        self.wait_reloads(n, timeout)
        sentinel = self.sentinel_dir / f"sentinel-{n}-{time.monotonic_ns()}.txt"
        sentinel.write_text("sentinel\n")
        wait_for(
            lambda: any(str(sentinel) in r.paths for r in self.reloads()),
            timeout,
            f"the reload for {sentinel.name}",
            self._detail,
        )
        lines = self.reloads()
        assert len(lines) == n + 1, f"expected {n} reload(s) before the sentinel\n{self._detail()}"
        assert lines[-1].paths == (str(sentinel),), self._detail()
        self.recording.wait_count(n + 1, timeout=timeout)
        assert self.recording.count() == n + 1, self._detail()
        return lines[:n]


@pytest.fixture
def scenario(
    tmp_path: Path, start_reloadd: Callable[..., Reloadd]
) -> Iterator[Callable[..., Scenario]]:
    """Start reloadd with one service ``app`` supervising a recorder; wait for both.

    ``scenario(watch, debounce="300ms", sentinel_dir=None, recorder_args=(), **keys)``:
    ``watch`` is a path or a list of paths; ``keys`` are further service keys (a backend,
    ``max_delay="5s"``, ``exclude=[...]``; a ``command`` of your own replaces the recorder,
    it should still run recorders writing to ``tmp_path / "signals.log"``);
    ``sentinel_dir`` defaults to the first watch path; ``extra_toml`` adds services.
    """

    def start(
        watch: Path | str | list[Path | str],
        *,
        debounce: str = "300ms",
        sentinel_dir: Path | None = None,
        recorder_args: tuple[str, ...] = (),
        extra_toml: str = "",
        **keys: object,
    ) -> Scenario:
        paths = [str(p) for p in watch] if isinstance(watch, list) else [str(watch)]
        log = tmp_path / "signals.log"
        lines = [
            "[services.app]",
            f"watch = {toml_value(paths)}",
            f"command = {toml_value(keys.pop('command', recorder_command(log, *recorder_args)))}",
            f"debounce = {toml_value(debounce)}",
        ]
        if keys.get("backend") == "poll":
            keys.setdefault("poll_interval", "100ms")  # a change settles in two scans
        lines += [f"{key} = {toml_value(value)}" for key, value in keys.items()]
        lines += ["[daemon]", f"socket = {toml_value(tmp_path / 'control.sock')}"]
        r = start_reloadd("\n".join(lines) + "\n" + extra_toml)
        rec = Recording(log)
        scenarios.append(Scenario(r, rec, "app", sentinel_dir or Path(paths[0])))
        wait_for(lambda: rec.ready_pids(), what="the recorder to start", detail=r.log)
        return scenarios[-1]

    scenarios: list[Scenario] = []
    yield start
    # Stop reloadd (it stops its targets); should it have died instead, its targets'
    # process groups would outlive the test: end them.
    for s in scenarios:
        s.reloadd.stop()
        for pid in s.started_pids():
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
