"""bdia: exact diffusion inversion (BDIA, Zhang, Lewis & Kleijn, ECCV 2024) and its baselines.

schedule = bdia.Schedule.from_config(cfg); grid = schedule.grid(50)
inv = bdia.BDIA(gamma=1.0).invert(eps_model, x0, grid)
x0_again = bdia.BDIA(gamma=1.0).sample(eps_model, inv, grid)
"""

from . import edm, flow, optimize
from .edm import from_denoiser, karras_grid, karras_grid_for, to_denoiser
from .flow import FlowSchedule
from .grids import make_grid
from .models import ClassifierFreeGuidance, model_dtype, to_eps
from .schedule import Grid, Schedule
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

__version__ = "0.1.0"

# Integrations with heavy dependencies load on first use, so `import bdia` needs only torch/numpy.
_LAZY = {
    "BDIAScheduler": ("bdia.schedulers.ddim", "BDIAScheduler"),
    "BDIAInverseScheduler": ("bdia.schedulers.ddim", "BDIAInverseScheduler"),
    "BDIAFlowScheduler": ("bdia.schedulers.flow_match", "BDIAFlowScheduler"),
    "editing": ("bdia.editing", None),
    "schedulers": ("bdia.schedulers", None),
    "datasets": ("bdia.datasets", None),
    "io": ("bdia.io", None),
    "pipelines": ("bdia.pipelines", None),  # deprecated: the old home of editing, schedulers, io and datasets
    "analytic": ("bdia.analytic", None),
    "digits": ("bdia.digits", None),
    "scenes": ("bdia.scenes", None),
    "nulltext": ("bdia.nulltext", None),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        return mod if attr is None else getattr(mod, attr)
    raise AttributeError(f"module 'bdia' has no attribute {name!r}")


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
