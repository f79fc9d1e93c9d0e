"""Real-image inversion, reconstruction and editing with tiny Stable Diffusion pipelines (offline).

The pipelines are built from configs with random weights (tests/pipelines_fixtures.py). Properties
checked: the latent round trip is exact (float64 state) for BDIA and EDICT under guidance, for SD,
v-prediction and SDXL-shaped models, and not for DDIM; the pixel error equals the VAE's own; saved
inversions reload exactly and are refused with another model, grid, or when modified.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from bdia.editing import Editor  # noqa: E402
from bdia.io.images import ImageSizeWarning  # noqa: E402
from bdia.io.saved import ImageInversion, load_inversion, save_inversion  # noqa: E402
from bdia.solvers import NonFiniteError  # noqa: E402
from pipelines_fixtures import editor, make_image, model_dir  # noqa: E402

STEPS = 5
EXACT = 1e-9  # float64 state: the round trip loses a few digits of 1e-16 (core tolerance)


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def image():
    return make_image((32, 32))


@pytest.mark.parametrize("method", ["bdia", "edict"])
def test_round_trip_is_exact_under_guidance(image, method):
    ed = editor("sd")
    inv = ed.invert(image, "a cat", guidance_scale=3.0, num_steps=STEPS, method=method)
    assert inv.latents[0].dtype == torch.float64
    assert inv.inversion.nfe == STEPS * (2 if method == "edict" else 1)
    rec = ed.reconstruct(inv)
    assert rec.latent_error < EXACT
    # The pixel error is the VAE's own round trip: exact inversion adds nothing to it.
    errors = ed.pixel_errors(image, rec, inv)
    assert errors["vs_vae"] < 1e-5
    assert errors["reconstruction"] == pytest.approx(errors["vae_roundtrip"], abs=1e-5)
    assert len(rec.images) == 1 and rec.images[0].size == (32, 32)


def test_ddim_inversion_is_not_exact(image):
    ed = editor("sd")
    inv = ed.invert(image, "a cat", guidance_scale=3.0, num_steps=STEPS, method="ddim")
    rec = ed.reconstruct(inv)
    assert rec.latent_error > 1e-3
    errors = ed.pixel_errors(image, rec, inv)
    assert errors["vs_vae"] > 1e-3  # the reconstruction drifts away from what the VAE alone gives


def test_v_prediction_round_trip(image):
    ed = editor("sd-v")
    assert ed.schedule.prediction_type == "v_prediction"
    assert ed.backend.eps_model is not ed.backend.model  # converted to eps by bdia.to_eps
    inv = ed.invert(image, "a cat", guidance_scale=2.0, num_steps=STEPS)
    assert ed.reconstruct(inv).latent_error < EXACT


def test_sdxl_round_trip_and_added_conditioning(image):
    ed = editor("sdxl")
    cond, uncond = ed.backend.conditions(["a cat"], None, 32, 32)
    assert set(cond) == {"encoder_hidden_states", "text_embeds", "time_ids"}
    assert cond["encoder_hidden_states"].shape[-1] == 64  # both text encoders concatenated
    assert torch.equal(uncond["encoder_hidden_states"], torch.zeros_like(uncond["encoder_hidden_states"]))
    inv = ed.invert(image, "a cat", guidance_scale=3.0, num_steps=STEPS)
    assert ed.reconstruct(inv).latent_error < EXACT
    assert ed.edit(inv, "a dog").latent_error is None


def test_edit_changes_the_image_and_same_prompt_is_reconstruction(image):
    ed = editor("sd")
    inv = ed.invert(image, "a cat", guidance_scale=2.0, num_steps=STEPS)
    rec = ed.reconstruct(inv)
    same = ed.edit(inv, "a cat")
    assert torch.equal(same.latents, rec.latents)
    edited = ed.edit(inv, "a dog", guidance_scale=4.0)
    assert (edited.latents - rec.latents).abs().max() > 1e-2
    # A separate guidance scale for regeneration also changes it.
    assert (ed.edit(inv, "a cat", guidance_scale=5.0).latents - rec.latents).abs().max() > 1e-3


def test_negative_prompt_is_kept_for_reconstruction(image):
    ed = editor("sd")
    inv = ed.invert(image, "a cat", negative_prompt="blurry", guidance_scale=3.0, num_steps=STEPS)
    assert inv.negative_prompt == ["blurry"]
    assert ed.reconstruct(inv).latent_error < EXACT
    other = ed.edit(inv, "a cat", negative_prompt=None)
    assert (other.latents - inv.clean).abs().max() > 1e-3


def test_strength_inverts_part_of_the_grid(image):
    ed = editor("sd")
    full = ed.grid(10)
    inv = ed.invert(image, "a cat", guidance_scale=2.0, num_steps=10, strength=0.5)
    assert inv.inversion.nfe == 5
    assert inv.inversion.grid["timesteps"] == full.timesteps[5:].tolist()
    rec = ed.reconstruct(inv)
    assert rec.latent_error < EXACT and rec.nfe == 4


def test_batch_of_images_with_one_prompt_each():
    ed = editor("sd")
    images = [make_image((32, 32), seed=1), make_image((32, 32), seed=2)]
    inv = ed.invert(images, ["a cat", "a dog"], guidance_scale=2.0, num_steps=STEPS)
    assert inv.batch_size == 2 and inv.prompt == ["a cat", "a dog"]
    rec = ed.reconstruct(inv)
    assert rec.latent_error < EXACT and len(rec.images) == 2
    single = ed.invert(images[1], "a dog", guidance_scale=2.0, num_steps=STEPS)
    # Batching changes float32 rounding inside the UNet only; the inversion is per image.
    torch.testing.assert_close(single.noise[0], inv.noise[1], atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="2 images"):
        ed.invert(images, ["a", "b", "c"], num_steps=STEPS)


def test_image_inputs_sizes_and_messages(tmp_path):
    ed = editor("sd")
    img = make_image((35, 32))
    with pytest.warns(ImageSizeWarning, match="35x32.*center-cropped to 34x32"):
        pixels = ed.backend.load_images(img)
    assert pixels.shape == (1, 3, 32, 34) and pixels.min() >= -1 and pixels.max() <= 1
    assert ed.backend.load_images(img, size=(16, 24)).shape == (1, 3, 24, 16)
    with pytest.raises(ValueError, match="multiples of the VAE factor"):
        ed.backend.load_images(img, size=(15, 24))
    img.save(tmp_path / "x.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImageSizeWarning)
        from_path = ed.backend.load_images(tmp_path / "x.png")
    tensor = torch.rand(3, 16, 16)
    assert torch.allclose(ed.backend.load_images(tensor), tensor[None] * 2 - 1)
    assert from_path.shape == pixels.shape
    with pytest.raises(ValueError, match="one size"):
        ed.backend.load_images([make_image((32, 32)), make_image((16, 16))])
    with pytest.raises(FileNotFoundError):
        ed.backend.load_images(tmp_path / "missing.png")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ed.backend.load_images(torch.full((3, 8, 8), 2.0))


def test_saved_inversion_round_trip(tmp_path, image):
    ed = editor("sd")
    inv = ed.invert(
        image,
        "a cat",
        negative_prompt="ugly",
        guidance_scale=2.5,
        num_steps=STEPS,
        strength=0.8,
        method="bdia",
        gamma=0.97,
    )
    path = save_inversion(inv, tmp_path / "inv.safetensors")
    loaded = load_inversion(path)
    assert isinstance(loaded, ImageInversion)
    assert loaded.solver == {"name": "bdia", "gamma": 0.97, "forward": "euler", "start": "ddim"}
    assert (loaded.prompt, loaded.negative_prompt, loaded.guidance_scale) == (["a cat"], ["ugly"], 2.5)
    assert (loaded.num_steps, loaded.strength, loaded.image_size) == (STEPS, 0.8, (32, 32))
    assert loaded.model["id"] == str(model_dir("sd")) and loaded.model["dtype"] == "float32"
    assert loaded.schedule["beta_schedule"] == "scaled_linear"
    for a, b in zip(loaded.latents, inv.latents):
        assert torch.equal(a, b)
    assert ed.reconstruct(loaded).latent_error < EXACT
    with pytest.raises(FileExistsError, match="already exists"):
        save_inversion(inv, path)
    save_inversion(inv, path, overwrite=True)


def test_saved_inversion_refuses_tampering_and_pickles(tmp_path, image):
    from safetensors import safe_open
    from safetensors.torch import save_file

    ed = editor("sd")
    path = save_inversion(ed.invert(image, "a cat", num_steps=STEPS), tmp_path / "inv.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors["latent.0"] = tensors["latent.0"] + 1e-3
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="checksum"):
        load_inversion(tmp_path / "bad.safetensors")
    torch.save({"latents": torch.zeros(1)}, tmp_path / "pickle.safetensors")
    with pytest.raises(ValueError, match="pickled files are never loaded"):
        load_inversion(tmp_path / "pickle.safetensors")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a bdia inversion"):
        load_inversion(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError):
        load_inversion(tmp_path / "missing.safetensors")


def test_mismatched_pipeline_is_refused(image):
    inv = editor("sd").invert(image, "a cat", num_steps=STEPS)
    with pytest.raises(ValueError, match="prediction"):
        editor("sd-v").reconstruct(inv)  # same weights, v-prediction scheduler
    with pytest.raises(ValueError, match="architecture"):
        editor("sdxl").reconstruct(inv)
    trailing = Editor(editor("sd").backend.pipe, progress=False, timestep_spacing="trailing")
    with pytest.raises(ValueError, match="grid"):
        trailing.edit(inv, "a dog")


def test_other_weights_are_refused(image):
    from diffusers import DiffusionPipeline

    inv = editor("sd").invert(image, "a cat", num_steps=STEPS)
    pipe = DiffusionPipeline.from_pretrained(model_dir("sd"))
    with torch.no_grad():
        pipe.unet.conv_in.weight.mul_(1.05)
    with pytest.raises(ValueError, match="weights differ"):
        Editor(pipe, progress=False).reconstruct(inv)


def test_half_precision_unet_keeps_a_float64_state(image):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(model_dir("sd"), torch_dtype=torch.bfloat16)
    ed = Editor(pipe, progress=False)
    assert ed.backend.dtype == torch.bfloat16
    inv = ed.invert(image, "a cat", guidance_scale=2.0, num_steps=STEPS)
    assert inv.latents[0].dtype == torch.float64 and inv.model["dtype"] == "bfloat16"
    assert ed.reconstruct(inv).latent_error < EXACT
    with pytest.warns(UserWarning, match="bfloat16"):  # the float32 model is another function
        editor("sd").check(inv)


def test_non_finite_latents_name_the_step(image):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(model_dir("sd"))
    ed = Editor(pipe, progress=False)
    calls = []

    def poison(module, args, output):
        calls.append(1)
        return (output[0] * float("nan"),) if len(calls) == 3 else output

    pipe.unet.register_forward_hook(poison)
    with pytest.raises(NonFiniteError, match="inversion step at grid point 3"):
        ed.invert(image, "a cat", num_steps=STEPS)


def test_progress_bar_and_silence(image, capsys):
    ed = editor("sd")
    ed.invert(image, "a cat", num_steps=STEPS, progress=True)
    assert "bdia inversion" in capsys.readouterr().err
    ed.invert(image, "a cat", num_steps=STEPS, progress=False)
    assert capsys.readouterr().err == ""


def test_generate_with_core_solvers():
    ed = editor("sd")
    a = ed.generate("a cat", num_steps=STEPS, height=32, width=32, seed=1, guidance_scale=3.0)
    b = ed.generate("a cat", num_steps=STEPS, height=32, width=32, seed=1, guidance_scale=3.0)
    assert torch.equal(a.latents, b.latents) and a.nfe == STEPS and a.images[0].size == (32, 32)
    c = ed.generate("a cat", num_steps=STEPS, height=32, width=32, seed=1, guidance_scale=3.0, method="ddim")
    assert (a.latents - c.latents).abs().max() > 1e-4


def test_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model folder"):
        Editor.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        Editor.from_pretrained(tmp_path / "empty")


def test_null_text_inversion_on_stable_diffusion_and_sdxl():
    """Null-text optimises the empty prompt's token states per step (SDXL: its pooled embedding and time ids
    are kept); the edit and the reconstruction guide with them."""
    for kind, size in (("sd", 32), ("sdxl", 64)):
        ed = editor(kind)
        inv = ed.null_text_invert(make_image((size, size)), "a cat", num_steps=3, guidance_scale=4.0, inner_steps=2)
        assert inv.null_embeddings.shape[:2] == (3, 1) and inv.solver["name"] == "ddim"
        plain = ed.null_text_invert(make_image((size, size)), "a cat", num_steps=3, guidance_scale=4.0, inner_steps=0)
        assert not torch.equal(inv.null_embeddings, plain.null_embeddings), kind  # it optimised
        assert math.isfinite(ed.reconstruct(inv).latent_error)
        assert ed.edit(inv, "a dog").latents.shape == inv.noise.shape
    digits = Editor.from_pretrained("digits", progress=False)
    with pytest.raises(ValueError, match="has none: use another method"):
        digits.null_text_invert(torch.zeros(1, 1, 16, 16), "3", num_steps=3)
