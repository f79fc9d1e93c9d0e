"""Sampling grids by name: ``make_grid(schedule, N, kind)`` for a discrete VP model (docs/math.md section 2).

A discrete model accepts fractional timesteps, so the grid's noise levels are free. Kinds:

- ``"diffusers"``: the schedule's own ``timestep_spacing`` (what diffusers' DDIMScheduler does);
- ``"leading"``, ``"trailing"``, ``"linspace"``: that diffusers spacing instead of the configured one;
- ``"karras"``: Karras et al.'s rho = 7 spacing of EDM sigma over the schedule's whole range, ending clean
  (:func:`bdia.karras_grid_for`);
- ``"logsnr"``: uniform in log(sigma/alpha) over the same range, ending clean (DPM-Solver's spacing; Karras
  spacing in the limit rho -> infinity).

Every kind calls the model between its points through ``Grid.at`` (multi-stage solvers, clean-end starts).
"""

from __future__ import annotations

import math

import torch

from .edm import karras_grid_for, vp_grid_from_sigmas
from .schedule import TIMESTEP_SPACINGS, Grid, Schedule

__all__ = ["GRID_KINDS", "DEFAULT_GRID_KIND", "make_grid"]

GRID_KINDS = ("diffusers", *TIMESTEP_SPACINGS, "karras", "logsnr")
# The grid kind the Editor/CLI should default to. Measured (bdia.bench.rex, docs/math.md section 10): on the
# Karras grid BDIA gamma = 1 inverts 14x closer to the exact ODE at 20 NFE than on diffusers' leading spacing
# (0.0225 vs 0.321) and samples 14x better (0.0139 vs 0.193); Rex midpoint reaches 0.0098 at 47 NFE there.
DEFAULT_GRID_KIND = "karras"


def make_grid(schedule: Schedule, num_steps: int, kind: str = "diffusers") -> Grid:
    """The ``num_steps``-step grid of ``kind`` (see the module docstring) for a discrete VP ``schedule``."""
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a bdia.Schedule, got {type(schedule).__name__}")
    if kind == "diffusers":
        return schedule.grid(num_steps)
    if kind in TIMESTEP_SPACINGS:
        return Schedule.from_config({**schedule.config, "timestep_spacing": kind}).grid(num_steps)
    if kind == "karras":
        return karras_grid_for(schedule, num_steps)
    if kind == "logsnr":
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
            raise ValueError(f"num_steps must be an int of at least 2, got {num_steps!r}")
        lo, hi = schedule.lambda_range
        s = torch.logspace(math.log10(hi), math.log10(lo), num_steps, dtype=torch.float64)
        s[0], s[-1] = hi, lo  # exact ends despite the power's rounding
        return vp_grid_from_sigmas(schedule, s)
    raise ValueError(f"unknown grid kind {kind!r}; choose one of {', '.join(GRID_KINDS)}")
