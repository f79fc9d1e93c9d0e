"""How good are generated scenes: object accuracy on held-out captions and a Frechet distance.

Samples are generated for the captions of held-out scenes (:func:`~bdia.scenes.render.held_out_scenes`),
quantised to 8 bits and read by the judge (:func:`~bdia.scenes.classifier.detect`, trained on
renders only). Object accuracy: the fraction of the captions' objects for which the sample has an
object of the right colour AND shape (matched as multisets, each detected object used once).
Also reported: background accuracy, object-count accuracy, and the fraction of samples that are
exactly right (background, count, and every object's colour, shape and size). FD (Heusel et al.
2017, on the judge's 32-d per-object features instead of Inception's) is between the objects of the
samples and those of the held-out renders of the same scenes.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import numpy as np
import torch

from ..frechet import frechet_distance
from .render import caption, held_out_scenes, is_held_out_caption, render

__all__ = ["evaluate_sampler", "frechet_distance", "generate", "score"]


@torch.no_grad()
def generate(
    model: Any, solver: Any, steps: int, captions: list[str], guidance: float, seed: int = 0, batch_size: int = 100
) -> np.ndarray:
    """uint8 samples (B, H, W, 3) of ``captions`` from seeded float64 Gaussian noise."""
    from . import eps_model, to_uint8

    grid = model.schedule.grid(steps)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((len(captions), 3, model.image_size, model.image_size), generator=gen, dtype=torch.float64)
    out = []
    for i in range(0, len(captions), batch_size):
        eps = eps_model(model, captions[i : i + batch_size], guidance)
        out.append(to_uint8(solver.sample(eps, noise[i : i + batch_size], grid)))
    return torch.cat(out).permute(0, 2, 3, 1).numpy()


def score(classifier: Any, images: np.ndarray, scenes: list) -> dict[str, Any]:
    """Judge ``images`` against the ``scenes`` they were generated for (see the module)."""
    from .classifier import detect

    right = total = bg_ok = count_ok = exact = 0
    feats = []
    unseen = [0, 0]
    for img, s in zip(images, scenes):
        bg, objs = detect(classifier, img)
        feats += [d.features for d in objs]
        want = Counter((o.colour, o.shape) for o in s.objects)
        got = Counter((d.colour, d.shape) for d in objs)
        hits = sum((want & got).values())
        right, total = right + hits, total + len(s.objects)
        bg_ok += bg == s.background
        count_ok += len(objs) == len(s.objects)
        full = Counter(o.words() for o in s.objects) == Counter((d.size, d.colour, d.shape) for d in objs)
        exact += bool(full and bg == s.background)
        if is_held_out_caption(caption(s)):
            unseen[0] += hits
            unseen[1] += len(s.objects)
    return {
        "object_accuracy": right / total,
        "unseen_caption_object_accuracy": unseen[0] / unseen[1] if unseen[1] else None,
        "background_accuracy": bg_ok / len(scenes),
        "count_accuracy": count_ok / len(scenes),
        "exact_accuracy": exact / len(scenes),
        "features": np.array(feats),
    }


def evaluate_sampler(
    solver: Any,
    steps: int = 50,
    *,
    guidance: float = 3.0,
    num_scenes: int = 200,
    seed: int = 0,
    model: Any = None,
    classifier: Any = None,
) -> dict[str, Any]:
    """Sample the captions of ``num_scenes`` held-out scenes with ``solver`` and score them (see the module)."""
    from . import load_classifier, load_model
    from .classifier import detect

    model = model or load_model()
    clf = classifier or load_classifier()
    scenes = held_out_scenes(num_scenes)
    t0 = time.perf_counter()
    images = generate(model, solver, steps, [caption(s) for s in scenes], guidance, seed=seed)
    seconds = time.perf_counter() - t0
    r = score(clf, images, scenes)
    ref = np.array([d.features for s in scenes for d in detect(clf, render(s))[1]])
    feats = r.pop("features")
    fd = frechet_distance(feats, ref) if len(feats) > 2 else float("nan")
    return {
        "solver": repr(solver),
        "steps": steps,
        "guidance": guidance,
        "num_scenes": num_scenes,
        **r,
        "fd": fd,
        "seconds": round(seconds, 2),
    }
