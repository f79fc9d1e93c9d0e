"""Every command checks its optional packages first: one line naming the extra to install, exit code 2,
no traceback and no output. A missing package is faked by ``sys.modules[name] = None`` (import fails)."""

import sys
from pathlib import Path

import pytest

from bdia.cli import main


def _run(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("missing", ["safetensors", "PIL"])
def test_digits_commands_name_the_demo_extra(missing, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, missing, None)
    out = tmp_path / "x.png"
    code, err = _run(["generate", "--prompt", "3", "-o", str(out), "-q"], capsys)
    assert code == 2 and not out.exists()
    assert len(err.strip().splitlines()) == 1 and 'pip install "bdia[demo]"' in err
    assert ("Pillow" if missing == "PIL" else missing) in err and "Traceback" not in err


def test_every_image_command_checks_before_reading_its_inputs(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "safetensors", None)
    for argv in (
        ["invert", "no-such.png", "--prompt", "3", "-o", str(tmp_path / "a.safetensors")],
        ["invert", str(tmp_path), "-o", str(tmp_path / "many")],
        ["reconstruct", "no-such.safetensors", "-o", str(tmp_path / "b.png")],
        ["edit", "no-such.safetensors", "--prompt", "8", "-o", str(tmp_path / "c.png")],
    ):
        code, err = _run(argv, capsys)
        assert code == 2 and "safetensors" in err and "bdia[demo]" in err, (argv, err)


def test_pipelines_and_the_scenes_model_name_the_diffusers_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    image = str(Path(__file__).resolve().parents[1] / "examples" / "images" / "scene.png")
    for model in ("scenes", str(tmp_path)):
        code, err = _run(["invert", image, "--model", model, "-o", str(tmp_path / "s.safetensors")], capsys)
        assert code == 2 and "diffusers" in err and 'pip install "bdia[diffusers]"' in err, err


def test_a_saved_inversion_is_checked_for_its_own_model(tmp_path, monkeypatch, capsys):
    """reconstruct/edit learn the model from the file: a scenes inversion without diffusers is refused in one line."""

    scene = Path(__file__).resolve().parents[1] / "examples" / "images" / "scene.png"
    inv = tmp_path / "scene.safetensors"
    caption = "a small purple triangle and a small orange circle on a navy background"
    argv = ["invert", str(scene), "--model", "scenes", "--prompt", caption, "--steps", "2", "-o", str(inv), "-q"]
    assert main(argv) == 0
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "diffusers", None)
    code, err = _run(["reconstruct", str(inv), "-o", str(tmp_path / "r.png")], capsys)
    assert code == 2 and "bdia[diffusers]" in err and not (tmp_path / "r.png").exists()
    code, err = _run(["edit", str(inv), "--prompt", caption, "-o", str(tmp_path / "e.png")], capsys)
    assert code == 2 and "bdia[diffusers]" in err


def test_bench_names_its_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, err = _run(["bench", "--quick", "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and "bdia[bench]" in err and len(err.strip().splitlines()) == 1
