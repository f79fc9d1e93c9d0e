"""EDICT: exact diffusion inversion via coupled transformations (Wallace, Gokul & Naik, CVPR 2023).

docs/math.md section 5. Two chains x, y; with D(z, e) = a z + b e the DDIM transition of the step,
one generation step is

    x' = a x + b eps(y);   y' = a y + b eps(x');   x = p x' + (1-p) y';   y = p y' + (1-p) x

Inversion undoes the mixing, then the two transitions in reverse order. Two NFE per step; exact up
to rounding, which inversion amplifies by 1/p per step. As the authors do, the chains swap roles on
every other step (``alternate=True``) so neither chain always sees the other's stale prediction.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, ClassVar

import torch

from ..schedule import Grid
from .base import Callback, Solver, _Evaluator


class EDICT(Solver):
    """EDICT with mixing weight ``p`` in (0, 1] (default 0.93, the authors'); latents are (x, y).

    ``sample`` returns chain x. Generation from noise starts both chains at the noise.
    """

    name: ClassVar[str] = "edict"
    order: ClassVar[int] = 1
    nfe_per_step: ClassVar[int] = 2
    exact_inversion: ClassVar[bool] = True
    num_latents: ClassVar[int] = 2

    def __init__(self, p: float = 0.93, *, alternate: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        if not isinstance(p, numbers.Real) or isinstance(p, bool) or not math.isfinite(p) or not 0.0 < p <= 1.0:
            raise ValueError(f"EDICT mixing p must be in (0, 1] (the authors use 0.93), got {p!r}")
        self.p = float(p)
        self.alternate = bool(alternate)

    def params(self) -> dict[str, Any]:
        return {"p": self.p, "alternate": self.alternate}

    @staticmethod
    def _coefficients(grid: Grid, i: int) -> tuple[float, float]:
        a = float(grid.alphas[i + 1]) / float(grid.alphas[i])
        return a, float(grid.sigmas[i + 1]) - a * float(grid.sigmas[i])

    def _swapped(self, i: int) -> bool:
        return self.alternate and i % 2 == 1

    def _step(self, ev: _Evaluator, x: torch.Tensor, y: torch.Tensor, grid: Grid, i: int, inverse: bool = False):
        """Grid point i -> i+1, or with ``inverse`` its exact inverse i+1 -> i."""
        a, b = self._coefficients(grid, i)
        move = self._unstep_unswapped if inverse else self._step_unswapped
        if self._swapped(i):
            y, x = move(ev, y, x, a, b, self.p, i)
            return x, y
        return move(ev, x, y, a, b, self.p, i)

    @staticmethod
    def _step_unswapped(ev, x, y, a, b, p, i):
        x_inter = a * x + b * ev(y, i)
        y_inter = a * y + b * ev(x_inter, i)
        x_new = p * x_inter + (1 - p) * y_inter
        y_new = p * y_inter + (1 - p) * x_new
        return x_new, y_new

    @staticmethod
    def _unstep_unswapped(ev, x_new, y_new, a, b, p, i):
        y_inter = (y_new - (1 - p) * x_new) / p
        x_inter = (x_new - (1 - p) * y_inter) / p
        y = (y_inter - b * ev(x_inter, i)) / a
        x = (x_inter - b * ev(y, i)) / a
        return x, y

    def _init_from_noise(self, ev: _Evaluator, noise: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, ...]:
        return noise, noise

    def _generate(self, ev: _Evaluator, latents: tuple[torch.Tensor, ...], grid: Grid,
                  callback: Callback | None) -> torch.Tensor:
        x, y = latents
        n = grid.num_steps
        for i in range(n):
            x, y = self._step(ev, x, y, grid, i)
            self._check_state(x, i + 1, "sampling"), self._check_state(y, i + 1, "sampling")
            if callback is not None:
                callback(i + 1, n, (x, y))
        return x

    def _invert(self, ev: _Evaluator, x0: torch.Tensor, grid: Grid, callback: Callback | None) -> tuple[torch.Tensor, ...]:
        x, y = x0, x0
        n = grid.num_steps
        for i in range(n - 1, -1, -1):
            x, y = self._step(ev, x, y, grid, i, inverse=True)
            self._check_state(x, i, "inversion"), self._check_state(y, i, "inversion")
            if callback is not None:
                callback(n - i, n, (x, y))
        return x, y
