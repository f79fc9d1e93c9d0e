"""Rex on flow-matching (velocity) grids: exact round trips from t = 1, where alpha = 0, and its base's order."""

import numpy as np
import pytest
import torch

import bdia
from bdia.analytic import FlowGaussianMixture
from bdia.flow import FlowSchedule

SD3 = FlowSchedule.from_config({"shift": 3.0})


def _model():
    g = torch.Generator().manual_seed(0)
    return FlowGaussianMixture(torch.randn(3, 8, generator=g, dtype=torch.float64), 0.3)


@pytest.mark.parametrize("base", ["euler", "midpoint", "heun", "ralston", "rk4"])
def test_rex_round_trip_is_exact_on_a_flow_grid(base):
    model = _model()
    x0 = model.sample_data(4, torch.Generator().manual_seed(1))
    grid = SD3.grid(12)
    solver = bdia.Rex(base)
    inv = solver.invert(model, x0, grid)
    assert (solver.sample(model, inv, grid) - x0).abs().max() <= 1e-12
    assert torch.isfinite(inv.noise).all()


@pytest.mark.parametrize("base, order", [("midpoint", 2), ("rk4", 4)])
def test_rex_keeps_its_base_order_on_a_flow_grid(base, order):
    model = _model()
    noise = torch.randn(4, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    steps = [10, 20, 40]
    errs = [
        float(
            (bdia.Rex(base).sample(model, noise, SD3.grid(n)) - model.reference_sample(noise, SD3.grid(n))).abs().max()
        )
        for n in steps
    ]
    measured = -np.polyfit(np.log(steps[-2:]), np.log(errs[-2:]), 1)[0]
    assert measured > order - 0.5, (measured, errs)


def test_flow_grid_calls_the_model_between_points_at_the_flow_time():
    grid = SD3.grid(5)
    lam = float(grid.lambdas[2] + grid.lambdas[3]) / 2
    alpha, sigma, t = grid.at(lam)
    assert alpha + sigma == pytest.approx(1.0) and sigma / alpha == pytest.approx(lam)
    assert t == pytest.approx(1000 * sigma)
