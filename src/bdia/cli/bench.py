"""bdia bench: run the benchmark and write report.md, PNG plots and results.json into a folder."""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from typing import Any

from ..bench.config import WORKLOADS


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bench",
        help="benchmark DDIM inversion, EDICT, BDIA, O-BELM and null-text inversion (quick: a few minutes)",
        description=__doc__.splitlines()[0],
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        dest="mode",
        action="store_const",
        const="quick",
        help="small sizes, a few minutes on 2 CPU cores (default)",
    )
    mode.add_argument(
        "--full",
        dest="mode",
        action="store_const",
        const="full",
        help="all step counts, the full-size SD 1.5 UNet (tens of minutes)",
    )
    p.set_defaults(mode="quick")
    p.add_argument("--out", default="bdia-bench", help="output folder (default bdia-bench/)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    p.add_argument(
        "--only",
        default=",".join(WORKLOADS),
        help=f"comma-separated workloads to run, of {','.join(WORKLOADS)} (default all)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads during the run (default 1: steady timings on a shared machine; 0: torch's default)",
    )
    p.add_argument(
        "--render",
        action="store_true",
        help="measure nothing: rewrite report.md and the plots from --out's results.json",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing report in --out")
    p.add_argument(
        "--update",
        action="store_true",
        help="run only --only's workloads and replace their results in --out's results.json, keeping "
        "the others (same mode and seed), then rewrite the report",
    )
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bench.config import BenchConfig
    from ..bench.runner import render_folder, run_bench
    from . import CommandError

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    try:
        with warnings.catch_warnings() if args.quiet else contextlib.nullcontext():
            if args.quiet:
                warnings.simplefilter("ignore")
            if args.render:
                render_folder(args.out, log=log)
                return 0
            workloads = tuple(w.strip() for w in args.only.split(",") if w.strip())
            make = BenchConfig.full if args.mode == "full" else BenchConfig.quick
            cfg = make(seed=args.seed, workloads=workloads, threads=args.threads)
            res = run_bench(cfg, args.out, overwrite=args.overwrite or args.update, update=args.update, log=log)
    except (ImportError, PermissionError) as e:
        raise CommandError(str(e)) from None
    log(f"wrote {', '.join(res['files'])} to {args.out}/")
    return 0
