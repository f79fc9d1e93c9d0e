"""Writing outputs safely: atomically, and never over an existing file unless asked."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


def check_writable(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse an existing output before any work is done; return the path."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise FileExistsError(f"{p} already exists; choose another output or pass overwrite=True (--overwrite)")
    if p.exists() and p.is_dir():
        raise IsADirectoryError(f"{p} is a directory, expected a file path")
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it into place in one rename.

    An interrupted write leaves the old file (if any) untouched and no partial file behind.
    """
    target = check_writable(path, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix or ".tmp", dir=target.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; outputs should read like any other file
    try:
        yield Path(tmp)
        if not overwrite and target.exists():
            raise FileExistsError(f"{target} appeared while writing; not overwriting it")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | os.PathLike, text: str, overwrite: bool = False) -> Path:
    with atomic_path(path, overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
