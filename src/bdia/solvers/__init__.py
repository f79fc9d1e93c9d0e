"""Samplers with their inverses: one step protocol (base.py), one driver, a step and its inverse per method."""

from . import bitexact, reversible  # noqa: F401,E402  (they register with the driver in base.py)
from .base import (
    Evaluator,
    Inversion,
    InversionPrecisionWarning,
    NonFiniteError,
    Solution,
    Solver,
    ddim_transition,
    drive,
)
from .bdia import BDIA, BDIAState, belm_gammas
from .ddim import DDIM, DDIMState, Heun
from .edict import EDICT, EDICTState
from .registry import SOLVERS, make_solver, solver_parameters
from .rex import Rex, RexState

__all__ = [
    "BDIA",
    "BDIAState",
    "DDIM",
    "DDIMState",
    "EDICT",
    "EDICTState",
    "Evaluator",
    "Heun",
    "Inversion",
    "InversionPrecisionWarning",
    "NonFiniteError",
    "Rex",
    "RexState",
    "SOLVERS",
    "Solution",
    "Solver",
    "belm_gammas",
    "ddim_transition",
    "drive",
    "make_solver",
    "solver_parameters",
]
