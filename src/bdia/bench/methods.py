"""The solvers the benchmark compares: the one bench-side list of methods, each a key, a label and a constructor.

Every workload takes its methods from here by key (``get_methods``), so a label or a parameter is
written once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..solvers import BDIA, DDIM, EDICT, Heun, Rex, Solver

__all__ = ["Method", "METHODS", "get_methods"]


@dataclass(frozen=True)
class Method:
    key: str  # stable name in results.json
    label: str  # name in tables and plots
    build: Callable[[torch.dtype], Solver]  # state dtype -> solver

    def make(self, state_dtype: torch.dtype = torch.float64) -> Solver:
        return self.build(state_dtype)


def _bdia(gamma: float | str, forward: str = "euler", **kw) -> Callable[[torch.dtype], Solver]:
    return lambda dt: BDIA(gamma, forward=forward, state_dtype=dt, **kw)


def _rex(base: str = "midpoint", zeta: float = 0.9, **kw) -> Callable[[torch.dtype], Solver]:
    return lambda dt: Rex(base, zeta, state_dtype=dt, **kw)


METHODS: dict[str, Method] = {
    m.key: m
    for m in [
        Method("ddim", "DDIM", lambda dt: DDIM(state_dtype=dt)),
        Method("heun", "Heun (EDM)", lambda dt: Heun(state_dtype=dt)),
        Method("edict", "EDICT p=0.93", lambda dt: EDICT(0.93, state_dtype=dt)),
        Method("bdia-1", "BDIA gamma=1", _bdia(1.0)),
        Method("bdia-0.96", "BDIA gamma=0.96", _bdia(0.96)),
        Method("bdia-0.9", "BDIA gamma=0.9", _bdia(0.9)),
        Method("bdia-0.5", "BDIA gamma=0.5", _bdia(0.5)),
        Method("belm", "O-BELM (BDIA gamma='belm')", _bdia("belm")),
        # Clean-end starts (bdia.solvers.start): how BDIA's and O-BELM's inversions leave the clean end.
        Method("bdia-1-sub4", "BDIA gamma=1, start substeps:4", _bdia(1.0, start="substeps:4")),
        Method("bdia-1-extra", "BDIA gamma=1, start extrapolated", _bdia(1.0, start="extrapolated")),
        Method("belm-auto", "O-BELM, start auto", _bdia("belm", start="auto")),
        Method("belm-sub4", "O-BELM, start substeps:4", _bdia("belm", start="substeps:4")),
        Method("belm-sub8", "O-BELM, start substeps:8", _bdia("belm", start="substeps:8")),
        # Rex (docs/math.md section 10): "rex" is the library's default, Rex() = midpoint, zeta 0.9, noise variables.
        Method("rex", "Rex midpoint (zeta=0.9, start auto)", _rex()),
        *[Method(f"rex-{base}", f"Rex {base}", _rex(base)) for base in ("euler", "heun", "ralston", "rk4")],
        *[
            Method(f"rex-midpoint-z{zeta:g}", f"Rex midpoint zeta={zeta:g}", _rex(zeta=zeta))
            for zeta in (0.5, 0.8, 0.99, 0.999)
        ],
        Method("rex-midpoint-ddim", "Rex midpoint, start ddim", _rex(start="ddim")),
        Method("rex-midpoint-data", "Rex midpoint, data variables", _rex(variables="data")),
        Method("rex-rk4-data", "Rex rk4, data variables", _rex("rk4", variables="data")),
        Method("rex-midpoint-state", "Rex midpoint, state coupling zeta=0.97", _rex(zeta=0.97, coupling="state")),
        Method("rex-midpoint-state-0.9", "Rex midpoint, state coupling zeta=0.9", _rex(zeta=0.9, coupling="state")),
        Method("rex-rk4-state", "Rex rk4, state coupling zeta=0.97", _rex("rk4", 0.97, coupling="state")),
        Method(
            "rex-midpoint-data-state",
            "Rex midpoint, data variables, state coupling zeta=0.97",
            _rex(zeta=0.97, variables="data", coupling="state"),
        ),
        # BDIA-EDM (docs/math.md section 6): EDM's Heun forward move, the Euler move back.
        Method("bdia-heun-1", "BDIA-Heun gamma=1", _bdia(1.0, "heun")),
        Method("bdia-heun-0.96", "BDIA-Heun gamma=0.96", _bdia(0.96, "heun")),
        Method("bdia-heun-0.5", "BDIA-Heun gamma=0.5", _bdia(0.5, "heun")),
    ]
}


def get_methods(keys: list[str] | tuple[str, ...]) -> list[Method]:
    unknown = [k for k in keys if k not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    return [METHODS[k] for k in keys]
