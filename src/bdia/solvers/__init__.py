"""Samplers with their inverses: one step protocol (base.py), one driver, a step and its inverse per method."""

from .base import (Evaluator, Inversion, InversionPrecisionWarning, NonFiniteError, Solution, Solver, ddim_transition,
                   drive)
from .bdia import BDIA, BDIAState, belm_gammas
from .ddim import DDIM, DDIMState, Heun
from .edict import EDICT, EDICTState

SOLVERS: dict[str, type[Solver]] = {"ddim": DDIM, "bdia": BDIA, "edict": EDICT, "heun": Heun}

__all__ = ["BDIA", "BDIAState", "DDIM", "DDIMState", "EDICT", "EDICTState", "Evaluator", "Heun", "Inversion",
           "InversionPrecisionWarning", "NonFiniteError", "SOLVERS", "Solution", "Solver", "belm_gammas",
           "ddim_transition", "drive"]
