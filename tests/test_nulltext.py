"""Null-text inversion (Mokady et al. 2023) on a tiny guided model that is differentiable in its condition."""

import math

import numpy as np
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


# ----- through the Editor, on the embedded scenes model ---------------------------------------------------
@pytest.fixture(scope="module")
def scenes():
    from bdia.editing import Editor
    from bdia.scenes import held_out_edit_pairs

    return Editor.from_pretrained("scenes", progress=False), held_out_edit_pairs(2)


def test_editor_null_text_without_optimisation_is_guided_ddim_from_the_guidance_one_pivot(scenes):
    editor, pairs = scenes
    # one image: null-text runs image by image, and a float32 network is not batch-invariant to the bit
    images, captions = [pairs[0].source_image], [pairs[0].source_caption]
    inv = editor.null_text_invert(images, captions, num_steps=6, guidance_scale=3.0, inner_steps=0)
    pivot = editor.invert(images, captions, num_steps=6, guidance_scale=1.0, method="ddim")
    torch.testing.assert_close(inv.noise, pivot.noise, rtol=0, atol=0)
    empty = editor.backend.conditions([""], None, 32, 32)[1]
    assert inv.null_embeddings.shape == (6, 1, *empty.shape[1:])
    assert all(torch.equal(u, empty) for u in inv.null_embeddings)
    # no optimisation: every step's embedding is the empty caption's, so the reconstruction is guided DDIM
    plain = editor.edit(pivot, captions, guidance_scale=3.0)
    assert torch.equal(editor.reconstruct(inv).latents, plain.latents)


def test_editor_null_text_edits_with_controls_save_load_and_split(scenes, tmp_path):
    from bdia.datasets.batch import split_inversion, stack_inversions
    from bdia.editing.controls import PromptToPrompt
    from bdia.io.saved import load_inversion, save_inversion

    editor, pairs = scenes
    images, captions = [p.source_image for p in pairs], [p.source_caption for p in pairs]
    inv = editor.null_text_invert(images, captions, num_steps=5, guidance_scale=3.0, inner_steps=2)
    assert not all(torch.equal(u, inv.null_embeddings[0]) for u in inv.null_embeddings[1:])  # it optimised
    rec = editor.reconstruct(inv)
    # the edit's source branch guides with the per-step embeddings: it is the reconstruction, bit for bit
    one = split_inversion(inv)[1]
    edit = editor.edit(one, pairs[1].target_caption, control=PromptToPrompt())
    assert torch.equal(edit.info["source_latents"], editor.reconstruct(one).latents)
    assert torch.equal(stack_inversions(split_inversion(inv)).null_embeddings, inv.null_embeddings)
    back = load_inversion(save_inversion(inv, tmp_path / "nt.safetensors"))
    assert torch.equal(back.null_embeddings, inv.null_embeddings)
    assert torch.equal(editor.reconstruct(back).latents, rec.latents)
    with pytest.raises(ValueError, match="branches='sequential'"):
        editor.edit(inv, [p.target_caption for p in pairs], control=PromptToPrompt(), branches="batched")
    with pytest.raises(ValueError, match="leave negative_prompt out"):
        editor.edit(inv, [p.target_caption for p in pairs], negative_prompt="blurry")
    # a saved null-text inversion whose embeddings do not match its grid is refused with the reason
    bad = type(inv)(**{**inv.__dict__, "null_embeddings": inv.null_embeddings[:4]})
    with pytest.raises(ValueError, match="one per step and image"):
        editor.reconstruct(bad)


def test_editor_null_text_retraces_its_pivot_under_guidance(scenes):
    """Guided DDIM from the guidance-1 pivot's noise lands far from the image; the optimised embeddings bring
    it back near the pivot's own (guidance-1) reconstruction, which bounds what null-text can reach."""
    from bdia.scenes import to_uint8

    editor, pairs = scenes
    images, captions = [p.source_image for p in pairs], [p.source_caption for p in pairs]
    source = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).double()

    def mse(inv):
        return float(((to_uint8(editor.reconstruct(inv).latents).double() - source) ** 2).mean())

    nt = editor.null_text_invert(images, captions, num_steps=20, guidance_scale=3.0)
    unoptimised = editor.null_text_invert(images, captions, num_steps=20, guidance_scale=3.0, inner_steps=0)
    pivot = editor.invert(images, captions, num_steps=20, guidance_scale=1.0, method="ddim")
    assert mse(nt) < 0.1 * mse(unoptimised), (mse(nt), mse(unoptimised))
    assert mse(nt) < 1.5 * mse(pivot), (mse(nt), mse(pivot))
    assert nt.inversion.nfe > 20 * 4  # forward and backward passes: the price of the optimisation
