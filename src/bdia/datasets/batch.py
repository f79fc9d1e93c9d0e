"""Many images at once: batched, resumable inversion, reconstruction and editing, sharded over processes.

    from bdia.datasets.batch import invert_files, reconstruct_files
    from bdia.editing import load_editor
    editor = load_editor("digits")                                                # or a Stable Diffusion model
    invert_files(editor, ["digits/"], "inverted/", batch_size=8, num_steps=50)   # one .safetensors per image
    reconstruct_files(editor, ["inverted/"], "again/")                            # one .png per inversion

Inputs are image files, folders (searched recursively, in sorted order, for image extensions) and
lists: ``.txt`` (one path a line, optionally ``<TAB>prompt``), ``.csv`` (a header with ``path`` and
optionally ``prompt``) or ``.jsonl`` (``{"path": ..., "prompt": ...}`` a line); a list's relative
paths are relative to the list's folder. Reconstruction and editing take saved inversions the same
way, or the ``manifest.jsonl`` of an inversion run. Each input gets one output under ``out_dir``
whose name is derived from the input's path (its path inside the folder it was found in), and one
record in ``out_dir/manifest.jsonl``: name, source, output, sha256, prompt, status, error, seconds.

Safety (docs/datasets.md): every output is written atomically (``bdia.io.atomic_path``), with a
"writing" record (its checksum) fsynced before the rename and a "done" record after, so a killed run
loses no finished result and leaves no partial file at an output path. A rerun skips an input whose
output this folder's manifest recorded with the same checksum, settings and source checksum; a file
bdia did not write is never adopted nor replaced, and one made otherwise is refused (recomputed with
``overwrite=True``), saying what differs. Names and paths from lists and manifests stay inside their
folders, an output folder overlapping an input folder is refused, and the folder is locked for the run
(:mod:`bdia.datasets.safety`). An input that cannot be used is recorded as failed and the run goes on.

Batches: images of one size are batched in input order (``batch_size``). A float32 network's
kernels block their sums by batch size, so an image's result depends in its last bits on the batch
it was computed in (up to 3e-6 on the digits model's latents). Batches are therefore fixed by the
whole input list before anything is skipped or sharded: a batch with any missing output is computed
whole, and processes receive whole batches. The same inputs and ``batch_size`` give the same files
bit for bit, whatever the number of processes and however often the run was interrupted.

Processes: launched with ``torchrun`` or ``accelerate launch``, the batches are split with
accelerate's ``PartialState().split_between_processes``; each process writes its own outputs and its
own manifest part (``manifest.part-RANK.jsonl``), which the first process merges into
``manifest.jsonl`` once every process is done. A run killed before the merge leaves the parts;
:func:`read_manifest` reads the manifest and the parts together, and the next run merges them.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch

from ..io.files import atomic_path
from ..io.saved import ImageInversion, load_inversion, save_inversion
from ..solvers import Inversion
from .safety import OutputLock, check_folders, inside, name_problem, read_list_rows, record_problem

__all__ = [
    "IMAGE_EXTENSIONS",
    "Item",
    "Summary",
    "find_inputs",
    "plan_batches",
    "iter_inversions",
    "split_inversion",
    "stack_inversions",
    "invert_files",
    "reconstruct_files",
    "edit_files",
    "read_manifest",
    "file_sha256",
    "MANIFEST",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
LIST_EXTENSIONS = (".txt", ".csv", ".jsonl")
INVERSION_EXTENSION = ".safetensors"
MANIFEST = "manifest.jsonl"
_PATH_COLUMNS = ("path", "image", "file", "source", "inversion")


# ----- inputs ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    """One input: its file, the output name derived from it (relative to the output folder, without
    extension) and the prompt a list gave it (None: the run's prompt)."""

    source: str
    name: str
    prompt: str | None = None
    error: str | None = None  # why this input is refused (a bad list or manifest record): recorded as failed


def _name_of(path: Path, root: Path | None) -> str:
    """``path`` inside ``root`` without its extension (``a/b/x.png`` in ``a`` -> ``b/x``), else the stem."""
    if root is not None:
        with contextlib.suppress(ValueError):
            rel = path.relative_to(root)
            if ".." not in rel.parts:
                return rel.with_suffix("").as_posix()
    return path.stem


def _scan(folder: Path, extensions: tuple[str, ...]) -> list[Item]:
    """Files under ``folder`` with those extensions, recursively, sorted; hidden files (an interrupted
    write's temporary files) and hidden folders are left out."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if not f.startswith(".") and f.lower().endswith(extensions):
                found.append(Path(dirpath) / f)
    return [Item(os.fspath(p), _name_of(p, folder)) for p in sorted(found, key=lambda p: p.relative_to(folder).parts)]


def _list_rows(path: Path) -> list[tuple[str, str | None, str | None, str | None]]:
    """(path, prompt, name, problem) per entry of a .txt/.csv/.jsonl list, or the done records of a manifest.
    A path must lie inside the list's folder and a manifest's name be a plain relative one, else ``problem``."""
    kind, records = read_list_rows(path)
    rows: list[tuple[str, str | None, str | None, str | None]] = []
    if kind == "csv":
        fields = records[0]["_fields"] if records else None
        column = next((c for c in _PATH_COLUMNS if c in (fields or [])), None)
        if column is None:
            with open(path, encoding="utf-8-sig", newline="") as f:
                fields = next(csv.reader(f), None)
            raise ValueError(
                f"{path}: a CSV list needs a header with a 'path' column (and optionally 'prompt'), "
                f"got columns {fields}"
            )
        records = [
            {"path": r.get(column), "prompt": r.get("prompt") or None} for r in records if (r.get(column) or "").strip()
        ]  # an empty prompt cell: the run's prompt
    elif kind == "jsonl" and records and all("status" in r and "output" in r for r in records):
        good = []  # a manifest: its finished outputs
        for r in records:
            problem = record_problem(r)
            if problem is None:
                good.append(r)
            else:
                rows.append((str(r.get("output"))[:200], None, None, f"{path}: a bad record ({problem})"))
        for r in _latest(good).values():
            if r.get("status") != "done":
                continue
            out = r["output"]
            if out is None or not inside(out, path.parent):
                rows.append((str(out), None, None, f"{path}: record {r['name']!r} names an output outside its folder"))
            else:
                rows.append((out, None, r["name"], None))
        return rows
    for k, r in enumerate(records, 1):
        column = next((c for c in _PATH_COLUMNS if c in r), None)
        if column is None:
            raise ValueError(f"{path}: record {k} has no 'path' field")
        prompt = r.get("prompt")
        rows.append((str(r[column]), None if prompt is None else str(prompt), None, None))
    return [
        (
            f,
            pr,
            n,
            e
            if e
            else None
            if inside(f, path.parent) and not os.path.isabs(f)
            else f"{path}: {f[:200]!r} is not inside the list's folder (lists name files relative to their "
            "folder, without '..')",
        )
        for f, pr, n, e in rows
    ]


def find_inputs(inputs: str | os.PathLike | Iterable[str | os.PathLike], kind: str = "image") -> list[Item]:
    """The inputs of a run, in order: files, folders (recursive, sorted) and lists (.txt/.csv/.jsonl).

    ``kind`` is "image" (inputs to invert) or "inversion" (saved inversions to reconstruct or edit;
    a folder is searched for ``.safetensors`` files, and an inversion run's manifest gives its outputs).
    Raises FileNotFoundError for a missing input and ValueError when two inputs would share an output
    name or nothing is found.
    """
    if kind not in ("image", "inversion"):
        raise ValueError(f"kind must be 'image' or 'inversion', got {kind!r}")
    extensions = IMAGE_EXTENSIONS if kind == "image" else (INVERSION_EXTENSION,)
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    items: list[Item] = []
    for given in inputs:
        p = Path(given)
        if p.is_dir():
            items += _scan(p, extensions)
        elif not p.is_file():
            raise FileNotFoundError(f"no file or folder at {os.fspath(p)!r}")
        elif p.suffix.lower() in LIST_EXTENSIONS:
            for k, (file, prompt, name, problem) in enumerate(_list_rows(p)):
                q = p.parent / file
                if problem is None:
                    name = name or _name_of(q, p.parent)
                    problem = name_problem(name)
                items.append(
                    Item(
                        os.fspath(q),
                        f"{p.name}:{k + 1}" if problem else cast(str, name),  # named above when no problem
                        prompt,
                        problem and f"refused: {problem}",
                    )
                )
        else:  # a file given by name: a wrong or damaged one is recorded as failed, not refused here
            items.append(Item(os.fspath(p), p.stem))
    if not items:
        raise ValueError(f"no {'images' if kind == 'image' else 'inversion files'} found in {list(map(str, inputs))}")
    seen: dict[str, str] = {}
    # A file name that cannot be an output name (not UTF-8...) is refused as failed, not written unreadably.
    items = [
        it
        if it.error or not name_problem(it.name)
        else dataclasses.replace(it, error=f"refused: {name_problem(it.name)}")
        for it in items
    ]
    for it in items:
        if it.error is not None:
            continue
        if it.name in seen:
            raise ValueError(
                f"{seen[it.name]!r} and {it.source!r} would both be written as {it.name!r}; "
                "rename one, or run them separately with different output folders"
            )
        seen[it.name] = it.source
    return items


def plan_batches(keys: Sequence[Any], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of equal key (image size...), in input order; None keys are left out.

    A batch is emitted as soon as it is full; the partial batches follow, in the order their keys
    first appeared. Depends on nothing but the keys, so every process and every rerun agrees.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    open_batches: dict[Any, list[int]] = {}
    batches = []
    for i, key in enumerate(keys):
        if key is None:
            continue
        batch = open_batches.setdefault(key, [])
        batch.append(i)
        if len(batch) == batch_size:
            batches.append(open_batches.pop(key))
    return batches + list(open_batches.values())


# ----- one inversion per image ------------------------------------------------------------------------------
def split_inversion(inv: ImageInversion) -> list[ImageInversion]:
    """One single-image :class:`ImageInversion` per image of a batch (timings dropped: a saved file
    then depends on nothing but its image, prompt and settings)."""
    core = inv.inversion
    out = []
    for k in range(inv.batch_size):
        one = Inversion(
            tuple(z[k : k + 1].clone() for z in core.latents),
            core.nfe,
            core.solver,
            core.grid,
            core.input_dtype,
            dict(core.metadata),
        )
        out.append(
            dataclasses.replace(
                inv,
                inversion=one,
                prompt=[inv.prompt[k]],
                negative_prompt=None if inv.negative_prompt is None else [inv.negative_prompt[k]],
                clean=None if inv.clean is None else inv.clean[k : k + 1].clone(),
                info={},
                null_embeddings=None if inv.null_embeddings is None else inv.null_embeddings[:, k : k + 1].clone(),
            )
        )
    return out


def _compat_key(d: dict[str, Any]) -> str:
    """What inversions must share to be regenerated as one batch (from ``describe()`` or a file's metadata)."""
    keep = (
        "solver",
        "grid",
        "input_dtype",
        "guidance_scale",
        "num_steps",
        "strength",
        "image_size",
        "schedule",
        "model",
        "state_dtype",
        "family",
    )
    key = {k: d.get(k) for k in keep}
    key["latent_shape"] = list(d.get("latent_shape", [0]))[1:]
    key["negative"] = d.get("negative_prompt") is not None
    key["null_text"] = list(d["null_text"])[2:] if "null_text" in d else None
    return json.dumps(key, sort_keys=True, default=str)


def stack_inversions(invs: Sequence[ImageInversion]) -> ImageInversion:
    """One batch :class:`ImageInversion` from inversions made with the same settings (ValueError if not)."""
    if not invs:
        raise ValueError("no inversions to stack")
    first = invs[0]
    key = _compat_key(first.describe())
    for k, inv in enumerate(invs[1:], 1):
        if _compat_key(inv.describe()) != key:
            raise ValueError(
                f"inversion {k} was made with other settings than inversion 0 (solver, grid, guidance, "
                "model, size...); regenerate them in separate batches"
            )
    core = first.inversion
    latents = tuple(torch.cat([inv.latents[j] for inv in invs]) for j in range(len(core.latents)))
    cleans = [inv.clean for inv in invs]
    return dataclasses.replace(
        first,
        inversion=Inversion(latents, core.nfe, core.solver, core.grid, core.input_dtype, dict(core.metadata)),
        prompt=[p for inv in invs for p in inv.prompt],
        negative_prompt=None
        if first.negative_prompt is None
        else [p for inv in invs for p in inv.negative_prompt or ()],
        clean=None if any(c is None for c in cleans) else torch.cat([c for c in cleans if c is not None]),
        info={},
        null_embeddings=None
        if first.null_embeddings is None
        else torch.cat([inv.null_embeddings for inv in invs if inv.null_embeddings is not None], dim=1),
    )


def _open_image(source: Any) -> Any:
    """An image file read completely (a truncated or damaged file fails here), or the object as given."""
    if isinstance(source, (str, os.PathLike)):
        from PIL import Image, ImageOps

        with Image.open(source) as im:
            im.load()
            return ImageOps.exif_transpose(im)  # as viewers show it (a phone photo is stored sideways)
    return source


def _image_key(source: Any) -> tuple:
    """What decides an image's batch: its size in pixels (read from the file's header only)."""
    if isinstance(source, (str, os.PathLike)):
        from PIL import Image

        with Image.open(source) as im:
            w, h = im.size
            turned = im.getexif().get(0x0112) in (5, 6, 7, 8)  # EXIF orientations that swap the sides
            return (h, w) if turned else (w, h)
    if isinstance(source, torch.Tensor):
        return tuple(source.shape)
    return tuple(source.size)  # PIL


def _prompt_list(prompt: Any, n: int) -> list[Any]:
    prompts = [prompt] if isinstance(prompt, (str, int)) else list(prompt)
    if len(prompts) == 1:
        prompts = prompts * n
    if len(prompts) != n:
        raise ValueError(f"got {len(prompts)} prompts for {n} images; give one, or one per image")
    return prompts


def iter_inversions(
    editor: Any, images: Any, prompt: Any = "", *, batch_size: int = 8, **invert_kwargs: Any
) -> Iterator[tuple[int, ImageInversion]]:
    """Invert images (paths, PIL images, a tensor batch or a list of tensors in [0, 1]) ``batch_size`` at
    a time; yield ``(index, single-image ImageInversion)`` batch by batch, in the batches' order.

    Batches are made as :func:`invert_files` makes them (by size, in input order), so its saved files
    hold the same bits as these inversions. ``invert_kwargs`` go to ``editor.invert``.
    """
    items = list(images) if isinstance(images, (torch.Tensor, list, tuple)) else [images]
    prompts = _prompt_list(prompt, len(items))
    invert_kwargs.setdefault("progress", False)
    for batch in plan_batches([_image_key(x) for x in items], batch_size):
        inv = editor.invert([_open_image(items[i]) for i in batch], [prompts[i] for i in batch], **invert_kwargs)
        yield from zip(batch, split_inversion(inv))


# ----- the manifest ------------------------------------------------------------------------------------------
def _json_lines(path: Path, strict: bool = False) -> Iterator[dict[str, Any]]:
    """The JSON objects of a .jsonl file; a line cut short by a killed writer is skipped (unless strict)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for k, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if strict:
                    raise ValueError(f"{path}: line {k} is not valid JSON") from None
                continue
            if isinstance(record, dict):
                yield record


def _latest(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The latest record per output name (by ``time``; the later one on a tie)."""
    latest: dict[str, dict[str, Any]] = {}
    for r in records:
        name = r.get("name")
        if name is None:
            continue
        if name not in latest or r.get("time", 0) >= latest[name].get("time", 0):
            latest[name] = r
    return latest


def _manifest_files(out_dir: Path) -> list[Path]:
    parts = sorted(out_dir.glob("manifest.part-*.jsonl"))
    main = out_dir / MANIFEST
    return ([main] if main.is_file() else []) + parts


def _records(out_dir: Path) -> list[dict[str, Any]]:
    """Every record of ``manifest.jsonl`` and of the per-process parts an unfinished run left (a torn
    last line is skipped)."""
    return [r for f in _manifest_files(out_dir) for r in _json_lines(f) if record_problem(r) is None]


def _bad_records(out_dir: Path) -> int:
    """How many records of the manifest and its parts are skipped as damaged (a name that is not a plain
    relative path, a status that is not a string...)."""
    return sum(record_problem(r) is not None for f in _manifest_files(out_dir) for r in _json_lines(f))


def read_manifest(out_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The latest record per output name, from the manifest and any parts an unfinished run left."""
    return _latest(_records(Path(out_dir)))


class _ManifestWriter:
    """Appends records to this process's manifest part, each flushed and fsynced before the next output."""

    def __init__(self, out_dir: Path, rank: int):
        self.path = out_dir / f"manifest.part-{rank}.jsonl"
        self.file = open(self.path, "ab")
        if self.file.tell() > 0:  # a killed writer may have left half a line: start on a fresh one
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    self.file.write(b"\n")

    def append(self, record: dict[str, Any]) -> None:
        self.file.write((json.dumps(record, sort_keys=True) + "\n").encode("utf-8"))
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def _merge_manifest(out_dir: Path) -> None:
    """Fold every part into ``manifest.jsonl``, atomically, then remove the parts it read. Kept per output,
    sorted by name: its latest record, preceded by its latest "done" record when a failure came after it
    (what the next run checks the file against). Run by one process when no other is writing."""
    files = _manifest_files(out_dir)
    parts = [f for f in files if f.name != MANIFEST]
    if not parts:
        return
    records = _records(out_dir)
    latest, done = _latest(records), _latest(r for r in records if r.get("status") == "done")
    kept = [
        r for n in sorted(latest) for r in ([done[n]] if done.get(n, latest[n]) is not latest[n] else []) + [latest[n]]
    ]
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept)
    with atomic_path(out_dir / MANIFEST, overwrite=True) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    for p in parts:
        p.unlink()


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----- processes -------------------------------------------------------------------------------------------
class _Processes:
    """This process's place among the launched ones: accelerate's PartialState under ``torchrun`` or
    ``accelerate launch``; a single process (without importing accelerate) otherwise."""

    def __init__(self, device: torch.device):
        self.state = None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            try:
                from accelerate import PartialState
            except ImportError:
                raise ImportError(
                    "several processes were launched but accelerate is not installed: "
                    "pip install accelerate (or run a single process)"
                ) from None
            # cpu=True makes CPU processes one group over gloo (accelerate otherwise expects GPUs).
            self.state = PartialState(cpu=torch.device(device).type == "cpu")
        self.rank = self.state.process_index if self.state else 0
        self.count = self.state.num_processes if self.state else 1

    @contextlib.contextmanager
    def split(self, work: list[Any]) -> Iterator[list[Any]]:
        if self.state is None:
            yield work
        else:
            with self.state.split_between_processes(work) as mine:
                yield list(mine)

    def wait(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()


# ----- the resumable runs ---------------------------------------------------------------------------------
@dataclass
class Summary:
    """What one process of a run did: outputs written, found done and skipped, and failed inputs."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)
    rank: int = 0
    processes: int = 1

    def __str__(self) -> str:
        where = f" (process {self.rank + 1} of {self.processes})" if self.processes > 1 else ""
        rate = f", {self.done / self.seconds:.2f} images/s" if self.done and self.seconds > 0 else ""
        return (
            f"{self.done} written, {self.skipped} already done, {self.failed} failed in "
            f"{self.seconds:.1f} s{rate}{where}"
        )


@dataclass
class _Task:
    """What differs between invert, reconstruct and edit; the run itself is :func:`_run`."""

    what: str
    suffix: str
    key: Callable[[Item], Any]  # batch key, read cheaply (raises for an unreadable input)
    load: Callable[[Item], Any]  # the input, read fully (raises for a damaged one)
    run: Callable[[list[Item], list[Any]], list[tuple[Callable[[Path], None], dict[str, Any]]]]
    prompt: Callable[[Item], Any] = lambda item: item.prompt  # the prompt the manifest records
    settings: Callable[[Item], dict[str, Any]] = lambda item: {}  # what decides the output besides the source


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0]


def _progress_bar(enabled: bool, total: int, what: str, procs: _Processes):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is an optional extra
        return None
    desc = what if procs.count == 1 else f"{what} [{procs.rank + 1}/{procs.count}]"
    return tqdm(total=total, desc=desc, unit="img", position=procs.rank, dynamic_ncols=True)


def _settings_json(d: dict[str, Any]) -> Any:
    """Settings as the manifest stores them (plain JSON, compared as read back)."""
    return json.loads(json.dumps(d, sort_keys=True, default=repr))


def _acquire(out: Path, procs: _Processes) -> OutputLock | None:
    """The first process takes the output folder's lock; the others share it (they learn the outcome)."""
    lock, error = None, None
    if procs.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        lock = OutputLock(out)
        try:
            lock.acquire()
        except ValueError as e:
            lock, error = None, str(e)
    if procs.state is not None:
        from accelerate.utils import broadcast_object_list

        error = broadcast_object_list([error], from_process=0)[0]
    if error:
        raise ValueError(error)
    if lock is not None and lock.took_over:
        print(
            f"note: took over the lock of a run that ended without releasing it (pid "
            f"{lock.took_over.get('pid')}, since {lock.took_over.get('started')})",
            file=sys.stderr,
        )
    return lock


def _run(
    task: _Task,
    items: list[Item],
    out_dir: str | os.PathLike,
    *,
    batch_size: int,
    overwrite: bool,
    progress: bool,
    device: torch.device,
    inputs: Any = (),
) -> Summary:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; the output of many inputs is a folder (-o FOLDER)")
    if (out / MANIFEST).is_dir():
        raise ValueError(f"{out / MANIFEST} is a folder; remove it or choose another output folder")
    plan_batches([], batch_size)  # a bad batch size is refused before the folder is made
    given = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs) if not _is_items(inputs) else []
    check_folders([Path(g) for g in given], [it.source for it in items if it.error is None], out)
    procs = _Processes(device)
    lock = _acquire(out, procs)
    try:
        return _run_locked(task, items, out, procs, batch_size=batch_size, overwrite=overwrite, progress=progress)
    finally:
        procs.wait()
        if lock is not None:
            lock.release()


def _run_locked(
    task: _Task, items: list[Item], out: Path, procs: _Processes, *, batch_size: int, overwrite: bool, progress: bool
) -> Summary:
    start = time.perf_counter()
    summary = Summary(rank=procs.rank, processes=procs.count)
    bad = _bad_records(out) if procs.rank == 0 else 0
    if bad:
        print(
            f"note: {bad} damaged record(s) in {out / MANIFEST} skipped (and dropped when it is rewritten)",
            file=sys.stderr,
        )
    writer = _ManifestWriter(out, procs.rank)

    def record(
        item: Item,
        status: str,
        error: str | None = None,
        output: Path | None = None,
        seconds: float | None = None,
        sha256: str | None = None,
        **extra: Any,
    ) -> None:
        if output is not None and sha256 is None:
            sha256 = file_sha256(output)
        writer.append(
            {
                "name": item.name if name_problem(item.name) is None else None,
                "source": item.source,
                "prompt": task.prompt(item),
                "output": None if output is None else output.relative_to(out).as_posix(),
                "sha256": sha256,
                "status": status,
                "error": error,
                "seconds": seconds,
                "time": time.time(),
                "rank": procs.rank,
                **extra,
            }
        )
        if status == "failed":
            summary.failed += 1
            summary.failures.append((item.source, error or ""))

    # Every process plans every batch the same way; an input whose size cannot be read is left out
    # (and recorded by the first process).
    keys, unreadable = [], []
    for item in items:
        try:
            if item.error is not None:
                raise _Refused(item.error)
            keys.append(task.key(item))
        except Exception as e:
            keys.append(None)
            unreadable.append(
                (item, e.args[0] if isinstance(e, _Refused) else f"cannot read {item.source}: {_reason(e)}")
            )
    batches = plan_batches(keys, batch_size)
    # Every record per name, oldest first: an output is this folder's when one of them recorded it.
    history: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(_records(out), key=lambda r: r.get("time", 0)):
        history.setdefault(r["name"], []).append(r)
    bar = None
    try:
        if procs.rank == 0:
            for item, reason in unreadable:
                record(item, "failed", reason)
        with procs.split(list(range(len(batches)))) as mine:
            bar = _progress_bar(progress, sum(len(batches[b]) for b in mine), task.what, procs)
            for b in mine:
                _run_batch(task, [items[i] for i in batches[b]], out, overwrite, history, record, summary)
                if bar is not None:
                    bar.update(len(batches[b]))
                    bar.set_postfix(failed=summary.failed, refresh=False)
    finally:
        if bar is not None:
            bar.close()
        writer.close()
    procs.wait()
    if procs.rank == 0:
        _merge_manifest(out)
    summary.seconds = time.perf_counter() - start
    return summary


class _Refused(Exception):
    """An input refused before it is read (its message is the reason recorded)."""


def _differences(r: dict[str, Any], settings: Any, source_sha: str) -> list[str]:
    """What differs between a record and this run for one input: the settings and the source's content."""
    if "settings" not in r:
        return ["settings (not recorded: written by an older bdia)"]
    old = r["settings"] if isinstance(r.get("settings"), dict) else {}
    diff = [
        f"{k} {old.get(k)!r:.60} then, {settings.get(k)!r:.60} now"
        for k in sorted(set(old) | set(settings))
        if old.get(k) != settings.get(k)
    ]
    if r.get("source_sha256") != source_sha:
        diff.append("the source's content")
    return diff


def _state(
    task: _Task,
    item: Item,
    target: Path,
    history: dict[str, list[dict[str, Any]]],
    settings: Any,
    source_sha: str,
    overwrite: bool,
    record: Callable,
) -> str:
    """ "done" (this input's output with these settings is in place), "todo", or raises _Refused.

    Only an output this folder's manifest recorded (same checksum) counts; a file bdia did not write is
    never adopted nor replaced. With ``overwrite`` every recorded output is recomputed; without, one made
    from other settings or another source is refused, saying what differs."""
    rel = item.name + task.suffix
    ours = [r for r in history.get(item.name, []) if r.get("output") == rel]
    if not target.exists() and not target.is_symlink():
        return "todo"
    if target.is_symlink() or not target.is_file():
        raise _Refused(f"{target} is a link or not a file; bdia does not write through it (remove it)")
    sha = file_sha256(target)
    match = [r for r in ours if r.get("sha256") == sha and r.get("status") in ("done", "writing")]
    if not ours:
        raise _Refused(
            f"{target} exists but was not written by this folder's runs (no manifest record); it is "
            "left untouched: move it away or choose another output folder"
        )
    if overwrite:  # asked for: what this folder's runs wrote is recomputed
        return "todo"
    if not match:
        raise _Refused(
            f"{target} differs from the checksum the manifest recorded for it; remove it or "
            "pass overwrite=True (--overwrite)"
        )
    latest = match[-1]
    diff = _differences(latest, settings, source_sha)
    if diff:
        raise _Refused(
            f"{target} was made with other inputs ({'; '.join(diff)}); pass overwrite=True "
            "(--overwrite) to recompute it, or choose another output folder"
        )
    if latest.get("status") == "writing":  # a kill between the rename and the "done" record
        record(
            item,
            "done",
            output=target,
            sha256=sha,
            settings=settings,
            source_sha256=source_sha,
            note="completed by an interrupted run",
        )
    return "done"


def _run_batch(
    task: _Task,
    batch: list[Item],
    out: Path,
    overwrite: bool,
    history: dict[str, list[dict[str, Any]]],
    record: Callable,
    summary: Summary,
) -> None:
    todo, settings, sources = [], {}, {}
    for it in batch:
        target = out / (it.name + task.suffix)
        try:
            if not inside(target, out):
                raise _Refused(f"refused: {target} is not inside the output folder (a link in the way?)")
            settings[it] = _settings_json(task.settings(it))
            try:
                sources[it] = file_sha256(it.source)
            except OSError as e:
                raise _Refused(f"cannot read {it.source}: {_reason(e)}") from None
            state = _state(task, it, target, history, settings[it], sources[it], overwrite, record)
        except _Refused as e:
            record(it, "failed", str(e))
            continue
        except OSError as e:  # e.g. an output name longer than the file system allows: this input alone fails
            record(it, "failed", f"cannot use the output {target}: {_reason(e)}")
            continue
        if state == "done":
            summary.skipped += 1
        else:
            todo.append(it)
    if not todo:
        return
    # The whole batch is computed again (its bits depend on its members); only missing outputs are written.
    start = time.perf_counter()
    loaded, inputs = [], []
    for it in batch:
        try:
            inputs.append(task.load(it))
            loaded.append(it)
        except Exception as e:
            if it in todo:
                record(it, "failed", _reason(e))
    if not loaded:
        return
    try:
        results = task.run(loaded, inputs)
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except Exception as e:
        for it in loaded:
            if it in todo:
                record(it, "failed", _reason(e))
        return
    seconds = (time.perf_counter() - start) / len(loaded)
    for it, (write, extra) in zip(loaded, results):
        if it not in todo:
            continue
        target = out / (it.name + task.suffix)
        try:
            with atomic_path(target, overwrite=True) as tmp:
                write(tmp)
                sha = file_sha256(tmp)
                # Recorded before the rename: a file found later with this checksum is known to be ours.
                record(it, "writing", output=target, sha256=sha, settings=settings[it], source_sha256=sources[it])
        except (OSError, ValueError) as e:  # a name too long, a full disk: this input fails, the run goes on
            record(it, "failed", f"cannot write {target}: {_reason(e)}")
            continue
        record(
            it,
            "done",
            output=target,
            sha256=sha,
            seconds=seconds,
            settings=settings[it],
            source_sha256=sources[it],
            **extra,
        )
        summary.done += 1


def _device_of(editor: Any) -> torch.device:
    return torch.device(getattr(editor, "device", "cpu"))


def invert_files(
    editor: Any,
    inputs: Any,
    out_dir: str | os.PathLike,
    prompt: str = "",
    *,
    batch_size: int = 8,
    overwrite: bool = False,
    progress: bool = True,
    check: bool = False,
    **invert_kwargs: Any,
) -> Summary:
    """Invert every image in ``inputs`` (files, folders, lists: see :func:`find_inputs`) into
    ``out_dir/NAME.safetensors``, ``batch_size`` images of one size at a time, resumably.

    ``prompt`` is the prompt of the images a list gives none; ``invert_kwargs`` go to ``editor.invert``
    (num_steps, method, gamma, guidance_scale, strength, negative_prompt, size...). With ``check``,
    each batch is also reconstructed and the round-trip error recorded (``round_trip_error``).
    """
    items = inputs if _is_items(inputs) else find_inputs(inputs, "image")
    invert_kwargs["progress"] = False
    editor.validate_prompt(prompt)

    def load(item: Item) -> Any:
        editor.validate_prompt(_prompt_of(item, prompt))
        return _open_image(item.source)

    def run(batch: list[Item], images: list[Any]) -> list:
        inv = editor.invert(images, [_prompt_of(it, prompt) for it in batch], **invert_kwargs)
        errors = [None] * len(batch)
        if check:
            rec = editor.reconstruct(inv, progress=False)
            errors = (rec.latents - inv.clean.to(rec.latents)).flatten(1).abs().amax(1).tolist()
        return [
            (
                (lambda tmp, one=one: save_inversion(one, tmp, overwrite=True)),
                {} if err is None else {"round_trip_error": err},
            )
            for one, err in zip(split_inversion(inv), errors)
        ]

    fixed = _with_defaults(editor.invert, invert_kwargs)
    task = _Task(
        "invert",
        INVERSION_EXTENSION,
        lambda it: _image_key(it.source),
        load,
        run,
        lambda it: _prompt_of(it, prompt),
        lambda it: {"command": "invert", "model": _model_of(editor), "prompt": _prompt_of(it, prompt), **fixed},
    )
    return _run(
        task,
        items,
        out_dir,
        batch_size=batch_size,
        overwrite=overwrite,
        progress=progress,
        device=_device_of(editor),
        inputs=inputs,
    )


def _with_defaults(method: Callable, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keyword settings a call gives, with the method's defaults filled in: an option passed at its
    default value and one left out are the same setting (the CLI passes some the API leaves out)."""
    import inspect

    try:
        defaults = {
            n: p.default
            for n, p in inspect.signature(method).parameters.items()
            if p.kind is p.KEYWORD_ONLY and p.default is not p.empty
        }
    except (TypeError, ValueError):  # no signature to read
        defaults = {}
    return {k: v for k, v in {**defaults, **kwargs}.items() if k != "progress"}


def _model_of(editor: Any) -> Any:
    """The model a run's outputs come from, as its manifest records it (without the weight fingerprint)."""
    try:
        record = editor.backend.record()
    except AttributeError:  # an editor without a backend (a test double): its type
        return type(editor).__name__
    return {k: v for k, v in record.items() if k != "fingerprint"}


def _is_items(inputs: Any) -> bool:
    return isinstance(inputs, (list, tuple)) and bool(inputs) and all(isinstance(x, Item) for x in inputs)


def _prompt_of(item: Item, default: Any) -> Any:
    return default if item.prompt is None else item.prompt


def _inversion_key(item: Item) -> str:
    """The settings a saved inversion must share with its batch partners. The file is read and checked in
    full (as the single-file commands do), so a damaged header is this file's failure, not a traceback."""
    inv = load_inversion(item.source)
    if inv.batch_size != 1:
        raise ValueError(
            f"the file holds {inv.batch_size} images; regenerate it on its own (bdia reconstruct FILE -o NAME.png)"
        )
    return _compat_key(inv.describe())


def _save_image(image: Any) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        image.save(tmp, format="PNG")

    return write


def _regenerate(
    editor: Any,
    items: list[Item],
    out_dir: str | os.PathLike,
    what: str,
    regenerate: Callable[[ImageInversion, list[Item]], Any],
    *,
    batch_size: int,
    overwrite: bool,
    progress: bool,
    prompt_of: Callable[[Item], Any] = lambda item: None,
    settings: dict[str, Any] | None = None,
    inputs: Any = (),
) -> Summary:
    def load(item: Item) -> ImageInversion:
        if what == "edit":
            editor.validate_prompt(prompt_of(item))
        return load_inversion(item.source)

    def run(batch: list[Item], invs: list[ImageInversion]) -> list:
        stacked = stack_inversions(invs)
        res = regenerate(stacked, batch)
        results = []
        for k, image in enumerate(res.images):
            extra: dict[str, Any] = {}
            if what == "reconstruct" and stacked.clean is not None:
                clean = stacked.clean[k].to(res.latents)
                extra["latent_error"] = float((res.latents[k] - clean).abs().max())
            results.append((_save_image(image), extra))
        return results

    fixed = {"command": what, "model": _model_of(editor), **(settings or {})}
    task = _Task(
        what,
        ".png",
        _inversion_key,
        load,
        run,
        prompt_of,
        lambda it: {**fixed, "prompt": prompt_of(it)} if what == "edit" else fixed,
    )
    return _run(
        task,
        items,
        out_dir,
        batch_size=batch_size,
        overwrite=overwrite,
        progress=progress,
        device=_device_of(editor),
        inputs=inputs,
    )


def reconstruct_files(
    editor: Any,
    inputs: Any,
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 8,
    overwrite: bool = False,
    progress: bool = True,
) -> Summary:
    """Regenerate every saved inversion in ``inputs`` (files, folders, lists, an inversion run's manifest)
    into ``out_dir/NAME.png``, batching inversions made with the same settings; the manifest records
    each image's ``latent_error`` (max |z_rec - z|)."""
    items = inputs if _is_items(inputs) else find_inputs(inputs, "inversion")
    return _regenerate(
        editor,
        items,
        out_dir,
        "reconstruct",
        lambda inv, batch: editor.reconstruct(inv, progress=False),
        batch_size=batch_size,
        overwrite=overwrite,
        progress=progress,
        inputs=inputs,
    )


def edit_files(
    editor: Any,
    inputs: Any,
    out_dir: str | os.PathLike,
    prompt: str | None = None,
    *,
    batch_size: int = 8,
    overwrite: bool = False,
    progress: bool = True,
    **edit_kwargs: Any,
) -> Summary:
    """Regenerate every saved inversion in ``inputs`` under a new prompt into ``out_dir/NAME.png``.

    The target prompt is the one a list gives an inversion, else ``prompt``; ``edit_kwargs`` go to
    ``editor.edit`` (guidance_scale, negative_prompt).
    """
    items = inputs if _is_items(inputs) else find_inputs(inputs, "inversion")
    missing = [it.source for it in items if it.prompt is None and prompt is None]
    if missing:
        raise ValueError(f"no target prompt for {missing[0]!r}: pass prompt= (--prompt) or give prompts in a list")
    editor.validate_prompt(prompt)
    edit_kwargs["progress"] = False
    return _regenerate(
        editor,
        items,
        out_dir,
        "edit",
        lambda inv, batch: editor.edit(inv, [_prompt_of(it, prompt) for it in batch], **edit_kwargs),
        batch_size=batch_size,
        overwrite=overwrite,
        progress=progress,
        prompt_of=lambda it: _prompt_of(it, prompt),
        inputs=inputs,
        settings=_with_defaults(editor.edit, edit_kwargs),
    )
