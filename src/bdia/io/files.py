"""Writing outputs safely: atomically, and never over an existing file unless asked.

A write goes to a short hidden temporary beside the target, ``.bdia.<hash of the target name>.<pid>.<random><suffix>``,
renamed into place when complete. The name stays short whatever the target's length (so a legal name
never overflows the file system's limit), and the pid lets the next write to the same target remove
temporaries that a killed process (SIGKILL, power loss) left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

_TEMP_PREFIX = ".bdia."


def _name_max(directory: Path) -> int:
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows) or the folder does not exist yet
        return 255


def _existing_ancestor(p: Path) -> Path:
    """The nearest folder above ``p`` that exists (``atomic_path`` makes the ones below it)."""
    parent = p.absolute().parent
    while parent != parent.parent:
        try:
            if parent.exists():
                break
        except OSError:  # a component too long to stat: keep climbing, the length check names it
            pass
        parent = parent.parent
    return parent


def check_writable(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse an output that cannot be written, before any work is done; return the path.

    Refused: an existing file (unless ``overwrite``), a directory, a name longer than the file
    system allows, and a folder that exists but is not a folder or cannot be written.
    """
    p = Path(path)
    limit = _name_max(_existing_ancestor(p))
    for part in p.parts:  # checked first: stat() itself fails on a name that is too long
        if len(os.fsencode(part)) > limit:
            raise ValueError(
                f"output name {part[:40]!r}... is {len(os.fsencode(part))} bytes long; "
                f"the file system allows {limit}; choose a shorter name"
            )
    if p.exists() and p.is_dir():
        raise IsADirectoryError(f"{p} is a directory; give a file name for the output")
    if p.exists() and not overwrite:
        raise FileExistsError(f"{p} already exists; choose another output or pass overwrite=True (--overwrite)")
    folder = _existing_ancestor(p)
    if not folder.is_dir():
        raise NotADirectoryError(f"cannot write {p}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {p}: no write permission in {folder}; choose another output folder")
    _probe(folder, p)
    return p


def _probe(folder: Path, target: Path) -> None:
    """Create and remove a file in ``folder``: os.access says yes to root even where nothing can be created."""
    try:
        fd, name = tempfile.mkstemp(prefix=_TEMP_PREFIX + "probe.", dir=folder)
    except OSError as e:
        raise PermissionError(
            f"cannot write {target}: {folder} refuses new files ({e.strerror or e}); choose another output folder"
        ) from None
    os.close(fd)
    os.unlink(name)


def check_output_dir(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse, before any work is done, an output folder that is a file, is not empty (unless
    ``overwrite``) or cannot be written; return it (the writes create it)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise NotADirectoryError(f"{p} exists and is not a folder; choose another output folder")
    if p.is_dir() and any(p.iterdir()) and not overwrite:
        raise FileExistsError(f"{p}/ is not empty; choose another output folder or pass --overwrite")
    check_writable(p / "results.json", overwrite=True)  # the folder, or the nearest one above it that exists
    return p


def _temp_prefix(target: Path) -> str:
    """The hidden temporary name's fixed part for ``target`` (without pid and random part)."""
    digest = hashlib.sha256(os.fsencode(target.name)).hexdigest()[:10]
    return f"{_TEMP_PREFIX}{digest}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # exists but belongs to someone else, or cannot tell: keep the file
        return True
    return True


def remove_stale_temporaries(target: str | os.PathLike) -> list[Path]:
    """Delete temporaries of ``target`` whose writing process is gone; return what was removed."""
    target = Path(target)
    prefix = _temp_prefix(target)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix) or not entry.is_file(follow_symlinks=False):
            continue
        pid_text = entry.name[len(prefix) :].split(".", 1)[0]
        if not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
        with contextlib.suppress(FileNotFoundError):  # another writer cleaned it first
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def _umask() -> int:
    try:  # Linux states it; reading it there avoids setting the process-wide umask, even for a moment
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _file_mode() -> int:
    """0666 less the process umask: what ``open()`` gives a new file (0644 under the usual umask 022)."""
    return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it into place in one rename.

    An interrupted write leaves the old file (if any) untouched and no partial file behind; a
    killed one leaves a hidden temporary that the next write to the same target removes. The
    temporary keeps the target's suffix (writers such as PIL pick the format from it).
    """
    target = check_writable(path, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    prefix = f"{_temp_prefix(target)}{os.getpid()}."
    suffix = target.suffix or ".tmp"
    if len(os.fsencode(prefix + "XXXXXXXX" + suffix)) > _name_max(target.parent):
        suffix = ".tmp"  # a suffix this long names no format a writer knows
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if not overwrite and target.exists():
            raise FileExistsError(f"{target} appeared while writing; not overwriting it")
        # Writers may recreate the file (safetensors writes 0600); give it the mode of any new file.
        os.chmod(tmp, _file_mode())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | os.PathLike, text: str, overwrite: bool = False) -> Path:
    with atomic_path(path, overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
