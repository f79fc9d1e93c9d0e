"""Schedules and grids against diffusers' DDIMScheduler (docs/math.md section 2)."""

import json

import numpy as np
import pytest
import torch

import bdia

diffusers = pytest.importorskip("diffusers")

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1, set_alpha_to_one=False)
CONFIGS = [
    SD,
    dict(beta_schedule="linear"),
    dict(beta_schedule="squaredcos_cap_v2", set_alpha_to_one=True),
    dict(trained_betas=np.linspace(1e-4, 0.03, 500).tolist(), num_train_timesteps=500),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["sd", "linear", "cosine", "trained", "zero_snr"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_timesteps_and_abar_match_diffusers(cfg, spacing):
    cfg = {**cfg, "timestep_spacing": spacing}
    ours = bdia.Schedule.from_config(cfg)
    ref = diffusers.DDIMScheduler(**cfg)
    abar = ref.alphas_cumprod.double()
    if cfg.get("rescale_betas_zero_snr"):
        # diffusers leaves abar[T-1] = 0 (no eps parametrisation); we floor it like its other schedulers
        assert 0 < ours.alphas_cumprod[-1] <= 2.0**-24
        ours_body, abar = ours.alphas_cumprod[:-1], abar[:-1]
    else:
        ours_body = ours.alphas_cumprod
    assert torch.equal(ours_body, abar)
    T = ours.num_train_timesteps
    for n in (2, 7, 10, 50, T // 2):
        ref.set_timesteps(n)
        grid = ours.grid(n)
        assert torch.equal(grid.timesteps, ref.timesteps), n
        # each point is paired with the next element of the list; the terminal point is the clean one
        np.testing.assert_allclose(
            grid.alphas_cumprod[:-1].numpy(), ours.alphas_cumprod[grid.timesteps].numpy(), rtol=1e-14
        )
        assert float(grid.alphas_cumprod[-1]) == pytest.approx(float(ref.final_alpha_cumprod), abs=0, rel=1e-15)


def test_math_md_examples():
    s = bdia.Schedule.from_config(SD)
    assert s.grid(10).timesteps.tolist() == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    trailing = bdia.Schedule.from_config({**SD, "timestep_spacing": "trailing"}).grid(10)
    assert trailing.timesteps.tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    lin = bdia.Schedule.from_config({**SD, "timestep_spacing": "linspace"}).grid(10)
    assert lin.timesteps.tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert float(lin.alphas_cumprod[-1]) == pytest.approx(0.99915, abs=1e-5)
    # linspace pairs 999 with 888 (next element), not with the stride formula's 899
    assert float(lin.alphas_cumprod[1]) == pytest.approx(float(s.alphas_cumprod[888]), rel=1e-14)


def test_from_config_path_and_folder(tmp_path):
    (tmp_path / "scheduler_config.json").write_text(json.dumps({**SD, "_class_name": "PNDMScheduler"}))
    a = bdia.Schedule.from_config(tmp_path)
    b = bdia.Schedule.from_config(tmp_path / "scheduler_config.json")
    c = bdia.Schedule.from_config(SD)
    assert torch.equal(a.alphas_cumprod, c.alphas_cumprod) and torch.equal(b.grid(5).timesteps, c.grid(5).timesteps)
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        bdia.Schedule.from_config(tmp_path / "missing")


@pytest.mark.parametrize(
    "cfg, match",
    [
        ({"beta_schedule": "cubic"}, "beta_schedule"),
        ({"timestep_spacing": "random"}, "timestep_spacing"),
        ({"prediction_type": "score"}, "prediction_type"),
        ({"trained_betas": [0.1, 0.2], "num_train_timesteps": 3}, "trained_betas"),
    ],
)
def test_bad_config(cfg, match):
    with pytest.raises(ValueError, match=match):
        bdia.Schedule.from_config(cfg)


def test_bad_step_counts():
    s = bdia.Schedule.from_config(SD)
    with pytest.raises(ValueError, match="at least 2"):
        s.grid(1)
    with pytest.raises(ValueError, match="cannot exceed"):
        s.grid(1001)
    with pytest.raises(TypeError, match="int"):
        s.grid(10.0)
    with pytest.raises(ValueError, match="outside"):
        s.grid(1000)  # leading + steps_offset=1 would ask for timestep 1000


def test_truncated_grid():
    g = bdia.Schedule.from_config(SD).grid(50)
    t = g.truncated(0.8)
    assert t.num_steps == 40
    assert torch.equal(t.timesteps, g.timesteps[10:]) and torch.equal(t.alphas, g.alphas[10:])
    with pytest.raises(ValueError, match="strength"):
        g.truncated(0.0)
    with pytest.raises(ValueError, match="at least 2"):
        g.truncated(0.01)


def test_grid_validation():
    with pytest.raises(ValueError, match="N\\+1"):
        bdia.Grid(torch.arange(3), torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="noisy to clean"):
        bdia.Grid.from_alphas_cumprod(torch.arange(3), torch.tensor([0.9, 0.5, 0.1, 0.05]))
