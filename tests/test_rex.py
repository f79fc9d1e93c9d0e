"""Rex (reversible RK in Lawson variables), BDIA's clean-end start, evaluation between grid points, to_eps off
the integer timesteps, and make_grid. Checks against plain formulas written out here and the exact ODE."""

import numpy as np
import pytest
import torch

import bdia
from bdia.analytic import GaussianMixture
from bdia.models import to_eps
from bdia.solvers import Evaluator
from bdia.solvers.rex import TABLEAUX
from bdia.solvers.start import clean_end_move, parse_start

SD = bdia.Schedule.from_config(
    dict(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        steps_offset=1,
        set_alpha_to_one=False,
        timestep_spacing="leading",
    )
)
SD_TRAILING = bdia.Schedule.from_config({**SD.config, "timestep_spacing": "trailing"})
GRIDS = {
    "sd-leading": (SD, lambda n: SD.grid(n)),
    "sd-trailing": (SD, lambda n: SD_TRAILING.grid(n)),
    "vp-karras": (SD, lambda n: bdia.karras_grid_for(SD, n)),
    "ve-karras": (None, lambda n: bdia.karras_grid(n, sigma_min=0.02, sigma_max=20.0)),
}


def mixture(schedule, dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return GaussianMixture(torch.randn(3, dim, generator=g, dtype=torch.float64), 0.4, schedule=schedule)


def clean(model, n=3, seed=1):
    return model.sample_data(n, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("grid_name", list(GRIDS))
@pytest.mark.parametrize("variables", ["noise", "data", "data-state"])
@pytest.mark.parametrize("base", list(TABLEAUX))
def test_round_trip_is_exact_on_every_grid(base, variables, grid_name):
    schedule, grid_of = GRIDS[grid_name]
    model = mixture(schedule)
    x0 = clean(model)
    for n in (16,):  # the benchmark (bdia.bench.rex) checks 2-100 steps
        grid = grid_of(n)
        solver = bdia.Rex(
            base, 0.99, variables=variables.split("-")[0], coupling="state" if variables.endswith("state") else "lawson"
        )
        inv = solver.invert(model, x0, grid)
        out = solver.solve(model, inv, grid)
        assert (out.x - x0).abs().max() <= 1e-10, (base, variables, grid_name, n)
        stages = len(TABLEAUX[base].c)
        assert inv.nfe == out.nfe and inv.nfe <= 2 * stages * n + 3  # + the start's 3 extra sub-steps at most


def test_round_trip_on_the_digits_model():
    digits = pytest.importorskip("bdia.digits")
    model = digits.load_model()
    eps = digits.eps_model(model, [3, 7], guidance=2.0)
    x0 = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    leading, karras = model.schedule.grid(8), bdia.karras_grid_for(model.schedule, 8)
    cases = [
        (leading, bdia.Rex("midpoint")),
        (leading, bdia.Rex("heun", 0.9, variables="data")),
        (karras, bdia.Rex("ralston")),
    ]
    for grid, solver in cases:
        inv = solver.invert(eps, x0, grid)
        assert (solver.sample(eps, inv, grid) - x0).abs().max() <= 1e-10
    # Data variables amplify state differences by sigma_0 / sigma_{N-1} per sweep (about 1e4 on this Karras grid),
    # enough to flip the float32 model's input rounding somewhere: the round trip stays exact only to ~1e-7.
    solver, grid = bdia.Rex("heun", variables="data"), karras
    assert (solver.sample(eps, solver.invert(eps, x0, grid), grid) - x0).abs().max() <= 1e-5


def plain_rk4(f, y, lam0, lam1):
    """Textbook RK4 for dy/dlambda = f(lambda, y)."""
    h = lam1 - lam0
    k1 = f(lam0, y)
    k2 = f(lam0 + h / 2, y + h / 2 * k1)
    k3 = f(lam0 + h / 2, y + h / 2 * k2)
    k4 = f(lam1, y + h * k3)
    return y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


@pytest.mark.parametrize("grid_name", ["ve-karras", "vp-karras"])
def test_base_step_is_textbook_rk_in_lawson_variables(grid_name):
    schedule, grid_of = GRIDS[grid_name]
    grid, model = grid_of(8), mixture(schedule)
    ev = Evaluator(model, grid, torch.float64, torch.float64, True, "test")
    z = clean(model) + 0.5
    i = 3
    a_i, a_j, l_i, l_j = (float(v) for v in (grid.alphas[i], grid.alphas[i + 1], grid.lambdas[i], grid.lambdas[i + 1]))
    # noise variables: y = z / alpha = xbar, dy/dlambda = eps_xbar(y, lambda)
    f = lambda lam, y: model.eps_xbar(y, torch.full((y.shape[0], 1), lam, dtype=torch.float64))  # noqa: E731
    want = plain_rk4(f, z / a_i, l_i, l_j) * a_j
    got = bdia.Rex("rk4").base_step(ev, z, grid, i, i + 1)
    assert torch.allclose(got, want, rtol=0, atol=1e-12)
    # data variables: y = z / sigma = xbar / lambda against g = 1 / lambda, dy/dg = x0_hat = xbar - lambda eps
    fd = lambda g, y: y / g - f(1 / g, y / g) / g  # noqa: E731
    want = plain_rk4(fd, z / a_i / l_i, 1 / l_i, 1 / l_j) * l_j * a_j
    got = bdia.Rex("rk4", variables="data").base_step(ev, z, grid, i, i + 1)
    assert torch.allclose(got, want, rtol=0, atol=1e-12)
    # and Euler in either variable choice is the DDIM step (docs/math.md section 10)
    for variables in ("noise", "data"):
        got = bdia.Rex("euler", variables=variables).base_step(ev, z, grid, i, i + 1)
        assert torch.allclose(got, bdia.ddim_transition(z, ev(z, i), grid, i, i + 1), rtol=0, atol=1e-13)


def test_coupling_is_mccallum_foster_in_lawson_variables():
    """One step against the paper's two lines written in y = z / alpha with a plain Euler base."""
    grid, model = SD.grid(10), mixture(SD)
    ev = Evaluator(model, grid, torch.float64, torch.float64, True, "test")
    g = torch.Generator().manual_seed(3)
    z, zhat = (torch.randn(2, 6, generator=g, dtype=torch.float64) for _ in range(2))
    i, zeta = 4, 0.8
    a, lam = grid.alphas.tolist(), grid.lambdas.tolist()
    f = lambda k, y: ev(y * a[k], k)  # noqa: E731  eps at grid point k from y = xbar
    y, yhat = z / a[i], zhat / a[i]
    y1 = zeta * y + (1 - zeta) * yhat + (lam[i + 1] - lam[i]) * f(i, yhat)
    yhat1 = yhat - (lam[i] - lam[i + 1]) * f(i + 1, y1)
    out = bdia.Rex("euler", zeta).step(ev, bdia.solvers.RexState(z, zhat), grid, i)
    assert torch.allclose(out.z, y1 * a[i + 1], atol=1e-13) and torch.allclose(out.zhat, yhat1 * a[i + 1], atol=1e-13)
    # coupling="state" mixes in z itself: the gap's weight is zeta, not zeta * alpha_{i+1} / alpha_i
    out = bdia.Rex("euler", zeta, coupling="state").step(ev, bdia.solvers.RexState(z, zhat), grid, i)
    want = bdia.ddim_transition(zhat, ev(zhat, i), grid, i, i + 1) + zeta * (z - zhat)
    assert torch.allclose(out.z, want, atol=1e-13)


@pytest.mark.parametrize("base,order", [("rk4", 4), ("midpoint", 2)])
def test_declared_order_on_a_mixture(base, order):
    """Off the linear ODE of a single Gaussian (where higher bases measure above their order) the order shows."""
    g = torch.Generator().manual_seed(0)
    model = GaussianMixture(torch.randn(3, 8, generator=g, dtype=torch.float64), 0.5)
    start = torch.randn(8, 8, generator=g, dtype=torch.float64) * 20.0
    errs = []
    for n in (50, 100):
        grid = bdia.karras_grid(n, sigma_min=0.02, sigma_max=20.0)
        solver = bdia.Rex(base, 0.999)  # zeta near 1 reaches the power law soonest (tests/test_protocol.py)
        errs.append(float((solver.sample(model, start, grid) - model.reference_sample(start, grid)).abs().max()))
    assert bdia.Rex(base).order == order == pytest.approx(np.log2(errs[0] / errs[1]), abs=0.35), errs


def test_inversion_in_noise_variables_is_closer_to_the_ode_than_in_data_variables():
    model, grid = mixture(SD), SD.grid(20)
    x0 = clean(model, 4)
    ref = model.reference_invert(x0, grid)
    err = {
        v: float((bdia.Rex("midpoint", variables=v).invert(model, x0, grid).noise - ref).abs().max())
        for v in ("noise", "data")
    }
    assert err["noise"] < 0.01 < 0.3 < err["data"], err


def test_solvers_call_the_model_between_points_at_the_right_time():
    grid = SD.grid(10)
    seen = []
    model = mixture(SD)

    def spy(x, t):
        seen.append(float(t[0]))
        return model(x, t)

    bdia.Rex("midpoint").sample(spy, torch.randn(1, 6, dtype=torch.float64), grid)
    lam_mid = 0.5 * (float(grid.lambdas[0]) + float(grid.lambdas[1]))
    assert seen[1] == pytest.approx(float(bdia.edm.sigma_to_t(SD, lam_mid)))
    assert 801 < seen[1] < 901  # a fractional training timestep between the two grid points
    with pytest.raises(ValueError, match="between grid points"):
        bdia.Rex("midpoint").sample(model, torch.randn(1, 6), bdia.karras_grid_for(SD, 10, quantize=True))
    bdia.Rex("heun").sample(model, torch.randn(1, 6), bdia.karras_grid_for(SD, 10, quantize=True))  # grid points only
    with pytest.raises(ValueError, match="outside the range"):
        grid.at(1e-4)


def test_bad_arguments_are_refused_clearly():
    with pytest.raises(ValueError, match="base solver"):
        bdia.Rex("rk45")
    with pytest.raises(ValueError, match="zeta"):
        bdia.Rex("euler", 0.0)
    with pytest.raises(ValueError, match="variables"):
        bdia.Rex("euler", variables="score")
    with pytest.raises(ValueError, match="coupling"):
        bdia.Rex("euler", coupling="z")
    with pytest.raises(ValueError, match="substeps:K"):
        bdia.BDIA(start="heun2")


# ----- BDIA's clean-end start ---------------------------------------------------------------------------------
@pytest.mark.parametrize("grid_name", ["sd-trailing", "ve-karras"])
def test_substeps_start_approaches_the_exact_flow(grid_name):
    schedule, grid_of = GRIDS[grid_name]
    model, grid = mixture(schedule), grid_of(10)
    x0 = clean(model, 4)
    n = grid.num_steps
    exact = model.flow(x0 / float(grid.alphas[n]), float(grid.lambdas[n]), float(grid.lambdas[n - 1])) * float(
        grid.alphas[n - 1]
    )
    errs, nfes = [], []
    for k in (1, 4, 16):
        ev = Evaluator(model, grid, torch.float64, torch.float64, True, "test")
        errs.append(float((clean_end_move(ev, x0, grid, k) - exact).abs().max()))
        nfes.append(ev.nfe)
    assert nfes == [1, 4, 16]
    assert errs[0] > 2 * errs[1] > 4 * errs[2], errs


def test_bdia_start_is_exact_counted_and_part_of_the_solver_parameters():
    model, grid = mixture(SD), SD_TRAILING.grid(10)
    x0 = clean(model)
    plain, split = bdia.BDIA(1.0), bdia.BDIA(1.0, start="substeps:4")
    inv_plain, inv_split = plain.invert(model, x0, grid), split.invert(model, x0, grid)
    assert inv_split.nfe == inv_plain.nfe + 3
    assert (split.sample(model, inv_split, grid) - x0).abs().max() <= 1e-12
    assert inv_split.solver["start"] == "substeps:4" and bdia.BDIA(start="substeps:1").params()["start"] == "ddim"
    with pytest.raises(ValueError, match="made by"):
        plain.sample(model, inv_split, grid)
    ref = model.reference_invert(x0, grid)
    assert (inv_split.noise - ref).abs().max() < (inv_plain.noise - ref).abs().max()


# ----- to_eps off the integer timesteps -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["v_prediction", "sample"])
def test_to_eps_is_exact_at_fractional_timesteps(kind):
    model = mixture(SD)

    def predictor(x, t):  # the mixture as a v / x0 model, with alpha and sigma of its own noise level at t
        lam = model.lambda_of(t).reshape(-1, 1)
        alpha = 1 / torch.sqrt(1 + lam**2)
        sigma = lam * alpha
        eps = model(x, t)
        x0 = (x - sigma * eps) / alpha
        return alpha * eps - sigma * x0 if kind == "v_prediction" else x0

    x = torch.randn(3, 6, dtype=torch.float64)
    t = torch.tensor([687.153, 12.5, 0.25], dtype=torch.float64)
    assert torch.allclose(to_eps(predictor, SD, kind)(x, t), model(x, t), rtol=0, atol=1e-10)
    grid = bdia.karras_grid_for(SD, 12)  # fractional model times throughout
    noise = torch.randn(2, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    want = bdia.Rex("midpoint").sample(model, noise, grid)
    assert torch.allclose(bdia.Rex("midpoint").sample(to_eps(predictor, SD, kind), noise, grid), want, atol=1e-9)


# ----- the benchmark workload ----------------------------------------------------------------------------------
def test_bench_workload_runs_quickly_and_reports_every_number(tmp_path):
    from bdia.bench import rex as workload
    from bdia.bench.config import BenchConfig

    cfg = BenchConfig.quick(
        analytic_shape=(6,),
        analytic_batch=2,
        analytic_components=3,
        digits_batch=1,
        digits_ref_stride=100,
        extra={
            "rex_budgets": (10, 20),
            "rex_grids": ("karras",),
            "rex_methods": ("ddim", "bdia-1", "rex"),
            "rex_digits": True,
        },
    )
    res = workload.run(cfg, log=lambda s: None)
    if res["digits"] is not None:  # the embedded model is installed
        dig = res["digits"]["results"]
        assert all(row["round_trip"]["max"] <= 1e-10 for r in dig.values() if r["exact"] for row in r["rows"])
        assert "Digits model" in workload.section(res)
    rows = res["results"]["karras/rex"]["rows"]
    assert [r["nfe_invert"] for r in rows] == [r["nfe_sample"] for r in rows] and rows[0]["nfe_invert"] <= 11
    assert all(r["round_trip"]["max"] <= 1e-10 for r in rows)
    assert res["targets"]["fidelity_50"]["method"] in ("BDIA gamma=1", "Rex midpoint (zeta=0.9, start auto)")
    text = workload.section(res)
    assert "sample error <= 0.1" in text and "Recommendation" in text and "DDIM" in text
    assert workload.plots(res, tmp_path, overwrite=False) == ["rex_pareto_karras.png"]
    assert (tmp_path / "rex_pareto_karras.png").stat().st_size > 0
    with pytest.raises(FileExistsError):
        workload.plots(res, tmp_path, overwrite=False)
    with pytest.raises(ValueError, match="unknown rex_methods"):
        workload.run(BenchConfig.quick(extra={"rex_methods": ("rex-rk45",)}))


def test_make_grid_kinds():
    from bdia.grids import GRID_KINDS, make_grid

    assert make_grid(SD, 10, "diffusers").matches(SD.grid(10))
    assert make_grid(SD, 10, "trailing").matches(SD_TRAILING.grid(10))
    assert make_grid(SD, 10, "karras").matches(bdia.karras_grid_for(SD, 10))
    log_snr = make_grid(SD, 10, "logsnr")
    steps = torch.diff(torch.log(log_snr.lambdas[:-1]))
    assert torch.allclose(steps, steps[0].expand_as(steps), rtol=1e-9)  # uniform in log(sigma/alpha)
    assert float(log_snr.lambdas[-1]) == 0.0 and log_snr.can_evaluate(float(log_snr.lambdas[3]) * 0.9)
    model = mixture(SD)
    for kind in GRID_KINDS:  # every kind inverts exactly with a multi-stage solver
        grid = make_grid(SD, 8, kind)
        x0 = clean(model)
        solver = bdia.Rex("midpoint")
        assert (solver.sample(model, solver.invert(model, x0, grid), grid) - x0).abs().max() <= 1e-10, kind
    with pytest.raises(ValueError, match="unknown grid kind"):
        make_grid(SD, 10, "cosine")


def test_extrapolated_and_auto_starts():
    model = mixture(SD)
    x0 = clean(model, 4)
    grid = GRIDS["vp-karras"][1](10)  # lambda_{N-1} is the lowest trained level: no sub-steps possible
    n = grid.num_steps
    exact = model.flow(x0, 0.0, float(grid.lambdas[n - 1])) * float(grid.alphas[n - 1])
    errs, nfes = {}, {}
    for name in ("ddim", "substeps:4", "extrapolated", "auto"):
        ev = Evaluator(model, grid, torch.float64, torch.float64, True, "test")
        errs[name] = float((clean_end_move(ev, x0, grid, parse_start(name)) - exact).abs().max())
        nfes[name] = ev.nfe
    assert nfes == {"ddim": 1, "substeps:4": 1, "extrapolated": 2, "auto": 2}
    assert errs["substeps:4"] == errs["ddim"] and errs["auto"] == errs["extrapolated"] < errs["ddim"] / 10, errs
    ev = Evaluator(model, SD_TRAILING.grid(10), torch.float64, torch.float64, True, "test")
    clean_end_move(ev, x0, SD_TRAILING.grid(10), parse_start("auto"))
    assert ev.nfe == 4  # room inside the interval: four sub-steps
    assert bdia.Rex().start == "auto" and bdia.BDIA("belm").start == bdia.BDIA(0.9).start == "ddim"


def test_float32_state_round_trip_stays_near_rounding():
    model, grid = mixture(SD), bdia.karras_grid_for(SD, 50)
    x0 = clean(model, 4)
    for solver, bound in (
        (bdia.Rex(state_dtype=torch.float32), 1e-4),
        (bdia.Rex("rk4", state_dtype=torch.float32), 1e-4),
    ):
        err = float((solver.sample(model, solver.invert(model, x0.float(), grid), grid) - x0).abs().max())
        assert err < bound, (solver, err)
