"""Workload: exact reversal as a tool (docs/math.md section 11), on the embedded digits model.

1. Gradients through N sampling steps: peak process memory and time of one gradient with
   ``backprop="reversible"`` against plain autograd, and against one forward sampling pass.
   Times are the minimum of interleaved repeats. Memory is the process's peak resident set above its
   level just before the gradient (Linux
   ``VmHWM``, reset through ``/proc/self/clear_refs`` after returning freed heap to the system), so
   it counts every tensor torch allocates, not only what Python's tracemalloc sees.
2. Precision of reversible gradients: relative error against the float64 autograd gradient of
   float32 and float64 state, next to float32 autograd's, and through bit-exact sampling.
3. Bit-exact round trips (``bit_exact=True``): differing bits between x0 and its reconstruction,
   against the float64 solver, with the time overhead and the buffer size.

Sizes: ``cfg.extra["reversible"]`` may override any of QUICK / FULL below.
"""

from __future__ import annotations

import ctypes
import math
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .config import BenchConfig
from .requires import DIGITS

REQUIRES = DIGITS

__all__ = ["peak_memory_mb", "run", "section", "plots"]

QUICK = {
    "batch": 2,
    "grad_steps": (4, 8, 16),
    "grad_repeats": 1,
    "drift_steps": 8,
    "drift_gammas": (1.0, 0.5),
    "exact_steps": (4, 8),
    "exact_gammas": (1.0, 0.96, 0.5, 0.1),
    "exact_batch": 1,
    "arith_steps": 4,
    "arith_shapes": ((1, 1, 16, 16),),
}
FULL = {
    "batch": 4,
    "grad_steps": (10, 50, 200),
    "grad_repeats": 3,
    "drift_steps": 50,
    "drift_gammas": (1.0, 0.9, 0.5),
    "exact_steps": (10, 50, 200),
    "exact_gammas": (1.0, 0.96, 0.5, 0.1),
    "exact_batch": 2,
    "arith_steps": 10,
    "arith_shapes": ((2, 1, 16, 16), (1, 4, 64, 64)),
}

MEMORY_TARGET = 1.2  # reversible peak memory at the largest N over the smallest N
TIME_TARGET = 2.2  # gradient time over one forward sampling pass


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        match = re.search(field + r":\s+(\d+)", f.read())
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field} line")
    return int(match.group(1)) / 1024


def peak_memory_mb(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(fn(), peak resident memory in MiB above the level before the call); NaN where Linux's counters are missing."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back, so reuse does not hide a peak
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak (VmHWM) to the current resident size
        before = _status_mb("VmRSS")
    except (OSError, AttributeError):
        return fn(), math.nan
    out = fn()
    return out, _status_mb("VmHWM") - before


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _settings(cfg: BenchConfig) -> dict[str, Any]:
    return {**(FULL if cfg.mode == "full" else QUICK), **cfg.extra.get("reversible", {})}


def _differing_bits(a: torch.Tensor, b: torch.Tensor) -> int:
    """Number of bits that differ between two float64 tensors' representations."""
    x = a.to(torch.float64).contiguous().view(torch.int64) ^ b.to(torch.float64).contiguous().view(torch.int64)
    return int(sum(bin(v & (2**64 - 1)).count("1") for v in x.flatten().tolist()))


def _gradients(s: dict[str, Any], model, eps_for, x_noise, log) -> dict[str, Any]:
    import bdia

    out: dict[str, Any] = {}
    weights = torch.linspace(-1, 1, x_noise[0].numel(), dtype=torch.float64).reshape(x_noise.shape[1:])
    for mode in ("reversible", "autograd"):  # the first backward pass starts autograd's machinery: not timed
        start = x_noise.clone().requires_grad_()
        bdia.BDIA(1.0).sample(eps_for, start, model.schedule.grid(3), backprop=mode).sum().backward()
    for n in s["grad_steps"]:
        grid = model.schedule.grid(n)
        solver = bdia.BDIA(1.0)

        def forward():
            with torch.no_grad():
                return solver.sample(eps_for, x_noise, grid)

        forward()  # warm the allocator and caches
        times: dict[str, list[float]] = {"forward": [], "reversible": [], "autograd": []}
        row: dict[str, Any] = {}
        # interleaved repeats, minimum of each: the machine may be shared, and load comes and goes
        for rep in range(s["grad_repeats"]):
            times["forward"].append(_timed(forward)[1])
            for mode in ("reversible", "autograd"):

                def gradient():
                    start = x_noise.clone().requires_grad_()
                    x = solver.sample(eps_for, start, grid, backprop=mode)
                    (x * weights).sum().backward()
                    return start.grad

                (grad, t), mb = peak_memory_mb(lambda: _timed(gradient))
                times[mode].append(t)
                if rep == 0:
                    row[mode] = {"peak_mb": mb}
                    row.setdefault("grads", []).append(grad)
        t_fwd = min(times["forward"])
        row["forward_s"] = t_fwd
        for mode in ("reversible", "autograd"):
            row[mode].update(seconds=min(times[mode]), time_over_forward=min(times[mode]) / t_fwd)
        row["reversible_over_autograd"] = row["reversible"]["seconds"] / row["autograd"]["seconds"]
        g_rev, g_ag = row.pop("grads")
        row["rel_diff"] = float((g_rev - g_ag).norm() / g_ag.norm())
        log(
            f"  reversible: N={n} forward {t_fwd:.2f}s, reversible {row['reversible']['seconds']:.2f}s "
            f"{row['reversible']['peak_mb']:.0f} MiB, autograd {row['autograd']['seconds']:.2f}s "
            f"{row['autograd']['peak_mb']:.0f} MiB"
        )
        out[str(n)] = row
    return out


def _drift(s: dict[str, Any], model, eps_for, x_noise, log) -> dict[str, Any]:
    """Relative gradient error with float32 state, reversible and autograd, against float64 autograd."""
    import bdia

    grid = model.schedule.grid(s["drift_steps"])
    weights = torch.linspace(-1, 1, x_noise[0].numel(), dtype=torch.float64).reshape(x_noise.shape[1:])
    out = {}
    for gamma in s["drift_gammas"]:
        grads = {}
        for key, mode, solver in (
            ("ref", "autograd", bdia.BDIA(gamma)),
            ("reversible", "reversible", bdia.BDIA(gamma, state_dtype=torch.float32)),
            ("autograd", "autograd", bdia.BDIA(gamma, state_dtype=torch.float32)),
            ("float64_reversible", "reversible", bdia.BDIA(gamma)),
            ("bit_exact_reversible", "reversible", bdia.BDIA(gamma, bit_exact=True)),
        ):
            start = x_noise.clone().requires_grad_()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                x = solver.sample(eps_for, start, grid, backprop=mode)
            (x.double() * weights).sum().backward()
            grads[key] = start.grad
        ref = grads.pop("ref")
        out[str(gamma)] = {k: float((g - ref).norm() / ref.norm()) for k, g in grads.items()}
        log(f"  reversible: float32 drift gamma={gamma}: {out[str(gamma)]}")
    return out


def _bit_exact(s: dict[str, Any], model, eps_for, x0, noise, log) -> dict[str, Any]:
    import bdia

    from ..solvers import NonFiniteError
    from ..solvers.bitexact import buffer_bits

    out = {}
    for n in s["exact_steps"]:
        grid = model.schedule.grid(n)
        for gamma in s["exact_gammas"]:
            row: dict[str, Any] = {}
            for key, solver in (("float64", bdia.BDIA(gamma)), ("bit_exact", bdia.BDIA(gamma, bit_exact=True))):
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        inv, t_inv = _timed(lambda: solver.invert(eps_for, x0, grid))
                        rec, t_rec = _timed(lambda: solver.sample(eps_for, inv, grid))
                    row[key] = {
                        "differing_bits": _differing_bits(rec, x0),
                        "max_err": float((rec - x0).abs().max()),
                        "seconds": t_inv + t_rec,
                        "max_latent": float(inv.latents[0].abs().max()),
                    }
                except NonFiniteError as e:
                    row[key] = {"failed": str(e).split(";")[0]}
            exact = bdia.BDIA(gamma, bit_exact=True)
            row["buffer_bits_after_generation"] = buffer_bits(exact.solve(eps_for, noise, grid).state)
            row["total_bits"] = 64 * x0.numel()
            log(
                f"  reversible: bit-exact N={n} gamma={gamma}: {row['bit_exact'].get('differing_bits')} bits differ "
                f"(float64: {row['float64'].get('differing_bits', 'failed')})"
            )
            out[f"{n}/{gamma}"] = row
    return out


def _arithmetic_cost(s: dict[str, Any], log) -> dict[str, Any]:
    """Milliseconds per step of a round trip's solver arithmetic alone (a model that costs nothing)."""
    import bdia

    from ..schedule import Schedule

    grid = Schedule.from_config({}).grid(s["arith_steps"])
    out = {}
    for shape in s["arith_shapes"]:
        x0 = torch.randn(tuple(shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        row = {}
        for key, solver in (("float64", bdia.BDIA(0.5)), ("bit_exact", bdia.BDIA(0.5, bit_exact=True))):

            def round_trip():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return solver.sample(_free_model, solver.invert(_free_model, x0, grid), grid)

            _, t = _timed(round_trip)
            row[key] = 1e3 * t / (2 * grid.num_steps)
        log(f"  reversible: arithmetic per step, shape {tuple(shape)}: {row}")
        out["x".join(map(str, shape))] = row
    return out


def _free_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 0.1 * x


def run(cfg: BenchConfig, log=print) -> dict[str, Any]:
    try:
        from .. import digits

        model = digits.load_model()
    except (ImportError, FileNotFoundError) as e:
        log(f"  reversible: skipped ({e})")
        return {"skipped": f"the embedded digits model is not available: {e}"}
    s = _settings(cfg)
    gen = torch.Generator().manual_seed(cfg.seed + 13)
    test = digits.load_digits("test")
    idx = torch.randperm(len(test), generator=gen)[: max(s["batch"], s["exact_batch"])]
    labels = test.labels[idx]
    x0 = digits.to_model(test.images[idx]).to(torch.float64)
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    eps = digits.eps_model(model, labels[: s["batch"]], guidance=1.0)
    eps_exact = digits.eps_model(model, labels[: s["exact_batch"]], guidance=1.0)
    return {
        "description": (
            f"digits UNet (float32 weights), BDIA gamma 1 with float64 state unless noted, batch "
            f"{s['batch']}; gradient of a weighted sum of the sample with respect to the noise"
        ),
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in s.items()},
        "gradients": _gradients(s, model, eps, noise[: s["batch"]], log),
        "float32_drift": {"steps": s["drift_steps"], **_drift(s, model, eps, noise[: s["batch"]], log)},
        "bit_exact": _bit_exact(s, model, eps_exact, x0[: s["exact_batch"]], noise[: s["exact_batch"]], log),
        "arithmetic_ms_per_step": _arithmetic_cost(s, log),
    }


def section(results: dict[str, Any]) -> str:
    if "skipped" in results:
        return f"## Gradients by reversal and bit-exact round trips\n\nSkipped: {results['skipped']}\n"
    lines = ["## Gradients by reversal and bit-exact round trips", "", results["description"] + ".", ""]
    g = results["gradients"]
    ns = list(g)
    lines += [
        "| N | forward pass (s) | reversible: peak MiB | s | x forward | autograd: peak MiB | s | x forward "
        "| reversible / autograd time | grad rel. diff |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in ns:
        r, a = g[n]["reversible"], g[n]["autograd"]
        lines.append(
            f"| {n} | {g[n]['forward_s']:.2f} | {r['peak_mb']:.1f} | {r['seconds']:.2f} | "
            f"{r['time_over_forward']:.2f} | {a['peak_mb']:.1f} | {a['seconds']:.2f} | "
            f"{a['time_over_forward']:.2f} | {g[n]['reversible_over_autograd']:.2f} | "
            f"{g[n]['rel_diff']:.1e} |"
        )
    mem = [g[n]["reversible"]["peak_mb"] for n in ns]
    ratio = max(mem) / max(min(mem), 1e-9)
    worst = max(g[n]["reversible"]["time_over_forward"] for n in ns)
    worst_backward = max(g[n]["reversible"]["time_over_forward"] - 1 for n in ns)  # the gradient's own forward removed
    lines += [
        "",
        f"Target: reversible peak memory within {MEMORY_TARGET}x from N = {ns[0]} to N = {ns[-1]}: "
        f"{ratio:.2f}x ({'met' if ratio <= MEMORY_TARGET else 'not met'}); autograd grows "
        f"{g[ns[-1]]['autograd']['peak_mb'] / max(g[ns[0]]['autograd']['peak_mb'], 1e-9):.1f}x.",
        f"Target: time per gradient <= {TIME_TARGET}x one forward sampling pass: worst {worst:.2f}x "
        f"({'met' if worst <= TIME_TARGET else 'not met'}; the gradient includes its own forward pass); "
        f"its backward pass alone: worst {worst_backward:.2f}x "
        f"({'met' if worst_backward <= TIME_TARGET else 'not met'}).",
        "",
    ]
    d = results["float32_drift"]
    lines += [
        f"Relative gradient error against float64 autograd, N = {d['steps']}: float32 state (reversible, "
        "autograd), float64 state reversible, and reversible through bit-exact sampling",
        "",
        "| gamma | float32 reversible | float32 autograd | float64 reversible | bit-exact reversible |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {k} | {v['reversible']:.1e} | {v['autograd']:.1e} | {v['float64_reversible']:.1e} | "
        f"{v['bit_exact_reversible']:.1e} |"
        for k, v in d.items()
        if k != "steps"
    ]
    lines += [
        "",
        "Bit-exact round trips (float64 input): differing bits of x0' against x0",
        "",
        "| N | gamma | bit-exact | float64 | float64 max err | max latent | bit-exact s | float64 s "
        "| buffer bits/elem after generation |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    all_zero = True
    for key, row in results["bit_exact"].items():
        n, gamma = key.split("/")
        b, f = row["bit_exact"], row["float64"]
        all_zero &= b.get("differing_bits") == 0
        fb = f"{f['differing_bits']} / {row['total_bits']}" if "differing_bits" in f else "failed (non-finite)"
        fe = f"{f['max_err']:.1e}" if "max_err" in f else "-"
        fs = f"{f['seconds']:.2f}" if "seconds" in f else "-"
        lines.append(
            f"| {n} | {gamma} | {b.get('differing_bits', b.get('failed'))} | {fb} | {fe} | "
            f"{b.get('max_latent', math.nan):.2g} | {b.get('seconds', math.nan):.2f} | {fs} | "
            f"{row['buffer_bits_after_generation']:.1f} |"
        )
    lines += [
        "",
        f"Target: zero differing bits for every gamma and N: {'met' if all_zero else 'not met'}.",
        "",
        "Solver arithmetic alone (a model that costs nothing), BDIA gamma 0.5, ms per step:",
        "",
        "| shape | float64 | bit-exact |",
        "|---|---|---|",
    ]
    lines += [
        f"| {k} | {v['float64']:.3f} | {v['bit_exact']:.1f} |"
        for k, v in results.get("arithmetic_ms_per_step", {}).items()
    ]
    lines.append("")
    return "\n".join(lines)


def plots(results: dict[str, Any], out_dir: Path, overwrite: bool) -> list[str]:
    if "skipped" in results:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import save_figure

    g = results["gradients"]
    ns = [int(n) for n in g]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for mode, color in (("reversible", "C0"), ("autograd", "C3")):
        axes[0].plot(ns, [g[str(n)][mode]["peak_mb"] for n in ns], "o-", color=color, label=mode)
        axes[1].plot(ns, [g[str(n)][mode]["time_over_forward"] for n in ns], "o-", color=color, label=mode)
    axes[0].set(xlabel="sampling steps N", ylabel="peak memory of one gradient (MiB)", xscale="log")
    axes[1].set(xlabel="sampling steps N", ylabel="gradient time / forward pass", xscale="log")
    axes[1].axhline(TIME_TARGET, color="gray", ls=":", label="target")
    for ax in axes:
        ax.legend()
    fig.suptitle("Gradient through BDIA sampling on the digits model")
    fig.tight_layout()
    name = "reversible_memory.png"
    save_figure(fig, Path(out_dir) / name, overwrite)
    return [name]
