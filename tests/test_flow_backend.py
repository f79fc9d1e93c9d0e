"""SD3 and Flux backends (src/bdia/editing/backends/flow.py) on tiny pipelines: the pieces agree with the
pipelines' own sampling, and BDIA/EDICT latent round trips are exact with half-precision transformers."""

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import bdia  # noqa: E402
from bdia.editing import Editor  # noqa: E402
from bdia.io.loading import model_family  # noqa: E402
from flow_fixtures import flow_model_dir  # noqa: E402

H = W = 16
KINDS = {
    "sd3": {"guidance_scale": 4.0},
    "sd3-no-t5": {"guidance_scale": 4.0},
    "flux": {"guidance_scale": 3.5, "max_sequence_length": 16},
}
_BACKENDS: dict = {}


def _backend(kind):
    if kind not in _BACKENDS:
        _BACKENDS[kind] = Editor.from_pretrained(
            flow_model_dir(kind), device="cpu", progress=False, **_prompt_kw(kind)
        ).backend
    return _BACKENDS[kind]


def _prompt_kw(kind):
    return {"max_sequence_length": 16} if kind == "flux" else {}


@pytest.mark.parametrize("kind", list(KINDS))
def test_backend_sampling_is_the_pipelines_own(kind, single_thread):
    """DDIM over the backend's grid, prompt encoding and velocity model = the pipeline's Euler loop."""
    be = _backend(kind)
    assert model_family(flow_model_dir(kind)) == be.family == kind.split("-")[0]
    gs = KINDS[kind]["guidance_scale"]
    cond, uncond = be.conditions(["a cat"], None, H, W)
    noise = torch.randn(be.latent_shape(1, H, W), generator=torch.Generator().manual_seed(0))
    ours = bdia.DDIM(state_dtype=torch.float32).sample(be.guided(cond, uncond, gs), noise, be.grid(6, 1.0, (W, H)))
    ref = be.pipe(
        "a cat",
        num_inference_steps=6,
        height=H,
        width=W,
        output_type="latent",
        latents=noise.clone(),
        guidance_scale=gs,
        **_prompt_kw(kind),
    ).images
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_latent_round_trip_is_exact_with_half_precision_transformers(kind, dtype, single_thread):
    be = _backend(kind)
    g = torch.Generator().manual_seed(1)
    images = torch.rand(1, 3, H, W, generator=g) * 2 - 1
    x = be.encode(images)
    assert x.shape == be.latent_shape(1, H, W)
    cond, uncond = be.conditions(["a cat"], None, H, W)
    be.pipe.transformer.to(dtype)
    try:
        model, grid = be.guided(cond, uncond, KINDS[kind]["guidance_scale"]), be.grid(8, 1.0, (W, H))
        errors = {}
        for solver in (bdia.BDIA(1.0), bdia.EDICT(0.93), bdia.DDIM()):
            rec = solver.sample(model, solver.invert(model, x.double(), grid), grid)
            errors[solver.name] = float((rec - x).abs().max())
    finally:
        be.pipe.transformer.to(torch.float32)
    assert errors["bdia"] <= 1e-10 and errors["edict"] <= 1e-10, errors
    assert errors["ddim"] > 1e-3, errors  # plain Euler inversion, for contrast


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_vae_round_trip_and_shapes(kind):
    be = _backend(kind)
    images = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(2)) * 2 - 1
    x = be.encode(images)
    assert x.shape == be.latent_shape(2, H, W)
    out = be.decode(x, (W, H))
    assert out.shape == images.shape and torch.isfinite(out).all()
    vae = be.pipe.vae  # decode undoes encode's shift and scale: compare with the VAE called directly
    with torch.no_grad():
        direct = vae.decode(vae.encode(images).latent_dist.mean).sample
    assert torch.allclose(out, direct.clamp(-1, 1), atol=1e-5)  # decode clips to the pixel range
    with pytest.raises(ValueError, match="divisible by"):
        be.encode(torch.zeros(1, 3, H + 1, W))


def test_fingerprint_refuses_another_family_or_checkpoint_and_admits_half_precision():
    from bdia.editing.backends.flow import flow_fingerprint_mismatch

    sd3, flux = _backend("sd3"), _backend("flux")
    saved = sd3.fingerprint()
    assert flow_fingerprint_mismatch(saved, sd3.fingerprint()) is None
    assert "'sd3' model and this one is 'flux'" in flow_fingerprint_mismatch(saved, flux.fingerprint())
    sd3.pipe.transformer.to(torch.bfloat16)
    try:
        assert flow_fingerprint_mismatch(saved, sd3.fingerprint()) is None
    finally:
        sd3.pipe.transformer.to(torch.float32)
    other = _backend("sd3-no-t5").fingerprint()  # the same architecture and seed: perturb a weight
    name = next(iter(other["transformer_probe"]))
    other["transformer_probe"][name] = [v + 0.1 for v in other["transformer_probe"][name]]
    assert "transformer weights differ" in flow_fingerprint_mismatch(saved, other)


def test_flux_true_cfg_is_the_pipelines_and_inverts_exactly(single_thread):
    be = _backend("flux")
    cond, uncond = be.conditions(["a cat"], ["blur"], H, W)
    be.true_cfg_scale = 2.0
    try:
        model = be.guided(cond, uncond, 3.5)
    finally:
        be.true_cfg_scale = 1.0
    grid = be.grid(5, 1.0, (W, H))
    noise = torch.randn(be.latent_shape(1, H, W), generator=torch.Generator().manual_seed(3))
    ours = bdia.DDIM(state_dtype=torch.float32).sample(model, noise, grid)
    ref = be.pipe(
        "a cat",
        negative_prompt="blur",
        true_cfg_scale=2.0,
        num_inference_steps=5,
        height=H,
        width=W,
        output_type="latent",
        latents=noise.clone(),
        guidance_scale=3.5,
        max_sequence_length=16,
    ).images
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    solver = bdia.BDIA(1.0)
    rec = solver.sample(model, solver.invert(model, ours.double(), grid), grid)
    assert (rec - ours.double()).abs().max() <= 1e-10


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_reconstruction_decodes_to_the_vaes_own_round_trip(kind, single_thread):
    """image -> latents -> BDIA inversion -> reconstruction -> image equals decode(encode(image))."""
    be = _backend(kind)
    images = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(4)) * 2 - 1
    x = be.encode(images)
    cond, uncond = be.conditions(["a cat"], None, H, W)
    model, grid = be.guided(cond, uncond, KINDS[kind]["guidance_scale"]), be.grid(6, 1.0, (W, H))
    solver = bdia.BDIA(1.0)
    rec = solver.sample(model, solver.invert(model, x.double(), grid), grid)
    torch.testing.assert_close(be.decode(rec, (W, H)), be.decode(x, (W, H)), rtol=0, atol=1e-6)


def test_sd3_with_dynamic_shifting_uses_the_pipelines_mu(single_thread):
    """SD3.5-style configs shift by mu from the image's token count; the backend's grid follows the pipeline's."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from bdia.editing.backends.flow import SD3Backend

    pipe = _backend("sd3").pipe
    original = pipe.scheduler
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_image_seq_len=16, max_image_seq_len=256
    )
    try:
        be = SD3Backend(pipe)
        cond, uncond = be.conditions(["a cat"], None, H, W)
        noise = torch.randn(be.latent_shape(1, H, W), generator=torch.Generator().manual_seed(5))
        ours = bdia.DDIM(state_dtype=torch.float32).sample(be.guided(cond, uncond, 4.0), noise, be.grid(5, 1.0, (W, H)))
        ref = pipe(
            "a cat",
            num_inference_steps=5,
            height=H,
            width=W,
            output_type="latent",
            latents=noise.clone(),
            guidance_scale=4.0,
        ).images
        assert torch.equal(ours, ref)
    finally:
        pipe.scheduler = original


def test_an_editor_over_a_loaded_pipeline_picks_its_flow_backend():
    from bdia.editing.backends.flow import FluxBackend, SD3Backend

    for kind, cls in (("sd3", SD3Backend), ("flux", FluxBackend)):
        editor = Editor(_backend(kind).pipe, model_id="tiny")
        assert type(editor.backend) is cls and editor.backend.family == kind
        assert editor.backend.record()["id"] == "tiny"
    with pytest.raises(ValueError, match="drives a FluxPipeline"):
        FluxBackend(_backend("sd3").pipe)


def test_flux_true_cfg_with_a_negative_prompt_through_the_editor(single_thread):
    """true_cfg_scale from from_pretrained: the negative prompt's branch is used, recorded and exact to invert."""
    editor = Editor.from_pretrained(
        flow_model_dir("flux"), device="cpu", progress=False, max_sequence_length=16, true_cfg_scale=2.0
    )
    images = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(6))
    inv = editor.invert(images, "a cat", negative_prompt="blur", guidance_scale=3.5, num_steps=5)
    assert inv.model["true_cfg_scale"] == 2.0
    assert editor.reconstruct(inv, progress=False).latent_error <= 1e-10
    plain = editor.invert(images, "a cat", guidance_scale=3.5, num_steps=5)  # no negative: one branch
    assert not torch.equal(plain.noise, inv.noise)
    with pytest.raises(ValueError, match="true_cfg_scale"):
        Editor(_backend("flux")).reconstruct(inv, progress=False)


def test_null_text_inversion_is_refused_on_flow_models_before_any_work():
    for kind in ("sd3", "flux"):
        with pytest.raises(ValueError, match="flow-matching model has none"):
            Editor(_backend(kind).pipe, model_id="tiny").null_text_invert(torch.rand(1, 3, H, W), "a cat", num_steps=3)
