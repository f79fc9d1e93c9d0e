#!/usr/bin/env python
"""Reproduce the shipped scenes weights: the text-to-image model, the judge classifier, the quality numbers.

    python scripts/train_scenes.py --threads 2                    # all stages into src/bdia/scenes/weights/
    python scripts/train_scenes.py --stage model --steps 200 --out /tmp/w
    python scripts/train_scenes.py --stage classifier             # then: --stage evaluate

Stages: ``model`` (text encoder + UNet, ``scenes_model.safetensors``), ``classifier`` (the judge,
trained on renders only, ``scenes_classifier.safetensors``), ``evaluate`` (the quality measure on
held-out captions). Each stage merges its record (settings, seed, loss curve, wall time, threads)
into ``training.json``. Results depend in the last bits on the thread count and the machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "bdia" / "scenes" / "weights"


def _merge(out: Path, key: str, record: dict[str, Any], command: str) -> None:
    path = out / "training.json"
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    data.update({"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine()})
    data[key] = {"command": command, **record}
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    from bdia.scenes.train import MODEL_DEFAULTS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", choices=["model", "classifier", "evaluate", "all"], default="all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=MODEL_DEFAULTS["steps"], help="model training steps")
    ap.add_argument("--batch-size", type=int, default=MODEL_DEFAULTS["batch_size"])
    ap.add_argument("--lr", type=float, default=MODEL_DEFAULTS["lr"])
    ap.add_argument("--classifier-steps", type=int, default=None, help="default: the classifier's own default")
    ap.add_argument("--eval-scenes", type=int, default=200, help="held-out captions sampled by the evaluation")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--log-every", type=int, default=50)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = " ".join(["python scripts/train_scenes.py", *(argv if argv is not None else sys.argv[1:])])
    args.out.mkdir(parents=True, exist_ok=True)
    stages = ["model", "classifier", "evaluate"] if args.stage == "all" else [args.stage]

    if "model" in stages:
        from bdia.scenes import MODEL_FILE
        from bdia.scenes.model import SCHEDULE_CONFIG
        from bdia.scenes.train import save_weights, train_model

        def checkpoint(ema: torch.nn.Module, step: int) -> None:
            save_weights(ema, args.out / f"checkpoint_{MODEL_FILE}", {"schedule": SCHEDULE_CONFIG, "step": step})

        model, hist = train_model(
            seed=args.seed,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            log_every=args.log_every,
            checkpoint=checkpoint,
        )
        save_weights(model, args.out / MODEL_FILE, {"schedule": SCHEDULE_CONFIG})
        (args.out / f"checkpoint_{MODEL_FILE}").unlink(missing_ok=True)
        _merge(args.out, "model", hist, command)
        print(f"model: {hist['num_parameters']} parameters, {hist['wall_time_s']}s")
    if "classifier" in stages:
        from bdia.scenes import CLASSIFIER_FILE
        from bdia.scenes.classifier import train_classifier
        from bdia.scenes.train import save_weights

        extra = {} if args.classifier_steps is None else {"steps": args.classifier_steps}
        clf, hist = train_classifier(seed=args.seed, log_every=args.log_every, **extra)
        save_weights(clf, args.out / CLASSIFIER_FILE)
        _merge(args.out, "classifier", hist, command)
        print(f"classifier: held-out accuracy {hist['held_out_accuracy']}")
    if "evaluate" in stages:
        import bdia
        from bdia.scenes import load_classifier, load_model
        from bdia.scenes.quality import evaluate_sampler

        model = load_model(path=args.out / "scenes_model.safetensors")
        clf = load_classifier(path=args.out / "scenes_classifier.safetensors")
        t0 = time.time()
        results = {}
        for name, solver in (("bdia", bdia.BDIA()), ("ddim", bdia.DDIM())):
            r = evaluate_sampler(solver, 50, guidance=3.0, num_scenes=args.eval_scenes, model=model, classifier=clf)
            results[name] = r
            print(json.dumps({k: v for k, v in r.items() if k != "per_kind"}))
        _merge(
            args.out,
            "quality",
            {"threads": args.threads, "wall_time_s": round(time.time() - t0, 1), **results},
            command,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
