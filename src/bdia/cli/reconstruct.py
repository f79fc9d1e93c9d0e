"""``bdia reconstruct INV -o IMAGE``: regenerate the inverted images with the inversion's own prompt."""

from __future__ import annotations

import argparse
from typing import Any

from .common import (
    add_model_args,
    add_output_args,
    add_upscale_arg,
    check_common,
    check_images,
    editor_for_inversion,
    format_solver,
    output_paths,
    round_trip_report,
    running,
    save_images,
    warn_lossy,
)
from .datasets import add_batch_arguments, run_many, wants_many


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "reconstruct",
        help="regenerate images from a saved inversion",
        description="Regenerate the inverted images with the inversion's own prompt.",
    )
    p.add_argument(
        "inversion",
        metavar="INV",
        help="a .safetensors file written by `bdia invert`, or a folder of "
        "them or its manifest.jsonl (with -o a folder)",
    )
    p.add_argument(
        "--image", nargs="+", help="the original image(s): report the errors of the written files against them"
    )
    add_model_args(p, "the one the inversion was made with")
    add_output_args(
        p,
        "output image (.png); a batch writes NAME_0.png, NAME_1.png... (zero-padded); a folder for many inputs",
    )
    add_upscale_arg(p)
    add_batch_arguments(p)
    p.set_defaults(func=cmd_reconstruct)


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from ..io.saved import load_inversion

    if wants_many(args, "reconstruct"):
        return run_many(args, "reconstruct")
    check_common(args)
    if args.image:
        check_images(args.image)
    inv = load_inversion(args.inversion)
    paths = output_paths(args.output, inv.batch_size, args.overwrite)
    if args.image and len(args.image) != inv.batch_size:
        raise ValueError(
            f"--image got {len(args.image)} file(s) for an inversion of {inv.batch_size} image(s); "
            "give the inverted images, in order"
        )
    with running(args, args.model or inv.model.get("id") or ""):
        editor = editor_for_inversion(inv, args)
        rec = editor.reconstruct(inv, progress=not args.quiet)
        save_images(rec.images, paths, args.overwrite, args.upscale)
        warn_lossy(paths)
        # upscaled files are not the model's size: measure the reconstruction itself then
        report = round_trip_report(editor, args.image, inv, rec, None, written=paths if args.upscale == 1 else ())
    print(
        f"reconstructed {inv.batch_size} image(s) with {format_solver(inv.solver)}, guidance {inv.guidance_scale}: "
        f"NFE {rec.nfe}, {rec.seconds:.2f} s; {report}"
    )
    print("wrote " + ", ".join(map(str, paths)))
    return 0
