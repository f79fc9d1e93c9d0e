"""What the image commands (invert, reconstruct, edit, generate) share: argument types that refuse bad
values while parsing, argument groups, the checks made before any model loads, and the helpers that run an
editor and write its outputs.

The default ``--model digits`` is the embedded 16x16 digits model, whose prompts are class labels; ``--model
PATH_OR_ID`` is a diffusers pipeline (Stable Diffusion 1.x/2.x/XL, SD3 or Flux, from its ``model_index.json``).
Every model is resolved once and loaded through :func:`bdia.editing.load_editor`. Bad input is refused before
the first model call, as one line and exit code 2; outputs are written atomically (``--overwrite`` to replace).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..io.files import atomic_path, check_writable


class CommandError(ValueError):
    """An error the user can fix; printed as one line without a traceback."""


METHODS = ("bdia", "edict", "rex", "ddim")
# bdia.grids.GRID_KINDS, written out so that parsing imports no torch (tests/test_cli_startup.py checks they agree)
GRID_KINDS = ("diffusers", "leading", "trailing", "linspace", "karras", "logsnr")
DEFAULT_MODEL = "digits"  # the embedded digits model (bdia.editing.backends.digits); needs no diffusers
REX_BASES = ("euler", "midpoint", "heun", "ralston", "rk4")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
LOSSY_SUFFIXES = (".jpg", ".jpeg", ".webp")
CHUNK = 16  # generate: images made and written per batch, so memory stays bounded


# ----- argument types: refuse bad values while parsing ------------------------------------------------
def number_type(kind: str, low: float, high: float, integer: bool = False):
    def parse(value: str) -> float | int:
        try:
            x = int(value) if integer else float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{kind} must be {'an integer' if integer else 'a number'}, got {value!r}"
            ) from None
        if not (math.isfinite(x) and low <= x <= high):
            bounds = f"{low} and {high}" if integer else f"{low:g} and {high:g}"
            raise argparse.ArgumentTypeError(f"{kind} must be between {bounds}, got {value}")
        return x

    return parse


guidance_type = number_type("guidance scale", -1000, 1000)  # beyond, guidance overflows the model's outputs
steps_type = number_type("steps", 2, 10000, integer=True)
strength_type = number_type("strength", 1e-6, 1.0)
seed_type = number_type("seed", 0, 2**64 - 1, integer=True)  # what torch.Generator.manual_seed accepts
count_type = number_type("number of images", 1, 10**7, integer=True)
pixels_type = number_type("pixels", 1, 65536, integer=True)
edict_p_type = number_type("EDICT p", 1e-6, 1.0)
zeta_type = number_type("Rex zeta", 1e-6, 1.0)


def gamma_type(value: str) -> float | str:
    if value.lower() == "belm":
        return "belm"
    x = number_type("gamma", 0.0, 1.0)(value)
    if x == 0.0:
        raise argparse.ArgumentTypeError("gamma 0 is DDIM, which cannot invert exactly; give a gamma in (0, 1]")
    return x


def size_type(value: str) -> tuple[int, int]:
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
MODEL_HELP = (
    "'digits' (the embedded 16x16 digits model: prompts are class labels 0..9) or a diffusers "
    "folder or hub id (text prompts): Stable Diffusion 1.x/2.x/XL, SD3 or Flux, from its model_index.json"
)


def add_model_args(p: argparse.ArgumentParser, default: str) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, metavar="PATH_OR_ID", help=f"{MODEL_HELP} (default: {default})")
    g.add_argument("--revision", help="hub revision (branch, tag or commit)")
    g.add_argument(
        "--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default auto: CUDA, else MPS, else CPU)"
    )
    g.add_argument(
        "--allow-pickle",
        action="store_true",
        help="let a Stable Diffusion model load pickled "
        "weights (.bin, .ckpt), which can run code when loaded: only for files you trust",
    )
    g.add_argument(
        "--dtype",
        default=None,
        choices=("auto", "float32", "float16", "bfloat16"),
        help="model dtype (default on CUDA: float16 for SD, bfloat16 for SD3/Flux; else float32; for a "
        "saved inversion, its own); the solver state stays float64",
    )


def add_solver_args(p: argparse.ArgumentParser, gamma: float, title: str = "solver") -> None:
    """Solver options; defaults are None so that a command can tell given from default."""
    g = p.add_argument_group(title)
    g.add_argument(
        "--method",
        default=None,
        choices=METHODS,
        help="bdia (exact), edict (exact, 2x NFE), "
        "rex (exact reversible Runge-Kutta, 2x stages NFE per step), ddim (approximate inversion); "
        "default bdia",
    )
    g.add_argument("--gamma", type=gamma_type, default=None, help=f"BDIA gamma in (0, 1] or 'belm' (default {gamma})")
    g.add_argument("--p", type=edict_p_type, default=None, help="EDICT mixing weight in (0, 1] (default 0.93)")
    g.add_argument("--base", default=None, choices=REX_BASES, help="Rex's Runge-Kutta base (default midpoint)")
    g.add_argument("--zeta", type=zeta_type, default=None, help="Rex's coupling in (0, 1] (default 0.9)")
    g.add_argument(
        "--grid",
        default=None,
        choices=GRID_KINDS,
        help="grid of noise levels for discrete-time "
        "models: diffusers (the scheduler's own spacing, default), leading/trailing/linspace, karras "
        "(measured most faithful: see the README), logsnr; flow models use their pipeline's grid",
    )
    g.add_argument("--steps", type=steps_type, default=None, help="number of steps N, at least 2 (default 50)")
    p.set_defaults(default_gamma=gamma)


upscale_type = number_type("--upscale", 1, 64, integer=True)


def add_upscale_arg(p: argparse.ArgumentParser) -> None:
    """For the commands that write images: the embedded models' 16x16 and 32x32 images are hard to look at."""
    p.add_argument(
        "--upscale",
        type=upscale_type,
        default=1,
        metavar="N",
        help="write images N times larger by nearest neighbour (each pixel an NxN block; default 1), e.g. "
        "--upscale 16 makes the digits model's 16x16 images 256x256; the reported errors are of the images "
        "before upscaling",
    )


def add_output_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("-o", "--output", required=True, help=what)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also show the warnings and log messages of the libraries bdia uses (diffusers, transformers, "
        "huggingface_hub, accelerate)",
    )


# ----- helpers ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def running(args: argparse.Namespace, model: str) -> Iterator[None]:
    """Warnings as one-line notes; non-finite latents and dtype problems as user errors; one torch thread
    for the tiny digits model (per-op overhead dominates: more threads mostly spin-wait), restored after."""
    from ..runtime import torch_threads
    from ..solvers import NonFiniteError

    verbose = getattr(args, "verbose", False)

    def show(message, category, filename, lineno, file=None, line=None):
        if not verbose and _third_party(filename):
            return  # their deprecation notices are theirs to fix, not the user's (shown with --verbose)
        print(f"bdia: warning: {message}", file=sys.stderr)

    from ..runtime import choose_device

    # "auto" is float16 for Stable Diffusion on CUDA only: hint at float32 only where it is not already.
    auto_half = model != DEFAULT_MODEL and choose_device(args.device).type == "cuda"
    low = args.dtype in ("float16", "bfloat16") or (args.dtype in (None, "auto") and auto_half)
    with torch_threads(1 if model == DEFAULT_MODEL else None), warnings.catch_warnings(), _library_logs(verbose):
        warnings.showwarning = show
        try:
            yield
        except NonFiniteError as e:
            hint = "try --dtype float32" if low else "try fewer steps, or gamma/p closer to 1"
            raise CommandError(f"{e} ({hint})") from None
        except RuntimeError as e:
            if "Half" in str(e) or "BFloat16" in str(e):
                raise CommandError(
                    f"{str(e).splitlines()[0]}: this device cannot run --dtype {args.dtype}; use --dtype float32"
                ) from None
            raise


# What each kind of model needs beyond torch and numpy: (the extra that installs it, import names).
# Every image command reads or writes images (Pillow) and safetensors files.
_EMBEDDED_NEEDS = {
    DEFAULT_MODEL: ("demo", ("safetensors", "PIL")),
    "scenes": ("diffusers", ("safetensors", "PIL", "diffusers")),  # its network is diffusers' UNet2DConditionModel
}
_PIPELINE_NEEDS = ("diffusers", ("safetensors", "PIL", "diffusers", "transformers"))


def require_model(model: str) -> None:
    """Refuse, before anything loads, to run ``model`` without its optional packages: one line naming the
    extra to install (``pip install "bdia[demo]"`` for the digits model, ``bdia[diffusers]`` otherwise)."""
    from ..runtime import require

    extra, modules = _EMBEDDED_NEEDS.get(model, _PIPELINE_NEEDS)
    require(extra, *modules)


THIRD_PARTY = ("diffusers", "transformers", "huggingface_hub", "accelerate")


def _third_party(filename: str) -> bool:
    parts = Path(filename).parts
    return any(name in parts for name in THIRD_PARTY)


@contextlib.contextmanager
def _library_logs(verbose: bool) -> Iterator[None]:
    """The libraries' own loggers at ERROR unless ``verbose`` (they print warnings through logging too)."""
    import logging

    loggers = [logging.getLogger(name) for name in THIRD_PARTY]
    levels = [lg.level for lg in loggers]
    if not verbose:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def check_common(args: argparse.Namespace) -> str:
    """Checks every command shares, before any model is loaded; returns the model name."""
    from ..runtime import choose_device

    model = args.model or DEFAULT_MODEL
    require_model(model)  # for reconstruct/edit of a saved inversion: the base needs; its own model's when read
    choose_device(args.device)
    if model == DEFAULT_MODEL and (args.revision is not None or args.allow_pickle):
        flag = "--revision" if args.revision is not None else "--allow-pickle"
        raise ValueError(f"{flag} applies to Stable Diffusion models; the digits model ships with bdia")
    return model


def check_prompts(model: str, *prompts: str | None) -> None:
    """Class labels for digits are checked before loading anything (text prompts fit any SD model)."""
    if model == DEFAULT_MODEL:
        from ..editing.backends.digits import parse_class

        for prompt in prompts:
            if prompt is not None:
                parse_class(prompt)


def check_images(paths: Sequence[str]) -> None:
    from ..io.images import read_image

    for path in paths:
        read_image(path)


def solver_options(args: argparse.Namespace) -> dict[str, Any]:
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


def output_paths(path: str, n: int, overwrite: bool) -> list[Path]:
    p = Path(path)
    if p.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"output {path!r} needs an image extension: {', '.join(IMAGE_SUFFIXES)}")
    width = len(str(n - 1))  # zero-padded, so that the names sort in order: NAME_02 before NAME_10
    paths = [p] if n == 1 else [p.with_name(f"{p.stem}_{k:0{width}d}{p.suffix}") for k in range(n)]
    for q in paths:
        check_writable(q, overwrite)
    return paths


def save_images(images: Sequence[Any], paths: Sequence[Path], overwrite: bool, upscale: int = 1) -> None:
    for im, q in zip(images, paths):
        if upscale > 1:  # nearest neighbour: each pixel becomes an upscale x upscale block, nothing invented
            from PIL import Image

            im = im.resize((im.width * upscale, im.height * upscale), Image.Resampling.NEAREST)
        with atomic_path(q, overwrite) as tmp:
            im.save(tmp)  # the temporary keeps the extension, which picks the format


def format_solver(cfg: dict[str, Any]) -> str:
    params = ", ".join(f"{k}={v}" for k, v in cfg.items() if k != "name")
    return f"{cfg['name']}({params})"


def inversion_output(path: str, overwrite: bool) -> Path:
    if Path(path).suffix.lower() != ".safetensors":
        raise ValueError(f"inversion output {path!r} must end in .safetensors")
    return check_writable(path, overwrite)


def is_inversion_file(path: str) -> bool:
    return Path(path).suffix.lower() == ".safetensors"


def editor_for_inversion(inv: Any, args: argparse.Namespace):
    from ..editing.editor import load_editor

    model = args.model or inv.model.get("id")
    if not model:
        raise ValueError("the inversion does not record its model; pass --model")
    require_model(model)
    own = model == inv.model.get("id")  # the inversion's dtype and revision apply to its own model only
    dtype = args.dtype or (inv.model.get("dtype") if own else None)
    revision = args.revision or (inv.model.get("revision") if own and model != DEFAULT_MODEL else None)
    return load_editor(
        model, dtype=dtype, device=args.device, revision=revision, progress=not args.quiet, **pickle_option(args)
    )


def new_editor(args: argparse.Namespace, model: str):
    from ..editing.editor import load_editor

    return load_editor(
        model,
        dtype=args.dtype,
        device=args.device,
        revision=args.revision,
        progress=not args.quiet,
        **pickle_option(args),
    )


def pickle_option(args: argparse.Namespace) -> dict[str, bool]:
    return {"allow_pickle": True} if args.allow_pickle else {}


def round_trip_report(editor: Any, images: Any, inv: Any, rec: Any, size: Any, written: Sequence[Path] = ()) -> str:
    """Latent error, 8-bit agreement and, given the original images, the errors of what is on disk."""
    parts = []
    if rec.latent_error is not None:
        parts.append(f"max {editor.backend.latent_name} error {rec.latent_error:.3g}")
    if "identical" in rec.info:
        parts.append(f"8-bit pixels identical to the inverted image: {100 * rec.info['identical']:.1f}%")
    if images is not None and editor.backend.lossy_codec:
        pe = editor.pixel_errors(images, rec, inv, size=size)
        parts.append(
            f"pixel MAE {pe['reconstruction']:.4f} (the VAE's own round trip: {pe['vae_roundtrip']:.4f}, "
            f"difference from it {pe['vs_vae']:.2g})"
        )
    if images is not None:
        if written:  # what the files hold, after the format's own encoding
            pe, where = editor.file_errors(images, [str(q) for q in written], size), "written file"
        else:
            pe, where = editor.pixel_errors(images, rec, inv, size=size), "reconstruction"
        parts.append(
            f"{where} against the image file: pixel MAE {pe['reconstruction']:.4f}, max error "
            f"{pe['max_error']}/255, {100 * pe['identical']:.1f}% of pixels identical"
        )
    return "; ".join(parts)


def warn_lossy(paths: Sequence[Path]) -> None:
    if paths and paths[0].suffix.lower() in LOSSY_SUFFIXES:
        warnings.warn(
            f"{paths[0].suffix} is a lossy format: the file differs from the reconstruction; use .png "
            "to keep it exactly",
            stacklevel=2,
        )


def invert_images(
    editor: Any,
    images: Sequence[str],
    args: argparse.Namespace,
    solver: dict[str, Any],
    prompt: str,
    guidance: float,
    strength: float,
    steps: int,
):
    inv = editor.invert(
        list(images),
        prompt,
        negative_prompt=args.negative_prompt,
        guidance_scale=guidance,
        num_steps=steps,
        strength=strength,
        size=args.size,
        progress=not args.quiet,
        **solver,
    )
    w, h = inv.image_size
    print(
        f"inverted {inv.batch_size} image(s) {w}x{h} with {format_solver(inv.solver)}, {steps} steps, "
        f"strength {strength}, guidance {guidance}: NFE {inv.inversion.nfe}, {inv.info['seconds']:.2f} s"
    )
    return inv


# ----- edit controls (bdia edit) ------------------------------------------------------------------------
CONTROLS = ("none", "p2p", "masactrl", "shared")
P2P_MODES = ("auto", "replace", "refine", "none")
fraction_type = number_type("threshold", 0.0, 0.999999)
step_index_type = number_type("step or layer index", 0, 100000, integer=True)


def window_type(value: str) -> float | tuple[float, float]:
    """A step window as a fraction F (steps 0..F) or START:END, fractions of the edit's steps."""
    parts = value.split(":")
    try:
        nums = [float(v) for v in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a step window is a fraction F or START:END in [0, 1], got {value!r}"
        ) from None
    if len(nums) not in (1, 2) or not all(math.isfinite(x) and 0.0 <= x <= 1.0 for x in nums):
        raise argparse.ArgumentTypeError(f"a step window is a fraction F or START:END in [0, 1], got {value!r}")
    if len(nums) == 2 and nums[0] > nums[1]:
        raise argparse.ArgumentTypeError(f"a step window START:END needs START <= END, got {value!r}")
    return nums[0] if len(nums) == 1 else (nums[0], nums[1])


def blend_type(value: str) -> tuple[list[str], list[str]]:
    """LocalBlend words: SOURCE_WORDS,TARGET_WORDS (each one or more words separated by spaces)."""
    parts = value.split(",")
    if len(parts) != 2 or not any(p.split() for p in parts):
        raise argparse.ArgumentTypeError(f'--blend takes "SOURCE_WORDS,TARGET_WORDS" (e.g. "cat,dog"), got {value!r}')
    return parts[0].split(), parts[1].split()


def reweight_type(value: str) -> dict[str, float]:
    """Attention reweighting: WORD=FACTOR[,WORD=FACTOR...]."""
    out: dict[str, float] = {}
    for item in value.split(","):
        word, sep, factor = item.partition("=")
        word = word.strip()
        try:
            x = float(factor)
        except ValueError:
            x = math.nan
        if not sep or not word or " " in word or not (math.isfinite(x) and 0 <= x <= 100):
            raise argparse.ArgumentTypeError(
                f'--reweight takes WORD=FACTOR pairs separated by commas (factor 0..100), e.g. "smiling=2", '
                f"got {value!r}"
            )
        out[word] = x
    return out


P2P_FLAGS = ("mode", "cross_steps", "self_steps", "blend", "blend_threshold", "reweight")
MASA_FLAGS = ("masa_step", "masa_layer")
SHARED_FLAGS = ("shared_steps", "shared_layers")


def layers_type(value: str) -> list[int]:
    """Attention layer indices: I,J,K or START-END (inclusive)."""
    out: list[int] = []
    try:
        for part in value.split(","):
            lo, sep, hi = part.partition("-")
            out.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"layers are indices I,J,K or a range START-END, got {value!r}") from None
    if not out or min(out) < 0:
        raise argparse.ArgumentTypeError(f"layers are indices >= 0 (I,J,K or START-END), got {value!r}")
    return out


def add_control_args(p: argparse.ArgumentParser) -> None:
    """bdia edit's controls: a two-branch edit whose source branch reproduces the inversion (docs/editing.md)."""
    g = p.add_argument_group(
        "edit controls (a two-branch edit: the source branch walks the inversion back, the target branch follows "
        "--prompt; see docs/editing.md)"
    )
    g.add_argument(
        "--control",
        choices=CONTROLS,
        default=None,
        help="none: plain edit; p2p: Prompt-to-Prompt attention injection (UNets); masactrl: the target reads the "
        "source's self-attention (UNets); shared: the target takes the source's attention values (SD3, Flux)",
    )
    g.add_argument(
        "--mode",
        choices=P2P_MODES,
        default=None,
        help="p2p word mapping: replace (same word count), refine (token alignment), none, auto (default)",
    )
    g.add_argument(
        "--cross-steps",
        type=window_type,
        default=None,
        metavar="F|A:B",
        help="p2p: fraction of steps (or window A:B) with cross-attention injection (default 0.8)",
    )
    g.add_argument(
        "--self-steps",
        type=window_type,
        default=None,
        metavar="F|A:B",
        help="p2p: fraction of steps (or window A:B) with self-attention injection (default 0.4)",
    )
    g.add_argument(
        "--blend",
        type=blend_type,
        default=None,
        metavar="SRC,TGT",
        help='p2p LocalBlend: edit only where these words attend, e.g. "cat,dog" (source word, target word)',
    )
    g.add_argument(
        "--blend-threshold", type=fraction_type, default=None, help="p2p LocalBlend threshold in [0, 1) (default 0.3)"
    )
    g.add_argument(
        "--reweight",
        type=reweight_type,
        default=None,
        metavar="WORD=F,...",
        help='p2p: scale target words\' cross-attention, e.g. "smiling=2"',
    )
    g.add_argument(
        "--masa-step", type=step_index_type, default=None, help="masactrl: first step reading the source (default 4)"
    )
    g.add_argument(
        "--masa-layer",
        type=step_index_type,
        default=None,
        help="masactrl: first self-attention layer reading the source (default: the last 6/16)",
    )
    g.add_argument(
        "--shared-steps",
        type=step_index_type,
        default=None,
        help="shared: the first steps in which the target takes the source's values (default 5)",
    )
    g.add_argument(
        "--shared-layers",
        type=layers_type,
        default=None,
        metavar="I,J|A-B",
        help="shared: attention layers (execution order) sharing values (default: the second half)",
    )
    g.add_argument(
        "--mask",
        default=None,
        metavar="IMAGE",
        help="edit only where this image is white (gray: partly); elsewhere keep the source, for every model",
    )
    g.add_argument(
        "--branches",
        choices=("sequential", "batched"),
        default=None,
        help="sequential: exact source branch (default); batched: one network call for both (exact to rounding)",
    )


def control_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``control``/``mask``/``branches`` keywords of ``Editor.edit`` from bdia edit's flags (checked)."""
    kind = getattr(args, "control", None) or "none"
    flag = lambda k: "--" + k.replace("_", "-")  # noqa: E731
    given = lambda names: [flag(k) for k in names if getattr(args, k, None) is not None]  # noqa: E731
    if kind != "p2p" and given(P2P_FLAGS):
        raise CommandError(f"{', '.join(given(P2P_FLAGS))} apply to --control p2p")
    if kind != "masactrl" and given(MASA_FLAGS):
        raise CommandError(f"{', '.join(given(MASA_FLAGS))} apply to --control masactrl")
    if kind != "shared" and given(SHARED_FLAGS):
        raise CommandError(f"{', '.join(given(SHARED_FLAGS))} apply to --control shared")
    mask = getattr(args, "mask", None)
    if mask is not None and not Path(mask).is_file():
        raise CommandError(f"no mask file at {mask!r}")
    if kind == "none" and mask is None:
        if getattr(args, "branches", None) is not None:
            raise CommandError("--branches applies to a two-branch edit (--control p2p/masactrl or --mask)")
        return {}
    from ..editing.controls import Mask, MutualSelfAttention, PromptToPrompt, SharedValues

    control: Any = None
    if kind == "p2p":
        kw: dict[str, Any] = {}
        for name in ("cross_steps", "self_steps", "reweight", "blend", "blend_threshold"):
            if getattr(args, name) is not None:
                kw[name] = getattr(args, name)
        control = PromptToPrompt(args.mode or "auto", **kw)
    elif kind == "masactrl":
        kw = {}
        if args.masa_step is not None:
            kw["start_step"] = args.masa_step
        if args.masa_layer is not None:
            kw["start_layer"] = args.masa_layer
        control = MutualSelfAttention(**kw)
    elif kind == "shared":
        kw = {}
        if args.shared_steps is not None:
            kw["steps"] = args.shared_steps
        if args.shared_layers is not None:
            kw["layers"] = args.shared_layers
        control = SharedValues(**kw)
    try:
        mask_control = None if mask is None else Mask(mask)
    except (ValueError, TypeError) as e:
        raise CommandError(str(e)) from None
    return {"control": control, "mask": mask_control, "branches": getattr(args, "branches", None) or "sequential"}
