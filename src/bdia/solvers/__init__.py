"""Samplers with their inverses. Each declares ``order``, ``nfe_per_step`` and ``exact_inversion``."""

from .base import Inversion, InversionPrecisionWarning, NonFiniteError, Solver, ddim_transition
from .bdia import BDIA, belm_gammas
from .ddim import DDIM
from .edict import EDICT
from .heun import Heun

SOLVERS: dict[str, type[Solver]] = {"ddim": DDIM, "bdia": BDIA, "edict": EDICT, "heun": Heun}

__all__ = ["BDIA", "DDIM", "EDICT", "Heun", "Inversion", "InversionPrecisionWarning", "NonFiniteError", "Solver",
           "SOLVERS", "belm_gammas", "ddim_transition"]
