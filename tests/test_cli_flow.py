"""`bdia invert | reconstruct | edit | generate --model DIR` on tiny SD3 and Flux pipelines (tests/flow_fixtures.py):
the family comes from the folder's model_index.json, the reconstruction is the VAE's own round trip of
the image, and inversions of one family are refused by another."""

from __future__ import annotations

import re

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from bdia.editing import Editor  # noqa: E402
from bdia.io.saved import load_inversion  # noqa: E402
from flow_fixtures import flow_model_dir  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

H = W = 16
STEPS = 6
COMMON = ("--device", "cpu", "-q")
_EDITORS: dict = {}


def _editor(kind):
    if kind not in _EDITORS:
        _EDITORS[kind] = Editor.from_pretrained(flow_model_dir(kind), device="cpu", progress=False)
    return _EDITORS[kind]


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    pixels = (torch.rand(H, W, 3, generator=g) * 255).round().to(torch.uint8).numpy()
    path = tmp_path_factory.mktemp("img") / "img.png"
    Image.fromarray(pixels).save(path)
    return path


def _latent_error(stdout: str) -> float:
    return float(re.search(r"max latent error ([0-9.e+-]+)", stdout).group(1))


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_reconstruction_is_the_vaes_own_round_trip(bdia_cli, tmp_path, image_file, kind):
    import numpy as np
    from PIL import Image

    model = flow_model_dir(kind)
    inv_path, rec_path = tmp_path / "inv.safetensors", tmp_path / "rec.png"
    code, _, err = bdia_cli(
        "invert",
        image_file,
        "--model",
        model,
        "--prompt",
        "a cat",
        "--guidance",
        2.0,
        "--steps",
        STEPS,
        "-o",
        inv_path,
        *COMMON,
    )
    assert code == 0, err
    code, out, err = bdia_cli("reconstruct", inv_path, "-o", rec_path, *COMMON)
    assert code == 0, err
    assert _latent_error(out) <= 1e-10

    inv = load_inversion(inv_path)
    assert inv.family == kind and inv.inversion.grid["prediction"] == "velocity"
    assert inv.model["class"] == ("StableDiffusion3Pipeline" if kind == "sd3" else "FluxPipeline")
    editor = _editor(kind)
    rec = editor.reconstruct(inv, progress=False)
    clean = editor.backend.encode(editor.backend.load_images(str(image_file)))
    assert torch.equal(inv.clean, clean)
    assert (rec.latents - clean.double()).abs().max() <= 1e-10
    vae_round_trip = editor.backend.decode(clean, (W, H))
    torch.testing.assert_close(editor.backend.decode(rec.latents, (W, H)), vae_round_trip, rtol=0, atol=1e-6)
    written, expected = Image.open(rec_path).convert("RGB"), editor.backend.to_images(vae_round_trip)[0]
    assert np.array_equal(np.asarray(written), np.asarray(expected))  # the file: the VAE's round trip, in 8 bits


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_round_trip_with_a_bfloat16_transformer(bdia_cli, tmp_path, image_file, kind):
    inv_path = tmp_path / "inv.safetensors"
    code, out, err = bdia_cli(
        "invert",
        image_file,
        "--model",
        flow_model_dir(kind),
        "--prompt",
        "a cat",
        "--guidance",
        2.0,
        "--steps",
        STEPS,
        "--dtype",
        "bfloat16",
        "-o",
        inv_path,
        *COMMON,
    )
    assert code == 0, err
    assert load_inversion(inv_path).model["dtype"] == "bfloat16"
    code, out, err = bdia_cli("reconstruct", inv_path, "-o", tmp_path / "rec.png", *COMMON)  # its own dtype
    assert code == 0, err
    assert _latent_error(out) <= 1e-10
    code, out, err = bdia_cli(
        "invert",
        image_file,
        "--model",
        flow_model_dir(kind),
        "--prompt",
        "a cat",
        "--guidance",
        2.0,
        "--steps",
        STEPS,
        "--dtype",
        "bfloat16",
        "--method",
        "ddim",
        "--check",
        "-o",
        tmp_path / "ddim.safetensors",
        *COMMON,
    )
    assert code == 0, err
    assert _latent_error(out) > 1e-4  # plain Euler inversion, for contrast


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_edit_and_generate(bdia_cli, tmp_path, image_file, kind):
    import numpy as np
    from PIL import Image

    model = flow_model_dir(kind)
    inv_path = tmp_path / "inv.safetensors"
    assert (
        bdia_cli(
            "invert", image_file, "--model", model, "--prompt", "a cat", "--steps", STEPS, "-o", inv_path, *COMMON
        )[0]
        == 0
    )
    code, out, err = bdia_cli(
        "edit", inv_path, "--prompt", "a dog", "--guidance", 4.0, "-o", tmp_path / "dog.png", *COMMON
    )
    assert code == 0, err
    editor = _editor(kind)
    expected = editor.edit(load_inversion(inv_path), "a dog", guidance_scale=4.0, progress=False).images[0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "dog.png")), np.asarray(expected))
    assert not np.array_equal(np.asarray(expected), np.asarray(Image.open(image_file)))

    code, out, err = bdia_cli(
        "generate",
        "--model",
        model,
        "--prompt",
        "a cat",
        "--height",
        H,
        "--width",
        W,
        "--steps",
        4,
        "--seed",
        3,
        "-o",
        tmp_path / "gen.png",
        *COMMON,
    )
    assert code == 0, err
    made = np.asarray(Image.open(tmp_path / "gen.png"))
    assert made.shape == (H, W, 3) and made.std() > 0
    again = editor.generate("a cat", height=H, width=W, num_steps=4, seed=3, progress=False).images[0]
    assert np.array_equal(made, np.asarray(again))


def test_an_inversion_is_refused_by_another_family(bdia_cli, tmp_path, image_file):
    inv_path = tmp_path / "inv.safetensors"
    assert (
        bdia_cli("invert", image_file, "--model", flow_model_dir("sd3"), "--steps", 3, "-o", inv_path, *COMMON)[0] == 0
    )
    code, _, err = bdia_cli(
        "reconstruct", inv_path, "--model", flow_model_dir("flux"), "-o", tmp_path / "r.png", *COMMON
    )
    assert code == 2 and "'sd3' model, not a Flux pipeline" in err, err
    code, _, err = bdia_cli("reconstruct", inv_path, "--model", "digits", "-o", tmp_path / "r.png", *COMMON)
    assert code == 2 and "'sd3' model, not the embedded digits model" in err, err


def test_pickled_flow_weights_are_refused_unless_allowed(bdia_cli, tmp_path, image_file):
    import shutil

    from safetensors.torch import load_file

    model = shutil.copytree(flow_model_dir("sd3"), tmp_path / "sd3")
    weights = next((model / "transformer").glob("*.safetensors"))
    torch.save(load_file(weights), model / "transformer" / "diffusion_pytorch_model.bin")
    weights.unlink()
    args = ("invert", image_file, "--model", model, "--steps", 3, "-o", tmp_path / "inv.safetensors", *COMMON)
    code, _, err = bdia_cli(*args)
    assert code == 2 and "pickled weights" in err and "transformer" in err, err
    code, _, err = bdia_cli(*args, "--allow-pickle")
    assert code == 0, err


def test_a_folder_of_two_sizes_inverts_and_reconstructs_exactly(bdia_cli, tmp_path):
    """Many inputs with a flow model: each size gets its own grid (Flux's mu follows the token count)."""
    import json

    from PIL import Image

    g = torch.Generator().manual_seed(5)
    (tmp_path / "in").mkdir()
    for name, (w, h) in {"a": (W, H), "b": (W, H), "wide": (24, H)}.items():
        Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).byte().numpy()).save(tmp_path / "in" / f"{name}.png")
    model = flow_model_dir("flux")
    code, out, err = bdia_cli(
        "invert", tmp_path / "in", "--model", model, "--prompt", "a cat", "--steps", 4, "-o", tmp_path / "inv", *COMMON
    )
    assert code == 0 and "3 written" in out, err
    wide = load_inversion(tmp_path / "inv" / "wide.safetensors")
    editor = _editor("flux")
    assert wide.family == "flux" and editor.grid(4, 1.0, (24, H)).matches(wide.inversion.grid)
    assert not editor.grid(4, 1.0, (W, H)).matches(wide.inversion.grid)
    code, out, err = bdia_cli("reconstruct", tmp_path / "inv", "-o", tmp_path / "rec", *COMMON)
    assert code == 0 and "3 written" in out, err
    records = [json.loads(line) for line in (tmp_path / "rec" / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(r["status"] == "done" and r["latent_error"] <= 1e-10 for r in records)


@pytest.mark.parametrize("kind", ["sd3", "flux"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_rex_round_trip_on_flow_pipelines(bdia_cli, tmp_path, image_file, kind, dtype):
    """Rex runs on the velocity grid from t = 1 (alpha = 0), also with a half-precision transformer."""
    inv_path = tmp_path / "inv.safetensors"
    code, _, err = bdia_cli(
        "invert",
        image_file,
        "--model",
        flow_model_dir(kind),
        "--prompt",
        "a cat",
        "--guidance",
        2.0,
        "--steps",
        4,
        "--method",
        "rex",
        "--dtype",
        dtype,
        "-o",
        inv_path,
        *COMMON,
    )
    assert code == 0, err
    code, out, err = bdia_cli("reconstruct", inv_path, "-o", tmp_path / "rec.png", *COMMON)
    assert code == 0, err
    assert _latent_error(out) <= 1e-10
    assert load_inversion(inv_path).solver["name"] == "rex"
