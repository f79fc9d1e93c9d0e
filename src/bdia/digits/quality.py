"""How good are generated digits: class accuracy under guidance and a Frechet distance.

The judge is the shipped :class:`~bdia.digits.classifier.DigitsClassifier` (trained on the training
split). Accuracy: the fraction of samples generated for class c that it classifies as c. Frechet
distance (FD, Heusel et al. 2017, with the classifier's 128-d penultimate features in place of
Inception's): between Gaussians fitted to the features of the samples and of the held-out split.
Samples are quantised to 8 bits first, like the real images. FD is biased upwards for small sample
counts; compare numbers made with the same ``num_per_class``, and against :func:`reference_fd`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ..frechet import frechet_distance
from .classifier import DigitsClassifier
from .data import NUM_CLASSES, load_digits, to_model, to_uint8
from .unet import DigitsUNet

__all__ = ["frechet_distance", "generate", "evaluate_sampler", "reference_fd", "features"]


@torch.no_grad()
def features(classifier: DigitsClassifier, images_uint8: torch.Tensor, batch_size: int = 1024) -> np.ndarray:
    x = to_model(images_uint8)
    return torch.cat([classifier.features(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]).numpy()


@torch.no_grad()
def generate(
    model: DigitsUNet,
    solver: Any,
    steps: int,
    labels: torch.Tensor,
    guidance: float,
    seed: int = 0,
    batch_size: int = 500,
) -> torch.Tensor:
    """uint8 samples (B, 1, 16, 16) of ``labels`` from fixed Gaussian noise (seeded, float64)."""
    from . import eps_model

    grid = model.schedule.grid(steps)
    gen = torch.Generator().manual_seed(seed)
    shape = (len(labels), model.in_channels, model.image_size, model.image_size)
    noise = torch.randn(shape, generator=gen, dtype=torch.float64)
    out = []
    for i in range(0, len(labels), batch_size):
        eps = eps_model(model, labels[i : i + batch_size], guidance)
        out.append(to_uint8(solver.sample(eps, noise[i : i + batch_size], grid)))
    return torch.cat(out)


def reference_fd(classifier: DigitsClassifier | None = None) -> float:
    """FD between the training and held-out splits: what a perfect generator of the data scores, roughly."""
    from . import load_classifier

    clf = classifier or load_classifier()
    return frechet_distance(features(clf, load_digits("train").images), features(clf, load_digits("test").images))


def evaluate_sampler(
    solver: Any,
    steps: int,
    *,
    guidance: float = 2.0,
    num_per_class: int = 50,
    seed: int = 0,
    model: DigitsUNet | None = None,
    classifier: DigitsClassifier | None = None,
) -> dict[str, Any]:
    """Generate ``num_per_class`` digits of each class with ``solver`` and score them.

    Returns ``{"solver", "steps", "guidance", "num_samples", "accuracy", "per_class_accuracy", "fd",
    "seconds"}``; ``fd`` is against the held-out split.
    """
    from . import load_classifier, load_model

    model = model or load_model()
    clf = classifier or load_classifier()
    labels = torch.arange(NUM_CLASSES).repeat_interleave(num_per_class)
    t0 = time.perf_counter()
    images = generate(model, solver, steps, labels, guidance, seed=seed)
    seconds = time.perf_counter() - t0
    pred = clf.predict(to_model(images))
    correct = (pred == labels).float()
    return {
        "solver": repr(solver),
        "steps": steps,
        "guidance": guidance,
        "num_samples": len(labels),
        "accuracy": float(correct.mean()),
        "per_class_accuracy": [float(correct[labels == c].mean()) for c in range(NUM_CLASSES)],
        "fd": frechet_distance(features(clf, images), features(clf, load_digits("test").images)),
        "seconds": round(seconds, 2),
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m bdia.digits.quality``: the DDIM and BDIA table at 10 and 50 steps."""
    import argparse

    import bdia

    ap = argparse.ArgumentParser(description="Score DDIM and BDIA samples of the digits model")
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--num-per-class", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--gamma", type=float, default=1.0, help="BDIA gamma")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from . import load_classifier, load_model

    model, clf = load_model(), load_classifier()
    print(f"reference FD (train split vs held-out split): {reference_fd(clf):.3f}")
    print(f"{'solver':<28} {'steps':>5} {'accuracy':>9} {'FD':>8} {'seconds':>8}")
    for steps in args.steps:
        for solver in (bdia.DDIM(), bdia.BDIA(gamma=args.gamma)):
            r = evaluate_sampler(
                solver,
                steps,
                guidance=args.guidance,
                num_per_class=args.num_per_class,
                seed=args.seed,
                model=model,
                classifier=clf,
            )
            print(f"{r['solver']:<28} {steps:>5} {r['accuracy']:>9.4f} {r['fd']:>8.3f} {r['seconds']:>8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
