"""Workload: the most accurate exact inversion at equal NFE on the analytic mixture (docs/math.md section 10).

Rex (each base, a few zetas, both Lawson variables), BDIA gamma = 1 and O-BELM with their clean-end
starts, EDICT, and the approximate DDIM / Heun for scale, on several grid kinds of SD 1.5's schedule
(``bdia.grids.make_grid``). Each method runs at the step counts that put its inversion near each NFE
budget; every row records the NFE actually spent, so methods are compared at equal cost:

- ``fidelity``: inverted noise against the exact ODE's (max and rms);
- ``accuracy``: the sample from noise against the exact ODE's sample from the same noise;
- ``round_trip``: regenerate(invert(x0)) against x0, float64 state.

References chain DOP853 (rtol 1e-11) through each grid kind's end points (bench.analytic.references).
Sizes come from the config's analytic_* fields; quick mode runs QUICK_METHODS on QUICK_GRIDS (full mode:
every method on every grid kind, about 8 minutes on one core); ``cfg.extra`` may set ``rex_budgets``,
``rex_grids`` and ``rex_methods`` (the test uses tiny ones).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from ..grids import make_grid
from ..solvers import NonFiniteError, Solver
from .analytic import build_model, references
from .config import BenchConfig
from .measures import error_stats
from .methods import METHODS

REQUIRES: dict[str, str] = {}  # its digits part is optional: skipped without the digits model

__all__ = ["run", "section", "plots"]

BUDGETS = (10, 20, 30, 50, 70, 100)
GRID_KINDS = ("diffusers", "trailing", "karras", "logsnr")
# quick mode (``bdia bench`` default): the defaults and the main alternatives on two grids (about 2 minutes)
QUICK_METHODS = (
    "ddim",
    "bdia-1",
    "bdia-1-extra",
    "belm",
    "belm-auto",
    "rex-euler",
    "rex",
    "rex-rk4",
    "rex-midpoint-z0.999",
    "rex-midpoint-data",
)
QUICK_GRIDS = ("diffusers", "karras")
# full mode: every start and Rex variant beside the baselines
FULL_METHODS = (
    "ddim",
    "heun",
    "edict",
    "bdia-1",
    "bdia-1-sub4",
    "bdia-1-extra",
    "belm",
    "belm-auto",
    "belm-sub4",
    "belm-sub8",
    "rex-euler",
    "rex",
    "rex-heun",
    "rex-ralston",
    "rex-rk4",
    "rex-midpoint-z0.5",
    "rex-midpoint-z0.8",
    "rex-midpoint-z0.99",
    "rex-midpoint-z0.999",
    "rex-midpoint-ddim",
    "rex-midpoint-data",
    "rex-rk4-data",
    "rex-midpoint-state",
    "rex-midpoint-state-0.9",
    "rex-rk4-state",
    "rex-midpoint-data-state",
)
# the digits model (full mode): the defaults and their main alternatives, diffusers' grid (integer timesteps,
# so the fine Heun reference of bench.digits holds every grid's first point)
DIGITS_METHODS = (
    "ddim",
    "bdia-1",
    "belm",
    "belm-auto",
    "rex",
    "rex-midpoint-z0.999",
    "rex-rk4",
    "rex-midpoint-state",
    "rex-midpoint-data-state",
)
TARGETS = {"fidelity_50": 0.03, "fidelity_100": 0.01, "sample_10": 0.1}


def _steps_for(solver: Solver, budgets) -> list[int]:
    """Step counts whose inversion spends about each budget (at least 2 steps)."""
    per = solver.nfe_per_step
    return sorted({max(2, int(round(b / per))) for b in budgets})


def _measure(solver: Solver, model, grid, x0, ref_noise, noise, ref_sample) -> dict[str, Any]:
    row: dict[str, Any] = {"steps": grid.num_steps}
    try:
        t0 = time.perf_counter()
        inv = solver.invert(model, x0, grid)
        rec = solver.solve(model, inv, grid)
        row["seconds_round_trip"] = time.perf_counter() - t0
        row["nfe_invert"] = inv.nfe
        row["round_trip"] = error_stats(rec.x, x0)
        row["fidelity"] = error_stats(inv.noise, ref_noise)
    except NonFiniteError as e:
        row["diverged"] = str(e)
        row["round_trip"] = row["fidelity"] = {"max": math.inf, "mean": math.inf, "rms": math.inf}
    out = solver.solve(model, noise, grid)
    row["nfe_sample"] = out.nfe
    row["accuracy"] = error_stats(out.x, ref_sample)
    return row


def run(cfg: BenchConfig, log=print) -> dict[str, Any]:
    budgets = tuple(cfg.extra.get("rex_budgets", BUDGETS))
    quick = cfg.mode == "quick"
    kinds = tuple(cfg.extra.get("rex_grids", QUICK_GRIDS if quick else GRID_KINDS))
    keys = tuple(cfg.extra.get("rex_methods", QUICK_METHODS if quick else FULL_METHODS))
    unknown = [k for k in keys if k not in METHODS]
    if unknown:
        raise ValueError(f"unknown rex_methods {unknown}; choose from {list(METHODS)}")
    model = build_model(cfg)
    x0 = model.sample_data(cfg.analytic_batch, generator=torch.Generator().manual_seed(cfg.seed + 11))
    plan = {k: _steps_for(METHODS[k].make(), budgets) for k in keys}
    all_steps = sorted({n for steps in plan.values() for n in steps})
    results: dict[str, Any] = {}
    for kind in kinds:
        assert model.schedule is not None  # build_model's mixture is on a VP schedule
        grids = {n: make_grid(model.schedule, n, kind) for n in all_steps}
        log(f"  rex: {kind} grids, reference ODE solutions for {len(grids)} grids")
        ref_noise, noise, ref_sample = references(model, grids, x0, torch.Generator().manual_seed(cfg.seed + 12))
        for key in keys:
            label, make = METHODS[key].label, METHODS[key].make
            exact = make().exact_inversion
            log(f"  rex: {kind}, {label}")
            rows = [_measure(make(), model, grids[n], x0, ref_noise[n], noise[n], ref_sample[n]) for n in plan[key]]
            results[f"{kind}/{key}"] = {"grid": kind, "method": key, "label": label, "exact": exact, "rows": rows}
    digits = run_digits(cfg, budgets, log) if cfg.extra.get("rex_digits", not quick) else None
    return {
        "digits": digits,
        "description": (
            f"Gaussian mixture, {cfg.analytic_components} components in {tuple(cfg.analytic_shape)}, "
            f"batch {cfg.analytic_batch}, SD 1.5 schedule; grids {', '.join(kinds)}; "
            "errors against DOP853 (rtol 1e-11); float64 state"
        ),
        "budgets": list(budgets),
        "grids": list(kinds),
        "results": results,
        "targets": targets(results, budgets),
    }


def run_digits(cfg: BenchConfig, budgets, log=print) -> dict[str, Any] | None:
    """The same measures on the embedded digits model against bench.digits' fine Heun reference."""
    from .requires import DIGITS, missing_note

    note = missing_note(DIGITS)
    if note:
        log(f"  rex: digits skipped ({note})")
        return None
    try:
        from .. import digits

        model = digits.load_model()
    except (ImportError, FileNotFoundError, AttributeError) as e:
        log(f"  rex: digits skipped ({e})")
        return None
    from .digits import fine_grid
    from .digits import references as heun_references

    gen = torch.Generator().manual_seed(cfg.seed + 13)
    test = digits.load_digits("test")
    idx = torch.randperm(len(test), generator=gen)[: cfg.digits_batch]
    x0 = digits.to_model(test.images[idx]).to(torch.float64)
    eps = digits.eps_model(model, test.labels[idx], guidance=cfg.digits_guidance)
    plan = {k: _steps_for(METHODS[k].make(), budgets) for k in DIGITS_METHODS}
    grids = {n: model.schedule.grid(n) for n in sorted({n for steps in plan.values() for n in steps})}
    fine = fine_grid(model.schedule, grids, cfg.digits_ref_stride)
    log(f"  rex: digits reference (Heun, {fine.num_steps} steps)")
    results: dict[str, Any] = {}
    with torch.no_grad():
        ref_noise, noise, ref_sample = heun_references(eps, fine, grids, x0, gen)
        for key in DIGITS_METHODS:
            label, make = METHODS[key].label, METHODS[key].make
            exact = make().exact_inversion
            log(f"  rex: digits, {label}")
            rows = [_measure(make(), eps, grids[n], x0, ref_noise[n], noise[n], ref_sample[n]) for n in plan[key]]
            results[f"digits/{key}"] = {
                "grid": "diffusers",
                "method": key,
                "label": label,
                "exact": exact,
                "rows": rows,
            }
    return {
        "description": (
            f"embedded digits UNet (float32 weights), {cfg.digits_batch} held-out digits, guidance "
            f"{cfg.digits_guidance:g}, diffusers' grid; reference: Heun on {fine.num_steps} steps"
        ),
        "results": results,
    }


def best_within(results: dict[str, Any], budget: int, measure: str, nfe_key: str, exact_only: bool = True):
    """(error max, result key, row) of the lowest max error among rows with NFE <= budget, or None."""
    best = None
    for key, res in results.items():
        if exact_only and not res["exact"]:
            continue
        for row in res["rows"]:
            err = row[measure]["max"]
            if row.get(nfe_key, math.inf) <= budget and math.isfinite(err) and (best is None or err < best[0]):
                best = (err, key, row)
    return best


def targets(results: dict[str, Any], budgets) -> dict[str, Any]:
    """The issue's targets: the best exact method's numbers within each budget, met or not."""
    out: dict[str, Any] = {}
    for name, budget, measure, nfe_key in (
        ("fidelity_50", 50, "fidelity", "nfe_invert"),
        ("fidelity_100", 100, "fidelity", "nfe_invert"),
        ("sample_10", 10, "accuracy", "nfe_sample"),
    ):
        best = best_within(results, budget, measure, nfe_key)
        out[name] = (
            None
            if best is None
            else {
                "target": TARGETS[name],
                "error": best[0],
                "method": results[best[1]]["label"],
                "grid": results[best[1]]["grid"],
                "steps": best[2]["steps"],
                "nfe": best[2][nfe_key],
                "met": best[0] <= TARGETS[name],
            }
        )
    rts = [row["round_trip"]["max"] for res in results.values() if res["exact"] for row in res["rows"]]
    out["round_trip_worst"] = max(rts) if rts else None
    return out


def _fmt(x: float | None) -> str:
    return "-" if x is None else ("inf" if not math.isfinite(x) else f"{x:.3g}")


def section(results: dict[str, Any]) -> str:
    """Markdown: targets, per-grid tables of best error within each NFE budget, a recommendation table."""
    res, budgets = results["results"], results["budgets"]
    lines = [
        "## Exact inversion at equal NFE: Rex, clean-end starts, grids",
        "",
        results["description"],
        "",
        "Errors are the max over all elements of the batch: one sample near a boundary between mixture "
        "components can dominate a row (docs/math.md section 10).",
        "",
    ]
    t = results["targets"]
    lines += ["| target | best exact method (grid, steps, NFE) | error (max) | met |", "|---|---|---|---|"]
    names = {
        "fidelity_50": "inverted noise <= 0.03 at <= 50 inversion NFE",
        "fidelity_100": "inverted noise <= 0.01 at <= 100 inversion NFE",
        "sample_10": "sample error <= 0.1 at <= 10 NFE",
    }
    for key, what in names.items():
        v = t.get(key)
        if v is None:
            lines.append(f"| {what} | (no run within budget) | - | - |")
        else:
            lines.append(
                f"| {what} | {v['method']} ({v['grid']}, N={v['steps']}, {v['nfe']} NFE) | "
                f"{_fmt(v['error'])} | {'yes' if v['met'] else 'no'} |"
            )
    lines += [
        f"| round trips <= 1e-10 (float64) | worst over all exact runs | {_fmt(t.get('round_trip_worst'))} | "
        f"{'yes' if (t.get('round_trip_worst') or 0) <= 1e-10 else 'no'} |",
        "",
    ]
    sets = [(f"Grid: {kind}", {k: v for k, v in res.items() if v["grid"] == kind}) for kind in results["grids"]]
    if results.get("digits"):
        sets.append(("Digits model (" + results["digits"]["description"] + ")", results["digits"]["results"]))
    for title, chosen in sets:
        lines += [
            f"### {title}",
            "",
            "Best max error with at most B NFE (inverted noise, inversion NFE / sample, sampling NFE).",
            "",
            "| method | "
            + " | ".join(f"noise B={b}" for b in budgets)
            + " | "
            + " | ".join(f"sample B={b}" for b in budgets)
            + " | round trip |",
            "|---|" + "---|" * (2 * len(budgets) + 1),
        ]
        for key, r in chosen.items():
            one = {key: r}
            fid = [best_within(one, b, "fidelity", "nfe_invert", False) for b in budgets]
            acc = [best_within(one, b, "accuracy", "nfe_sample", False) for b in budgets]
            rt = max(row["round_trip"]["max"] for row in r["rows"])
            lines.append(
                f"| {r['label']} | "
                + " | ".join(_fmt(f and f[0]) for f in fid)
                + " | "
                + " | ".join(_fmt(a and a[0]) for a in acc)
                + f" | {_fmt(rt) if r['exact'] else '(approx.)'} |"
            )
        lines.append("")
    lines += [
        "### Recommendation: which exact method and grid for which budget",
        "",
        "| NFE budget | most faithful inversion (noise max error) | most accurate sampling (sample max error) |",
        "|---|---|---|",
    ]
    for b in budgets:
        cells = []
        for measure, nfe_key in (("fidelity", "nfe_invert"), ("accuracy", "nfe_sample")):
            best = best_within(res, b, measure, nfe_key)
            cells.append(
                "-"
                if best is None
                else f"{res[best[1]]['label']}, {res[best[1]]['grid']} grid, N={best[2]['steps']} ({_fmt(best[0])})"
            )
        lines.append(f"| {b} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def plots(results: dict[str, Any], out_dir: Path, overwrite: bool) -> list[str]:
    """Pareto plots per grid kind: inverted-noise error and sample error (max) against NFE, every method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from ..io.files import atomic_path

    names = []
    for kind in results["grids"]:
        fig, axes = plt.subplots(1, 2, figsize=(16, 5.5))
        cmap = plt.get_cmap("tab20")
        assert isinstance(cmap, ListedColormap)  # tab20 is a list of 20 colours
        colors: Any = cmap.colors  # matplotlib types it as any ArrayLike; here a list of RGB tuples
        for idx, r in enumerate(v for v in results["results"].values() if v["grid"] == kind):
            style = dict(color=colors[idx % 20], linestyle="-" if r["exact"] else ":", marker="o^sv"[idx % 4])
            for ax, (measure, nfe_key) in zip(axes, (("fidelity", "nfe_invert"), ("accuracy", "nfe_sample"))):
                pts = [
                    (row[nfe_key], row[measure]["max"])
                    for row in r["rows"]
                    if math.isfinite(row[measure]["max"]) and row[measure]["max"] > 0
                ]
                if pts:
                    ax.loglog(*zip(*sorted(pts)), label=r["label"], **style)
        for ax, title in zip(axes, ("inverted noise vs exact ODE (max)", "sample vs exact ODE (max)")):
            ax.set_xlabel("NFE")
            ax.set_title(title)
            ax.grid(True, which="both", alpha=0.3)
        axes[0].axhline(0.03, color="k", lw=0.6)
        axes[0].axhline(0.01, color="k", lw=0.6, ls="--")
        axes[1].axhline(0.1, color="k", lw=0.6)
        handles, labels = axes[1].get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=7, loc="center right")
        fig.suptitle(f"Exact inversion at equal NFE, {kind} grid (dotted: approximate methods)")
        fig.tight_layout(rect=(0, 0, 0.8, 1))
        name = f"rex_pareto_{kind}.png"
        with atomic_path(Path(out_dir) / name, overwrite) as tmp:
            fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
        plt.close(fig)
        names.append(name)
    return names
