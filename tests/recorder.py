"""A target process for tests: records every signal it receives, one line each.

    python recorder.py LOG [--ignore-term] [--children N] [--pidfile PATH]

Each line of LOG is ``<SIGNAME> <pid>``; the first line of each process is ``READY <pid>``.
With --children N it forks N children in its process group that record too (for
``scope = "group"``). SIGTERM/SIGINT are recorded and then end the process, unless
--ignore-term (a target that must be SIGKILLed). Deliberately no dependencies.
"""

import argparse
import os
import signal
import sys

RECORDED = ("SIGHUP", "SIGUSR1", "SIGUSR2", "SIGTERM", "SIGINT", "SIGQUIT", "SIGWINCH")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("log")
    p.add_argument("--ignore-term", action="store_true")
    p.add_argument("--children", type=int, default=0)
    p.add_argument("--pidfile")
    args = p.parse_args()

    def record(text: str) -> None:
        fd = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{text} {os.getpid()}\n".encode())
        finally:
            os.close(fd)

    def handler(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        record(name)
        if name in ("SIGTERM", "SIGINT") and not args.ignore_term:
            os._exit(0)

    for name in RECORDED:
        signal.signal(getattr(signal, name), handler)
    for _ in range(args.children):
        if os.fork() == 0:
            record("READY")
            while True:
                signal.pause()
    if args.pidfile:
        tmp = args.pidfile + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(tmp, args.pidfile)
    record("READY")
    sys.stdout.flush()
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
