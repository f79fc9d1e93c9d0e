"""The measurement loop shared by the workloads with a reference ODE solution (analytic and digits)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from ..schedule import Grid
from ..solvers import NonFiniteError
from ..solvers.base import amplification
from .measures import error_stats, fit_order
from .methods import Method

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def measure_method(
    method: Method,
    dtype: str,
    model: Callable,
    grids: dict[int, Grid],
    x0: torch.Tensor,
    ref_noise: dict[int, torch.Tensor],
    noise: dict[int, torch.Tensor],
    ref_sample: dict[int, torch.Tensor],
) -> dict[str, Any]:
    """Round trip, fidelity, accuracy, NFE and time of one method at one state dtype, for every grid;
    the orders measured from the errors beside the order the solver declares for these grids.

    ``ref_noise[N]``: the exact ODE's noise for ``x0`` on grid N; ``noise[N]`` the noise to sample
    from on grid N and ``ref_sample[N]`` the exact ODE's sample from it.
    """
    solver = method.make(DTYPES[dtype])
    rows: dict[str, Any] = {}
    for n, grid in grids.items():
        row: dict[str, Any] = {"steps": n}
        if hasattr(solver, "gammas"):
            row["amplification"] = amplification(solver.gammas(grid))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # InversionPrecisionWarning is the point of small gamma here
            try:
                t0 = time.perf_counter()
                inv = solver.invert(model, x0, grid)
                rec = solver.solve(model, inv, grid)
                row["seconds_invert_reconstruct"] = time.perf_counter() - t0
                row["nfe_invert"] = inv.nfe
                row["nfe_reconstruct"] = rec.nfe
                row["round_trip"] = error_stats(rec.x, x0)
                row["fidelity"] = error_stats(inv.noise, ref_noise[n])
            except NonFiniteError as e:
                row["diverged"] = str(e)
                row["round_trip"] = row["fidelity"] = error_stats(torch.full((1,), float("inf")), torch.zeros(1))
            try:
                out = solver.solve(model, noise[n], grid)
                row["nfe_sample"] = out.nfe
                row["accuracy"] = error_stats(out.x, ref_sample[n])
            except NonFiniteError as e:
                row["diverged_sampling"] = str(e)
                row["accuracy"] = error_stats(torch.full((1,), float("inf")), torch.zeros(1))
        rows[str(n)] = row
    steps = list(grids)
    declared = {solver.order_on(grid) for grid in grids.values()}
    orders = {
        "declared": declared.pop() if len(declared) == 1 else None,  # solver.order_on(grid); None if it varies
        "accuracy": fit_order(steps, [rows[str(n)]["accuracy"]["rms"] for n in steps]),
        "fidelity": fit_order(steps, [rows[str(n)]["fidelity"]["rms"] for n in steps]),
    }
    return {"label": method.label, "dtype": dtype, "by_steps": rows, "order": orders}
