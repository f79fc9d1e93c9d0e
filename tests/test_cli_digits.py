"""``bdia invert | reconstruct | edit | generate`` with the default ``--model digits``, run in-process."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import bdia.cli
from bdia.digits import load_classifier, load_digits, to_model
from bdia.io.saved import load_inversion, save_inversion

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def held_out():
    """A held-out 3 (uint8, 16x16) from the test split, never seen in training."""
    test = load_digits("test")
    idx = int((test.labels == 3).nonzero()[0])
    return test.images[idx, 0].numpy()


@pytest.fixture
def digit_png(tmp_path, held_out):
    from PIL import Image

    path = tmp_path / "three.png"
    Image.fromarray(held_out).save(path)
    return path


def _read(path):
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im).copy(), im.mode, im.size


def _number(pattern, text):
    m = re.search(pattern, text)
    assert m, f"{pattern!r} not in {text!r}"
    return float(m.group(1))


def _judge(path) -> int:
    pixels, _, _ = _read(path)
    with torch.no_grad():
        return int(load_classifier()(to_model(torch.from_numpy(pixels))[None, None]).argmax())


def test_invert_reconstruct_edit_generate(bdia_cli, tmp_path, digit_png, held_out):
    inv = tmp_path / "inv.safetensors"
    code, out, err = bdia_cli("invert", digit_png, "--prompt", "3", "--steps", 20, "--check", "-o", inv, "-q")
    assert code == 0, err
    assert "inverted 1 image(s) 16x16 with bdia" in out and "NFE 20" in out and " s\n" in out
    assert _number(r"max pixel error ([0-9.e+-]+)", out) < 1e-9
    assert "100.0% of pixels identical" in out
    saved = load_inversion(inv)
    assert saved.model["id"] == "digits" and saved.prompt == ["3"] and saved.image_size == (16, 16)

    rec = tmp_path / "rec.png"
    code, out, err = bdia_cli("reconstruct", inv, "-o", rec, "--image", digit_png, "-q")
    assert code == 0, err
    assert "reconstructed 1 image(s)" in out and "NFE" in out
    assert _number(r"max pixel error ([0-9.e+-]+)", out) < 1e-9
    assert "8-bit pixels identical to the inverted image: 100.0%" in out
    pixels, mode, size = _read(rec)
    assert mode == "L" and size == (16, 16)
    np.testing.assert_array_equal(pixels, held_out)  # exact after 8-bit quantisation

    edit = tmp_path / "edit.png"
    code, out, err = bdia_cli("edit", inv, "--prompt", "8", "-o", edit, "-q")
    assert code == 0, err
    assert "edited 1 image(s) '3' -> '8'" in out and "NFE" in out
    assert _read(edit)[2] == (16, 16) and not np.array_equal(_read(edit)[0], held_out)

    gen = tmp_path / "gen.png"
    code, out, err = bdia_cli("generate", "--prompt", "7", "--steps", 20, "-o", gen, "-q")
    assert code == 0, err
    assert "generated 1 image(s) 16x16 with bdia(gamma=0.5), 20 steps, guidance 2.0" in out and "NFE 20" in out
    assert _judge(gen) == 7


def test_edit_straight_from_an_image_and_resizing_is_announced(bdia_cli, tmp_path, held_out):
    from PIL import Image

    big = tmp_path / "big.png"
    Image.fromarray(held_out).convert("RGB").resize((48, 48), Image.Resampling.NEAREST).save(big)
    out_png = tmp_path / "eight.png"
    code, out, err = bdia_cli(
        "edit", big, "--source-prompt", "3", "--prompt", "8", "--steps", 10, "--strength", 0.8, "-o", out_png, "-q"
    )
    assert code == 0, err
    assert "resized from 48x48 to 16x16" in err and "converted" not in err  # gray stored as RGB is silent
    assert "strength 0.8" in out and "NFE 8" in out and _read(out_png)[2] == (16, 16)


@pytest.mark.parametrize("label", ["12", "cat"])
def test_wrong_class_labels_are_one_line_errors(bdia_cli, tmp_path, digit_png, label):
    for args in (
        ("invert", digit_png, "--prompt", label, "-o", tmp_path / "x.safetensors"),
        ("generate", "--prompt", label, "-o", tmp_path / "x.png"),
        ("edit", digit_png, "--prompt", label, "-o", tmp_path / "x.png"),
    ):
        code, out, err = bdia_cli(*args)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, err
        assert lines[0].startswith(f"bdia {args[0]}: error:") and "class label" in lines[0] and repr(label) in lines[0]
    assert not list(tmp_path.glob("x.*"))
    inv = tmp_path / "inv.safetensors"
    assert bdia_cli("invert", digit_png, "--prompt", "3", "--steps", 5, "-o", inv, "-q")[0] == 0
    code, out, err = bdia_cli("edit", inv, "--prompt", label, "-o", tmp_path / "x.png")
    assert code == 2 and "class label" in err and not (tmp_path / "x.png").exists()


def test_an_sd_inversion_is_refused_by_digits(bdia_cli, tmp_path, digit_png):
    """A file whose metadata says Stable Diffusion (crafted: no SD model needed) is not reconstructed."""
    inv = tmp_path / "inv.safetensors"
    assert bdia_cli("invert", digit_png, "--prompt", "3", "--steps", 5, "-o", inv, "-q")[0] == 0
    sd = load_inversion(inv)
    sd.model = {
        "id": "org/sd-model",
        "revision": None,
        "class": "StableDiffusionPipeline",
        "dtype": "float32",
        "fingerprint": {"unet_config": {"in_channels": 4}, "vae_config": {}, "unet_probe": {}},
    }
    sd_file = save_inversion(sd, tmp_path / "sd.safetensors")
    code, out, err = bdia_cli("reconstruct", sd_file, "--model", "digits", "-o", tmp_path / "x.png", "-q")
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("bdia reconstruct: error:")
    assert "'org/sd-model'" in last and "not the embedded digits model" in last
    assert not (tmp_path / "x.png").exists()


def test_a_digits_inversion_is_refused_by_stable_diffusion(bdia_cli, tmp_path, digit_png):
    pytest.importorskip("diffusers")
    from pipelines_fixtures import model_dir

    inv = tmp_path / "inv.safetensors"
    assert bdia_cli("invert", digit_png, "--prompt", "3", "--steps", 5, "-o", inv, "-q")[0] == 0
    code, out, err = bdia_cli("reconstruct", inv, "--model", model_dir("sd"), "-o", tmp_path / "x.png", "-q")
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("bdia reconstruct: error:")
    assert "'digits'" in last and "not a Stable Diffusion pipeline" in last
    assert not (tmp_path / "x.png").exists()


def test_digits_is_the_default_and_needs_no_diffusers(tmp_path):
    """The real entry point, in a fresh process: the digits path never imports diffusers or transformers."""
    code = (
        "import sys, json, bdia.cli\n"
        "rc = bdia.cli.main(['generate', '--prompt', '4', '--steps', '5', '-q', '-o', sys.argv[1]])\n"
        "print(json.dumps([rc, 'diffusers' in sys.modules, 'transformers' in sys.modules]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "four.png")], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [0, False, False]
    assert (tmp_path / "four.png").is_file()
    sub = next(a for a in bdia.cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("invert", "generate", "edit", "reconstruct"):
        help_text = " ".join(sub.choices[command].format_help().split())
        assert "'digits'" in help_text
        if command in ("invert", "generate"):
            assert "(default: digits)" in help_text
