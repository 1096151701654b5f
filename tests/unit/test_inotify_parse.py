"""The inotify event parser: bytes as the kernel lays them out -> (wd, mask, name).

The byte strings are built here with the kernel's ``struct inotify_event`` layout, which is
the only way to give the parser an exact sequence (the real kernel is exercised by every
integration test); one test checks the layout against a real inotify fd.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import inotify_simple

from reloadd.watch.inotify import F, ignored, overflowed, parse


def event(wd: int, mask: int, name: bytes = b"", pad: int = 16) -> bytes:
    """One ``struct inotify_event``: the name NUL-padded to a multiple of ``pad``."""
    size = 0 if not name else (len(name) // pad + 1) * pad
    return struct.pack("iIII", wd, mask, 0, size) + name.ljust(size, b"\0")


def test_names_are_decoded_like_os_fsdecode_and_padding_is_dropped() -> None:
    data = event(1, F.CREATE, b"app.py") + event(2, F.DELETE, b"caf\xc3") + event(1, F.ATTRIB)
    assert not overflowed(data)
    assert parse(data) == [
        (1, F.CREATE, "app.py"),
        (2, F.DELETE, os.fsdecode(b"caf\xc3")),
        (1, F.ATTRIB, ""),
    ]


def test_a_modify_directly_followed_by_its_close_is_one_event() -> None:
    data = (
        event(1, F.MODIFY, b"a.py")
        + event(1, F.CLOSE_WRITE, b"a.py")
        + event(1, F.MODIFY, b"b.py")  # closed later, after another file's event: kept
        + event(1, F.MODIFY, b"c.py")
        + event(1, F.CLOSE_WRITE, b"b.py")
        + event(2, F.MODIFY, b"c.py")  # same name in another directory: kept
        + event(1, F.CLOSE_WRITE, b"c.py")
    )
    assert parse(data) == [
        (1, F.CLOSE_WRITE, "a.py"),
        (1, F.MODIFY, "b.py"),
        (1, F.MODIFY, "c.py"),
        (1, F.CLOSE_WRITE, "b.py"),
        (2, F.MODIFY, "c.py"),
        (1, F.CLOSE_WRITE, "c.py"),
    ]


def test_overflow_and_ignored_records_are_found_only_where_events_start() -> None:
    # the patterns' bytes as far as a name (no NUL inside) or another header can hold them
    decoys = event(7, F.CREATE, b"\xff" * 4) + event(32768, F.CREATE, b"\x80" * 15)
    assert not overflowed(decoys)
    assert ignored(decoys) == []
    data = decoys + event(32768, F.IGNORED) + event(1, F.CREATE, b"x") + event(-1, F.Q_OVERFLOW)
    assert overflowed(data)
    assert ignored(data) == [32768]
    assert ignored(event(3, F.IGNORED) + event(5, F.DELETE_SELF) + event(5, F.IGNORED)) == [3, 5]


def test_the_layout_matches_the_real_kernel(tmp_path: Path) -> None:
    ino = inotify_simple.INotify(nonblocking=True)
    try:
        wd = ino.add_watch(str(tmp_path), F.CREATE | F.MODIFY | F.CLOSE_WRITE)
        (tmp_path / "a-rather-long-file-name.txt").write_bytes(b"x")
        data = os.read(ino.fileno(), 1 << 16)
    finally:
        ino.close()
    assert not overflowed(data)
    assert parse(data) == [
        (wd, F.CREATE, "a-rather-long-file-name.txt"),
        (wd, F.CLOSE_WRITE, "a-rather-long-file-name.txt"),
    ]


def test_the_flags_are_the_kernels() -> None:
    for name in vars(F):
        if not name.startswith("_"):
            assert getattr(F, name) == int(inotify_simple.flags[name]), name
