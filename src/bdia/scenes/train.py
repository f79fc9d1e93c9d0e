"""Training the scenes model (text encoder + UNet, jointly) from a seed.

Scenes stream from the training seeds (:func:`~bdia.scenes.render.iter_training_scenes`), so every
batch is new renders and no scene repeats; timesteps, noise, caption dropout and initialisation
draw from generators seeded by ``seed``. ``scripts/train_scenes.py`` is the entry point; tests
call :func:`train_model` with a few steps.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..schedule import Schedule
from ..training import SCHEDULE_CONFIG, denoising_loss, lr_at, optimiser_step, print_line, save_weights
from .render import caption, iter_training_scenes, render_batch

__all__ = ["MODEL_DEFAULTS", "save_weights", "to_model_input", "train_model"]

MODEL_DEFAULTS: dict[str, Any] = {
    "steps": 3000,
    "batch_size": 64,
    "lr": 1e-3,
    "lr_min": 5e-5,
    "warmup": 50,
    "weight_decay": 0.0,
    "ema_decay": 0.999,
    "caption_dropout": 0.1,
    "grad_clip": 1.0,
    "model": {},  # ScenesModel settings over DEFAULT_CONFIG
}

Log = Callable[[str], None]


def to_model_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 in [-1, 1]."""
    x = torch.as_tensor(np.asarray(images))
    return x.to(torch.float32) / 127.5 - 1.0


def train_model(
    seed: int = 0,
    log: Log | None = print_line,
    log_every: int = 100,
    checkpoint: Callable[[nn.Module, int], None] | None = None,
    checkpoint_every: int = 500,
    **overrides: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train the eps-prediction model; return the EMA model (eval mode) and a history.

    Loss: mean squared error of the noise prediction at uniform training timesteps, with captions
    replaced by "" with probability ``caption_dropout`` (classifier-free guidance).
    ``checkpoint(ema, step)`` is called every ``checkpoint_every`` steps (a partial run stays usable).
    """
    from .model import ScenesModel

    cfg = {**MODEL_DEFAULTS, **overrides}
    unknown = set(cfg) - set(MODEL_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown training settings: {sorted(unknown)}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = ScenesModel(**cfg["model"])
    model.schedule = Schedule.from_config(SCHEDULE_CONFIG)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    abar = model.schedule.alphas_cumprod  # (T,) float64
    scenes = iter_training_scenes(0)
    curve: list[list[float]] = []
    running, count, t_start = 0.0, 0, time.time()
    seen = 0
    model.train()
    for step in range(cfg["steps"]):
        batch = [next(scenes) for _ in range(cfg["batch_size"])]
        seen += len(batch)
        x0 = to_model_input(render_batch(batch))
        texts = [caption(s) for s in batch]
        drop = torch.rand(len(texts), generator=gen) < cfg["caption_dropout"]
        texts = ["" if d else c for c, d in zip(texts, drop.tolist())]
        tokens = model.tokenize(texts)
        loss = denoising_loss(lambda z, t: model(z, t, tokens), x0, abar, gen)
        lr = lr_at(step, cfg["steps"], cfg["lr"], cfg["lr_min"], cfg["warmup"])
        optimiser_step(model, ema, opt, loss, lr, step=step, grad_clip=cfg["grad_clip"], ema_decay=cfg["ema_decay"])
        running, count = running + loss.item(), count + 1
        if (step + 1) % log_every == 0 or step + 1 == cfg["steps"]:
            curve.append([step + 1, running / count])
            if log:
                log(f"step {step + 1:5d}/{cfg['steps']}  loss {running / count:.4f}  ({time.time() - t_start:.0f}s)")
            running, count = 0.0, 0
        if checkpoint is not None and (step + 1) % checkpoint_every == 0:
            checkpoint(ema, step + 1)
    history = {
        "seed": seed,
        "settings": cfg,
        "schedule": SCHEDULE_CONFIG,
        "loss_curve": curve,
        "wall_time_s": round(time.time() - t_start, 1),
        "threads": torch.get_num_threads(),
        "scenes_seen": seen,
        "num_parameters": sum(p.numel() for p in ema.parameters()),
    }
    return ema.eval(), history
