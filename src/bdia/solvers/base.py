"""What every sampler shares: the Inversion record, model evaluation, input checks, the DDIM transition.

A solver is an object that declares what it is (``name``, ``order``, ``nfe_per_step``,
``exact_inversion``) and implements two things over the canonical eps contract:
``invert(model, x0, grid) -> Inversion`` and ``sample(model, start, grid) -> x``, where ``start`` is
plain noise (generation) or an :class:`Inversion` (reconstruction, or editing with another model).
The solver state is kept in ``state_dtype`` (float64 by default) whatever dtype the model runs in.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import torch

from ..models import model_dtype as _declared_dtype
from ..schedule import Grid

__all__ = ["Inversion", "Solver", "ddim_transition", "InversionPrecisionWarning", "NonFiniteError"]

# callback(step, num_steps, latents) is called after every step; step counts from 1.
Callback = Callable[[int, int, tuple], None]


class InversionPrecisionWarning(UserWarning):
    """Inversion will amplify rounding error strongly (docs/math.md section 4, Stability)."""


class NonFiniteError(FloatingPointError):
    """The model returned NaN or inf, or the state stopped being finite."""


def ddim_transition(z: torch.Tensor, eps: torch.Tensor, grid: Grid, i: int, j: int) -> torch.Tensor:
    """D_{i->j}(z) = alpha_j (z - sigma_i eps) / alpha_i + sigma_j eps: an Euler step in (xbar, lambda).

    The single definition of the DDIM move; forward (j = i+1) and backward (j = i-1) moves of every
    solver use it. Written as a z + b eps with a = alpha_j / alpha_i, b = sigma_j - a sigma_i.
    """
    a_i, a_j = float(grid.alphas[i]), float(grid.alphas[j])
    a = a_j / a_i
    b = float(grid.sigmas[j]) - a * float(grid.sigmas[i])
    return a * z + b * eps


@dataclass
class Inversion:
    """The result of ``solver.invert``: everything ``solver.sample`` needs to regenerate the input.

    ``latents`` are noisiest first: BDIA (z_0, z_1); EDICT (x, y); DDIM (z_0,). ``solver`` and
    ``grid`` describe what produced them; sampling with another solver or grid is refused.
    """

    latents: tuple[torch.Tensor, ...]
    nfe: int
    solver: dict[str, Any]
    grid: dict[str, list[float]]
    input_dtype: torch.dtype = torch.float32
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def noise(self) -> torch.Tensor:
        """The noisiest latent z_0 (for EDICT, chain x)."""
        return self.latents[0]

    def __repr__(self) -> str:
        shapes = ", ".join(str(tuple(z.shape)) for z in self.latents)
        return f"Inversion(solver={self.solver.get('name')}, latents=[{shapes}], nfe={self.nfe})"


class _Evaluator:
    """Calls the model in its own dtype on a state kept in the solver's dtype; counts NFE; checks output."""

    def __init__(self, model: Callable, grid: Grid, state_dtype: torch.dtype, run_dtype: torch.dtype, check_finite: bool):
        self.model, self.grid = model, grid
        self.state_dtype, self.run_dtype = state_dtype, run_dtype
        self.check_finite = check_finite
        self.nfe = 0
        self.phase = "sampling"

    def __call__(self, z: torch.Tensor, i: int) -> torch.Tensor:
        t = self.grid.timesteps[i].to(z.device).expand(z.shape[0])
        out = self.model(z.to(self.run_dtype), t)
        self.nfe += 1
        where = f"{self.phase} step at grid point {i} (timestep {self.grid.timesteps[i].item():g})"
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the model returned {type(out).__name__}, expected a tensor ({where})")
        if out.shape != z.shape:
            raise ValueError(f"the model returned shape {tuple(out.shape)} for input {tuple(z.shape)} ({where})")
        if out.device != z.device:
            raise ValueError(f"the model returned a tensor on {out.device} for input on {z.device} ({where})")
        if self.check_finite and not torch.isfinite(out).all():
            raise NonFiniteError(
                f"the model returned NaN or inf at the {where}; check the model's dtype "
                "(float16 overflows easily) and that the input is in the model's range"
            )
        return out.to(self.state_dtype)


def _check_tensor(x: Any, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor, got {x.dtype}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"{what} must have a non-empty batch dimension first, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contains NaN or inf")
    return x


def _check_grid(grid: Any) -> Grid:
    if not isinstance(grid, Grid):
        raise TypeError(f"grid must be a bdia.Grid (from Schedule.grid(N)), got {type(grid).__name__}")
    return grid


class Solver(ABC):
    """Base class of the samplers. Subclasses set the class attributes and the four hooks below."""

    name: ClassVar[str]
    order: ClassVar[int]  # global order of accuracy of generation
    nfe_per_step: ClassVar[int]
    exact_inversion: ClassVar[bool]
    num_latents: ClassVar[int]

    def __init__(self, *, state_dtype: torch.dtype = torch.float64, model_dtype: torch.dtype | None = None,
                 check_finite: bool = True):
        if state_dtype not in (torch.float32, torch.float64):
            raise ValueError(f"state_dtype must be torch.float32 or torch.float64, got {state_dtype}")
        if model_dtype is not None and not (isinstance(model_dtype, torch.dtype) and model_dtype.is_floating_point):
            raise ValueError(f"model_dtype must be a floating torch.dtype or None, got {model_dtype!r}")
        self.state_dtype = state_dtype
        self.model_dtype = model_dtype
        self.check_finite = check_finite

    # ----- what a subclass provides -------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """The parameters that define the solver's map (compared when an Inversion is reused)."""
        return {}

    @abstractmethod
    def _generate(self, ev: _Evaluator, latents: tuple[torch.Tensor, ...], grid: Grid, callback: Callback | None) -> torch.Tensor:
        """Run generation from ``latents`` (noisiest first) to the clean end."""

    @abstractmethod
    def _init_from_noise(self, ev: _Evaluator, noise: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, ...]:
        """Latents to start generation from plain noise z_0 (may spend model evaluations)."""

    @abstractmethod
    def _invert(self, ev: _Evaluator, x0: torch.Tensor, grid: Grid, callback: Callback | None) -> tuple[torch.Tensor, ...]:
        """Run the clean state back to latents."""

    def _check_grid_params(self, grid: Grid, inverting: bool) -> None:
        """Refuse parameters that do not fit this grid (e.g. a gamma sequence of the wrong length)."""

    # ----- public API ------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {"name": self.name, **self.params()}

    def invert(self, model: Callable, x0: torch.Tensor, grid: Grid, *, callback: Callback | None = None) -> Inversion:
        """Map a clean sample ``x0`` (B, ...) to latents at the noise end of ``grid``."""
        x0 = _check_tensor(x0, "x0")
        grid = _check_grid(grid)
        self._check_grid_params(grid, inverting=True)
        ev = self._evaluator(model, grid, x0.dtype)
        ev.phase = "inversion"
        latents = self._invert(ev, x0.to(self.state_dtype), grid, callback)
        return Inversion(tuple(latents), ev.nfe, self.config(), grid.fingerprint(), input_dtype=x0.dtype)

    def sample(self, model: Callable, start: torch.Tensor | Inversion, grid: Grid, *,
               callback: Callback | None = None) -> torch.Tensor:
        """Generate from plain noise ``start`` (B, ...), or regenerate from an :class:`Inversion`.

        Returns the clean end of the grid in ``state_dtype``. With an Inversion and the model used to
        invert it, this is the reconstruction (exact up to rounding when ``exact_inversion``); with
        another model (condition, guidance) it is an edit.
        """
        grid = _check_grid(grid)
        self._check_grid_params(grid, inverting=False)
        if isinstance(start, Inversion):
            latents = self._check_inversion(start, grid)
            ev = self._evaluator(model, grid, start.input_dtype)
            return self._generate(ev, latents, grid, callback)
        noise = _check_tensor(start, "noise")
        ev = self._evaluator(model, grid, noise.dtype)
        latents = self._init_from_noise(ev, noise.to(self.state_dtype), grid)
        return self._generate(ev, latents, grid, callback)

    # ----- helpers ---------------------------------------------------------------------------------
    def _evaluator(self, model: Callable, grid: Grid, input_dtype: torch.dtype) -> _Evaluator:
        if not callable(model):
            raise TypeError(f"model must be callable as model(x, t) -> eps, got {type(model).__name__}")
        run_dtype = self.model_dtype or _declared_dtype(model) or input_dtype
        return _Evaluator(model, grid, self.state_dtype, run_dtype, self.check_finite)

    def _check_inversion(self, inv: Inversion, grid: Grid) -> tuple[torch.Tensor, ...]:
        mine = self.config()
        if inv.solver != mine:
            raise ValueError(
                f"this Inversion was made by {inv.solver} but is being sampled with {mine}; "
                "use the same solver and parameters to reconstruct or edit it"
            )
        if not grid.matches(inv.grid):
            n = len(inv.grid.get("timesteps", []))
            raise ValueError(
                f"this Inversion was made on a different grid ({n} steps, timesteps "
                f"{_short(inv.grid.get('timesteps', []))}) than the one given ({grid.num_steps} steps, timesteps "
                f"{_short(grid.timesteps.tolist())}); pass the grid used for inversion"
            )
        if len(inv.latents) != self.num_latents:
            raise ValueError(f"{self.name} needs {self.num_latents} latents, the Inversion holds {len(inv.latents)}")
        first = inv.latents[0]
        for k, z in enumerate(inv.latents):
            _check_tensor(z, f"Inversion.latents[{k}]")
            if z.shape != first.shape or z.device != first.device:
                raise ValueError(
                    f"Inversion latents disagree: {tuple(first.shape)} on {first.device} vs "
                    f"{tuple(z.shape)} on {z.device}"
                )
        return tuple(z.to(self.state_dtype) for z in inv.latents)

    def _check_state(self, z: torch.Tensor, i: int, phase: str) -> torch.Tensor:
        if self.check_finite and not torch.isfinite(z).all():
            raise NonFiniteError(f"the {self.name} state became NaN or inf at grid point {i} during {phase}")
        return z

    def __repr__(self) -> str:
        ps = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({ps})"


def _short(ts: Sequence[float]) -> str:
    ts = [f"{t:g}" for t in ts]
    return "[" + ", ".join(ts if len(ts) <= 4 else ts[:2] + ["...", ts[-1]]) + "]"


def amplification(gammas: Sequence[float]) -> float:
    """Lower bound on how much inversion amplifies rounding: prod(1 / gamma_i) (docs/math.md, Stability)."""
    return math.exp(-sum(math.log(g) for g in gammas))
