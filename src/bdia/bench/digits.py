"""Workload 2: the embedded digits model (a trained class-conditional UNet, ``bdia.digits``).

No closed form here: the reference solutions come from EDM's Heun sampler (second order) on a fine
grid holding every ``digits_ref_stride``-th training timestep and every point of the coarse grids,
so each coarse grid's end points lie on it. As in workload 1, one fine inversion of the held-out
digits gives every grid's reference noise, and one fine sampling run from a common noise gives
every grid's starting noise (its state at that grid's first point) and the one shared sample.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..schedule import Grid, Schedule
from ..solvers import Heun
from ..solvers.ddim import DDIMState
from .common import measure_method
from .config import BenchConfig
from .methods import get_methods
from .report import reference_tables
from .requires import DIGITS

REQUIRES = DIGITS


def fine_grid(schedule: Schedule, grids: dict[int, Grid], stride: int) -> Grid:
    """Every ``stride``-th training timestep between the coarse grids' ends, plus all coarse points."""
    coarse = {int(t) for g in grids.values() for t in g.timesteps.tolist()}
    top, bottom = max(coarse), min(coarse)
    ts = sorted(coarse | set(range(top, bottom - 1, -stride)), reverse=True)
    abar = torch.cat([schedule.alphas_cumprod[ts], torch.tensor([schedule.final_alphas_cumprod], dtype=torch.float64)])
    return Grid.from_alphas_cumprod(torch.tensor(ts), abar)


def references(eps, fine: Grid, grids: dict[int, Grid], x0: torch.Tensor, gen: torch.Generator):
    """(reference noise of x0 per grid, noise per grid, the shared reference sample) by Heun on ``fine``."""
    fine_t = [int(t) for t in fine.timesteps.tolist()]

    def keep(into: dict[int, torch.Tensor]):
        """A callback that stores the state wherever the fine run passes a coarse grid's first point."""

        def callback(index: int, sigma: float, state: DDIMState) -> None:
            for n, g in grids.items():
                if index < len(fine_t) and int(g.timesteps[0]) == fine_t[index]:
                    into[n] = state.z.clone()

        return callback

    solver = Heun()
    ref_noise: dict[int, torch.Tensor] = {}
    solver.invert(eps, x0, fine, callback=keep(ref_noise))
    start = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    noise = {n: start for n, g in grids.items() if int(g.timesteps[0]) == fine_t[0]}
    sample = solver.sample(eps, start, fine, callback=keep(noise))
    return ref_noise, noise, {n: sample for n in grids}


def run(cfg: BenchConfig, log=print) -> dict[str, Any]:
    try:
        from .. import digits

        model = digits.load_model()
    except (ImportError, FileNotFoundError, AttributeError) as e:
        log(f"  digits: skipped ({e})")
        return {"skipped": f"the embedded digits model is not available: {e}"}
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    test = digits.load_digits("test")
    idx = torch.randperm(len(test), generator=gen)[: cfg.digits_batch]
    x0 = digits.to_model(test.images[idx]).to(torch.float64)
    labels = test.labels[idx]
    eps = digits.eps_model(model, labels, guidance=cfg.digits_guidance)
    schedule = model.schedule
    grids = {n: schedule.grid(n) for n in cfg.digits_steps}
    fine = fine_grid(schedule, grids, cfg.digits_ref_stride)
    log(f"  digits: reference solutions (Heun, {fine.num_steps} steps)")
    with torch.no_grad():
        ref_noise, noise, ref_sample = references(eps, fine, grids, x0, gen)
        results: dict[str, Any] = {}
        for dtype in cfg.dtypes:
            for m in get_methods(cfg.methods):
                log(f"  digits: {m.label}, {dtype} state")
                results[f"{m.key}/{dtype}"] = {
                    "method": m.key,
                    **measure_method(m, dtype, eps, grids, x0, ref_noise, noise, ref_sample),
                }
    return {
        "description": (
            f"embedded digits UNet (float32 weights), {cfg.digits_batch} held-out digits with their "
            f"labels, guidance {cfg.digits_guidance:g}, schedule {schedule.config.get('beta_schedule')} / "
            f"{schedule.timestep_spacing}; reference: Heun on a {fine.num_steps}-step grid"
        ),
        "steps": list(cfg.digits_steps),
        "dtypes": list(cfg.dtypes),
        "reference_steps": fine.num_steps,
        "results": results,
    }


PLOT = "digits_error_vs_nfe.png"


def section(results: dict[str, Any]) -> str:
    return "\n\n".join(
        [
            "## Workload 2: the embedded digits model",
            results["description"] + ".",
            f"![digits: error against NFE]({PLOT})",
            reference_tables(results, results["dtypes"]),
        ]
    )


def plots(results: dict[str, Any], out_dir: Path, overwrite: bool) -> list[str]:
    from .plots import error_vs_nfe

    error_vs_nfe(results, "digits model, fine-grid reference", out_dir / PLOT, overwrite)
    return [PLOT]
