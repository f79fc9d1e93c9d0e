"""``bdia bench``: exactness, fidelity to the true ODE, accuracy and cost of every inversion method, side by side.

Workloads, one module each (the contract is in :mod:`.runner`, which lists them): :mod:`.analytic`
(a Gaussian mixture with exact eps and an exact reference ODE), :mod:`.digits` (the embedded digits
model, fine-grid references), :mod:`.unet` (SD 1.5's UNet architecture with random weights: time,
memory, precision), :mod:`.edm` (Euler, Heun and BDIA-EDM on Karras grids at equal NFE).
:mod:`.methods` lists the solvers, :mod:`.measures` holds the measures, :mod:`.report` and
:mod:`.plots` the output; :func:`run_bench` runs a :class:`BenchConfig` into a folder; the command is
:mod:`bdia.cli.bench`.
"""

from __future__ import annotations

from typing import Any

from .config import WORKLOADS, BenchConfig

__all__ = ["BenchConfig", "WORKLOADS", "run_bench"]


def __getattr__(name: str) -> Any:
    if name == "run_bench":  # the runner imports torch: loaded on first use, so `bdia bench --help` stays light
        from .runner import run_bench

        return run_bench
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
