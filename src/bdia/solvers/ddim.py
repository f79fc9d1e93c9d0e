"""DDIM (Song et al., ICLR 2021) and EDM's Heun sampler (Karras et al., NeurIPS 2022, Algorithm 1 with
S_churn = 0), deterministic, with their usual approximate inversions. State: ``DDIMState(z)``."""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch

from ..schedule import Grid
from .base import Evaluator, Solver, ddim_transition
from .onestep import heun_step, heun_transition


class DDIMState(NamedTuple):
    z: torch.Tensor  # z_i at the state's grid position


class DDIM(Solver[DDIMState]):
    """Deterministic DDIM: z_{i+1} = D_{i->i+1}(z_i) with eps at (z_i, tau_i); N NFE, first order.

    ``invert`` is the usual approximate DDIM inversion (diffusers' DDIMInverseScheduler): the grid
    run backwards with eps evaluated at the *current* state and the target timestep, since eps at
    the unknown end is not available. It is not exact: regenerating drifts from the input, more so
    at few steps and high guidance. ``latents`` is ``(z_0,)``.
    """

    name: ClassVar[str] = "ddim"
    order: ClassVar[int] = 1
    nfe_per_step: ClassVar[int] = 1
    exact_inversion: ClassVar[bool] = False
    State: ClassVar[type] = DDIMState

    def init(self, ev: Evaluator, noise: torch.Tensor, grid: Grid) -> DDIMState:
        return DDIMState(noise)

    def init_inverse(self, ev: Evaluator, x0: torch.Tensor, grid: Grid) -> DDIMState:
        return DDIMState(x0)

    def step(self, ev: Evaluator, state: DDIMState, grid: Grid, i: int) -> DDIMState:
        return DDIMState(ddim_transition(state.z, ev(state.z, i), grid, i, i + 1))

    def unstep(self, ev: Evaluator, state: DDIMState, grid: Grid, i: int) -> DDIMState:
        # approximation: the state is at point i+1 but eps is taken at timestep tau_i
        return DDIMState(ddim_transition(state.z, ev(state.z, i), grid, i + 1, i))

    def output(self, state: DDIMState) -> torch.Tensor:
        return state.z


class Heun(DDIM):
    """EDM's Heun sampler in (xbar, lambda): second order, 2 NFE per step, Euler on the last step.

    Each step averages the slope at z_i and at the Euler prediction (the trapezoid rule); the last
    step, into the clean terminal point that the model is never evaluated at, is plain Euler.
    N steps cost 2N - 1 model evaluations. On :func:`bdia.edm.karras_grid` with
    :func:`bdia.edm.from_denoiser` this is EDM's ``edm_sampler`` with ``S_churn = 0``.

    ``invert`` is approximate: Heun's method run along the grid in reverse. The first move (clean
    end -> point N-1) is DDIM inversion (the clean end has no model time); every later move
    i+1 -> i is a Heun step evaluated at tau_{i+1} and, at the Euler guess, tau_i; 2N - 1 NFE.
    For an exact inverse use ``bdia.BDIA(gamma, forward="heun")``.
    """

    name: ClassVar[str] = "heun"
    order: ClassVar[int] = 2
    nfe_per_step: ClassVar[int] = 2

    def step(self, ev: Evaluator, state: DDIMState, grid: Grid, i: int) -> DDIMState:
        return DDIMState(heun_step(ev, state.z, ev(state.z, i), grid, i))

    def unstep(self, ev: Evaluator, state: DDIMState, grid: Grid, i: int) -> DDIMState:
        if i == grid.num_steps - 1:  # mirror of the Euler last step: DDIM inversion
            return super().unstep(ev, state, grid, i)
        return DDIMState(heun_transition(ev, state.z, ev(state.z, i + 1), grid, i + 1, i))
