"""The many-inputs forms of ``bdia invert | reconstruct | edit``: folders and lists in, a folder out.

    bdia invert digits/ --prompt "" -o inverted/ --batch-size 16       # one .safetensors per image
    bdia reconstruct inverted/ -o again/                                # or inverted/manifest.jsonl
    bdia edit inverted/ --prompt 8 -o eights/
    torchrun --nproc_per_node 2 -m bdia.cli invert digits/ -o inverted/   # 2 processes

Each function takes the parsed arguments of the single-input command (plus :func:`add_batch_arguments`)
and an editor (from :func:`editor_for`, which puts each launched process on its own device) and
runs :mod:`bdia.datasets.batch`. ``bdia invert|reconstruct|edit`` (:mod:`bdia.cli.invert` and its siblings)
call them when :func:`wants_many`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import DEFAULT_MODEL, IMAGE_SUFFIXES, check_common, require_model, running

if TYPE_CHECKING:
    from ..datasets.batch import Summary

# bdia.datasets.batch's IMAGE_EXTENSIONS, LIST_EXTENSIONS and MANIFEST, here without importing torch (parsing
# the command line stays light); tests/test_cli_startup.py checks that they agree.
IMAGE_EXTENSIONS = IMAGE_SUFFIXES
LIST_EXTENSIONS = (".txt", ".csv", ".jsonl")
MANIFEST = "manifest.jsonl"


def load_editor(model: str, **kwargs: Any) -> Any:
    """The package's one editor loader (:func:`bdia.editing.editor.load_editor`), used here and by callers of
    this module; imported on first use."""
    from ..editing.editor import load_editor as load

    return load(model, **kwargs)


def find_inputs(source: str, kind: str) -> Any:
    from ..datasets.batch import find_inputs as find

    return find(source, kind)


__all__ = [
    "add_batch_arguments",
    "wants_many",
    "process_device",
    "load_editor",
    "editor_for",
    "invert_many",
    "reconstruct_many",
    "edit_many",
    "run_many",
]

COMMANDS = ("invert", "reconstruct", "edit")


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the many-inputs form, added to the ``invert``, ``reconstruct`` or ``edit`` parser."""
    g = parser.add_argument_group("many inputs (a folder, a list .txt/.csv/.jsonl or a manifest; -o a folder)")
    g.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="images of one size inverted or regenerated together "
        "(default 8); results are bit for bit reproducible for one batch size",
    )


def _folder_like(path: str) -> bool:
    """A folder output: one that exists, ends in a separator or has no suffix. A name with the single form's
    suffix (an image or .safetensors) is that form's output, refused there if it is a folder."""
    p = Path(path)
    if p.suffix.lower() in IMAGE_EXTENSIONS + (".safetensors",) and not path.endswith(("/", os.sep)):
        return False
    return p.is_dir() or path.endswith(("/", os.sep)) or p.suffix == ""


def _is_collection(path: str) -> bool:
    return Path(path).is_dir() or Path(path).suffix.lower() in LIST_EXTENSIONS


def wants_many(args: argparse.Namespace, command: str) -> bool:
    """True when the command's inputs are folders or lists, or its ``-o`` is a folder."""
    if command == "invert":
        return _folder_like(args.output) or any(_is_collection(x) for x in args.images)
    source = args.inversion if command == "reconstruct" else args.source
    return _folder_like(args.output) or _is_collection(source)


def process_device(device: str | None) -> str | None:
    """The device for this process: under ``torchrun`` / ``accelerate launch``, "auto" and "cuda" mean
    this process's own GPU (accelerate's ``PartialState().device``), or the CPU without GPUs."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or device not in (None, "auto", "cuda"):
        return device
    import torch
    from accelerate import PartialState

    return str(PartialState(cpu=not torch.cuda.is_available()).device)


def editor_for(args: argparse.Namespace, command: str) -> Any:
    """The editor of a many-inputs run: ``--model`` (digits by default) for invert; for reconstruct and
    edit, the model the first inversion was made with (with its dtype and revision) unless ``--model``."""
    device = process_device(args.device)
    pickle = {"allow_pickle": True} if getattr(args, "allow_pickle", False) else {}
    if command == "invert":
        return load_editor(
            args.model or DEFAULT_MODEL,
            dtype=args.dtype,
            device=device,
            revision=args.revision,
            progress=False,
            **pickle,
        )
    record = _common_model_record(_inversion_inputs(args, command))
    model = args.model or record.get("id")
    if not model:
        raise ValueError("the inversions do not record their model; pass --model")
    require_model(model)
    own = model == record.get("id")  # the inversions' dtype and revision apply to their own model only
    return load_editor(
        model,
        dtype=args.dtype or (record.get("dtype") if own else None),
        device=device,
        revision=args.revision or (record.get("revision") if own else None),
        progress=False,
        **pickle,
    )


def _inversion_inputs(args: argparse.Namespace, command: str) -> list:
    source = args.inversion if command == "reconstruct" else args.source
    if Path(source).suffix.lower() in IMAGE_EXTENSIONS:
        raise ValueError(
            f"{source!r} is an image: invert images first (bdia invert IMAGES -o FOLDER), then "
            f"{command} that folder or its {MANIFEST}"
        )
    return find_inputs(source, "inversion")


def _common_model_record(items: list) -> dict[str, Any]:
    """The ``model`` record most of the readable inversion files share (the first such on a tie). A file
    made with another model, or with a malformed header, is recorded as failed by the run itself."""
    from safetensors import safe_open

    from ..io.saved import _check_model_record

    counts: dict[str, list] = {}
    for item in items:
        if item.error is not None:
            continue
        try:
            with safe_open(item.source, framework="pt") as f:
                model = json.loads((f.metadata() or {})["bdia"])["model"]
            _check_model_record(model)
        except Exception:  # noqa: BLE001 - any unreadable header is that file's failure, reported by the run
            continue
        key = json.dumps([model.get(k) for k in ("id", "revision", "dtype")])
        counts.setdefault(key, [0, model])[0] += 1
    if not counts:
        raise ValueError(f"none of the {len(items)} inversion file(s) can be read")
    return max(counts.values(), key=lambda c: c[0])[1]


def _folder_output(args: argparse.Namespace) -> str:
    if Path(args.output).suffix and not Path(args.output).is_dir():
        raise ValueError(f"with folders or lists as input, -o is a folder; got {args.output!r}")
    return args.output


def _report(summary: Summary, out: str, command: str) -> int:
    print(f"{command}: {summary}")
    for source, reason in summary.failures[:10]:
        shown = source.encode("utf-8", "backslashreplace").decode()  # a file name that is not UTF-8
        print(f"  failed: {shown}: {reason}", file=sys.stderr)
    if summary.rank == 0:
        print(f"wrote {Path(out) / MANIFEST}")
    return 1 if summary.failed else 0


def invert_many(args: argparse.Namespace, editor: Any) -> int:
    """``bdia invert IMAGES_FOLDERS_OR_LISTS -o FOLDER``: one inversion per image, resumably."""
    from ..datasets.batch import invert_files

    out = _folder_output(args)
    settings = {
        "negative_prompt": args.negative_prompt,
        "guidance_scale": args.guidance,
        "num_steps": args.steps,
        "strength": args.strength,
        "method": args.method,
        "gamma": args.gamma,
        "p": args.p,
        "size": args.size,
        "grid": getattr(args, "grid", None),
    }
    if args.method == "rex":  # the editor takes Rex as a ready-made solver
        from ..solvers import make_solver

        settings["method"] = make_solver("rex", base=args.base, zeta=args.zeta)
    summary = invert_files(
        editor,
        args.images,
        out,
        args.prompt or "",
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        progress=not args.quiet,
        check=bool(getattr(args, "check", False)),
        **{k: v for k, v in settings.items() if v is not None},
    )  # options left out: the editor's defaults
    return _report(summary, out, "invert")


def reconstruct_many(args: argparse.Namespace, editor: Any) -> int:
    """``bdia reconstruct FOLDER_OR_MANIFEST -o FOLDER``: one image per inversion, with its latent error."""
    from ..datasets.batch import reconstruct_files

    out = _folder_output(args)
    _inversion_inputs(args, "reconstruct")  # an image given is refused with its advice
    summary = reconstruct_files(
        editor, args.inversion, out, batch_size=args.batch_size, overwrite=args.overwrite, progress=not args.quiet
    )
    return _report(summary, out, "reconstruct")


def edit_many(args: argparse.Namespace, editor: Any) -> int:
    """``bdia edit FOLDER_OR_MANIFEST_OR_LIST --prompt P -o FOLDER``: a list's prompts override ``--prompt``."""
    from ..datasets.batch import edit_files

    out = _folder_output(args)
    negative = {} if args.negative_prompt is None else {"negative_prompt": args.negative_prompt}
    _inversion_inputs(args, "edit")
    summary = edit_files(
        editor,
        args.source,
        out,
        args.prompt,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        progress=not args.quiet,
        guidance_scale=args.guidance,
        **negative,
    )
    return _report(summary, out, "edit")


RUNNERS = {"invert": invert_many, "reconstruct": reconstruct_many, "edit": edit_many}


def run_many(args: argparse.Namespace, command: str) -> int:
    """The many-inputs form (:mod:`bdia.cli.datasets`) in the commands' error and threads context."""
    from ..runtime import torch_threads

    check_common(args)
    if getattr(args, "upscale", 1) != 1:
        raise ValueError("--upscale applies to single outputs (-o an image file), not to folders")
    with running(args, args.model or (DEFAULT_MODEL if command == "invert" else "")):
        editor = editor_for(args, command)
        with torch_threads(1 if editor.backend.family == "digits" else None):  # as running, once the model is known
            return RUNNERS[command](args, editor)
