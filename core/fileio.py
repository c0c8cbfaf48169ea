"""Crash-safe file writes: write a temporary file beside the target, fsync it, rename it into place.

A reader therefore sees either the old file or the new one, never half of one, even after `kill -9`
or a power cut.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot fsync a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# Names of models and studies: a full match, so that a trailing newline (which `$` accepts) is refused.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def valid_name(name: str | None) -> bool:
    return bool(name) and NAME_PATTERN.fullmatch(name) is not None and name not in (".", "..")


def printable(text: str) -> str:
    """`text` with what cannot be written as UTF-8 (a file name's undecodable bytes, carried by Python as lone
    surrogates) shown as U+FFFD, so that it can go into JSON, a card or a log."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


TEMP_GLOB = ".*.tmp"  # the temporary files atomic_path writes beside their target


def remove_stale_temps(folder: Path) -> int:
    """Delete the temp files a process killed mid-write left in `folder`; returns how many."""
    stale = [path for path in Path(folder).glob(TEMP_GLOB) if path.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it replaces `target` atomically."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)  # TEMP_GLOB
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: Path, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def append_line(path: Path, line: str) -> None:
    """Append one line and flush it to disk, so a crash keeps every line written before it."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line.rstrip("\n") + "\n")
        handle.flush()
        os.fsync(handle.fileno())
