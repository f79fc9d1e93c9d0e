"""The measurement loop shared by the workloads with a reference ODE solution (analytic and digits)."""

from __future__ import annotations

import time
import warnings
from typing import Any, Callable

import torch

from ..schedule import Grid
from ..solvers import NonFiniteError
from ..solvers.base import amplification
from .measures import CountingModel, error_stats, fit_order
from .methods import Method

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def measure_method(method: Method, dtype: str, model: Callable, grids: dict[int, Grid], x0: torch.Tensor,
                   ref_noise: dict[int, torch.Tensor], noise: dict[int, torch.Tensor],
                   ref_sample: dict[int, torch.Tensor]) -> dict[str, Any]:
    """Round trip, fidelity, accuracy, NFE and time of one method at one state dtype, for every grid.

    ``ref_noise[N]``: the exact ODE's noise for ``x0`` on grid N; ``noise[N]`` the noise to sample
    from on grid N and ``ref_sample[N]`` the exact ODE's sample from it.
    """
    rows: dict[str, Any] = {}
    for n, grid in grids.items():
        solver = method.make(DTYPES[dtype])
        row: dict[str, Any] = {"steps": n}
        if hasattr(solver, "gammas"):
            row["amplification"] = amplification(solver.gammas(grid))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # InversionPrecisionWarning is the point of small gamma here
            try:
                t0 = time.perf_counter()
                counted = CountingModel(model)
                inv = solver.invert(counted, x0, grid)
                rec = solver.sample(counted, inv, grid)
                row["seconds_invert_reconstruct"] = time.perf_counter() - t0
                row["nfe_invert"] = inv.nfe
                row["nfe_reconstruct"] = counted.calls - inv.nfe
                row["round_trip"] = error_stats(rec, x0)
                row["fidelity"] = error_stats(inv.noise, ref_noise[n])
            except NonFiniteError as e:
                row["diverged"] = str(e)
                row["round_trip"] = row["fidelity"] = error_stats(torch.full((1,), float("inf")), torch.zeros(1))
            try:
                counted = CountingModel(model)
                out = solver.sample(counted, noise[n], grid)
                row["nfe_sample"] = counted.calls
                row["accuracy"] = error_stats(out, ref_sample[n])
            except NonFiniteError as e:
                row["diverged_sampling"] = str(e)
                row["accuracy"] = error_stats(torch.full((1,), float("inf")), torch.zeros(1))
        rows[str(n)] = row
    steps = list(grids)
    orders = {
        "accuracy": fit_order(steps, [rows[str(n)]["accuracy"]["rms"] for n in steps]),
        "fidelity": fit_order(steps, [rows[str(n)]["fidelity"]["rms"] for n in steps]),
    }
    return {"label": method.label, "dtype": dtype, "by_steps": rows, "order": orders}
