"""The demo service that examples/reloadd.toml supervises.

It "serves" the settings in app/settings.toml: it reads them at start and again on
SIGHUP, and says so on stderr, so you can watch reloadd reload it when you edit the file.
``server.py --check`` only validates the settings (reloadd runs it before every reload:
a broken edit is refused and the running demo keeps its last good settings).
"""

import os
import signal
import sys
import time
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

SETTINGS = Path(__file__).with_name("app") / "settings.toml"


def load() -> dict:
    with open(SETTINGS, "rb") as f:
        settings = tomllib.load(f)
    if not isinstance(settings.get("version"), int):
        raise ValueError(f"{SETTINGS}: `version` must be a whole number")
    return settings


def say(text: str) -> None:
    print(f"demo[{os.getpid()}]: {text}", file=sys.stderr, flush=True)


def main() -> int:
    if sys.argv[1:] == ["--check"]:
        try:
            load()
        except (OSError, ValueError) as exc:
            print(f"settings rejected: {exc}", file=sys.stderr)
            return 1
        return 0

    settings = load()
    say(f"serving version {settings['version']}: {settings.get('greeting', '')!r}")

    def reload(signum: int, _frame: object) -> None:
        nonlocal settings
        settings = load()
        name = signal.Signals(signum).name
        say(f"got {name}; now serving version {settings['version']}: {settings.get('greeting', '')!r}")

    def stop(signum: int, _frame: object) -> None:
        say(f"got {signal.Signals(signum).name}; bye")
        sys.exit(0)

    signal.signal(signal.SIGHUP, reload)
    signal.signal(signal.SIGTERM, stop)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
