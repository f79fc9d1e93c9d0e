"""BDIAScheduler with gamma > 0 inside diffusers' pipelines (img2img, callbacks, several images per
prompt, scheduler swaps), and BDIAInverseScheduler: exact round trips and agreement with the core solver."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from bdia import BDIA, Schedule, ddim_transition  # noqa: E402
from bdia.schedulers import BDIAInverseScheduler, BDIAScheduler  # noqa: E402
from bdia.solvers.bdia import bdia_step  # noqa: E402
from pipelines_fixtures import SD_SCHEDULER, make_image, model_dir  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

_PIPE: dict[str, object] = {}


def _sd():
    if "sd" not in _PIPE:
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(model_dir("sd"))
        pipe.set_progress_bar_config(disable=True)
        _PIPE["sd"] = pipe
    return _PIPE["sd"]


def _noise(batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 4, 4, 4, generator=torch.Generator().manual_seed(seed))


def _run(pipe, scheduler=None, steps: int = 6, **kwargs) -> torch.Tensor:
    if scheduler is not None:
        pipe.scheduler = scheduler
    args = dict(
        num_inference_steps=steps, guidance_scale=3.0, output_type="latent", height=32, width=32, latents=_noise()
    )
    return pipe("a cat", **{**args, **kwargs}).images


class _Replay:
    """An eps model that replays what a scheduler was given, checking it is asked at the same points."""

    def __init__(self, calls: list[tuple[int, torch.Tensor, torch.Tensor]]):
        self.calls = {t: (x, out) for t, x, out in calls}

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sample, out = self.calls[int(t[0])]
        torch.testing.assert_close(x.float(), sample, rtol=1e-5, atol=1e-5)
        return out.to(x.dtype)


def _recording(scheduler):
    """Wrap ``scheduler.step`` to record (timestep, sample, model output) of every call."""
    calls, step = [], scheduler.step

    def record(model_output, timestep, sample, *args, **kwargs):
        calls.append((int(timestep), sample.clone(), model_output.clone()))
        return step(model_output, timestep, sample, *args, **kwargs)

    scheduler.step = record
    return calls


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_img2img_pair_state_matches_the_core_solver(strength):
    """The pipeline starts partway (set_begin_index); its run must be BDIA on the truncated grid."""
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline.from_pipe(_sd())
    sched = BDIAScheduler.from_config(SD_SCHEDULER, gamma=0.7)
    calls = _recording(sched)
    pipe.scheduler = sched
    out = pipe(
        "a cat",
        image=make_image(),
        strength=strength,
        num_inference_steps=8,
        guidance_scale=3.0,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
    ).images
    grid = Schedule.from_config(SD_SCHEDULER).grid(8).truncated(strength)
    assert [t for t, _, _ in calls] == grid.timesteps.tolist()
    expected = BDIA(0.7).sample(_Replay(calls), calls[0][1].double(), grid)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    assert (out - calls[-1][1]).abs().max() > 0  # it moved


def test_callbacks_images_per_prompt_and_scheduler_swaps_keep_the_pair():
    from diffusers import DDIMScheduler

    pipe = _sd()
    sched = BDIAScheduler.from_config(SD_SCHEDULER, gamma=0.5)
    reference = _run(pipe, sched)
    ddim = _run(pipe, DDIMScheduler.from_config(SD_SCHEDULER))
    assert (reference - ddim).abs().max() > 1e-3  # gamma = 0.5 is not DDIM here

    seen = []

    def callback(p, i, t, kwargs):  # reads the latents and hands back a copy, as user callbacks do
        seen.append(i)
        return {"latents": kwargs["latents"].clone()}

    with_callback = _run(pipe, sched, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents"])
    assert seen == list(range(6))
    torch.testing.assert_close(with_callback, reference, rtol=0, atol=0)

    def interrupt(p, i, t, kwargs):  # a run abandoned half way leaves a pair behind
        p._interrupt = i == 2
        return {}

    _run(pipe, sched, callback_on_step_end=interrupt)
    _run(pipe, sched, steps=4)  # another grid
    _run(pipe, DDIMScheduler.from_config(SD_SCHEDULER))  # swapped out and back in
    torch.testing.assert_close(_run(pipe, sched), reference, rtol=0, atol=0)

    # Several images per prompt: each batch element carries its own pair.
    both = torch.cat([_noise(seed=0), _noise(seed=1)])
    batched = _run(pipe, sched, latents=both, num_images_per_prompt=2)
    second = _run(pipe, sched, latents=both[1:])
    torch.testing.assert_close(batched, torch.cat([reference, second]), rtol=1e-5, atol=1e-5)


def test_edited_latents_are_paired_with_the_previous_sample():
    """A callback that edits z_i: the next step pairs the edited z_i with the z_{i-1} it was given."""
    pipe = _sd()
    sched = BDIAScheduler.from_config(SD_SCHEDULER, gamma=0.5)
    calls = _recording(sched)

    def edit(p, i, t, kwargs):
        return {"latents": kwargs["latents"] * 0.9} if i == 2 else {}

    out = _run(pipe, sched, callback_on_step_end=edit, callback_on_step_end_tensor_inputs=["latents"])
    grid = Schedule.from_config(SD_SCHEDULER).grid(6)
    # The core recurrence over the recorded calls: each output from the pair of samples given.
    z_prev = None
    for k, (_t, z, eps) in enumerate(calls):
        z64, e64 = z.double(), eps.double()
        fwd = ddim_transition(z64, e64, grid, k, k + 1)
        nxt = fwd if z_prev is None else bdia_step(z_prev, fwd, ddim_transition(z64, e64, grid, k, k - 1), 0.5)
        given_next = calls[k + 1][1].double() if k + 1 < len(calls) else out.double()
        if k == 2:
            nxt = 0.9 * nxt  # the edit
        torch.testing.assert_close(given_next, nxt, rtol=1e-5, atol=1e-5)
        z_prev = z64


def _toy(x: torch.Tensor, t) -> torch.Tensor:
    t = float(t) if not isinstance(t, torch.Tensor) else float(t.flatten()[0])
    return torch.tanh(x) * (0.3 + t / 1000.0) + 0.1 * x


@pytest.mark.parametrize(
    "spacing, gamma", [("leading", 1.0), ("trailing", 1.0), ("linspace", 0.8), ("leading", "belm")]
)
def test_inverse_scheduler_equals_the_core_solver_and_round_trips(spacing, gamma):
    config = {**SD_SCHEDULER, "timestep_spacing": spacing}
    x0 = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    inv = BDIAInverseScheduler.from_config(config, gamma=gamma)
    inv.set_timesteps(8)
    grid = Schedule.from_config(config).grid(8)
    assert inv.timesteps.tolist() == [grid.timesteps[-1].item()] + grid.timesteps.flip(0)[:-1].tolist()
    z = x0
    for t in inv.timesteps:
        z = inv.step(_toy(z, t), t, z).prev_sample
    # the scheduler's first call is one DDIM-inversion step: the core solver's "ddim" start
    core = BDIA(gamma, start="ddim").invert(lambda x, t: _toy(x, t), x0, grid)
    torch.testing.assert_close(inv.latents[0], core.latents[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(inv.latents[1], core.latents[1], rtol=1e-10, atol=1e-10)
    assert inv.latents[0] is not None and torch.equal(z, inv.latents[0])

    # float32 round trip through BDIAScheduler, started from the inverted pair.
    pair = [x.float() for x in inv.latents]
    sched = BDIAScheduler.from_config(config, gamma=gamma, clip_sample=False)
    sched.set_timesteps(8)
    sched.set_inverted_start(pair)
    z = pair[0]
    for t in sched.timesteps:
        z = sched.step(_toy(z, t), t, z).prev_sample
    assert (z - x0.float()).abs().max() <= 1e-5


def test_inverse_scheduler_round_trip_through_a_pipeline():
    """Invert latents with the tiny SD UNet in a diffusers-style inversion loop, then regenerate them
    with StableDiffusionPipeline and BDIAScheduler started from the inverted pair (gamma=1, float32)."""
    pipe = _sd()
    x0 = _run(pipe, BDIAScheduler.from_config(SD_SCHEDULER, gamma=0.5))
    inv = BDIAInverseScheduler.from_config(SD_SCHEDULER, gamma=1.0)
    emb = pipe.encode_prompt("a cat", "cpu", 1, False)[0]
    inv.set_timesteps(10)
    z = x0
    with torch.no_grad():
        for t in inv.timesteps:
            z = inv.step(pipe.unet(z, t, encoder_hidden_states=emb).sample, t, z).prev_sample
    pair = inv.latents
    assert (pair[0] - x0).abs().max() > 0.5  # it went somewhere
    sched = BDIAScheduler.from_config(SD_SCHEDULER, gamma=1.0)
    sched.set_inverted_start(pair)
    again = _run(pipe, sched, steps=10, guidance_scale=1.0, latents=pair[0])
    err = (again - x0).abs().max().item()
    assert err <= 1e-5, err
    # The start is used once; a mismatched start is refused.
    sched.set_inverted_start(pair)
    with pytest.raises(ValueError, match="set_inverted_start expects the run to start at grid point 0"):
        _run(pipe, sched, steps=10, guidance_scale=1.0, latents=pair[1])
    sched.set_inverted_start(pair)
    with pytest.raises(ValueError, match="the inverted start was made on timesteps"):
        _run(pipe, sched, steps=8, guidance_scale=1.0, latents=pair[0])
    other = BDIAScheduler.from_config(inv.config, gamma=0.5)
    other.set_inverted_start(pair)
    with pytest.raises(ValueError, match="with gammas"):
        _run(pipe, other, steps=10, guidance_scale=1.0, latents=pair[0])
    sched.set_inverted_start(None)
    with pytest.raises(ValueError, match="only without clipping x0"):
        BDIAScheduler.from_config({**SD_SCHEDULER, "clip_sample": True}).set_inverted_start(pair)


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(clip_sample=True), "cannot be inverted exactly"),
        (dict(thresholding=True), "cannot be inverted exactly"),
        (dict(step_pairing="stride", gamma=0.0), "step_pairing='stride' reproduces DDIMScheduler"),
    ],
)
def test_inverse_scheduler_refuses_what_cannot_be_undone(bad, match):
    with pytest.raises(ValueError, match=match):
        BDIAInverseScheduler.from_config(SD_SCHEDULER, **bad)


def test_inverse_scheduler_checks_its_calls():
    inv = BDIAInverseScheduler.from_config(SD_SCHEDULER, gamma=0.0)
    with pytest.raises(ValueError, match="gamma is 0 at step"):
        inv.set_timesteps(4)
    inv = BDIAInverseScheduler.from_config(SD_SCHEDULER)
    inv.set_timesteps(4)
    x = torch.zeros(1, 1, 2, 2)
    first = int(inv.timesteps[0])
    with pytest.raises(ValueError, match=f"inversion call 0 got timestep 501; expected timestep {first}"):
        inv.step(x, 501, x)
    for t in inv.timesteps:
        x = inv.step(_toy(x, t), t, x).prev_sample
    with pytest.raises(ValueError, match="no more steps"):
        inv.step(x, inv.timesteps[0], x)
