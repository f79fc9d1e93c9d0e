"""Flow matching (rectified flow): schedules and grids of SD3 / Flux, and approximate baseline inversions.

docs/math.md section 9. A flow model is trained on the linear path ``x_t = (1 - t) x0 + t eps`` and
predicts the velocity ``v = eps - x0 = dx/dt``; in section 1's notation alpha_t = 1 - t, sigma_t = t.
Its grids are velocity grids (``Grid.prediction == "velocity"``): the model returns v, the solvers
hold v, and the DDIM transition is Euler on dx/dt = v, ``z + (t_j - t_i) v``, which stays finite at the
pure-noise point t = 1 where alpha = 0. Every solver (DDIM, BDIA, O-BELM, EDICT, Heun) then runs on
flow models unchanged, with its exact inverse.

- :class:`FlowSchedule`: a diffusers ``FlowMatchEulerDiscreteScheduler`` config (``shift``, Flux's
  dynamic shifting ``mu``, ``shift_terminal``, ``num_train_timesteps``); ``grid(N, mu=, sigmas=)``
  is the grid ``set_timesteps`` materialises, with the same float32 values.
- :func:`calculate_shift`: Flux's resolution-dependent ``mu`` from the image's token count.
- :func:`flux_sigmas`: the unshifted sigmas Flux pipelines pass (``linspace(1, 1/N, N)``).
- :func:`flow_grid`: a velocity grid from any descending list of t values.
- :func:`integrate_flow`: plain Euler, RF-Solver (Wang et al. 2024) and FireFlow (Deng et al. 2024)
  along a list of t values in either direction; the approximate inversions bdia compares against.

Model time: a flow model is called with ``num_train_timesteps * t`` (SD3's transformer takes it as
is; Flux's pipeline divides by 1000 before its transformer, which its adapter does).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .schedule import Grid, _load_config

__all__ = ["FlowSchedule", "calculate_shift", "flux_sigmas", "flow_grid", "integrate_flow", "FLOW_METHODS"]

# Defaults of diffusers' FlowMatchEulerDiscreteScheduler, so a partial config means what it means there.
_FLOW_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": False,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "invert_sigmas": False,
    "shift_terminal": None,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "time_shift_type": "exponential",
    "stochastic_sampling": False,
}
_UNSUPPORTED = (
    "invert_sigmas",
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "stochastic_sampling",
)


def calculate_shift(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """Flux's mu: linear in the image's transformer sequence length L (docs/math.md section 9)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * m + (base_shift - m * base_seq_len)


def flux_sigmas(num_steps: int) -> np.ndarray:
    """The unshifted sigmas FluxPipeline passes to ``set_timesteps``: ``linspace(1, 1/N, N)``."""
    return np.linspace(1.0, 1 / num_steps, num_steps)


def flow_grid(sigmas: Sequence[float] | np.ndarray | torch.Tensor, num_train_timesteps: int = 1000) -> Grid:
    """Velocity grid over N descending t values plus the clean terminal t = 0.

    Model times are ``num_train_timesteps * t`` in the dtype of ``sigmas`` (float32 for diffusers'
    lists, so the model sees the timesteps the pipeline would pass); alpha = 1 - t in float64.
    """
    t = torch.as_tensor(np.asarray(sigmas) if not isinstance(sigmas, torch.Tensor) else sigmas)
    if t.dim() != 1 or not t.is_floating_point():
        raise ValueError(f"flow sigmas must be a 1-d list of floats, got shape {tuple(t.shape)} and {t.dtype}")
    if not ((t > 0) & (t <= 1)).all():
        raise ValueError("flow sigmas (t values) must lie in (0, 1]; the terminal t = 0 is appended")
    timesteps = t * num_train_timesteps
    sig = torch.cat([t.to(torch.float64), torch.zeros(1, dtype=torch.float64)])
    if not (sig[1:] < sig[:-1]).all():
        raise ValueError("flow sigmas must decrease strictly from the noise end (t = 1) to the clean end")
    # between the points the model is called at t = lambda / (1 + lambda), model time T t (multi-stage solvers)
    return Grid(
        timesteps,
        1.0 - sig,
        sig,
        prediction="velocity",
        time_of=lambda lam: num_train_timesteps * lam / (1.0 + lam),
        lambda_range=(0.0, math.inf),
    )


@dataclass(frozen=True)
class FlowSchedule:
    """A flow-matching model's noise schedule, as ``FlowMatchEulerDiscreteScheduler`` defines it.

    Build with :meth:`from_config` (dict, ``scheduler_config.json`` or its folder). Keys for
    stochastic or re-spaced sampling (karras/exponential/beta sigmas, ``invert_sigmas``,
    ``stochastic_sampling``) are refused: their grids are not the ones the model's pipeline runs.
    """

    num_train_timesteps: int = 1000
    shift: float = 1.0
    use_dynamic_shifting: bool = False
    base_shift: float = 0.5
    max_shift: float = 1.15
    base_image_seq_len: int = 256
    max_image_seq_len: int = 4096
    shift_terminal: float | None = None
    time_shift_type: str = "exponential"
    config: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | str | os.PathLike, **overrides: Any) -> FlowSchedule:
        cfg = {**_FLOW_DEFAULTS, **_load_config(config), **overrides}
        for key in _UNSUPPORTED:
            if cfg.get(key):
                raise ValueError(f"scheduler option {key}=True is not supported for exact inversion; set it to False")
        if cfg["time_shift_type"] not in ("exponential", "linear"):
            raise ValueError(f"time_shift_type must be 'exponential' or 'linear', got {cfg['time_shift_type']!r}")
        T = int(cfg["num_train_timesteps"])
        if T < 2:
            raise ValueError(f"num_train_timesteps must be at least 2, got {T}")
        if not float(cfg["shift"]) > 0:
            raise ValueError(f"shift must be positive, got {cfg['shift']}")
        return cls(
            T,
            float(cfg["shift"]),
            bool(cfg["use_dynamic_shifting"]),
            float(cfg["base_shift"]),
            float(cfg["max_shift"]),
            int(cfg["base_image_seq_len"]),
            int(cfg["max_image_seq_len"]),
            cfg["shift_terminal"],
            cfg["time_shift_type"],
            cfg,
        )

    def mu(self, image_seq_len: int) -> float:
        """Flux's dynamic-shift mu for an image of ``image_seq_len`` transformer tokens."""
        return calculate_shift(
            image_seq_len, self.base_image_seq_len, self.max_image_seq_len, self.base_shift, self.max_shift
        )

    def _train_sigma_range(self) -> tuple[float, float]:
        """(sigma_max, sigma_min) of the training list, in diffusers' float32 arithmetic."""
        T = self.num_train_timesteps
        ends = np.array([T, 1], dtype=np.float32) / np.float32(T)
        if not self.use_dynamic_shifting:
            ends = self.shift * ends / (1 + (self.shift - 1) * ends)
        return float(ends[0]), float(ends[1])

    def sigmas(
        self,
        num_steps: int | None = None,
        *,
        sigmas: Sequence[float] | np.ndarray | None = None,
        mu: float | None = None,
    ) -> np.ndarray:
        """The N shifted t values (float32) ``set_timesteps(num_steps, sigmas=, mu=)`` produces."""
        if self.use_dynamic_shifting and mu is None:
            raise ValueError(
                "this schedule uses dynamic shifting: pass mu (FlowSchedule.mu(image_seq_len), "
                "image_seq_len = the image's transformer token count)"
            )
        if sigmas is None:
            if num_steps is None or isinstance(num_steps, bool) or int(num_steps) != num_steps or num_steps < 2:
                raise ValueError(f"num_steps must be an int >= 2 (BDIA needs two states), got {num_steps!r}")
            hi, lo = self._train_sigma_range()
            T = self.num_train_timesteps
            s = np.linspace(hi * T, lo * T, int(num_steps)) / T
        else:
            s = np.array(sigmas).astype(np.float32)
            if num_steps is not None and len(s) != num_steps:
                raise ValueError(f"{len(s)} sigmas given for num_steps={num_steps}; give one per step")
        # the same expressions as diffusers, on the same dtype (float64 from linspace, float32 when given)
        if self.use_dynamic_shifting:
            assert mu is not None  # refused above
            if self.time_shift_type == "exponential":
                s = math.exp(mu) / (math.exp(mu) + (1 / s - 1) ** 1.0)
            else:
                s = mu / (mu + (1 / s - 1) ** 1.0)
        else:
            s = self.shift * s / (1 + (self.shift - 1) * s)
        if self.shift_terminal:
            one_minus = 1 - s
            s = 1 - one_minus / (one_minus[-1] / (1 - self.shift_terminal))
        return np.asarray(s).astype(np.float32)

    def grid(
        self,
        num_steps: int | None = None,
        *,
        sigmas: Sequence[float] | np.ndarray | None = None,
        mu: float | None = None,
    ) -> Grid:
        """The velocity grid the pipeline runs: ``set_timesteps``' sigmas and timesteps, then t = 0."""
        s = torch.from_numpy(self.sigmas(num_steps, sigmas=sigmas, mu=mu))
        return flow_grid(s, self.num_train_timesteps)


# ----- approximate flow inversions: the baselines ----------------------------------------------------------

VelocityModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Velocity = Callable[[torch.Tensor, float], torch.Tensor]  # v(x, t), t in [0, 1]: what the steps below call


def _euler(v: Velocity, x: torch.Tensor, t: float, dt: float, cache: dict) -> torch.Tensor:
    """x + dt v(x, t): the plain Euler step (inversion when dt > 0)."""
    return x + dt * v(x, t)


def _rf_solver(v: Velocity, x: torch.Tensor, t: float, dt: float, cache: dict) -> torch.Tensor:
    """RF-Solver (Wang et al. 2024, eq. 8): second-order Taylor step, dv/dt by a half-step difference."""
    v0 = v(x, t)
    v_mid = v(x + 0.5 * dt * v0, t + 0.5 * dt)
    dv = (v_mid - v0) / (0.5 * dt)
    return x + dt * v0 + 0.5 * dt**2 * dv


def _fireflow(v: Velocity, x: torch.Tensor, t: float, dt: float, cache: dict) -> torch.Tensor:
    """FireFlow (Deng et al. 2024, Alg. 1): midpoint step starting from the previous step's midpoint velocity."""
    v0 = cache["v_mid"] if "v_mid" in cache else v(x, t)  # one evaluation on the first step only
    cache["v_mid"] = v(x + 0.5 * dt * v0, t + 0.5 * dt)
    return x + dt * cache["v_mid"]


FLOW_METHODS: dict[str, tuple[Callable, int]] = {  # name -> (step, NFE per step after the first)
    "euler": (_euler, 1),
    "rf-solver": (_rf_solver, 2),
    "fireflow": (_fireflow, 1),
}


def integrate_flow(
    model: VelocityModel, x: torch.Tensor, ts: Sequence[float], method: str = "euler", num_train_timesteps: int = 1000
) -> tuple[torch.Tensor, int]:
    """Integrate dx/dt = v from ``ts[0]`` through ``ts[-1]`` with one of :data:`FLOW_METHODS`; (x, NFE).

    Sampling runs ts downwards (1 -> 0), inversion upwards (0 -> 1); the model is evaluated wherever
    the method asks, including t = 0 and midpoints off the grid. These approximate inversions are the
    baselines bdia's exact ones are compared with; ``model(x, num_train_timesteps * t)`` returns v.
    """
    if method not in FLOW_METHODS:
        raise ValueError(f"unknown flow integrator {method!r}; choose one of {sorted(FLOW_METHODS)}")
    step = FLOW_METHODS[method][0]
    nfe = 0

    def v(z: torch.Tensor, t: float) -> torch.Tensor:
        nonlocal nfe
        nfe += 1
        return model(z, torch.full((z.shape[0],), num_train_timesteps * t, dtype=torch.float64, device=z.device))

    ts = [float(t) for t in ts]
    cache: dict = {}
    for t, t_next in zip(ts[:-1], ts[1:]):
        x = step(v, x, t, t_next - t, cache)
    return x, nfe
