"""The clean-end start of an exact inversion: an approximate ODE move from the clean end N to point N-1.

BDIA's and Rex's inversions begin at the clean end, where the model has no time (docs/math.md
sections 3 and 4). Any z_{N-1} keeps their round trip exact, so the start only decides how close
the inverted noise lands to the exact ODE's. ``"ddim"`` is one DDIM-inversion step: the model is
called with the clean state at tau_{N-1}, which over-estimates the slope near the clean end (eps
grows from about 0 there). ``"substeps:K"`` splits [lambda_N, lambda_{N-1}] into K equal pieces in
lambda and takes one DDIM-inversion move over each, calling the model at each piece's upper end:
K NFE, and the error of the move shrinks like 1/K. Levels below the model's trained range are
skipped (on a Karras VP grid lambda_{N-1} already is the lowest level, so K collapses to 1).
``"extrapolated"`` (2 NFE) calls the model with the clean state at lambda_{N-1} and at the noisier
level lambda_N + 2h (h = lambda_{N-1} - lambda_N, always inside the trained range) and extrapolates
the slope linearly to the interval's middle, 1.5 e_1 - 0.5 e_2: exact when eps grows linearly from
the clean end, and usable where sub-steps are not (Karras VP grids). ``"auto"``: ``"substeps:4"``
where the model can be called inside the interval, else ``"extrapolated"``.
"""

from __future__ import annotations

import re

import torch

from ..schedule import Grid
from .base import Evaluator, ddim_transition, move_coefficients

__all__ = ["parse_start", "start_name", "clean_end_move", "lawson_euler", "EXTRAPOLATED", "AUTO"]

EXTRAPOLATED, AUTO = 0, -1  # parse_start's codes for the "extrapolated" and "auto" starts
AUTO_SUBSTEPS = 4

_SUBSTEPS = re.compile(r"substeps:(\d+)")


def parse_start(start: str) -> int:
    """The code of a start name.

    ``"ddim"`` -> 1, ``"substeps:K"`` -> K (1..1000), ``"extrapolated"`` / ``"auto"`` -> their codes.
    """
    if isinstance(start, str):
        if start == "ddim":
            return 1
        if start == "extrapolated":
            return EXTRAPOLATED
        if start == "auto":
            return AUTO
        m = _SUBSTEPS.fullmatch(start)
        if m and 1 <= int(m.group(1)) <= 1000:
            return int(m.group(1))
    raise ValueError(
        f"start must be 'ddim', 'auto', 'extrapolated' or 'substeps:K' with K in 1..1000 (e.g. 'substeps:4'), "
        f"got {start!r}"
    )


def start_name(start: str) -> str:
    """The canonical name of a start (``"substeps:1"`` is ``"ddim"``)."""
    k = parse_start(start)
    return {EXTRAPOLATED: "extrapolated", AUTO: "auto", 1: "ddim"}.get(k, f"substeps:{k}")


def lawson_euler(
    z: torch.Tensor, pred: torch.Tensor, src: tuple[float, float], dst: tuple[float, float], velocity: bool = False
) -> torch.Tensor:
    """The DDIM move between any two (alpha, sigma) levels, a z + b pred.

    See :func:`~bdia.solvers.base.move_coefficients`.
    """
    a, b = move_coefficients(src, dst, velocity)
    return a * z + b * pred


def clean_end_move(ev: Evaluator, z_end: torch.Tensor, grid: Grid, substeps: int) -> torch.Tensor:
    """z_{N-1} from the clean state z_N: ``substeps`` DDIM-inversion moves, or the codes EXTRAPOLATED / AUTO."""
    n = grid.num_steps
    velocity = grid.prediction == "velocity"
    lam_end, lam_top = float(grid.lambdas[n]), float(grid.lambdas[n - 1])
    if substeps == AUTO:
        levels = [lam_end + (lam_top - lam_end) * k / AUTO_SUBSTEPS for k in range(1, AUTO_SUBSTEPS)]
        substeps = AUTO_SUBSTEPS if any(grid.can_evaluate(lam) for lam in levels) else EXTRAPOLATED
    if substeps == EXTRAPOLATED and grid.can_evaluate(2 * lam_top - lam_end) and lam_top > lam_end:
        e_top = ev(z_end, n - 1)
        e_far = ev.at_lambda(z_end, 2 * lam_top - lam_end, n - 1)
        return ddim_transition(z_end, 1.5 * e_top - 0.5 * e_far, grid, n, n - 1)
    if substeps in (1, EXTRAPOLATED):
        return ddim_transition(z_end, ev(z_end, n - 1), grid, n, n - 1)
    levels = [lam_end + (lam_top - lam_end) * k / substeps for k in range(1, substeps)]
    z, here = z_end, (float(grid.alphas[n]), float(grid.sigmas[n]))
    for lam in levels:
        if not grid.can_evaluate(lam):
            continue
        alpha, sigma, _ = grid.at(lam)
        z, here = lawson_euler(z, ev.at_lambda(z, lam, n - 1), here, (alpha, sigma), velocity), (alpha, sigma)
    top = (float(grid.alphas[n - 1]), float(grid.sigmas[n - 1]))
    return lawson_euler(z, ev(z, n - 1), here, top, velocity)
