"""``bdia invert IMAGE... --prompt P -o FILE.safetensors``: invert real images.

Folders and lists of images are inverted too, with ``-o`` a folder.
"""

from __future__ import annotations

import argparse
from typing import Any

from .common import (
    DEFAULT_MODEL,
    add_model_args,
    add_output_args,
    add_solver_args,
    check_common,
    check_images,
    check_prompts,
    guidance_type,
    inversion_output,
    invert_images,
    new_editor,
    round_trip_report,
    running,
    size_type,
    solver_options,
    strength_type,
)
from .datasets import add_batch_arguments, run_many, wants_many


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "invert",
        help="invert real images (digits model by default, or Stable Diffusion)",
        description="Invert images to latents (saved as .safetensors) under a prompt: "
        'with the default --model digits, the prompt is the digit\'s class ("3").',
    )
    p.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="image file(s) (one batch must share one size), or "
        "folders and lists (.txt/.csv/.jsonl, with per-image prompts) with -o a folder: one inversion "
        "per image and a manifest.jsonl",
    )
    p.add_argument(
        "--prompt",
        default="",
        help="the source prompt describing the image: a class 0..9 for digits "
        "(default: empty, the unconditional model)",
    )
    p.add_argument("--negative-prompt", default=None, help="negative prompt (the unconditional branch)")
    p.add_argument("--guidance", type=guidance_type, default=1.0, help="guidance scale for inversion (default 1.0)")
    p.add_argument(
        "--strength",
        type=strength_type,
        default=1.0,
        help="invert only this fraction of the grid (BDIA's authors edit with 0.8; default 1.0)",
    )
    p.add_argument("--size", type=size_type, help="resize to WIDTHxHEIGHT (default: keep, cropped to the VAE factor)")
    p.add_argument("--check", action="store_true", help="also reconstruct and print the round-trip errors")
    add_model_args(p, DEFAULT_MODEL)
    add_solver_args(p, gamma=1.0)
    add_output_args(p, "the inversion file to write (.safetensors), or a folder for many inputs")
    add_batch_arguments(p)
    p.set_defaults(func=cmd_invert)


def cmd_invert(args: argparse.Namespace) -> int:
    from ..io.saved import save_inversion

    if wants_many(args, "invert"):
        return run_many(args, "invert")
    model = check_common(args)
    out = inversion_output(args.output, args.overwrite)
    check_images(args.images)
    check_prompts(model, args.prompt, args.negative_prompt)
    solver = solver_options(args)
    with running(args, model):
        editor = new_editor(args, model)
        inv = invert_images(
            editor, args.images, args, solver, args.prompt, args.guidance, args.strength, args.steps or 50
        )
        if args.check:
            rec = editor.reconstruct(inv, progress=not args.quiet)
            print(f"round trip ({rec.seconds:.2f} s): {round_trip_report(editor, args.images, inv, rec, args.size)}")
        save_inversion(inv, out, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0
