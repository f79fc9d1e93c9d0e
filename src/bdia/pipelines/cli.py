"""``bdia invert | reconstruct | edit | generate``: real-image inversion and editing on the command line.

The default ``--model digits`` is the embedded 16x16 digits model, whose prompts are class labels::

    bdia invert three.png --prompt 3 -o three.safetensors
    bdia reconstruct three.safetensors -o three_again.png
    bdia edit three.safetensors --prompt 8 -o eight.png
    bdia generate --prompt 7 -o seven.png

and ``--model PATH_OR_ID`` a diffusers pipeline with text prompts: Stable Diffusion 1.x/2.x/XL,
Stable Diffusion 3 or Flux, picked from the folder's ``model_index.json``::

    bdia invert cat.png --model PATH_OR_ID --prompt "a photo of a cat" -o cat.safetensors
    bdia edit cat.safetensors --prompt "a photo of a dog" -o dog.png

Folders, lists (.txt/.csv/.jsonl) and manifests as inputs, or a folder as ``-o``, run the many-inputs
form of invert, reconstruct and edit (:mod:`bdia.pipelines.batch_cli`): one output per input, a
``manifest.jsonl``, resumable, and split between processes under ``torchrun`` / ``accelerate launch``.

Every model is loaded through :func:`bdia.pipelines.load_editor`. Bad input is refused before the
first model call (outputs, images, prompts, device, solver parameters), as one line and exit code
2; outputs are written atomically (``--overwrite`` to replace). diffusers is imported inside the
commands, and only for Stable Diffusion models.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..io import atomic_path, check_writable
from ..grids import GRID_KINDS
from . import batch_cli

METHODS = ("bdia", "edict", "rex", "ddim")
DEFAULT_MODEL = "digits"  # the embedded digits model (bdia.pipelines.digits_editor); needs no diffusers
REX_BASES = ("euler", "midpoint", "heun", "ralston", "rk4")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
LOSSY_SUFFIXES = (".jpg", ".jpeg", ".webp")
CHUNK = 16  # generate: images made and written per batch, so memory stays bounded


# ----- argument types: refuse bad values while parsing ------------------------------------------------
def _number(kind: str, low: float, high: float, integer: bool = False):
    def parse(value: str) -> float | int:
        try:
            x = int(value) if integer else float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{kind} must be {'an integer' if integer else 'a number'}, "
                                             f"got {value!r}") from None
        if not (math.isfinite(x) and low <= x <= high):
            bounds = f"{low} and {high}" if integer else f"{low:g} and {high:g}"
            raise argparse.ArgumentTypeError(f"{kind} must be between {bounds}, got {value}")
        return x

    return parse


_guidance = _number("guidance scale", -1000, 1000)  # beyond, guidance overflows the model's outputs
_steps = _number("steps", 2, 10000, integer=True)
_strength = _number("strength", 1e-6, 1.0)
_seed = _number("seed", 0, 2**64 - 1, integer=True)  # what torch.Generator.manual_seed accepts
_count = _number("number of images", 1, 10**7, integer=True)
_pixels = _number("pixels", 1, 65536, integer=True)
_p = _number("EDICT p", 1e-6, 1.0)
_zeta = _number("Rex zeta", 1e-6, 1.0)


def _gamma(value: str) -> float | str:
    if value.lower() == "belm":
        return "belm"
    x = _number("gamma", 0.0, 1.0)(value)
    if x == 0.0:
        raise argparse.ArgumentTypeError("gamma 0 is DDIM, which cannot invert exactly; give a gamma in (0, 1]")
    return x


def _size(value: str) -> tuple[int, int]:
    try:
        parts = [int(v) for v in value.lower().replace("x", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT or one number, got {value!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(1 <= v <= 65536 for v in parts):
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT (1..65536) or one number, got {value!r}")
    return parts[0], parts[1]


# ----- argument groups ---------------------------------------------------------------------------------
_MODEL_HELP = ("'digits' (the embedded 16x16 digits model: prompts are class labels 0..9) or a diffusers "
               "folder or hub id (text prompts): Stable Diffusion 1.x/2.x/XL, SD3 or Flux, from its model_index.json")


def _model_args(p: argparse.ArgumentParser, default: str) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, metavar="PATH_OR_ID", help=f"{_MODEL_HELP} (default: {default})")
    g.add_argument("--revision", help="hub revision (branch, tag or commit)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default auto: CUDA, else MPS, "
                   "else CPU)")
    g.add_argument("--allow-pickle", action="store_true", help="let a Stable Diffusion model load pickled "
                   "weights (.bin, .ckpt), which can run code when loaded: only for files you trust")
    g.add_argument("--dtype", default=None, choices=("auto", "float32", "float16", "bfloat16"),
                   help="model dtype (default on CUDA: float16 for SD, bfloat16 for SD3/Flux; else float32; for a "
                        "saved inversion, its own); the solver state stays float64")


def _solver_args(p: argparse.ArgumentParser, gamma: float, title: str = "solver") -> None:
    """Solver options; defaults are None so that a command can tell given from default."""
    g = p.add_argument_group(title)
    g.add_argument("--method", default=None, choices=METHODS, help="bdia (exact), edict (exact, 2x NFE), "
                   "rex (exact reversible Runge-Kutta, 2x stages NFE per step), ddim (approximate inversion); "
                   "default bdia")
    g.add_argument("--gamma", type=_gamma, default=None, help=f"BDIA gamma in (0, 1] or 'belm' (default {gamma})")
    g.add_argument("--p", type=_p, default=None, help="EDICT mixing weight in (0, 1] (default 0.93)")
    g.add_argument("--base", default=None, choices=REX_BASES, help="Rex's Runge-Kutta base (default midpoint)")
    g.add_argument("--zeta", type=_zeta, default=None, help="Rex's coupling in (0, 1] (default 0.9)")
    g.add_argument("--grid", default=None, choices=GRID_KINDS, help="grid of noise levels for discrete-time "
                   "models: diffusers (the scheduler's own spacing, default), leading/trailing/linspace, karras "
                   "(measured most faithful: see the README), logsnr; flow models use their pipeline's grid")
    g.add_argument("--steps", type=_steps, default=None, help="number of steps N, at least 2 (default 50)")
    p.set_defaults(default_gamma=gamma)


def _output_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("-o", "--output", required=True, help=what)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("invert", help="invert real images (digits model by default, or Stable Diffusion)",
                              description="Invert images to latents (saved as .safetensors) under a prompt: "
                                          "with the default --model digits, the prompt is the digit's class (\"3\").")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image file(s) (one batch must share one size), or "
                   "folders and lists (.txt/.csv/.jsonl, with per-image prompts) with -o a folder: one inversion "
                   "per image and a manifest.jsonl")
    p.add_argument("--prompt", default="", help="the source prompt describing the image: a class 0..9 for digits "
                   "(default: empty, the unconditional model)")
    p.add_argument("--negative-prompt", default=None, help="negative prompt (the unconditional branch)")
    p.add_argument("--guidance", type=_guidance, default=1.0, help="guidance scale for inversion (default 1.0)")
    p.add_argument("--strength", type=_strength, default=1.0, help="invert only this fraction of the grid (BDIA's "
                   "authors edit with 0.8; default 1.0)")
    p.add_argument("--size", type=_size, help="resize to WIDTHxHEIGHT (default: keep, cropped to the VAE factor)")
    p.add_argument("--check", action="store_true", help="also reconstruct and print the round-trip errors")
    _model_args(p, DEFAULT_MODEL)
    _solver_args(p, gamma=1.0)
    _output_args(p, "the inversion file to write (.safetensors), or a folder for many inputs")
    batch_cli.add_batch_arguments(p)
    p.set_defaults(func=cmd_invert)

    p = subparsers.add_parser("reconstruct", help="regenerate images from a saved inversion",
                              description="Regenerate the inverted images with the inversion's own prompt.")
    p.add_argument("inversion", metavar="INV", help="a .safetensors file written by `bdia invert`, or a folder of "
                   "them or its manifest.jsonl (with -o a folder)")
    p.add_argument("--image", nargs="+", help="the original image(s): report the errors of the written files "
                   "against them")
    _model_args(p, "the one the inversion was made with")
    _output_args(p, "output image (.png); a batch writes NAME_0.png, NAME_1.png...; a folder for many inputs")
    batch_cli.add_batch_arguments(p)
    p.set_defaults(func=cmd_reconstruct)

    p = subparsers.add_parser("edit", help="edit a saved inversion, or an image, under a new prompt",
                              description="Regenerate an inversion (or an image, inverted first) under a new prompt. "
                                          "A saved inversion keeps its own solver, steps and strength.")
    p.add_argument("source", metavar="INV_OR_IMAGE", help="a saved inversion, or an image file to invert first; "
                   "or a folder of inversions, its manifest.jsonl or a list (.txt/.csv/.jsonl, per-item prompts) "
                   "with -o a folder")
    p.add_argument("--prompt", required=True, help="the target prompt (a class 0..9 for digits)")
    p.add_argument("--negative-prompt", default=None, help="negative prompt (default: the inversion's)")
    p.add_argument("--guidance", type=_guidance, default=None, help="guidance scale of the edit "
                   "(default: the inversion's)")
    g = p.add_argument_group("inverting an image first (refused with a saved inversion)")
    g.add_argument("--source-prompt", default=None, help="the prompt describing the input image (default empty)")
    g.add_argument("--invert-guidance", type=_guidance, default=None, help="guidance scale for inversion "
                   "(default 1.0)")
    g.add_argument("--strength", type=_strength, default=None, help="fraction of the grid to invert (default 1.0)")
    g.add_argument("--size", type=_size, help="resize to WIDTHxHEIGHT")
    _model_args(p, f"the inversion's; for an image, {DEFAULT_MODEL}")
    _solver_args(p, gamma=1.0, title="solver for inverting an image (refused with a saved inversion)")
    _output_args(p, "output image (.png); a batch writes NAME_0.png, NAME_1.png...; a folder for many inputs")
    batch_cli.add_batch_arguments(p)
    p.set_defaults(func=cmd_edit)

    p = subparsers.add_parser("generate", help="generate images from a prompt (a class 0..9 for digits) with "
                              "BDIA, EDICT or DDIM",
                              description="Generate images from a prompt with a float64 solver state: with the "
                                          "default --model digits, the prompt is a class (\"7\").")
    p.add_argument("--prompt", required=True, help="the prompt (a class 0..9 for digits)")
    p.add_argument("--negative-prompt", default=None, help="what the images should not show: the unconditional "
                   "branch of guidance (default: the model's empty prompt)")
    p.add_argument("--guidance", type=_guidance, default=None, help="guidance scale (default 2.0 for digits, 7.5 "
                   "for SD)")
    p.add_argument("--seed", type=_seed, default=0, help="noise seed, 0 .. 2**64-1 (default 0)")
    p.add_argument("--num-images", type=_count, default=1, help=f"how many images to make (default 1); made and "
                   f"written {CHUNK} at a time")
    p.add_argument("--height", type=_pixels, default=None, help="image height in pixels (default: the model's "
                   "native size)")
    p.add_argument("--width", type=_pixels, default=None, help="image width in pixels (default: the model's "
                   "native size)")
    _model_args(p, DEFAULT_MODEL)
    _solver_args(p, gamma=0.5)
    _output_args(p, "output image (.png); several images write NAME_0.png, NAME_1.png...")
    p.set_defaults(func=cmd_generate)


# ----- helpers ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _running(args: argparse.Namespace, model: str) -> Iterator[None]:
    """Warnings as one-line notes; non-finite latents and dtype problems as user errors; one torch thread
    for the tiny digits model (per-op overhead dominates: more threads mostly spin-wait), restored after."""
    from ..cli import CommandError
    from ..runtime import torch_threads
    from ..solvers import NonFiniteError

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"bdia: warning: {message}", file=sys.stderr)

    from .policy import choose_device

    # "auto" is float16 for Stable Diffusion on CUDA only: hint at float32 only where it is not already.
    auto_half = model != DEFAULT_MODEL and choose_device(args.device).type == "cuda"
    low = args.dtype in ("float16", "bfloat16") or (args.dtype in (None, "auto") and auto_half)
    with torch_threads(1 if model == DEFAULT_MODEL else None), warnings.catch_warnings():
        warnings.showwarning = show
        try:
            yield
        except NonFiniteError as e:
            hint = "try --dtype float32" if low else "try fewer steps, or gamma/p closer to 1"
            raise CommandError(f"{e} ({hint})") from None
        except RuntimeError as e:
            if "Half" in str(e) or "BFloat16" in str(e):
                raise CommandError(f"{str(e).splitlines()[0]}: this device cannot run --dtype {args.dtype}; "
                                   "use --dtype float32") from None
            raise


def _check_common(args: argparse.Namespace) -> str:
    """Checks every command shares, before any model is loaded; returns the model name."""
    from .policy import choose_device

    model = args.model or DEFAULT_MODEL
    choose_device(args.device)
    if model == DEFAULT_MODEL and (args.revision is not None or args.allow_pickle):
        flag = "--revision" if args.revision is not None else "--allow-pickle"
        raise ValueError(f"{flag} applies to Stable Diffusion models; the digits model ships with bdia")
    return model


def _check_prompts(model: str, *prompts: str | None) -> None:
    """Class labels for digits are checked before loading anything (text prompts fit any SD model)."""
    if model == DEFAULT_MODEL:
        from .digits_editor import parse_class

        for prompt in prompts:
            if prompt is not None:
                parse_class(prompt)


def _check_images(paths: Sequence[str]) -> None:
    from .images import read_image

    for path in paths:
        read_image(path)


def _solver(args: argparse.Namespace) -> dict[str, Any]:
    """method/gamma/p for the editor, refusing a parameter the method does not take (before any work)."""
    from ..solvers import make_solver

    method = args.method or "bdia"
    if args.gamma is not None and method != "bdia":
        raise ValueError(f"--gamma applies to --method bdia, not {method}")
    if args.p is not None and method != "edict":
        raise ValueError(f"--p applies to --method edict, not {method}")
    for option in ("base", "zeta"):
        if getattr(args, option, None) is not None and method != "rex":
            raise ValueError(f"--{option} applies to --method rex, not {method}")
    gamma = args.default_gamma if args.gamma is None and method == "bdia" else args.gamma
    grid = {"grid": args.grid} if getattr(args, "grid", None) is not None else {}
    if method == "rex":  # the editor takes Rex as a ready-made solver
        rex = make_solver("rex", base=args.base, zeta=args.zeta)
        return {"method": rex, "gamma": None, "p": None, **grid}
    make_solver(method, gamma=gamma, p=args.p)  # refuses bad parameter values now
    return {"method": method, "gamma": gamma, "p": args.p, **grid}


def _output_paths(path: str, n: int, overwrite: bool) -> list[Path]:
    p = Path(path)
    if p.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"output {path!r} needs an image extension: {', '.join(IMAGE_SUFFIXES)}")
    paths = [p] if n == 1 else [p.with_name(f"{p.stem}_{k}{p.suffix}") for k in range(n)]
    for q in paths:
        check_writable(q, overwrite)
    return paths


def _save_images(images: Sequence[Any], paths: Sequence[Path], overwrite: bool) -> None:
    for im, q in zip(images, paths):
        with atomic_path(q, overwrite) as tmp:
            im.save(tmp)  # the temporary keeps the extension, which picks the format


def _fmt_solver(cfg: dict[str, Any]) -> str:
    params = ", ".join(f"{k}={v}" for k, v in cfg.items() if k != "name")
    return f"{cfg['name']}({params})"


def _inv_output(path: str, overwrite: bool) -> Path:
    if Path(path).suffix.lower() != ".safetensors":
        raise ValueError(f"inversion output {path!r} must end in .safetensors")
    return check_writable(path, overwrite)


def _is_inversion_file(path: str) -> bool:
    return Path(path).suffix.lower() == ".safetensors"


def _editor_for(inv: Any, args: argparse.Namespace):
    from .editor import load_editor

    model = args.model or inv.model.get("id")
    if not model:
        raise ValueError("the inversion does not record its model; pass --model")
    own = model == inv.model.get("id")  # the inversion's dtype and revision apply to its own model only
    dtype = args.dtype or (inv.model.get("dtype") if own else None)
    revision = args.revision or (inv.model.get("revision") if own and model != DEFAULT_MODEL else None)
    return load_editor(model, dtype=dtype, device=args.device, revision=revision, progress=not args.quiet,
                       **_pickle(args))


def _new_editor(args: argparse.Namespace, model: str):
    from .editor import load_editor

    return load_editor(model, dtype=args.dtype, device=args.device, revision=args.revision, progress=not args.quiet,
                       **_pickle(args))


def _pickle(args: argparse.Namespace) -> dict[str, bool]:
    return {"allow_pickle": True} if args.allow_pickle else {}


def _round_trip_report(editor: Any, images: Any, inv: Any, rec: Any, size: Any, written: Sequence[Path] = ()) -> str:
    """Latent error, 8-bit agreement and, given the original images, the errors of what is on disk."""
    parts = []
    if rec.latent_error is not None:
        parts.append(f"max {editor.backend.latent_name} error {rec.latent_error:.3g}")
    if "identical" in rec.info:
        parts.append(f"8-bit pixels identical to the inverted image: {100 * rec.info['identical']:.1f}%")
    if images is not None and editor.backend.lossy_codec:
        pe = editor.pixel_errors(images, rec, inv, size=size)
        parts.append(f"pixel MAE {pe['reconstruction']:.4f} (the VAE's own round trip: {pe['vae_roundtrip']:.4f}, "
                     f"difference from it {pe['vs_vae']:.2g})")
    if images is not None:
        if written:  # what the files hold, after the format's own encoding
            pe, where = editor.file_errors(images, [str(q) for q in written], size), "written file"
        else:
            pe, where = editor.pixel_errors(images, rec, inv, size=size), "reconstruction"
        parts.append(f"{where} against the image file: pixel MAE {pe['reconstruction']:.4f}, max error "
                     f"{pe['max_error']}/255, {100 * pe['identical']:.1f}% of pixels identical")
    return "; ".join(parts)


def _warn_lossy(paths: Sequence[Path]) -> None:
    if paths and paths[0].suffix.lower() in LOSSY_SUFFIXES:
        warnings.warn(f"{paths[0].suffix} is a lossy format: the file differs from the reconstruction; use .png "
                      "to keep it exactly", stacklevel=2)


def _invert(editor: Any, images: Sequence[str], args: argparse.Namespace, solver: dict[str, Any], prompt: str,
            guidance: float, strength: float, steps: int):
    inv = editor.invert(
        list(images), prompt, negative_prompt=args.negative_prompt, guidance_scale=guidance,
        num_steps=steps, strength=strength, size=args.size, progress=not args.quiet, **solver,
    )
    w, h = inv.image_size
    print(f"inverted {inv.batch_size} image(s) {w}x{h} with {_fmt_solver(inv.solver)}, {steps} steps, "
          f"strength {strength}, guidance {guidance}: NFE {inv.inversion.nfe}, {inv.info['seconds']:.2f} s")
    return inv


def _many(args: argparse.Namespace, command: str) -> int:
    """The many-inputs form (:mod:`bdia.pipelines.batch_cli`) in the commands' error and threads context."""
    from ..runtime import torch_threads

    _check_common(args)
    with _running(args, args.model or (DEFAULT_MODEL if command == "invert" else "")):
        editor = batch_cli.editor_for(args, command)
        with torch_threads(1 if editor.backend.family == "digits" else None):  # as _running, once the model is known
            return getattr(batch_cli, f"{command}_many")(args, editor)


# ----- commands ---------------------------------------------------------------------------------------------
def cmd_invert(args: argparse.Namespace) -> int:
    from .saved import save_inversion

    if batch_cli.wants_many(args, "invert"):
        return _many(args, "invert")
    model = _check_common(args)
    out = _inv_output(args.output, args.overwrite)
    _check_images(args.images)
    _check_prompts(model, args.prompt, args.negative_prompt)
    solver = _solver(args)
    with _running(args, model):
        editor = _new_editor(args, model)
        inv = _invert(editor, args.images, args, solver, args.prompt, args.guidance, args.strength, args.steps or 50)
        if args.check:
            rec = editor.reconstruct(inv, progress=not args.quiet)
            print(f"round trip ({rec.seconds:.2f} s): {_round_trip_report(editor, args.images, inv, rec, args.size)}")
        save_inversion(inv, out, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from .saved import load_inversion

    if batch_cli.wants_many(args, "reconstruct"):
        return _many(args, "reconstruct")
    _check_common(args)
    if args.image:
        _check_images(args.image)
    inv = load_inversion(args.inversion)
    paths = _output_paths(args.output, inv.batch_size, args.overwrite)
    if args.image and len(args.image) != inv.batch_size:
        raise ValueError(f"--image got {len(args.image)} file(s) for an inversion of {inv.batch_size} image(s); "
                         "give the inverted images, in order")
    with _running(args, args.model or inv.model.get("id") or ""):
        editor = _editor_for(inv, args)
        rec = editor.reconstruct(inv, progress=not args.quiet)
        _save_images(rec.images, paths, args.overwrite)
        _warn_lossy(paths)
        report = _round_trip_report(editor, args.image, inv, rec, None, written=paths)
    print(f"reconstructed {inv.batch_size} image(s) with {_fmt_solver(inv.solver)}, guidance {inv.guidance_scale}: "
          f"NFE {rec.nfe}, {rec.seconds:.2f} s; {report}")
    print("wrote " + ", ".join(map(str, paths)))
    return 0


_INVERSION_ONLY = ("steps", "method", "gamma", "p", "base", "zeta", "grid", "strength", "source_prompt",
                   "invert_guidance", "size")


def cmd_edit(args: argparse.Namespace) -> int:
    from .saved import load_inversion

    if batch_cli.wants_many(args, "edit"):
        return _many(args, "edit")
    model = _check_common(args)
    if not os.path.isfile(args.source):
        raise FileNotFoundError(f"no file at {args.source!r} (expected an inversion .safetensors or an image)")
    if _is_inversion_file(args.source):
        given = [f"--{k.replace('_', '-')}" for k in _INVERSION_ONLY if getattr(args, k) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} apply to inverting an image; a saved inversion keeps its own "
                             "(invert again to change them)")
        inv = load_inversion(args.source)
        paths = _output_paths(args.output, inv.batch_size, args.overwrite)
        model = args.model or inv.model.get("id") or ""
        _check_prompts(model, args.prompt, args.negative_prompt)
        with _running(args, model):
            editor = _editor_for(inv, args)
            res = _edit(editor, inv, args, paths)
    else:
        paths = _output_paths(args.output, 1, args.overwrite)
        _check_images([args.source])
        source_prompt = args.source_prompt or ""
        _check_prompts(model, args.prompt, source_prompt, args.negative_prompt)
        solver = _solver(args)
        with _running(args, model):
            editor = _new_editor(args, model)
            guidance = 1.0 if args.invert_guidance is None else args.invert_guidance
            strength = 1.0 if args.strength is None else args.strength
            inv = _invert(editor, [args.source], args, solver, source_prompt, guidance, strength, args.steps or 50)
            res = _edit(editor, inv, args, paths)
    scale = inv.guidance_scale if args.guidance is None else args.guidance
    print(f"edited {inv.batch_size} image(s) {inv.prompt[0]!r} -> {args.prompt!r} with {_fmt_solver(inv.solver)}, "
          f"guidance {scale}: NFE {res.nfe}, {res.seconds:.2f} s")
    print("wrote " + ", ".join(map(str, paths)))
    return 0


def _edit(editor: Any, inv: Any, args: argparse.Namespace, paths: Sequence[Path]) -> Any:
    negative = {} if args.negative_prompt is None else {"negative_prompt": args.negative_prompt}
    res = editor.edit(inv, args.prompt, guidance_scale=args.guidance, progress=not args.quiet, **negative)
    _save_images(res.images, paths, args.overwrite)
    return res


def cmd_generate(args: argparse.Namespace) -> int:
    model = _check_common(args)
    paths = _output_paths(args.output, args.num_images, args.overwrite)
    _check_prompts(model, args.prompt, args.negative_prompt)
    solver = _solver(args)
    steps = args.steps or 50
    written: list[Path] = []
    start = time.perf_counter()
    try:
        with _running(args, model):
            editor = _new_editor(args, model)
            guidance = editor.default_guidance if args.guidance is None else args.guidance
            w, h = args.width or editor.backend.default_size[0], args.height or editor.backend.default_size[1]
            editor.backend.latent_shape(1, h, w)  # refuses an unsupported size before any work
            nfe = 0
            for first in range(0, args.num_images, CHUNK):
                chunk = paths[first:first + CHUNK]
                # Chunk k is seeded with seed + its first index: the first images of a long run are those
                # of a short one.
                res = editor.generate(
                    args.prompt, negative_prompt=args.negative_prompt, guidance_scale=guidance, num_steps=steps,
                    height=h, width=w, num_images=len(chunk), seed=(args.seed + first) % 2**64,
                    progress=not args.quiet, **solver,
                )
                _save_images(res.images, chunk, args.overwrite)
                written += chunk
                nfe += res.nfe
    except KeyboardInterrupt:
        if written:
            print(f"interrupted: wrote {len(written)} of {args.num_images} image(s), {written[0]} .. {written[-1]}",
                  file=sys.stderr)
        raise
    except Exception:
        if written:
            print(f"bdia generate: wrote {len(written)} of {args.num_images} image(s) before the error below",
                  file=sys.stderr)
        raise
    gamma = f"(gamma={solver['gamma']})" if solver["method"] == "bdia" else ""
    print(f"generated {len(written)} image(s) {w}x{h} with {solver['method']}{gamma}, {steps} steps, guidance "
          f"{guidance}, seed {args.seed}: NFE {nfe}, {time.perf_counter() - start:.2f} s")
    shown = ", ".join(map(str, written)) if len(written) <= 4 else f"{written[0]} .. {written[-1]}"
    print(f"wrote {len(written)} image(s): {shown}")
    return 0
