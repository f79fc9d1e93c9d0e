"""The judge of scenes samples, trained on renderer output only (never on the diffusion model).

Design (objects never touch, backgrounds are uniform): :func:`segment` finds the background as the
palette background nearest to the median border pixel, marks pixels far from it as foreground and
splits them into 8-connected components; each component's colour is the palette colour nearest to
the median of its core pixels (colour statistics), its size follows its area, and its shape comes
from :class:`ScenesClassifier`, a tiny CNN on the component's mask cropped to its bounding square
and resized to 16x16. The CNN's penultimate features are what the Frechet distance compares.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .render import (
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    Scene,
    footprint,
    held_out_scenes,
    render,
    training_scenes,
)

__all__ = ["CLASSIFIER_DEFAULTS", "Detected", "ScenesClassifier", "crop_mask", "detect", "segment", "train_classifier"]

CROP = 16
MIN_PIXELS = 6  # smaller components are noise, not objects
FOREGROUND_DISTANCE = 70.0  # RGB distance from the background colour that counts as foreground
CORE_DISTANCE = 0.6  # core pixels: at least this fraction of the farthest pixel's distance (no blended edges)
LARGE_AREA = 85  # pixels: small objects cover about 50, large ones about 150

CLASSIFIER_DEFAULTS: dict[str, Any] = {
    "steps": 600,
    "batch_size": 128,
    "lr": 2e-3,
    "weight_decay": 1e-4,
    "num_scenes": 3000,
}


@dataclass
class Detected:
    """One object found in an image: colour, shape and size names, its pixel mask and shape features."""

    colour: str
    shape: str
    size: str
    mask: np.ndarray
    features: np.ndarray


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a boolean (H, W) mask, as boolean masks (flood fill; images are tiny)."""
    H, W = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    out = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        comp = np.zeros_like(mask, dtype=bool)
        stack = [(int(y0), int(x0))]
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            comp[y, x] = True
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < H and 0 <= xx < W and mask[yy, xx] and not seen[yy, xx]:
                        seen[yy, xx] = True
                        stack.append((yy, xx))
        out.append(comp)
    return out


def segment(image: np.ndarray) -> tuple[str, list[np.ndarray], list[str]]:
    """(background name, object masks, object colour names) of a uint8 (H, W, 3) image."""
    img = np.asarray(image, dtype=np.float64)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    med = np.median(border, axis=0)
    bg_names = list(BACKGROUNDS)
    bg = bg_names[int(np.argmin([np.linalg.norm(med - np.array(BACKGROUNDS[b])) for b in bg_names]))]
    dist = np.linalg.norm(img - np.array(BACKGROUNDS[bg], dtype=np.float64), axis=-1)
    masks, colours = [], []
    names = list(COLOURS)
    palette = np.array([COLOURS[c] for c in names], dtype=np.float64)
    for comp in _components(dist > FOREGROUND_DISTANCE):
        if comp.sum() < MIN_PIXELS:
            continue
        core = comp & (dist >= CORE_DISTANCE * dist[comp].max())
        colour = np.median(img[core], axis=0)
        masks.append(comp)
        colours.append(names[int(np.argmin(np.linalg.norm(palette - colour, axis=1)))])
    return bg, masks, colours


def crop_mask(mask: np.ndarray) -> torch.Tensor:
    """The mask cropped to its bounding square (1 pixel margin), resized to (1, CROP, CROP) float32."""
    ys, xs = np.nonzero(mask)
    cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
    half = max(ys.max() + 1 - ys.min(), xs.max() + 1 - xs.min()) / 2 + 1
    H, W = mask.shape
    y0, x0 = int(np.floor(cy - half)), int(np.floor(cx - half))
    n = int(np.ceil(2 * half))
    padded = np.zeros((n, n), dtype=np.float32)
    sy0, sx0 = max(y0, 0), max(x0, 0)
    sy1, sx1 = min(y0 + n, H), min(x0 + n, W)
    padded[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = mask[sy0:sy1, sx0:sx1]
    t = torch.from_numpy(padded)[None, None]
    return nn.functional.interpolate(t, size=(CROP, CROP), mode="bilinear", align_corners=False)[0]


class ScenesClassifier(nn.Module):
    """Shape of one object from its 16x16 mask crop: two conv layers, 32-d features, a linear head."""

    def __init__(self, width: int = 16, features: int = 32) -> None:
        super().__init__()
        self.config = {"width": width, "features": features}
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.SiLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.SiLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * (CROP // 4) ** 2, features),
            nn.SiLU(),
        )
        self.head = nn.Linear(features, len(SHAPES))

    def features(self, crops: torch.Tensor) -> torch.Tensor:
        return self.body(crops)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(crops))


@torch.no_grad()
def detect(classifier: ScenesClassifier, image: np.ndarray) -> tuple[str, list[Detected]]:
    """The background and the objects of a uint8 (H, W, 3) image, left to right."""
    bg, masks, colours = segment(image)
    if not masks:
        return bg, []
    crops = torch.stack([crop_mask(m) for m in masks])
    feats = classifier.features(crops)
    shapes = classifier.head(feats).argmax(1).tolist()
    objs = [
        Detected(c, SHAPES[s], "large" if m.sum() > LARGE_AREA else "small", m, f.numpy())
        for m, c, s, f in zip(masks, colours, shapes, feats)
    ]
    return bg, sorted(objs, key=lambda d: float(np.nonzero(d.mask)[1].mean()))


def _labelled_crops(scenes: list[Scene]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask crops of the segmented renders, labelled with the shape of the object each component covers most."""
    crops, labels = [], []
    for s in scenes:
        _, masks, _ = segment(render(s))
        prints = [footprint(o, s.size) for o in s.objects]
        for m in masks:
            k = int(np.argmax([(m & p).sum() for p in prints]))
            crops.append(crop_mask(m))
            labels.append(SHAPES.index(s.objects[k].shape))
    return torch.stack(crops), torch.tensor(labels)


def shape_accuracy(classifier: ScenesClassifier, scenes: list[Scene]) -> float:
    crops, labels = _labelled_crops(scenes)
    with torch.no_grad():
        return float((classifier(crops).argmax(1) == labels).float().mean())


def train_classifier(
    seed: int = 0, log: Callable[[str], None] | None = print, log_every: int = 100, **overrides: Any
) -> tuple[ScenesClassifier, dict[str, Any]]:
    """Train the shape CNN on crops of training renders (cross-entropy, random flips left-right)."""
    cfg = {**CLASSIFIER_DEFAULTS, **overrides}
    unknown = set(cfg) - set(CLASSIFIER_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown classifier settings: {sorted(unknown)}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    t_start = time.time()
    crops, labels = _labelled_crops(training_scenes(cfg["num_scenes"]))
    model = ScenesClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    curve: list[list[float]] = []
    running, count = 0.0, 0
    for step in range(cfg["steps"]):
        idx = torch.randint(0, len(labels), (cfg["batch_size"],), generator=gen)
        x = crops[idx]
        flip = torch.rand(len(idx), generator=gen) < 0.5  # every shape is symmetric left-right
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        loss = nn.functional.cross_entropy(model(x), labels[idx])
        for g in opt.param_groups:
            g["lr"] = cfg["lr"] * 0.5 * (1 + np.cos(np.pi * step / cfg["steps"]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running, count = running + loss.item(), count + 1
        if (step + 1) % log_every == 0 or step + 1 == cfg["steps"]:
            curve.append([step + 1, running / count])
            if log:
                log(f"classifier step {step + 1:5d}/{cfg['steps']}  loss {running / count:.4f}")
            running, count = 0.0, 0
    model.eval()
    history = {
        "seed": seed,
        "settings": cfg,
        "loss_curve": curve,
        "wall_time_s": round(time.time() - t_start, 1),
        "threads": torch.get_num_threads(),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "held_out_accuracy": _object_accuracy(model, held_out_scenes(500)),
    }
    return model, history


def _object_accuracy(model: ScenesClassifier, scenes: list[Scene]) -> dict[str, float]:
    """Held-out render accuracy: background, object count, and per object colour+shape+size (in order)."""
    bg_ok = count_ok = obj_ok = n_obj = 0
    for s in scenes:
        bg, objs = detect(model, render(s))
        bg_ok += bg == s.background
        count_ok += len(objs) == len(s.objects)
        n_obj += len(s.objects)
        if len(objs) == len(s.objects):
            obj_ok += sum((d.colour, d.shape, d.size) == (o.colour, o.shape, o.size) for d, o in zip(objs, s.objects))
    return {"background": bg_ok / len(scenes), "count": count_ok / len(scenes), "objects": obj_ok / n_obj}
