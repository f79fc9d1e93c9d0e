"""BDIAFlowScheduler as a drop-in for FlowMatchEulerDiscreteScheduler in tiny SD3 and Flux pipelines."""

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from bdia.schedulers import BDIAFlowScheduler  # noqa: E402
from flow_fixtures import flow_model_dir  # noqa: E402

RUNS = {"sd3": {}, "flux": {"max_sequence_length": 16}}


def _pipe(kind):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(flow_model_dir(kind))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _latents(pipe, steps=6):
    return pipe(
        "a cat",
        num_inference_steps=steps,
        height=32,
        width=32,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
        **RUNS[pipe._bdia_kind],
    ).images


@pytest.mark.parametrize("kind", list(RUNS))
def test_gamma_zero_is_flow_match_euler_and_gamma_one_differs(kind, single_thread):
    pipe = _pipe(kind)
    pipe._bdia_kind = kind
    reference = _latents(pipe)
    euler_config = pipe.scheduler.config
    pipe.scheduler = BDIAFlowScheduler.from_config(euler_config, gamma=0.0)
    assert torch.equal(_latents(pipe), reference)
    pipe.scheduler = BDIAFlowScheduler.from_config(euler_config, gamma=1.0)
    bdia_latents = _latents(pipe)
    assert torch.isfinite(bdia_latents).all()
    assert 1e-4 < float((bdia_latents - reference).abs().max()) < 10 * float(reference.abs().max())


def test_timesteps_follow_set_timesteps_with_sigmas_and_mu():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from bdia.flow import flux_sigmas

    cfg = dict(shift=3.0, use_dynamic_shifting=True)
    ours, ref = BDIAFlowScheduler(**cfg, gamma=0.5), FlowMatchEulerDiscreteScheduler(**cfg)
    ours.set_timesteps(9, sigmas=flux_sigmas(9), mu=0.9)
    ref.set_timesteps(9, sigmas=flux_sigmas(9), mu=0.9)
    assert torch.equal(ours.timesteps, ref.timesteps) and torch.equal(ours.sigmas, ref.sigmas)
    with pytest.raises(ValueError, match="pass mu"):
        ours.set_timesteps(9)
    with pytest.raises(ValueError, match="pass sigmas"):
        ours.set_timesteps(timesteps=[900.0, 500.0])


def test_gamma_zero_with_a_bfloat16_model_differs_only_by_rounding(single_thread):
    """diffusers rounds (t_{i+1} - t_i) v to bfloat16 before adding it; BDIAFlowScheduler adds it in float32."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(flow_model_dir("flux"), torch_dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    pipe._bdia_kind = "flux"
    reference = _latents(pipe).float()
    pipe.scheduler = BDIAFlowScheduler.from_config(pipe.scheduler.config, gamma=0.0)
    ours = _latents(pipe).float()
    ulp = 2.0**-8 * float(reference.abs().max())  # bfloat16's spacing near the largest latent
    assert float((ours - reference).abs().max()) <= 4 * ulp


def test_img2img_strength_with_gamma_zero_is_flow_match_euler(single_thread):
    """StableDiffusion3Img2ImgPipeline: scale_noise at the start timestep, then steps from the middle of the grid."""
    from diffusers import StableDiffusion3Img2ImgPipeline

    from pipelines_fixtures import make_image

    pipe = StableDiffusion3Img2ImgPipeline(**_pipe("sd3").components)
    pipe.set_progress_bar_config(disable=True)

    def run():
        return pipe(
            "a cat",
            image=make_image((32, 32)),
            strength=0.6,
            num_inference_steps=6,
            output_type="latent",
            generator=torch.Generator().manual_seed(0),
        ).images

    reference = run()
    pipe.scheduler = BDIAFlowScheduler.from_config(pipe.scheduler.config, gamma=0.0)
    assert torch.equal(run(), reference)
