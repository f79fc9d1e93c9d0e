"""Gradients through sampling by reversal: memory independent of the number of steps (docs/math.md section 11).

``solver.sample(model, start, grid, backprop="reversible")`` (and ``solve``, ``invert``) runs the
sampling loop without recording it and keeps only the final state. The backward pass walks back with
the solver's exact inverse move, one step at a time, and recomputes that one step under autograd to
pull the cotangent through it (a vector-Jacobian product) to the state before it, to the model's
parameters and to the tensors the model closes over. Only the generic step protocol is used
(``step``/``unstep`` over a NamedTuple state), so every solver with ``exact_inversion`` works.

Cost: the reconstruction and the recomputed step evaluate the model at the same point for BDIA (the
inverse move evaluates at z_i, which the step reuses), so an evaluator that remembers the
reconstruction's evaluations makes the backward pass about one network forward and one network
backward per step. EDICT's inverse evaluates at recomputed intermediates, so it pays two forwards.

Which tensors receive gradients (``params=None``): the starting latents, and everything found by
walking the model: an ``nn.Module``'s parameters that require grad, and, recursively through adapter
attributes (``ClassifierFreeGuidance.model``, ``.cond``...), closure cells of functions,
the global names a function's body uses, ``functools.partial`` arguments and list/tuple/dict
entries, every floating tensor that requires grad (a learned condition embedding, a guidance-scale
tensor). Pass ``params=[...]`` to name them instead; then nothing is discovered. Tensors the model
reaches some other way (attributes of imported modules, nested functions' globals) are not found:
name them. Do not list a tensor together with one it was
computed from (its gradient would be counted twice).

Precision: the backward pass of ``sample`` reconstructs the states by inversion, so it inherits
inversion's amplification of rounding, prod(1/gamma_i) (docs/math.md section 4, Stability): the
gradient is as good as autograd's while that times the state's machine epsilon is small, and
worthless beyond. Measured on the digits model, 50 steps, float32 state: relative gradient error
3e-6 at gamma = 1 and 5e-7 at gamma = 0.9 (autograd in float32: the same), but 20 (garbage) at
gamma = 0.5, where 2^50 * 6e-8 >> 1. The same InversionPrecisionWarning as ``invert`` says so
beforehand; use gamma = 1 (the default), float64 state or fewer steps. Gradients through ``invert``
reconstruct by generation, which damps rounding instead.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from ..schedule import Grid
from .base import BACKPROP_DRIVES, BACKPROP_MODES, Evaluator, drive

__all__ = ["BACKPROP_MODES", "differentiable_inputs", "reversible_drive"]

_DISCOVERY_DEPTH = 5  # adapters nest a few levels (guidance -> to_eps -> UNet); deeper objects are not models


def differentiable_inputs(model: Any, params: Iterable[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """The tensors besides the latents that a reversible gradient flows to (rule in the module docstring)."""
    if params is not None:
        out = list(params)
        for k, p in enumerate(out):
            if not isinstance(p, torch.Tensor) or not p.is_floating_point():
                raise TypeError(f"params[{k}] must be a floating-point torch.Tensor, got {type(p).__name__}")
        return _unique(out)
    found: list[torch.Tensor] = []
    _walk(model, found, set(), _DISCOVERY_DEPTH)
    return _unique(found)


def _unique(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    seen: set[int] = set()
    out = []
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def _walk(obj: Any, found: list[torch.Tensor], seen: set[int], depth: int) -> None:
    if depth < 0 or id(obj) in seen or obj is None or isinstance(obj, (str, bytes, int, float, bool, type)):
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and obj.requires_grad:
            found.append(obj)
    elif isinstance(obj, torch.nn.Module):
        found.extend(p for p in obj.parameters() if p.requires_grad)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            _walk(v, found, seen, depth - 1)
    elif isinstance(obj, dict):
        for v in obj.values():
            _walk(v, found, seen, depth - 1)
    elif isinstance(obj, functools.partial):
        for v in (obj.func, obj.args, obj.keywords):
            _walk(v, found, seen, depth - 1)
    elif isinstance(obj, types.MethodType):
        _walk(obj.__self__, found, seen, depth - 1)
        _walk(obj.__func__, found, seen, depth - 1)
    elif isinstance(obj, types.FunctionType):
        for cell in obj.__closure__ or ():
            try:
                _walk(cell.cell_contents, found, seen, depth - 1)
            except ValueError:  # an empty cell
                pass
        for name in obj.__code__.co_names:  # module-level names the function body uses (a script's model)
            if name in obj.__globals__:
                _walk(obj.__globals__[name], found, seen, depth - 1)
    elif isinstance(obj, types.ModuleType):
        return
    elif hasattr(obj, "__dict__"):  # adapters: ClassifierFreeGuidance, to_eps, analytic models...
        for v in vars(obj).values():
            _walk(v, found, seen, depth - 1)


class _RememberingEvaluator(Evaluator):
    """An evaluator that hands back an evaluation already made at the same tensor object and grid point.

    In the backward pass the inverse move runs first, under autograd; when the recomputed step then
    asks for the model at the same tensor (BDIA: z_i), it gets that evaluation and its graph instead
    of a second network call.
    """

    def __init__(self, *args: Any):
        super().__init__(*args)
        self._memory: list[tuple[torch.Tensor, int, torch.Tensor]] = []

    def __call__(self, z: torch.Tensor, i: int) -> torch.Tensor:
        for z_seen, i_seen, eps in self._memory:
            if z_seen is z and i_seen == i:
                return eps
        eps = super().__call__(z, i)
        self._memory.append((z, i, eps))
        return eps

    def forget(self) -> None:
        self._memory.clear()


class _Run:
    """What the autograd function needs besides tensors (kept out of its inputs)."""

    def __init__(
        self,
        solver,
        ev: Evaluator,
        grid: Grid,
        direction: str,
        callback,
        num_state: int,
        params: Sequence[torch.Tensor],
    ):
        self.solver, self.ev, self.grid, self.direction = solver, ev, grid, direction
        self.callback, self.num_state, self.params = callback, num_state, list(params)

    def positions(self) -> list[int]:
        """The step indices the loop visits, in the order it visits them."""
        n, w = self.grid.num_steps, self.solver.warmup
        return list(range(w, n)) if self.direction == "generate" else list(range(n - 1, w - 1, -1))


class _ReversibleLoop(torch.autograd.Function):
    """The whole sampling loop as one autograd node that stores only its final state."""

    @staticmethod
    def forward(ctx, run: _Run, *inputs: torch.Tensor):
        state = run.solver.State(*inputs[: run.num_state])
        final = drive(run.solver, run.ev, state, run.grid, run.direction, run.callback)
        # autograd needs outputs distinct from inputs (a BDIA state passes z_i on unchanged)
        final = tuple(t.clone() if any(t is x for x in inputs) else t for t in final)
        ctx.run = run
        ctx.save_for_backward(*final)
        return final

    @staticmethod
    def backward(ctx, *cotangent: torch.Tensor):
        run = ctx.run
        solver, grid = run.solver, run.grid
        forward_move, inverse_move = (
            (solver.step, solver.unstep) if run.direction == "generate" else (solver.unstep, solver.step)
        )
        ev = _RememberingEvaluator(
            run.ev.model, grid, run.ev.state_dtype, run.ev.run_dtype, run.ev.check_finite, "gradient"
        )
        state = solver.State(*ctx.saved_tensors)
        cot = list(cotangent)
        param_grads: list[torch.Tensor | None] = [None] * len(run.params)
        for i in reversed(run.positions()):
            with torch.enable_grad():
                after = solver.State(*(t.detach().requires_grad_() for t in state))
                before = inverse_move(ev, after, grid, i)  # reconstruct the state before step i
                before = solver.State(
                    *(t if any(t is a for a in after) else t.detach().requires_grad_() for t in before)
                )
                again = forward_move(ev, before, grid, i)  # recompute step i, reusing the evaluations
                pairs = [(o, g) for o, g in zip(again, cot) if o.requires_grad]
                wrt = list(before) + run.params
                grads = torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True)
            ev.forget()
            cot = [torch.zeros_like(b) if g is None else g for g, b in zip(grads[: len(before)], before)]
            for k, g in enumerate(grads[len(before) :]):
                if g is not None:
                    param_grads[k] = g if param_grads[k] is None else param_grads[k] + g
            state = solver.State(*(t.detach() for t in before))
        ev.raise_if_not_finite()
        return (None, *cot, *param_grads)


class _SharedEvaluations:
    """Lets the float step reuse the evaluations the integer inverse made at equal values.

    While ``recording`` (the integer ``unstep``), each evaluation is made on a fresh leaf under
    autograd and kept. Afterwards, a call at a state field with equal values and the same grid point
    returns that evaluation and links the leaf to the field, so the field's gradient collects the
    leaf's; any other call is evaluated directly, keeping its graph.
    """

    def __init__(self, ev: Evaluator):
        self.ev = ev
        self.recording = True
        self.memory: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (i, leaf, eps)
        self.fields: tuple[torch.Tensor, ...] = ()
        self.links: list[tuple[int, torch.Tensor]] = []  # (index of the state field, leaf)

    def __call__(self, z: torch.Tensor, i: int) -> torch.Tensor:
        if self.recording:
            with torch.enable_grad():
                leaf = z.detach().requires_grad_()
                eps = self.ev(leaf, i)
            self.memory.append((i, leaf, eps))
            return eps
        field = next((k for k, f in enumerate(self.fields) if f is z), None)
        if field is not None:
            for i_seen, leaf, eps in self.memory:
                if i_seen == i and torch.equal(leaf, z.detach()):
                    self.links.append((field, leaf))
                    return eps
        return self.ev(z, i)

    def start(self) -> None:
        self.recording, self.memory, self.links = True, [], []


class _BitExactLoop(torch.autograd.Function):
    """Sampling in bit-exact arithmetic, differentiated along the exact trajectory.

    The backward pass recovers each earlier state exactly with the integer ``unstep`` and pulls the
    cotangent through the float step (the twin's parent class) at that state's float64 values, so no
    rounding is amplified whatever gamma and N are. The float step reuses the integer inverse's
    evaluation where both evaluate at a state field (BDIA: z_i), so BDIA costs one network forward
    per step backward, as in the float case; EDICT three instead of two.
    """

    @staticmethod
    def forward(ctx, run: _Run, exact_start: tuple, *inputs: torch.Tensor):
        final = drive(run.solver, run.ev, exact_start, run.grid, "generate", run.callback)
        ctx.run, ctx.final = run, final
        return run.solver.views(final)

    @staticmethod
    def backward(ctx, *cotangent: torch.Tensor):
        run, solver, grid = ctx.run, ctx.run.solver, ctx.run.grid
        float_cls = solver.float_class
        ev = _SharedEvaluations(solver.evaluator(run.ev.model, grid, run.ev.run_dtype, "gradient"))
        exact, cot = ctx.final, list(cotangent)
        param_grads: list[torch.Tensor | None] = [None] * len(run.params)
        for i in reversed(run.positions()):
            ev.start()
            with torch.no_grad():
                exact = solver.unstep(ev, exact, grid, i)
            ev.recording = False
            with torch.enable_grad():
                before = float_cls.State(*(z.requires_grad_() for z in solver.views(exact)))
                ev.fields = tuple(before)
                again = float_cls.step(solver, ev, before, grid, i)
                pairs = [(o, g) for o, g in zip(again, cot) if o.requires_grad]
                leaves = [leaf for _, leaf in ev.links]
                wrt = list(before) + run.params + leaves
                grads = list(torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True))
            n, m = len(before), len(run.params)
            for (field, _), g in zip(ev.links, grads[n + m :]):  # a reused evaluation's share of its field
                if g is not None:
                    grads[field] = g if grads[field] is None else grads[field] + g
            cot = [torch.zeros_like(b) if g is None else g for g, b in zip(grads[:n], before)]
            for k, g in enumerate(grads[n : n + m]):
                if g is not None:
                    param_grads[k] = g if param_grads[k] is None else param_grads[k] + g
        return (None, None, *cot, *param_grads)


def reversible_bit_exact_drive(
    solver,
    ev: Evaluator,
    exact_start: tuple,
    float_start: tuple,
    grid: Grid,
    callback: Callable | None,
    params: Iterable[torch.Tensor] | None,
) -> tuple:
    """Bit-exact sampling from ``exact_start`` whose float views carry gradients to ``float_start`` (same values).

    Returns (the final exact state, its float views with gradients).
    """
    extra = differentiable_inputs(ev.model, params)
    run = _Run(solver, ev, grid, "generate", callback, len(float_start), extra)
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in list(float_start) + extra)) or not run.positions():
        final = drive(solver, ev, exact_start, grid, "generate", callback)
        return final, solver.views(final)
    holder: list[tuple] = []

    def keep(index, sigma, state):  # the exact final state, for Solution.state
        if index == grid.num_steps:
            holder.append(state)
        if callback is not None:
            callback(index, sigma, state)

    run.callback = keep
    views = _BitExactLoop.apply(run, exact_start, *float_start, *extra)
    return holder[-1], views


def reversible_drive(
    solver,
    ev: Evaluator,
    state: tuple,
    grid: Grid,
    direction: str,
    callback: Callable | None,
    params: Iterable[torch.Tensor] | None,
) -> tuple:
    """:func:`~bdia.solvers.base.drive` whose gradient is computed by reversal (see the module docstring)."""
    if not solver.exact_inversion:
        raise ValueError(
            f"backprop='reversible' needs a solver whose inverse step is exact; {type(solver).__name__}'s unstep "
            "only approximates its step: use bdia.BDIA or bdia.EDICT, or backprop='autograd'"
        )
    if getattr(solver, "bit_exact", False):
        raise ValueError(
            "bit-exact solvers take reversible gradients through sample/solve only (their inversion "
            "keeps integer latents); invert with bit_exact=False to differentiate an inversion"
        )
    if direction == "generate":
        # the backward pass reconstructs by inversion: refuse gamma = 0, warn where it amplifies rounding
        solver.check_grid(grid, inverting=True)
    extra = differentiable_inputs(ev.model, params)
    tensors = list(state) + extra
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
        return drive(solver, ev, state, grid, direction, callback)  # nothing to differentiate
    run = _Run(solver, ev, grid, direction, callback, len(state), extra)
    if not run.positions():
        return state
    return solver.State(*_ReversibleLoop.apply(run, *tensors))


BACKPROP_DRIVES["reversible"] = reversible_drive  # Solver.solve(..., backprop="reversible")
