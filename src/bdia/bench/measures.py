"""The measures of docs/math.md section 8, and the instruments that take them (timing, memory).

Code name -> measure: ``round_trip`` -> |regenerate(invert(x0)) - x0|; ``fidelity`` -> |inverted
noise - the exact ODE's noise|; ``accuracy`` -> |sample from noise - the exact ODE's sample from the
same noise|; ``order`` -> -slope of log(error) against log(N); ``nfe`` -> model evaluations, as the
solvers count them (``Inversion.nfe``, ``solver.solve(...).nfe``).
Errors are given as ``max`` (largest absolute element difference over the batch) and ``rms``
(root mean square element difference).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

__all__ = ["error_stats", "fit_order", "ZeroModel", "interleaved_times", "median", "finite_or_none"]


def error_stats(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """max, mean and rms absolute difference of two tensors (float64); inf when either is not finite."""
    d = (a.detach().to(torch.float64).cpu() - b.detach().to(torch.float64).cpu()).abs()
    if not torch.isfinite(d).all():
        return {"max": math.inf, "mean": math.inf, "rms": math.inf}
    return {"max": float(d.max()), "mean": float(d.mean()), "rms": float(d.pow(2).mean().sqrt())}


def fit_order(steps: Sequence[int], errors: Sequence[float], floor: float = 1e-12) -> float | None:
    """Empirical order of convergence: minus the least-squares slope of log(error) on log(N).

    Points that are not finite or sit at rounding level (below ``floor``) are dropped; None when
    fewer than two remain.
    """
    pts = [
        (math.log(n), math.log(e)) for n, e in zip(steps, errors) if e is not None and math.isfinite(e) and e > floor
    ]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    sxy = sum((p[0] - mx) * (p[1] - my) for p in pts)
    return -sxy / sxx if sxx > 0 else None


class ZeroModel:
    """A zero-cost eps model (returns a fixed tensor of zeros): timing a sampler with it times the solver alone."""

    def __init__(self, shape: Sequence[int], dtype: torch.dtype = torch.float32):
        self.dtype = dtype
        self._out = torch.zeros(tuple(shape), dtype=dtype)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self._out


def interleaved_times(
    tasks: Mapping[str, Callable[[], Any]], repeats: int, cpu: dict[str, list[float]] | None = None
) -> dict[str, list[float]]:
    """Wall time of each task, run in turn ``repeats`` times (A B C, C B A, ...), so slow phases of a
    shared machine hit every task alike. Returns the times per task; take medians. When ``cpu`` is
    given it receives the process CPU time of each run too (all threads; robust to other processes
    competing for the cores, which wall time is not)."""
    out: dict[str, list[float]] = {k: [] for k in tasks}
    for r in range(repeats):
        order = list(tasks) if r % 2 == 0 else list(reversed(list(tasks)))
        for k in order:
            c0, t0 = time.process_time(), time.perf_counter()
            tasks[k]()
            out[k].append(time.perf_counter() - t0)
            if cpu is not None:
                cpu.setdefault(k, []).append(time.process_time() - c0)
    return out


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def finite_or_none(x: Any) -> Any:
    """JSON-safe copy: non-finite floats become None (JSON has no inf/NaN)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): finite_or_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite_or_none(v) for v in x]
    return x
