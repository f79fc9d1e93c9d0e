"""The solvers the benchmark compares: the one bench-side list of methods, each a key, a label and a constructor.

Every workload takes its methods from here by key (``get_methods``), so a label or a parameter is
written once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

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


def _bdia(gamma: float | str, forward: str = "euler") -> Callable[[torch.dtype], Solver]:
    return lambda dt: BDIA(gamma, forward=forward, state_dtype=dt)


METHODS: dict[str, Method] = {m.key: m for m in [
    Method("ddim", "DDIM", lambda dt: DDIM(state_dtype=dt)),
    Method("heun", "Heun (EDM)", lambda dt: Heun(state_dtype=dt)),
    Method("edict", "EDICT p=0.93", lambda dt: EDICT(0.93, state_dtype=dt)),
    Method("bdia-1", "BDIA gamma=1", _bdia(1.0)),
    Method("bdia-0.96", "BDIA gamma=0.96", _bdia(0.96)),
    Method("bdia-0.9", "BDIA gamma=0.9", _bdia(0.9)),
    Method("bdia-0.5", "BDIA gamma=0.5", _bdia(0.5)),
    Method("belm", "O-BELM (BDIA gamma='belm')", _bdia("belm")),
    Method("rex", "Rex midpoint zeta=0.9", lambda dt: Rex("midpoint", 0.9, state_dtype=dt)),
    # BDIA-EDM (docs/math.md section 6): EDM's Heun forward move, the Euler move back.
    Method("bdia-heun-1", "BDIA-Heun gamma=1", _bdia(1.0, "heun")),
    Method("bdia-heun-0.96", "BDIA-Heun gamma=0.96", _bdia(0.96, "heun")),
    Method("bdia-heun-0.5", "BDIA-Heun gamma=0.5", _bdia(0.5, "heun")),
]}


def get_methods(keys: list[str] | tuple[str, ...]) -> list[Method]:
    unknown = [k for k in keys if k not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    return [METHODS[k] for k in keys]
