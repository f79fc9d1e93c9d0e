"""Writing outputs safely: checked before any work, written atomically, never over an existing file unless asked."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

_TMP_PREFIX = ".bdia-tmp-"  # hidden temporaries: .bdia-tmp-<hash of the target name>-<pid><suffix>


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):  # not on this platform or file system
        return 255


def _existing_ancestor(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe(folder: Path) -> None:
    """Create and remove a file in ``folder``: the only true test of writability (root ignores modes)."""
    try:
        fd, name = tempfile.mkstemp(prefix=_TMP_PREFIX + "probe-", dir=folder)
    except OSError as e:
        raise PermissionError(f"cannot write into {folder}/ ({e.strerror or e}); choose another output "
                              "location") from None
    os.close(fd)
    os.unlink(name)


def check_writable(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse, before any work is done, an output that could not be written; return the path.

    FileExistsError for an existing file without ``overwrite``; IsADirectoryError for a folder;
    NotADirectoryError when a parent is a file; ValueError for a name the file system cannot hold;
    PermissionError when the folder cannot be written.
    """
    p = Path(path)
    limit = _name_max(_existing_ancestor(p.parent))
    if len(os.fsencode(p.name)) > limit:  # checked first: stat() itself fails on such a name
        raise ValueError(f"output name {p.name[:24]}...{p.name[-12:]} is {len(os.fsencode(p.name))} bytes, longer "
                         f"than the file system allows ({limit}); choose a shorter name")
    if p.is_dir():
        raise IsADirectoryError(f"{p} is a folder; give a file name (e.g. {p / 'out'}{p.suffix or '.png'})")
    if p.exists() and not overwrite:
        raise FileExistsError(f"{p} already exists; choose another output or pass overwrite=True (--overwrite)")
    folder = _existing_ancestor(p.parent)
    if not folder.is_dir():
        raise NotADirectoryError(f"cannot write {p}: {folder} is a file, not a folder")
    _probe(folder)
    return p


def check_output_dir(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse, before any work is done, an output folder that is a file, not empty (unless ``overwrite``)
    or not writable; return it (it is created when results are written)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise NotADirectoryError(f"{p} exists and is not a folder; choose another output folder")
    if p.is_dir() and any(q for q in p.iterdir() if not q.name.startswith(_TMP_PREFIX)) and not overwrite:
        raise FileExistsError(f"{p}/ is not empty; choose another output folder or pass --overwrite")
    folder = _existing_ancestor(p)
    if not folder.is_dir():
        raise NotADirectoryError(f"cannot create {p}/: {folder} is a file, not a folder")
    _probe(folder)
    return p


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _tmp_stem(target: Path) -> str:
    return _TMP_PREFIX + hashlib.sha1(target.name.encode("utf-8", "surrogateescape")).hexdigest()[:12] + "-"


def _remove_stale(target: Path) -> None:
    """Remove temporaries for ``target`` left by a killed writer (its process is gone)."""
    stem = _tmp_stem(target)
    for q in target.parent.glob(stem + "*"):
        pid = q.name[len(stem):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                q.unlink()


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it into place in one rename.

    An interrupted write leaves the old file (if any) untouched and no partial file behind; a
    temporary left by a killed process is removed by the next write to the same target. The
    temporary's name is short (a hash of the target's), so any name the file system allows works.
    """
    target = check_writable(path, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(target)
    # <stem><pid>.<random><suffix>: the pid lets a later write tell a dead writer's leftovers from a live
    # one's; the random part lets one process write the same target twice at once; the suffix stays
    # because writers such as PIL pick the format from it.
    fd, name = tempfile.mkstemp(prefix=f"{_tmp_stem(target)}{os.getpid()}.", suffix=target.suffix[:16] or ".tmp",
                                dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if not overwrite and target.exists():
            raise FileExistsError(f"{target} appeared while writing; not overwriting it")
        os.chmod(tmp, _file_mode())  # like any other file, whatever the writer (safetensors makes 0600 files)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | os.PathLike, text: str, overwrite: bool = False) -> Path:
    with atomic_path(path, overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
