"""Null-text inversion (Mokady et al. 2023) on a tiny guided model that is differentiable in its condition."""

import math

import pytest
import torch

import bdia
from bdia.nulltext import NullTextInversion, null_text_invert

D, C = 16, 32
SCHEDULE = bdia.Schedule.from_config(
    {
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "steps_offset": 1,
        "set_alpha_to_one": False,
    }
)


class TextModel:
    """eps(x, t, cond): the exact eps of N(0, I) data plus a condition-dependent nonlinear term."""

    dtype = torch.float64

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.W = torch.randn(D, D, generator=g, dtype=torch.float64) / math.sqrt(D)
        self.U = torch.randn(C, D, generator=g, dtype=torch.float64) / math.sqrt(C)
        self.abar = SCHEDULE.alphas_cumprod

    def __call__(self, x, t, cond):
        sigma = (1 - self.abar[t.long()]).sqrt().reshape(-1, 1)
        return sigma * x + 0.3 * sigma * torch.tanh(x @ self.W + cond.reshape(cond.shape[0], -1) @ self.U)


def _guided(scale=5.0):
    g = torch.Generator().manual_seed(1)
    cond = torch.randn(1, C, generator=g, dtype=torch.float64)
    uncond = torch.zeros(1, C, dtype=torch.float64)
    return bdia.ClassifierFreeGuidance(TextModel(), cond, uncond, scale)


def test_null_text_improves_ddim_reconstruction_under_guidance():
    guided = _guided()
    grid = SCHEDULE.grid(10)
    x0 = torch.randn(1, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ddim = bdia.DDIM()
    ddim_err = (ddim.sample(guided, ddim.invert(guided, x0, grid), grid) - x0).abs().max().item()
    nt = null_text_invert(guided, x0, grid, inner_steps=10, lr=0.1)
    assert isinstance(nt, NullTextInversion)
    assert len(nt.uncond) == grid.num_steps and all(u.shape == (1, C) for u in nt.uncond)
    nt_err = (nt.sample(guided, grid) - x0).abs().max().item()
    assert nt_err < 0.4 * ddim_err, (nt_err, ddim_err)
    # NFE: the guidance-1 pivot (N) plus, per step, one conditional pass, forward+backward per
    # iteration, and one final unconditional pass.
    assert grid.num_steps * 3 < nt.nfe <= grid.num_steps * (1 + 1 + 2 * 10 + 1)
    assert all(math.isfinite(v) for v in nt.losses)


def test_null_text_noise_is_the_guidance_one_ddim_inversion():
    guided = _guided()
    grid = SCHEDULE.grid(6)
    x0 = torch.randn(1, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    nt = null_text_invert(guided, x0, grid, inner_steps=0)
    ref = bdia.DDIM().invert(guided.with_cond(guided.cond, scale=1.0), x0, grid).noise
    torch.testing.assert_close(nt.noise, ref, rtol=0, atol=0)
    # With no optimisation every step keeps the original uncond: reconstruction is plain guided DDIM.
    assert all(torch.equal(u, guided.uncond) for u in nt.uncond)
    plain = bdia.DDIM().sample(guided, nt.noise, grid)
    torch.testing.assert_close(nt.sample(guided, grid), plain)


def test_null_text_rejects_label_uncond_and_wrong_grid():
    model = TextModel()
    labels = bdia.ClassifierFreeGuidance(model, torch.tensor([1]), torch.tensor([0]), 3.0)
    x0 = torch.zeros(1, D, dtype=torch.float64)
    with pytest.raises(TypeError, match="float tensor"):
        null_text_invert(labels, x0, SCHEDULE.grid(4))
    guided = _guided()
    nt = null_text_invert(guided, x0, SCHEDULE.grid(4), inner_steps=1)
    with pytest.raises(ValueError, match="different grid"):
        nt.sample(guided, SCHEDULE.grid(5))
    with pytest.raises(ValueError, match="not on the grid"):
        nt.guided_model(guided)(x0, torch.tensor([500]))
