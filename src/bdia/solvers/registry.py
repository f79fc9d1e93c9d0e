"""Solvers by name: the one factory that the editor, saved inversions, the demo and the benchmark use.

make_solver("bdia", gamma=0.5)                 # BDIA(0.5)
make_solver({"name": "edict", "p": 0.9})       # from Solver.config(), as inversions record it
make_solver("ddim", gamma=None)                # None means "not given": DDIM takes no gamma
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch

from .base import Solver
from .bdia import BDIA
from .ddim import DDIM, Heun
from .edict import EDICT
from .rex import Rex

__all__ = ["SOLVERS", "make_solver", "solver_parameters"]

SOLVERS: dict[str, type[Solver]] = {"ddim": DDIM, "bdia": BDIA, "edict": EDICT, "heun": Heun, "rex": Rex}

# Keywords every solver takes from the base class; the factory passes them itself.
_COMMON = ("state_dtype", "model_dtype", "check_finite", "bit_exact")


def solver_parameters(name: str) -> tuple[str, ...]:
    """The parameters of solver ``name`` that define its map (``gamma``, ``p``, ...), from its signature."""
    cls = _solver_class(name)
    sig = inspect.signature(cls.__init__)
    return tuple(
        k
        for k, v in sig.parameters.items()
        if k != "self" and k not in _COMMON and v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL)
    )


def _solver_class(name: Any) -> type[Solver]:
    key = str(name).lower()
    if key not in SOLVERS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(sorted(SOLVERS))}")
    return SOLVERS[key]


def make_solver(
    method: str | Solver | Mapping[str, Any] = "bdia",
    *,
    state_dtype: torch.dtype = torch.float64,
    model_dtype: torch.dtype | None = None,
    **params: Any,
) -> Solver:
    """A solver from its name and parameters, or from ``Solver.config()`` (``{"name": ..., **params}``).

    Parameters given as None are left at the solver's default; a parameter the solver does not take
    is refused (ValueError naming the ones it takes), so ``--gamma`` with ``--method edict`` is not
    silently ignored. A Solver instance is returned as it is (then no parameters may be given).
    """
    if isinstance(method, Solver):
        named = sorted(k for k, v in params.items() if v is not None)
        if named:
            raise ValueError(f"parameters {named} were given with a ready-made solver {method!r}; set them on it")
        return method
    if isinstance(method, Mapping):
        config = dict(method)
        if "name" not in config:
            raise ValueError(f"a solver config needs a 'name' (one of {', '.join(sorted(SOLVERS))}), got {config}")
        name = config.pop("name")
        params = {**config, **params}
    else:
        name = method
    cls = _solver_class(name)
    allowed = solver_parameters(str(name))
    given = {k: v for k, v in params.items() if v is not None}
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        takes = ", ".join(allowed) if allowed else "no parameters"
        raise ValueError(f"{cls.name} takes {takes}; got {', '.join(unknown)}")
    return cls(**given, state_dtype=state_dtype, model_dtype=model_dtype)
