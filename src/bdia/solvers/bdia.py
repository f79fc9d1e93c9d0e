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
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import torch

from ..schedule import Grid
from .base import Evaluator, Solver, warn_amplified_rounding
from .onestep import get_backward_integrator, get_integrator
from .start import clean_end_move, parse_start, start_name


def bdia_step(z_prev: torch.Tensor, fwd: torch.Tensor, bwd: torch.Tensor, gamma: float) -> torch.Tensor:
    """Generation: z_{i+1} = gamma (z_{i-1} - B(z_i)) + F(z_i), given F(z_i) = ``fwd`` and B(z_i) = ``bwd``."""
    return gamma * (z_prev - bwd) + fwd


def bdia_unstep(z_next: torch.Tensor, fwd: torch.Tensor, bwd: torch.Tensor, gamma: float) -> torch.Tensor:
    """Inversion, the exact inverse of :func:`bdia_step`: z_{i-1} = (z_{i+1} - F(z_i)) / gamma + B(z_i)."""
    return (z_next - fwd) / gamma + bwd


def belm_gammas(grid: Grid) -> list[float]:
    """gamma_i = (alpha_{i+1} / alpha_{i-1}) (h_{i+1} / h_i)^2, i = 1..N-1: BDIA-DDIM becomes O-BELM.

    A flow grid starting at pure noise (alpha_0 = 0, docs/math.md section 9) has gamma_1 -> 0 there,
    which no inversion can undo; that one step takes the time-symmetric gamma_1 = 1 instead (a single
    step's O(h^2) local error keeps the sampler second order).
    """
    al, lam = grid.alphas.tolist(), grid.lambdas.tolist()
    out = []
    for i in range(1, grid.num_steps):
        if al[i - 1] == 0.0:
            out.append(1.0)
            continue
        h_next, h_prev = lam[i] - lam[i + 1], lam[i - 1] - lam[i]
        if h_prev <= 0:
            raise ValueError(f"gamma='belm' needs distinct noise levels, but grid points {i - 1} and {i} coincide")
        out.append((al[i + 1] / al[i - 1]) * (h_next / h_prev) ** 2)
    return out


class BDIAState(NamedTuple):
    z_prev: torch.Tensor  # z_{i-1}
    z: torch.Tensor  # z_i, the state's grid position i


class BDIA(Solver[BDIAState]):
    """BDIA over a one-step solver: ``forward="euler"`` is BDIA-DDIM, ``forward="heun"`` BDIA-EDM.

    Args:
        gamma: a number in [0, 1]; a sequence of N-1 values in [0, 1], one per BDIA step
            (steps i = 1..N-1; step 0 is the plain forward solver); or ``"belm"`` for O-BELM.
            Inversion needs every gamma_i > 0. Default 1.0: it keeps the inverted noise closest to
            the true ODE's (docs/math.md section 4) and loses the fewest digits.
        forward: the forward integrator F, ``"euler"`` (DDIM) or ``"heun"`` (EDM's Heun, +1 NFE).
        backward: the backward integrator B; only ``"euler"``, the DDIM step back to point i-1
            reusing the slope already evaluated at z_i (no NFE). On a Karras grid
            (:func:`bdia.edm.karras_grid`) ``BDIA(forward="heun")`` is the paper's BDIA-EDM.

        start: inversion's first move, clean end -> z_{N-1} (any z_{N-1} keeps the round trip exact;
            the start decides how close the inverted noise stays to the ODE's): ``"ddim"``, one
            DDIM-inversion step (1 NFE); ``"substeps:K"``, K DDIM-inversion moves between the two
            noise levels (up to K NFE); ``"extrapolated"`` (2 NFE, the slope extrapolated linearly to
            the interval's middle; works on Karras VP grids, where sub-steps cannot); ``"auto"``:
            ``"substeps:4"`` where the model can be called inside the interval, else ``"extrapolated"``.
            Extra NFE are counted in ``Inversion.nfe``; see :mod:`bdia.solvers.start`. Default
            ``"ddim"``: measured (docs/math.md section 4), ``"auto"`` cuts O-BELM's inverted-noise error
            4-15x on the analytic mixture (0.197 -> 0.0125 at N = 50, leading spacing) and helps on the
            digits model at N = 20 (0.62 -> 0.39), but on the digits model at N = 50-100 it is 1.2-7x
            worse (0.173 -> 1.18 at N = 100): its sub-steps call the trained model at t ~ 1-6, where
            its predictions are poor, and O-BELM's inverse amplifies that by 1/gamma_i.

    State: ``BDIAState(z_prev, z)`` = (z_{i-1}, z_i); ``Inversion.latents`` is (z_0, z_1). Generation
    from noise starts with one plain forward step (``warmup = 1``). Inversion starts with the
    ``start`` move from the clean end.
    """

    name: ClassVar[str] = "bdia"
    exact_inversion: ClassVar[bool] = True
    State: ClassVar[type] = BDIAState
    warmup: ClassVar[int] = 1

    def __init__(
        self,
        gamma: float | Sequence[float] | str = 1.0,
        *,
        forward: str = "euler",
        backward: str = "euler",
        start: str = "ddim",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.gamma = _validate_gamma(gamma)
        self.start = start_name(start)
        self._integrator = get_integrator(forward)
        self._backward = get_backward_integrator(backward)
        self.forward, self.backward = forward, backward
        self._gamma_cache: tuple[Grid, list[float]] | None = None

    @property
    def order(self) -> int:
        """The order on every grid: the forward integrator's when gamma = 0, else 1 (see :meth:`order_on`)."""
        return self._integrator.order if self.gamma == 0.0 else 1

    def order_on(self, grid: Grid) -> int:
        """Order of generation on ``grid``, as the order test measures it on an analytic model.

        gamma = 0 is the forward integrator alone. Otherwise the backward Euler move's local error
        gamma_i h^2/2 xbar'' enters each step and cancels against the forward move's only when the
        two are mirror images: BDIA-Euler with gamma = 1 (time-symmetric, in z and so on VP grids too,
        where the cancellation leaves (alpha_{i-1} - alpha_{i+1}) h^2 = O(h^3)) and O-BELM's gammas are
        second order; any other gamma, and any gamma > 0 over Heun, is first order.
        """
        gammas = self.gammas(grid)
        if all(g == 0.0 for g in gammas):
            return self._integrator.order
        if self.forward == "euler" and (self.gamma == "belm" or all(g == 1.0 for g in gammas)):
            return 2
        return 1

    @property
    def nfe_per_step(self) -> int:  # type: ignore[override]
        return self._integrator.nfe_per_step

    def params(self) -> dict[str, Any]:
        gamma = list(self.gamma) if isinstance(self.gamma, tuple) else self.gamma  # JSON-stable
        return {"gamma": gamma, "forward": self.forward, "start": self.start}

    def gammas(self, grid: Grid) -> list[float]:
        """gamma_i for the BDIA steps i = 1..N-1 of ``grid``."""
        if self._gamma_cache is not None and self._gamma_cache[0] is grid:
            return self._gamma_cache[1]
        n, gamma = grid.num_steps, self.gamma
        if isinstance(gamma, str):  # "belm", the one name _validate_gamma lets through
            gammas = belm_gammas(grid)
        elif isinstance(gamma, float):
            gammas = [gamma] * (n - 1)
        elif len(gamma) != n - 1:
            raise ValueError(
                f"gamma has {len(gamma)} values but a {n}-step grid has {n - 1} BDIA steps (i = 1..{n - 1}); "
                f"give {n - 1} values"
            )
        else:
            gammas = list(gamma)
        self._gamma_cache = (grid, gammas)
        return gammas

    def check_grid(self, grid: Grid, inverting: bool) -> None:
        gammas = self.gammas(grid)
        if not inverting:
            return
        zero = [i + 1 for i, g in enumerate(gammas) if g == 0]
        if zero:
            hint = (
                (
                    " (O-BELM's gamma is 0 where the grid has a zero-length step, e.g. linspace spacing "
                    "ending on timestep 0 with set_alpha_to_one=False)"
                )
                if self.gamma == "belm"
                else ""
            )
            raise ValueError(
                f"gamma is 0 at step(s) {zero}: BDIA with gamma = 0 is plain DDIM and cannot be inverted "
                f"exactly{hint}; use gamma > 0 (e.g. 1.0) or bdia.DDIM() for approximate inversion"
            )
        warn_amplified_rounding("BDIA", gammas, grid.num_steps, self.state_dtype, "gamma closer to 1 or fewer steps")

    # ----- the step protocol -------------------------------------------------------------------------
    def moves(self, ev: Evaluator, z: torch.Tensor, grid: Grid, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(F_{i->i+1}(z_i), B_{i->i-1}(z_i)) from one evaluation at (z_i, tau_i)."""
        eps = ev(z, i)
        return self._integrator.step(ev, z, eps, grid, i), self._backward.step(ev, z, eps, grid, i)

    def init(self, ev: Evaluator, noise: torch.Tensor, grid: Grid) -> BDIAState:
        return BDIAState(noise, self._integrator.step(ev, noise, ev(noise, 0), grid, 0))

    def init_inverse(self, ev: Evaluator, x0: torch.Tensor, grid: Grid) -> BDIAState:
        return BDIAState(clean_end_move(ev, x0, grid, parse_start(self.start)), x0)

    def step(self, ev: Evaluator, state: BDIAState, grid: Grid, i: int) -> BDIAState:
        fwd, bwd = self.moves(ev, state.z, grid, i)
        return BDIAState(state.z, bdia_step(state.z_prev, fwd, bwd, self.gammas(grid)[i - 1]))

    def unstep(self, ev: Evaluator, state: BDIAState, grid: Grid, i: int) -> BDIAState:
        fwd, bwd = self.moves(ev, state.z_prev, grid, i)  # state is (z_i, z_{i+1})
        return BDIAState(bdia_unstep(state.z, fwd, bwd, self.gammas(grid)[i - 1]), state.z_prev)

    def output(self, state: BDIAState) -> torch.Tensor:
        return state.z


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
        raise TypeError(
            f"gamma must be a number, a sequence of numbers or 'belm', got {type(gamma).__name__}"
        ) from None
    for k, g in enumerate(values):
        if not math.isfinite(g) or not 0.0 <= g <= 1.0:
            raise ValueError(f"gamma[{k}] = {g} must be in [0, 1], as a single gamma must (inversion divides by it)")
    if not values:
        raise ValueError("gamma sequence is empty; give one value per BDIA step (N-1 values)")
    return values
