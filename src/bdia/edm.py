"""The EDM / k-diffusion convention: denoisers ``D(x, sigma)``, Karras sigma grids, and conversions.

Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models" (EDM, NeurIPS
2022), and Katherine Crowson's k-diffusion write a model as a denoiser ``D(x, sigma) -> x0_hat`` on
the variance-exploding state ``x = x0 + sigma n``, with the probability-flow ODE
``dx/dsigma = (x - D(x, sigma)) / sigma``. In this project's variables (docs/math.md section 1) that is
``d xbar / d lambda = eps`` with ``xbar = x``, ``lambda = sigma`` and ``eps = (x - D) / sigma``:
EDM's state *is* xbar and EDM's sigma *is* lambda, so every sampler here runs on an EDM model
unchanged, and the DDIM transition is EDM's Euler step.

Code name -> symbol: ``sigma`` -> EDM's sigma (= lambda = sigma_t / alpha_t of a VP model),
``x`` -> EDM's x (= xbar = z / alpha), ``D`` -> the denoiser, ``rho`` -> Karras' rho.

- :func:`karras_grid`: EDM's time steps (Karras et al. 2022, eq. 5) as a VE :class:`~bdia.Grid`
  (alpha = 1, sigma = EDM sigma, model time = sigma). Start generation from ``sigma_max * randn``.
- :func:`karras_grid_for`: the same spacing on a discrete VP model's own sigma range, with model
  times the fractional training timesteps k-diffusion's ``DiscreteSchedule`` would pass. Start from
  plain ``randn`` (the VP state z = x / sqrt(1 + sigma^2)).
- :func:`from_denoiser`: an EDM / k-diffusion denoiser as this project's eps model (for VE grids).
- :func:`to_denoiser`: a discrete VP eps model as a k-diffusion-style denoiser.

VE or VP grid for the same noise levels: one-step solvers (``bdia.DDIM`` = EDM's Euler, ``bdia.Heun``)
give the same samples on both. BDIA and EDICT do not: their mixing acts on the state z, which is
EDM's x on the VE grid (the paper's BDIA-EDM) but ``alpha * xbar`` on the VP grid, i.e. gamma there is
``gamma * alpha_{i-1} / alpha_{i+1}`` in EDM's variables, which damps the oscillating mode at high noise.
On the VE grid to sigma 80 that mode grows in generation by about sigma_max / (data scale), so a float32
round trip loses about three digits more than on the VP grid (measured by `bdia bench`, workload edm).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .models import _Adapter
from .schedule import Grid, Schedule, schedule_sigmas, sigma_to_t, t_to_sigma  # re-exported

__all__ = [
    "karras_sigmas",
    "karras_grid",
    "karras_grid_for",
    "vp_grid_from_sigmas",
    "schedule_sigmas",
    "sigma_to_t",
    "t_to_sigma",
    "from_denoiser",
    "to_denoiser",
]

# EDM's defaults for its pixel-space models (Karras et al. 2022, Table 1).
SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0


def _check_steps(num_steps: Any) -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
        raise TypeError(f"num_steps must be an int, got {type(num_steps).__name__}")
    if num_steps < 2:
        raise ValueError(f"num_steps must be at least 2 (every grid has two steps or more), got {num_steps}")
    return int(num_steps)


def _check_positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite positive number, got {value!r}")
    return float(value)


def karras_sigmas(
    num_steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO
) -> torch.Tensor:
    """Karras et al. 2022, eq. 5: N sigmas from sigma_max down to sigma_min, then 0 (float64, (N+1,)).

    ``sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``;
    k-diffusion's ``get_sigmas_karras``, computed in float64.
    """
    n = _check_steps(num_steps)
    lo, hi, rho = (
        _check_positive(sigma_min, "sigma_min"),
        _check_positive(sigma_max, "sigma_max"),
        _check_positive(rho, "rho"),
    )
    if lo >= hi:
        raise ValueError(f"sigma_min ({sigma_min}) must be smaller than sigma_max ({sigma_max})")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    sigmas = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    sigmas[0], sigmas[-1] = hi, lo  # exact ends despite the power's rounding
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def karras_grid(num_steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO) -> Grid:
    """EDM's time steps as a variance-exploding :class:`~bdia.Grid`: alpha = 1, sigma = EDM sigma.

    The model time at grid point i is sigma_i itself, what :func:`from_denoiser` passes to the
    denoiser; the clean terminal point has sigma = 0 and is never evaluated. Generation starts from
    ``sigma_max * torch.randn(...)`` (``grid.sigmas[0]``), as in EDM's Algorithm 1.
    """
    s = karras_sigmas(num_steps, sigma_min, sigma_max, rho)
    return Grid(timesteps=s[:-1].clone(), alphas=torch.ones_like(s), sigmas=s, time_of=_model_time_is_sigma)


def _model_time_is_sigma(sigma: torch.Tensor) -> torch.Tensor:
    """The VE grids' map from noise level to model time: EDM's sigma is the model time."""
    return sigma


def karras_grid_for(
    schedule: Schedule,
    num_steps: int,
    rho: float = RHO,
    *,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    quantize: bool = False,
) -> Grid:
    """A Karras-spaced grid on which a discrete VP eps model (Stable Diffusion, the digits model) is called.

    The EDM sigmas run from the schedule's largest to its smallest noise level (``sqrt((1-abar)/abar)``
    at the last and first training timesteps, or ``sigma_max``/``sigma_min`` if given, which must lie
    in that range), spaced as :func:`karras_sigmas`; the grid holds the VP coefficients
    ``alpha = 1 / sqrt(1 + s^2)``, ``sigma = s / sqrt(1 + s^2)`` and model times are the fractional
    training timesteps :func:`sigma_to_t` gives, as k-diffusion's ``DiscreteEpsDDPMDenoiser`` calls
    the model. The terminal point is clean (s = 0). Generation starts from plain ``torch.randn``.

    ``quantize=True`` rounds each model time to the nearest integer timestep and moves the grid's
    noise level there too (k-diffusion's ``quantize``), for models that only accept integer t.
    :func:`bdia.to_eps` converts v- and x0-predictions with alpha and sigma at the fractional timestep
    (:func:`t_to_sigma`), the grid point's own, on quantized and fractional grids alike.
    """
    n = _check_steps(num_steps)
    table = schedule_sigmas(schedule)
    lo_s, hi_s = float(table.min()), float(table.max())
    lo = lo_s if sigma_min is None else _check_positive(sigma_min, "sigma_min")
    hi = hi_s if sigma_max is None else _check_positive(sigma_max, "sigma_max")
    tol = 1e-9
    if lo < lo_s * (1 - tol) or hi > hi_s * (1 + tol):
        raise ValueError(
            f"sigma range [{lo:.6g}, {hi:.6g}] leaves the schedule's [{lo_s:.6g}, {hi_s:.6g}]; the model was "
            "never trained outside it"
        )
    return vp_grid_from_sigmas(schedule, karras_sigmas(n, lo, hi, rho)[:-1], quantize=quantize)


def vp_grid_from_sigmas(schedule: Schedule, sigmas: torch.Tensor, *, quantize: bool = False) -> Grid:
    """The VP grid of a discrete model at the given EDM sigmas (descending, in the schedule's range) plus a clean end.

    alpha = 1 / sqrt(1 + s^2), sigma = s alpha; model times are the fractional timesteps of
    :func:`sigma_to_t` (rounded, with the noise level moved there, when ``quantize``).
    """
    s = torch.as_tensor(sigmas, dtype=torch.float64)
    ts = sigma_to_t(schedule, s)
    if quantize:
        ts = ts.round()
        s = t_to_sigma(schedule, ts)
    s = torch.cat([s, s.new_zeros(1)])
    alphas = 1.0 / torch.sqrt(1.0 + s**2)
    if quantize:  # the model takes integer times only: nothing between the grid points
        return Grid(timesteps=ts, alphas=alphas, sigmas=s * alphas)
    return Grid(
        timesteps=ts, alphas=alphas, sigmas=s * alphas, time_of=schedule.time_of, lambda_range=schedule.lambda_range
    )


class _DenoiserToEps(_Adapter):
    """eps(x, t) = (x - D(x, sigma)) / sigma with sigma = t: an EDM denoiser on a VE grid."""

    def __init__(self, denoiser: Callable):
        self.model = denoiser

    def __call__(self, x: torch.Tensor, t: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        sigma = torch.as_tensor(t, device=x.device)
        if (sigma <= 0).any():
            raise ValueError(
                "from_denoiser's model time is EDM's sigma and must be positive; use a VE grid "
                "such as bdia.edm.karras_grid (the clean terminal point is never evaluated)"
            )
        denoised = self.model(x, sigma, *args, **kwargs)
        sig = sigma.reshape((-1,) + (1,) * (x.dim() - 1))
        return ((x - denoised) / sig).to(x.dtype)

    def __repr__(self) -> str:
        return f"from_denoiser({self.model!r})"


def from_denoiser(denoiser: Callable) -> Callable:
    """An EDM / k-diffusion denoiser ``D(x, sigma) -> x0_hat`` as the canonical eps model, for VE grids.

    ``eps = (x - D(x, sigma)) / sigma`` with ``sigma`` the model time of the grid, a (B,) tensor
    (float64 from the grid; a network that wants another dtype converts it, as EDM's ``EDMPrecond``
    does). Use it on :func:`karras_grid` (or any Grid with alpha = 1 and model time = sigma); then
    ``bdia.DDIM`` is EDM's Euler sampler, ``bdia.Heun`` EDM's deterministic Algorithm 1, and BDIA
    over Heun the paper's BDIA-EDM. Extra arguments (a class label) are passed through; the
    denoiser's dtype declaration is forwarded.
    """
    if not callable(denoiser):
        raise TypeError(f"denoiser must be callable as D(x, sigma), got {type(denoiser).__name__}")
    return _DenoiserToEps(denoiser)


class _EpsToDenoiser(_Adapter):
    """D(x, sigma) = x - sigma * eps(x / sqrt(1 + sigma^2), t(sigma)): k-diffusion's DiscreteEpsDDPMDenoiser."""

    def __init__(self, eps_model: Callable, schedule: Schedule):
        self.model, self.schedule = eps_model, schedule
        self.sigmas = schedule_sigmas(schedule)
        self.sigma_min, self.sigma_max = float(self.sigmas.min()), float(self.sigmas.max())

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma_to_t(self.schedule, sigma)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float, *args: Any, **kwargs: Any) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
        if sigma.dim() == 0:
            sigma = sigma.expand(x.shape[0])
        if sigma.shape != (x.shape[0],):
            raise ValueError(f"sigma must be a number or a ({x.shape[0]},) tensor, got shape {tuple(sigma.shape)}")
        if not torch.isfinite(sigma).all() or (sigma < 0).any():
            raise ValueError("sigma must be finite and non-negative")
        noisy = sigma > 0
        if (sigma[noisy] < self.sigma_min * (1 - 1e-9)).any() or (sigma > self.sigma_max * (1 + 1e-9)).any():
            raise ValueError(
                f"sigma {sigma.tolist()} leaves the model's range [{self.sigma_min:.6g}, {self.sigma_max:.6g}] "
                "(0 is allowed: D(x, 0) = x); build the sigma grid from denoiser.sigma_min and sigma_max"
            )
        out = x.clone()
        if noisy.any():
            s = sigma.clamp_min(self.sigma_min)
            shape = (-1,) + (1,) * (x.dim() - 1)
            c_in = (1.0 / torch.sqrt(1.0 + s**2)).reshape(shape)
            eps = self.model((x * c_in).to(x.dtype), self.sigma_to_t(s).to(x.device), *args, **kwargs)
            den = x - s.reshape(shape).to(x.dtype) * eps
            out = torch.where(noisy.reshape(shape), den.to(x.dtype), x)
        return out

    def __repr__(self) -> str:
        return f"to_denoiser({self.model!r})"


def to_denoiser(eps_model: Callable, schedule: Schedule) -> Callable:
    """A discrete VP eps model as an EDM / k-diffusion denoiser ``D(x, sigma) -> x0_hat``.

    ``x`` is in EDM scaling (x = z / alpha); the model is called at ``x / sqrt(1 + sigma^2)`` with the
    fractional timestep :func:`sigma_to_t` gives (k-diffusion's ``DiscreteEpsDDPMDenoiser``), and
    ``D = x - sigma * eps``. ``D(x, 0) = x``. The result carries ``sigma_min``, ``sigma_max`` and
    ``sigmas`` like k-diffusion's wrappers, so ``karras_sigmas(n, D.sigma_min, D.sigma_max)`` builds
    its grid; sigmas outside that range are refused. Wrap v/x0 models with :func:`bdia.to_eps` first.
    """
    if not callable(eps_model):
        raise TypeError(f"eps_model must be callable as model(x, t), got {type(eps_model).__name__}")
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a bdia.Schedule, got {type(schedule).__name__}")
    return _EpsToDenoiser(eps_model, schedule)
