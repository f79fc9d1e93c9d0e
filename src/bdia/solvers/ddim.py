"""DDIM (Song et al., ICLR 2021), deterministic (eta = 0), and its approximate inversion."""

from __future__ import annotations

from typing import ClassVar

import torch

from ..schedule import Grid
from .base import Callback, Solver, _Evaluator, ddim_transition
from .onestep import get_integrator


class DDIM(Solver):
    """Deterministic DDIM: z_{i+1} = D_{i->i+1}(z_i) with eps at (z_i, tau_i); N NFE, first order.

    ``invert`` is the usual approximate DDIM inversion (diffusers' DDIMInverseScheduler): the grid
    run backwards with eps evaluated at the *current* state and the target timestep, since eps at
    the unknown end is not available. It is not exact: regenerating drifts from the input, more so
    at few steps and high guidance. ``latents`` is ``(z_0,)``.
    """

    name: ClassVar[str] = "ddim"
    forward: ClassVar[str] = "euler"
    order: ClassVar[int] = 1
    nfe_per_step: ClassVar[int] = 1
    exact_inversion: ClassVar[bool] = False
    num_latents: ClassVar[int] = 1

    def _init_from_noise(self, ev: _Evaluator, noise: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, ...]:
        return (noise,)

    def _generate(self, ev: _Evaluator, latents: tuple[torch.Tensor, ...], grid: Grid,
                  callback: Callback | None) -> torch.Tensor:
        step = get_integrator(self.forward).step
        (z,) = latents
        n = grid.num_steps
        for i in range(n):
            z = self._check_state(step(ev, z, ev(z, i), grid, i), i + 1, "sampling")
            if callback is not None:
                callback(i + 1, n, (z,))
        return z

    def _invert(self, ev: _Evaluator, x0: torch.Tensor, grid: Grid, callback: Callback | None) -> tuple[torch.Tensor, ...]:
        z = x0
        n = grid.num_steps
        for i in range(n - 1, -1, -1):
            eps = ev(z, i)  # approximation: the state is at point i+1, the timestep is tau_i
            z = self._check_state(ddim_transition(z, eps, grid, i + 1, i), i, "inversion")
            if callback is not None:
                callback(n - i, n, (z,))
        return (z,)
