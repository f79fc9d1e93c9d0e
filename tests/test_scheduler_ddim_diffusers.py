"""diffusers' DDIMScheduler checks (its scheduler test suite's DDIM cases and the common scheduler checks
they build on), each run on DDIMScheduler itself and on BDIAScheduler(gamma=0), which is DDIM.

Running every check on DDIMScheduler too shows the check holds for the reference; where a check
compares one scheduler with its saved and reloaded copy, the output is also compared with
DDIMScheduler's on the same inputs. Full loops run both schedulers side by side instead of holding
golden numbers. The last section checks that gamma > 0 keeps refusing what BDIA's pair cannot do.
"""

from __future__ import annotations

import functools
import inspect
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

import diffusers  # noqa: E402
from diffusers import DDIMScheduler  # noqa: E402

from bdia.schedulers import BDIAScheduler  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

BASE = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear", clip_sample=True)
STEPS = 50  # the inference steps of every single-step check, as in diffusers' DDIM checks

MAKERS = {"ddim": DDIMScheduler, "bdia-gamma0": functools.partial(BDIAScheduler, gamma=0.0)}


def _cls(make):
    return make.func if isinstance(make, functools.partial) else make


@pytest.fixture(params=list(MAKERS), ids=list(MAKERS))
def make(request):
    """Builds the scheduler under test from DDIMScheduler's keyword arguments."""
    return MAKERS[request.param]


def _config(**overrides):
    return {**BASE, **overrides}


def _sample(seed: int = 0) -> torch.Tensor:
    return torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def _sample_deter() -> torch.Tensor:
    """A fixed sample without a generator: values k / n laid out channel-last, then moved to NCHW."""
    n = 4 * 3 * 8 * 8
    return (torch.arange(n).reshape(3, 8, 8, 4) / n).permute(3, 0, 1, 2)


def _noise_deter() -> torch.Tensor:
    """A fixed zero-mean stand-in for noise: a smooth pattern in [-1, 1]."""
    return torch.sin(torch.arange(4 * 3 * 8 * 8, dtype=torch.float32) * 0.37).reshape(4, 3, 8, 8)


def _model(sample: torch.Tensor, t) -> torch.Tensor:
    """diffusers' dummy model: sample * t / (t + 1), so the output depends on the timestep."""
    t = float(t)
    return sample * t / (t + 1)


def _reloaded(sched, tmp_path):
    """The scheduler rebuilt from its saved config, as from_pretrained does."""
    sched.save_config(tmp_path)
    return type(sched).from_pretrained(tmp_path)


def _one_step(sched, time_step, sample, residual, steps=STEPS, **step_kwargs):
    if steps is not None:
        sched.set_timesteps(steps)
    if "generator" in inspect.signature(sched.step).parameters:
        step_kwargs["generator"] = torch.manual_seed(0)
    return sched.step(residual, time_step, sample, **step_kwargs).prev_sample


def _check(make, tmp_path, time_step=0, config=None, steps=STEPS, eta=0.0):
    """One step from ``time_step``: the scheduler, its reloaded copy and DDIMScheduler agree."""
    config = _config(**(config or {}))
    sched = make(**config)
    sample = _sample()
    residual = 0.1 * sample
    assert sched.scale_model_input(sample, 0) is not None
    out = _one_step(sched, time_step, sample, residual, steps, eta=eta)
    again = _one_step(_reloaded(sched, tmp_path), time_step, sample, residual, steps, eta=eta)
    assert torch.sum(torch.abs(out - again)) < 1e-5, "the reloaded scheduler steps differently"
    reference = _one_step(DDIMScheduler(**config), time_step, sample, residual, steps, eta=eta)
    assert out.shape == sample.shape and torch.isfinite(out).all()
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-6)
    return out


# ----- test_scheduler_ddim's checks -------------------------------------------------------------------


@pytest.mark.parametrize("num_train_timesteps", [100, 500, 1000])
def test_num_train_timesteps(make, tmp_path, num_train_timesteps):
    _check(make, tmp_path, config=dict(num_train_timesteps=num_train_timesteps))


@pytest.mark.parametrize("steps_offset", [0, 1])
def test_steps_offset(make, tmp_path, steps_offset):
    _check(make, tmp_path, config=dict(steps_offset=steps_offset))  # t = 0 is off the grid for offset 1
    sched = make(**_config(steps_offset=1))
    sched.set_timesteps(5)
    assert sched.timesteps.tolist() == [801, 601, 401, 201, 1]


@pytest.mark.parametrize("beta_start, beta_end", [(0.0001, 0.002), (0.001, 0.02)])
def test_betas(make, tmp_path, beta_start, beta_end):
    _check(make, tmp_path, config=dict(beta_start=beta_start, beta_end=beta_end))


@pytest.mark.parametrize(
    "beta_start, beta_end, error",
    [
        (0.01, 0.2, "grid alphas must be positive"),  # abar underflows to 0 in float32 long before t = 999
        (0.1, 2, "betas must be finite and in"),  # betas above 1 make abar negative
    ],
)
def test_degenerate_betas(make, beta_start, beta_end, error):
    """diffusers' DDIM suite also steps these from t = 0. Their grids reach abar <= 0, where the VP
    model has no x0 (DDIMScheduler divides by sqrt(abar) there); BDIAScheduler refuses them when the
    grid is made (a difference from DDIMScheduler that the suite would count)."""
    config = _config(beta_start=beta_start, beta_end=beta_end)
    if _cls(make) is DDIMScheduler:
        sched = make(**config)
        sched.set_timesteps(STEPS)
        assert float(sched.alphas_cumprod[sched.timesteps].min()) <= 0.0
        return
    with pytest.raises(ValueError, match=error):
        make(**config).set_timesteps(STEPS)


@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
def test_beta_schedules(make, tmp_path, beta_schedule):
    _check(make, tmp_path, config=dict(beta_schedule=beta_schedule))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_prediction_type(make, tmp_path, prediction_type):
    _check(make, tmp_path, config=dict(prediction_type=prediction_type))


@pytest.mark.parametrize("clip_sample", [True, False])
def test_clip_sample(make, tmp_path, clip_sample):
    _check(make, tmp_path, config=dict(clip_sample=clip_sample))


@pytest.mark.parametrize("timestep_spacing", ["trailing", "leading"])
def test_timestep_spacing(make, tmp_path, timestep_spacing):
    _check(make, tmp_path, config=dict(timestep_spacing=timestep_spacing))  # trailing: t = 0 is off the grid


@pytest.mark.parametrize("rescale", [True, False])
def test_rescale_betas_zero_snr(make, tmp_path, rescale):
    _check(make, tmp_path, config=dict(rescale_betas_zero_snr=rescale))


@pytest.mark.parametrize("threshold", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_thresholding(make, tmp_path, threshold, prediction_type):
    _check(make, tmp_path, config=dict(thresholding=False))
    out = _check(
        make, tmp_path, config=dict(thresholding=True, prediction_type=prediction_type, sample_max_value=threshold)
    )
    unthresholded = _one_step(
        make(**_config(prediction_type=prediction_type, clip_sample=False)), 0, _sample(), 0.1 * _sample()
    )
    if threshold < 1.0:  # s = min(max(1, quantile), sample_max_value) = 0.5: x0 is clipped to 0.5 and doubled
        assert (out - unthresholded).abs().max() > 1e-3


@pytest.mark.parametrize("time_step", [1, 10, 49])
def test_time_indices(make, tmp_path, time_step):
    _check(make, tmp_path, time_step=time_step)  # none of them is on the 50-step grid [980, ..., 20, 0]


@pytest.mark.parametrize("time_step, steps", [(1, 10), (10, 50), (50, 500)])
def test_inference_steps(make, tmp_path, time_step, steps):
    _check(make, tmp_path, time_step=time_step, steps=steps)


def test_off_grid_step_is_ddim_stride_rule(make):
    """A step from t off the grid lands on t - T // N, computed here from the DDIM update itself."""
    sched = make(**_config(clip_sample=False))
    sched.set_timesteps(STEPS)
    x, eps = _sample(), 0.1 * _sample(1)
    t = 49
    abar, abar_prev = sched.alphas_cumprod[t], sched.alphas_cumprod[t - 1000 // STEPS]
    x0 = (x - (1 - abar).sqrt() * eps) / abar.sqrt()
    expected = abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * eps
    torch.testing.assert_close(sched.step(eps, t, x).prev_sample, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("time_step, eta", [(1, 0.0), (10, 0.5), (49, 1.0)])
def test_eta(make, tmp_path, time_step, eta):
    # gamma = 0 is DDIMScheduler, stochastic steps included: the same generator gives the same noise
    _check(make, tmp_path, time_step=time_step, eta=eta)


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_eta_with_variance_noise_follows_ddim_and_bdia_pair_refuses_it(eta):
    config, sample, noise = _config(), _sample(), _noise_deter()
    ddim, ours = DDIMScheduler(**config), BDIAScheduler(gamma=0.0, **config)
    for s in (ddim, ours):
        s.set_timesteps(STEPS)
    for t in ddim.timesteps[:3]:  # consecutive grid steps: the noised step breaks no pair at gamma = 0
        expected = ddim.step(0.1 * sample, t, sample, eta, variance_noise=noise).prev_sample
        got = ours.step(0.1 * sample, t, sample, eta, variance_noise=noise).prev_sample
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        sample = expected
    with pytest.raises(ValueError, match="generator or variance_noise"):
        ours.step(0.1 * sample, ours.timesteps[0], sample, eta, generator=torch.Generator(), variance_noise=noise)
    bdia_pair = BDIAScheduler(gamma=1.0, **config)
    bdia_pair.set_timesteps(STEPS)
    with pytest.raises(ValueError, match=rf"eta={eta}: BDIA's pair \(gamma > 0\) is deterministic"):
        bdia_pair.step(0.1 * sample, bdia_pair.timesteps[0], sample, eta)


@pytest.mark.parametrize("t, prev", [(0, 0), (420, 400), (980, 960), (487, 486), (999, 998), (10, -10)])
def test_variance(make, t, prev):
    sched = make(**_config())
    var = sched._get_variance(t, prev)
    assert torch.equal(var, DDIMScheduler(**_config())._get_variance(t, prev))
    if t == prev:
        assert float(var) == 0.0
    if prev == t - 1:  # one training step: DDPM's posterior variance beta_t (1 - abar_{t-1}) / (1 - abar_t)
        abar = sched.alphas_cumprod.double()
        beta = 1 - abar[t] / abar[prev]
        assert float(var) == pytest.approx(float(beta * (1 - abar[prev]) / (1 - abar[t])), rel=1e-5)


def test_num_inference_steps_zero_raises(make):
    sched = make(**_config())
    # diffusers' DDIMScheduler divides by zero here; BDIAScheduler says what to change
    with pytest.raises(ValueError if _cls(make) is BDIAScheduler else (ValueError, ZeroDivisionError)):
        sched.set_timesteps(num_inference_steps=0)


# ----- full loops, BDIAScheduler(gamma=0) against DDIMScheduler side by side --------------------------


def _full_loop(sched, sample, timesteps=None):
    sched.set_timesteps(10)
    for t in sched.timesteps if timesteps is None else timesteps(sched):
        sample = sched.step(_model(sample, t), t, sample, 0.0).prev_sample
    return sample


LOOPS = {
    "no_noise": dict(),
    "v_prediction": dict(prediction_type="v_prediction"),
    "set_alpha_to_one": dict(set_alpha_to_one=True, beta_start=0.01),
    "no_set_alpha_to_one": dict(set_alpha_to_one=False, beta_start=0.01),
    "trailing": dict(timestep_spacing="trailing"),
}


@pytest.mark.parametrize("config", list(LOOPS.values()), ids=list(LOOPS))
def test_full_loop(config):
    ddim = _full_loop(DDIMScheduler(**_config(**config)), _sample_deter())
    ours = _full_loop(BDIAScheduler(**_config(**config), gamma=0.0), _sample_deter())
    assert torch.isfinite(ddim).all() and (ddim - _sample_deter()).abs().max() > 1e-2  # the loop does something
    assert abs(ours.abs().sum().item() - ddim.abs().sum().item()) < 1e-2
    assert abs(ours.abs().mean().item() - ddim.abs().mean().item()) < 1e-3
    torch.testing.assert_close(ours, ddim, rtol=1e-5, atol=1e-5)


def test_full_loop_with_noise():
    """img2img: noise added at the 9th of 10 timesteps, then the last two steps."""
    t_start = 8
    results = []
    for sched in (DDIMScheduler(**_config()), BDIAScheduler(**_config(), gamma=0.0)):
        sched.set_timesteps(10)
        timesteps = sched.timesteps[t_start * sched.order :]
        sample = sched.add_noise(_sample_deter(), _noise_deter(), timesteps[:1])
        results.append(_full_loop(sched, sample, lambda s: s.timesteps[t_start * s.order :]))
    ddim, ours = results
    assert abs(ours.abs().sum().item() - ddim.abs().sum().item()) < 1e-2
    assert abs(ours.abs().mean().item() - ddim.abs().mean().item()) < 1e-3
    torch.testing.assert_close(ours, ddim, rtol=1e-5, atol=1e-5)


# ----- the common scheduler checks the DDIM suite inherits --------------------------------------------


def test_from_save_pretrained(make, tmp_path):
    _check(make, tmp_path, time_step=1)


def test_from_pretrained(make, tmp_path):
    sched = make(**_config())
    sched.save_pretrained(tmp_path)
    again = type(sched).from_pretrained(tmp_path)
    saved = {k: v for k, v in sched.config.items() if k != "_use_default_values"}
    assert saved == dict(again.config)


COMPATIBLES = sorted(set(DDIMScheduler._compatibles) | set(BDIAScheduler._compatibles))


@pytest.mark.parametrize("other", COMPATIBLES)
def test_compatibles(make, other):
    sched = make(**_config())
    if other not in {c.__name__ for c in sched.compatibles}:
        pytest.skip(f"{other} is not among {_cls(make).__name__}'s compatibles")
    other_cls = getattr(diffusers, other)
    if other_cls.__module__.startswith("diffusers.utils.dummy"):
        pytest.skip(f"{other} needs a package bdia does not use (diffusers gives a placeholder: torchsde)")
    converted = other_cls.from_config(sched.config)
    back = _cls(make).from_config(converted.config)
    assert {k: v for k, v in back.config.items() if k in sched.config} == dict(sched.config)
    extra = {k for k in back.config if k not in sched.config}
    assert not extra & set(inspect.signature(_cls(make).__init__).parameters)


def test_step_shape(make):
    sched = make(**_config())
    sched.set_timesteps(STEPS)
    sample = _sample()
    out_0 = sched.step(0.1 * sample, 0, sample, eta=0.0).prev_sample  # on the grid
    out_1 = sched.step(0.1 * sample, 1, sample, eta=0.0).prev_sample  # off it
    assert out_0.shape == sample.shape == out_1.shape


def test_outputs_equivalence(make):
    """return_dict=False gives the same tensors as the output object, in its field order."""
    sched = make(**_config())
    sample = _sample()
    sched.set_timesteps(STEPS)
    as_dict = sched.step(0.1 * sample, 0, sample, eta=0.0)
    sched.set_timesteps(STEPS)
    as_tuple = sched.step(0.1 * sample, 0, sample, eta=0.0, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(as_dict.values())
    for got, expected in zip(as_tuple, as_dict.values()):
        torch.testing.assert_close(
            torch.nan_to_num(got, nan=0.0), torch.nan_to_num(expected, nan=0.0), rtol=0, atol=1e-5
        )


def test_public_api(make):
    sched = make(**_config())
    assert hasattr(sched, "init_noise_sigma") and hasattr(sched, "scale_model_input") and hasattr(sched, "step")
    assert sched.scale_model_input(_sample(), 0.0).shape == _sample().shape


def test_add_noise(make):
    sched = make(**_config())
    sched.set_timesteps(100)
    sample = sched.scale_model_input(_sample(), 0.0)
    noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(3))
    t = sched.timesteps[5][None]
    noised = sched.add_noise(sample, noise, t)
    assert noised.shape == sample.shape
    torch.testing.assert_close(noised, DDIMScheduler(**_config()).add_noise(sample, noise, t))


def test_deprecated_kwargs(make):
    cls = _cls(make)
    has_kwargs = "kwargs" in inspect.signature(cls.__init__).parameters
    assert has_kwargs == (len(cls._deprecated_kwargs) > 0), "**kwargs and _deprecated_kwargs go together"


def test_trained_betas(make, tmp_path):
    """trained_betas are used as given, even of another length than num_train_timesteps."""
    sched = make(**_config(), trained_betas=np.array([0.1, 0.3]))
    sched.save_pretrained(tmp_path)
    again = type(sched).from_pretrained(tmp_path)
    assert sched.betas.tolist() == again.betas.tolist() == torch.tensor([0.1, 0.3]).tolist()
    torch.testing.assert_close(sched.alphas_cumprod, torch.tensor([0.9, 0.9 * 0.7]))


def test_trained_betas_longer_than_num_train_timesteps(make):
    """More betas than timesteps: the timesteps follow num_train_timesteps, abar the betas as given."""
    betas = np.linspace(0.0001, 0.02, 2000)
    cfg = _config(num_train_timesteps=1000, clip_sample=False)
    ddim = _full_loop(DDIMScheduler(**cfg, trained_betas=betas), _sample_deter())
    ours = _full_loop(make(**cfg, trained_betas=betas), _sample_deter())
    torch.testing.assert_close(ours, ddim, rtol=1e-5, atol=1e-5)
    plain = _full_loop(DDIMScheduler(**cfg), _sample_deter())
    assert (ddim - plain).abs().max() > 1e-3  # the table is not num_train_timesteps' linear one


def test_getattr(make):
    sched = make(**_config())
    sched.dummy_attribute = 5
    sched.register_to_config(test_attribute=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an instance attribute is read without the config's warning
        assert sched.dummy_attribute == 5 and callable(sched.save_pretrained)
    with pytest.warns(FutureWarning):
        assert sched.test_attribute == 5
    with pytest.raises(AttributeError, match=f"'{type(sched).__name__}' object has no attribute 'does_not_exist'"):
        sched.does_not_exist  # noqa: B018


# ----- what only gamma = 0 may do ---------------------------------------------------------------------


def test_gamma_positive_keeps_the_grid():
    sched = BDIAScheduler(**_config(), gamma=0.5)
    sched.set_timesteps(STEPS)
    with pytest.raises(ValueError, match="timestep 1 is not on this scheduler's grid .*only gamma=0"):
        sched.step(0.1 * _sample(), 1, _sample())
    sched.step(0.1 * _sample(), 0, _sample())  # on the grid it steps
    with pytest.raises(ValueError, match="sample_max_value must be at least 1, got 0.5"):
        BDIAScheduler(**_config(thresholding=True, sample_max_value=0.5), gamma=0.5)
    with pytest.raises(ValueError, match="trained_betas has 2 values but num_train_timesteps is 1000"):
        BDIAScheduler(**_config(), trained_betas=[0.1, 0.3], gamma=0.5)
    with pytest.raises(ValueError, match="timestep 1 is not on this scheduler's grid"):
        sched = BDIAScheduler(**_config(), gamma=[0.0] * 48 + [0.3])  # one nonzero gamma needs the pair
        sched.set_timesteps(STEPS)
        sched.step(0.1 * _sample(), 1, _sample())


def test_gamma_zero_without_betas_for_the_grid():
    """Two betas and 1000 training timesteps: DDIMScheduler fails at its first step (IndexError);
    BDIAScheduler says so when the grid is made."""
    sched = BDIAScheduler(**_config(), trained_betas=[0.1, 0.3], gamma=0.0)
    with pytest.raises(ValueError, match="needs timestep 900, but the schedule has 2 betas"):
        sched.set_timesteps(10)


def test_off_grid_step_starts_a_new_pair():
    """After an off-grid step the next grid step is a plain DDIM step, never paired across the gap."""
    ours = BDIAScheduler(**_config(clip_sample=False), gamma=0.0)
    ddim = DDIMScheduler(**_config(clip_sample=False))
    for s in (ours, ddim):
        s.set_timesteps(10)
    x = _sample()
    for t, index in ((900, 1), (850, None), (800, 2)):  # 850 is off the 10-step grid [900, 800, ...]
        torch.testing.assert_close(
            ours.step(_model(x, t), t, x).prev_sample, ddim.step(_model(x, t), t, x).prev_sample, rtol=1e-5, atol=1e-6
        )
        assert ours.step_index == index  # None: no pair is remembered across the off-grid step
