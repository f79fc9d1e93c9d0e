"""One-step moves for the ODE d xbar / d lambda = eps (docs/math.md section 6).

Forward moves F_{i->i+1}(z_i) (Euler = DDIM, EDM's Heun) and BDIA's backward move B_{i->i-1}(z_i).
Each takes the eps already evaluated at (z_i, tau_i), so the backward move can reuse it, and all
are written through the one DDIM transition: in (xbar, lambda) every such step is
``xbar_j = xbar_i + (lambda_j - lambda_i) * (slope)``, i.e. ``D_{i->j}`` with the slope in place of eps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from ..schedule import Grid
from .base import ddim_transition

Evaluate = Callable[[torch.Tensor, int], torch.Tensor]


def euler_step(ev: Evaluate, z: torch.Tensor, eps: torch.Tensor, grid: Grid, i: int) -> torch.Tensor:
    """Euler in (xbar, lambda) = the DDIM step (Song et al. 2021); first order, no extra NFE."""
    return ddim_transition(z, eps, grid, i, i + 1)


def heun_transition(ev: Evaluate, z: torch.Tensor, eps: torch.Tensor, grid: Grid, i: int, j: int) -> torch.Tensor:
    """Heun's trapezoid rule from grid point i to j (either direction): one extra NFE at (Euler guess, tau_j).

    ``xbar_j = xbar_i + (lambda_j - lambda_i) (eps_i + eps_j) / 2`` with eps_j evaluated at the Euler
    prediction ``D_{i->j}(z_i)``. Sampling uses j = i+1; :class:`~bdia.solvers.ddim.Heun`'s
    approximate inversion uses j = i-1. Point j must have a model time (j < N).
    """
    z_euler = ddim_transition(z, eps, grid, i, j)  # Euler step
    eps_next = ev(z_euler, j)  # slope at the Euler prediction
    return ddim_transition(z, 0.5 * (eps + eps_next), grid, i, j)  # trapezoid rule


def heun_step(ev: Evaluate, z: torch.Tensor, eps: torch.Tensor, grid: Grid, i: int) -> torch.Tensor:
    """EDM's Heun step (Karras et al. 2022, Algorithm 1, deterministic): second order, one extra NFE.

    Euler on the last step, where the next point is the clean terminal point that the model is
    never evaluated at (EDM's sigma = 0).
    """
    if i + 1 == grid.num_steps:
        return ddim_transition(z, eps, grid, i, i + 1)
    return heun_transition(ev, z, eps, grid, i, i + 1)


def euler_back_step(ev: Evaluate, z: torch.Tensor, eps: torch.Tensor, grid: Grid, i: int) -> torch.Tensor:
    """BDIA's backward move B_{i->i-1}(z_i): the DDIM (Euler) step back to point i-1, reusing eps at z_i; no NFE."""
    return ddim_transition(z, eps, grid, i, i - 1)


class Integrator(NamedTuple):
    step: Callable[[Evaluate, torch.Tensor, torch.Tensor, Grid, int], torch.Tensor]
    order: int
    nfe_per_step: int


INTEGRATORS: dict[str, Integrator] = {
    "euler": Integrator(euler_step, order=1, nfe_per_step=1),
    "heun": Integrator(heun_step, order=2, nfe_per_step=2),
}


# Backward moves B_{i->i-1}(z_i) for BDIA. Only Euler: it reuses the slope at z_i that the forward
# move already paid for (docs/math.md section 6); any other B would cost model evaluations that buy
# nothing for invertibility.
BACKWARD_INTEGRATORS: dict[str, Integrator] = {
    "euler": Integrator(euler_back_step, order=1, nfe_per_step=0),
}


def get_integrator(name: str) -> Integrator:
    if name not in INTEGRATORS:
        raise ValueError(f"unknown one-step integrator {name!r}; choose one of {sorted(INTEGRATORS)}")
    return INTEGRATORS[name]


def get_backward_integrator(name: str) -> Integrator:
    if name not in BACKWARD_INTEGRATORS:
        raise ValueError(
            f"unknown backward integrator {name!r}; BDIA's backward move reuses the slope already evaluated at "
            f"z_i, so only {sorted(BACKWARD_INTEGRATORS)} is available"
        )
    return BACKWARD_INTEGRATORS[name]
