"""``bdia invert | reconstruct | edit | generate``: real-image inversion and editing on the command line.

The default ``--model digits`` is the embedded 16x16 digits model, whose prompts are class labels::

    bdia invert three.png --prompt 3 -o three.safetensors
    bdia reconstruct three.safetensors -o three_again.png
    bdia edit three.safetensors --prompt 8 -o eight.png
    bdia generate --prompt 7 -o seven.png

and ``--model PATH_OR_ID`` a Stable Diffusion pipeline with text prompts::

    bdia invert cat.png --model PATH_OR_ID --prompt "a photo of a cat" -o cat.safetensors
    bdia edit cat.safetensors --prompt "a photo of a dog" -o dog.png

Every model is loaded through :func:`load_editor`. Outputs are checked before any work is done
(``--overwrite`` to replace) and written atomically. diffusers is imported inside the commands, and
only for Stable Diffusion models.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..io import atomic_path, check_writable

METHODS = ("bdia", "edict", "ddim")
DEFAULT_MODEL = "digits"  # the embedded digits model (bdia.pipelines.digits_editor); needs no diffusers


def load_editor(model: str, *, dtype: str | None = None, device: str | None = None, revision: str | None = None,
                progress: bool = True, **kwargs: Any):
    """The one place the CLI turns ``--model`` into an editor.

    ``"digits"`` is the embedded digits model (a :class:`~bdia.pipelines.digits_editor.DigitsEditor`,
    float32 unless ``dtype`` says otherwise); anything else a Stable Diffusion folder or hub id (an
    :class:`~bdia.pipelines.Editor`; ``dtype`` "auto" (or None) is float16 on CUDA, float32 elsewhere).
    """
    import torch

    if model == DEFAULT_MODEL:
        from .digits_editor import DigitsEditor

        if revision is not None:
            raise ValueError("--revision applies to hub models; the digits model ships with bdia")
        # The 16x16 UNet is dominated by per-op overhead: more CPU threads mostly spin-wait (as in
        # `bdia demo --threads 1`). The commands restore the thread count when they finish.
        torch.set_num_threads(1)
        return DigitsEditor.load(device=device, dtype=dtype, progress=progress, **kwargs)

    from .editor import Editor

    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype in (None, "auto"):
        dtype = "float16" if str(device).startswith("cuda") else "float32"
    return Editor.from_pretrained(model, torch_dtype=dtype, device=device, revision=revision, progress=progress,
                                  **kwargs)


# ----- argument groups ---------------------------------------------------------------------------------
_MODEL_HELP = ("'digits' (the embedded 16x16 digits model: prompts are class labels 0..9) or a diffusers "
               "Stable Diffusion folder or hub id (text prompts)")


def _model_args(p: argparse.ArgumentParser, default: str) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, metavar="PATH_OR_ID", help=f"{_MODEL_HELP} (default: {default})")
    g.add_argument("--revision", help="hub revision (branch, tag or commit)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps... (default: cuda when available)")
    g.add_argument("--dtype", default=None, choices=("auto", "float32", "float16", "bfloat16"),
                   help="UNet/VAE dtype (default: float16 on CUDA for SD, else float32; for a saved inversion, "
                        "its own)")


def _solver_args(p: argparse.ArgumentParser, gamma: float, title: str = "solver") -> None:
    g = p.add_argument_group(title)
    g.add_argument("--method", default="bdia", choices=METHODS, help="bdia (exact), edict (exact, 2x NFE), "
                   "ddim (approximate inversion); default bdia")
    g.add_argument("--gamma", type=_gamma, default=gamma, help=f"BDIA gamma in (0, 1] or 'belm' (default {gamma})")
    g.add_argument("--p", type=float, default=0.93, help="EDICT mixing weight (default 0.93)")
    g.add_argument("--steps", type=int, default=50, help="number of steps N (default 50)")


def _output_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("-o", "--output", required=True, help=what)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _gamma(value: str) -> float | str:
    if value.lower() == "belm":
        return "belm"
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"gamma must be a number in (0, 1] or 'belm', got {value!r}") from None


def _size(value: str) -> tuple[int, int]:
    try:
        parts = [int(v) for v in value.lower().replace("x", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT or one number, got {value!r}") from None
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT or one number, got {value!r}")
    return parts[0], parts[1]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("invert", help="invert real images (digits model by default, or Stable Diffusion)",
                              description="Invert images to latents (saved as .safetensors) under a prompt: "
                                          "with the default --model digits, the prompt is the digit's class (\"3\").")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image file(s); a batch must share one size")
    p.add_argument("--prompt", default="", help="the source prompt describing the image: a class 0..9 for digits "
                   "(default: empty, the unconditional model)")
    p.add_argument("--negative-prompt", default=None, help="negative prompt (the unconditional branch)")
    p.add_argument("--guidance", type=float, default=1.0, help="guidance scale for inversion (default 1.0)")
    p.add_argument("--strength", type=float, default=1.0, help="invert only this fraction of the grid (BDIA's "
                   "authors edit with 0.8; default 1.0)")
    p.add_argument("--size", type=_size, help="resize to WIDTHxHEIGHT (default: keep, cropped to the VAE factor)")
    p.add_argument("--check", action="store_true", help="also reconstruct and print the round-trip errors")
    _model_args(p, DEFAULT_MODEL)
    _solver_args(p, gamma=1.0)
    _output_args(p, "the inversion file to write (.safetensors)")
    p.set_defaults(func=cmd_invert)

    p = subparsers.add_parser("reconstruct", help="regenerate images from a saved inversion",
                              description="Regenerate the inverted images with the inversion's own prompt.")
    p.add_argument("inversion", metavar="INV", help="a .safetensors file written by `bdia invert`")
    p.add_argument("--image", nargs="+", help="the original image(s), to report pixel errors")
    _model_args(p, "the one the inversion was made with")
    _output_args(p, "output image (.png); a batch writes NAME_0.png, NAME_1.png...")
    p.set_defaults(func=cmd_reconstruct)

    p = subparsers.add_parser("edit", help="edit a saved inversion, or an image, under a new prompt",
                              description="Regenerate an inversion (or an image, inverted first) under a new prompt.")
    p.add_argument("source", metavar="INV_OR_IMAGE", help="a saved inversion, or an image file to invert first")
    p.add_argument("--prompt", required=True, help="the target prompt (a class 0..9 for digits)")
    p.add_argument("--negative-prompt", default=None, help="negative prompt (default: the inversion's)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale of the edit "
                   "(default: the inversion's)")
    g = p.add_argument_group("inverting an image first")
    g.add_argument("--source-prompt", default="", help="the prompt describing the input image")
    g.add_argument("--invert-guidance", type=float, default=1.0, help="guidance scale for inversion (default 1.0)")
    g.add_argument("--strength", type=float, default=1.0, help="fraction of the grid to invert (default 1.0)")
    g.add_argument("--size", type=_size, help="resize to WIDTHxHEIGHT")
    _model_args(p, f"the inversion's; for an image, {DEFAULT_MODEL}")
    _solver_args(p, gamma=1.0, title="solver for inverting an image (a saved inversion keeps its own)")
    _output_args(p, "output image (.png); a batch writes NAME_0.png, NAME_1.png...")
    p.set_defaults(func=cmd_edit)

    p = subparsers.add_parser("generate", help="generate images from a prompt (a class 0..9 for digits) with "
                              "BDIA, EDICT or DDIM",
                              description="Generate images from a prompt with a float64 solver state: with the "
                                          "default --model digits, the prompt is a class (\"7\").")
    p.add_argument("--prompt", required=True, help="the prompt (a class 0..9 for digits)")
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default 2.0 for digits, 7.5 for SD)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--num-images", type=int, default=1)
    p.add_argument("--height", type=int, default=None, help="pixels (default: the model's native size)")
    p.add_argument("--width", type=int, default=None)
    _model_args(p, DEFAULT_MODEL)
    _solver_args(p, gamma=0.5)
    _output_args(p, "output image (.png); several images write NAME_0.png, NAME_1.png...")
    p.set_defaults(func=cmd_generate)


# ----- helpers ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Warnings as one-line notes; non-finite latents and dtype problems as user errors; torch's thread
    count restored (:func:`load_editor` sets it for the digits model)."""
    from ..cli import CommandError
    from ..runtime import torch_threads
    from ..solvers import NonFiniteError

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"bdia: warning: {message}", file=sys.stderr)

    with torch_threads(None), warnings.catch_warnings():
        warnings.showwarning = show
        try:
            yield
        except NonFiniteError as e:
            raise CommandError(f"{e} (try --dtype float32)") from None
        except RuntimeError as e:
            if "Half" in str(e) or "BFloat16" in str(e):
                raise CommandError(f"{e}; this device cannot run that dtype, try --dtype float32") from None
            raise


def _outputs(path: str, n: int, overwrite: bool) -> list[Path]:
    p = Path(path)
    if p.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"):
        raise ValueError(f"output {path!r} needs an image extension such as .png")
    paths = [p] if n == 1 else [p.with_name(f"{p.stem}_{k}{p.suffix}") for k in range(n)]
    for q in paths:
        check_writable(q, overwrite)
    return paths


def _save_images(images: Sequence[Any], paths: Sequence[Path], overwrite: bool) -> None:
    for im, q in zip(images, paths):
        with atomic_path(q, overwrite) as tmp:
            im.save(tmp)


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
    model = args.model or inv.model.get("id")
    if not model:
        raise ValueError("the inversion does not record its model; pass --model")
    own = model == inv.model.get("id")  # the inversion's dtype and revision apply to its own model only
    dtype = args.dtype or (inv.model.get("dtype") if own else None)
    revision = args.revision or (inv.model.get("revision") if own else None)
    return load_editor(model, dtype=dtype, device=args.device, revision=revision, progress=not args.quiet)


def _round_trip_report(editor: Any, images: Any, inv: Any, rec: Any, size: Any) -> str:
    parts = []
    if rec.latent_error is not None:
        parts.append(f"max {getattr(editor, 'latent_name', 'latent')} error {rec.latent_error:.3g}")
    if "identical" in rec.info:
        parts.append(f"8-bit pixels identical to the inverted image: {100 * rec.info['identical']:.1f}%")
    if images is not None:
        pe = editor.pixel_errors(images, rec, inv, size=size)
        if "vae_roundtrip" in pe:
            parts.append(f"pixel MAE {pe['reconstruction']:.4f} (the VAE's own round trip: {pe['vae_roundtrip']:.4f}, "
                         f"difference from it {pe['vs_vae']:.2g})")
        else:
            parts.append(f"against the image file: pixel MAE {pe['reconstruction']:.4f}, max error "
                         f"{pe['max_error']}/255, {100 * pe['identical']:.1f}% of pixels identical")
    return "; ".join(parts)


def _invert(editor: Any, images: Sequence[str], args: argparse.Namespace, prompt: str, guidance: float):
    inv = editor.invert(
        list(images), prompt, negative_prompt=args.negative_prompt, guidance_scale=guidance,
        num_steps=args.steps, strength=args.strength, method=args.method, gamma=args.gamma, p=args.p,
        size=args.size, progress=not args.quiet,
    )
    w, h = inv.image_size
    print(f"inverted {inv.batch_size} image(s) {w}x{h} with {_fmt_solver(inv.solver)}, {args.steps} steps, "
          f"strength {args.strength}, guidance {guidance}: NFE {inv.inversion.nfe}, {inv.info['seconds']:.2f} s")
    return inv


# ----- commands ---------------------------------------------------------------------------------------------
def cmd_invert(args: argparse.Namespace) -> int:
    from .saved import save_inversion

    out = _inv_output(args.output, args.overwrite)
    for im in args.images:
        if not os.path.isfile(im):
            raise FileNotFoundError(f"no image file at {im!r}")
    with _user_errors():
        editor = load_editor(args.model or DEFAULT_MODEL, dtype=args.dtype, device=args.device,
                             revision=args.revision, progress=not args.quiet)
        editor.validate_prompt(args.prompt)
        editor.validate_prompt(args.negative_prompt)
        inv = _invert(editor, args.images, args, args.prompt, args.guidance)
        if args.check:
            rec = editor.reconstruct(inv, progress=not args.quiet)
            print(f"round trip ({rec.seconds:.2f} s): {_round_trip_report(editor, args.images, inv, rec, args.size)}")
        save_inversion(inv, out, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from .saved import load_inversion

    inv = load_inversion(args.inversion)
    paths = _outputs(args.output, inv.batch_size, args.overwrite)
    with _user_errors():
        editor = _editor_for(inv, args)
        rec = editor.reconstruct(inv, progress=not args.quiet)
        report = _round_trip_report(editor, args.image, inv, rec, None)
        _save_images(rec.images, paths, args.overwrite)
    print(f"reconstructed {inv.batch_size} image(s) with {_fmt_solver(inv.solver)}, guidance {inv.guidance_scale}: "
          f"NFE {rec.nfe}, {rec.seconds:.2f} s; {report}")
    print("wrote " + ", ".join(map(str, paths)))
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    from .saved import load_inversion

    if not os.path.isfile(args.source):
        raise FileNotFoundError(f"no file at {args.source!r} (expected an inversion .safetensors or an image)")
    with _user_errors():
        if _is_inversion_file(args.source):
            inv = load_inversion(args.source)
            paths = _outputs(args.output, inv.batch_size, args.overwrite)
            editor = _editor_for(inv, args)
            editor.validate_prompt(args.prompt)
            editor.validate_prompt(args.negative_prompt)
        else:
            paths = _outputs(args.output, 1, args.overwrite)
            editor = load_editor(args.model or DEFAULT_MODEL, dtype=args.dtype, device=args.device,
                                 revision=args.revision, progress=not args.quiet)
            for prompt in (args.prompt, args.source_prompt, args.negative_prompt):
                editor.validate_prompt(prompt)
            inv = _invert(editor, [args.source], args, args.source_prompt, args.invert_guidance)
        negative = {} if args.negative_prompt is None else {"negative_prompt": args.negative_prompt}
        res = editor.edit(inv, args.prompt, guidance_scale=args.guidance, progress=not args.quiet, **negative)
        _save_images(res.images, paths, args.overwrite)
    scale = inv.guidance_scale if args.guidance is None else args.guidance
    print(f"edited {inv.batch_size} image(s) {inv.prompt[0]!r} -> {args.prompt!r} with {_fmt_solver(inv.solver)}, "
          f"guidance {scale}: NFE {res.nfe}, {res.seconds:.2f} s")
    print("wrote " + ", ".join(map(str, paths)))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    if args.num_images < 1:
        raise ValueError("--num-images must be at least 1")
    paths = _outputs(args.output, args.num_images, args.overwrite)
    with _user_errors():
        editor = load_editor(args.model or DEFAULT_MODEL, dtype=args.dtype, device=args.device,
                             revision=args.revision, progress=not args.quiet)
        editor.validate_prompt(args.prompt)
        editor.validate_prompt(args.negative_prompt)
        guidance = editor.default_guidance if args.guidance is None else args.guidance
        start = time.perf_counter()
        res = editor.generate(
            args.prompt, negative_prompt=args.negative_prompt, guidance_scale=guidance, num_steps=args.steps,
            method=args.method, gamma=args.gamma, p=args.p, height=args.height, width=args.width,
            num_images=args.num_images, seed=args.seed, progress=not args.quiet,
        )
        _save_images(res.images, paths, args.overwrite)
    w, h = res.images[0].size
    solver = args.method + (f"(gamma={args.gamma})" if args.method == "bdia" else "")
    print(f"generated {len(res.images)} image(s) {w}x{h} with {solver}, {args.steps} steps, guidance "
          f"{guidance}, seed {args.seed}: NFE {res.nfe}, {time.perf_counter() - start:.2f} s")
    print("wrote " + ", ".join(map(str, paths)))
    return 0
