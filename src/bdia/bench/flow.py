"""Flow workload: a Gaussian mixture under the flow-matching path, SD3 and Flux grids, exact vs approximate inversions.

docs/math.md section 9. The model is :class:`~bdia.analytic.FlowGaussianMixture` (exact velocity), on
two grid families: SD3's (``shift = 3``) and Flux's (``linspace(1, 1/N, N)`` shifted by mu = 1.15, a
1024 x 1024 image). Every grid runs from t = 1 to t = 0, so one DOP853 integration each way gives the
exact ODE's noise for the data and the exact sample for a noise, shared by all grids.

Methods are compared at equal model evaluations of the inversion (NFE budget B): bdia's solvers
(DDIM inversion, BDIA, O-BELM, EDICT; exact except DDIM) on a B-step grid (EDICT B/2, 2 NFE a step)
and the approximate flow inversions of :func:`bdia.flow.integrate_flow` along the same kind of grid:
plain Euler (B steps), RF-Solver (Wang et al. 2024; B/2 steps) and FireFlow (Deng et al. 2024; B - 1
steps, one NFE a step plus one). Measured for each: round trip (invert then regenerate with the same
method), fidelity (inverted noise vs the exact ODE's) and accuracy (sample from a given noise vs the
exact ODE's). Quick mode: small space and batch; sizes come from ``cfg.extra["flow"]``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..analytic import FlowGaussianMixture
from ..flow import FlowSchedule, calculate_shift, flux_sigmas, integrate_flow
from ..schedule import Grid
from ..solvers import BDIA, DDIM, EDICT, NonFiniteError, Solver
from .config import BenchConfig
from .measures import error_stats

REQUIRES: dict[str, str] = {}

SD3_SCHEDULE = FlowSchedule.from_config({"shift": 3.0, "num_train_timesteps": 1000})
FLUX_SCHEDULE = FlowSchedule.from_config({"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15})
FLUX_MU = calculate_shift(4096)  # a 1024 x 1024 image: 64 x 64 packed latent tokens
GRIDS: dict[str, tuple[str, Callable[[int], Grid]]] = {  # family -> (description, steps -> grid)
    "sd3": ("SD3 (shift 3)", lambda n: SD3_SCHEDULE.grid(n)),
    "flux": (
        f"Flux (linspace(1, 1/N, N), mu {FLUX_MU:.2f})",
        lambda n: FLUX_SCHEDULE.grid(n, sigmas=flux_sigmas(n), mu=FLUX_MU),
    ),
}
SIZES = {  # mode -> defaults; cfg.extra["flow"] overrides single keys
    "quick": {"shape": (4, 8, 8), "components": 8, "std": 0.3, "batch": 4, "budgets": (10, 20, 50, 100)},
    "full": {"shape": (16, 32, 32), "components": 8, "std": 0.3, "batch": 8, "budgets": (10, 20, 50, 100)},
}
HEADLINE = 50


@dataclass(frozen=True)
class FlowMethod:
    key: str
    label: str
    exact: bool
    steps: Callable[[int], int]  # NFE budget of the inversion -> steps of the grid
    solver: Callable[[], Solver] | None = None  # a bdia solver, or
    integrator: str | None = None  # a bdia.flow.integrate_flow method


METHODS = [
    FlowMethod("bdia-1", "BDIA gamma=1", True, lambda b: b, solver=lambda: BDIA(1.0)),
    FlowMethod("belm", "O-BELM (BDIA gamma='belm')", True, lambda b: b, solver=lambda: BDIA("belm")),
    FlowMethod("edict", "EDICT p=0.93", True, lambda b: b // 2, solver=lambda: EDICT(0.93)),
    FlowMethod("ddim", "DDIM inversion", False, lambda b: b, solver=lambda: DDIM()),
    FlowMethod("euler", "Euler inversion", False, lambda b: b, integrator="euler"),
    FlowMethod("rf-solver", "RF-Solver", False, lambda b: b // 2, integrator="rf-solver"),
    FlowMethod("fireflow", "FireFlow", False, lambda b: b - 1, integrator="fireflow"),
]


def _sizes(cfg: BenchConfig) -> dict[str, Any]:
    return {**SIZES["full" if cfg.mode == "full" else "quick"], **cfg.extra.get("flow", {})}


def build_model(cfg: BenchConfig, sizes: dict[str, Any]) -> FlowGaussianMixture:
    gen = torch.Generator().manual_seed(cfg.seed)
    k = sizes["components"]
    means = torch.randn((k, *sizes["shape"]), generator=gen, dtype=torch.float64)
    stds = sizes["std"] * (0.5 + torch.rand(k, generator=gen, dtype=torch.float64))
    return FlowGaussianMixture(means, stds)


def _measure(
    m: FlowMethod,
    model: FlowGaussianMixture,
    grid_of: Callable[[int], Grid],
    budget: int,
    x0: torch.Tensor,
    ref_noise: torch.Tensor,
    noise: torch.Tensor,
    ref_sample: torch.Tensor,
) -> dict[str, Any]:
    n = m.steps(budget)
    row: dict[str, Any] = {"steps": n}
    t0 = time.perf_counter()
    try:
        if m.solver is not None:
            solver, grid = m.solver(), grid_of(n)
            inv = solver.invert(model, x0, grid)
            rec = solver.solve(model, inv, grid)
            sample = solver.solve(model, noise, grid)
            inverted, row["nfe_invert"], row["nfe_sample"] = inv.noise, inv.nfe, sample.nfe
            rec_x, out = rec.x, sample.x
        else:
            assert m.integrator is not None  # a method has a solver or an integrator
            down = grid_of(n).sigmas.tolist()  # the same t values, terminal 0 included
            inverted, row["nfe_invert"] = integrate_flow(model, x0, down[::-1], m.integrator)
            rec_x, _ = integrate_flow(model, inverted, down, m.integrator)
            out, row["nfe_sample"] = integrate_flow(model, noise, down, m.integrator)
    except NonFiniteError as e:
        row["diverged"] = str(e)
        return row
    row["seconds"] = time.perf_counter() - t0
    row["round_trip"] = error_stats(rec_x, x0)
    row["fidelity"] = error_stats(inverted, ref_noise)
    row["accuracy"] = error_stats(out, ref_sample)
    return row


def run(cfg: BenchConfig, log=print) -> dict[str, Any]:
    sizes = _sizes(cfg)
    model = build_model(cfg, sizes)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    x0 = model.sample_data(sizes["batch"], generator=gen)
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    log("  flow: reference ODE solutions (DOP853, rtol 1e-11), t = 0 -> 1 and 1 -> 0")
    ref_noise, ref_sample = model.flow(x0, 0.0, 1.0), model.flow(noise, 1.0, 0.0)
    results: dict[str, Any] = {}
    for family, (title, grid_of) in GRIDS.items():
        by_method: dict[str, Any] = {}
        for m in METHODS:
            log(f"  flow ({family} grid): {m.label}")
            by_method[m.key] = {
                "label": m.label,
                "exact": m.exact,
                "by_nfe": {
                    str(b): _measure(m, model, grid_of, b, x0, ref_noise, noise, ref_sample) for b in sizes["budgets"]
                },
            }
        results[family] = {"grid": title, "methods": by_method}
    return {
        "description": (
            f"Gaussian mixture under the flow-matching path, {sizes['components']} components in "
            f"{tuple(sizes['shape'])}, exact velocity; t from 1 to 0; batch {sizes['batch']}; "
            "reference: DOP853 rtol 1e-11; methods at equal inversion NFE"
        ),
        "budgets": list(sizes["budgets"]),
        "results": results,
    }


def _fmt(row: dict[str, Any], key: str) -> str:
    if "diverged" in row:
        return "diverged"
    return f"{row[key]['rms']:.2e}"


def section(results: dict[str, Any]) -> str:
    budgets = results["budgets"]
    lines = ["## Flow matching (SD3 / Flux-type models)", "", results["description"] + ".", ""]
    for family in results["results"].values():
        res = family["methods"]
        for key, title in (
            ("fidelity", "inverted noise vs the exact ODE's (RMS)"),
            ("round_trip", "round trip, invert then regenerate with the same method (RMS)"),
            ("accuracy", "sample from a given noise vs the exact ODE's (RMS)"),
        ):
            lines += [
                f"### {family['grid']} grid: {title}",
                "",
                "| method | " + " | ".join(f"{b} NFE" for b in budgets) + " |",
                "|---|" + "---|" * len(budgets),
            ]
            for m in res.values():
                cells = [f"{_fmt(m['by_nfe'][str(b)], key)} ({m['by_nfe'][str(b)]['steps']} st)" for b in budgets]
                lines.append(f"| {m['label']} | " + " | ".join(cells) + " |")
            lines.append("")
        if str(HEADLINE) in res["bdia-1"]["by_nfe"]:
            lines += [_target_line(res), ""]
    return "\n".join(lines)


def _target_line(res: dict[str, Any]) -> str:
    bdia = res["bdia-1"]["by_nfe"][str(HEADLINE)]
    others = {k: res[k]["by_nfe"][str(HEADLINE)] for k in ("euler", "rf-solver", "fireflow")}
    if "diverged" in bdia:
        return f"Target at {HEADLINE} NFE: not met (BDIA gamma=1 diverged)."
    beaten = [k for k, r in others.items() if "diverged" in r or bdia["fidelity"]["rms"] < r["fidelity"]["rms"]]
    return (
        f"Target (BDIA gamma=1's inverted noise closer to the exact ODE's than Euler inversion, RF-Solver and "
        f"FireFlow at {HEADLINE} NFE): {'met' if len(beaten) == len(others) else 'not met'}; BDIA "
        f"{bdia['fidelity']['rms']:.2e} vs "
        + ", ".join(f"{res[k]['label']} {_fmt(r, 'fidelity')}" for k, r in others.items())
        + "."
    )


def plots(results: dict[str, Any], out_dir: Path, overwrite: bool) -> list[str]:
    """One figure per grid family: fidelity, round trip and accuracy against the inversion's NFE budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import save_figure

    names = []
    for family, fam in results["results"].items():
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
        for k, m in enumerate(fam["methods"].values()):
            rows = [(int(b), r) for b, r in m["by_nfe"].items() if "diverged" not in r]
            for ax, key in zip(axes, ("fidelity", "round_trip", "accuracy")):
                xs = [b for b, _ in rows]
                ys = [max(r[key]["rms"], 1e-17) for _, r in rows]
                ax.loglog(
                    xs,
                    ys,
                    "-" if m["exact"] else "--",
                    marker="o",
                    ms=3,
                    color=f"C{k}",
                    label=m["label"] if key == "fidelity" else None,
                )
        for ax, ylabel in zip(
            axes, ("inverted noise vs exact ODE (rms)", "round trip (rms)", "sample vs exact ODE (rms)")
        ):
            ax.set_xlabel("NFE budget of the inversion")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
        fig.suptitle(f"Flow matching, {fam['grid']} grid (solid: exact inversion, dashed: approximate)", fontsize=10)
        fig.legend(loc="lower center", ncol=4, fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.12, 1, 1))
        name = f"flow_{family}.png"
        save_figure(fig, Path(out_dir) / name, overwrite)
        names.append(name)
    return names
