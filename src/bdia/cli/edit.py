"""``bdia edit INV_OR_IMAGE --prompt P -o IMAGE``: regenerate a saved inversion (or an image, inverted first)
under a new prompt."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import (
    DEFAULT_MODEL,
    CommandError,
    add_control_args,
    add_model_args,
    add_output_args,
    add_solver_args,
    add_upscale_arg,
    check_common,
    check_images,
    check_prompts,
    control_options,
    editor_for_inversion,
    format_solver,
    guidance_type,
    invert_images,
    is_inversion_file,
    new_editor,
    output_paths,
    running,
    save_images,
    size_type,
    solver_options,
    strength_type,
)
from .datasets import add_batch_arguments, run_many, wants_many


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "edit",
        help="edit a saved inversion, or an image, under a new prompt",
        description="Regenerate an inversion (or an image, inverted first) under a new prompt. "
        "A saved inversion keeps its own solver, steps and strength.",
    )
    p.add_argument(
        "source",
        metavar="INV_OR_IMAGE",
        help="a saved inversion, or an image file to invert first; "
        "or a folder of inversions, its manifest.jsonl or a list (.txt/.csv/.jsonl, per-item prompts) "
        "with -o a folder",
    )
    p.add_argument("--prompt", required=True, help="the target prompt (a class 0..9 for digits)")
    p.add_argument("--negative-prompt", default=None, help="negative prompt (default: the inversion's)")
    p.add_argument(
        "--guidance", type=guidance_type, default=None, help="guidance scale of the edit (default: the inversion's)"
    )
    g = p.add_argument_group("inverting an image first (refused with a saved inversion)")
    g.add_argument("--source-prompt", default=None, help="the prompt describing the input image (default empty)")
    g.add_argument(
        "--invert-guidance", type=guidance_type, default=None, help="guidance scale for inversion (default 1.0)"
    )
    g.add_argument("--strength", type=strength_type, default=None, help="fraction of the grid to invert (default 1.0)")
    g.add_argument("--size", type=size_type, help="resize to WIDTHxHEIGHT")
    add_model_args(p, f"the inversion's; for an image, {DEFAULT_MODEL}")
    add_solver_args(p, gamma=1.0, title="solver for inverting an image (refused with a saved inversion)")
    add_control_args(p)
    add_output_args(
        p,
        "output image (.png); a batch writes NAME_0.png, NAME_1.png... (zero-padded); a folder for many inputs",
    )
    add_upscale_arg(p)
    add_batch_arguments(p)
    p.set_defaults(func=cmd_edit)


INVERSION_ONLY = (
    "steps",
    "method",
    "gamma",
    "p",
    "base",
    "zeta",
    "grid",
    "strength",
    "source_prompt",
    "invert_guidance",
    "size",
)


def cmd_edit(args: argparse.Namespace) -> int:
    from ..io.saved import load_inversion

    if wants_many(args, "edit"):
        if control_options(args):
            raise CommandError("--control, --mask and --branches apply to one input; edit many inputs without them")
        return run_many(args, "edit")
    control_options(args)  # refuse bad control flags before any model loads
    model = check_common(args)
    if not os.path.isfile(args.source):
        raise FileNotFoundError(f"no file at {args.source!r} (expected an inversion .safetensors or an image)")
    if is_inversion_file(args.source):
        given = [f"--{k.replace('_', '-')}" for k in INVERSION_ONLY if getattr(args, k) is not None]
        if given:
            raise ValueError(
                f"{', '.join(given)} apply to inverting an image; a saved inversion keeps its own "
                "(invert again to change them)"
            )
        inv = load_inversion(args.source)
        paths = output_paths(args.output, inv.batch_size, args.overwrite)
        model = args.model or inv.model.get("id") or ""
        check_prompts(model, args.prompt, args.negative_prompt)
        with running(args, model):
            editor = editor_for_inversion(inv, args)
            res = _edit(editor, inv, args, paths)
    else:
        paths = output_paths(args.output, 1, args.overwrite)
        check_images([args.source])
        source_prompt = args.source_prompt or ""
        check_prompts(model, args.prompt, source_prompt, args.negative_prompt)
        solver = solver_options(args)
        with running(args, model):
            editor = new_editor(args, model)
            guidance = 1.0 if args.invert_guidance is None else args.invert_guidance
            strength = 1.0 if args.strength is None else args.strength
            inv = invert_images(
                editor, [args.source], args, solver, source_prompt, guidance, strength, args.steps or 50
            )
            res = _edit(editor, inv, args, paths)
    scale = inv.guidance_scale if args.guidance is None else args.guidance
    controls = f", controls {', '.join(res.info['controls'])}" if res.info.get("controls") else ""
    print(
        f"edited {inv.batch_size} image(s) {inv.prompt[0]!r} -> {args.prompt!r} with {format_solver(inv.solver)}, "
        f"guidance {scale}{controls}: NFE {res.nfe}, {res.seconds:.2f} s"
    )
    print("wrote " + ", ".join(map(str, paths)))
    return 0


def _edit(editor: Any, inv: Any, args: argparse.Namespace, paths: Sequence[Path]) -> Any:
    negative = {} if args.negative_prompt is None else {"negative_prompt": args.negative_prompt}
    controls = control_options(args)
    res = editor.edit(inv, args.prompt, guidance_scale=args.guidance, progress=not args.quiet, **negative, **controls)
    save_images(res.images, paths, args.overwrite, args.upscale)
    return res
