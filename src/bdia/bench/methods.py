"""The inversion methods the benchmark compares, each a name, a label and a solver factory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..solvers import BDIA, DDIM, EDICT, Solver

__all__ = ["Method", "METHODS", "get_methods"]


@dataclass(frozen=True)
class Method:
    key: str  # stable name in results.json
    label: str  # name in tables and plots
    make: Callable[[torch.dtype], Solver]  # state dtype -> solver
    gamma: float | str | None = None


def _bdia(gamma: float | str) -> Callable[[torch.dtype], Solver]:
    return lambda dt: BDIA(gamma, state_dtype=dt)


METHODS: dict[str, Method] = {m.key: m for m in [
    Method("ddim", "DDIM inversion", lambda dt: DDIM(state_dtype=dt)),
    Method("edict", "EDICT p=0.93", lambda dt: EDICT(0.93, state_dtype=dt)),
    Method("bdia-1", "BDIA gamma=1", _bdia(1.0), 1.0),
    Method("bdia-0.96", "BDIA gamma=0.96", _bdia(0.96), 0.96),
    Method("bdia-0.9", "BDIA gamma=0.9", _bdia(0.9), 0.9),
    Method("bdia-0.5", "BDIA gamma=0.5", _bdia(0.5), 0.5),
    Method("belm", "O-BELM (BDIA gamma='belm')", _bdia("belm"), "belm"),
]}


def get_methods(keys: list[str] | tuple[str, ...]) -> list[Method]:
    unknown = [k for k in keys if k not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    return [METHODS[k] for k in keys]
