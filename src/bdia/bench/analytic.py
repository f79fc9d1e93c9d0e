"""Workload 1: a Gaussian mixture in a latent-sized space, with exact eps and a DOP853 reference ODE.

The schedule is Stable Diffusion 1.5's (scaled_linear 0.00085..0.012, leading spacing, steps_offset 1,
set_alpha_to_one false, so the clean end has sigma > 0 and the reference inversion is defined).
References are computed once for all grids by chaining the exact flow through their end points:

- inversion: x0 is carried from the clean end up through each grid's first noise level in turn,
  giving every grid's exact noise in one integration;
- sampling: a standard normal noise at the noisiest grid's first point is carried down through the
  other grids' first points to the clean end; every grid samples from its own point of that one
  exact trajectory, so all grids share one exact sample.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..analytic import GaussianMixture
from ..schedule import Schedule
from .common import measure_method
from .config import BenchConfig
from .methods import get_methods
from .report import fmt, reference_tables, table

REQUIRES: dict[str, str] = {}  # scipy and matplotlib: every run needs them (runner.REQUIRED)

SD15_SCHEDULE = {
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
}


def build_model(cfg: BenchConfig) -> GaussianMixture:
    """K isotropic components with standard normal means; stds spread around ``analytic_std``."""
    gen = torch.Generator().manual_seed(cfg.seed)
    k = cfg.analytic_components
    means = torch.randn((k, *cfg.analytic_shape), generator=gen, dtype=torch.float64)
    stds = cfg.analytic_std * (0.5 + torch.rand(k, generator=gen, dtype=torch.float64))
    return GaussianMixture(means, stds, schedule=Schedule.from_config(SD15_SCHEDULE))


def references(model: GaussianMixture, grids: dict, x0: torch.Tensor, gen: torch.Generator):
    """(exact noise of x0 per grid, noise per grid, the one exact sample) by chained exact flows."""
    lam_end = float(next(iter(grids.values())).lambdas[-1])
    alpha_end = float(next(iter(grids.values())).alphas[-1])
    starts = sorted(grids, key=lambda n: float(grids[n].lambdas[0]))  # ascending noise level
    ref_noise, xbar, lam = {}, x0.to(torch.float64) / alpha_end, lam_end
    for n in starts:
        lam_n = float(grids[n].lambdas[0])
        xbar, lam = model.flow(xbar, lam, lam_n), lam_n
        ref_noise[n] = xbar * float(grids[n].alphas[0])
    top = starts[-1]
    xbar = torch.randn(x0.shape, generator=gen, dtype=torch.float64) / float(grids[top].alphas[0])
    lam, noise = float(grids[top].lambdas[0]), {}
    for n in reversed(starts):
        lam_n = float(grids[n].lambdas[0])
        xbar, lam = model.flow(xbar, lam, lam_n), lam_n
        noise[n] = xbar * float(grids[n].alphas[0])
    sample = model.flow(xbar, lam, lam_end) * alpha_end
    return ref_noise, noise, {n: sample for n in grids}


def _measure_all(cfg: BenchConfig, model: GaussianMixture, batch: int, dtypes, gen: torch.Generator, log, what: str):
    x0 = model.sample_data(batch, generator=gen)
    assert model.schedule is not None  # the benchmark's mixture is on a VP schedule (build_model)
    grids = {n: model.schedule.grid(n) for n in cfg.analytic_steps}
    log(f"  {what}: reference ODE solutions (DOP853, rtol 1e-11) for {len(grids)} grids")
    ref_noise, noise, ref_sample = references(model, grids, x0, gen)
    results: dict[str, Any] = {}
    for dtype in dtypes:
        for m in get_methods(cfg.methods):
            log(f"  {what}: {m.label}, {dtype} state")
            results[f"{m.key}/{dtype}"] = {
                "method": m.key,
                **measure_method(m, dtype, model, grids, x0, ref_noise, noise, ref_sample),
            }
    return results


def run(cfg: BenchConfig, log=print) -> dict[str, Any]:
    model = build_model(cfg)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    results = _measure_all(cfg, model, cfg.analytic_batch, cfg.dtypes, gen, log, "analytic")
    check = None
    if cfg.analytic_check_dim:
        # A second mixture, small and with one std: how much the comparison depends on the mixture drawn.
        g = torch.Generator().manual_seed(cfg.seed + 5)
        means = torch.randn((8, cfg.analytic_check_dim), generator=g, dtype=torch.float64)
        small = GaussianMixture(means, 0.3, schedule=model.schedule)
        check = {
            "description": f"8 components in {cfg.analytic_check_dim} dimensions with standard normal means, "
            "std 0.3, 32 samples",
            "steps": list(cfg.analytic_steps),
            "results": _measure_all(cfg, small, 32, ("float64",), g, log, "analytic (small)"),
        }
    return {
        "description": (
            f"Gaussian mixture, {cfg.analytic_components} components in {tuple(cfg.analytic_shape)}, "
            f"exact eps, SD 1.5 schedule (leading, set_alpha_to_one=False); batch {cfg.analytic_batch}; "
            "reference: DOP853 rtol 1e-11"
        ),
        "steps": list(cfg.analytic_steps),
        "dtypes": list(cfg.dtypes),
        "results": results,
        "check": check,
    }


PLOT = "analytic_error_vs_nfe.png"


def section(results: dict[str, Any]) -> str:
    out = [
        "## Workload 1: Gaussian mixture, exact ODE",
        results["description"] + ".",
        f"![analytic: error against NFE]({PLOT})",
        reference_tables(results, results["dtypes"]),
    ]
    check = results.get("check")
    if check:
        rows = [
            [res["label"]]
            + [
                f"{fmt(res['by_steps'][str(n)]['fidelity']['max'])} / {fmt(res['by_steps'][str(n)]['accuracy']['rms'])}"
                for n in check["steps"]
            ]
            for res in check["results"].values()
        ]
        out.append(
            f"**Cross-check on a second mixture** ({check['description']}; float64 state): largest distance "
            "of the inverted noise from the exact ODE's / rms sampling error, per N.\n\n"
            + table(["Method"] + [f"N={n}" for n in check["steps"]], rows)
        )
    return "\n\n".join(out)


def plots(results: dict[str, Any], out_dir: Path, overwrite: bool) -> list[str]:
    from .plots import error_vs_nfe

    error_vs_nfe(results, "Gaussian mixture, exact ODE reference", out_dir / PLOT, overwrite)
    return [PLOT]
