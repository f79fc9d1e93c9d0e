"""Noise schedules and sampling grids (docs/math.md sections 1 and 2).

A :class:`Schedule` holds the training-time ``alphas_cumprod`` of a variance-preserving diffusion
model, built from a diffusers scheduler config exactly as ``DDIMScheduler`` builds it (same float32
arithmetic, so values agree bit for bit), without importing diffusers. ``Schedule.grid(N)`` returns
the :class:`Grid` a sampler runs on: N descending model timesteps plus one clean terminal point.

Notation (code name -> symbol): ``alphas`` -> alpha_i = sqrt(abar_i), ``sigmas`` -> sigma_i,
``lambdas`` -> lambda_i = sigma_i / alpha_i, index i = 0 at the noise end, N at the clean end.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["Schedule", "Grid"]

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")

# Defaults of diffusers' DDIMScheduler, so a partial config means what it means there.
_DDIM_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "rescale_betas_zero_snr": False,
}

# diffusers' other schedulers use this floor when zero-terminal-SNR rescaling makes abar exactly 0;
# the eps parametrisation divides by alpha, so the floor keeps every step finite (halved when the
# previous timestep is already below it, so sigma/alpha still increases with t).
ZERO_SNR_ABAR = 2.0**-24


MAX_TRAIN_TIMESTEPS = 100_000  # far above any trained model's (1000)


def _cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """GLIDE's squared-cosine schedule (Nichol & Dhariwal 2021), as diffusers discretises it."""

    def abar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [
        min(1 - abar((i + 1) / num_train_timesteps) / abar(i / num_train_timesteps), max_beta)
        for i in range(num_train_timesteps)
    ]
    return torch.tensor(betas, dtype=torch.float32)


def _rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2024, Algorithm 1: shift and scale sqrt(abar) so the last timestep has SNR 0."""
    abar_sqrt = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = abar_sqrt[0].clone(), abar_sqrt[-1].clone()
    abar_sqrt = (abar_sqrt - last) * (first / (first - last))
    abar = abar_sqrt**2
    alphas = torch.cat([abar[0:1], abar[1:] / abar[:-1]])
    return 1 - alphas


def _load_config(config: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    if isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        if os.path.isdir(path):
            path = os.path.join(path, "scheduler_config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"no scheduler config at {path!r}: pass a dict, a scheduler_config.json file, "
                "or the folder that holds it"
            )
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    if isinstance(config, Mapping):
        return dict(config)
    raise TypeError(f"config must be a dict or a path to scheduler_config.json, got {type(config).__name__}")


@dataclass(frozen=True)
class Schedule:
    """Training noise schedule of a discrete variance-preserving model.

    Build it with :meth:`from_config` from a diffusers scheduler config (dict or path). Keys that
    concern stochastic sampling only (``clip_sample``, ``thresholding``, ``eta``...) are ignored:
    deterministic, invertible samplers cannot clip.
    """

    alphas_cumprod: torch.Tensor  # (T,) float64, the float32 values diffusers computes, widened
    final_alphas_cumprod: float  # abar of the clean terminal point tau_N
    timestep_spacing: str = "leading"
    steps_offset: int = 0
    prediction_type: str = "epsilon"
    config: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # the float32 betas DDIMScheduler keeps as ``betas`` (after zero-SNR rescaling); abar derives from them
    betas: torch.Tensor | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | str | os.PathLike, **overrides: Any) -> Schedule:
        """Build from a diffusers scheduler config; ``overrides`` replace single keys."""
        cfg = {**_DDIM_DEFAULTS, **_load_config(config), **overrides}
        T = int(cfg["num_train_timesteps"])
        if not 2 <= T <= MAX_TRAIN_TIMESTEPS:  # bounded as saved inversions are: a config cannot ask for terabytes
            raise ValueError(f"num_train_timesteps must be in [2, {MAX_TRAIN_TIMESTEPS}], got {T}")
        if cfg.get("trained_betas") is not None:
            betas = torch.tensor(cfg["trained_betas"], dtype=torch.float32).flatten()
            if betas.numel() != T:
                raise ValueError(f"trained_betas has {betas.numel()} values but num_train_timesteps is {T}")
        elif cfg["beta_schedule"] == "linear":
            betas = torch.linspace(cfg["beta_start"], cfg["beta_end"], T, dtype=torch.float32)
        elif cfg["beta_schedule"] == "scaled_linear":
            betas = torch.linspace(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, T, dtype=torch.float32) ** 2
        elif cfg["beta_schedule"] == "squaredcos_cap_v2":
            betas = _cosine_betas(T)
        else:
            raise ValueError(
                f"beta_schedule {cfg['beta_schedule']!r} is not supported; use one of {BETA_SCHEDULES} "
                "or give trained_betas"
            )
        if not torch.isfinite(betas).all() or (betas < 0).any() or (betas > 1).any():
            raise ValueError("betas must be finite and in [0, 1]")
        if cfg["rescale_betas_zero_snr"]:
            betas = _rescale_zero_terminal_snr(betas)
        abar32 = torch.cumprod(1.0 - betas, dim=0)
        abar = abar32.to(torch.float64)
        if cfg["rescale_betas_zero_snr"]:
            abar[-1] = min(ZERO_SNR_ABAR, 0.5 * float(abar[-2]))
        final = 1.0 if cfg["set_alpha_to_one"] else float(abar32[0])
        if cfg["timestep_spacing"] not in TIMESTEP_SPACINGS:
            raise ValueError(
                f"timestep_spacing {cfg['timestep_spacing']!r} is not supported; use one of {TIMESTEP_SPACINGS}"
            )
        if cfg["prediction_type"] not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(
                f"prediction_type {cfg['prediction_type']!r} is not supported; "
                "use 'epsilon', 'v_prediction' or 'sample'"
            )
        return cls(
            alphas_cumprod=abar,
            final_alphas_cumprod=final,
            timestep_spacing=cfg["timestep_spacing"],
            steps_offset=int(cfg["steps_offset"]),
            prediction_type=cfg["prediction_type"],
            config=cfg,
            betas=betas,
        )

    def __eq__(self, other: object) -> bool:
        """Equal when every value derived from the config is: the abar table (exactly) and the grid settings."""
        if not isinstance(other, Schedule):
            return NotImplemented
        return (
            self._key() == other._key()
            and self.alphas_cumprod.dtype == other.alphas_cumprod.dtype
            and torch.equal(self.alphas_cumprod, other.alphas_cumprod)
        )

    def __hash__(self) -> int:
        return hash((self._key(), self.alphas_cumprod.numpy().tobytes()))

    def _key(self) -> tuple:
        return (self.final_alphas_cumprod, self.timestep_spacing, self.steps_offset, self.prediction_type)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.numel())

    def timesteps(self, num_steps: int, num_train_timesteps: int | None = None) -> torch.Tensor:
        """The N descending training timesteps diffusers' DDIMScheduler.set_timesteps produces.

        ``num_train_timesteps``: the T of the spacing rule, by default the length of the abar table
        (DDIMScheduler takes T from its config even when its ``trained_betas`` have another length).
        """
        T = self.num_train_timesteps if num_train_timesteps is None else int(num_train_timesteps)
        if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
            raise TypeError(f"num_steps must be an int, got {type(num_steps).__name__}")
        if num_steps < 2:
            raise ValueError(f"num_steps must be at least 2 (every grid has two steps or more), got {num_steps}")
        if num_steps > T:
            raise ValueError(f"num_steps ({num_steps}) cannot exceed num_train_timesteps ({T})")
        if self.timestep_spacing == "linspace":
            ts = np.linspace(0, T - 1, num_steps).round()[::-1].astype(np.int64)
        elif self.timestep_spacing == "leading":
            ratio = T // num_steps
            ts = (np.arange(0, num_steps) * ratio).round()[::-1].astype(np.int64) + self.steps_offset
        else:  # trailing
            ts = np.round(np.arange(T, 0, -T / num_steps)).astype(np.int64) - 1
        if ts.max() >= T or ts.min() < 0:
            raise ValueError(
                f"steps_offset={self.steps_offset} pushes timesteps outside [0, {T - 1}] for {num_steps} steps"
            )
        return torch.from_numpy(ts.copy())

    def grid(self, num_steps: int, num_train_timesteps: int | None = None) -> Grid:
        """The sampling grid for ``num_steps`` model evaluations (docs/math.md section 2);
        ``num_train_timesteps`` as in :meth:`timesteps`."""
        ts = self.timesteps(num_steps, num_train_timesteps)
        if int(ts.max()) >= self.num_train_timesteps:
            raise ValueError(
                f"the {num_steps}-step grid needs timestep {int(ts.max())}, but the schedule has "
                f"{self.num_train_timesteps} betas: give one beta per training timestep"
            )
        abar = torch.cat([self.alphas_cumprod[ts], torch.tensor([self.final_alphas_cumprod], dtype=torch.float64)])
        return Grid.from_alphas_cumprod(ts, abar, time_of=self)

    def time_of(self, lam: torch.Tensor) -> torch.Tensor:
        """The fractional training timestep of noise level lambda (log-linear, :func:`bdia.edm.sigma_to_t`).

        A Grid built from this schedule uses it to call the model between its points (docs/math.md
        section 2); levels outside the schedule's range [lambda(0), lambda(T-1)] are refused there.
        """
        return sigma_to_t(self, lam)

    @property
    def lambda_range(self) -> tuple[float, float]:
        """(smallest, largest) noise level lambda = sigma/alpha the model was trained at."""
        abar = self.alphas_cumprod
        lam = ((1 - abar) / abar).sqrt()
        return float(lam.min()), float(lam.max())


@dataclass(frozen=True, eq=False)
class Grid:
    """N model times (noisiest first) and N+1 (alpha, sigma) pairs, the last one the clean terminal point.

    ``timesteps[i]`` is what the model is called with at grid point i (training timesteps for
    discrete VP models; any float for other parametrisations). Point N is never evaluated.
    Every transition pairs point i with point i+1 of these lists, never a stride formula.

    ``prediction`` is what the model returns on this grid, the quantity the solvers hold: "epsilon"
    (the noise; every grid with alpha > 0), or "velocity", the flow-matching velocity v = dx/dt of a
    grid with alpha + sigma = 1 (docs/math.md section 9; not VP v-prediction). Only a velocity grid may
    start at pure noise (alpha_0 = 0, t = 1), where eps = x carries no information about x0.
    """

    timesteps: torch.Tensor  # (N,)
    alphas: torch.Tensor  # (N+1,) float64
    sigmas: torch.Tensor  # (N+1,) float64
    prediction: str = "epsilon"
    # lambda -> model time between the grid points (the model is called there by multi-stage solvers);
    # None: the model can only be called at the grid's own points. Not part of the fingerprint.
    time_of: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, compare=False, repr=False)
    # the noise levels (lo, hi) at which time_of gives a time the model was trained at
    lambda_range: tuple[float, float] = field(default=(0.0, math.inf), compare=False, repr=False)

    def __post_init__(self) -> None:
        n = self.timesteps.numel()
        if self.timesteps.dim() != 1 or self.alphas.shape != (n + 1,) or self.sigmas.shape != (n + 1,):
            raise ValueError(
                f"a grid needs N timesteps and N+1 alphas and sigmas; got {tuple(self.timesteps.shape)}, "
                f"{tuple(self.alphas.shape)}, {tuple(self.sigmas.shape)}"
            )
        if n < 2:
            raise ValueError(f"a grid needs at least 2 steps, got {n}")
        for name, v in (("alphas", self.alphas), ("sigmas", self.sigmas)):
            if not torch.isfinite(v).all() or (v < 0).any():
                raise ValueError(f"grid {name} must be finite and non-negative")
        if self.prediction == "velocity":
            if not torch.allclose(self.alphas + self.sigmas, torch.ones_like(self.alphas), rtol=0.0, atol=1e-12):
                raise ValueError("a velocity grid needs alpha + sigma = 1 at every point (x_t = (1 - t) x0 + t eps)")
            if (self.alphas[1:] <= 0).any():
                raise ValueError("only the first point of a velocity grid may be pure noise (t = 1)")
        elif self.prediction != "epsilon":
            raise ValueError(f"grid prediction must be 'epsilon' or 'velocity', got {self.prediction!r}")
        elif (self.alphas <= 0).any():
            raise ValueError(
                "grid alphas must be positive (abar = 0 has no eps parametrisation); "
                "a flow model's grid starting at t = 1 needs prediction='velocity'"
            )
        lam = self.lambdas
        # Equal neighbours are allowed: diffusers' linspace spacing ends on timestep 0 followed by a
        # terminal point with the same abar when set_alpha_to_one is false (a zero-length last step).
        if not (lam[1:] <= lam[:-1]).all() or not lam[-1] < lam[0]:
            raise ValueError("grid must run from noisy to clean: sigma/alpha must decrease along it")

    @classmethod
    def from_alphas_cumprod(
        cls,
        timesteps: torch.Tensor,
        alphas_cumprod: torch.Tensor,
        time_of: Callable[[torch.Tensor], torch.Tensor] | Schedule | None = None,
    ) -> Grid:
        """A VP grid from abar at its N+1 points; ``time_of`` is a Schedule (its ``time_of``) or a callable."""
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        lam_range = (0.0, math.inf)
        if isinstance(time_of, Schedule):
            lam_range = time_of.lambda_range
            time_of = time_of.time_of
        return cls(
            timesteps=torch.as_tensor(timesteps),
            alphas=abar.sqrt(),
            sigmas=(1.0 - abar).clamp_min(0.0).sqrt(),
            time_of=time_of,
            lambda_range=lam_range,
        )

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.numel())

    def __len__(self) -> int:
        return self.num_steps

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.alphas**2

    @property
    def lambdas(self) -> torch.Tensor:
        """sigma/alpha, the ODE's time variable (EDM's sigma); strictly decreasing."""
        return self.sigmas / self.alphas

    def truncated(self, strength: float) -> Grid:
        """The last ``round(strength * N)`` steps: invert or edit from part-way, as SDEdit-style ``strength``."""
        if not (0.0 < float(strength) <= 1.0):
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        keep = int(round(float(strength) * self.num_steps))
        if keep < 2:
            raise ValueError(
                f"strength {strength} keeps {keep} of {self.num_steps} steps; at least 2 are needed, "
                "raise strength or the number of steps"
            )
        start = self.num_steps - keep
        return Grid(
            self.timesteps[start:],
            self.alphas[start:],
            self.sigmas[start:],
            self.prediction,
            self.time_of,
            self.lambda_range,
        )

    # ----- between the grid points ---------------------------------------------------------------------
    @property
    def variance_exploding(self) -> bool:
        """alpha = 1 everywhere (EDM's VE grids); otherwise the grid is variance preserving."""
        return bool((self.alphas == 1).all())

    def can_evaluate(self, lam: float) -> bool:
        """Whether the model can be called at noise level ``lam`` (between or at the grid's points)."""
        lo, hi = self.lambda_range
        tol = 1e-9 * max(abs(lo), abs(hi) if math.isfinite(hi) else 0.0, 1e-300)
        return self.time_of is not None and lo - tol <= lam <= hi + tol and lam > 0

    def at(self, lam: float) -> tuple[float, float, float]:
        """(alpha, sigma, model time) at noise level lambda = sigma/alpha between the grid's points.

        alpha and sigma follow the grid's family: VE (alpha = 1, sigma = lambda), flow (alpha + sigma = 1) or
        VP (alpha = 1/sqrt(1 + lambda^2)); the model time comes from ``time_of`` (docs/math.md section 2).
        """
        lam = float(lam)
        if self.time_of is None:
            raise ValueError(
                "this grid cannot call the model between its points (no lambda -> model time map); build it "
                "with Schedule.grid, bdia.grids.make_grid, bdia.karras_grid or bdia.karras_grid_for (quantize=False)"
            )
        if not self.can_evaluate(lam):
            lo, hi = self.lambda_range
            raise ValueError(
                f"noise level {lam:.6g} is outside the range [{lo:.6g}, {hi:.6g}] the model was trained at"
            )
        if self.variance_exploding:
            alpha, sigma = 1.0, lam
        elif self.prediction == "velocity":  # the flow path: alpha + sigma = 1
            alpha = 1.0 / (1.0 + lam)
            sigma = lam * alpha
        else:
            if not torch.allclose(self.alphas**2 + self.sigmas**2, torch.ones_like(self.alphas), rtol=0, atol=1e-9):
                raise ValueError("between its points a grid must be VE (alpha = 1) or VP (alpha^2 + sigma^2 = 1)")
            alpha = 1.0 / math.sqrt(1.0 + lam * lam)
            sigma = lam * alpha
        t = float(self.time_of(torch.tensor(lam, dtype=torch.float64)))
        return alpha, sigma, t

    def fingerprint(self) -> dict[str, Any]:
        """Plain-data description, stored with inversions to refuse a mismatched grid."""
        out: dict[str, Any] = {
            "timesteps": [float(t) for t in self.timesteps.tolist()],
            "alphas": self.alphas.tolist(),
            "sigmas": self.sigmas.tolist(),
        }
        if self.prediction != "epsilon":  # absent means epsilon, so earlier saved grids still match
            out["prediction"] = self.prediction
        return out

    def matches(self, other: Grid | Mapping[str, Any], rtol: float = 1e-12) -> bool:
        a = self.fingerprint()
        b = other.fingerprint() if isinstance(other, Grid) else dict(other)
        if a.pop("prediction", "epsilon") != b.get("prediction", "epsilon"):
            return False
        for key in a:
            x, y = np.asarray(a[key], dtype=np.float64), np.asarray(b.get(key, []), dtype=np.float64)
            if x.shape != y.shape or not np.allclose(x, y, rtol=rtol, atol=0.0):
                return False
        return True

    def __repr__(self) -> str:
        ts = self.timesteps.tolist()
        head = ", ".join(f"{t:g}" for t in ts[:3])
        terminal = float(self.alphas[-1] ** 2)
        return f"Grid(N={self.num_steps}, timesteps=[{head}, ..., {ts[-1]:g}], terminal abar={terminal:.6g})"


# ----- noise level <-> training timestep (EDM sigma = lambda); the one place for these conversions -----
def schedule_sigmas(schedule: Schedule) -> torch.Tensor:
    """EDM sigma of each training timestep of a discrete VP schedule: sqrt((1 - abar) / abar), (T,) float64."""
    abar = schedule.alphas_cumprod.to(torch.float64)
    return ((1 - abar) / abar).sqrt()


def sigma_to_t(schedule: Schedule, sigma: torch.Tensor | float) -> torch.Tensor:
    """The fractional training timestep of EDM sigma ``sigma`` (k-diffusion's ``DiscreteSchedule.sigma_to_t``).

    Linear interpolation of t against log(sigma) between neighbouring training timesteps, clamped to
    [0, T-1]; the inverse of :func:`t_to_sigma`, and of how :mod:`bdia.analytic` reads fractional t.
    EDM's sigma is lambda = sigma_t / alpha_t here (docs/math.md section 1); :mod:`bdia.edm` re-exports these.
    """
    log_sigmas = schedule_sigmas(schedule).log()
    sig = torch.as_tensor(sigma, dtype=torch.float64)
    ts = np.interp(sig.log().cpu().numpy(), log_sigmas.numpy(), np.arange(log_sigmas.numel(), dtype=np.float64))
    return torch.as_tensor(ts, dtype=torch.float64).reshape(sig.shape).to(sig.device)


def t_to_sigma(schedule: Schedule, t: torch.Tensor | float) -> torch.Tensor:
    """EDM sigma at a (fractional) training timestep, log-linear in t (``DiscreteSchedule.t_to_sigma``)."""
    log_sigmas = schedule_sigmas(schedule).log()
    t = torch.as_tensor(t, dtype=torch.float64)
    lo = t.floor().clamp(0, log_sigmas.numel() - 1).long()
    hi = (lo + 1).clamp(max=log_sigmas.numel() - 1)
    w = t - lo.to(torch.float64)
    return torch.exp(log_sigmas[lo] * (1 - w) + log_sigmas[hi] * w)
