"""``bdia generate --prompt P -o IMAGE``: text (or class) to image with a float64 solver state."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from .common import (
    CHUNK,
    DEFAULT_MODEL,
    add_model_args,
    add_output_args,
    add_solver_args,
    add_upscale_arg,
    check_common,
    check_prompts,
    count_type,
    guidance_type,
    new_editor,
    output_paths,
    pixels_type,
    running,
    save_images,
    seed_type,
    solver_options,
)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate images from a prompt (a class 0..9 for digits) with BDIA, EDICT or DDIM",
        description="Generate images from a prompt with a float64 solver state: with the "
        'default --model digits, the prompt is a class ("7").',
    )
    p.add_argument("--prompt", required=True, help="the prompt (a class 0..9 for digits)")
    p.add_argument(
        "--negative-prompt",
        default=None,
        help="what the images should not show: the unconditional "
        "branch of guidance (default: the model's empty prompt)",
    )
    p.add_argument(
        "--guidance", type=guidance_type, default=None, help="guidance scale (default 2.0 for digits, 7.5 for SD)"
    )
    p.add_argument("--seed", type=seed_type, default=0, help="noise seed, 0 .. 2**64-1 (default 0)")
    p.add_argument(
        "--num-images",
        type=count_type,
        default=1,
        help=f"how many images to make (default 1); made and written {CHUNK} at a time",
    )
    p.add_argument(
        "--height", type=pixels_type, default=None, help="image height in pixels (default: the model's native size)"
    )
    p.add_argument(
        "--width", type=pixels_type, default=None, help="image width in pixels (default: the model's native size)"
    )
    add_model_args(p, DEFAULT_MODEL)
    add_solver_args(p, gamma=0.5)
    add_output_args(p, "output image (.png); several images write NAME_0.png, NAME_1.png... (zero-padded)")
    add_upscale_arg(p)
    p.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    model = check_common(args)
    paths = output_paths(args.output, args.num_images, args.overwrite)
    check_prompts(model, args.prompt, args.negative_prompt)
    solver = solver_options(args)
    steps = args.steps or 50
    written: list[Path] = []
    start = time.perf_counter()
    try:
        with running(args, model):
            editor = new_editor(args, model)
            guidance = editor.default_guidance if args.guidance is None else args.guidance
            w, h = args.width or editor.backend.default_size[0], args.height or editor.backend.default_size[1]
            editor.backend.latent_shape(1, h, w)  # refuses an unsupported size before any work
            nfe = 0
            for first in range(0, args.num_images, CHUNK):
                chunk = paths[first : first + CHUNK]
                # Chunk k is seeded with seed + its first index: the first images of a long run are those
                # of a short one.
                res = editor.generate(
                    args.prompt,
                    negative_prompt=args.negative_prompt,
                    guidance_scale=guidance,
                    num_steps=steps,
                    height=h,
                    width=w,
                    num_images=len(chunk),
                    seed=(args.seed + first) % 2**64,
                    progress=not args.quiet,
                    **solver,
                )
                save_images(res.images, chunk, args.overwrite, args.upscale)
                written += chunk
                nfe += res.nfe
    except KeyboardInterrupt:
        if written:
            print(
                f"interrupted: wrote {len(written)} of {args.num_images} image(s), {written[0]} .. {written[-1]}",
                file=sys.stderr,
            )
        raise
    except Exception:
        if written:
            print(
                f"bdia generate: wrote {len(written)} of {args.num_images} image(s) before the error below",
                file=sys.stderr,
            )
        raise
    gamma = f"(gamma={solver['gamma']})" if solver["method"] == "bdia" else ""
    print(
        f"generated {len(written)} image(s) {w}x{h} with {solver['method']}{gamma}, {steps} steps, guidance "
        f"{guidance}, seed {args.seed}: NFE {nfe}, {time.perf_counter() - start:.2f} s"
    )
    shown = ", ".join(map(str, written)) if len(written) <= 4 else f"{written[0]} .. {written[-1]}"
    print(f"wrote {len(written)} image(s): {shown}")
    return 0
