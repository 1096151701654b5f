"""The floor: the least a Python watcher can do, as the physical limit to compare against.

``python bench/floor.py ROOT PID`` puts an inotify watch on every directory under ROOT (``.git``
skipped, as every real watcher skips it), sends ``READY=1`` to ``$NOTIFY_SOCKET`` when armed,
and then sends SIGHUP to PID as soon as a read returns any event: no debounce, no filtering, no
bookkeeping beyond watching new directories.
"""

from __future__ import annotations

import os
import signal
import socket
import sys

from inotify_simple import INotify, flags

MASK = flags.CLOSE_WRITE | flags.MOVED_TO | flags.MOVED_FROM | flags.CREATE | flags.DELETE


def arm(inotify: INotify, root: str, paths: dict[int, str]) -> None:
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            paths[inotify.add_watch(directory, MASK)] = directory
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.name != ".git" and entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except OSError:
            continue  # gone already


def notify_ready() -> None:
    address = os.environ.get("NOTIFY_SOCKET")
    if address:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"READY=1", address)


def main() -> int:
    root, pid = sys.argv[1], int(sys.argv[2])
    inotify = INotify()
    paths: dict[int, str] = {}
    arm(inotify, root, paths)
    notify_ready()
    while True:
        events = inotify.read()
        os.kill(pid, signal.SIGHUP)
        for event in events:
            if event.mask & flags.ISDIR and event.mask & (flags.CREATE | flags.MOVED_TO):
                parent = paths.get(event.wd)
                if parent:
                    arm(inotify, os.path.join(parent, event.name), paths)


if __name__ == "__main__":
    sys.exit(main())
