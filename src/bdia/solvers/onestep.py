"""One-step forward integrators F_{i->i+1}(z_i) for the ODE d xbar / d lambda = eps (MATH.md section 6).

Each takes the eps already evaluated at (z_i, tau_i), so BDIA's backward move can reuse it, and
returns z_{i+1}. Both are written through the one DDIM transition: in (xbar, lambda) every such
step is ``xbar_{i+1} = xbar_i + h * (slope)``, i.e. ``D_{i->i+1}`` with the slope in place of eps.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from ..schedule import Grid
from .base import ddim_transition

Evaluate = Callable[[torch.Tensor, int], torch.Tensor]


def euler_step(ev: Evaluate, z: torch.Tensor, eps: torch.Tensor, grid: Grid, i: int) -> torch.Tensor:
    """Euler in (xbar, lambda) = the DDIM step (Song et al. 2021); first order, no extra NFE."""
    return ddim_transition(z, eps, grid, i, i + 1)


def heun_step(ev: Evaluate, z: torch.Tensor, eps: torch.Tensor, grid: Grid, i: int) -> torch.Tensor:
    """EDM's Heun step (Karras et al. 2022, Algorithm 1, deterministic): second order, one extra NFE.

    Euler on the last step, where the next point is the clean terminal point that the model is
    never evaluated at (EDM's sigma = 0).
    """
    z_euler = ddim_transition(z, eps, grid, i, i + 1)
    if i + 1 == grid.num_steps:
        return z_euler
    eps_next = ev(z_euler, i + 1)  # slope at the Euler prediction
    return ddim_transition(z, 0.5 * (eps + eps_next), grid, i, i + 1)  # trapezoid rule


class Integrator(NamedTuple):
    step: Callable[[Evaluate, torch.Tensor, torch.Tensor, Grid, int], torch.Tensor]
    order: int
    nfe_per_step: int


INTEGRATORS: dict[str, Integrator] = {
    "euler": Integrator(euler_step, order=1, nfe_per_step=1),
    "heun": Integrator(heun_step, order=2, nfe_per_step=2),
}


def get_integrator(name: str) -> Integrator:
    if name not in INTEGRATORS:
        raise ValueError(f"unknown one-step integrator {name!r}; choose one of {sorted(INTEGRATORS)}")
    return INTEGRATORS[name]
