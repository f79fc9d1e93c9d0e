"""``bdia eval pie DATA_DIR -o OUT``: run an inversion method over a folder in PIE-Bench's format and score the
edits with PIE-Bench's metrics (:mod:`bdia.evaluation.pie`, docs/pie.md).

    bdia eval pie PIE-Bench/data --model runwayml/stable-diffusion-v1-5 --method bdia --steps 50 -o out/ \\
        --dino dino-vitb8/ --clip clip-vit-large-patch14/ --lpips squeezenet1_1-b8a52dc0.pth
    bdia eval pie pie-scenes/ --model scenes --method edict --steps 20 -o out/     # pixel metrics only
    bdia eval pie --make-scenes 24 pie-scenes/                                     # write a small PIE-format folder
"""

from __future__ import annotations

import argparse
from typing import Any

from .common import (
    GRID_KINDS,
    REX_BASES,
    add_model_args,
    check_common,
    count_type,
    edict_p_type,
    gamma_type,
    guidance_type,
    new_editor,
    running,
    solver_options,
    steps_type,
    strength_type,
    zeta_type,
)

PIE_CONTROLS = ("none", "p2p", "masactrl")
DEFAULT_EVAL_MODEL = "scenes"  # the embedded text-to-image model; PIE-Bench itself needs a Stable Diffusion model


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "eval", help="editing benchmarks: PIE-Bench's format and metrics", description=__doc__.splitlines()[0]
    )
    sub = p.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    sub.required = True
    q = sub.add_parser(
        "pie",
        help="invert and edit a folder in PIE-Bench's format; write the edits and PIE-Bench's metrics",
        description="Invert every image of a PIE-Bench folder (mapping_file.json, annotation_images/) under its "
        "original prompt and edit it under its editing prompt; write OUT/annotation_images/ (the layout the "
        "authors' evaluate.py reads), results.csv and results.json. Metric networks load from local paths "
        "only; a metric whose network is not given is NaN (docs/pie.md).",
    )
    q.add_argument("data_dir", metavar="DATA_DIR", help="a folder with mapping_file.json and annotation_images/")
    q.add_argument("-o", "--output", help="output folder (refused if not empty, unless --overwrite)")
    q.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder, replacing files")
    q.add_argument("-q", "--quiet", action="store_true", help="no per-image lines")
    q.add_argument(
        "--make-scenes",
        type=count_type,
        metavar="N",
        default=None,
        help="instead: write N held-out scene edit pairs as a PIE-format folder at DATA_DIR",
    )
    q.add_argument("--types", nargs="+", metavar="ID", help="edit type ids to run (PIE's 0..9; default all)")
    q.add_argument("--limit", type=count_type, default=None, help="run the first N entries only")
    g = q.add_argument_group("method")
    g.add_argument(
        "--method",
        default="bdia",
        choices=("bdia", "edict", "rex", "ddim", "nulltext"),
        help="bdia (exact; --gamma belm: O-BELM), edict, rex, ddim (approximate), nulltext (null-text inversion, "
        "DDIM with optimised null embeddings); default bdia",
    )
    g.add_argument("--gamma", type=gamma_type, default=None, help="BDIA gamma in (0, 1] or 'belm' (default 1)")
    g.add_argument("--p", type=edict_p_type, default=None, help="EDICT mixing weight (default 0.93)")
    g.add_argument("--base", default=None, choices=REX_BASES, help="Rex's Runge-Kutta base (default midpoint)")
    g.add_argument("--zeta", type=zeta_type, default=None, help="Rex's coupling in (0, 1] (default 0.9)")
    g.add_argument(
        "--grid",
        default=None,
        choices=GRID_KINDS,
        help="grid of noise levels (default diffusers: the scheduler's own spacing; see bdia invert --help)",
    )
    g.add_argument("--steps", type=steps_type, default=50, help="steps (default 50)")
    g.add_argument("--strength", type=strength_type, default=1.0, help="fraction of the grid to invert (default 1)")
    g.add_argument("--guidance", type=guidance_type, default=None, help="edit guidance (default: the model's)")
    g.add_argument(
        "--inversion-guidance",
        type=guidance_type,
        default=None,
        help="inversion guidance (default: 1 for ddim, else the edit's)",
    )
    c = q.add_argument_group("edit control (docs/editing.md)")
    c.add_argument(
        "--control",
        default="none",
        choices=PIE_CONTROLS,
        help="none (plain prompt swap), p2p (Prompt-to-Prompt, default windows) or masactrl (mutual self-attention)",
    )
    c.add_argument("--blend", action="store_true", help="with p2p: LocalBlend on each entry's blended_word")
    c.add_argument("--use-mask", action="store_true", help="keep the source outside each entry's PIE mask")
    m = q.add_argument_group("metric networks (local paths; a metric without its network is NaN)")
    m.add_argument("--dino", metavar="PATH", help="DINO ViT-B/8 as a transformers ViTModel folder (structure distance)")
    m.add_argument("--clip", metavar="PATH", help="CLIP ViT-L/14 as a transformers CLIPModel+CLIPProcessor folder")
    m.add_argument("--lpips", metavar="PATH", help="torchvision's squeezenet1_1 checkpoint (.pth) for LPIPS")
    add_model_args(q, DEFAULT_EVAL_MODEL)
    q.set_defaults(func=cmd_pie, default_gamma=1.0)


def edit_options(args: argparse.Namespace) -> dict[str, Any]:
    """The edit control the command line asks for; :func:`bdia.evaluation.pie.edit_keywords` builds it per entry."""
    if args.blend and args.control != "p2p":
        raise ValueError("--blend is Prompt-to-Prompt's LocalBlend: use it with --control p2p")
    return {"control": args.control, "blend": bool(args.blend), "mask": bool(args.use_mask)}


def _settings(args: argparse.Namespace):
    from ..evaluation.pie import PieSettings

    if args.method == "nulltext":
        for flag in ("gamma", "p", "base", "zeta"):
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag} does not apply to --method nulltext")
        solver: dict[str, Any] = {"grid": args.grid} if args.grid is not None else {}
    else:
        solver = solver_options(args)
    label = args.method
    if args.method == "bdia":
        label = "o-belm" if solver["gamma"] == "belm" else f"bdia(gamma={solver['gamma']:g})"
    return PieSettings(
        method=args.method,
        steps=args.steps,
        guidance=args.guidance,
        inversion_guidance=args.inversion_guidance,
        strength=args.strength,
        solver=solver,
        edit_options=edit_options(args),
        label=label,
    )


def cmd_pie(args: argparse.Namespace) -> int:
    from ..evaluation import pie

    if args.make_scenes is not None:
        folder = pie.make_scenes_pie(args.data_dir, args.make_scenes, overwrite=args.overwrite)
        print(f"wrote {args.make_scenes} scene edit pairs in PIE-Bench's format to {folder}/")
        return 0
    if not args.output:
        raise ValueError("give the output folder with -o OUT")
    args.model = args.model or DEFAULT_EVAL_MODEL
    model = check_common(args)
    settings = _settings(args)
    pie.read_pie(args.data_dir, args.types, args.limit)  # a bad folder is refused before any model loads
    from ..evaluation.metrics import METRICS, PieMetrics
    from ..runtime import choose_device

    metrics = PieMetrics(dino=args.dino, clip=args.clip, lpips=args.lpips, device=choose_device(args.device))
    with running(args, model):
        editor = new_editor(args, model)
        report = pie.run_pie(
            editor,
            args.data_dir,
            args.output,
            settings,
            metrics,
            types=args.types,
            limit=args.limit,
            overwrite=args.overwrite,
            log=(lambda s: None) if args.quiet else print,
        )
    s = report["summary"]
    parts = [f"{m} {s[m]['mean']:.4g}" for m in METRICS if s[m]["count"]]
    print(
        f"{settings.label}, {settings.steps} steps: {report['images'] - report['failed']}/{report['images']} edited "
        f"in {report['seconds']:.1f} s; "
        + ", ".join(parts)
        + f"; results in {args.output}/results.csv and results.json"
    )
    return 0 if report["failed"] == 0 else 1
