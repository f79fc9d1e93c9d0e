"""The step protocol every sampler implements, and the one driver that runs it in both directions.

A solver is an object that declares what it is (``name``, ``nfe_per_step``, ``exact_inversion``,
``order_on(grid)``) and defines four moves over a named state (docs/math.md sections 3-6):

- ``init(ev, noise, grid)``: the state at grid position ``warmup`` from plain noise at position 0;
- ``init_inverse(ev, x0, grid)``: the state at position N (the clean end) from a clean sample;
- ``step(ev, state, grid, i)``: position i -> i + 1 (generation);
- ``unstep(ev, state, grid, i)``: position i + 1 -> i, beside ``step`` and built from the same
  coefficients: its exact inverse when ``exact_inversion``, an approximation otherwise.

A state is a NamedTuple of tensors (``BDIAState(z_prev, z)``, ``EDICTState(x, y)``, ...); its
position is the grid index of its newest point. :func:`drive` runs ``step`` over i = warmup..N-1 or
``unstep`` over i = N-1..warmup, counts model evaluations, checks finiteness without stalling the
device, and calls ``callback(index, sigma, state)`` after each move with the new position, its EDM
sigma (sigma/alpha, 0 at a clean end) and the state. ``invert`` and ``sample`` are thin wrappers.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import torch

from ..models import model_dtype as _declared_dtype
from ..schedule import Grid

__all__ = [
    "Inversion",
    "Solution",
    "Solver",
    "ddim_transition",
    "transition_coefficients",
    "drive",
    "Evaluator",
    "InversionPrecisionWarning",
    "NonFiniteError",
]

# callback(index, sigma, state): called after every move; index is the new grid position
# (0 = noise end, N = clean end), sigma its EDM noise level sigma/alpha, state the solver's NamedTuple
# (typed Any: a callback written for one solver annotates that solver's state, e.g. DDIMState).
Callback = Callable[[int, float, Any], None]

# The NamedTuple a solver's moves carry (BDIAState, EDICTState, ...): ``Solver[StateT]`` ties a solver to it.
StateT = TypeVar("StateT", bound=tuple[Any, ...])

# between(index, state) -> state: called after every move, before the callback; it may return a changed state
# (an editing control blending two branches). The returned state must be the solver's NamedTuple.
Between = Callable[[int, Any], Any]

# Finiteness is accumulated on the device and read back every this many model evaluations (and at the
# end), so a GPU is not stalled by a host sync per step.
FINITE_CHECK_EVERY = 10

# Warn when the amplification of rounding times the state's machine epsilon exceeds this relative error.
AMPLIFIED_ROUNDING_WARN = 1e-4


class InversionPrecisionWarning(UserWarning):
    """Inversion will amplify rounding error strongly (docs/math.md section 4, Stability)."""


class NonFiniteError(FloatingPointError):
    """The model returned NaN or inf, or the state stopped being finite."""


def move_coefficients(
    src: tuple[float, float], dst: tuple[float, float], velocity: bool = False
) -> tuple[float, float]:
    """(a, b) of the DDIM move a z + b p between two (alpha, sigma) levels (docs/math.md sections 3 and 9).

    Holding eps (p = eps): a = alpha_dst / alpha_src, b = sigma_dst - a sigma_src. Holding the flow
    velocity (p = v, alpha + sigma = 1): the same move in its x0_hat form is a = 1, b = t_dst - t_src,
    finite at t = 1 where alpha = 0.
    """
    if velocity:
        return 1.0, dst[1] - src[1]
    a = dst[0] / src[0]
    return a, dst[1] - a * src[1]


def transition_coefficients(grid: Grid, i: int, j: int) -> tuple[float, float]:
    """(a, b) with D_{i->j}(z) = a z + b p, p the grid's held prediction (:func:`move_coefficients`)."""
    return move_coefficients(
        (float(grid.alphas[i]), float(grid.sigmas[i])),
        (float(grid.alphas[j]), float(grid.sigmas[j])),
        grid.prediction == "velocity",
    )


def ddim_transition(z: torch.Tensor, eps: torch.Tensor, grid: Grid, i: int, j: int) -> torch.Tensor:
    """D_{i->j}(z) = alpha_j (z - sigma_i eps) / alpha_i + sigma_j eps: an Euler step in (xbar, lambda).

    The single definition of the DDIM move; forward (j = i+1) and backward (j = i-1) moves of every
    solver use it. Written as a z + b eps (:func:`transition_coefficients`). On a velocity grid ``eps``
    is the flow velocity v and the move is Euler on dx/dt = v: z + (t_j - t_i) v (docs/math.md section 9).
    """
    a, b = transition_coefficients(grid, i, j)
    return a * z + b * eps


@dataclass
class Inversion:
    """The result of ``solver.invert``: everything ``solver.sample`` needs to regenerate the input.

    ``latents`` are the fields of the solver's state at its start position, noisiest first: BDIA
    (z_0, z_1); EDICT (x, y); DDIM (z_0,). ``solver`` and ``grid`` describe what produced them;
    sampling with another solver or grid is refused.
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


@dataclass
class Solution:
    """What :meth:`Solver.solve` returns: the final state, the clean sample it holds, and the NFE spent."""

    state: tuple[Any, ...]
    x: torch.Tensor
    nfe: int


class Evaluator:
    """Calls the model in its own dtype on a state kept in the solver's dtype; counts NFE; checks output.

    ``ev(z, i)`` is eps at (z, timesteps[i]) (the flow velocity v on a velocity grid). Shape, type and
    device are checked on the host (no sync); finiteness is accumulated as a device flag and read every
    ``FINITE_CHECK_EVERY`` calls.
    """

    def __init__(
        self,
        model: Callable,
        grid: Grid,
        state_dtype: torch.dtype,
        run_dtype: torch.dtype,
        check_finite: bool,
        phase: str,
    ):
        self.model, self.grid = model, grid
        self.state_dtype, self.run_dtype = state_dtype, run_dtype
        self.check_finite, self.phase = check_finite, phase
        self.nfe = 0
        self._bad: torch.Tensor | None = None  # device flag: some output was not finite
        self._first_bad: torch.Tensor | None = None  # the grid point where that first happened
        self._state_bad: torch.Tensor | None = None
        self._first_state_bad: torch.Tensor | None = None

    def _where(self, i: int) -> str:
        return f"{self.phase} step at grid point {i} (timestep {float(self.grid.timesteps[i]):g})"

    def __call__(self, z: torch.Tensor, i: int) -> torch.Tensor:
        return self._eval(z, self.grid.timesteps[i].to(z.device).expand(z.shape[0]), i)

    def at_lambda(self, z: torch.Tensor, lam: float, i: int) -> torch.Tensor:
        """eps at state z (scaled for noise level ``lam``, see ``Grid.at``) between grid points.

        ``i`` names the step.
        """
        t = torch.tensor(self.grid.at(lam)[2], dtype=torch.float64)  # fractional model time
        return self._eval(z, t.to(z.device).expand(z.shape[0]), i)

    def _eval(self, z: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        x = z.to(self.run_dtype)
        version = x._version  # autograd's in-place counter: a free check that the model left its input alone
        out = self.model(x, t)
        self.nfe += 1
        if x._version != version and x.data_ptr() == z.data_ptr():
            raise RuntimeError(
                f"the model changed its input in place ({self._where(i)}); the solver's state is "
                "that tensor, so the result would be wrong: clone the input inside the model"
            )
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the model returned {type(out).__name__}, expected a tensor ({self._where(i)})")
        if out.shape != z.shape:
            raise ValueError(
                f"the model returned shape {tuple(out.shape)} for input {tuple(z.shape)} ({self._where(i)})"
            )
        if out.device != z.device:
            raise ValueError(f"the model returned a tensor on {out.device} for input on {z.device} ({self._where(i)})")
        if self.check_finite:
            self._bad, self._first_bad = _flag(out, i, self._bad, self._first_bad)
            if self.nfe % FINITE_CHECK_EVERY == 0:
                self.raise_if_not_finite()
        return out.to(self.state_dtype)

    def watch(self, state: tuple, index: int) -> None:
        """Fold the state's finiteness at grid position ``index`` into the deferred check."""
        if self.check_finite:
            for z in state:
                self._state_bad, self._first_state_bad = _flag(z, index, self._state_bad, self._first_state_bad)

    def raise_if_not_finite(self) -> None:
        """The one host sync: raise NonFiniteError naming the first grid point that went bad."""
        if self._bad is not None and self._first_bad is not None and bool(self._bad):
            i = int(self._first_bad)
            raise NonFiniteError(
                f"the model returned NaN or inf at the {self._where(i)}; check the model's dtype "
                "(float16 overflows easily) and that the input is in the model's range"
            )
        if self._state_bad is not None and self._first_state_bad is not None and bool(self._state_bad):
            raise NonFiniteError(
                f"the solver state became NaN or inf at grid point {int(self._first_state_bad)} during {self.phase}; "
                "inversion amplifies errors by 1/gamma per step: use gamma closer to 1, fewer steps or float64 state"
            )


def _flag(
    x: torch.Tensor, i: int, bad: torch.Tensor | None, first: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(bad, first) folded with x at grid point i; the two are None together (nothing seen yet)."""
    now = ~torch.isfinite(x).all()
    if bad is None or first is None:
        return now, torch.where(now, i, -1)
    return bad | now, torch.where(bad, first, torch.where(now, i, -1))


def drive(
    solver: Solver[StateT],
    ev: Evaluator,
    state: StateT,
    grid: Grid,
    direction: str,
    callback: Callback | None = None,
    between: Between | None = None,
) -> StateT:
    """The one sampling loop: ``step`` from position ``warmup`` to N, or ``unstep`` from N back to ``warmup``.

    ``between(index, state)`` sees the whole state after each move and returns the state to go on with
    (editing controls blend branches there); ``callback`` then sees that state.
    """
    n = grid.num_steps
    lambdas = grid.lambdas.tolist()
    if direction == "generate":
        moves = ((solver.step, i, i + 1) for i in range(solver.warmup, n))
    elif direction == "invert":
        moves = ((solver.unstep, i, i) for i in range(n - 1, solver.warmup - 1, -1))
    else:
        raise ValueError(f"direction must be 'generate' or 'invert', got {direction!r}")
    for move, i, reached in moves:
        state = move(ev, state, grid, i)
        if between is not None:
            state = _checked_between(between(reached, state), state)
        ev.watch(state, reached)
        if callback is not None:
            callback(reached, lambdas[reached], state)
    ev.raise_if_not_finite()
    return state


def _checked_between(new: Any, old: StateT) -> StateT:
    """The state a ``between`` hook returned: the same NamedTuple type with tensors of the same shapes."""
    if type(new) is not type(old) or any(a.shape != b.shape for a, b in zip(new, old)):
        raise TypeError(
            f"a between-steps hook must return the solver's {type(old).__name__} with unchanged shapes, "
            f"got {type(new).__name__}"
        )
    return new


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


# Specialisations register themselves here, so that this driver imports none of them:
# bitexact.py adds the fixed-point twin of each exact method, reversible.py the "reversible" backprop drive.
BIT_EXACT_TWINS: dict[type, type] = {}
BACKPROP_DRIVES: dict[str, Callable[..., Any]] = {}  # each returns the final state, of the solver's StateT
BACKPROP_MODES = ("autograd", "reversible")


class Solver(ABC, Generic[StateT]):
    """Base class of the samplers: the step protocol (see the module docstring) and the public API.

    Generic in the NamedTuple ``StateT`` its moves carry; ``State`` is that class (typed ``type[Any]``:
    a NamedTuple's constructor takes its own fields, which no signature over ``StateT`` can state).
    """

    name: ClassVar[str]
    nfe_per_step: ClassVar[int]
    exact_inversion: ClassVar[bool]
    State: ClassVar[type[Any]]  # the NamedTuple of this solver's state
    warmup: ClassVar[int] = 0  # positions that ``init`` covers (BDIA: its first plain step)
    bit_exact: ClassVar[bool] = False  # integer fixed-point state (bdia.solvers.bitexact)

    def __new__(cls, *args: Any, bit_exact: bool = False, **kwargs: Any):
        """``bit_exact=True`` builds the method's fixed-point twin (:mod:`bdia.solvers.bitexact`)."""
        if bit_exact and not cls.bit_exact:
            cls = bit_exact_twin(cls)
        return super().__new__(cls)

    def __init__(
        self,
        *,
        state_dtype: torch.dtype = torch.float64,
        model_dtype: torch.dtype | None = None,
        check_finite: bool = True,
        bit_exact: bool = False,
    ):
        if state_dtype not in (torch.float32, torch.float64):
            raise ValueError(f"state_dtype must be torch.float32 or torch.float64, got {state_dtype}")
        if model_dtype is not None and not (isinstance(model_dtype, torch.dtype) and model_dtype.is_floating_point):
            raise ValueError(f"model_dtype must be a floating torch.dtype or None, got {model_dtype!r}")
        self.state_dtype = state_dtype
        self.model_dtype = model_dtype
        self.check_finite = check_finite

    # ----- what a method declares ------------------------------------------------------------------
    @property
    def num_latents(self) -> int:
        return len(self.State._fields)

    def order_on(self, grid: Grid) -> int:
        """Global order of accuracy of generation on ``grid`` (what the order test measures)."""
        return self.order

    @property
    def order(self) -> int:
        """The order this method has on every grid (see :meth:`order_on` for a given grid)."""
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """The parameters that define the solver's map (compared when an Inversion is reused)."""
        return {}

    def check_grid(self, grid: Grid, inverting: bool) -> None:
        """Refuse parameters that do not fit this grid (e.g. a gamma sequence of the wrong length)."""

    # ----- the step protocol -------------------------------------------------------------------------
    @abstractmethod
    def init(self, ev: Evaluator, noise: torch.Tensor, grid: Grid) -> StateT:
        """The state at position ``warmup`` from plain noise at position 0."""

    @abstractmethod
    def init_inverse(self, ev: Evaluator, x0: torch.Tensor, grid: Grid) -> StateT:
        """The state at position N from a clean sample."""

    @abstractmethod
    def step(self, ev: Evaluator, state: StateT, grid: Grid, i: int) -> StateT:
        """Position i -> i + 1."""

    @abstractmethod
    def unstep(self, ev: Evaluator, state: StateT, grid: Grid, i: int) -> StateT:
        """Position i + 1 -> i: the inverse of :meth:`step` (exact when ``exact_inversion``)."""

    @abstractmethod
    def output(self, state: StateT) -> torch.Tensor:
        """The clean sample a state at position N holds."""

    # ----- public API ------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {"name": self.name, **self.params()}

    def evaluator(self, model: Callable, grid: Grid, input_dtype: torch.dtype, phase: str) -> Evaluator:
        if not callable(model):
            raise TypeError(f"model must be callable as model(x, t) -> eps, got {type(model).__name__}")
        run_dtype = self.model_dtype or _declared_dtype(model) or input_dtype
        return Evaluator(model, grid, self.state_dtype, run_dtype, self.check_finite, phase)

    def invert(
        self,
        model: Callable,
        x0: torch.Tensor,
        grid: Grid,
        *,
        callback: Callback | None = None,
        backprop: str = "autograd",
        params: Sequence[torch.Tensor] | None = None,
    ) -> Inversion:
        """Map a clean sample ``x0`` (B, ...) to latents at the noise end of ``grid``.

        ``backprop="reversible"`` (exact solvers): gradients by reversal in memory independent of N
        (:mod:`bdia.solvers.reversible`), to ``x0``, the model's parameters and ``params``.
        """
        _check_backprop(backprop, params)
        x0 = _check_tensor(x0, "x0")
        grid = _check_grid(grid)
        self.check_grid(grid, inverting=True)
        ev = self.evaluator(model, grid, x0.dtype, "inversion")
        state = self.init_inverse(ev, x0.to(self.state_dtype), grid)
        state = self._drive(ev, state, grid, "invert", callback, backprop, params)
        return Inversion(tuple(state), ev.nfe, self.config(), grid.fingerprint(), input_dtype=x0.dtype)

    def solve(
        self,
        model: Callable,
        start: torch.Tensor | Inversion,
        grid: Grid,
        *,
        callback: Callback | None = None,
        backprop: str = "autograd",
        params: Sequence[torch.Tensor] | None = None,
        between: Between | None = None,
    ) -> Solution:
        """Generate from noise ``start`` or regenerate from an :class:`Inversion`; returns state, sample and NFE.

        ``backprop`` and ``params`` as in :meth:`invert`; ``between(index, state) -> state`` runs after every
        move (see :func:`drive`; plain autograd only).
        """
        _check_backprop(backprop, params)
        if between is not None and backprop != "autograd":
            raise ValueError("between= hooks run in the plain loop; use backprop='autograd' with them")
        grid = _check_grid(grid)
        self.check_grid(grid, inverting=False)
        if isinstance(start, Inversion):
            state = self._check_inversion(start, grid)
            ev = self.evaluator(model, grid, start.input_dtype, "sampling")
        else:
            noise = _check_tensor(start, "noise")
            ev = self.evaluator(model, grid, noise.dtype, "sampling")
            state = self.init(ev, noise.to(self.state_dtype), grid)
            ev.watch(state, self.warmup)
            if callback is not None and self.warmup:
                callback(self.warmup, float(grid.lambdas[self.warmup]), state)
        if between is not None:
            state = drive(self, ev, state, grid, "generate", callback, between)
        else:
            state = self._drive(ev, state, grid, "generate", callback, backprop, params)
        return Solution(state, self.output(state), ev.nfe)

    def sample(
        self,
        model: Callable,
        start: torch.Tensor | Inversion,
        grid: Grid,
        *,
        callback: Callback | None = None,
        backprop: str = "autograd",
        params: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Generate from plain noise ``start`` (B, ...), or regenerate from an :class:`Inversion`.

        Returns the clean end of the grid in ``state_dtype`` (use :meth:`solve` for the NFE too). With
        an Inversion and the model used to invert it, this is the reconstruction (exact up to rounding
        when ``exact_inversion``); with another model (condition, guidance) it is an edit.
        ``backprop="reversible"``: gradients by reversal, memory independent of N (see :meth:`invert`).
        """
        return self.solve(model, start, grid, callback=callback, backprop=backprop, params=params).x

    # ----- helpers ---------------------------------------------------------------------------------
    def _drive(
        self,
        ev: Evaluator,
        state: StateT,
        grid: Grid,
        direction: str,
        callback: Callback | None,
        backprop: str,
        params: Sequence[torch.Tensor] | None,
    ) -> StateT:
        if backprop != "autograd":
            return BACKPROP_DRIVES[backprop](self, ev, state, grid, direction, callback, params)
        return drive(self, ev, state, grid, direction, callback)

    def _check_inversion(self, inv: Inversion, grid: Grid) -> StateT:
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
        return self.State(*(z.to(self.state_dtype) for z in inv.latents))

    def __repr__(self) -> str:
        ps = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({ps})"


def _check_backprop(backprop: str, params: Any) -> None:
    """Refuse an unknown mode, or ``params`` without reversal, with a one-line fix."""
    if backprop not in BACKPROP_MODES:
        raise ValueError(f"backprop must be one of {BACKPROP_MODES}, got {backprop!r}")
    if params is not None and backprop != "reversible":
        raise ValueError(
            "params= names the tensors a reversible gradient flows to; it needs backprop='reversible' "
            "(plain autograd follows every tensor by itself)"
        )


def bit_exact_twin(cls: type) -> type:
    """The fixed-point class behind ``cls(..., bit_exact=True)`` (registered by :mod:`bdia.solvers.bitexact`)."""
    if cls not in BIT_EXACT_TWINS:
        names = sorted(c.__name__ for c in BIT_EXACT_TWINS)
        raise ValueError(
            f"bit_exact=True exists for {names}; {cls.__name__} has no exact inverse step to make bit-exact"
            if not getattr(cls, "exact_inversion", False)
            else f"bit_exact=True exists for {names}, not yet for {cls.__name__}"
        )
    return BIT_EXACT_TWINS[cls]


def _short(ts: Sequence[float]) -> str:
    text = [f"{t:g}" for t in ts]
    return "[" + ", ".join(text if len(text) <= 4 else text[:2] + ["...", text[-1]]) + "]"


def log_amplification(factors: Sequence[float]) -> float:
    """log of prod(1 / f_i): how much inversion amplifies rounding (docs/math.md section 4, Stability).

    In log space so that tiny factors (gamma = 1e-300, or 0.001 over 200 steps) do not overflow.
    """
    return -sum(math.log(f) for f in factors)


def warn_amplified_rounding(
    what: str, factors: Sequence[float], num_steps: int, state_dtype: torch.dtype, fix: str, bound: str = "at least"
) -> None:
    """Warn (InversionPrecisionWarning) when prod(1/f) * eps(state dtype) exceeds AMPLIFIED_ROUNDING_WARN."""
    log_amp = log_amplification(factors)
    log_expected = log_amp + math.log(torch.finfo(state_dtype).eps)
    if log_expected <= math.log(AMPLIFIED_ROUNDING_WARN):
        return
    if state_dtype != torch.float64:
        fix += ", or state_dtype=torch.float64"
    warnings.warn(
        f"{what} inversion amplifies rounding error by {bound} {_exp10(log_amp)}x over {num_steps} steps; with "
        f"{state_dtype} state expect a relative round-trip error around {_exp10(log_expected)}. Use {fix}",
        InversionPrecisionWarning,
        stacklevel=4,
    )


def _exp10(log_value: float) -> str:
    """exp(log_value) formatted without overflowing: 1.2e+05, or 10^1234.5 beyond float range."""
    if log_value < 700:
        return f"{math.exp(log_value):.3g}"
    return f"10^{log_value / math.log(10):.1f}"


def amplification(factors: Sequence[float]) -> float:
    """prod(1 / f_i) as a float (inf where it overflows); see :func:`log_amplification`."""
    log_amp = log_amplification(factors)
    return math.exp(log_amp) if log_amp < 709 else math.inf
