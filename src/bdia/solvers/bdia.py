"""BDIA: bi-directional integration approximation (Zhang, Lewis & Kleijn, ECCV 2024, arXiv 2307.10829).

docs/math.md sections 4 and 6. With one model evaluation e = eps(z_i, tau_i) per step, a forward move
F_{i->i+1}(z_i) and a backward move B_{i->i-1}(z_i) (the DDIM transition reusing e):

    generation:  z_{i+1} = gamma_i * (z_{i-1} - B(z_i)) + F(z_i)
    inversion:   z_{i-1} = (z_{i+1} - F(z_i)) / gamma_i + B(z_i)

gamma = 0 is the plain forward solver; gamma = 1 is time-symmetric. gamma="belm" picks the per-step
values that reproduce BELM's second-order O-BELM sampler (Wang et al., NeurIPS 2024).
Stability: inversion amplifies the oscillating mode by at least 1/gamma_i per step, so small gamma
makes the round trip lose digits; generation damps it.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, ClassVar, Sequence

import torch

from ..schedule import Grid
from .base import Callback, InversionPrecisionWarning, Solver, _Evaluator, amplification, ddim_transition
from .onestep import get_backward_integrator, get_integrator

# Warn when prod(1/gamma) times the state dtype's machine epsilon exceeds this relative error
# (float32: gamma 0.9 at 50 steps stays below it; 0.8 does not. float64: gamma 0.5 beyond ~40 steps).
AMPLIFIED_ROUNDING_WARN = 1e-4


def bdia_step(z_prev: torch.Tensor, fwd: torch.Tensor, bwd: torch.Tensor, gamma: float) -> torch.Tensor:
    """Generation: z_{i+1} = gamma (z_{i-1} - B(z_i)) + F(z_i), given F(z_i) = ``fwd`` and B(z_i) = ``bwd``."""
    return gamma * (z_prev - bwd) + fwd


def bdia_unstep(z_next: torch.Tensor, fwd: torch.Tensor, bwd: torch.Tensor, gamma: float) -> torch.Tensor:
    """Inversion, the exact inverse of :func:`bdia_step`: z_{i-1} = (z_{i+1} - F(z_i)) / gamma + B(z_i)."""
    return (z_next - fwd) / gamma + bwd


def belm_gammas(grid: Grid) -> list[float]:
    """gamma_i = (alpha_{i+1} / alpha_{i-1}) (h_{i+1} / h_i)^2, i = 1..N-1: BDIA-DDIM becomes O-BELM."""
    al, lam = grid.alphas.tolist(), grid.lambdas.tolist()
    out = []
    for i in range(1, grid.num_steps):
        h_next, h_prev = lam[i] - lam[i + 1], lam[i - 1] - lam[i]
        if h_prev <= 0:
            raise ValueError(f"gamma='belm' needs distinct noise levels, but grid points {i - 1} and {i} coincide")
        out.append((al[i + 1] / al[i - 1]) * (h_next / h_prev) ** 2)
    return out


class BDIA(Solver):
    """BDIA over a one-step solver: ``forward="euler"`` is BDIA-DDIM, ``forward="heun"`` BDIA-EDM.

    Args:
        gamma: a number in [0, 1]; a sequence of N-1 non-negative values, one per BDIA step
            (steps i = 1..N-1; step 0 is the plain forward solver); or ``"belm"`` for O-BELM.
            Inversion needs every gamma_i > 0. Default 1.0: it keeps the inverted noise closest to
            the true ODE's (docs/math.md section 4) and loses the fewest digits.
        forward: the forward integrator F, ``"euler"`` (DDIM) or ``"heun"`` (EDM's Heun, +1 NFE).
        backward: the backward integrator B; only ``"euler"``, the DDIM step back to point i-1
            reusing the slope already evaluated at z_i (no NFE). On a Karras grid
            (:func:`bdia.edm.karras_grid`) ``BDIA(forward="heun")`` is the paper's BDIA-EDM.

    State: the pair (z_{i-1}, z_i); ``Inversion.latents`` is (z_0, z_1). Generation from noise
    starts with one plain forward step. Inversion starts with one DDIM-inversion step from the
    clean end (any z_{N-1} is exact; this one keeps the noise close to the ODE's).
    """

    name: ClassVar[str] = "bdia"
    exact_inversion: ClassVar[bool] = True
    num_latents: ClassVar[int] = 2

    def __init__(self, gamma: float | Sequence[float] | str = 1.0, *, forward: str = "euler", backward: str = "euler",
                 **kwargs: Any):
        super().__init__(**kwargs)
        self._integrator = get_integrator(forward)
        self._backward = get_backward_integrator(backward)
        self.forward, self.backward = forward, backward
        self.gamma = _validate_gamma(gamma)

    @property
    def order(self) -> int:  # type: ignore[override]
        # With forward="heun" the Euler backward move's local error, gamma * h^2 / 2 * xbar'', enters
        # every step, so BDIA-EDM is first order for any gamma > 0 (measured in benchmarks/edm_section.py).
        if self.forward == "heun":
            return 2 if self.gamma == 0.0 else 1
        return 2 if self.gamma == "belm" else 1

    @property
    def nfe_per_step(self) -> int:  # type: ignore[override]
        return self._integrator.nfe_per_step

    def params(self) -> dict[str, Any]:
        gamma = list(self.gamma) if isinstance(self.gamma, tuple) else self.gamma  # JSON-stable
        return {"gamma": gamma, "forward": self.forward}

    def gammas(self, grid: Grid) -> list[float]:
        """gamma_i for the BDIA steps i = 1..N-1 of ``grid``."""
        n = grid.num_steps
        if self.gamma == "belm":
            return belm_gammas(grid)
        if isinstance(self.gamma, float):
            return [self.gamma] * (n - 1)
        if len(self.gamma) != n - 1:
            raise ValueError(
                f"gamma has {len(self.gamma)} values but a {n}-step grid has {n - 1} BDIA steps (i = 1..{n - 1}); "
                f"give {n - 1} values"
            )
        return list(self.gamma)

    def _check_grid_params(self, grid: Grid, inverting: bool) -> None:
        gammas = self.gammas(grid)
        if not inverting:
            return
        zero = [i + 1 for i, g in enumerate(gammas) if g == 0]
        if zero:
            hint = (" (O-BELM's gamma is 0 where the grid has a zero-length step, e.g. linspace spacing "
                    "ending on timestep 0 with set_alpha_to_one=False)") if self.gamma == "belm" else ""
            raise ValueError(
                f"gamma is 0 at step(s) {zero}: BDIA with gamma = 0 is plain DDIM and cannot be inverted "
                f"exactly{hint}; use gamma > 0 (e.g. 1.0) or bdia.DDIM() for approximate inversion"
            )
        amp = amplification(gammas)
        expected = amp * torch.finfo(self.state_dtype).eps
        if expected > AMPLIFIED_ROUNDING_WARN:
            fix = "gamma closer to 1 or fewer steps"
            if self.state_dtype != torch.float64:
                fix += ", or state_dtype=torch.float64"
            warnings.warn(
                f"BDIA inversion with these gammas amplifies rounding error by at least {amp:.3g}x over "
                f"{grid.num_steps} steps; with {self.state_dtype} state expect a relative round-trip error "
                f"around {expected:.1e}. Use {fix}",
                InversionPrecisionWarning,
                stacklevel=4,
            )

    def _moves(self, ev: _Evaluator, z: torch.Tensor, grid: Grid, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(F_{i->i+1}(z_i), B_{i->i-1}(z_i)) from one evaluation at (z_i, tau_i)."""
        eps = ev(z, i)
        return self._integrator.step(ev, z, eps, grid, i), self._backward.step(ev, z, eps, grid, i)

    def _init_from_noise(self, ev: _Evaluator, noise: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, ...]:
        z1 = self._integrator.step(ev, noise, ev(noise, 0), grid, 0)
        return noise, self._check_state(z1, 1, "sampling")

    def _generate(self, ev: _Evaluator, latents: tuple[torch.Tensor, ...], grid: Grid,
                  callback: Callback | None) -> torch.Tensor:
        gammas = self.gammas(grid)
        z_prev, z = latents
        n = grid.num_steps
        for i in range(1, n):
            fwd, bwd = self._moves(ev, z, grid, i)
            z_prev, z = z, self._check_state(bdia_step(z_prev, fwd, bwd, gammas[i - 1]), i + 1, "sampling")
            if callback is not None:
                callback(i, n - 1, (z_prev, z))
        return z

    def _invert(self, ev: _Evaluator, x0: torch.Tensor, grid: Grid, callback: Callback | None) -> tuple[torch.Tensor, ...]:
        gammas = self.gammas(grid)
        n = grid.num_steps
        z_next = x0  # z_N
        z = self._check_state(ddim_transition(x0, ev(x0, n - 1), grid, n, n - 1), n - 1, "inversion")  # z_{N-1}
        if callback is not None:
            callback(1, n, (z, z_next))
        for i in range(n - 1, 0, -1):
            fwd, bwd = self._moves(ev, z, grid, i)
            z_next, z = z, self._check_state(bdia_unstep(z_next, fwd, bwd, gammas[i - 1]), i - 1, "inversion")
            if callback is not None:
                callback(n - i + 1, n, (z, z_next))
        return z, z_next


def _validate_gamma(gamma: Any) -> float | tuple[float, ...] | str:
    if isinstance(gamma, str):
        if gamma.lower() != "belm":
            raise ValueError(f"gamma must be a number in [0, 1], a sequence of numbers, or 'belm'; got {gamma!r}")
        return "belm"
    if isinstance(gamma, numbers.Real) and not isinstance(gamma, bool):
        g = float(gamma)
        if not math.isfinite(g) or not 0.0 <= g <= 1.0:
            raise ValueError(
                f"gamma must be in [0, 1] (1.0 is time-symmetric, 0 is DDIM), got {gamma!r}; "
                "for per-step values give a sequence"
            )
        return g
    if isinstance(gamma, torch.Tensor):
        gamma = gamma.detach().cpu().flatten().tolist()
    try:
        values = tuple(float(g) for g in gamma)
    except TypeError:
        raise TypeError(f"gamma must be a number, a sequence of numbers or 'belm', got {type(gamma).__name__}") from None
    for k, g in enumerate(values):
        if not math.isfinite(g) or g < 0:
            raise ValueError(f"gamma[{k}] = {g} is not a finite non-negative number")
    if not values:
        raise ValueError("gamma sequence is empty; give one value per BDIA step (N-1 values)")
    return values
