"""Flow matching (docs/math.md section 9): grids against diffusers' FlowMatchEulerDiscreteScheduler, the DDIM
move as its Euler step, exact inverses of every solver on flow grids, measured orders, the baselines."""

import numpy as np
import pytest
import torch

import bdia
from bdia.analytic import FlowGaussianMixture
from bdia.flow import FlowSchedule, calculate_shift, flow_grid, flux_sigmas, integrate_flow
from bdia.solvers import Evaluator
from test_protocol import ORDER_CONFIGS as PROTOCOL_ORDER_CONFIGS

SD3 = FlowSchedule.from_config({"shift": 3.0})
FLUX = FlowSchedule.from_config({"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15})

CONFIGS = {  # name -> (scheduler config, set_timesteps kwargs; "flux" = the sigmas FluxPipeline passes)
    "sd3": ({"shift": 3.0}, {}),
    "shift1.7-T500": ({"shift": 1.7, "num_train_timesteps": 500}, {}),
    "dynamic-mu": ({"use_dynamic_shifting": True}, {"mu": 0.8}),
    "flux": ({"use_dynamic_shifting": True}, {"mu": calculate_shift(1024), "sigmas": "flux"}),
    "terminal": ({"shift": 3.0, "shift_terminal": 0.02}, {}),
    "linear-shift": ({"use_dynamic_shifting": True, "time_shift_type": "linear"}, {"mu": 0.7}),
}


def _mixture(dim=4, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return FlowGaussianMixture(0.7 * torch.randn(k, dim, generator=g, dtype=torch.float64), 0.4)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_grid_is_what_set_timesteps_materialises(name):
    diffusers = pytest.importorskip("diffusers")
    cfg, kwargs = CONFIGS[name]
    for n in (2, 7, 28, 50):
        kw = {**kwargs, "sigmas": flux_sigmas(n)} if kwargs.get("sigmas") == "flux" else kwargs
        ref = diffusers.FlowMatchEulerDiscreteScheduler(**cfg)
        ref.set_timesteps(n, **kw)
        grid = FlowSchedule.from_config(cfg).grid(n, **kw)
        assert torch.equal(grid.timesteps, ref.timesteps), (name, n)
        assert torch.equal(grid.sigmas.to(torch.float32), ref.sigmas) and grid.sigmas[-1] == 0, (name, n)
        assert grid.prediction == "velocity"
        assert torch.equal(grid.alphas + grid.sigmas, torch.ones(n + 1, dtype=torch.float64))


def test_mu_is_flux_calculate_shift():
    flux = pytest.importorskip("diffusers.pipelines.flux.pipeline_flux")
    for seq_len in (256, 1024, 4096, 777):
        assert FLUX.mu(seq_len) == flux.calculate_shift(seq_len, 256, 4096, 0.5, 1.15)


def test_ddim_on_a_flow_grid_is_flow_match_euler_step_bit_for_bit():
    diffusers = pytest.importorskip("diffusers")
    model = _mixture()
    noise = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    for cfg, kw in (CONFIGS["sd3"], (CONFIGS["flux"][0], {"mu": 1.0, "sigmas": flux_sigmas(12)})):
        ref = diffusers.FlowMatchEulerDiscreteScheduler(**cfg)
        ref.set_timesteps(12, **kw)
        x = noise.clone()
        for t in ref.timesteps:
            x = ref.step(model(x, t.expand(3)), t, x).prev_sample
        grid = FlowSchedule.from_config(cfg).grid(12, **kw)
        ours = bdia.DDIM(state_dtype=torch.float32).sample(model, noise, grid)
        assert torch.equal(ours, x)


def test_heun_on_a_flow_grid_is_flow_match_heun():
    """Heun averages the velocity (the trapezoid rule in (x, t)), Euler into t = 0.

    As FlowMatchHeunDiscreteScheduler does.
    """
    diffusers = pytest.importorskip("diffusers")
    model = _mixture()
    noise = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    ref = diffusers.FlowMatchHeunDiscreteScheduler(shift=3.0)
    ref.set_timesteps(10)
    x = noise.clone()
    for t in ref.timesteps:
        x = ref.step(model(x, t.expand(3)), t, x).prev_sample
    solution = bdia.Heun(state_dtype=torch.float32).solve(model, noise, SD3.grid(10))
    assert solution.nfe == len(ref.timesteps) == 19
    torch.testing.assert_close(solution.x, x, rtol=0, atol=2e-6)  # float32 rounding; Euler alone is 0.27 away


EXACT = {
    "bdia-1": lambda: bdia.BDIA(1.0),
    "bdia-0.7": lambda: bdia.BDIA(0.7),
    "obelm": lambda: bdia.BDIA("belm"),
    "bdia-heun": lambda: bdia.BDIA(0.9, forward="heun"),
    "edict": lambda: bdia.EDICT(0.93),
}
GRIDS = {"sd3": lambda n: SD3.grid(n), "flux": lambda n: FLUX.grid(n, sigmas=flux_sigmas(n), mu=FLUX.mu(4096))}


@pytest.mark.parametrize("grid_name", list(GRIDS))
@pytest.mark.parametrize("name", list(EXACT))
def test_exact_solvers_invert_flow_models(name, grid_name):
    """unstep undoes step at every position (from t = 1 on), and a whole round trip is exact."""
    solver, grid, model = EXACT[name](), GRIDS[grid_name](12), _mixture()
    ev = Evaluator(model, grid, torch.float64, torch.float64, True, "test")
    g = torch.Generator().manual_seed(0)
    for i in range(solver.warmup, grid.num_steps):
        s = solver.State(*(torch.randn(2, 4, generator=g, dtype=torch.float64) for _ in solver.State._fields))
        back = solver.unstep(ev, solver.step(ev, s, grid, i), grid, i)
        for a, b in zip(back, s):
            assert (a - b).abs().max() <= 1e-12 * (1 + b.abs().max()), (name, i)
    x0 = model.sample_data(4, g)
    rec = solver.sample(model, solver.invert(model, x0, grid), grid)
    assert (rec - x0).abs().max() <= 1e-10


def test_obelm_takes_gamma_one_on_the_pure_noise_step_only():
    grid = SD3.grid(10)
    gammas = bdia.belm_gammas(grid)
    assert gammas[0] == 1.0 and all(0 < g < 1.5 for g in gammas[1:])
    inner = flow_grid(grid.sigmas[1:-1])  # the same grid without its t = 1 point
    assert bdia.belm_gammas(inner)[0] != 1.0


# Every configuration of tests/test_protocol.py's ORDER_CONFIGS: declared order == measured order on flow grids.
ORDER_CONFIGS = {k: v for k, v in PROTOCOL_ORDER_CONFIGS.items() if not k.startswith("rex")}  # Rex: test_rex_flow.py
_ORDER_MODEL = _mixture(dim=6, seed=3)
_START = torch.randn(8, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)


@pytest.fixture(scope="module")
def reference_sample():
    return _ORDER_MODEL.flow(_START, 1.0, 0.0)  # every grid below runs from t = 1 to t = 0


def _order(errs, steps):
    return -np.polyfit(np.log(steps[-2:]), np.log(errs[-2:]), 1)[0]


@pytest.mark.parametrize("name", list(ORDER_CONFIGS))
def test_declared_order_is_the_measured_order_on_flow_grids(name, reference_sample):
    make, steps = ORDER_CONFIGS[name]
    solver = make()
    grids = [SD3.grid(n) for n in steps]
    errs = [float((solver.sample(_ORDER_MODEL, _START, g) - reference_sample).abs().max()) for g in grids]
    declared = {solver.order_on(g) for g in grids}
    assert len(declared) == 1 and declared.pop() == pytest.approx(_order(errs, steps), abs=0.35), errs


@pytest.mark.parametrize("method,order,nfe", [("euler", 1, 20), ("rf-solver", 2, 40), ("fireflow", 2, 21)])
def test_baseline_integrators_order_and_nfe(method, order, nfe, reference_sample):
    steps = [10, 20, 40]
    errs = []
    for n in steps:
        x, used = integrate_flow(_ORDER_MODEL, _START, SD3.sigmas(n).tolist() + [0.0], method)
        errs.append(float((x - reference_sample).abs().max()))
        if n == 20:
            assert used == nfe
    assert _order(errs, steps) == pytest.approx(order, abs=0.35), errs
    # run upwards it inverts approximately: closer to the exact ODE's noise with more steps
    x0 = reference_sample
    noise = [integrate_flow(_ORDER_MODEL, x0, [0.0] + SD3.sigmas(n).tolist()[::-1], method)[0] for n in (10, 40)]
    err = [float((z - _START).abs().max()) for z in noise]
    assert err[1] < err[0] / 3


def test_rf_solver_step_is_the_second_order_taylor_formula():
    model = _mixture()
    x = torch.randn(2, 4, dtype=torch.float64)
    t, dt = 0.6, -0.1
    ts = lambda s: torch.full((2,), 1000 * s, dtype=torch.float64)  # noqa: E731
    v = model(x, ts(t))
    v_mid = model(x + dt / 2 * v, ts(t + dt / 2))
    expected = x + dt * v + dt**2 / 2 * (v_mid - v) / (dt / 2)  # Wang et al. 2024, eq. 8
    ours, nfe = integrate_flow(model, x, [t, t + dt], "rf-solver")
    assert nfe == 2 and torch.allclose(ours, expected, rtol=0, atol=1e-14)


def test_flow_velocity_is_exact():
    """v = E[eps - x0 | x_t]: against a Monte Carlo estimate from the joint of (x0, eps) on a 1-d mixture."""
    model = FlowGaussianMixture(torch.tensor([[-1.0], [1.5]], dtype=torch.float64), [0.3, 0.5], weights=[0.3, 0.7])
    g = torch.Generator().manual_seed(0)
    x0 = model.sample_data(400_000, g)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = 0.45
    xt = (1 - t) * x0 + t * eps
    bins = torch.tensor([-0.5, 0.0, 0.5, 1.0])
    for c in bins:
        near = (xt[:, 0] - c).abs() < 0.01
        mc = float((eps - x0)[near].mean())
        exact = float(model(torch.tensor([[float(c)]], dtype=torch.float64), torch.tensor([1000 * t])))
        assert mc == pytest.approx(exact, abs=0.05), (float(c), mc, exact)


def test_grid_and_schedule_errors_say_what_to_change():
    with pytest.raises(ValueError, match="prediction='velocity'"):
        bdia.Grid(
            torch.tensor([1000.0, 500.0]),
            torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64),
            torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64),
        )
    with pytest.raises(ValueError, match="alpha \\+ sigma = 1"):
        bdia.Grid(
            torch.tensor([1000.0, 500.0]),
            torch.tensor([0.1, 0.6, 1.0], dtype=torch.float64),
            torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64),
            prediction="velocity",
        )
    with pytest.raises(ValueError, match="pass mu"):
        FLUX.grid(10)
    with pytest.raises(ValueError, match="use_karras_sigmas=True is not supported"):
        FlowSchedule.from_config({"use_karras_sigmas": True})
    with pytest.raises(ValueError, match="decrease strictly"):
        flow_grid([1.0, 0.5, 0.5])


def test_an_inversion_on_a_flow_grid_refuses_an_eps_grid_of_the_same_numbers():
    model, grid = _mixture(), SD3.grid(8)
    inv = bdia.BDIA(1.0).invert(model, _mixture().sample_data(2), grid)
    other = bdia.Grid(grid.timesteps[1:], grid.alphas[1:], grid.sigmas[1:])
    assert grid.truncated(7 / 8).matches(inv.grid) is False
    assert not other.matches(bdia.Grid(other.timesteps, other.alphas, other.sigmas, "velocity"))
    assert grid.matches(inv.grid)


def test_truncated_flow_grid_strength_inverts_exactly():
    """SDEdit-style strength: the grid's last steps, starting at t < 1 (alpha > 0), stay a velocity grid."""
    model, grid = _mixture(), SD3.grid(20).truncated(0.45)
    assert grid.prediction == "velocity" and grid.num_steps == 9 and 0 < float(grid.alphas[0]) < 1
    x0 = model.sample_data(3, torch.Generator().manual_seed(5))
    for solver in (bdia.BDIA(1.0), bdia.BDIA("belm"), bdia.EDICT()):
        rec = solver.sample(model, solver.invert(model, x0, grid), grid)
        assert (rec - x0).abs().max() <= 1e-12
