"""``bdia demo``: exact inversion and editing on the embedded models, offline, in well under two minutes on a CPU
(the work is :mod:`bdia.demo`)."""

from __future__ import annotations

import argparse
from typing import Any

from .common import edict_p_type, gamma_type, guidance_type, seed_type, steps_type, strength_type

DEFAULT_OUT = "bdia-demo"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="invert, reconstruct and edit held-out digits with DDIM, EDICT and BDIA (CPU, well under two minutes)",
        description="Exact inversion and editing on the embedded digits model, in well under two minutes on a CPU: "
        "held-out digits are inverted with DDIM inversion, EDICT and BDIA, reconstructed, and "
        "regenerated under another class. Writes figure.png and results.json to --out.",
    )
    p.add_argument("--model", default="digits", choices=["digits"], help="the model (only the embedded 'digits')")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT}/)")
    p.add_argument("--overwrite", action="store_true", help="replace results in a non-empty output folder")
    p.add_argument("--num-images", type=int, default=6, help="held-out digits to invert (default 6)")
    p.add_argument("--steps", type=steps_type, default=50, help="sampling steps (default 50)")
    p.add_argument(
        "--guidance",
        type=guidance_type,
        default=1.0,
        help="classifier-free guidance scale of inversion and reconstruction (default 1.0)",
    )
    p.add_argument(
        "--edit-guidance",
        type=guidance_type,
        default=1.0,
        help="guidance scale of the edits toward the target class (default 1.0: higher follows the "
        "class more strictly and keeps less of the source's style)",
    )
    p.add_argument(
        "--strength",
        type=strength_type,
        default=1.0,
        help="invert only this fraction of the grid (default 1.0; much lower makes the edits noisy)",
    )
    p.add_argument("--gamma", type=gamma_type, default=1.0, help="BDIA's gamma in (0, 1] or 'belm' (default 1.0)")
    p.add_argument("--p", type=edict_p_type, default=0.93, help="EDICT's mixing p (default 0.93)")
    p.add_argument("--seed", type=seed_type, default=0, help="chooses the digits and the target classes")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: the model is tiny, and more threads mostly add overhead)",
    )
    p.add_argument(
        "--scene-steps",
        type=int,
        default=25,
        help="steps of the held-out scene edits (default 25; 0 leaves the scenes part out)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from ..demo import run

    return run(args)
