"""PIE-Bench editing evaluation: a folder in PIE-Bench's published format in, edited images and its metrics out.

    from bdia.editing import load_editor
    from bdia.evaluation.pie import PieSettings, make_scenes_pie, read_pie, run_pie
    make_scenes_pie("pie-scenes/", 12)                      # a small folder in PIE's format, from the scene renderer
    run_pie(load_editor("scenes"), "pie-scenes/", "out/", PieSettings(method="bdia", steps=20))

The format (PIE-Bench, Ju et al. 2024, "PnP Inversion"; data laid out as its authors publish it)::

    DATA_DIR/mapping_file.json         {key: {image_path, original_prompt, editing_prompt, editing_instruction,
                                               editing_type_id, blended_word, mask}}
    DATA_DIR/annotation_images/<image_path>

Prompts mark the words that differ between them in [brackets] (removed before use); ``blended_word`` is "source
target" (the words LocalBlend follows; "" for none); ``mask`` is run-length encoded as in the authors' scripts: a
flat list ``[start, length, start, length, ...]`` of runs of 1 over the row-major flattened H x W mask, decoded
with the image border set to 1 (:func:`mask_decode`). Outputs go to ``OUT/annotation_images/<image_path>``, the
layout the authors' ``evaluate.py`` reads, with ``results.csv`` (one row per image) and ``results.json``
(settings, metric rules, rows, means overall and per edit type). Metrics: :mod:`bdia.evaluation.metrics`.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets.safety import OutputLock, check_folders, inside, name_problem
from ..io.files import atomic_path, check_output_dir, write_text
from .metrics import METRICS, PieMetrics, summarise

__all__ = [
    "EDIT_TYPES",
    "IMAGES",
    "MAPPING",
    "METHODS",
    "PieItem",
    "PieSettings",
    "bracket_difference",
    "edit_keywords",
    "make_scenes_pie",
    "mask_decode",
    "mask_encode",
    "read_pie",
    "run_pie",
    "strip_brackets",
]

MAPPING = "mapping_file.json"
IMAGES = "annotation_images"
# PIE-Bench's edit types (editing_type_id -> its folder name without the count).
EDIT_TYPES = {
    "0": "random",
    "1": "change_object",
    "2": "add_object",
    "3": "delete_object",
    "4": "change_attribute_content",
    "5": "change_attribute_pose",
    "6": "change_attribute_color",
    "7": "change_attribute_material",
    "8": "change_background",
    "9": "change_style",
}
# Scene edits as PIE edit types (a shape change replaces the object; a size change changes its content).
SCENE_TYPES = {"shape": "1", "add": "2", "remove": "3", "size": "4", "colour": "6", "background": "8"}
METHODS = ("bdia", "edict", "rex", "ddim", "nulltext")


# ----- the format -------------------------------------------------------------------------------------------
def mask_decode(encoded: Sequence[int], shape: tuple[int, int] = (512, 512), border: bool = True) -> np.ndarray:
    """PIE's RLE mask as uint8 (H, W) of 0/1.

    ``encoded`` is ``[start, length, ...]``: each pair sets ``length`` pixels from flat index ``start`` (row-major
    over ``shape``), clipped at the end of the image as the authors' decoder does. ``border``: set the outermost
    rows and columns to 1, as the authors' decoder does "to avoid annotation errors in boundary" (every PIE
    metric uses the mask decoded this way).
    """
    h, w = int(shape[0]), int(shape[1])
    values = list(encoded)
    if len(values) % 2:
        raise ValueError(f"an RLE mask is a list of [start, length] pairs; this one has {len(values)} numbers")
    flat = np.zeros(h * w, dtype=np.uint8)
    for start, length in zip(values[0::2], values[1::2]):
        if (
            isinstance(start, bool)
            or isinstance(length, bool)
            or not isinstance(start, int)
            or not isinstance(length, int)
        ):
            raise ValueError(f"RLE mask values must be integers, got {start!r} and {length!r}")
        if start < 0 or length < 0:
            raise ValueError(f"RLE mask runs must be non-negative, got start {start}, length {length}")
        flat[start : start + max(0, min(length, h * w - start))] = 1
    mask = flat.reshape(h, w)
    if border:
        mask[0, :] = mask[-1, :] = 1
        mask[:, 0] = mask[:, -1] = 1
    return mask


def mask_encode(mask: np.ndarray) -> list[int]:
    """The inverse of :func:`mask_decode` without the border: ``[start, length, ...]`` of the runs of nonzero
    pixels in row-major order."""
    flat = (np.asarray(mask).reshape(-1) != 0).astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [0]])))
    starts, ends = edges[0::2], edges[1::2]
    return [int(v) for pair in zip(starts, ends - starts) for v in pair]


def strip_brackets(prompt: str) -> str:
    """The prompt as the model sees it: PIE's [ ] marks removed (the authors' scripts do the same)."""
    return prompt.replace("[", "").replace("]", "")


def bracket_difference(source: str, target: str) -> tuple[str, str]:
    """Both prompts with the words that differ between them in [brackets], PIE's convention (a word-level diff:
    a replaced run is marked in both, an inserted one in the target only, a deleted one in the source only)."""
    a, b = source.split(), target.split()
    out_a, out_b = list(a), list(b)
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op in ("replace", "delete"):
            out_a[i1] = "[" + out_a[i1]
            out_a[i2 - 1] += "]"
        if op in ("replace", "insert"):
            out_b[j1] = "[" + out_b[j1]
            out_b[j2 - 1] += "]"
    return " ".join(out_a), " ".join(out_b)


@dataclass(frozen=True)
class PieItem:
    """One entry of a mapping file (prompts as written, with their [ ] marks)."""

    key: str
    image_path: str
    original_prompt: str
    editing_prompt: str
    editing_type_id: str
    blended_word: tuple[str, str] | None
    mask: tuple[int, ...]
    editing_instruction: str = ""

    @property
    def source_prompt(self) -> str:
        return strip_brackets(self.original_prompt)

    @property
    def target_prompt(self) -> str:
        return strip_brackets(self.editing_prompt)


def _item(key: Any, entry: Any, data_dir: Path) -> PieItem:
    where = f"{data_dir / MAPPING}: entry {key!r}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where} is not a JSON object")
    for name in ("image_path", "original_prompt", "editing_prompt", "mask"):
        if name not in entry:
            raise ValueError(f"{where} has no {name!r}")
    strings = ("image_path", "original_prompt", "editing_prompt", "editing_instruction", "blended_word")
    for name in strings:
        if name in entry and not isinstance(entry[name], str):
            raise ValueError(f"{where}: {name} must be a string, got {type(entry[name]).__name__}")
    type_id = entry.get("editing_type_id", "0")
    if isinstance(type_id, int) and not isinstance(type_id, bool):
        type_id = str(type_id)
    if not isinstance(type_id, str):
        raise ValueError(f'{where}: editing_type_id must be a string such as "6", got {type_id!r}')
    problem = name_problem(entry["image_path"])
    if problem or not inside(entry["image_path"], data_dir / IMAGES):
        raise ValueError(f"{where}: image_path must be a relative path inside {IMAGES}/ ({problem or 'it leaves it'})")
    mask = entry["mask"]
    if (
        not isinstance(mask, list)
        or len(mask) % 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in mask)
    ):
        raise ValueError(f"{where}: mask must be PIE's RLE, a list of non-negative integer [start, length] pairs")
    words = entry.get("blended_word", "").split()
    if words and len(words) != 2:
        raise ValueError(
            f"{where}: blended_word must be two words, 'source target' (or empty), got {entry['blended_word']!r}"
        )
    return PieItem(
        key=str(key),
        image_path=entry["image_path"],
        original_prompt=entry["original_prompt"],
        editing_prompt=entry["editing_prompt"],
        editing_type_id=type_id,
        blended_word=(words[0], words[1]) if words else None,
        mask=tuple(mask),
        editing_instruction=entry.get("editing_instruction", ""),
    )


def read_pie(
    data_dir: str | os.PathLike, types: Sequence[str] | None = None, limit: int | None = None
) -> list[PieItem]:
    """The entries of ``data_dir``'s mapping file, in key order, checked (ValueError naming the entry and the
    field); ``types`` keeps those edit types only (as the authors' ``--edit_category_list``), ``limit`` the first
    ``limit`` of them. Every image must exist."""
    root = Path(data_dir)
    mapping = root / MAPPING
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder; give a folder in PIE-Bench's format ({MAPPING}, {IMAGES}/)")
    if not mapping.is_file():
        raise FileNotFoundError(f"{root} has no {MAPPING}; give a folder in PIE-Bench's format")
    try:
        data = json.loads(mapping.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{mapping} is not valid JSON ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{mapping} must hold a JSON object {{key: entry}}")
    items = [_item(k, v, root) for k, v in sorted(data.items())]
    if types is not None:
        unknown = sorted(set(types) - {i.editing_type_id for i in items})
        if unknown:
            raise ValueError(f"edit type(s) {', '.join(unknown)} have no entry in {mapping}")
        items = [i for i in items if i.editing_type_id in set(types)]
    items = items[:limit] if limit is not None else items
    for item in items:
        if not (root / IMAGES / item.image_path).is_file():
            raise FileNotFoundError(f"entry {item.key!r}: no image at {root / IMAGES / item.image_path}")
    if not items:
        raise ValueError(f"{mapping} has no entries to evaluate")
    return items


# ----- a folder in PIE's format from the scene renderer ------------------------------------------------------
def _scene_words(pair: Any) -> tuple[str, str]:
    """PIE's blended_word for a scene edit: the object noun in each caption (the background for add/remove)."""
    gone = [o for o in pair.source.objects if o not in pair.target.objects]
    new = [o for o in pair.target.objects if o not in pair.source.objects]
    if pair.kind == "background":
        return "background", "background"
    if pair.kind == "add":
        return "background", new[0].shape
    if pair.kind == "remove":
        return gone[0].shape, "background"
    return gone[0].shape, new[0].shape


def _scene_instruction(pair: Any) -> str:
    old, new = (" ".join(words) for words in pair.changed_words)
    if pair.kind == "add":
        return f"add a {new}"
    if pair.kind == "remove":
        return f"remove the {old}"
    return f"change the {pair.kind} from {old} to {new}"


def make_scenes_pie(folder: str | os.PathLike, n: int, overwrite: bool = False) -> Path:
    """Write ``n`` held-out scene edit pairs (:func:`bdia.scenes.held_out_edit_pairs`) as a folder in PIE-Bench's
    format: PNG sources (lossless, so preservation is measured against the exact render) under
    ``annotation_images/<type>_<name>_<count>/<key>.png``, and ``mapping_file.json`` with [bracketed] prompts,
    blended words and the renderer's edit region as PIE's RLE mask. Keys are 12 digits, the edit type first, as
    PIE's. Scene edits map to PIE types: colour 6, shape 1, size 4, background 8, add 2, remove 3."""
    from PIL import Image

    from ..scenes import held_out_edit_pairs

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of edit pairs must be a positive integer, got {n!r}")
    out = check_output_dir(folder, overwrite)
    pairs = held_out_edit_pairs(n)
    counts: dict[str, int] = {}
    for p in pairs:
        counts[SCENE_TYPES[p.kind]] = counts.get(SCENE_TYPES[p.kind], 0) + 1
    seen: dict[str, int] = {}
    mapping: dict[str, Any] = {}
    for p in pairs:
        type_id = SCENE_TYPES[p.kind]
        index = seen[type_id] = seen.get(type_id, -1) + 1
        key = f"{type_id}{index:011d}"
        image_path = f"{type_id}_{EDIT_TYPES[type_id]}_{counts[type_id]}/{key}.png"
        with atomic_path(out / IMAGES / image_path, overwrite) as tmp:
            Image.fromarray(p.source_image).save(tmp)
        source, target = bracket_difference(p.source_caption, p.target_caption)
        region = np.asarray(p.region, dtype=bool) | np.asarray(p.mask, dtype=bool)
        mapping[key] = {
            "image_path": image_path,
            "original_prompt": source,
            "editing_prompt": target,
            "editing_instruction": _scene_instruction(p),
            "editing_type_id": type_id,
            "blended_word": " ".join(_scene_words(p)),
            "mask": mask_encode(region),
        }
    entries = ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in mapping.items())  # one entry a line
    write_text(out / MAPPING, "{\n" + entries + "\n}\n", overwrite)
    return out


# ----- running a method over the folder --------------------------------------------------------------------------
@dataclass
class PieSettings:
    """How each image is inverted and edited.

    ``method``: "bdia", "edict", "rex", "ddim" or "nulltext"; ``solver``: the keywords of ``Editor.invert`` for it
    (``method``/``gamma``/``p``/``grid``: :func:`bdia.cli.common.solver_options`; a ready Rex solver goes in
    ``solver["method"]``); empty means the method's defaults. ``guidance``: the edit's guidance scale (None: the
    model's default); ``inversion_guidance``: the inversion's (None: 1 for DDIM, as DDIM inversion is done in
    Prompt-to-Prompt and PIE-Bench's ddim runs, else the edit's). ``edit_options``: the edit control
    (see :func:`edit_keywords`).
    """

    method: str = "bdia"
    steps: int = 50
    guidance: float | None = None
    inversion_guidance: float | None = None
    strength: float = 1.0
    solver: dict[str, Any] = field(default_factory=dict)
    edit_options: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not self.label:
            params = {k: v for k, v in self.solver.items() if k in ("gamma", "p") and v is not None}
            self.label = self.method + (f"({', '.join(f'{k}={v}' for k, v in params.items())})" if params else "")

    def resolved(self, default_guidance: float) -> tuple[float, float]:
        """(inversion guidance, edit guidance) once the model's default is known."""
        edit = float(default_guidance if self.guidance is None else self.guidance)
        if self.inversion_guidance is not None:
            inv = float(self.inversion_guidance)
        else:
            inv = 1.0 if self.method == "ddim" else edit
        if self.method == "nulltext" and inv != edit:
            raise ValueError(
                "null-text inversion optimises its null embeddings for one guidance scale: give --inversion-guidance "
                f"equal to --guidance (got {inv:g} and {edit:g}), or leave it out"
            )
        return inv, edit


def edit_keywords(item: PieItem, mask: np.ndarray, settings: PieSettings, guidance: float) -> dict[str, Any]:
    """The keywords of ``Editor.edit`` for one entry: the guidance and the edit control of
    ``settings.edit_options`` (``control``: "none", "p2p" or "masactrl"; ``blend``: Prompt-to-Prompt's LocalBlend
    on the entry's ``blended_word``; ``mask``: keep the source outside the entry's PIE mask)."""
    options = {"control": "none", "blend": False, "mask": False, **settings.edit_options}
    out: dict[str, Any] = {"guidance_scale": guidance}
    if options["control"] == "p2p":
        from ..editing.controls import PromptToPrompt

        blend = None
        if options["blend"]:
            if not item.blended_word:
                raise ValueError(f"entry {item.key} has no blended_word for LocalBlend; leave out --blend")
            blend = ([item.blended_word[0]], [item.blended_word[1]])
        out["control"] = PromptToPrompt(blend=blend)
    elif options["control"] == "masactrl":
        from ..editing.controls import MutualSelfAttention

        out["control"] = MutualSelfAttention()
    elif options["control"] != "none":
        raise ValueError(f"control must be none, p2p or masactrl, got {options['control']!r}")
    if options["mask"]:
        out["mask"] = mask.astype(np.float32)
    return out


def _read_rgb(path: Path) -> np.ndarray:
    from ..io.images import read_image

    return np.asarray(read_image(path).convert("RGB"))


def _edit_one(
    editor: Any, path: Path, item: PieItem, mask: np.ndarray, settings: PieSettings, inv_g: float, edit_g: float
):
    if settings.method == "nulltext":  # DDIM with per-step optimised embeddings, for the edit's guidance
        invert, options = editor.null_text_invert, {"grid": settings.solver.get("grid", "diffusers")}
    else:
        invert, options = editor.invert, {"progress": False, **(settings.solver or {"method": settings.method})}
    inv = invert(
        str(path),
        item.source_prompt,
        guidance_scale=edit_g if settings.method == "nulltext" else inv_g,
        num_steps=settings.steps,
        strength=settings.strength,
        **options,
    )
    res = editor.edit(inv, item.target_prompt, progress=False, **edit_keywords(item, mask, settings, edit_g))
    info = {"nfe_inversion": inv.inversion.nfe, "nfe_edit": res.nfe, "seconds": inv.info["seconds"] + res.seconds}
    return res.images[0], info


COLUMNS = (
    "key",
    "editing_type_id",
    "image_path",
    "output",
    "status",
    "error",
    *METRICS,
    "nfe_inversion",
    "nfe_edit",
    "seconds",
)


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if math.isinf(v) else repr(v))
    return "" if v is None else v


def _json_value(v: Any) -> Any:
    """NaN -> null, +-inf -> "inf"/"-inf": standard JSON (Python's would write NaN and Infinity)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: _json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    return v


def _write_results(out: Path, rows: list[dict[str, Any]], report: dict[str, Any]) -> None:
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _cell(r.get(k)) for k in COLUMNS})
    write_text(out / "results.csv", buf.getvalue(), overwrite=True)
    write_text(out / "results.json", json.dumps(_json_value(report), indent=1) + "\n", overwrite=True)


RULES = {
    "mask": "PIE's RLE decoded over the image's H x W, border rows and columns set to 1 (the authors' decoder)",
    "unedit_part": "psnr/lpips/mse/ssim on both images multiplied by (1 - mask), whole images scored; NaN when "
    "1 - mask is empty",
    "structure_distance": "whole images; MSE of DINO ViT-B/8 last-block key self-similarity; pixels enter as "
    "0..255 before the 224 resize and ImageNet normalisation, as in the authors' script",
    "clip": "CLIPScore max(100 cos, 0): source image vs original prompt, edited image vs editing prompt, edited "
    "image times mask vs editing prompt (NaN when the mask is empty); prompts without [ ]",
    "averaging": "mean over the edited rows whose value is not NaN (count and nan say how many; failed rows are "
    "left out and counted in failed); an infinite PSNR is kept (finite_mean leaves it out)",
}


def _versions() -> dict[str, str | None]:
    """The packages whose versions change the numbers (torchmetrics' SSIM border rule, for one)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in ("bdia", "torch", "torchmetrics", "transformers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def run_pie(
    editor: Any,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    settings: PieSettings,
    metrics: PieMetrics | None = None,
    *,
    types: Sequence[str] | None = None,
    limit: int | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Invert and edit every entry of ``data_dir`` with ``editor`` and ``settings``, write the edited images under
    ``out_dir/annotation_images/`` and the metrics to ``results.csv`` / ``results.json``; return the report.

    Refused before any work: a folder not in PIE's format, a prompt the model cannot take, an output folder that is
    not empty (unless ``overwrite``) or overlaps ``data_dir``. An image whose edit fails (e.g. a non-finite result)
    is recorded as failed (NaN metrics) and the run goes on. Metrics are computed on the edited files as written.
    """
    root = Path(data_dir)
    items = read_pie(root, types, limit)
    for item in items:
        try:
            editor.validate_prompt([item.source_prompt, item.target_prompt])
        except ValueError as e:
            raise ValueError(f"entry {item.key!r}: {e}") from None
    seen: dict[str, str] = {}
    for item in items:
        if item.image_path in seen:
            raise ValueError(
                f"entries {seen[item.image_path]!r} and {item.key!r} share the image_path {item.image_path!r}: "
                "their edited images would be written to one file"
            )
        seen[item.image_path] = item.key
    out = check_output_dir(out_dir, overwrite)
    check_folders([root], [], out)
    inv_g, edit_g = settings.resolved(editor.default_guidance)
    if settings.method == "nulltext":
        editor.check_null_text()  # before any work: a model whose embeddings cannot be optimised is refused
    metrics = metrics if metrics is not None else PieMetrics()
    for metric, why in metrics.skipped.items():
        log(f"note: {metric} {why}")
    out.mkdir(parents=True, exist_ok=True)
    lock = OutputLock(out)
    lock.acquire()
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    report: dict[str, Any] = {
        "data_dir": os.fspath(root),
        "model": editor.backend.record().get("id"),
        "settings": {
            **{k: getattr(settings, k) for k in ("method", "label", "steps", "strength")},
            "solver": {
                k: (v if isinstance(v, (str, int, float, type(None))) else repr(v)) for k, v in settings.solver.items()
            },
            "inversion_guidance": inv_g,
            "guidance": edit_g,
        },
        "metrics": list(METRICS),
        "skipped": metrics.skipped,
        "rules": RULES,
        "versions": _versions(),
    }
    try:
        for n, item in enumerate(items, 1):
            src_path = root / IMAGES / item.image_path
            target = out / IMAGES / item.image_path
            row: dict[str, Any] = {
                "key": item.key,
                "editing_type_id": item.editing_type_id,
                "image_path": item.image_path,
                "output": f"{IMAGES}/{item.image_path}",
                **dict.fromkeys(METRICS, math.nan),
            }
            try:
                source = _read_rgb(src_path)
                mask = mask_decode(item.mask, source.shape[:2])
                image, info = _edit_one(editor, src_path, item, mask, settings, inv_g, edit_g)
                with atomic_path(target, overwrite) as tmp:
                    image.save(tmp)
                edited = _read_rgb(target)
                row.update(info)
                row.update(metrics.compute(source, edited, mask, item.source_prompt, item.target_prompt))
                row["status"] = "done"
            except (ValueError, RuntimeError, ArithmeticError, OSError) as e:
                row.update(status="failed", error=" ".join(str(e).split()) or type(e).__name__)
            rows.append(row)
            shown = ", ".join(f"{m} {row[m]:.4g}" for m in ("psnr_unedit_part", "ssim_unedit_part") if m in row)
            log(f"[{n}/{len(items)}] {item.key} {row['status']}: {row.get('error') or shown}")
            done = [r for r in rows if r["status"] == "done"]
            report.update(
                rows=rows,
                summary=summarise(done),
                by_type={
                    t: summarise([r for r in done if r["editing_type_id"] == t])
                    for t in sorted({r["editing_type_id"] for r in done})
                },
                images=len(rows),
                failed=len(rows) - len(done),
                seconds=round(time.perf_counter() - start, 3),
            )
            _write_results(out, rows, report)
    finally:
        lock.release()
    return report
