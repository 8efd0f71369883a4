"""Crash-safe file writing: every file the project writes itself goes through here."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike, mode: str = "w", *, durable: bool = True, **open_kwargs: Any
) -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it over ``path`` only if the block finishes.

    A kill or an exception mid-write leaves the previous ``path`` (or nothing) in place, never half a file:
    ``os.replace`` is atomic on POSIX when source and destination are on the same file system, which the
    temporary file in the same directory guarantees. ``durable=False`` skips the ``fsync`` before the
    rename, for bulk outputs (thousands of corpus WAVs, where it was most of the write time) whose writer
    syncs once and then writes a completion marker durably.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write(text)
