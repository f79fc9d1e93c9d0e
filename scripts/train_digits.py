#!/usr/bin/env python
"""Reproduce the shipped digits weights: the UNet and the judge classifier, from one seed.

    python scripts/train_digits.py                  # writes src/bdia/digits/weights/
    python scripts/train_digits.py --out /tmp/w --unet-steps 200 --classifier-steps 100

Prints both loss curves and writes ``digits_unet.safetensors``, ``digits_classifier.safetensors``
and ``training.json`` (settings, seed, loss curves, wall times, held-out accuracy). The shipped
files were made with the defaults, on one CPU thread (the fastest choice on a busy 2-core machine);
other thread counts or machines can differ in the last bits.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from bdia.digits.train import (
    CLASSIFIER_DEFAULTS,
    SCHEDULE_CONFIG,
    UNET_DEFAULTS,
    save_weights,
    train_classifier,
    train_unet,
)

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "bdia" / "digits" / "weights"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--unet-steps", type=int, default=UNET_DEFAULTS["steps"])
    ap.add_argument("--classifier-steps", type=int, default=CLASSIFIER_DEFAULTS["steps"])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 for the shipped weights)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--log-every", type=int, default=100)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()

    clf, clf_hist = train_classifier(seed=args.seed, steps=args.classifier_steps, log_every=args.log_every)
    print(
        f"classifier: train accuracy {clf_hist['train_accuracy']:.4f}, "
        f"held-out accuracy {clf_hist['test_accuracy']:.4f} ({clf_hist['wall_time_s']}s)"
    )
    unet, unet_hist = train_unet(seed=args.seed, steps=args.unet_steps, log_every=args.log_every)
    print(f"unet: {unet_hist['num_parameters']} parameters ({unet_hist['wall_time_s']}s)")

    args.out.mkdir(parents=True, exist_ok=True)
    save_weights(unet, args.out / "digits_unet.safetensors", {"schedule": SCHEDULE_CONFIG})
    save_weights(clf, args.out / "digits_classifier.safetensors")
    record = {
        "command": " ".join(["python scripts/train_digits.py", *(argv if argv is not None else sys.argv[1:])]),
        "seed": args.seed,
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "total_wall_time_s": round(time.time() - t0, 1),
        "unet": unet_hist,
        "classifier": clf_hist,
    }
    (args.out / "training.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out} in {record['total_wall_time_s']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
