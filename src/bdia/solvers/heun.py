"""EDM's deterministic Heun sampler (Karras et al., NeurIPS 2022, Algorithm 1 with S_churn = 0)."""

from __future__ import annotations

from typing import ClassVar

import torch

from ..schedule import Grid
from .base import Callback, _Evaluator, ddim_transition
from .ddim import DDIM
from .onestep import heun_transition


class Heun(DDIM):
    """EDM's Heun sampler in (xbar, lambda): second order, 2 NFE per step, Euler on the last step.

    Each step averages the slope at z_i and at the Euler prediction (the trapezoid rule); the last
    step, into the clean terminal point that the model is never evaluated at, is plain Euler.
    N steps cost 2N - 1 model evaluations. On :func:`bdia.edm.karras_grid` with
    :func:`bdia.edm.from_denoiser` this is EDM's ``edm_sampler`` with ``S_churn = 0``.

    ``invert`` is approximate, like DDIM's: Heun's method run along the grid in reverse. The first
    move (clean end -> point N-1) is DDIM inversion (eps at the clean state with timestep
    tau_{N-1}, since the clean end has no model time); every later move i+1 -> i is a Heun step
    evaluated at tau_{i+1} and, at the Euler guess, tau_i. It integrates the ODE to second order,
    so regeneration lands close to, but not exactly on, the input; 2N - 1 NFE.
    For an exact inverse use ``bdia.BDIA(gamma, forward="heun")``. ``latents`` is ``(z_0,)``.
    """

    name: ClassVar[str] = "heun"
    forward: ClassVar[str] = "heun"
    order: ClassVar[int] = 2
    nfe_per_step: ClassVar[int] = 2
    exact_inversion: ClassVar[bool] = False
    num_latents: ClassVar[int] = 1

    def _invert(self, ev: _Evaluator, x0: torch.Tensor, grid: Grid, callback: Callback | None) -> tuple[torch.Tensor, ...]:
        n = grid.num_steps
        # Clean end -> point N-1: DDIM inversion (the mirror of EDM's Euler last step)
        z = self._check_state(ddim_transition(x0, ev(x0, n - 1), grid, n, n - 1), n - 1, "inversion")
        if callback is not None:
            callback(1, n, (z,))
        for i in range(n - 2, -1, -1):
            # Heun step from point i+1 back to point i
            z = self._check_state(heun_transition(ev, z, ev(z, i + 1), grid, i + 1, i), i, "inversion")
            if callback is not None:
                callback(n - i, n, (z,))
        return (z,)
