"""Null-text inversion (Mokady et al., "Null-text Inversion for Editing Real Images using Guided
Diffusion Models", CVPR 2023): the optimisation-based baseline for inversion under guidance.

DDIM inversion is accurate enough without guidance (scale 1) but drifts under classifier-free
guidance. Null-text inversion keeps the guidance-1 DDIM-inversion trajectory z*_N .. z*_0 as a
pivot and, walking it from the noise end, optimises the unconditional condition (the empty-prompt
text embedding) separately for every step i so that one guided DDIM step from the current state
lands on the pivot:

    uncond_i = argmin_u || D_{i->i+1}(zbar_i, eps_w(zbar_i, tau_i; cond, u)) - z*_{i+1} ||^2

with a few Adam iterations per step (early stop on a loss threshold), then steps zbar with the
optimised uncond_i. Regenerating with those per-step unconds reconstructs the input closely, but
not exactly, at the price of forward *and backward* passes through the model.

Works with any :class:`~bdia.ClassifierFreeGuidance` whose ``uncond`` is a float tensor and whose
model ``model(x, t, cond)`` is differentiable in ``cond``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .models import ClassifierFreeGuidance, _expand, model_dtype
from .schedule import Grid
from .solvers import DDIM, ddim_transition
from .solvers.ddim import DDIMState

__all__ = ["NullTextInversion", "PerStepUncond", "null_text_invert", "text_part", "with_text"]


@dataclass
class NullTextInversion:
    """The result of :func:`null_text_invert`.

    ``noise`` is z_0 of the guidance-1 DDIM inversion; ``uncond[i]`` the optimised unconditional
    condition for grid step i (i = 0 at the noise end); ``nfe`` counts model forward passes and
    backward passes (each backward counted as one); ``losses[i]`` is step i's last pivot loss.
    """

    noise: torch.Tensor
    uncond: list[torch.Tensor]
    nfe: int
    grid: dict[str, list[float]]
    losses: list[float] = field(default_factory=list)
    state_dtype: torch.dtype = torch.float64

    def guided_model(self, guided: ClassifierFreeGuidance) -> PerStepUncond:
        """``guided`` with its uncond replaced, step by step, by the optimised ones (an eps model).

        Pass ``guided.with_cond(other)`` to edit.
        """
        return PerStepUncond(guided, self.uncond, self.grid["timesteps"])

    def sample(self, guided: ClassifierFreeGuidance, grid: Grid) -> torch.Tensor:
        """DDIM generation from ``noise`` with the per-step unconds: the reconstruction (or an edit)."""
        if not grid.matches(self.grid):
            raise ValueError("this NullTextInversion was made on a different grid; pass the grid used to invert")
        return DDIM(state_dtype=self.state_dtype).sample(self.guided_model(guided), self.noise, grid)


# In a dict condition (Stable Diffusion's), the entry null-text optimises: the text encoder's token states.
# SDXL's pooled embedding and time ids stay as they are.
TEXT_KEY = "encoder_hidden_states"


def text_part(uncond: Any) -> torch.Tensor | None:
    """The float tensor null-text optimises in ``uncond`` (itself, or its ``TEXT_KEY`` entry), else None."""
    part = uncond.get(TEXT_KEY) if isinstance(uncond, Mapping) else uncond
    return part if isinstance(part, torch.Tensor) and part.is_floating_point() else None


def with_text(uncond: Any, part: torch.Tensor) -> Any:
    """``uncond`` with its optimised part replaced by ``part``."""
    return {**uncond, TEXT_KEY: part} if isinstance(uncond, Mapping) else part


class PerStepUncond(ClassifierFreeGuidance):
    """Classifier-free guidance whose unconditional condition is the grid step's own: ``unconds[i]`` at
    ``timesteps[i]`` (null-text inversion's optimised embeddings). Any other timestep is refused."""

    def __init__(self, guided: ClassifierFreeGuidance, unconds: Sequence[torch.Tensor], timesteps: Sequence[float]):
        super().__init__(guided.model, guided.cond, guided.uncond, guided.scale, guided.batched)
        if len(unconds) != len(timesteps):
            raise ValueError(f"{len(unconds)} null embeddings for a grid of {len(timesteps)} steps; give one per step")
        self.unconds, self.timesteps = list(unconds), [float(t) for t in timesteps]
        self.index = {t: i for i, t in enumerate(self.timesteps)}

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        i = self.index.get(float(t.reshape(-1)[0]))
        if i is None:
            raise ValueError(f"timestep {float(t.reshape(-1)[0]):g} is not on the grid this null-text inversion used")
        uncond = with_text(self.uncond, self.unconds[i])
        return ClassifierFreeGuidance(self.model, self.cond, uncond, self.scale, self.batched)(x, t)

    def with_cond(self, cond: Any, scale: float | None = None) -> PerStepUncond:
        return PerStepUncond(super().with_cond(cond, scale), self.unconds, self.timesteps)


def null_text_invert(
    guided: ClassifierFreeGuidance,
    x0: torch.Tensor,
    grid: Grid,
    *,
    inner_steps: int = 10,
    lr: float = 1e-2,
    tol: float = 1e-5,
    state_dtype: torch.dtype = torch.float64,
) -> NullTextInversion:
    """Null-text inversion of ``x0`` under ``guided`` (Mokady et al. 2023, Algorithm 1).

    Args:
        guided: the guided model to reconstruct under; its ``uncond`` (a float tensor, e.g. the
            empty-prompt embedding, or a dict whose ``encoder_hidden_states`` is one: only that entry is
            optimised) is the initial value of every step's optimisation.
        inner_steps: Adam iterations per step at most (the paper's N = 10).
        lr: Adam's learning rate at the first step, decayed linearly to half at the last
            (the paper's 1e-2 * (1 - i / 100) over 50 steps).
        tol: early-stop threshold on the pivot loss (mean squared error), raised linearly
            along the grid as in the paper (1e-5 + i * 2e-5 over 50 steps).
    """
    if not isinstance(guided, ClassifierFreeGuidance):
        raise TypeError(f"null-text inversion needs a bdia.ClassifierFreeGuidance, got {type(guided).__name__}")
    if text_part(guided.uncond) is None:
        raise TypeError(
            "null-text inversion optimises the unconditional condition, so guided.uncond must be a "
            f"float tensor (a text embedding) or a dict holding one as {TEXT_KEY!r}; a class label cannot be optimised"
        )
    if not isinstance(inner_steps, int) or inner_steps < 0:
        raise ValueError(f"inner_steps must be a non-negative int, got {inner_steps!r}")
    n = grid.num_steps
    model, cond, scale = guided.model, guided.cond, guided.scale
    run_dtype = model_dtype(guided) or x0.dtype

    # 1. The pivot: DDIM inversion at guidance 1 (the conditional model alone).
    pivot: list[torch.Tensor] = [torch.empty(0)] * (n + 1)
    pivot[n] = x0.detach().to(state_dtype)

    def keep(index: int, sigma: float, state: DDIMState) -> None:
        pivot[index] = state.z.detach()

    with torch.no_grad():
        inv = DDIM(state_dtype=state_dtype).invert(guided.with_cond(cond, scale=1.0), x0, grid, callback=keep)
    nfe = inv.nfe

    # 2. Walk the pivot from the noise end, optimising the uncond of each step.
    z = pivot[0]
    base = guided.uncond
    u = text_part(base).detach().clone()  # type: ignore[union-attr]
    unconds, losses = [], []
    for i in range(n):
        b = z.shape[0]
        t = grid.timesteps[i].to(z.device).expand(b)
        x_in = z.to(run_dtype)
        with torch.no_grad():
            e_c = model(x_in, t, _expand(cond, b))
        nfe += 1
        u = u.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([u], lr=lr * (1.0 - i / (2.0 * n)))
        threshold = tol + 1e-3 * i / n
        loss_value = float("nan")
        with torch.enable_grad():
            for _ in range(inner_steps):
                e_u = model(x_in, t, _expand(with_text(base, u), b))
                e = (e_u + scale * (e_c - e_u)).to(state_dtype)
                loss = torch.nn.functional.mse_loss(ddim_transition(z, e, grid, i, i + 1), pivot[i + 1])
                opt.zero_grad()
                loss.backward()
                opt.step()
                nfe += 2  # one forward, one backward
                loss_value = loss.detach().item()
                if loss_value < threshold:
                    break
        u = u.detach()
        with torch.no_grad():
            e_u = model(x_in, t, _expand(with_text(base, u), b))
            nfe += 1
            e = (e_u + scale * (e_c - e_u)).to(state_dtype)
            z = ddim_transition(z, e, grid, i, i + 1)
        unconds.append(u)
        losses.append(loss_value)
    return NullTextInversion(pivot[0], unconds, nfe, grid.fingerprint(), losses, state_dtype)
