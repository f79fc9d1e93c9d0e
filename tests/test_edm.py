"""EDM / k-diffusion convention, Karras grids, EDM's Heun and BDIA-EDM (issue 6; docs/math.md section 6)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import bdia
from bdia.edm import from_denoiser, karras_grid, karras_grid_for, karras_sigmas, sigma_to_t, t_to_sigma, to_denoiser
from bdia.solvers import SOLVERS, Heun

SD_CONFIG = {
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}

# Data N(MU, S^2) per coordinate, in EDM variables: x = x0 + sigma n.
MU = torch.tensor([0.5, -1.0, 0.0, 2.0], dtype=torch.float64)
S = torch.tensor([0.3, 0.5, 1.0, 0.7], dtype=torch.float64)


def _col(sigma, x):
    return torch.as_tensor(sigma, dtype=torch.float64).reshape((-1,) + (1,) * (x.dim() - 1))


def gaussian_denoiser(x, sigma):
    """E[x0 | x] for x0 ~ N(MU, S^2): the exact EDM denoiser."""
    sig = _col(sigma, x)
    return MU + S**2 / (S**2 + sig**2) * (x - MU)


def gaussian_flow(x, sigma_from, sigma_to):
    """Closed-form probability-flow ODE: xbar(s1) = mu + (xbar(s0) - mu) sqrt(S^2 + s1^2) / sqrt(S^2 + s0^2)."""
    return MU + (x - MU) * torch.sqrt((S**2 + sigma_to**2) / (S**2 + sigma_from**2))


MU2 = torch.tensor([[1.0, -0.5, 0.3, 0.0], [-1.0, 0.8, -0.2, 0.5]], dtype=torch.float64)
S2 = 0.4  # component std: point masses would make inversion ill-conditioned (the flow contracts by sigma_min/sigma_max)


def mixture_denoiser(x, sigma):
    """Exact denoiser of an equal mixture of N(MU2[k], S2^2 I): nonlinear in x."""
    v = S2**2 + _col(sigma, x).reshape(-1, 1) ** 2  # (B, 1)
    logits = -((x[:, None, :] - MU2[None]) ** 2).sum(-1) / (2 * v)
    w = torch.softmax(logits, dim=1)  # responsibilities, (B, K)
    shrink = (S2**2 / v)[..., None]  # (B, 1, 1)
    return (w[..., None] * (MU2[None] + shrink * (x[:, None, :] - MU2[None]))).sum(1)


def edm_algorithm1(D, x_init, num_steps, sigma_min=0.002, sigma_max=80.0, rho=7.0, heun=True):
    """Karras et al. 2022, Algorithm 1, deterministic (S_churn = 0), transcribed in plain float64 numpy."""
    i = np.arange(num_steps)
    t = (sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t = np.append(t, 0.0)
    x = x_init.numpy() * t[0]  # x_0 ~ N(0, t_0^2 I)

    def d_of(x, ti):
        return (x - D(torch.from_numpy(x), torch.full((x.shape[0],), ti, dtype=torch.float64)).numpy()) / ti

    for k in range(num_steps):
        d = d_of(x, t[k])
        x_next = x + (t[k + 1] - t[k]) * d
        if heun and t[k + 1] != 0:
            d_prime = d_of(x_next, t[k + 1])
            x_next = x + (t[k + 1] - t[k]) * (0.5 * d + 0.5 * d_prime)
        x = x_next
    return torch.from_numpy(x)


def vp_gaussian_eps(schedule):
    """The same Gaussian as a discrete VP eps model called with (fractional) training timesteps."""

    def eps(z, t):
        lam = _col(t_to_sigma(schedule, t), z)
        xbar = z * torch.sqrt(1 + lam**2)
        return lam * (xbar - MU) / (S**2 + lam**2)

    return eps


@pytest.fixture
def noise():
    return torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


# ----- the Karras grid ----------------------------------------------------------------------------------


def test_karras_sigmas_match_formula_and_end_clean():
    s = karras_sigmas(5, 0.002, 80.0, 7.0)
    ramp = np.linspace(0, 1, 5)
    ref = (80 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert s.dtype == torch.float64 and s.shape == (6,)
    np.testing.assert_allclose(s[:-1].numpy(), ref, rtol=1e-14)
    assert s[0] == 80.0 and s[-2] == 0.002 and s[-1] == 0.0
    g = karras_grid(5)
    assert torch.equal(g.alphas, torch.ones(6, dtype=torch.float64))
    assert torch.equal(g.timesteps, s[:-1]) and torch.equal(g.lambdas, s)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sigma_min=1.0, sigma_max=0.5), "smaller than sigma_max"),
        (dict(sigma_min=1.0, sigma_max=1.0), "smaller than sigma_max"),
        (dict(rho=0.0), "rho"),
        (dict(rho=-7.0), "rho"),
        (dict(sigma_min=0.0), "sigma_min"),
        (dict(sigma_max=float("inf")), "sigma_max"),
    ],
)
def test_karras_grid_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        karras_grid(10, **kwargs)


def test_karras_grid_needs_two_steps():
    with pytest.raises(ValueError, match="at least 2"):
        karras_grid(1)
    with pytest.raises(ValueError, match="at least 2"):
        karras_grid_for(bdia.Schedule.from_config(SD_CONFIG), 1)
    with pytest.raises(TypeError):
        karras_grid(10.0)


def test_karras_grid_for_vp_schedule():
    sched = bdia.Schedule.from_config(SD_CONFIG)
    g = karras_grid_for(sched, 12)
    abar = sched.alphas_cumprod
    s_hi, s_lo = math.sqrt((1 - abar[-1]) / abar[-1]), math.sqrt((1 - abar[0]) / abar[0])
    assert g.lambdas[0].item() == pytest.approx(s_hi, rel=1e-12)
    assert g.lambdas[-2].item() == pytest.approx(s_lo, rel=1e-12)
    assert g.lambdas[-1] == 0 and g.alphas[-1] == 1
    torch.testing.assert_close(g.alphas**2 + g.sigmas**2, torch.ones(13, dtype=torch.float64), rtol=0, atol=1e-15)
    # model times: fractional training timesteps from 999 down to 0, and back to the same sigma
    assert g.timesteps[0].item() == pytest.approx(999, abs=1e-9)
    assert g.timesteps[-1].item() == pytest.approx(0, abs=1e-9)
    torch.testing.assert_close(t_to_sigma(sched, g.timesteps), g.lambdas[:-1], rtol=1e-12, atol=0)
    # at integer timesteps sigma_to_t is exact
    ts = torch.tensor([0.0, 1.0, 500.0, 999.0], dtype=torch.float64)
    torch.testing.assert_close(sigma_to_t(sched, t_to_sigma(sched, ts)), ts, rtol=0, atol=1e-9)
    q = karras_grid_for(sched, 12, quantize=True)
    assert torch.equal(q.timesteps, q.timesteps.round())
    torch.testing.assert_close(q.lambdas[:-1], t_to_sigma(sched, q.timesteps), rtol=1e-14, atol=0)
    with pytest.raises(ValueError, match="leaves the schedule"):
        karras_grid_for(sched, 12, sigma_max=80.0)


# ----- EDM's samplers, independently transcribed ---------------------------------------------------------


@pytest.mark.parametrize("denoiser", [gaussian_denoiser, mixture_denoiser])
def test_heun_matches_edm_algorithm1(denoiser, noise):
    for n in (2, 5, 18):
        ours = Heun().sample(from_denoiser(denoiser), noise * 80.0, karras_grid(n))
        ref = edm_algorithm1(denoiser, noise, n)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)


def test_euler_on_ve_grid_is_edm_euler(noise):
    ours = bdia.DDIM().sample(from_denoiser(mixture_denoiser), noise * 80.0, karras_grid(12))
    torch.testing.assert_close(ours, edm_algorithm1(mixture_denoiser, noise, 12, heun=False), rtol=0, atol=1e-12)


def test_gamma_zero_bdia_heun_is_heun(noise):
    model, grid = from_denoiser(mixture_denoiser), karras_grid(10)
    a = bdia.BDIA(0.0, forward="heun").sample(model, noise * 80.0, grid)
    torch.testing.assert_close(a, Heun().sample(model, noise * 80.0, grid), rtol=0, atol=1e-13)


def _measured_order(solver, ns=(16, 32, 64, 128)):
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 80.0
    errs = []
    for n in ns:
        out = solver.sample(from_denoiser(gaussian_denoiser), x, karras_grid(n))
        errs.append(float((out - gaussian_flow(x, 80.0, 0.0)).abs().max()))
    return -np.polyfit(np.log(ns), np.log(errs), 1)[0], errs


def test_heun_measured_order_is_two():
    order, errs = _measured_order(Heun())
    assert 1.8 < order < 2.3, (order, errs)
    order_euler, _ = _measured_order(bdia.DDIM())
    assert 0.9 < order_euler < 1.15
    assert Heun.order == 2


def test_bdia_heun_declared_order_matches_measurement():
    # the Euler backward move costs BDIA-EDM Heun's second order whenever gamma > 0
    solver = bdia.BDIA(1.0, forward="heun")
    order, errs = _measured_order(solver)
    assert abs(order - solver.order) < 0.3, (order, errs)
    assert bdia.BDIA(0.0, forward="heun").order == 2


def test_heun_inversion_is_second_order_approximation():
    x0 = torch.randn(32, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * S + MU
    model = from_denoiser(gaussian_denoiser)
    errs = {}
    for name, solver in (("heun", Heun()), ("ddim", bdia.DDIM())):
        grid = karras_grid(40, sigma_min=0.05, sigma_max=20.0)
        exact = gaussian_flow(gaussian_flow(x0, 0.0, 0.05), 0.05, 20.0)  # the ODE noise of x0
        inv = solver.invert(model, x0, grid)
        assert inv.nfe == (2 * 40 - 1 if name == "heun" else 40)
        errs[name] = float((inv.noise - exact).abs().max())
    assert errs["heun"] < 0.1 * errs["ddim"], errs


# ----- BDIA-EDM: exact inversion, NFE --------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [1.0, 0.96])
def test_bdia_heun_round_trip_ve_float64(gamma):
    x0 = torch.randn(8, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * S + MU
    solver = bdia.BDIA(gamma, forward="heun", backward="euler")
    model, grid = from_denoiser(mixture_denoiser), karras_grid(18)
    inv = solver.invert(model, x0, grid)
    assert inv.nfe == 2 * 18 - 2  # one DDIM-inversion step, then F at points N-1 (Euler) .. 1 (Heun)
    assert inv.solver == {"name": "bdia", "gamma": gamma, "forward": "heun", "start": "ddim"}
    rec = solver.sample(model, inv, grid)
    assert float((rec - x0).abs().max()) <= 1e-10


def test_bdia_heun_round_trip_float32():
    """float32 state: <= 1e-4 where the state is O(1) (VP Karras grid); looser on the VE grid to sigma 80.

    On a VE grid z is EDM's x itself, so BDIA's gamma acts on xbar undamped and the parasitic mode of
    the two-step recurrence grows in generation by about sigma_max / (data scale); rounding of a state
    of size 80 then reaches ~1e-3. On a VP grid the same gamma acts on z = alpha xbar, i.e. on xbar with
    gamma * alpha_{i-1} / alpha_{i+1} < gamma, which damps that mode (docs/math.md section 4, Stability).
    """
    x0 = (torch.randn(8, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * S + MU).float()
    sched = bdia.Schedule.from_config(SD_CONFIG)

    def d32(x, sigma):
        return mixture_denoiser(x.double(), sigma).float()

    def eps32(z, t):
        return vp_gaussian_eps(sched)(z.double(), t).float()

    solver = bdia.BDIA(1.0, forward="heun", state_dtype=torch.float32)
    errs = {}
    for name, model, grid in (("vp", eps32, karras_grid_for(sched, 18)), ("ve", from_denoiser(d32), karras_grid(18))):
        rec = solver.sample(model, solver.invert(model, x0, grid), grid)
        assert rec.dtype == torch.float32
        errs[name] = float((rec - x0).abs().max())
    assert errs["vp"] <= 1e-4 and errs["ve"] <= 1e-2, errs


def test_bdia_heun_round_trip_vp_karras_grid():
    sched = bdia.Schedule.from_config(SD_CONFIG)
    grid = karras_grid_for(sched, 20)
    x0 = torch.randn(8, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * S + MU
    solver, model = bdia.BDIA(0.96, forward="heun"), vp_gaussian_eps(sched)
    rec = solver.sample(model, solver.invert(model, x0, grid), grid)
    assert float((rec - x0).abs().max()) <= 1e-10


def test_nfe_counts(noise):
    counter = {"n": 0}

    def counted(x, t):
        counter["n"] += 1
        return from_denoiser(gaussian_denoiser)(x, t)

    n = 9
    for solver, expected in (
        (Heun(), 2 * n - 1),
        (bdia.BDIA(1.0, forward="heun"), 2 * n - 1),
        (bdia.DDIM(), n),
        (bdia.BDIA(1.0), n),
    ):
        counter["n"] = 0
        solver.sample(counted, noise * 80.0, karras_grid(n))
        assert counter["n"] == expected, solver
    assert Heun.nfe_per_step == 2 and not Heun.exact_inversion and SOLVERS["heun"] is Heun


def test_bdia_backward_must_be_euler():
    with pytest.raises(ValueError, match="backward integrator"):
        bdia.BDIA(1.0, forward="heun", backward="heun")
    with pytest.raises(ValueError, match="one-step integrator"):
        bdia.BDIA(1.0, forward="rk4")


# ----- conversions ---------------------------------------------------------------------------------------


def test_to_denoiser_is_the_posterior_mean():
    sched = bdia.Schedule.from_config(SD_CONFIG)
    D = to_denoiser(vp_gaussian_eps(sched), sched)
    assert D.sigma_max == pytest.approx(float(karras_grid_for(sched, 2).lambdas[0]), rel=1e-12)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64) * 3
    sigma = torch.tensor([D.sigma_max, 1.3, D.sigma_min], dtype=torch.float64)
    torch.testing.assert_close(D(x, sigma), gaussian_denoiser(x, sigma), rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(D(x, 2.0), gaussian_denoiser(x, torch.full((3,), 2.0, dtype=torch.float64)))
    torch.testing.assert_close(D(x, 0.0), x)  # the clean end
    with pytest.raises(ValueError, match="range"):
        D(x, 80.0)


def test_from_denoiser_eps():
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    t = torch.tensor([5.0, 1.0, 0.1], dtype=torch.float64)
    eps = from_denoiser(gaussian_denoiser)(x, t)
    torch.testing.assert_close(eps, (x - MU) * t[:, None] / (S**2 + t[:, None] ** 2))
    with pytest.raises(ValueError, match="positive"):
        from_denoiser(gaussian_denoiser)(x, torch.zeros(3, dtype=torch.float64))
    with pytest.raises(TypeError):
        from_denoiser("not a model")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1, dtype=torch.float16))

    assert from_denoiser(Net()).dtype == torch.float16
    assert to_denoiser(Net(), bdia.Schedule.from_config(SD_CONFIG)).dtype == torch.float16


@pytest.mark.parametrize("name", ["heun", "ddim", "bdia-heun"])
def test_vp_model_on_karras_grid_equals_its_denoiser_on_ve_grid(name):
    """A VP eps model on karras_grid_for == the same model, as a k-diffusion denoiser, on the VE grid.

    One-step solvers agree exactly (every step is linear in z and exact in xbar). BDIA's gamma acts on
    z = alpha xbar, so gamma on the VP grid is gamma * alpha_{i-1} / alpha_{i+1} on the VE grid.
    """
    sched = bdia.Schedule.from_config(SD_CONFIG)
    vp_grid = karras_grid_for(sched, 15)
    s = vp_grid.lambdas
    ve_grid = karras_grid(15, sigma_min=float(s[-2]), sigma_max=float(s[0]))
    torch.testing.assert_close(ve_grid.lambdas, s, rtol=1e-13, atol=0)
    al = vp_grid.alphas
    vp_solver, ve_solver = {
        "heun": (Heun(), Heun()),
        "ddim": (bdia.DDIM(), bdia.DDIM()),
        "bdia-heun": (
            bdia.BDIA(0.96, forward="heun"),
            bdia.BDIA([0.96 * float(al[i - 1] / al[i + 1]) for i in range(1, 15)], forward="heun"),
        ),
    }[name]
    eps = vp_gaussian_eps(sched)
    z0 = torch.randn(6, 4, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    a = vp_solver.sample(eps, z0, vp_grid)
    b = ve_solver.sample(from_denoiser(to_denoiser(eps, sched)), z0 / al[0], ve_grid)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
