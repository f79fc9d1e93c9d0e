"""Samplers: exact round trips, equivalences, independent transcriptions, convergence order, bad input."""

import math
import warnings

import numpy as np
import pytest
import torch

import bdia
from bdia.analytic import Gaussian, GaussianMixture

SD = dict(
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    beta_end=0.012,
    steps_offset=1,
    set_alpha_to_one=False,
    clip_sample=False,
)
SPACINGS = ["leading", "trailing", "linspace"]
EVENT = (3, 4, 4)


def sd_schedule(spacing="leading", **kw):
    return bdia.Schedule.from_config({**SD, "timestep_spacing": spacing, **kw})


def mixture(schedule, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn((4,) + EVENT, generator=g, dtype=torch.float64)
    return GaussianMixture(means, 0.5, schedule=schedule)


def data(model, n, seed=1):
    return model.sample_data(n, torch.Generator().manual_seed(seed))


class CountingModel:
    """Wraps an eps model and counts calls and the dtypes it was called with."""

    def __init__(self, model):
        self.model, self.calls, self.dtypes = model, 0, set()

    @property
    def dtype(self):
        return bdia.model_dtype(self.model)

    def __call__(self, x, t):
        self.calls += 1
        self.dtypes.add(x.dtype)
        return self.model(x, t)


def as_prediction(eps_model, schedule, kind):
    """The same model re-expressed as a v- or x0-predictor (docs/math.md section 1, solved for v or x0)."""
    abar = schedule.alphas_cumprod

    def model(x, t):
        e = eps_model(x, t)
        ab = abar[t.long()].reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        alpha, sigma = ab.sqrt(), (1 - ab).sqrt()
        return (e - sigma * x) / alpha if kind == "v_prediction" else (x - sigma * e) / alpha

    model.dtype = torch.float64
    return model


EXACT = {
    "bdia_g1": lambda **kw: bdia.BDIA(1.0, **kw),
    "bdia_g0.9": lambda **kw: bdia.BDIA(0.9, **kw),
    "obelm": lambda **kw: bdia.BDIA("belm", **kw),
    "edict": lambda **kw: bdia.EDICT(0.93, **kw),
}


@pytest.mark.parametrize("method", list(EXACT))
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("state_dtype", [torch.float64, torch.float32])
def test_exact_round_trip(method, spacing, prediction, batch, state_dtype):
    schedule = sd_schedule(spacing)
    grid = schedule.grid(50)
    gm = mixture(schedule)
    model = (
        bdia.to_eps(as_prediction(gm, schedule, prediction), schedule, prediction) if prediction != "epsilon" else gm
    )
    solver = EXACT[method](state_dtype=state_dtype)
    x0 = data(gm, batch)
    if method == "obelm" and spacing == "linspace":
        # linspace ends on timestep 0 followed by a terminal point with the same abar: O-BELM's gamma is 0 there
        with pytest.raises(ValueError, match="zero-length step"):
            solver.invert(model, x0, grid)
        return
    inv = solver.invert(model, x0, grid)
    assert len(inv.latents) == 2 and all(z.dtype == state_dtype for z in inv.latents)
    assert inv.nfe == solver.nfe_per_step * 50
    rec = solver.sample(model, inv, grid)
    err = (rec - x0).abs().max().item()
    assert err <= (1e-10 if state_dtype == torch.float64 else 1e-4), err
    assert rec.dtype == state_dtype and rec.shape == x0.shape


def test_ddim_inversion_is_approximate_but_close():
    schedule = sd_schedule()
    gm = mixture(schedule)
    x0 = data(gm, 2)
    errs = {}
    for n in (10, 50):
        grid = schedule.grid(n)
        inv = bdia.DDIM().invert(gm, x0, grid)
        assert len(inv.latents) == 1 and inv.nfe == n
        errs[n] = (bdia.DDIM().sample(gm, inv, grid) - x0).abs().max().item()
    assert 1e-4 < errs[50] < errs[10]  # drifts, and drifts more with fewer steps
    assert not bdia.DDIM.exact_inversion and bdia.BDIA.exact_inversion and bdia.EDICT.exact_inversion


@pytest.mark.parametrize("spacing", SPACINGS)
def test_bdia_gamma0_is_ddim_step_for_step(spacing):
    schedule = sd_schedule(spacing)
    grid = schedule.grid(20)
    gm = mixture(schedule)
    noise = torch.randn((2,) + EVENT, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ddim_states, bdia_states = {}, {}
    out_ddim = bdia.DDIM().sample(gm, noise, grid, callback=lambda i, s, state: ddim_states.update({i: state.z}))
    out_bdia = bdia.BDIA(0.0).sample(gm, noise, grid, callback=lambda i, s, state: bdia_states.update({i: state.z}))
    assert torch.equal(out_ddim, out_bdia)
    # one callback convention: the grid position reached; BDIA's warm-up plain step reports position 1
    assert sorted(ddim_states) == sorted(bdia_states) == list(range(1, 21))
    for i in ddim_states:
        assert torch.equal(ddim_states[i], bdia_states[i])


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_matches_diffusers_scheduler_loop(spacing):
    diffusers = pytest.importorskip("diffusers")
    cfg = {**SD, "timestep_spacing": spacing}
    schedule = bdia.Schedule.from_config(cfg)
    gm = mixture(schedule)
    noise = torch.randn((2,) + EVENT, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    for n in (10, 25):
        sched = diffusers.DDIMScheduler(**cfg)
        sched.set_timesteps(n)
        x = noise.clone()
        for t in sched.timesteps:
            x = sched.step(gm(x, t.expand(x.shape[0])), t, x, eta=0.0).prev_sample
        ours = bdia.DDIM().sample(gm, noise, schedule.grid(n))
        # diffusers does its schedule arithmetic in float32; we agree to that precision
        assert (ours - x).abs().max().item() < 2e-5 * max(1.0, x.abs().max().item())


def test_ddim_inversion_matches_diffusers_inverse_scheduler():
    diffusers = pytest.importorskip("diffusers")
    cfg = {**SD, "timestep_spacing": "leading"}
    schedule = bdia.Schedule.from_config(cfg)
    gm = mixture(schedule)
    x0 = data(gm, 2)
    sched = diffusers.DDIMInverseScheduler(**cfg)
    sched.set_timesteps(10)
    x = x0.clone()
    for t in sched.timesteps:
        x = sched.step(gm(x, t.expand(x.shape[0])), t, x).prev_sample
    inv = bdia.DDIM().invert(gm, x0, schedule.grid(10))
    assert (inv.latents[0] - x).abs().max().item() < 2e-5 * x.abs().max().item()


def test_linspace_pairs_next_grid_point_not_stride():
    """diffusers' stride formula pairs 999 with 899 for linspace spacing; we pair it with 888."""
    diffusers = pytest.importorskip("diffusers")
    cfg = {**SD, "timestep_spacing": "linspace"}
    schedule = bdia.Schedule.from_config(cfg)
    gm = mixture(schedule)
    grid = schedule.grid(10)
    noise = torch.randn((1,) + EVENT, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    # one DDIM step by hand with the next element of the list
    e = gm(noise, grid.timesteps[:1])
    expected = bdia.ddim_transition(noise, e, grid, 0, 1)
    abar = schedule.alphas_cumprod
    a0, a1 = abar[999].sqrt(), abar[888].sqrt()
    by_hand = a1 * (noise - (1 - abar[999]).sqrt() * e) / a0 + (1 - abar[888]).sqrt() * e
    assert torch.allclose(expected, by_hand, rtol=1e-13, atol=1e-13)
    sched = diffusers.DDIMScheduler(**cfg)
    sched.set_timesteps(10)
    theirs = sched.step(e, sched.timesteps[0], noise, eta=0.0).prev_sample
    assert (theirs - expected).abs().max() > 1e-3  # diffusers stepped to 899


# ---------------------------------------------------------------------------------------------------
# Independent transcriptions of the papers' formulas
# ---------------------------------------------------------------------------------------------------


def naive_bdia(eps, z_pair, abar, ts, gamma, invert=False):
    """docs/math.md section 4 written out with plain abar lists, no library code."""
    a = [math.sqrt(v) for v in abar]
    s = [math.sqrt(1 - v) for v in abar]

    def D(z, e, i, j):
        return a[j] * (z - s[i] * e) / a[i] + s[j] * e

    n = len(ts)
    if not invert:
        z_prev, z = z_pair
        for i in range(1, n):
            e = eps(z, ts[i : i + 1].expand(z.shape[0]))
            z_prev, z = z, gamma * (z_prev - D(z, e, i, i - 1)) + D(z, e, i, i + 1)
        return z
    z_next = z_pair  # clean sample
    z = D(z_next, eps(z_next, ts[n - 1 : n].expand(z_next.shape[0])), n, n - 1)
    for i in range(n - 1, 0, -1):
        e = eps(z, ts[i : i + 1].expand(z.shape[0]))
        z_next, z = z, (z_next - D(z, e, i, i + 1)) / gamma + D(z, e, i, i - 1)
    return z, z_next


@pytest.mark.parametrize("gamma", [1.0, 0.96, 0.5])
def test_bdia_matches_direct_transcription(gamma):
    schedule = sd_schedule("trailing")
    grid = schedule.grid(30)
    gm = mixture(schedule)
    abar = grid.alphas_cumprod.tolist()
    x0 = data(gm, 2)
    inv = bdia.BDIA(gamma).invert(gm, x0, grid)
    z0, z1 = naive_bdia(gm, x0, abar, grid.timesteps, gamma, invert=True)
    assert torch.allclose(inv.latents[0], z0, rtol=1e-9, atol=1e-9)
    assert torch.allclose(inv.latents[1], z1, rtol=1e-11, atol=1e-11)
    noise = torch.randn_like(x0)
    z1 = bdia.ddim_transition(noise, gm(noise, grid.timesteps[:1].expand(2)), grid, 0, 1)
    ours = bdia.BDIA(gamma).sample(gm, noise, grid)
    theirs = naive_bdia(gm, (noise, z1), abar, grid.timesteps, gamma)
    assert torch.allclose(ours, theirs, rtol=1e-11, atol=1e-11)


def test_obelm_matches_belm_paper_update():
    """BELM (Wang et al. 2024) O-BELM in xbar = x/alpha, lambda = sigma/alpha with h the lambda steps:
    xbar_{i+1} = r^2 xbar_{i-1} + (1 - r^2) xbar_i - h_{i+1} (h_i + h_{i+1}) / h_i * eps_i, r = h_{i+1}/h_i."""
    schedule = sd_schedule("leading")
    grid = schedule.grid(25)
    gm = mixture(schedule)
    al, lam = grid.alphas.tolist(), grid.lambdas.tolist()
    noise = torch.randn((2,) + EVENT, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    # both start from the same first (DDIM) step
    xb_prev = noise / al[0]
    z1 = bdia.ddim_transition(noise, gm(noise, grid.timesteps[:1].expand(2)), grid, 0, 1)
    xb = z1 / al[1]
    for i in range(1, grid.num_steps):
        e = gm(xb * al[i], grid.timesteps[i : i + 1].expand(2))
        h_old, h_new = lam[i - 1] - lam[i], lam[i] - lam[i + 1]
        r2 = (h_new / h_old) ** 2
        xb_prev, xb = xb, r2 * xb_prev + (1 - r2) * xb - h_new * (h_old + h_new) / h_old * e
    ours = bdia.BDIA("belm").sample(gm, noise, grid)
    assert torch.allclose(ours, xb * al[-1], rtol=1e-11, atol=1e-11)


def test_edict_matches_paper_transcription():
    """EDICT (Wallace et al. 2023), Eq. 14-15, without chain alternation."""
    schedule = sd_schedule("trailing")
    grid = schedule.grid(12)
    gm = mixture(schedule)
    p = 0.93
    abar = grid.alphas_cumprod.tolist()
    noise = torch.randn((2,) + EVENT, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    x, y = noise.clone(), noise.clone()
    for i in range(grid.num_steps):
        t = grid.timesteps[i : i + 1].expand(2)
        a = math.sqrt(abar[i + 1] / abar[i])
        b = math.sqrt(1 - abar[i + 1]) - a * math.sqrt(1 - abar[i])
        x_inter = a * x + b * gm(y, t)
        y_inter = a * y + b * gm(x_inter, t)
        x = p * x_inter + (1 - p) * y_inter
        y = p * y_inter + (1 - p) * x
    ours = bdia.EDICT(p, alternate=False).sample(gm, noise, grid)
    assert torch.allclose(ours, x, rtol=1e-12, atol=1e-12)
    # with alternation the chains swap roles on odd steps: different numbers, same exactness
    alt = bdia.EDICT(p).sample(gm, noise, grid)
    assert not torch.equal(alt, ours)


# ---------------------------------------------------------------------------------------------------
# Accuracy against the exact ODE
# ---------------------------------------------------------------------------------------------------


def measured_order(solver, schedule, model, noise, steps=(10, 20, 40, 80)):
    errs = []
    for n in steps:
        grid = schedule.grid(n)
        errs.append((solver.sample(model, noise, grid) - model.reference_sample(noise, grid)).abs().max().item())
    return -np.polyfit(np.log(steps), np.log(errs), 1)[0], errs


def test_convergence_order_on_analytic_gaussian():
    # linspace spacing with a clean terminal point: the same interval [999, clean] for every N
    schedule = bdia.Schedule.from_config(dict(beta_schedule="linear", timestep_spacing="linspace"))
    g = torch.Generator().manual_seed(0)
    model = Gaussian(
        0.5 * torch.randn(8, generator=g, dtype=torch.float64),
        0.5 + 0.5 * torch.rand(8, generator=g, dtype=torch.float64),
        schedule=schedule,
    )
    noise = torch.randn(16, 8, generator=g, dtype=torch.float64)
    ddim_order, ddim_errs = measured_order(bdia.DDIM(), schedule, model, noise)
    belm_order, belm_errs = measured_order(bdia.BDIA("belm"), schedule, model, noise)
    assert 0.85 < ddim_order < 1.15, (ddim_order, ddim_errs)
    assert 1.8 < belm_order < 2.3, (belm_order, belm_errs)
    assert belm_errs[-1] < ddim_errs[-1] / 10


def test_gaussian_reference_flow_round_trips():
    schedule = sd_schedule("trailing")
    grid = schedule.grid(10)
    model = Gaussian(torch.zeros(4, dtype=torch.float64), 0.7, schedule=schedule)
    x0 = model.sample_data(3, torch.Generator().manual_seed(0))
    noise = model.reference_invert(x0, grid)
    assert torch.allclose(model.reference_sample(noise, grid), x0, atol=1e-12)


# ---------------------------------------------------------------------------------------------------
# Precision, dtypes, gradients, NFE
# ---------------------------------------------------------------------------------------------------


class TinyNet(torch.nn.Module):
    """A float32 network: the solver must call it in float32 and keep its own state in float64."""

    def __init__(self, d=48):
        super().__init__()
        self.lin = torch.nn.Linear(d, d)
        torch.nn.init.normal_(self.lin.weight, std=0.1)
        self.seen = set()

    def forward(self, x, t):
        self.seen.add(x.dtype)
        h = x.flatten(1)
        return torch.tanh(self.lin(h) + t[:, None].to(h.dtype) / 1000).reshape(x.shape)


def test_model_runs_in_its_own_dtype_state_in_float64():
    net = TinyNet()
    grid = sd_schedule().grid(20)
    x0 = torch.randn((2,) + EVENT)
    solver = bdia.BDIA(1.0)
    inv = solver.invert(net, x0, grid)
    rec = solver.sample(net, inv, grid)
    assert net.seen == {torch.float32}
    assert inv.latents[0].dtype == torch.float64 and rec.dtype == torch.float64
    assert (rec - x0.double()).abs().max() < 1e-10


def test_explicit_model_dtype():
    seen = set()

    def eps(x, t):
        seen.add(x.dtype)
        return 0.1 * x

    grid = sd_schedule().grid(5)
    bdia.DDIM(model_dtype=torch.bfloat16).sample(eps, torch.randn(2, 3), grid)
    assert seen == {torch.bfloat16}


def test_gradients_flow_through_sampling():
    net = TinyNet()
    grid = sd_schedule().grid(8)
    x0 = torch.randn((1,) + EVENT, dtype=torch.float64, requires_grad=True)
    inv = bdia.BDIA(1.0).invert(net, x0, grid)
    inv.latents[0].sum().backward()
    assert x0.grad is not None and torch.isfinite(x0.grad).all() and x0.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "solver, invert_nfe, sample_nfe",
    [
        (bdia.DDIM(), 10, 10),
        (bdia.BDIA(1.0), 10, 10),
        (bdia.EDICT(), 20, 20),
        (bdia.BDIA(1.0, forward="heun"), 18, 19),
    ],
)
def test_nfe_counts(solver, invert_nfe, sample_nfe):
    schedule = sd_schedule()
    grid = schedule.grid(10)
    m = CountingModel(mixture(schedule))
    x0 = data(m.model, 1)
    inv = solver.invert(m, x0, grid)
    assert inv.nfe == m.calls == invert_nfe
    m.calls = 0
    solver.sample(m, torch.randn_like(x0), grid)
    assert m.calls == sample_nfe


def test_float32_state_warns_for_small_gamma_and_float64_does_not():
    schedule = sd_schedule()
    grid = schedule.grid(50)
    gm = mixture(schedule)
    x0 = data(gm, 1)
    with pytest.warns(bdia.InversionPrecisionWarning, match="amplifies rounding"):
        bdia.BDIA(0.7, state_dtype=torch.float32).invert(gm, x0, grid)
    with pytest.warns(bdia.InversionPrecisionWarning, match="closer to 1"):
        bdia.BDIA(0.5).invert(gm, x0, grid)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bdia.BDIA(0.7).invert(gm, x0, grid)
        bdia.BDIA(0.9, state_dtype=torch.float32).invert(gm, x0, grid)


def test_per_step_gamma_sequence_round_trip():
    schedule = sd_schedule()
    grid = schedule.grid(20)
    gm = mixture(schedule)
    x0 = data(gm, 2)
    gammas = torch.linspace(0.9, 1.0, 19)
    solver = bdia.BDIA(gammas)
    inv = solver.invert(gm, x0, grid)
    assert (solver.sample(gm, inv, grid) - x0).abs().max() < 1e-10
    assert solver.gammas(grid) == pytest.approx(gammas.tolist())


# ---------------------------------------------------------------------------------------------------
# Guidance
# ---------------------------------------------------------------------------------------------------


def conditional(gm):
    def model(x, t, c):
        return gm(x, t) + 0.3 * c.reshape(-1, *([1] * (x.dim() - 1))) * torch.tanh(x)

    model.dtype = torch.float64
    return model


def test_guidance_round_trip_and_edit():
    schedule = sd_schedule()
    grid = schedule.grid(30)
    gm = mixture(schedule)
    model = conditional(gm)
    guided = bdia.ClassifierFreeGuidance(model, cond=torch.tensor([1.0]), uncond=torch.tensor([0.0]), scale=7.5)
    x0 = data(gm, 3)
    for solver in (bdia.BDIA(0.96), bdia.EDICT()):
        inv = solver.invert(guided, x0, grid)
        assert (solver.sample(guided, inv, grid) - x0).abs().max() < 1e-10
        edited = solver.sample(guided.with_cond(torch.tensor([-1.0])), inv, grid)
        assert (edited - x0).abs().max() > 1e-2


def test_guidance_batched_equals_unbatched_and_scale_one_is_cond():
    gm = mixture(sd_schedule())
    model = conditional(gm)
    x = torch.randn((3,) + EVENT, dtype=torch.float64)
    t = torch.full((3,), 500)
    c, u = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0])
    a = bdia.ClassifierFreeGuidance(model, c, u, 5.0)(x, t)
    b = bdia.ClassifierFreeGuidance(model, c, u, 5.0, batched=False)(x, t)
    assert torch.allclose(a, b, atol=1e-12)
    assert torch.equal(bdia.ClassifierFreeGuidance(model, c, u, 1.0)(x, t), model(x, t, c))
    with pytest.raises(ValueError, match="batch size"):
        bdia.ClassifierFreeGuidance(model, torch.tensor([1.0, 2.0]), u, 5.0)(x, t)


def test_to_eps_recovers_eps():
    schedule = sd_schedule()
    gm = mixture(schedule)
    x = torch.randn((2,) + EVENT, dtype=torch.float64)
    t = torch.tensor([10, 900])
    for kind in ("v_prediction", "sample"):
        back = bdia.to_eps(as_prediction(gm, schedule, kind), schedule, kind)
        assert torch.allclose(back(x, t), gm(x, t), atol=1e-9)
        assert back.dtype == torch.float64
    assert bdia.to_eps(gm, schedule) is gm
    with pytest.raises(ValueError, match="prediction_type"):
        bdia.to_eps(gm, schedule, "score")


# ---------------------------------------------------------------------------------------------------
# Bad input: every error is clear and names the problem
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "gamma, match",
    [
        (-0.1, r"\[0, 1\]"),
        (float("nan"), r"\[0, 1\]"),
        (1.5, r"\[0, 1\]"),
        (float("inf"), r"\[0, 1\]"),
        ("fast", "belm"),
        ([0.9, -1.0], r"gamma\[1\]"),
        ([0.9, float("nan")], r"gamma\[1\]"),
        ([], "empty"),
    ],
)
def test_bad_gamma(gamma, match):
    with pytest.raises(ValueError, match=match):
        bdia.BDIA(gamma)


def test_gamma_zero_cannot_invert_but_can_sample():
    schedule = sd_schedule()
    grid = schedule.grid(10)
    gm = mixture(schedule)
    x0 = data(gm, 1)
    with pytest.raises(ValueError, match="gamma is 0"):
        bdia.BDIA(0.0).invert(gm, x0, grid)
    with pytest.raises(ValueError, match=r"step\(s\) \[3\]"):
        bdia.BDIA([1.0, 1.0, 0.0] + [1.0] * 6).invert(gm, x0, grid)
    bdia.BDIA(0.0).sample(gm, torch.randn_like(x0), grid)


def test_gamma_sequence_wrong_length():
    grid = sd_schedule().grid(10)
    with pytest.raises(ValueError, match="give 9 values"):
        bdia.BDIA([0.9] * 10).sample(lambda x, t: x, torch.randn(1, 3), grid)


def test_bad_solver_options():
    with pytest.raises(ValueError, match="p must be in"):
        bdia.EDICT(p=0.0)
    with pytest.raises(ValueError, match="p must be in"):
        bdia.EDICT(p=1.2)
    with pytest.raises(ValueError, match="state_dtype"):
        bdia.BDIA(state_dtype=torch.float16)
    with pytest.raises(ValueError, match="integrator"):
        bdia.BDIA(forward="rk4")


def test_bad_inputs():
    grid = sd_schedule().grid(10)
    gm = mixture(sd_schedule())
    solver = bdia.BDIA()
    with pytest.raises(TypeError, match="torch.Tensor"):
        solver.invert(gm, np.zeros((1, 3)), grid)
    with pytest.raises(TypeError, match="floating-point"):
        solver.invert(gm, torch.zeros(1, 3, dtype=torch.long), grid)
    with pytest.raises(ValueError, match="NaN or inf"):
        solver.invert(gm, torch.full((1,) + EVENT, float("nan")), grid)
    with pytest.raises(ValueError, match="batch dimension"):
        solver.sample(gm, torch.zeros(()), grid)
    with pytest.raises(TypeError, match="bdia.Grid"):
        solver.invert(gm, torch.zeros((1,) + EVENT), [999, 500, 0])
    with pytest.raises(TypeError, match="callable"):
        solver.invert("unet", torch.zeros((1,) + EVENT), grid)


def test_model_output_problems_are_named():
    grid = sd_schedule().grid(10)
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match=r"shape \(2, 4\) for input \(2, 3\)"):
        bdia.DDIM().sample(lambda x, t: torch.zeros(2, 4), x, grid)
    with pytest.raises(ValueError, match="on meta"):
        bdia.DDIM().sample(lambda x, t: torch.empty(x.shape, device="meta"), x, grid)

    def explodes(x, t):
        return x * (torch.nan if int(t[0]) < 500 else 0.1)

    with pytest.raises(bdia.NonFiniteError, match=r"grid point 5 \(timestep 401\)"):
        bdia.BDIA().sample(explodes, x, grid)
    with pytest.raises(bdia.NonFiniteError, match="inversion step"):
        bdia.EDICT().invert(explodes, x, grid)


def test_inversion_reuse_is_checked():
    schedule = sd_schedule()
    grid = schedule.grid(10)
    gm = mixture(schedule)
    x0 = data(gm, 2)
    inv = bdia.BDIA(0.96).invert(gm, x0, grid)
    with pytest.raises(ValueError, match="different grid"):
        bdia.BDIA(0.96).sample(gm, inv, schedule.grid(12))
    with pytest.raises(ValueError, match="different grid"):
        bdia.BDIA(0.96).sample(gm, inv, sd_schedule("trailing").grid(10))
    with pytest.raises(ValueError, match="same solver and parameters"):
        bdia.BDIA(1.0).sample(gm, inv, grid)
    with pytest.raises(ValueError, match="same solver and parameters"):
        bdia.EDICT().sample(gm, inv, grid)
    broken = bdia.Inversion((inv.latents[0], inv.latents[1][:1]), inv.nfe, inv.solver, inv.grid)
    with pytest.raises(ValueError, match="latents disagree"):
        bdia.BDIA(0.96).sample(gm, broken, grid)
    # a truncated grid (strength) is a grid of its own, and works end to end
    part = grid.truncated(0.6)
    inv = bdia.BDIA(0.96).invert(gm, x0, part)
    assert inv.nfe == 6
    assert (bdia.BDIA(0.96).sample(gm, inv, part) - x0).abs().max() < 1e-10
