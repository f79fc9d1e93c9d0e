"""Rex: reversible Runge-Kutta solvers (Blasingame & Liu, arXiv 2502.08834) built on McCallum and Foster's
reversible coupling (arXiv 2410.11648); docs/math.md section 10.

A base solver step ``Phi_{i->j}`` (an explicit Runge-Kutta method in Lawson variables, see below)
is made algebraically reversible on a pair (z, zhat) with coupling zeta in (0, 1]. In the Lawson
variable y = z / c (c = alpha for noise prediction, sigma for data prediction), McCallum-Foster's

    y_{i+1}    = zeta y_i + (1 - zeta) yhat_i + Psi_h(yhat_i)
    yhat_{i+1} = yhat_i - Psi_{-h}(y_{i+1})

reads, in the state variable z with r = c_{i+1} / c_i and Phi = the base step in z,

    z_{i+1}    = Phi_{i->i+1}(zhat_i) + r zeta (z_i - zhat_i)
    zhat_{i+1} = z_{i+1} + r (zhat_i - Phi_{i+1->i}(z_{i+1}))
    inverse:  zhat_i = Phi_{i+1->i}(z_{i+1}) + (zhat_{i+1} - z_{i+1}) / r
              z_i    = zhat_i + (z_{i+1} - Phi_{i->i+1}(zhat_i)) / (r zeta)

Each direction spends two base steps (2 x stages NFE) per step. Lawson variables:

- ``variables="noise"``: y = z / alpha against lambda = sigma / alpha, dy/dlambda = eps;
- ``variables="data"``:  y = z / sigma against g = alpha / sigma,       dy/dg = x0_hat.

Euler in either is the DDIM step. RK stages between grid points call the model at an intermediate
noise level through ``Grid.at`` (the grid's own lambda -> model time map).

The clean terminal point N has no model time, so the last step (N-1 -> N) is special: it runs in
noise variables (x / sigma is infinite at sigma_N = 0; r = alpha_N / alpha_{N-1}); its forward base
step is the base where the model can be called at every stage, else a second-order fallback
(:meth:`Rex.last_tableau`); its backward base step is inversion's clean-end start
(:mod:`bdia.solvers.start`). The round trip stays exact.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, ClassVar, NamedTuple

import torch

from ..schedule import Grid
from .base import Evaluator, Solver
from .start import clean_end_move, parse_start, start_name

__all__ = ["Rex", "RexState", "TABLEAUX", "Tableau"]


class Tableau(NamedTuple):
    """An explicit Runge-Kutta method: nodes c, strictly lower-triangular A (one row per stage), weights b."""

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    order: int


TABLEAUX: dict[str, Tableau] = {
    "euler": Tableau((0.0,), ((),), (1.0,), 1),
    "midpoint": Tableau((0.0, 0.5), ((), (0.5,)), (0.0, 1.0), 2),
    "heun": Tableau((0.0, 1.0), ((), (1.0,)), (0.5, 0.5), 2),
    "ralston": Tableau((0.0, 2 / 3), ((), (2 / 3,)), (0.25, 0.75), 2),
    "rk4": Tableau((0.0, 0.5, 0.5, 1.0), ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), (1 / 6, 1 / 3, 1 / 3, 1 / 6), 4),
}

# Second order with its second stage one step *before* the start (c = -1): the slope extrapolated
# linearly from a noisier level. The last step uses it when the model cannot be called inside the
# final interval (VP grids whose last model time is the schedule's first timestep).
EXTRAPOLATED = Tableau((0.0, -1.0), ((), (-1.0,)), (1.5, -0.5), 2)


class _Variables(NamedTuple):
    """A Lawson change of variables: y = z / scale(alpha, sigma) against time(alpha, sigma)."""

    scale: Any  # (alpha, sigma) -> c
    time: Any  # (alpha, sigma) -> the integration variable
    lam_of: Any  # integration variable -> lambda
    slope: Any  # (eps, z, alpha, sigma) -> dy/d(time)


VARIABLES: dict[str, _Variables] = {
    "noise": _Variables(lambda a, s: a, lambda a, s: s / a, lambda u: u, lambda e, z, a, s: e),
    "data": _Variables(lambda a, s: s, lambda a, s: a / s, lambda u: 1.0 / u, lambda e, z, a, s: (z - s * e) / a),
}
# On a flow (velocity) grid the ODE dz/dt = v has no linear part: the base runs in z itself against t,
# with the model's velocity as the slope, whatever ``variables`` says (docs/math.md section 9).
FLOW_VARIABLES = _Variables(
    lambda a, s: 1.0, lambda a, s: s, lambda u: u / (1.0 - u) if u < 1 else math.inf, lambda v, z, a, s: v
)


class RexState(NamedTuple):
    z: torch.Tensor  # the solution chain (y in McCallum-Foster), in the sampler's state variable
    zhat: torch.Tensor  # the auxiliary chain (yhat)


class Rex(Solver[RexState]):
    """Rex: McCallum-Foster reversible coupling of an explicit Runge-Kutta base in Lawson variables.

    Args:
        base: the base solver, ``"euler"`` (order 1), ``"midpoint"``, ``"heun"``, ``"ralston"`` (order 2)
            or ``"rk4"`` (order 4); each step spends 2 x its stages in NFE. Default ``"midpoint"``: the
            most faithful inversion per NFE measured (below).
        zeta: coupling in (0, 1]. Inversion divides the gap between the two chains by r zeta per
            step, which amplifies each step's truncation error (zeta 0.5 diverges); generation
            multiplies it by r zeta, which grows it when zeta is near 1. Default 0.9, measured below.
            Round trips (max error, float32 state, mixture below, N = 10-100): 2.6e-6-3.7e-5 at zeta
            0.9 (BDIA gamma = 1: 1.3e-6-3.5e-6), 4.8e-5-1.2e-3 at zeta 0.999; float64: below 3e-11.
        variables: ``"noise"`` (y = z / alpha against sigma / alpha; default) or ``"data"``
            (y = z / sigma against alpha / sigma, the paper's data prediction). The gap between the
            chains is multiplied by r = c_{i+1} / c_i per step: noise variables damp it in inversion
            and grow it by alpha_N / alpha_0 in generation; data variables the reverse, by about
            sigma_0 / sigma_{N-1} (docs/math.md section 10).
        start: the backward base move of the last step, from the clean end (see BDIA's ``start``);
            default ``"auto"`` (4 sub-steps where the model can be called inside the last interval,
            else the extrapolated slope).
        coupling: ``"lawson"`` (default; the papers' mixing in the Lawson variable, gap weight r zeta)
            or ``"state"`` (mixing in z, gap weight zeta: the gap then shrinks by zeta per generation
            step whatever the schedule). On schedules that reach alpha_0 << 1 (the digits model's
            linear betas: alpha_N / alpha_0 ~ 150) Lawson mixing in noise variables lets the gap grow
            that much in generation; ``coupling="state"`` keeps sampling sane there (docs/math.md
            section 10).

    Measured on the benchmark's analytic mixture (8 components in 4x16x16, SD 1.5's schedule, float64;
    ``bdia.bench.rex``; max error of the inverted noise against the exact ODE's, N = 12 / 25, about
    50 / 100 inversion NFE): midpoint, zeta 0.9, noise variables: 0.022 / 0.0042 (diffusers' leading
    spacing), 0.0086 / 0.0035 (Karras grid); zeta 0.999: 0.038 / 0.0039 and 0.0076 / 0.0035, but its
    samples at N = 25 are 0.32 and 0.085 off against zeta 0.9's 0.0082 and 0.012 (the chains' gap grows
    in generation when zeta is near 1); zeta 0.5 diverges in inversion. Data variables invert far from
    the ODE (0.74-53) but sample well (0.0036 at N = 25 on the Karras grid). The start's sub-steps cut
    the error on trailing spacing (0.241 -> 0.085 at N = 12). The Euler base wants zeta near 1. On the
    digits model Rex inverts on par with BDIA (about 0.2 at 100 NFE) and samples well only with
    ``variables="data", coupling="state"``.

    State: ``RexState(z, zhat)``; generation starts from (noise, noise); inversion from (x0, x0);
    ``Inversion.latents`` is (z_0, zhat_0) and ``Inversion.noise`` is z_0. Order: the base's.
    """

    name: ClassVar[str] = "rex"
    exact_inversion: ClassVar[bool] = True
    State: ClassVar[type] = RexState

    def __init__(
        self,
        base: str = "midpoint",
        zeta: float = 0.9,
        *,
        variables: str = "noise",
        start: str = "auto",
        coupling: str = "lawson",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if base not in TABLEAUX:
            raise ValueError(f"unknown Rex base solver {base!r}; choose one of {sorted(TABLEAUX)}")
        if isinstance(zeta, bool) or not isinstance(zeta, numbers.Real) or not math.isfinite(zeta) or not 0 < zeta <= 1:
            raise ValueError(f"zeta must be a number in (0, 1] (inversion divides by it), got {zeta!r}")
        if variables not in VARIABLES:
            raise ValueError(f"variables must be 'noise' or 'data', got {variables!r}")
        if coupling not in ("lawson", "state"):
            raise ValueError(
                f"coupling must be 'lawson' (mix in the Lawson variable) or 'state' (mix in z), got {coupling!r}"
            )
        self.coupling: str = coupling
        self.base: str = base
        self.zeta: float = float(zeta)
        self.variables: str = variables
        self.start: str = start_name(start)
        self._tableau: Tableau = TABLEAUX[base]
        self._vars: _Variables = VARIABLES[variables]

    @property
    def order(self) -> int:
        return self._tableau.order

    @property
    def nfe_per_step(self) -> int:  # type: ignore[override]
        return 2 * len(self._tableau.c)

    def params(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "zeta": self.zeta,
            "variables": self.variables,
            "start": self.start,
            "coupling": self.coupling,
        }

    def check_grid(self, grid: Grid, inverting: bool) -> None:
        between = any(0.0 < c < 1.0 for c in self._tableau.c)  # (the start skips levels it cannot call)
        if between and grid.time_of is None:
            raise ValueError(
                f"Rex(base={self.base!r}) calls the model between grid points, but this grid has no lambda -> model "
                "time map (e.g. a quantized Karras grid); use base='euler' or 'heun', or a grid from Schedule.grid, "
                "bdia.grids.make_grid, bdia.karras_grid or bdia.karras_grid_for"
            )

    # ----- the base step in Lawson variables --------------------------------------------------------
    def _ratio(self, grid: Grid, i: int) -> float:
        """r = c_{i+1} / c_i; the last step uses alpha (x / sigma is infinite at a clean end)."""
        if grid.prediction == "velocity":
            return 1.0
        if i + 1 == grid.num_steps:
            return float(grid.alphas[i + 1] / grid.alphas[i])
        v = self._vars
        return v.scale(float(grid.alphas[i + 1]), float(grid.sigmas[i + 1])) / v.scale(
            float(grid.alphas[i]), float(grid.sigmas[i])
        )

    def base_step(
        self,
        ev: Evaluator,
        z: torch.Tensor,
        grid: Grid,
        i: int,
        j: int,
        tableau: Tableau | None = None,
        variables: str | None = None,
    ) -> torch.Tensor:
        """Phi_{i->j}(z): one explicit RK step from grid point i to j = i +- 1 in Lawson variables.

        Defaults to this solver's base and variables. A stage at grid point N (no model time) is
        evaluated through ``Grid.at`` like any intermediate noise level.
        """
        tab = tableau or self._tableau
        v = FLOW_VARIABLES if grid.prediction == "velocity" else VARIABLES[variables or self.variables]
        n = grid.num_steps
        src = (float(grid.alphas[i]), float(grid.sigmas[i]))
        dst = (float(grid.alphas[j]), float(grid.sigmas[j]))
        y, u0 = z / v.scale(*src), v.time(*src)
        h = v.time(*dst) - u0
        slopes: list[torch.Tensor] = []
        for c, row in zip(tab.c, tab.a):
            if c == 0.0 and i < n:
                zk, here, eps = z, src, ev(z, i)
            else:
                yk = y + h * sum(a * k for a, k in zip(row, slopes) if a != 0.0) if slopes else y
                if c == 1.0 and j < n:
                    here = dst
                    zk = yk * v.scale(*here)
                    eps = ev(zk, j)
                else:
                    lam = v.lam_of(u0 + c * h) if c < 1.0 else float(grid.lambdas[j])
                    alpha, sigma, _ = grid.at(lam)
                    here = (alpha, sigma)
                    zk = yk * v.scale(*here)
                    eps = ev.at_lambda(zk, lam, min(i, j, n - 1))
            slopes.append(v.slope(eps, zk, *here))
        y_next = y + h * sum(b * k for b, k in zip(tab.b, slopes) if b != 0.0)
        return y_next * v.scale(*dst)

    def last_tableau(self, grid: Grid) -> Tableau:
        """The RK method of the last step, into the clean end, in noise variables (x / sigma is infinite there).

        The base itself where the model can be called at all its stages (lambda_N > 0 in the trained
        range, or no stage at the end point); else the explicit midpoint where its stage can be
        called; else a second-order step whose second stage lies at the noisier level
        2 lambda_{N-1} - lambda_N (:data:`EXTRAPOLATED`); else Euler, the DDIM step, as EDM's Heun ends.
        """
        n = grid.num_steps
        lam_a, lam_b = float(grid.lambdas[n - 1]), float(grid.lambdas[n])
        levels = lambda tab: [lam_a + c * (lam_b - lam_a) for c in tab.c if c != 0]  # noqa: E731
        for tab in (self._tableau, TABLEAUX["midpoint"], EXTRAPOLATED):
            if grid.time_of is not None and all(grid.can_evaluate(lam) for lam in levels(tab)):
                return tab
        return TABLEAUX["euler"]

    def _forward(self, ev: Evaluator, zhat: torch.Tensor, grid: Grid, i: int) -> torch.Tensor:
        if i + 1 == grid.num_steps:  # into the clean end, where the model has no grid time
            return self.base_step(ev, zhat, grid, i, i + 1, self.last_tableau(grid), "noise")
        return self.base_step(ev, zhat, grid, i, i + 1)

    def _backward(self, ev: Evaluator, z: torch.Tensor, grid: Grid, i: int) -> torch.Tensor:
        if i + 1 == grid.num_steps:  # out of the clean end: inversion's start move
            return clean_end_move(ev, z, grid, parse_start(self.start))
        return self.base_step(ev, z, grid, i + 1, i)

    # ----- the step protocol -------------------------------------------------------------------------
    def init(self, ev: Evaluator, noise: torch.Tensor, grid: Grid) -> RexState:
        return RexState(noise, noise)

    def init_inverse(self, ev: Evaluator, x0: torch.Tensor, grid: Grid) -> RexState:
        return RexState(x0, x0)

    def _mix(self, grid: Grid, i: int) -> float:
        """The weight of z - zhat in the step: r zeta (mixing in the Lawson variable) or zeta (in z)."""
        return self.zeta * (self._ratio(grid, i) if self.coupling == "lawson" else 1.0)

    def step(self, ev: Evaluator, state: RexState, grid: Grid, i: int) -> RexState:
        r = self._ratio(grid, i)
        z = self._forward(ev, state.zhat, grid, i) + self._mix(grid, i) * (state.z - state.zhat)
        zhat = z + r * (state.zhat - self._backward(ev, z, grid, i))
        return RexState(z, zhat)

    def unstep(self, ev: Evaluator, state: RexState, grid: Grid, i: int) -> RexState:
        r = self._ratio(grid, i)
        zhat = self._backward(ev, state.z, grid, i) + (state.zhat - state.z) / r
        z = zhat + (state.z - self._forward(ev, zhat, grid, i)) / self._mix(grid, i)
        return RexState(z, zhat)

    def output(self, state: RexState) -> torch.Tensor:
        return state.z
