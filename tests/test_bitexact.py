"""Bit-exact BDIA and EDICT (docs/math.md section 11): the round trip returns the input bit for bit."""

import dataclasses
import math
import random
import warnings

import numpy as np
import pytest
import torch

import bdia
from bdia import digits
from bdia.analytic import GaussianMixture
from bdia.solvers.bitexact import BitExactBDIA, FixedPoint, buffer_bits, reversible_scale, to_fraction

LINEAR = bdia.Schedule.from_config(dict(beta_schedule="linear", timestep_spacing="linspace"))


def _mixture():
    g = torch.Generator().manual_seed(0)
    return GaussianMixture(torch.randn(3, 2, 4, generator=g, dtype=torch.float64), 0.4, schedule=LINEAR)


def _data(dtype, seed=1):
    return torch.randn(2, 2, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def test_reversible_scale_is_a_bijection_close_to_the_product():
    rng = random.Random(0)
    for n, d in [(24, 25), (1, 10), (1, 2), (93, 100), (25, 24), (4788099541, 2925635533)]:
        q = np.array([rng.randrange(-(2**90), 2**90) for _ in range(200)] + [0, 1, -1], dtype=object)
        buf = np.array([rng.randrange(0, 2**40) for _ in range(q.size)], dtype=object)
        q2, buf2 = reversible_scale(q, buf, n, d)
        back, buf_back = reversible_scale(q2, buf2, d, n)
        assert (back == q).all() and (buf_back == buf).all()
        assert all(abs(a * d - b * n) <= n * d for a, b in zip(q2, q))  # within n units of q n / d


def test_fractions_of_the_usual_factors_are_the_obvious_ones():
    assert to_fraction(0.96) == (24, 25) and to_fraction(0.5) == (1, 2) and to_fraction(0.93) == (93, 100)
    assert to_fraction(1.0) == (1, 1)


def test_fixed_point_split_keeps_every_bit():
    fp = FixedPoint(80)
    x = torch.tensor([1e-30, -3.7, 0.1, 2.0**-100, 123.456, -0.0], dtype=torch.float64)
    q, residual = fp.split(x)
    assert torch.equal(fp.to_float(q) + residual, x)


@pytest.mark.parametrize("gamma", [1.0, 0.96, 0.5, 0.1])
@pytest.mark.parametrize("num_steps", [3, 10, 40])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bdia_round_trip_is_bit_identical(gamma, num_steps, dtype):
    solver, model, grid = bdia.BDIA(gamma, bit_exact=True), _mixture(), LINEAR.grid(num_steps)
    x0 = _data(dtype)
    rec = solver.sample(model, solver.invert(model, x0, grid), grid)
    assert torch.equal(rec, x0)


@pytest.mark.parametrize(
    "solver",
    [
        bdia.EDICT(0.93, bit_exact=True),
        bdia.EDICT(0.5, alternate=False, bit_exact=True),
        bdia.BDIA("belm", bit_exact=True),
        bdia.BDIA(0.8, forward="heun", bit_exact=True),
        bdia.BDIA([0.9, 0.3, 0.7, 0.2, 1.0], bit_exact=True),
    ],
    ids=["edict", "edict-0.5-noalt", "obelm", "bdia-heun", "gamma-sequence"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_other_exact_configurations_round_trip_bit_identically(solver, dtype):
    model, grid, x0 = _mixture(), LINEAR.grid(6), _data(dtype, seed=2)
    assert torch.equal(solver.sample(model, solver.invert(model, x0, grid), grid), x0)


def test_bit_exact_succeeds_where_float64_loses_everything():
    model, grid, x0 = _mixture(), LINEAR.grid(30), _data(torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        float_solver = bdia.BDIA(0.1)
        err = (float_solver.sample(model, float_solver.invert(model, x0, grid), grid) - x0).abs().max()
    assert not err < 1e-3  # amplified by 10^29 (or NaN)
    exact = bdia.BDIA(0.1, bit_exact=True)
    assert torch.equal(exact.sample(model, exact.invert(model, x0, grid), grid), x0)


@pytest.mark.parametrize("gamma", [1.0, 0.5])
def test_round_trip_on_the_digits_model(gamma, single_thread):
    model = digits.load_model()
    eps = digits.eps_model(model, [3, 7], guidance=2.0)
    x0 = digits.load_digits("test").as_model_input()[:2]
    solver, grid = bdia.BDIA(gamma, bit_exact=True), model.schedule.grid(8)
    assert torch.equal(solver.sample(eps, solver.invert(eps, x0, grid), grid), x0)


@pytest.mark.parametrize(
    "exact, reference",
    [(bdia.BDIA(0.7, bit_exact=True), bdia.BDIA(0.7)), (bdia.EDICT(0.93, bit_exact=True), bdia.EDICT(0.93))],
    ids=["bdia", "edict"],
)
def test_generation_matches_the_float_solver(exact, reference):
    model, grid = _mixture(), LINEAR.grid(20)
    noise = _data(torch.float64, seed=3)
    assert (exact.sample(model, noise, grid) - reference.sample(model, noise, grid)).abs().max() <= 1e-10


@pytest.mark.parametrize(
    "solver", [bdia.BDIA(0.3, bit_exact=True), bdia.EDICT(0.93, bit_exact=True)], ids=["bdia", "edict"]
)
def test_unstep_inverts_step_exactly_at_every_position(solver):
    model, grid = _mixture(), LINEAR.grid(8)
    ev = solver.evaluator(model, grid, torch.float64, "test")
    rng = random.Random(0)
    for i in range(solver.warmup, grid.num_steps):
        ints = [
            np.array([rng.randrange(-(2**81), 2**81) for _ in range(16)], dtype=object).reshape(2, 2, 4)
            for _ in range(2)
        ]
        buf = np.array([rng.randrange(0, 2**20) for _ in range(16)], dtype=object).reshape(2, 2, 4)
        s = solver.State(*ints, buf, torch.zeros(2, 2, 4, dtype=torch.float64))
        back = solver.unstep(ev, solver.step(ev, s, grid, i), grid, i)
        assert all((a == b).all() for a, b in zip(back[:3], s[:3]))


@pytest.mark.parametrize(
    "gamma, bits_per_step", [(0.1, math.log2(10)), (0.3, math.log2(10 / 3)), (1.0, 0.0), (0.5, 0.0)]
)
def test_buffer_grows_by_log2_one_over_gamma_per_step_when_generating(gamma, bits_per_step):
    """40 BDIA steps push about log2(d/n) bits each; halving drops only the zero bits below a float's ulp."""
    model, noise = _mixture(), _data(torch.float64)
    bits = buffer_bits(bdia.BDIA(gamma, bit_exact=True).solve(model, noise, LINEAR.grid(41)).state)
    assert 40 * bits_per_step - 2 <= bits <= 40 * bits_per_step


def test_a_nondeterministic_model_breaks_the_round_trip():
    """The guarantee needs a deterministic model: a model whose output jitters is caught by this check."""
    inner, gen = _mixture(), torch.Generator().manual_seed(0)

    def jittery(x, t):
        return inner(x, t) + 1e-12 * torch.randn(x.shape, generator=gen, dtype=x.dtype)

    solver, grid, x0 = bdia.BDIA(0.9, bit_exact=True), LINEAR.grid(6), _data(torch.float64)
    assert not torch.equal(solver.sample(jittery, solver.invert(jittery, x0, grid), grid), x0)


def test_an_inversion_rebuilt_from_its_float_latents_still_samples():
    solver, model, grid = bdia.BDIA(1.0, bit_exact=True), _mixture(), LINEAR.grid(10)
    x0 = _data(torch.float64)
    inv = solver.invert(model, x0, grid)
    assert all(z.dtype == torch.float64 for z in inv.latents)
    inv.metadata.clear()
    assert (solver.sample(model, inv, grid) - x0).abs().max() <= 1e-10


def test_a_solver_rebuilt_from_its_config_is_the_same():
    for solver in [bdia.BDIA(0.96, bit_exact=True), bdia.EDICT(0.93, bit_exact=True)]:
        config = solver.config()
        rebuilt = bdia.SOLVERS[config.pop("name")](**config)
        assert type(rebuilt) is type(solver) and rebuilt.config() == solver.config()


def test_refusals():
    assert isinstance(bdia.BDIA(0.5, bit_exact=True), BitExactBDIA)
    assert type(bdia.BDIA(0.5, bit_exact=False)) is bdia.BDIA
    with pytest.raises(ValueError, match="no exact inverse"):
        bdia.DDIM(bit_exact=True)
    with pytest.raises(ValueError, match="gamma is 0"):
        bdia.BDIA([0.0, 1.0, 1.0, 1.0], bit_exact=True).sample(_mixture(), _data(torch.float64), LINEAR.grid(5))
    with pytest.raises(ValueError, match="state_dtype"):
        bdia.BDIA(bit_exact=True, state_dtype=torch.float32)
    model, grid = _mixture(), LINEAR.grid(5)
    noise = _data(torch.float64).requires_grad_()
    with pytest.raises(ValueError, match="bit_exact=False"):
        bdia.BDIA(bit_exact=True).invert(model, noise, grid, backprop="reversible")
    inv = bdia.BDIA(0.5).invert(model, noise.detach(), grid)
    with pytest.raises(ValueError, match="made by"):
        bdia.BDIA(0.5, bit_exact=True).sample(model, inv, grid)


@pytest.mark.parametrize(
    "solver", [bdia.BDIA(0.2, bit_exact=True), bdia.EDICT(0.7, bit_exact=True)], ids=["bdia", "edict"]
)
def test_reversible_gradient_through_bit_exact_sampling_is_autograds_at_any_gamma(solver):
    """The exact trajectory is recovered by the integer inverse: no amplified rounding, where float reversal fails."""
    g = torch.Generator().manual_seed(0)
    means = torch.randn(3, 2, 4, generator=g, dtype=torch.float64).requires_grad_()
    model = GaussianMixture(means, 0.4, schedule=LINEAR)
    noise, w = _data(torch.float64, seed=4), _data(torch.float64, seed=5)
    grid = LINEAR.grid(40)

    def grads(s, mode):
        start = noise.clone().requires_grad_()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x = s.sample(model, start, grid, backprop=mode)
        return torch.autograd.grad((w * x**2).sum(), [start, means])

    float_solver = solver.float_class(**{k: v for k, v in solver.params().items() if k in ("gamma", "p")})
    ref = grads(float_solver, "autograd")
    for a, b in zip(grads(solver, "reversible"), ref):
        assert ((a - b).norm() / b.norm()) <= 1e-8
    if isinstance(solver, bdia.BDIA):  # float reversal amplifies rounding by 5^39 here
        a = grads(float_solver, "reversible")[0]
        assert not ((a - ref[0]).norm() / ref[0].norm()) <= 1e-3


def test_edited_latents_are_sampled_not_the_stored_exact_state():
    solver, model, grid = bdia.BDIA(0.5, bit_exact=True), _mixture(), LINEAR.grid(8)
    x0 = _data(torch.float64)
    inv = solver.invert(model, x0, grid)
    assert torch.equal(solver.sample(model, inv, grid), x0)
    edited = dataclasses.replace(inv, latents=tuple(z + 0.1 for z in inv.latents))
    assert not torch.equal(solver.sample(model, edited, grid), x0)
    start = tuple(z.clone().requires_grad_() for z in inv.latents)
    x = solver.sample(model, dataclasses.replace(inv, latents=start), grid, backprop="reversible")
    assert torch.equal(x.detach(), x0)  # unchanged latents still regenerate x0 bit for bit
    noise = _data(torch.float64, seed=6)
    assert torch.equal(
        solver.sample(model, noise.requires_grad_(), grid, backprop="reversible").detach(),
        solver.sample(model, noise.detach(), grid),
    )
    assert all(g.abs().sum() > 0 for g in torch.autograd.grad(x.sum(), start))


def test_reversible_bit_exact_backward_costs_one_evaluation_per_bdia_step():
    inner, calls = _mixture(), []

    def model(x, t):
        calls.append(1)
        return inner(x, t)

    noise = _data(torch.float64).requires_grad_()
    x = bdia.BDIA(0.5, bit_exact=True).sample(model, noise, LINEAR.grid(10), backprop="reversible")
    forward = len(calls)
    x.sum().backward()
    assert len(calls) - forward == 10 - bdia.BDIA.warmup
