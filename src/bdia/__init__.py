"""bdia: exact diffusion inversion (BDIA, Zhang, Lewis & Kleijn, ECCV 2024) and its baselines.

schedule = bdia.Schedule.from_config(cfg); grid = schedule.grid(50)
inv = bdia.BDIA(gamma=1.0).invert(eps_model, x0, grid)
x0_again = bdia.BDIA(gamma=1.0).sample(eps_model, inv, grid)

Every name loads on first use (PEP 562), so that ``import bdia`` -- and with it ``bdia --help`` -- does
not import torch; ``bdia.BDIA`` imports the solvers (and torch) when first touched.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> (module, attribute); attribute None: the module itself.
_LAZY: dict[str, tuple[str, str | None]] = {
    **{
        name: ("bdia.solvers", name)
        for name in (
            "BDIA",
            "DDIM",
            "EDICT",
            "SOLVERS",
            "Heun",
            "Inversion",
            "InversionPrecisionWarning",
            "NonFiniteError",
            "Rex",
            "Solver",
            "belm_gammas",
            "ddim_transition",
            "make_solver",
        )
    },
    **{name: ("bdia.edm", name) for name in ("from_denoiser", "karras_grid", "karras_grid_for", "to_denoiser")},
    **{name: ("bdia.models", name) for name in ("ClassifierFreeGuidance", "model_dtype", "to_eps")},
    "FlowSchedule": ("bdia.flow", "FlowSchedule"),
    "make_grid": ("bdia.grids", "make_grid"),
    "Grid": ("bdia.schedule", "Grid"),
    "Schedule": ("bdia.schedule", "Schedule"),
    # integrations with heavy dependencies (diffusers...) load on first use too
    "BDIAScheduler": ("bdia.schedulers.ddim", "BDIAScheduler"),
    "BDIAInverseScheduler": ("bdia.schedulers.ddim", "BDIAInverseScheduler"),
    "BDIAFlowScheduler": ("bdia.schedulers.flow_match", "BDIAFlowScheduler"),
    "pipelines": ("bdia.pipelines", None),  # deprecated: the old home of editing, schedulers, io and datasets
}

if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from . import edm, flow, optimize
    from .edm import from_denoiser, karras_grid, karras_grid_for, to_denoiser
    from .flow import FlowSchedule
    from .grids import make_grid
    from .models import ClassifierFreeGuidance, model_dtype, to_eps
    from .schedule import Grid, Schedule
    from .schedulers.ddim import BDIAInverseScheduler, BDIAScheduler
    from .schedulers.flow_match import BDIAFlowScheduler
    from .solvers import (
        BDIA,
        DDIM,
        EDICT,
        SOLVERS,
        Heun,
        Inversion,
        InversionPrecisionWarning,
        NonFiniteError,
        Rex,
        Solver,
        belm_gammas,
        ddim_transition,
        make_solver,
    )


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        value = mod if attr is None else getattr(mod, attr)
    else:
        try:  # a subpackage or module: bdia.solvers, bdia.analytic, bdia.digits...
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise  # the module exists but needs something missing: say what
            raise AttributeError(f"module 'bdia' has no attribute {name!r}") from None
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *__all__})


__all__ = [
    "BDIA",
    "DDIM",
    "EDICT",
    "Heun",
    "SOLVERS",
    "edm",
    "from_denoiser",
    "karras_grid",
    "karras_grid_for",
    "to_denoiser",
    "ClassifierFreeGuidance",
    "Grid",
    "Inversion",
    "InversionPrecisionWarning",
    "NonFiniteError",
    "Schedule",
    "BDIAScheduler",
    "BDIAInverseScheduler",
    "Solver",
    "belm_gammas",
    "ddim_transition",
    "model_dtype",
    "to_eps",
    "make_solver",
    "make_grid",
    "Rex",
    "flow",
    "FlowSchedule",
    "BDIAFlowScheduler",
    "optimize",
]
