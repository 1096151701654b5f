"""The watchfiles peer: ``python bench/watchfiles_peer.py ROOT PID``.

Sends SIGHUP to PID for every batch ``watchfiles.watch`` yields, with its defaults (a batch
ends after 50 ms without changes, ``step``, or after 1,600 ms in all, ``debounce``) and its
default filter (which skips ``.git`` and the like).

watchfiles has no readiness signal of its own. Its ``RustNotify`` adds every watch in its
constructor, so the constructor is wrapped to send ``READY=1`` to ``$NOTIFY_SOCKET`` the moment
it returns; ``watchfiles.watch`` itself runs unchanged.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any

import watchfiles
import watchfiles.main

_RustNotify = watchfiles.main.RustNotify


def _armed_rust_notify(*args: Any) -> Any:
    watcher = _RustNotify(*args)
    address = os.environ.get("NOTIFY_SOCKET")
    if address:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"READY=1", address)
    return watcher


def main() -> int:
    root, pid = sys.argv[1], int(sys.argv[2])
    watchfiles.main.RustNotify = _armed_rust_notify  # type: ignore[misc]
    for _changes in watchfiles.watch(root):
        os.kill(pid, signal.SIGHUP)
    return 0


if __name__ == "__main__":
    sys.exit(main())
