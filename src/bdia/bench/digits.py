"""Workload 2: the embedded digits model (a trained class-conditional UNet, ``bdia.digits``).

No closed form here: the reference solutions come from EDM's Heun sampler (second order) on a fine
grid holding every ``digits_ref_stride``-th training timestep and every point of the coarse grids,
so each coarse grid's end points lie on it. As in workload 1, one fine inversion of the held-out
digits gives every grid's reference noise, and one fine sampling run from a common noise gives
every grid's starting noise (its state at that grid's first point) and the one shared sample.
"""

from __future__ import annotations

from typing import Any

import torch

from ..schedule import Grid, Schedule
from ..solvers import Heun
from .common import measure_method
from .config import BenchConfig
from .methods import get_methods


def fine_grid(schedule: Schedule, grids: dict[int, Grid], stride: int) -> Grid:
    """Every ``stride``-th training timestep between the coarse grids' ends, plus all coarse points."""
    coarse = {int(t) for g in grids.values() for t in g.timesteps.tolist()}
    top, bottom = max(coarse), min(coarse)
    ts = sorted(coarse | set(range(top, bottom - 1, -stride)), reverse=True)
    abar = torch.cat([schedule.alphas_cumprod[ts], torch.tensor([schedule.final_alphas_cumprod], dtype=torch.float64)])
    return Grid.from_alphas_cumprod(torch.tensor(ts), abar)


def references(eps, fine: Grid, grids: dict[int, Grid], x0: torch.Tensor, gen: torch.Generator):
    """(reference noise of x0 per grid, noise per grid, the shared reference sample) by Heun on ``fine``."""
    want = {int(g.timesteps[0]): n for n, g in grids.items()}
    fine_t = [int(t) for t in fine.timesteps.tolist()]
    ref_noise: dict[int, torch.Tensor] = {}

    def keep_inv(index: int, sigma: float, state: tuple) -> None:
        if index < len(fine_t) and fine_t[index] in want:
            for n, g in grids.items():
                if int(g.timesteps[0]) == fine_t[index]:
                    ref_noise[n] = state.z.clone()

    solver = Heun()
    solver.invert(eps, x0, fine, callback=keep_inv)
    start = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    noise = {n: start for n, g in grids.items() if int(g.timesteps[0]) == fine_t[0]}

    def keep_sample(index: int, sigma: float, state: tuple) -> None:
        if index < len(fine_t) and fine_t[index] in want:
            for n, g in grids.items():
                if int(g.timesteps[0]) == fine_t[index]:
                    noise[n] = state.z.clone()

    sample = solver.sample(eps, start, fine, callback=keep_sample)
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
                results[f"{m.key}/{dtype}"] = {"method": m.key, **measure_method(
                    m, dtype, eps, grids, x0, ref_noise, noise, ref_sample)}
    return {
        "description": (f"embedded digits UNet (float32 weights), {cfg.digits_batch} held-out digits with their "
                        f"labels, guidance {cfg.digits_guidance:g}, schedule {schedule.config.get('beta_schedule')} / "
                        f"{schedule.timestep_spacing}; reference: Heun on a {fine.num_steps}-step grid"),
        "steps": list(cfg.digits_steps),
        "reference_steps": fine.num_steps,
        "results": results,
    }
