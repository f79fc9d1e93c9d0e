"""Analytic reference models: exact eps and the reference ODE."""

import math

import pytest
import torch

import bdia
from bdia.analytic import Gaussian, GaussianMixture, PointSet

SCHED = bdia.Schedule.from_config(
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, set_alpha_to_one=False)
)


def log_density(model, x, alpha, sigma):
    """log p_t(x) of a mixture, written independently of the eps code."""
    out = []
    for k in range(model.means.shape[0]):
        var = (alpha**2 * model.stds[k] ** 2 + sigma**2).flatten()
        d = x[0].numel()
        sq = ((x - alpha * model.means[k]) ** 2).flatten(1).sum(1)
        out.append(model.log_weights[k] - 0.5 * d * torch.log(2 * math.pi * var) - 0.5 * sq / var)
    return torch.logsumexp(torch.stack(out), 0)


@pytest.mark.parametrize("cls", [GaussianMixture, PointSet])
def test_eps_is_minus_sigma_times_score(cls):
    g = torch.Generator().manual_seed(0)
    means = torch.randn(3, 2, 3, generator=g, dtype=torch.float64)
    model = cls(means, schedule=SCHED) if cls is PointSet else cls(means, [0.2, 0.5, 1.0], [1, 2, 3], SCHED)
    x = torch.randn(4, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([5, 200, 600, 999])
    abar = SCHED.alphas_cumprod[t].reshape(-1, 1, 1)
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    (score,) = torch.autograd.grad(log_density(model, x, alpha, sigma).sum(), x)
    assert torch.allclose(model(x.detach(), t), -sigma * score, rtol=1e-8, atol=1e-10)


def test_mixture_flow_matches_closed_form_gaussian():
    gauss = Gaussian(torch.full((5,), 0.3, dtype=torch.float64), 0.7, schedule=SCHED)
    mix = GaussianMixture(torch.full((1, 5), 0.3, dtype=torch.float64), 0.7, schedule=SCHED)
    x = torch.randn(3, 5, dtype=torch.float64) * 5
    for lam_from, lam_to in [(14.0, 0.03), (0.03, 14.0), (5.0, 0.0)]:
        assert torch.allclose(mix.flow(x, lam_from, lam_to), gauss.flow(x, lam_from, lam_to), atol=1e-8)


def test_mixture_reference_round_trip_and_point_set_lands_on_points():
    grid = SCHED.grid(10)
    g = torch.Generator().manual_seed(1)
    mix = GaussianMixture(torch.randn(4, 6, generator=g, dtype=torch.float64), 0.3, schedule=SCHED)
    x0 = mix.sample_data(3, g)
    assert torch.allclose(mix.reference_sample(mix.reference_invert(x0, grid), grid), x0, atol=1e-7)
    points = PointSet(torch.randn(5, 6, generator=g, dtype=torch.float64) * 3, schedule=SCHED)
    clean = bdia.Schedule.from_config(dict(SCHED.config, set_alpha_to_one=True)).grid(10)
    out = points.reference_sample(torch.randn(4, 6, generator=g, dtype=torch.float64), clean)
    dist = torch.cdist(out, points.means).min(1).values
    assert dist.max() < 1e-6


def test_variance_exploding_time_is_sigma():
    model = Gaussian(torch.zeros(3, dtype=torch.float64), 1.0)  # no schedule: t is EDM's sigma
    x = torch.ones(1, 3, dtype=torch.float64)
    sigma = torch.tensor([2.0], dtype=torch.float64)
    # xbar ~ N(0, 1 + sigma^2): eps = sigma * x / (1 + sigma^2)
    assert torch.allclose(model(x, sigma), x * 2.0 / 5.0)
