"""The markdown report: the document around the workloads' sections (headline, targets, settings),
the tables the workloads share, and the number formatting, all from results.json's data.

Each workload writes its own section (``section(results)`` in its module); :func:`render` puts them
in registry order between the cross-workload summaries and the settings.
"""

from __future__ import annotations

import json
import math
from typing import Any, cast

TIMING_NOTE = (
    "(timing: varies from run to run and machine to machine; every other number is deterministic for the seed)"
)


def fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "diverged"
        if x == 0:
            return "0"
        if abs(x) < 1e-3 or abs(x) >= 1e4:
            return f"{x:.{digits}e}"
        return f"{x:.{digits + 1}g}"
    return str(x)


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _row(workload: dict, method: str, dtype: str, steps: int) -> dict | None:
    res = workload.get("results", {}).get(f"{method}/{dtype}")
    return None if res is None else res["by_steps"].get(str(steps))


def headline(results: dict[str, Any]) -> str:
    """One row per method: the analytic workload at the headline steps, and the UNet's time ratio."""
    cfg = results["config"]
    wl = results["workloads"].get("analytic", {})
    unet = results["workloads"].get("unet", {})
    n = cfg["headline_steps"] if cfg["headline_steps"] in wl.get("steps", []) else max(wl.get("steps", [0]) or [0])
    ratios = {k: v["cpu_ratio_to_ddim"] for k, v in unet.get("invert_reconstruct", {}).items()}
    rows = []
    for method in cfg["methods"]:
        r64, r32 = _row(wl, method, "float64", n), _row(wl, method, "float32", n)
        if r64 is None:
            continue
        res = wl["results"][f"{method}/float64"]
        rows.append(
            [
                res["label"],
                r64.get("nfe_invert", 0) + r64.get("nfe_reconstruct", 0),
                r64["round_trip"]["max"],
                r32["round_trip"]["max"] if r32 else None,
                r64["fidelity"]["max"],
                r64["fidelity"]["rms"],
                r64["accuracy"]["rms"],
                order_cell(res["order"]),
                f"{ratios[method]:.3f}x" if method in ratios else "n/a",
            ]
        )
    header = [
        "Method",
        "NFE inv+rec",
        "round trip max (f64)",
        "round trip max (f32)",
        "noise error max",
        "noise error rms",
        "sample error rms",
        "sampling order (declared)",
        "time vs DDIM (UNet, CPU)",
    ]
    return (
        f"Gaussian mixture in {tuple(cfg['analytic_shape'])} with exact eps, SD 1.5 schedule, {n} steps; "
        "errors against the exact ODE. Time: invert + reconstruct on the SD 1.5 UNet workload, ratio of median "
        f"CPU times to DDIM's {TIMING_NOTE.split(':')[0]}). Sampling order: measured from the errors over N, "
        "the solver's declared `order_on(grid)` in brackets.\n\n" + table(header, rows)
    )


def order_cell(order: dict[str, Any], measure: str = "accuracy") -> str:
    """The measured order of ``measure`` with the solver's declared order (``order_on(grid)``) in brackets."""
    return f"{fmt(order[measure])} ({fmt(order.get('declared'))})"


def reference_tables(wl: dict[str, Any], dtypes: list[str]) -> str:
    """Round trip, fidelity and accuracy per method and N, and the cost, of a workload with a reference ODE."""
    out = []
    for measure, title in (
        ("round_trip", "Round-trip error max |regenerate(invert(x0)) - x0|"),
        ("fidelity", "Inversion fidelity: inverted noise vs the reference's, max (rms)"),
        ("accuracy", "Sampling accuracy: sample vs the reference from the same noise, max (rms)"),
    ):
        for dtype in dtypes if measure == "round_trip" else dtypes[:1]:
            header = (
                ["Method"] + [f"N={n}" for n in wl["steps"]] + (["order (declared)"] if measure != "round_trip" else [])
            )
            rows = []
            for key, res in wl["results"].items():
                if not key.endswith("/" + dtype):
                    continue
                cells: list[Any] = [res["label"]]
                for n in wl["steps"]:
                    e = res["by_steps"][str(n)][measure]
                    if measure == "round_trip":
                        cells.append(e["max"])
                    else:
                        cells.append(f"{fmt(e['max'])} ({fmt(e['rms'])})")
                if measure != "round_trip":
                    cells.append(order_cell(res["order"], measure))
                rows.append(cells)
            out.append(f"**{title}, {dtype} state**\n\n" + table(header, rows))
    nfe_rows = []
    for key, res in wl["results"].items():
        if key.endswith("/" + dtypes[0]):
            r = res["by_steps"][str(wl["steps"][-1])]
            nfe_rows.append(
                [
                    res["label"],
                    r.get("nfe_invert"),
                    r.get("nfe_reconstruct"),
                    r.get("nfe_sample"),
                    r.get("amplification"),
                    r.get("seconds_invert_reconstruct"),
                ]
            )
    out.append(
        f"**Cost at N={wl['steps'][-1]}** (amplification: prod 1/gamma_i, the lower bound on how much "
        f"inversion amplifies rounding; seconds {TIMING_NOTE}). Measured order: minus the slope of log rms "
        "error against log N; declared, in brackets: the solver's `order_on(grid)` for these grids (for the "
        "fidelity of inversion the declaration is generation's order, a guide only).\n\n"
        + table(["Method", "NFE invert", "NFE reconstruct", "NFE sample", "amplification", "seconds inv+rec"], nfe_rows)
    )
    return "\n\n".join(out)


def _fidelity_vs_ddim(wl: dict[str, Any], dtype: str = "float64") -> tuple[str, list[tuple[str, int, float]]]:
    """Where BDIA-family inverted noise is further from the reference's than DDIM inversion's."""
    worse: list[tuple[str, int, float]] = []
    ddim = wl["results"].get(f"ddim/{dtype}")
    if ddim is None:
        return "", worse
    rows = []
    for key, res in wl["results"].items():
        m = key.split("/")[0]
        if not key.endswith("/" + dtype) or m == "ddim":
            continue
        cells: list[Any] = [res["label"]]
        for n in wl["steps"]:
            ratio = res["by_steps"][str(n)]["fidelity"]["rms"] / ddim["by_steps"][str(n)]["fidelity"]["rms"]
            cells.append(f"{fmt(ratio)}x")
            if ratio > 1 and (m.startswith("bdia") or m == "belm"):
                worse.append((res["label"], n, ratio))
        rows.append(cells)
    return table(["Method"] + [f"N={n}" for n in wl["steps"]], rows), worse


def _growing(wl: dict[str, Any], keys: list[str]) -> list[str]:
    """Labels of ``keys`` whose inverted noise moves away from the reference's between the two largest N."""
    if len(wl["steps"]) < 2:
        return []
    a, b = wl["steps"][-2], wl["steps"][-1]
    return [
        wl["results"][k]["label"]
        for k in keys
        if k in wl["results"]
        and wl["results"][k]["by_steps"][str(b)]["fidelity"]["rms"]
        > wl["results"][k]["by_steps"][str(a)]["fidelity"]["rms"]
    ]


def _growth(wl: dict[str, Any]) -> str:
    """Which methods' inverted noise moves away from the exact ODE's as N grows (between the two largest N)."""
    if len(wl["steps"]) < 2:
        return ""
    a, b = wl["steps"][-2], wl["steps"][-1]
    grow = _growing(wl, [k for k in wl["results"] if k.endswith("/float64")])
    if not grow:
        return f"Every method's inverted noise gets closer to the exact ODE's from N={a} to N={b}."
    return f"Inverted noise moving away from the exact ODE's as N grows from {a} to {b}: {', '.join(grow)}."


def targets(results: dict[str, Any]) -> str:
    wls = results["workloads"]
    lines = []
    unet = wls.get("unet", {})
    if "invert_reconstruct" in unet:
        ir = unet["invert_reconstruct"]
        s = unet["setup"]
        b, e = ir["bdia-1"]["ratio_to_ddim"], ir["edict"]["ratio_to_ddim"]
        bmin, emin = (min(ir[k]["times"]) / min(ir["ddim"]["times"]) for k in ("bdia-1", "edict"))
        bcpu, ecpu = ir["bdia-1"]["cpu_ratio_to_ddim"], ir["edict"]["cpu_ratio_to_ddim"]
        ar = unet["solver_arithmetic"]
        f = unet["forward_seconds"]
        steps = 2 * s["steps"]
        pred = (ir["bdia-1"]["nfe"] * f + steps * ar["bdia-1/float64"]["seconds_per_step"]) / (
            ir["ddim"]["nfe"] * f + steps * ar["ddim/float64"]["seconds_per_step"]
        )
        lines.append(
            f"- **BDIA invert + reconstruct time <= 1.05x DDIM's** (UNet workload: width x{s['width']:g}, "
            f"{s['parameters'] / 1e6:.0f}M parameters, latent {tuple(s['latent_shape'])}, {s['steps']} steps, "
            f"{s['repeats']} interleaved repeats): **{bcpu:.3f}x** by median CPU time, {bmin:.3f}x by fastest "
            f"wall time, {b:.3f}x by median wall time ({'met' if max(bcpu, bmin) <= 1.05 else 'NOT met'}); "
            f"predicted from the separately timed solver arithmetic and UNet forward (NFE x forward + steps x "
            f"arithmetic): {pred:.4f}x. EDICT: **{ecpu:.2f}x** CPU, {emin:.2f}x fastest wall, {e:.2f}x median "
            "wall (expected about 2x: twice the NFE). Other processes share this machine's cores and stretch "
            "single wall-time runs (see the repeat times in results.json); CPU time and the fastest run are "
            "the steadier measures, and they agree with the prediction."
        )
        fr = unet["arithmetic_fraction"]
        worst = max(fr["bdia-1/float64"], fr["bdia-1/float32"])
        lines.append(
            f"- **Solver arithmetic per step < 3% of one UNet forward**: BDIA {100 * fr['bdia-1/float64']:.3f}% "
            f"(float64 state), {100 * fr['bdia-1/float32']:.3f}% (float32); DDIM {100 * fr['ddim/float64']:.3f}%; "
            f"one guided forward {1000 * f:.1f} ms ({'met' if worst < 0.03 else 'NOT met'})."
        )
        sd = unet.get("sd15_forward")
        if sd:
            lines.append(
                f"  On the full-width SD 1.5 UNet ({sd['parameters'] / 1e6:.0f}M parameters, one guided forward "
                f"{sd['forward_seconds']:.2f} s): BDIA {100 * sd['arithmetic_fraction']['bdia-1/float64']:.4f}%, "
                f"predicted invert + reconstruct {sd['predicted_ratio_to_ddim']['bdia-1']:.4f}x DDIM, EDICT "
                f"{sd['predicted_ratio_to_ddim']['edict']:.3f}x."
            )
        elif s["width"] != 1.0:
            lines.append(
                f"  The UNet here is SD 1.5's architecture at x{s['width']:g} width, so a forward is far "
                "cheaper than SD 1.5's and these fractions overstate the real overhead."
            )
        per_nfe_ratio = (
            ir["bdia-1"]["cpu_seconds"] / ir["bdia-1"]["nfe"] / (ir["ddim"]["cpu_seconds"] / ir["ddim"]["nfe"])
        )
        lines.append(
            f"  BDIA reconstructs from the inverted pair with N - 1 evaluations (2N - 1 NFE for the round "
            f"trip against DDIM's 2N), so its margin is one saved forward; per NFE it costs "
            f"{per_nfe_ratio:.3f}x "
            "DDIM (CPU time)."
        )
    for name in ("analytic", "digits"):
        wl = wls.get(name, {})
        if "results" not in wl:
            continue
        n = 50 if 50 in wl["steps"] else max(wl["steps"])
        vals = []
        for m in ("bdia-1", "bdia-0.96", "bdia-0.9"):
            r = _row(wl, m, "float64", n)
            if r is not None:
                vals.append((wl["results"][f"{m}/float64"]["label"], r["round_trip"]["max"]))
        if vals:
            ok = all(v <= 1e-10 for _, v in vals)
            lines.append(
                f"- **BDIA float64 round trip <= 1e-10 for gamma in [0.9, 1] at {n} steps** ({name}): "
                + ", ".join(f"{lab}: {fmt(v)}" for lab, v in vals)
                + f" ({'met' if ok else 'NOT met'})."
            )
    wl = wls.get("analytic", {})
    if "results" in wl:
        ratios, worse = _fidelity_vs_ddim(wl)
        msg = (
            "- **Inverted noise vs DDIM inversion's** (analytic, rms distance to the exact ODE's noise, as a "
            "multiple of DDIM inversion's; >1x means further from the true noise than DDIM inversion):\n\n" + ratios
        )
        if worse:
            msg += (
                "\n\n  Further than DDIM inversion: "
                + "; ".join(f"{lab} at N={n} ({r:.3g}x)" for lab, n, r in worse)
                + "."
            )
        n = 50 if 50 in wl["steps"] else max(wl["steps"])
        here = sorted(
            (cast(dict, _row(wl, key.split("/")[0], "float64", n))["fidelity"]["max"], res["label"])
            for key, res in wl["results"].items()
            if key.endswith("/float64")
        )
        msg += (
            f"\n\n  Largest distance of the inverted noise from the exact ODE's at {n} steps, closest first: "
            + ", ".join(f"{lab} {fmt(v)}" for v, lab in here)
            + ". "
            + _growth(wl)
        )
        lines.append(msg)
    return "\n".join(lines)


def _best_gamma(wl: dict[str, Any]) -> list[tuple[int, str, float]]:
    """(N, best fixed-gamma label, its rms noise error / gamma=1's) wherever gamma = 1 is not the closest."""
    keys = [m for m in ("bdia-1", "bdia-0.96", "bdia-0.9", "bdia-0.5") if f"{m}/float64" in wl["results"]]
    out = []
    for n in wl["steps"]:
        err = {m: wl["results"][f"{m}/float64"]["by_steps"][str(n)]["fidelity"]["rms"] for m in keys}
        best = min(keys, key=lambda m: err[m])
        if best != "bdia-1":
            out.append((n, wl["results"][f"{best}/float64"]["label"], err[best] / err["bdia-1"]))
    return out


def defaults_paragraph(results: dict[str, Any]) -> str:
    wls = {k: w for k, w in results["workloads"].items() if k in ("analytic", "digits") and "results" in w}
    if "bdia-1/float64" not in wls.get("analytic", {}).get("results", {}):
        return ""
    rt = [
        w["results"][f"bdia-1/{dt}"]["by_steps"][str(n)]["round_trip"]["max"]
        for w in wls.values()
        for dt in ("float64", "float32")
        if f"bdia-1/{dt}" in w["results"]
        for n in w["steps"]
    ]
    exceptions = {name: _best_gamma(w) for name, w in wls.items()}
    text = (
        "**Default gamma.** Among the fixed gammas measured (1, 0.96, 0.9, 0.5), gamma = 1 puts the inverted "
        "noise closest to the exact (or reference) ODE's"
    )
    if not any(exceptions.values()):
        text += f" at every step count on {' and '.join(wls)}"
    else:
        text += " nearly everywhere; the exceptions: " + "; ".join(
            f"{name} N={n}: {lab} at {r:.3g}x gamma=1's rms error"
            for name, ex in exceptions.items()
            for n, lab, r in ex
        )
    growing = {
        name: _growing(w, [f"{m}/float64" for m in ("bdia-0.96", "bdia-0.9", "bdia-0.5")]) for name, w in wls.items()
    }
    text += (
        f". Its round trip: worst {fmt(max(rt))} over all step counts and both state dtypes (prod 1/gamma_i = 1, "
        "no amplification). Inverted noise of gamma < 1 moving away from the ODE's between the two largest N: "
        + ("; ".join(f"{name}: {', '.join(labs)}" for name, labs in growing.items() if labs) or "none")
        + ". "
        + (
            "These numbers support the library's default `BDIA(gamma=1.0)`; smaller gamma damps the "
            "oscillating mode, which helps generation, not inversion (docs/math.md section 4)."
            if not any(exceptions.values())
            else "Where another gamma is closer, it is listed above."
        )
    )
    return text


def render(results: dict[str, Any], sections: dict[str, str]) -> str:
    """The whole report.md: header, headline, targets, the workloads' ``sections`` (by name, in order), settings."""
    from .methods import METHODS

    cfg = results["config"]
    mode = cfg["mode"]
    methods = ", ".join(METHODS[k].label if k in METHODS else k for k in cfg["methods"])
    parts = [
        "# BDIA benchmark report",
        f"Generated by `bdia bench --{mode} --seed {cfg['seed']}` ({mode} mode"
        + (": smaller sizes than the full mode, see the settings below" if mode != "full" else "")
        + ")"
        + (
            "; this text and the plots were rewritten from its `results.json` by `bdia bench --render`"
            if results.get("rendered_from_json")
            else ""
        )
        + f". Every number is in `results.json`. Wall time of this run: "
        f"{sum(results['seconds'].values()) / 60:.1f} min {TIMING_NOTE}.",
        f"Methods: {methods}"
        + (
            ", and null-text inversion (optimisation-based, on the UNet workload)"
            if "unet" in results["workloads"]
            else ""
        )
        + ". DDIM inversion is approximate; the others invert exactly up to rounding. Measures "
        "(docs/math.md section 8): round-trip error, inversion fidelity (inverted noise against the exact ODE's noise "
        "for the same input), sampling accuracy (sample against the exact ODE's sample from the same noise), "
        "empirical order (minus the slope of log rms error against log N) beside the order each solver declares, "
        "NFE (as the solvers count it), wall time, peak memory.",
        "## Headline",
        headline(results),
        "## Targets",
        targets(results),
        defaults_paragraph(results),
    ]
    for name, wl in results["workloads"].items():
        if "skipped" in wl:
            parts.append(f"## Workload {name}\n\nNot run: {wl['skipped']}.")
        else:
            parts.append(sections[name])
    settings = {k: v for k, v in cfg.items() if k != "extra"}
    parts.append(
        "## Settings and environment\n\n`BenchConfig`: `"
        + json.dumps(settings, default=str)
        + "`.\n\nEnvironment: "
        + ", ".join(f"{k} {v}" for k, v in results["environment"].items())
        + f". Seconds per workload {TIMING_NOTE}: "
        + ", ".join(f"{k} {v:.0f}" for k, v in results["seconds"].items())
        + "."
    )
    return "\n\n".join(p for p in parts if p) + "\n"
