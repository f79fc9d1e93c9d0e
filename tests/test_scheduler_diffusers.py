"""BDIAScheduler: diffusers conventions, gamma=0 is DDIMScheduler, agreement with the core BDIA solver."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from bdia import BDIA, Schedule  # noqa: E402
from bdia.schedulers import BDIAScheduler  # noqa: E402
from pipelines_fixtures import SD_SCHEDULER, editor, model_dir  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


def _pipe(kind: str):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(model_dir(kind))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _latents(pipe, steps: int = 5, seed: int = 0) -> torch.Tensor:
    return pipe(
        "a cat",
        num_inference_steps=steps,
        height=32,
        width=32,
        guidance_scale=3.0,
        output_type="latent",
        generator=torch.Generator().manual_seed(seed),
    ).images


@pytest.mark.parametrize("kind", ["sd", "sd-v", "sdxl"])
def test_gamma_zero_matches_ddim_scheduler_in_a_pipeline(kind):
    from diffusers import DDIMScheduler

    pipe = _pipe(kind)
    config = pipe.scheduler.config  # SDXL's is EulerDiscreteScheduler's: no clip_sample, so both clip x0
    pipe.scheduler = DDIMScheduler.from_config(config)
    assert pipe.scheduler.config.clip_sample == (kind == "sdxl")
    ddim = _latents(pipe)
    pipe.scheduler = BDIAScheduler.from_config(config, gamma=0.0)
    assert pipe.scheduler.config.prediction_type == config.prediction_type
    bdia0 = _latents(pipe)
    torch.testing.assert_close(bdia0, ddim, atol=1e-4, rtol=1e-4)
    pipe.scheduler = BDIAScheduler.from_config(config, gamma=0.5)
    first = _latents(pipe)
    assert (first - ddim).abs().max() > 1e-3
    # The pair state is reset on every set_timesteps: a second run is identical.
    assert torch.equal(_latents(pipe), first)


@pytest.mark.parametrize("kind", ["sd", "sd-v", "sdxl"])
def test_pipeline_with_scheduler_matches_editor_generate(kind):
    """Two independent paths: diffusers' loop with BDIAScheduler, and the core solver with bdia's own
    prompt encoding, guidance and (for SDXL) added conditioning, in float64."""
    ed = editor(kind)
    ours = ed.generate("a cat", num_steps=5, height=32, width=32, guidance_scale=3.0, gamma=0.5, seed=4)
    pipe = _pipe(kind)
    pipe.scheduler = BDIAScheduler.from_config(pipe.scheduler.config, gamma=0.5, clip_sample=False)  # as Editor
    theirs = _latents(pipe, steps=5, seed=4)
    torch.testing.assert_close(ours.latents.float(), theirs, atol=1e-4, rtol=1e-4)


def test_matches_the_core_bdia_solver():
    schedule = Schedule.from_config({**SD_SCHEDULER, "timestep_spacing": "linspace"})
    sched = BDIAScheduler.from_config({**SD_SCHEDULER, "timestep_spacing": "linspace"}, gamma=0.8)

    def eps_model(x, t):  # a smooth nonlinear stand-in for a network
        return torch.tanh(x) * (t.reshape(-1, 1, 1, 1).to(x.dtype) / 1000.0) + 0.1 * x

    noise = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grid = schedule.grid(8)
    expected = BDIA(0.8).sample(eps_model, noise, grid)
    sched.set_timesteps(8)
    z = noise.clone()
    for t in sched.timesteps:
        z = sched.step(eps_model(z, t.expand(2)), t, z).prev_sample
    torch.testing.assert_close(z, expected, atol=1e-12, rtol=0)


def test_steps_pair_with_the_materialised_timestep_list():
    # linspace, N=10: 999 -> 888, where the stride formula t - T//N would give 899.
    sched = BDIAScheduler.from_config({**SD_SCHEDULER, "timestep_spacing": "linspace"}, gamma=0.0)
    sched.set_timesteps(10)
    assert sched.timesteps[:2].tolist() == [999, 888]
    abar = sched.schedule.alphas_cumprod
    x = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    out = sched.step(torch.zeros_like(x), sched.timesteps[0], x)  # eps = 0: z scales by alpha_888/alpha_999
    assert out.prev_sample.item() == pytest.approx(float((abar[888] / abar[999]).sqrt()), rel=1e-12)
    assert out.pred_original_sample.item() == pytest.approx(float(1 / abar[999].sqrt()), rel=1e-12)


def test_config_save_load_and_conventions(tmp_path):
    sched = BDIAScheduler.from_config({**SD_SCHEDULER, "prediction_type": "v_prediction"}, gamma=0.7)
    sched.save_pretrained(tmp_path)
    again = BDIAScheduler.from_pretrained(tmp_path)
    assert again.config.gamma == 0.7 and again.config.prediction_type == "v_prediction"
    assert again.config.beta_schedule == "scaled_linear" and again.config.steps_offset == 1
    assert again.schedule == Schedule.from_config({**SD_SCHEDULER, "prediction_type": "v_prediction"})
    assert again.init_noise_sigma == 1.0 and again.order == 1
    x = torch.randn(1, 4, 2, 2)
    assert again.scale_model_input(x, 5) is x
    assert "DDIMScheduler" in again._compatibles
    again.set_timesteps(4)
    assert again.timesteps.tolist() == Schedule.from_config(dict(SD_SCHEDULER)).timesteps(4).tolist()
    out = again.step(torch.zeros_like(x), again.timesteps[0], x, return_dict=False)
    assert isinstance(out, tuple) and out[0].dtype == x.dtype
    with pytest.raises(ValueError, match="not on this scheduler's grid"):
        again.step(x, 3, x)
    with pytest.raises(ValueError, match="gamma"):
        BDIAScheduler(gamma=1.5)
    with pytest.raises(ValueError, match="set_timesteps"):
        BDIAScheduler().step(x, 1, x)


def test_add_noise_is_the_vp_forward_process():
    sched = BDIAScheduler.from_config(SD_SCHEDULER)
    x0, noise = torch.ones(2, 1, 1, 1), torch.zeros(2, 1, 1, 1)
    t = torch.tensor([0, 999])
    noisy = sched.add_noise(x0, noise, t)
    abar = sched.alphas_cumprod
    torch.testing.assert_close(noisy.flatten(), abar[t].sqrt())
