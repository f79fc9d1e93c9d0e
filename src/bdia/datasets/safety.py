"""What keeps a many-inputs run (:mod:`bdia.datasets.batch`) inside its output folder and off its inputs.

- :func:`name_problem`: an output name taken from a manifest or list must be a plain relative path.
- :func:`inside`: a path taken from a list or manifest must stay inside the list's folder.
- :func:`check_folders`: the output folder must not be, contain or lie inside an input folder.
- :func:`read_list_rows`: .txt/.csv/.jsonl lists read with the csv and json modules (utf-8-sig, newline="").
- :class:`OutputLock`: one run at a time per output folder; a lock left by a killed run is taken over.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import socket
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["LOCK", "OutputLock", "check_folders", "inside", "name_problem", "read_list_rows", "record_problem"]

LOCK = ".bdia-lock"  # hidden: folder scans skip it


def name_problem(name: Any) -> str | None:
    """Why ``name`` cannot name an output inside the output folder (None: it can)."""
    if not isinstance(name, str) or not name:
        return f"the name {name!r} is not a non-empty string"
    if "\\" in name or "\0" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return f"the name {name[:80]!r} is not a relative path"
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return f"the name {name[:80]!r} has an empty, '.' or '..' part"
    if any(p.startswith(".") for p in parts):
        return f"the name {name[:80]!r} has a hidden part (starting with '.')"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return (
            f"the name {name.encode('utf-8', 'backslashreplace').decode()[:80]!r} is not valid UTF-8; rename the file"
        )
    if any(ord(c) < 32 for c in name):
        return f"the name {name[:80]!r} holds control characters"
    return None


def inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """True when ``path`` (relative paths taken from ``folder``) lies inside ``folder``, by name and by links."""
    folder = os.path.abspath(folder)
    p = os.path.normpath(os.path.join(folder, path))
    if os.path.commonpath([p, folder]) != folder:
        return False
    real, real_folder = os.path.realpath(p), os.path.realpath(folder)
    return os.path.commonpath([real, real_folder]) == real_folder


def _contains(outer: Path, inner: Path) -> bool:
    return outer == inner or outer in inner.parents


def check_folders(inputs: list[Path], sources: list[str], out: Path) -> None:
    """Refuse (ValueError) an output folder that is, contains or lies inside an input folder, or holds an input."""
    out_r = Path(os.path.realpath(out))
    for given in inputs:
        if given.is_dir():
            f = Path(os.path.realpath(given))
            if _contains(f, out_r) or _contains(out_r, f):
                where = "is" if f == out_r else "lies inside" if _contains(f, out_r) else "contains"
                raise ValueError(
                    f"the output folder {os.fspath(out)!r} {where} the input folder {os.fspath(given)!r}: "
                    "outputs would replace inputs or be read back as inputs; choose a separate "
                    "output folder"
                )
    for s in sources:
        if _contains(out_r, Path(os.path.realpath(s))):
            raise ValueError(
                f"the input {s!r} lies inside the output folder {os.fspath(out)!r}; it could be replaced "
                "by an output; choose a separate output folder"
            )


def read_list_rows(path: Path) -> tuple[str, list[dict[str, Any]]]:
    """The rows of a list: ("txt"|"csv"|"jsonl", [{"path":..., "prompt":...} or a JSON object per line]).

    Read as the csv and json modules expect (a BOM dropped, quoted newlines kept); ValueError on bad text.
    """
    suffix = path.suffix.lower()
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            if suffix == ".csv":
                reader = csv.DictReader(f)
                return "csv", [dict(r, _fields=reader.fieldnames) for r in reader]
            text = f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save the list as UTF-8") from None
    except csv.Error as e:
        raise ValueError(f"{path}: not a valid CSV file ({e})") from None
    lines = [ln.removesuffix("\r") for ln in text.split("\n")]  # only \n ends a line
    if suffix == ".txt":
        rows = []
        for line in lines:
            if line.strip() and not line.lstrip().startswith("#"):
                file, tab, prompt = line.partition("\t")
                rows.append({"path": file.strip(), "prompt": prompt if tab and prompt else None})
        return "txt", rows
    records = []
    for k, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except (json.JSONDecodeError, RecursionError):
            raise ValueError(f"{path}: line {k} is not valid JSON") from None
        if not isinstance(records[-1], dict):
            raise ValueError(f"{path}: line {k} is not a JSON object")
    return "jsonl", records


def record_problem(r: Any) -> str | None:
    """Why a manifest record cannot be used (None: it can)."""
    if not isinstance(r, dict):
        return "not a JSON object"
    problem = name_problem(r.get("name"))
    if problem:
        return problem
    if not isinstance(r.get("status"), str):
        return "its status is not a string"
    out = r.get("output")
    if out is not None and (not isinstance(out, str) or name_problem(out)):
        return f"its output {out!r:.80} is not a relative path inside the folder"
    if r.get("sha256") is not None and not isinstance(r.get("sha256"), str):
        return "its sha256 is not a string"
    t = r.get("time", 0)
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        return "its time is not a number"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


class OutputLock:
    """An exclusive lock on an output folder, held for a whole run (``.bdia-lock`` inside it).

    On POSIX an ``flock`` on the file: the kernel releases it when the holder dies, even by kill -9, so a
    stale lock is taken over by the next run (which says so). Elsewhere the file's pid is checked.
    """

    def __init__(self, folder: Path):
        self.path = folder / LOCK
        self.fd: int | None = None
        self.took_over: dict[str, Any] | None = None  # the holder recorded by a lock left by a dead run

    def _holder(self) -> dict[str, Any]:
        with contextlib.suppress(OSError, ValueError):
            d = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(d, dict):
                return d
        return {}

    def _busy(self, holder: dict[str, Any]) -> ValueError:
        pid = holder.get("pid", "unknown")
        return ValueError(
            f"{self.path.parent} is in use by another bdia run (pid {pid} on "
            f"{holder.get('host', 'this machine')}, since {holder.get('started', '?')}); wait for it "
            "to finish or choose another output folder"
        )

    def acquire(self) -> None:
        fcntl: ModuleType | None
        try:
            import fcntl
        except ImportError:  # no flock (Windows): an exclusive create, a dead pid's file taken over
            fcntl = None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | (0 if fcntl else os.O_EXCL), 0o644)
            except FileExistsError:  # only without flock: the file is the lock
                fd = None
            if fd is None:
                holder = self._holder()
                if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", 0) or 0)):
                    self.took_over = holder
                    with contextlib.suppress(FileNotFoundError):
                        self.path.unlink()
                    continue
                raise self._busy(holder)
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    raise self._busy(self._holder()) from None
                try:  # the file may have been removed by its releasing holder after we opened it: retry
                    same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
                previous = self._holder()
                if previous.get("pid") and previous.get("pid") != os.getpid():
                    self.took_over = previous  # its holder died without releasing: kill -9, power loss
            self.fd = fd
            info = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join(sys.argv)[:300],
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
            return

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # before closing: a run waiting on the old file then retries on a new one
        os.close(self.fd)
        self.fd = None
