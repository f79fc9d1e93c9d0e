"""What training the embedded models (:mod:`bdia.digits`, :mod:`bdia.scenes`) shares: their noise schedule,
the learning-rate curve, one DDPM loss and optimiser step with an EMA copy, and the weights file format.

Every random draw goes through the generator the caller passes, in a fixed order, so a seed reproduces
the shipped weights (to the last bits of the machine's float arithmetic).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["SCHEDULE_CONFIG", "denoising_loss", "lr_at", "optimiser_step", "print_line", "save_weights"]

# The noise schedule both embedded models are trained with (DDPM's linear betas, trailing spacing),
# stored beside the weights and read back by the loaders.
SCHEDULE_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "timestep_spacing": "trailing",
    "prediction_type": "epsilon",
}


def print_line(line: str) -> None:
    print(line, flush=True)


def lr_at(step: int, steps: int, lr: float, lr_min: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine from ``lr`` down to ``lr_min``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = (step - warmup) / max(1, steps - warmup)
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * frac))


def denoising_loss(
    eps_model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    abar: torch.Tensor,
    gen: torch.Generator,
) -> torch.Tensor:
    """DDPM's loss: the mean squared error of ``eps_model(z_t, t)``'s noise prediction at uniform timesteps
    (``abar``: the training alphas_cumprod)."""
    t = torch.randint(0, abar.numel(), (x0.shape[0],), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    a = abar[t].sqrt().float()[:, None, None, None]
    s = (1 - abar[t]).sqrt().float()[:, None, None, None]
    return nn.functional.mse_loss(eps_model(a * x0 + s * noise, t), noise)


def optimiser_step(
    model: nn.Module,
    ema: nn.Module | None,
    opt: torch.optim.Optimizer,
    loss: torch.Tensor,
    lr: float,
    *,
    step: int,
    grad_clip: float | None = None,
    ema_decay: float = 0.0,
) -> None:
    """One step at learning rate ``lr`` (gradients clipped to norm ``grad_clip``), then the EMA copy follows
    with decay min(``ema_decay``, (1 + step) / (10 + step)) (a short memory while the model moves fast)."""
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    if ema is not None:
        with torch.no_grad():
            d = min(ema_decay, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1 - d)


def save_weights(model: nn.Module, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s float32 tensors as safetensors, its config (and ``extra``) as JSON metadata."""
    from safetensors.torch import save_file

    from .io.files import atomic_path

    meta = {"config": json.dumps(model.config)}
    for k, v in (extra or {}).items():
        meta[k] = json.dumps(v)
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path, overwrite=True) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)
