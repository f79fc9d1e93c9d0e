"""Training the digits UNet and classifier from a seed (the shipped weights come from ``main``).

Everything random (batches, timesteps, noise, class dropout, shifts, initialisation) draws from
generators seeded by ``seed``, so a run on the same machine and thread count reproduces the
shipped weights. ``scripts/train_digits.py`` is the entry point; tests call the functions with a
few steps.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..schedule import Schedule
from ..training import SCHEDULE_CONFIG, denoising_loss, lr_at, optimiser_step, print_line, save_weights
from .classifier import DigitsClassifier
from .data import NUM_CLASSES, load_digits
from .unet import DigitsUNet

__all__ = ["SCHEDULE_CONFIG", "UNET_DEFAULTS", "CLASSIFIER_DEFAULTS", "train_unet", "train_classifier", "save_weights"]


UNET_DEFAULTS: dict[str, Any] = {
    "steps": 3000,
    "batch_size": 128,
    "lr": 1e-3,
    "lr_min": 1e-4,
    "warmup": 100,
    "ema_decay": 0.999,
    "class_dropout": 0.12,
    "grad_clip": 1.0,
    "channels": [32, 64, 64],
    "emb_dim": 128,
}

CLASSIFIER_DEFAULTS: dict[str, Any] = {
    "steps": 1500,
    "batch_size": 128,
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "max_shift": 1,
}

Log = Callable[[str], None]


def _random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (background -1 fills in)."""
    if max_shift <= 0:
        return x
    B, _, H, W = x.shape
    pad = nn.functional.pad(x, (max_shift,) * 4, value=-1.0)
    dx = torch.randint(0, 2 * max_shift + 1, (B,), generator=gen)
    dy = torch.randint(0, 2 * max_shift + 1, (B,), generator=gen)
    return torch.stack([pad[b, :, dy[b] : dy[b] + H, dx[b] : dx[b] + W] for b in range(B)])


def _setup(defaults: dict[str, Any], overrides: dict[str, Any], seed: int):
    """Settings (refusing unknown keys), a seeded generator, and the training split."""
    cfg = {**defaults, **overrides}
    unknown = set(cfg) - set(defaults)
    if unknown:
        raise TypeError(f"unknown training settings: {sorted(unknown)}")
    torch.manual_seed(seed)
    return cfg, torch.Generator().manual_seed(seed), load_digits("train")


def train_unet(
    seed: int = 0, log: Log | None = print_line, log_every: int = 100, **overrides: Any
) -> tuple[DigitsUNet, dict[str, Any]]:
    """Train the eps-prediction UNet on the training split; return the EMA model and a history.

    Loss: mean squared error of the noise prediction at uniform training timesteps (DDPM), with
    labels replaced by the null class with probability ``class_dropout`` (classifier-free guidance).
    """
    cfg, gen, data = _setup(UNET_DEFAULTS, overrides, seed)
    x_all, y_all = data.as_model_input(), data.labels
    model = DigitsUNet(channels=cfg["channels"], emb_dim=cfg["emb_dim"], num_classes=NUM_CLASSES)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    abar = Schedule.from_config(SCHEDULE_CONFIG).alphas_cumprod  # (T,) float64
    curve: list[list[float]] = []
    running, count, t_start = 0.0, 0, time.time()
    for step in range(cfg["steps"]):
        idx = torch.randint(0, len(data), (cfg["batch_size"],), generator=gen)
        x0, y = x_all[idx], y_all[idx].clone()
        y[torch.rand(y.shape, generator=gen) < cfg["class_dropout"]] = NUM_CLASSES
        loss = denoising_loss(lambda z, t: model(z, t, y), x0, abar, gen)
        lr = lr_at(step, cfg["steps"], cfg["lr"], cfg["lr_min"], cfg["warmup"])
        optimiser_step(model, ema, opt, loss, lr, step=step, grad_clip=cfg["grad_clip"], ema_decay=cfg["ema_decay"])
        running, count = running + loss.item(), count + 1
        if (step + 1) % log_every == 0 or step + 1 == cfg["steps"]:
            curve.append([step + 1, running / count])
            if log:
                log(
                    f"unet step {step + 1:5d}/{cfg['steps']}  loss {running / count:.4f}  "
                    f"({time.time() - t_start:.0f}s)"
                )
            running, count = 0.0, 0
    history = {
        "seed": seed,
        "settings": cfg,
        "schedule": SCHEDULE_CONFIG,
        "loss_curve": curve,
        "wall_time_s": round(time.time() - t_start, 1),
        "num_parameters": sum(p.numel() for p in ema.parameters()),
    }
    return ema.eval(), history


@torch.no_grad()
def _accuracy(model: DigitsClassifier, split: str) -> float:
    data = load_digits(split)
    return float((model.predict(data.as_model_input()) == data.labels).float().mean())


def train_classifier(
    seed: int = 0, log: Log | None = print_line, log_every: int = 100, **overrides: Any
) -> tuple[DigitsClassifier, dict[str, Any]]:
    """Train the judge classifier on the training split (cross-entropy, shifts of up to 1 pixel)."""
    cfg, gen, data = _setup(CLASSIFIER_DEFAULTS, overrides, seed)
    x_all, y_all = data.as_model_input(), data.labels
    model = DigitsClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    curve: list[list[float]] = []
    running, count, t_start = 0.0, 0, time.time()
    model.train()
    for step in range(cfg["steps"]):
        idx = torch.randint(0, len(data), (cfg["batch_size"],), generator=gen)
        x = _random_shift(x_all[idx], cfg["max_shift"], gen)
        loss = nn.functional.cross_entropy(model(x), y_all[idx])
        optimiser_step(model, None, opt, loss, lr_at(step, cfg["steps"], cfg["lr"], cfg["lr"] * 0.05, 50), step=step)
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
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "train_accuracy": _accuracy(model, "train"),
        "test_accuracy": _accuracy(model, "test"),
    }
    return model, history
