"""``bdia invert | reconstruct | edit | generate`` against tiny saved pipelines, run in-process."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("diffusers")

import bdia.cli  # noqa: E402
from bdia.io.saved import load_inversion  # noqa: E402
from pipelines_fixtures import make_image, model_dir  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "cat.png"
    make_image((32, 32)).save(path)
    return path


def _number(pattern: str, text: str) -> float:
    m = re.search(pattern, text)
    assert m, f"{pattern!r} not in {text!r}"
    return float(m.group(1))


@pytest.mark.parametrize("method", ["bdia", "edict"])
def test_invert_reconstruct_edit(bdia_cli, tmp_path, image_file, method):
    sd = model_dir("sd")
    inv = tmp_path / "cat.safetensors"
    code, out, err = bdia_cli(
        "invert",
        image_file,
        "--model",
        sd,
        "--prompt",
        "a cat",
        "--steps",
        5,
        "--guidance",
        2,
        "--method",
        method,
        "-o",
        inv,
        "--check",
        "-q",
    )
    assert code == 0, err
    assert _number(r"max latent error ([0-9.e+-]+)", out) < 1e-9
    assert "pixel MAE" in out and "VAE's own round trip" in out and "NFE" in out
    assert inv.is_file() and load_inversion(inv).solver["name"] == method

    rec = tmp_path / "rec.png"
    code, out, err = bdia_cli("reconstruct", inv, "-o", rec, "--image", image_file, "-q")
    assert code == 0, err
    assert _number(r"max latent error ([0-9.e+-]+)", out) < 1e-9
    assert _number(r"difference from it ([0-9.e+-]+)", out) < 1e-4
    assert rec.is_file()

    code, out, err = bdia_cli("edit", inv, "--prompt", "a dog", "--guidance", 4, "-o", tmp_path / "dog.png", "-q")
    assert code == 0, err
    assert "'a cat' -> 'a dog'" in out and (tmp_path / "dog.png").is_file()


def test_ddim_round_trip_is_reported_inexact(bdia_cli, tmp_path, image_file):
    code, out, err = bdia_cli(
        "invert",
        image_file,
        "--model",
        model_dir("sd"),
        "--prompt",
        "a cat",
        "--steps",
        5,
        "--guidance",
        3,
        "--method",
        "ddim",
        "-o",
        tmp_path / "inv.safetensors",
        "--check",
        "-q",
    )
    assert code == 0, err
    assert _number(r"max latent error ([0-9.e+-]+)", out) > 1e-3


def test_outputs_are_never_overwritten_unless_asked(bdia_cli, tmp_path, image_file):
    sd = model_dir("sd")
    inv = tmp_path / "inv.safetensors"
    args = ("invert", image_file, "--model", sd, "--steps", 5, "-o", inv, "-q")
    assert bdia_cli(*args)[0] == 0
    before = inv.read_bytes()
    code, out, err = bdia_cli(*args)
    assert code == 2 and "already exists" in err and "--overwrite" in err
    assert inv.read_bytes() == before
    assert bdia_cli(*args, "--overwrite")[0] == 0
    png = tmp_path / "rec.png"
    png.write_bytes(b"keep")
    code, out, err = bdia_cli("reconstruct", inv, "-o", png, "-q")
    assert code == 2 and "already exists" in err and png.read_bytes() == b"keep"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left behind


def test_mismatched_model_is_refused(bdia_cli, tmp_path, image_file):
    inv = tmp_path / "inv.safetensors"
    assert bdia_cli("invert", image_file, "--model", model_dir("sd"), "--steps", 5, "-o", inv, "-q")[0] == 0
    code, out, err = bdia_cli("reconstruct", inv, "--model", model_dir("sdxl"), "-o", tmp_path / "x.png", "-q")
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("bdia reconstruct: error:") and "architecture" in last
    assert not (tmp_path / "x.png").exists()


def test_edit_straight_from_an_image_with_strength(bdia_cli, tmp_path, image_file):
    out_png = tmp_path / "dog.png"
    code, out, err = bdia_cli(
        "edit",
        image_file,
        "--model",
        model_dir("sdxl"),
        "--source-prompt",
        "a cat",
        "--prompt",
        "a dog",
        "--steps",
        5,
        "--strength",
        0.8,
        "--gamma",
        0.96,
        "-o",
        out_png,
        "-q",
    )
    assert code == 0, err
    assert "strength 0.8" in out and "NFE 4" in out and out_png.is_file()


def test_generate_writes_numbered_images(bdia_cli, tmp_path):
    code, out, err = bdia_cli(
        "generate",
        "--model",
        model_dir("sd-v"),
        "--prompt",
        "a dog",
        "--steps",
        4,
        "--height",
        32,
        "--width",
        32,
        "--num-images",
        2,
        "--seed",
        3,
        "-o",
        tmp_path / "gen.png",
        "-q",
    )
    assert code == 0, err
    assert "generated 2 image(s) 32x32 with bdia(gamma=0.5)" in out and "NFE 4" in out
    assert (tmp_path / "gen_0.png").is_file() and (tmp_path / "gen_1.png").is_file()


def test_user_errors_are_one_line(bdia_cli, tmp_path, image_file):
    code, out, err = bdia_cli(
        "invert", image_file, "--model", tmp_path / "no-such-model", "-o", tmp_path / "inv.safetensors"
    )
    assert code == 2 and "no model folder" in err
    code, out, err = bdia_cli(
        "invert", tmp_path / "missing.png", "--model", model_dir("sd"), "-o", tmp_path / "inv.safetensors"
    )
    assert code == 2 and "no image file" in err
    code, out, err = bdia_cli("invert", image_file, "--model", model_dir("sd"), "-o", tmp_path / "inv.pt")
    assert code == 2 and ".safetensors" in err
    code, out, err = bdia_cli("reconstruct", tmp_path / "none.safetensors", "-o", tmp_path / "x.png")
    assert code == 2 and "no inversion file" in err
    code, out, err = bdia_cli("edit", image_file, "--prompt", "a dog", "-o", tmp_path / "x.png")
    assert code == 2 and "--model" in err


def test_help_lists_the_commands(bdia_cli):
    parser = bdia.cli.build_parser()
    text = parser.format_help()
    for name in ("invert", "reconstruct", "edit", "generate"):
        assert name in text


@pytest.mark.parametrize(
    "extra,needle",
    [
        (("generate", "--prompt", "a dog", "--width", "35"), "multiples of the VAE factor"),
        (("generate", "--prompt", "a dog", "--method", "edict", "--gamma", "0.5"), "--gamma applies"),
        (("invert", "{bad}", "--prompt", "a cat"), "not an image file"),  # a PNG signature and nothing else
    ],
)
def test_bad_inputs_on_stable_diffusion_are_one_line(bdia_cli, tmp_path, extra, needle, monkeypatch, capsys):
    from bdia.solvers import Solver

    model = model_dir("sd")
    capsys.readouterr()  # building the tiny model prints; the command must print one line

    monkeypatch.setattr(Solver, "solve", lambda *a, **k: pytest.fail("the model ran for a bad input"))
    monkeypatch.setattr(Solver, "invert", lambda *a, **k: pytest.fail("the model ran for a bad input"))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / ("x.safetensors" if extra[0] == "invert" else "x.png")
    args = [a.format(bad=bad) for a in extra]
    code, _, err = bdia_cli(*args, "--model", model, "-o", out, "-q")
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert not out.exists()
