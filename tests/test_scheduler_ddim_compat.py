"""BDIAScheduler(gamma=0) as a drop-in for diffusers' DDIMScheduler: the same results under DDIMScheduler's
own config keys, defaults and step signature, checked against DDIMScheduler itself (loops over a toy
model, and the tiny Stable Diffusion text-to-image and img2img pipelines)."""

from __future__ import annotations

import itertools

import pytest
import torch

pytest.importorskip("diffusers")

from bdia.schedulers import BDIAScheduler  # noqa: E402
from pipelines_fixtures import SD_SCHEDULER, make_image, model_dir  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

SPACINGS = ("leading", "trailing", "linspace")


def _toy_model(x: torch.Tensor, t) -> torch.Tensor:
    """A smooth nonlinear stand-in for a network; large enough outputs that x0 gets clipped."""
    return torch.tanh(1.5 * x) * (0.5 + float(t) / 1000.0) + 0.2 * x.roll(1, dims=-1)


def _run(sched, x: torch.Tensor, steps: int, **step_kwargs) -> tuple[torch.Tensor, list[torch.Tensor]]:
    sched.set_timesteps(steps)
    x0s = []
    for t in sched.timesteps:
        out = sched.step(_toy_model(x, t), t, x, **step_kwargs)
        x, _ = out.prev_sample, x0s.append(out.pred_original_sample)
    return x, x0s


CONFIGS = [
    dict(timestep_spacing=s, clip_sample=c, prediction_type=p)
    for s, c, p in itertools.product(SPACINGS, (False, True), ("epsilon", "v_prediction", "sample"))
] + [
    dict(thresholding=True, sample_max_value=1.5, dynamic_thresholding_ratio=0.9),
    dict(clip_sample=True, clip_sample_range=0.7, timestep_spacing="trailing"),
    dict(rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction", clip_sample=False),
    dict(rescale_betas_zero_snr=True, timestep_spacing="linspace", prediction_type="sample"),
    dict(beta_schedule="squaredcos_cap_v2", set_alpha_to_one=True, steps_offset=0),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("use_clipped", [False, True])
def test_stride_pairing_reproduces_ddim_scheduler_step_by_step(config, use_clipped):
    from diffusers import DDIMScheduler

    base = {k: v for k, v in SD_SCHEDULER.items() if k != "clip_sample"}  # DDIM's default clip_sample=True
    ddim = DDIMScheduler.from_config({**base, **config})
    ours = BDIAScheduler.from_config(ddim.config, gamma=0.0, step_pairing="stride")
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    expected, expected_x0 = _run(ddim, x, 7, use_clipped_model_output=use_clipped)
    got, got_x0 = _run(ours, x, 7, use_clipped_model_output=use_clipped)
    assert torch.isfinite(expected).all()
    torch.testing.assert_close(got, expected, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(torch.stack(got_x0), torch.stack(expected_x0), rtol=2e-5, atol=2e-5)
    if config.get("timestep_spacing", "leading") == "leading":  # the only spacing where the pairings agree
        default, _ = _run(BDIAScheduler.from_config(ddim.config, gamma=0.0), x, 7, use_clipped_model_output=use_clipped)
        torch.testing.assert_close(default, expected, rtol=2e-5, atol=2e-5)
    else:  # "next" lands on the next materialised timestep, which the stride misses for N=7
        default, _ = _run(BDIAScheduler.from_config(ddim.config, gamma=0.0), x, 7, use_clipped_model_output=use_clipped)
        assert (default - expected).abs().max() > 1e-3


def test_clipping_and_thresholding_act():
    """The configs above would pass with x0 left alone if clipping never triggered: check it does."""
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    plain, _ = _run(BDIAScheduler.from_config(SD_SCHEDULER, gamma=0.0), x, 7)
    for key in (dict(clip_sample=True), dict(thresholding=True, sample_max_value=1.5, dynamic_thresholding_ratio=0.9)):
        changed, x0s = _run(BDIAScheduler.from_config({**SD_SCHEDULER, **key}, gamma=0.0), x, 7)
        assert (changed - plain).abs().max() > 1e-2
        assert max(float(x0.abs().max()) for x0 in x0s) <= 1.5


def test_step_signature_is_ddim_schedulers():
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler.from_config(SD_SCHEDULER)
    ours = BDIAScheduler.from_config(SD_SCHEDULER, gamma=0.0)
    for s in (ddim, ours):
        s.set_timesteps(5)
    x = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(1))
    eps = _toy_model(x, 801)
    t = ddim.timesteps[0]
    expected = ddim.step(eps, t, x, 0.0, False, None, None, False)  # every argument positional
    got = ours.step(eps, t, x, 0.0, False, None, None, False)
    assert isinstance(got, tuple) and len(got) == 2
    torch.testing.assert_close(got[0], expected[0], rtol=1e-6, atol=1e-6)
    ours.set_timesteps(5)
    out = ours.step(eps, t, x, 0.0)  # a positional eta is eta, not return_dict
    torch.testing.assert_close(out.prev_sample, expected[0], rtol=1e-6, atol=1e-6)
    ours.set_timesteps(5)
    out = ours.step(eps, t, x, eta=0.0, generator=torch.Generator(), variance_noise=torch.ones_like(x))
    torch.testing.assert_close(out.prev_sample, expected[0], rtol=1e-6, atol=1e-6)  # no noise at eta = 0
    noisy = ddim.step(eps, t, x, 0.5, variance_noise=torch.ones_like(x)).prev_sample
    ours.set_timesteps(5)
    torch.testing.assert_close(ours.step(eps, t, x, 0.5, variance_noise=torch.ones_like(x)).prev_sample, noisy)
    paired = BDIAScheduler.from_config(SD_SCHEDULER, gamma=1.0)
    paired.set_timesteps(5)
    with pytest.raises(ValueError, match=r"eta=0.5: BDIA's pair \(gamma > 0\) is deterministic"):
        paired.step(eps, t, x, 0.5)
    with pytest.raises(ValueError, match="not a training timestep"):
        ours.step(eps, 3.5, x)


def test_defaults_and_from_config_round_trip():
    from diffusers import DDIMInverseScheduler, DDIMScheduler, EulerDiscreteScheduler

    assert BDIAScheduler().config.clip_sample is True  # DDIMScheduler's default
    euler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1)
    # A config without clip_sample (SDXL ships Euler's) means clip_sample=True, as DDIMScheduler.from_config reads it.
    assert BDIAScheduler.from_config(euler.config).config.clip_sample is True
    ddim = DDIMScheduler.from_config(euler.config)
    ours = BDIAScheduler.from_config(ddim.config, gamma=0.3)
    shared = {k: v for k, v in ddim.config.items() if not k.startswith("_")}
    assert {k: ours.config[k] for k in shared} == shared
    again = DDIMScheduler.from_config(ours.config)
    assert {k: again.config[k] for k in shared} == shared
    # diffusers keeps other classes' keys as hidden config, so gamma survives a trip through DDIM or Euler.
    assert BDIAScheduler.from_config(again.config).config.gamma == 0.3
    assert BDIAScheduler.from_config(EulerDiscreteScheduler.from_config(ours.config).config).config.gamma == 0.3
    assert DDIMScheduler in ours.compatibles and EulerDiscreteScheduler in ours.compatibles
    inv = DDIMInverseScheduler.from_config({**SD_SCHEDULER})
    from bdia.schedulers import BDIAInverseScheduler

    ours_inv = BDIAInverseScheduler.from_config(inv.config)
    assert ours_inv.config.steps_offset == 1 and ours_inv.config.beta_schedule == "scaled_linear"
    assert DDIMInverseScheduler.from_config(ours_inv.config).config.steps_offset == 1


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(step_pairing="stride", gamma=0.5), "step_pairing='stride' reproduces DDIMScheduler"),
        (dict(step_pairing="previous"), "step_pairing must be one of"),
        (dict(timestep_spacing="karras"), "timestep_spacing 'karras' is not supported"),
        (dict(beta_schedule="sigmoid"), "beta_schedule 'sigmoid' is not supported"),
        (dict(prediction_type="flow"), "prediction_type 'flow' is not supported"),
        (dict(thresholding=True, dynamic_thresholding_ratio=1.5), "dynamic_thresholding_ratio must be in"),
        (dict(thresholding=True, sample_max_value=0.5), "sample_max_value must be at least 1"),
        (dict(clip_sample=True, clip_sample_range=0.0), "clip_sample_range must be positive"),
        (dict(gamma=-0.1), "gamma must be in"),
    ],
)
def test_unsupported_values_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        BDIAScheduler.from_config(SD_SCHEDULER, **bad)


def test_unknown_keyword_is_refused():
    with pytest.raises(TypeError):
        BDIAScheduler(eta=0.5)


# ----- through diffusers' own pipelines ----------------------------------------------------------------

_PIPES: dict[str, object] = {}
_CONFIGS: dict[str, dict] = {}  # each pipeline's own (DDIMScheduler) config, before tests swap schedulers


def _pipe(kind: str):
    if kind not in _PIPES:
        from diffusers import DiffusionPipeline, StableDiffusionImg2ImgPipeline

        sd = DiffusionPipeline.from_pretrained(model_dir("sd-v" if kind.endswith("-v") else "sd"))
        pipe = StableDiffusionImg2ImgPipeline.from_pipe(sd) if kind.startswith("img2img") else sd
        pipe.set_progress_bar_config(disable=True)
        _PIPES[kind], _CONFIGS[kind] = pipe, dict(pipe.scheduler.config)
    return _PIPES[kind]


def _generate(pipe, scheduler, steps: int = 6, **kwargs) -> torch.Tensor:
    pipe.scheduler = scheduler
    args = dict(
        num_inference_steps=steps, guidance_scale=3.0, output_type="latent", generator=torch.Generator().manual_seed(0)
    )
    if "Img2Img" in type(pipe).__name__:
        args.update(image=make_image(), strength=0.7)
    else:
        args.update(height=32, width=32)
    return pipe("a cat", **{**args, **kwargs}).images


@pytest.mark.parametrize("kind", ["txt2img", "img2img"])
@pytest.mark.parametrize(
    "spacing, clip", [("leading", False), ("trailing", True), ("linspace", False), ("linspace", True)]
)
def test_pipeline_images_equal_ddim_schedulers(kind, spacing, clip):
    from diffusers import DDIMScheduler

    pipe = _pipe(kind)
    config = {**_CONFIGS[kind], "timestep_spacing": spacing, "clip_sample": clip}
    ddim = _generate(pipe, DDIMScheduler.from_config(config))
    ours = _generate(pipe, BDIAScheduler.from_config(config, gamma=0.0, step_pairing="stride"))
    # DDIMScheduler rounds in float32, this scheduler in float64: with clipping the latents are ~1 but the
    # eps terms they are made of ~50 (random weights), so the float32 rounding shows at ~5e-5 absolute.
    torch.testing.assert_close(ours, ddim, rtol=1e-5, atol=1e-4 if clip else 1e-5)


def test_pipeline_decoded_images_equal_ddim_schedulers_with_zero_terminal_snr():
    from diffusers import DDIMScheduler

    pipe = _pipe("txt2img-v")
    config = {**_CONFIGS["txt2img-v"], "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
    ddim = _generate(pipe, DDIMScheduler.from_config(config), steps=7, output_type="np")
    ours = _generate(
        pipe, BDIAScheduler.from_config(config, gamma=0.0, step_pairing="stride"), steps=7, output_type="np"
    )
    assert pipe.scheduler.alphas_cumprod[-1] == 0  # the exact zero, as DDIMScheduler
    torch.testing.assert_close(torch.as_tensor(ours), torch.as_tensor(ddim), rtol=1e-5, atol=1e-5)
    bdia = _generate(pipe, BDIAScheduler.from_config(config, gamma=0.5), steps=7)
    assert torch.isfinite(bdia).all()


def test_zero_terminal_snr_with_an_eps_model_stays_finite():
    """DDIMScheduler divides by alpha = 0 here; this scheduler converts eps with the 2**-24 floor."""
    from diffusers import DDIMScheduler

    config = {**SD_SCHEDULER, "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
    x = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    assert not torch.isfinite(_run(DDIMScheduler.from_config(config), x, 5)[0]).all()
    for gamma in (0.0, 0.5):
        assert torch.isfinite(_run(BDIAScheduler.from_config(config, gamma=gamma), x, 5)[0]).all()
