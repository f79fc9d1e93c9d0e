# The fixed-point twins subclass the float method they round (so that BDIA(bit_exact=True) is a BDIA, built by
# Solver.__new__, with its parameters and checks) but carry an integer state with a buffer: their moves take and
# return BitExactBDIAState / BitExactEDICTState where the float class has BDIAState / EDICTState. That narrowing is
# the design (drive() only hands a solver the states its own init made), so mypy's override check is off here.
# mypy: disable-error-code="override"
"""Bit-exact BDIA and EDICT: integer fixed-point state with an information buffer (docs/math.md section 11).

``bdia.BDIA(gamma, bit_exact=True)`` and ``bdia.EDICT(p, bit_exact=True)`` keep every latent as an
integer q = z * 2^k (k = ``FRACTION_BITS``) and round each model-dependent term to the same grid, so
that a step adds an integer that its inverse subtracts again. The multiplications by gamma (BDIA) and
by a = alpha_{i+1} / alpha_i and p (EDICT), with the factor as a fraction n / d, go through MacKay et
al.'s reversible multiplication (NeurIPS 2018): the digits a multiplication by n/d would drop are
pushed into a per-element arbitrary-precision buffer B and the inverse pops them back. Then

    solver.sample(model, solver.invert(model, x0, grid), grid)  is bit-identical to x0

for float32 and float64 inputs, any gamma in (0, 1] and any number of steps, provided the model is
deterministic: the same input must give the same output bits in both directions (same batch, same
device; on a GPU use ``torch.use_deterministic_algorithms(True)``). The bits of x0 below 2^-k are kept
as an exact float residual beside the state and added back at the end.

What it is not: a cure for BDIA's instability. Inversion with gamma < 1 amplifies the oscillating
mode by 1/gamma per step in exact arithmetic too (docs/math.md section 4, Stability), so at gamma =
0.5 over 50 steps the latents reach ~1e14 and at gamma = 0.1 over 200 steps ~1e200: they are
meaningless as noise, yet regenerate x0 exactly. The model sees the latent clipped to
+-``MODEL_INPUT_LIMIT`` (deterministic, keeps a float32 network finite); beyond ~1e290 the float view
overflows and inversion stops with an error.

Representation and speed: integers and buffers are numpy object arrays of Python ints (unbounded,
exact, CPU only). Every step costs a few Python-int operations per element on top of the model call,
about a microsecond each: fine for the digits model (256 values per image), seconds per step for a
64x64x4 latent batch. The buffer grows by about log2(d/n) bits per element per multiplication;
``buffer_bits(state)`` measures it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from fractions import Fraction
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch

from ..schedule import Grid
from .base import (
    BIT_EXACT_TWINS,
    Evaluator,
    Inversion,
    InversionPrecisionWarning,
    NonFiniteError,
    Solution,
    Solver,
    _check_grid,
    _check_tensor,
    bit_exact_twin,
    ddim_transition,
    transition_coefficients,
)
from .bdia import BDIA
from .edict import EDICT

__all__ = ["BitExactBDIA", "BitExactEDICT", "bit_exact_twin", "buffer_bits", "reversible_scale", "to_fraction"]

# The fixed-point grid 2^-80 holds a float64 term's bits down to 2^-80; and a buffered multiplication by
# n/d is off by less than n units (it adds B mod n where the exact product has (q mod d) n/d), so with
# n < 2^33 it errs below 2^-47. Python ints make the extra bits free of overflow.
FRACTION_BITS = 80
MAX_DENOMINATOR = 2**32  # gamma, p, a become n/d within ~1e-19 (0.96 -> 24/25, 0.93 -> 93/100)
MODEL_INPUT_LIMIT = 1e4  # the model sees the latent clipped to this, so a float32 network stays finite

_to_int = np.frompyfunc(int, 1, 1)


def to_fraction(x: float) -> tuple[int, int]:
    """(n, d) with n / d the closest fraction to ``x`` whose denominator is at most MAX_DENOMINATOR."""
    f = Fraction(x).limit_denominator(MAX_DENOMINATOR)
    return f.numerator, f.denominator


def reversible_scale(q: np.ndarray, buffer: np.ndarray, n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Multiply integers q by n/d exactly reversibly (MacKay et al. 2018); (n, d) -> (d, n) is the inverse.

    B <- B d + (q mod d);  q <- (q div d) n;  q <- q + (B mod n);  B <- B div n   (floor div, mod >= 0)
    """
    if n == d:
        return q, buffer
    buffer = buffer * d + q % d
    q = (q // d) * n + buffer % n
    return q, buffer // n


def _refuse_grad(x: Any, name: str, backprop: str, reversible: bool) -> None:
    """The integer state carries no gradient: refuse an input that asks for one instead of dropping it."""
    if isinstance(x, torch.Tensor) and x.requires_grad and torch.is_grad_enabled():
        fix = (
            "pass backprop='reversible' (gradients through the exact trajectory)"
            if reversible
            else "invert with the float solver (bit_exact=False), or differentiate the sampling with "
            "backprop='reversible'"
        )
        raise ValueError(
            f"{name} requires grad, but the bit-exact solver's integer state carries no gradient "
            f"with backprop={backprop!r}; {fix}"
        )


def buffer_bits(state: Any) -> float:
    """Mean size in bits of the information buffer per element of a bit-exact state (``Solution.state``)."""
    return float(np.mean(np.asarray(np.frompyfunc(int.bit_length, 1, 1)(state.buffer)).astype(np.float64)))


class FixedPoint:
    """Conversions between float tensors and integers on the grid 2^-bits."""

    def __init__(self, bits: int):
        self.bits, self.one = bits, 1 << bits
        self.device = torch.device("cpu")  # where float views go (the model's device); integers live on the CPU

    def quantise(self, x: torch.Tensor) -> np.ndarray:
        """round(x 2^k) as Python ints: the deterministic rounding both directions apply."""
        self.device = x.device
        a = x.detach().cpu().to(torch.float64).numpy()
        if not np.isfinite(a).all():
            raise NonFiniteError("a bit-exact step produced NaN or inf; check the model's output (it must be finite)")
        return _to_int(np.rint(np.ldexp(a, self.bits)))

    def split(self, x: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        """(q, residual) with x = q 2^-k + residual exactly; the residual keeps x's bits below 2^-k."""
        self.device = x.device
        q = _to_int(np.floor(np.ldexp(x.detach().cpu().to(torch.float64).numpy(), self.bits)))
        return q, x.to(torch.float64) - self.to_float(q)

    def to_float(self, q: np.ndarray) -> torch.Tensor:
        """q 2^-k as float64 (correctly rounded, exact while |q| < 2^53)."""
        try:
            return torch.from_numpy(np.asarray(q / self.one, dtype=np.float64)).to(self.device)
        except OverflowError:
            raise ValueError(
                "a bit-exact latent exceeded the float64 range: inversion with small gamma (or p) amplifies the "
                "oscillating mode by 1/gamma per step; use gamma closer to 1 or fewer steps"
            ) from None

    def zeros(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.zeros(shape, dtype=object)  # object zeros are Python ints


class _ClippedEvaluator(Evaluator):
    """The model at the latent clipped to +-MODEL_INPUT_LIMIT (keeps huge exact latents finite for the network)."""

    def __call__(self, z: torch.Tensor, i: int) -> torch.Tensor:
        return super().__call__(z.clamp(-MODEL_INPUT_LIMIT, MODEL_INPUT_LIMIT), i)


class _BitExact(Solver[Any]):
    """What the fixed-point twins share: float64 views, the exact state carried by the Inversion.

    A Solver mixin, listed before the float method it rounds (``class BitExactBDIA(_BitExact, BDIA)``).
    """

    bit_exact: ClassVar[bool] = True
    float_fields: ClassVar[int] = 2  # the state's leading fields are integer latents; then buffer, residual
    output_field: ClassVar[int]  # the latent that holds the sample
    float_class: ClassVar[type[Solver[Any]]]  # the float solver whose map this rounds (its step gives the gradients)

    def _setup(self, fraction_bits: int) -> None:
        if fraction_bits != FRACTION_BITS:  # a config written by another version of this module
            raise ValueError(
                f"this bdia computes bit-exact states with {FRACTION_BITS} fraction bits, not {fraction_bits}"
            )
        if self.state_dtype != torch.float64:
            raise ValueError("bit-exact solvers keep integer state and float64 views; leave state_dtype at float64")
        self.fixed = FixedPoint(FRACTION_BITS)

    @property
    def num_latents(self) -> int:
        return self.float_fields

    def params(self) -> dict[str, Any]:
        return {**super().params(), "bit_exact": True, "fraction_bits": FRACTION_BITS}

    def check_grid(self, grid: Grid, inverting: bool) -> None:
        with warnings.catch_warnings():  # no rounding to amplify: the arithmetic is exact
            warnings.simplefilter("ignore", InversionPrecisionWarning)
            super().check_grid(grid, inverting=True)  # both directions multiply by gamma reversibly: gamma > 0

    def evaluator(self, model: Callable, grid: Grid, input_dtype: torch.dtype, phase: str) -> Evaluator:
        ev = super().evaluator(model, grid, input_dtype, phase)
        # finiteness is checked where outputs are rounded to integers, once per value
        return _ClippedEvaluator(ev.model, grid, ev.state_dtype, ev.run_dtype, False, phase)

    def views(self, state: tuple[Any, ...]) -> tuple[torch.Tensor, ...]:
        """The float64 values of the integer latents."""
        return tuple(self.fixed.to_float(q) for q in state[: self.float_fields])

    def output(self, state: Any) -> torch.Tensor:  # a BitExactBDIAState or BitExactEDICTState
        return self.fixed.to_float(state[self.output_field]) + state.residual

    def invert(self, model: Callable, x0: torch.Tensor, grid: Grid, **kwargs: Any) -> Inversion:
        """As :meth:`Solver.invert`; ``latents`` are float64 views, ``metadata['bit_exact_state']`` the exact state."""
        _refuse_grad(x0, "x0", kwargs.get("backprop", "autograd"), reversible=False)
        inv = super().invert(model, x0, grid, **kwargs)
        exact = self.State(*inv.latents)
        inv.latents = self.views(exact)
        inv.metadata["bit_exact_state"] = exact
        return inv

    def solve(
        self,
        model: Callable,
        start: torch.Tensor | Inversion,
        grid: Grid,
        *,
        callback: Any = None,
        backprop: str = "autograd",
        params: Any = None,
    ) -> Solution:
        """As :meth:`Solver.solve`. ``backprop="reversible"``: bit-exact sampling whose gradient follows the
        exact trajectory, recovered by the integer inverse, through the float solver's steps
        (:mod:`bdia.solvers.reversible`): no rounding amplified whatever gamma and N are."""
        if backprop != "reversible":
            _refuse_grad(
                start.latents[0] if isinstance(start, Inversion) else start, "start", backprop, reversible=True
            )
            return super().solve(model, start, grid, callback=callback, backprop=backprop, params=params)
        from .reversible import reversible_bit_exact_drive

        grid = _check_grid(grid)
        self.check_grid(grid, inverting=False)
        if isinstance(start, Inversion):
            exact = self._check_inversion(start, grid)
            floats = tuple(z.to(torch.float64) for z in start.latents)
            ev = self.evaluator(model, grid, start.input_dtype, "sampling")
        else:
            noise = _check_tensor(start, "noise")
            ev = self.evaluator(model, grid, noise.dtype, "sampling")
            floats = tuple(self.float_class.init(self, ev, noise.to(torch.float64), grid))  # differentiable
            exact = self.init(ev, noise.to(torch.float64), grid)  # the same start as without gradients
        final, views = reversible_bit_exact_drive(self, ev, exact, floats, grid, callback, params)
        return Solution(final, views[self.output_field] + final.residual, ev.nfe)

    def _check_inversion(self, inv: Inversion, grid: Grid) -> tuple:
        floats = super()._check_inversion(inv, grid)
        exact = inv.metadata.get("bit_exact_state")
        if exact is not None and all(torch.equal(v, z.detach().to(v)) for v, z in zip(self.views(exact), floats)):
            self.fixed.device = exact.residual.device
            return exact  # the latents are the ones inverted (not edited since)
        qs = [self.fixed.quantise(z) for z in floats[: self.float_fields]]  # an Inversion rebuilt from floats
        shape = tuple(floats[0].shape)
        return self.State(*qs, self.fixed.zeros(shape), torch.zeros(shape, dtype=torch.float64))


class BitExactBDIAState(NamedTuple):
    z_prev: Any  # q_{i-1}, integers
    z: Any  # q_i
    buffer: Any = None  # the information buffer (Python ints)
    residual: Any = None  # x0's bits below 2^-k (float64 tensor; zero when generating from noise)


class BitExactBDIA(_BitExact, BDIA):
    """BDIA in integer fixed point: q_{i+1} = gamma (*) q_{i-1} + round(2^k (F - gamma B)(z_i)), exactly invertible.

    ``(*)`` is the buffered multiplication by gamma_i = n/d; with gamma = 1 it is plain integer addition.
    """

    State: ClassVar[type] = BitExactBDIAState
    output_field: ClassVar[int] = 1
    float_class: ClassVar[type] = BDIA

    def __init__(self, *args: Any, fraction_bits: int = FRACTION_BITS, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._setup(fraction_bits)

    def _coupling(self, ev: Evaluator, q: np.ndarray, grid: Grid, i: int) -> tuple[np.ndarray, int, int]:
        """(round(2^k G(z_i)), n, d) with G = F - gamma B and gamma_i = n/d."""
        n, d = to_fraction(self.gammas(grid)[i - 1])
        fwd, bwd = self.moves(ev, self.fixed.to_float(q), grid, i)
        return self.fixed.quantise(fwd - (n / d) * bwd), n, d

    def init(self, ev: Evaluator, noise: torch.Tensor, grid: Grid) -> BitExactBDIAState:
        q0 = self.fixed.quantise(noise)
        z0 = self.fixed.to_float(q0)
        q1 = self.fixed.quantise(self._integrator.step(ev, z0, ev(z0, 0), grid, 0))
        return BitExactBDIAState(q0, q1, self.fixed.zeros(q0.shape), torch.zeros(q0.shape, dtype=torch.float64))

    def init_inverse(self, ev: Evaluator, x0: torch.Tensor, grid: Grid) -> BitExactBDIAState:
        n = grid.num_steps
        q, residual = self.fixed.split(x0)
        z = self.fixed.to_float(q)
        q_prev = self.fixed.quantise(ddim_transition(z, ev(z, n - 1), grid, n, n - 1))
        return BitExactBDIAState(q_prev, q, self.fixed.zeros(q.shape), residual)

    def step(self, ev: Evaluator, state: BitExactBDIAState, grid: Grid, i: int) -> BitExactBDIAState:
        g, n, d = self._coupling(ev, state.z, grid, i)
        scaled, buffer = reversible_scale(state.z_prev, state.buffer, n, d)
        return BitExactBDIAState(state.z, scaled + g, buffer, state.residual)

    def unstep(self, ev: Evaluator, state: BitExactBDIAState, grid: Grid, i: int) -> BitExactBDIAState:
        g, n, d = self._coupling(ev, state.z_prev, grid, i)  # state is (q_i, q_{i+1})
        q_prev, buffer = reversible_scale(state.z - g, state.buffer, d, n)
        return BitExactBDIAState(q_prev, state.z_prev, buffer, state.residual)


class BitExactEDICTState(NamedTuple):
    x: Any
    y: Any
    buffer: Any = None
    residual: Any = None


class BitExactEDICT(_BitExact, EDICT):
    """EDICT in integer fixed point: each of its four couplings is a buffered scaling plus a rounded term."""

    State: ClassVar[type] = BitExactEDICTState
    output_field: ClassVar[int] = 0
    float_class: ClassVar[type] = EDICT

    def __init__(self, *args: Any, fraction_bits: int = FRACTION_BITS, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._setup(fraction_bits)

    def init(self, ev: Evaluator, noise: torch.Tensor, grid: Grid) -> BitExactEDICTState:
        q = self.fixed.quantise(noise)
        return BitExactEDICTState(q, q, self.fixed.zeros(q.shape), torch.zeros(q.shape, dtype=torch.float64))

    def init_inverse(self, ev: Evaluator, x0: torch.Tensor, grid: Grid) -> BitExactEDICTState:
        q, residual = self.fixed.split(x0)
        return BitExactEDICTState(q, q, self.fixed.zeros(q.shape), residual)

    def _terms(self, ev: Evaluator, grid: Grid, i: int):
        """The step's fractions and its rounded additive terms as functions of the integer chains."""
        a, b = transition_coefficients(grid, i, i + 1)
        fix = self.fixed

        def eps_term(q):  # round(2^k b eps(z))
            return fix.quantise(b * ev(fix.to_float(q), i))

        def mix_term(q):  # round(2^k (1 - p) z)
            return fix.quantise((1 - self.p) * fix.to_float(q))

        return to_fraction(a), to_fraction(self.p), eps_term, mix_term

    def step(self, ev: Evaluator, state: BitExactEDICTState, grid: Grid, i: int) -> BitExactEDICTState:
        (an, ad), (pn, pd), eps_term, mix_term = self._terms(ev, grid, i)
        x, y = (state.y, state.x) if self._swapped(i) else (state.x, state.y)
        buf = state.buffer
        x, buf = reversible_scale(x, buf, an, ad)
        x = x + eps_term(y)  # x_inter = a x + b eps(y)
        y, buf = reversible_scale(y, buf, an, ad)
        y = y + eps_term(x)  # y_inter = a y + b eps(x_inter)
        x, buf = reversible_scale(x, buf, pn, pd)
        x = x + mix_term(y)  # x_new = p x_inter + (1 - p) y_inter
        y, buf = reversible_scale(y, buf, pn, pd)
        y = y + mix_term(x)  # y_new = p y_inter + (1 - p) x_new
        x, y = (y, x) if self._swapped(i) else (x, y)
        return BitExactEDICTState(x, y, buf, state.residual)

    def unstep(self, ev: Evaluator, state: BitExactEDICTState, grid: Grid, i: int) -> BitExactEDICTState:
        (an, ad), (pn, pd), eps_term, mix_term = self._terms(ev, grid, i)
        x, y = (state.y, state.x) if self._swapped(i) else (state.x, state.y)
        buf = state.buffer
        y, buf = reversible_scale(y - mix_term(x), buf, pd, pn)
        x, buf = reversible_scale(x - mix_term(y), buf, pd, pn)
        y, buf = reversible_scale(y - eps_term(x), buf, ad, an)
        x, buf = reversible_scale(x - eps_term(y), buf, ad, an)
        x, y = (y, x) if self._swapped(i) else (x, y)
        return BitExactEDICTState(x, y, buf, state.residual)


BIT_EXACT_TWINS.update({BDIA: BitExactBDIA, EDICT: BitExactEDICT})  # what Solver(bit_exact=True) builds
