"""Analytic data distributions with exact eps and an exact probability-flow ODE (docs/math.md section 8).

For data x0 ~ p, the noisy state is x = alpha x0 + sigma n, and in ``xbar = x / alpha``,
``lambda = sigma / alpha`` the probability-flow ODE is ``d xbar / d lambda = eps``. These models
know eps in closed form, so samplers can be judged against the true ODE rather than each other:

- :class:`Gaussian`: x0 ~ N(mu, diag(s^2)); the flow itself is closed form.
- :class:`GaussianMixture`: isotropic components; the flow comes from a tight-tolerance
  integrator (scipy's DOP853, rtol 1e-10).
- :class:`PointSet`: a finite set of points (a mixture of zero-width components).

Each is an eps model (``model(x, t)``) for a discrete VP :class:`~bdia.Schedule` (``t`` = training
timestep, fractional values interpolated in log lambda), or, with ``schedule=None``, for a
variance-exploding grid where ``t`` is EDM's sigma and alpha = 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .schedule import Grid, Schedule, t_to_sigma

__all__ = ["FlowGaussianMixture", "Gaussian", "GaussianMixture", "PointSet"]

_LAMBDA_FLOOR = 1e-6  # the numerical ODE stops here and finishes with one Euler step to lambda = 0


class _AnalyticModel:
    """Base: the eps contract over ``eps_xbar(xbar, lambda)``, and reference solutions on a grid."""

    dtype = torch.float64  # the model computes in float64; the solver feeds it float64

    def __init__(self, schedule: Schedule | None = None):
        self.schedule = schedule

    # -- noise level of a model time ---------------------------------------------------------------
    def lambda_of(self, t: torch.Tensor) -> torch.Tensor:
        """lambda = sigma/alpha at model time t (training timestep, or EDM sigma when schedule is None)."""
        t = t.to(torch.float64)
        if self.schedule is None:
            return t
        return t_to_sigma(self.schedule, t.cpu()).to(t.device)  # lambda is EDM's sigma

    # -- the eps contract -------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        lam = self.lambda_of(t).reshape((-1,) + (1,) * (x.dim() - 1)).to(x.device)
        alpha = 1.0 / torch.sqrt(1.0 + lam**2) if self.schedule is not None else torch.ones_like(lam)
        xd = x.to(torch.float64)
        return self.eps_xbar(xd / alpha, lam).to(x.dtype)

    def eps_xbar(self, xbar: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- exact flow -------------------------------------------------------------------------------
    def flow(self, xbar: torch.Tensor, lam_from: float, lam_to: float) -> torch.Tensor:
        """Carry xbar along the probability-flow ODE from lambda = lam_from to lam_to (float64).

        Integrates d xbar / d log(lambda) = lambda * eps with DOP853 (rtol 1e-11); the stretch below
        lambda = 1e-6 next to the clean end is one Euler step, where eps is O(lambda).
        """
        from scipy.integrate import solve_ivp

        shape = xbar.shape
        col = (shape[0],) + (1,) * (len(shape) - 1)
        out = xbar.detach().to(torch.float64).cpu().clone()

        def euler(x: torch.Tensor, l0: float, l1: float) -> torch.Tensor:
            return x + (l1 - l0) * self.eps_xbar(x, torch.full(col, max(l0, l1), dtype=torch.float64))

        def rhs(s: float, y: np.ndarray) -> np.ndarray:
            lam = math.exp(s)
            e = self.eps_xbar(torch.from_numpy(y).reshape(shape), torch.full(col, lam, dtype=torch.float64))
            return (lam * e).reshape(-1).numpy()

        lo, hi = max(lam_from, _LAMBDA_FLOOR), max(lam_to, _LAMBDA_FLOOR)
        if lam_from < _LAMBDA_FLOOR:
            out = euler(out, lam_from, _LAMBDA_FLOOR)
        if lo != hi:
            sol = solve_ivp(
                rhs, (math.log(lo), math.log(hi)), out.reshape(-1).numpy(), method="DOP853", rtol=1e-11, atol=1e-12
            )
            if not sol.success:
                raise RuntimeError(f"reference ODE solver failed: {sol.message}")
            out = torch.from_numpy(sol.y[:, -1].copy()).reshape(shape)
        if lam_to < _LAMBDA_FLOOR:
            out = euler(out, _LAMBDA_FLOOR, lam_to)
        return out

    def reference_sample(self, noise: torch.Tensor, grid: Grid) -> torch.Tensor:
        """The exact ODE solution from ``noise`` at grid point 0 to the clean end of ``grid``."""
        lam = grid.lambdas
        xbar = self.flow(noise.to(torch.float64) / float(grid.alphas[0]), float(lam[0]), float(lam[-1]))
        return xbar * float(grid.alphas[-1])

    def reference_invert(self, x0: torch.Tensor, grid: Grid) -> torch.Tensor:
        """The exact ODE's noise at grid point 0 for the clean sample ``x0`` at the end of ``grid``."""
        lam = grid.lambdas
        xbar = self.flow(x0.to(torch.float64) / float(grid.alphas[-1]), float(lam[-1]), float(lam[0]))
        return xbar * float(grid.alphas[0])


class GaussianMixture(_AnalyticModel):
    """Mixture of isotropic Gaussians N(means[k], stds[k]^2 I) with weights; exact eps for every noise level.

    Args:
        means: (K, *event_shape) component means.
        stds: (K,) component standard deviations (0 allowed: a point mass), or one number.
        weights: (K,) mixture weights (normalised here); uniform by default.
        schedule: the discrete VP schedule whose timesteps the model is called with; None for a
            VE grid (t = EDM sigma).
    """

    def __init__(
        self,
        means: torch.Tensor,
        stds: float | Sequence[float] | torch.Tensor = 0.1,
        weights: Sequence[float] | torch.Tensor | None = None,
        schedule: Schedule | None = None,
    ):
        super().__init__(schedule)
        self.means = torch.as_tensor(means, dtype=torch.float64)
        k = self.means.shape[0]
        self.stds = torch.as_tensor(stds, dtype=torch.float64).expand(k).clone()
        w = torch.ones(k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (k,) or (w <= 0).any() or (self.stds < 0).any():
            raise ValueError("weights must be K positive numbers and stds K non-negative numbers")
        self.log_weights = torch.log(w / w.sum())

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.means.shape[1:])

    def eps_xbar(self, xbar: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        # xbar | k ~ N(m_k, v_k I), v_k = s_k^2 + lambda^2; eps = lambda * sum_k r_k (xbar - m_k) / v_k
        b = xbar.shape[0]
        flat = xbar.reshape(b, 1, -1)
        m = self.means.to(xbar.device).reshape(1, self.means.shape[0], -1)
        lam2 = lam.reshape(b, 1).to(xbar.device) ** 2
        v = self.stds.to(xbar.device).reshape(1, -1) ** 2 + lam2  # (B, K)
        diff = flat - m  # (B, K, D)
        d = flat.shape[-1]
        logp = self.log_weights.to(xbar.device) - 0.5 * d * torch.log(v) - 0.5 * (diff**2).sum(-1) / v
        r = torch.softmax(logp, dim=1)  # responsibilities
        e = (r / v).unsqueeze(-1).mul(diff).sum(1) * lam.reshape(b, 1).to(xbar.device)
        return e.reshape(xbar.shape)

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact samples from the data distribution (float64)."""
        k = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        noise = torch.randn((n,) + self.event_shape, generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k].reshape((n,) + (1,) * len(self.event_shape)) * noise


class PointSet(GaussianMixture):
    """A finite set of points with weights: the empirical distribution (a zero-width mixture)."""

    def __init__(
        self,
        points: torch.Tensor,
        weights: Sequence[float] | torch.Tensor | None = None,
        schedule: Schedule | None = None,
    ):
        super().__init__(points, 0.0, weights, schedule)


class Gaussian(_AnalyticModel):
    """x0 ~ N(mean, diag(std^2)): eps and the flow in closed form.

    In (xbar, lambda), xbar ~ N(mean, std^2 + lambda^2) and the flow rescales the deviation from the
    mean: xbar(l1) = mean + (xbar(l0) - mean) sqrt(std^2 + l1^2) / sqrt(std^2 + l0^2).
    """

    def __init__(self, mean: torch.Tensor, std: float | torch.Tensor = 1.0, schedule: Schedule | None = None):
        super().__init__(schedule)
        self.mean = torch.as_tensor(mean, dtype=torch.float64)
        self.std = torch.as_tensor(std, dtype=torch.float64).expand(self.mean.shape).clone()
        if (self.std < 0).any():
            raise ValueError("std must be non-negative")

    def eps_xbar(self, xbar: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        lam = lam.to(xbar.device)
        s2 = self.std.to(xbar.device) ** 2
        return lam * (xbar - self.mean.to(xbar.device)) / (s2 + lam**2)

    def flow(self, xbar: torch.Tensor, lam_from: float, lam_to: float) -> torch.Tensor:
        """Closed-form flow (see the class docstring)."""
        s2 = self.std**2
        scale = torch.sqrt((s2 + lam_to**2) / (s2 + lam_from**2))
        return self.mean + (xbar.to(torch.float64) - self.mean) * scale

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn((n,) + tuple(self.mean.shape), generator=generator, dtype=torch.float64)
        return self.mean + self.std * noise


class FlowGaussianMixture(GaussianMixture):
    """The mixture under the flow-matching path x_t = (1 - t) x0 + t eps (docs/math.md section 9).

    A velocity model: ``model(x, s)`` with model time s = num_train_timesteps * t returns the exact
    velocity v = E[eps - x0 | x_t], finite on all of t in (0, 1] (at t = 1 it is x - E[x0]), for
    :func:`bdia.flow.flow_grid` / :class:`bdia.flow.FlowSchedule` grids. Per component k, with
    V = (1 - t)^2 s_k^2 + t^2 and d = x - (1 - t) m_k: v_k = -m_k + (t - (1 - t) s_k^2) d / V.
    ``reference_sample`` / ``reference_invert`` integrate dx/dt = v with DOP853 (rtol 1e-11).
    """

    def __init__(
        self,
        means: torch.Tensor,
        stds: float | Sequence[float] | torch.Tensor = 0.1,
        weights: Sequence[float] | torch.Tensor | None = None,
        num_train_timesteps: int = 1000,
    ):
        super().__init__(means, stds, weights, schedule=None)
        if (self.stds <= 0).any():
            raise ValueError("a flow mixture needs stds > 0: the velocity of a point mass is singular at t = 0")
        self.num_train_timesteps = num_train_timesteps

    def velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Exact v(x, t) for t of shape (B,) in (0, 1] (float64)."""
        b = x.shape[0]
        flat = x.to(torch.float64).reshape(b, 1, -1)
        m = self.means.to(x.device).reshape(1, self.means.shape[0], -1)
        t = t.to(torch.float64).reshape(b, 1).to(x.device)
        s2 = self.stds.to(x.device).reshape(1, -1) ** 2
        var = (1 - t) ** 2 * s2 + t**2  # (B, K)
        diff = flat - (1 - t).unsqueeze(-1) * m  # (B, K, D)
        logp = self.log_weights.to(x.device) - 0.5 * flat.shape[-1] * torch.log(var) - 0.5 * (diff**2).sum(-1) / var
        r = torch.softmax(logp, dim=1)
        v_k = -m + ((t - (1 - t) * s2) / var).unsqueeze(-1) * diff
        return (r.unsqueeze(-1) * v_k).sum(1).reshape(x.shape)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.velocity(x, t.to(torch.float64) / self.num_train_timesteps).to(x.dtype)

    def flow(self, x: torch.Tensor, t_from: float, t_to: float) -> torch.Tensor:
        """Carry x along dx/dt = v from t_from to t_to (float64, DOP853, rtol 1e-11)."""
        from scipy.integrate import solve_ivp

        shape = x.shape
        y0 = x.detach().to(torch.float64).cpu().reshape(-1).numpy()
        if t_from == t_to:
            return x.detach().to(torch.float64).cpu().clone()

        def rhs(t: float, y: np.ndarray) -> np.ndarray:
            tt = torch.full((shape[0],), t, dtype=torch.float64)
            return self.velocity(torch.from_numpy(y).reshape(shape), tt).reshape(-1).numpy()

        sol = solve_ivp(rhs, (t_from, t_to), y0, method="DOP853", rtol=1e-11, atol=1e-12)
        if not sol.success:
            raise RuntimeError(f"reference ODE solver failed: {sol.message}")
        return torch.from_numpy(sol.y[:, -1].copy()).reshape(shape)

    def reference_sample(self, noise: torch.Tensor, grid: Grid) -> torch.Tensor:
        """The exact ODE solution from ``noise`` at grid point 0 to the clean end of ``grid``."""
        return self.flow(noise, float(grid.sigmas[0]), float(grid.sigmas[-1]))

    def reference_invert(self, x0: torch.Tensor, grid: Grid) -> torch.Tensor:
        """The exact ODE's state at grid point 0 for the clean sample ``x0`` at the end of ``grid``."""
        return self.flow(x0, float(grid.sigmas[-1]), float(grid.sigmas[0]))
