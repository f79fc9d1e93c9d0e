"""Small things a newcomer meets: errors name flags, generated names sort, --upscale writes images one can
look at, and the Python API picks one CPU thread for the tiny embedded models."""

from pathlib import Path

import numpy as np
import pytest
import torch

from bdia.cli.common import output_paths

THREE = Path(__file__).resolve().parents[1] / "examples" / "images" / "three.png"


def test_errors_name_the_flag_not_the_python_keyword(bdia_cli, tmp_path):
    out = tmp_path / "x.png"
    out.write_bytes(b"keep")
    code, _, err = bdia_cli("generate", "--prompt", "7", "-o", out)
    assert code == 2 and "--overwrite" in err and "overwrite=True" not in err
    assert out.read_bytes() == b"keep"


def test_generated_names_are_zero_padded_and_sort_in_order(tmp_path):
    names = [p.name for p in output_paths(str(tmp_path / "five.png"), 12, overwrite=False)]
    assert names[0] == "five_00.png" and names[-1] == "five_11.png" and sorted(names) == names
    assert [p.name for p in output_paths(str(tmp_path / "a.png"), 3, overwrite=False)] == [
        "a_0.png",
        "a_1.png",
        "a_2.png",
    ]


def test_upscale_writes_nearest_neighbour_blocks(bdia_cli, tmp_path):
    from PIL import Image

    args = ("generate", "--prompt", "7", "--steps", 4, "--seed", 3, "-q")
    assert bdia_cli(*args, "-o", tmp_path / "small.png")[0] == 0
    assert bdia_cli(*args, "--upscale", 4, "-o", tmp_path / "big.png")[0] == 0
    small = np.asarray(Image.open(tmp_path / "small.png"))
    big = np.asarray(Image.open(tmp_path / "big.png"))
    assert small.shape == (16, 16) and big.shape == (64, 64)
    assert np.array_equal(big, np.repeat(np.repeat(small, 4, axis=0), 4, axis=1))
    assert bdia_cli(*args, "--upscale", 0, "-o", tmp_path / "zero.png")[0] == 2


def test_upscaled_reconstruction_reports_the_model_size_errors(bdia_cli, tmp_path):
    from PIL import Image

    inv = tmp_path / "three.safetensors"
    assert bdia_cli("invert", THREE, "--prompt", 3, "--steps", 4, "-o", inv, "-q")[0] == 0
    code, out, err = bdia_cli("reconstruct", inv, "--image", THREE, "--upscale", 8, "-o", tmp_path / "r.png", "-q")
    assert code == 0, err
    assert Image.open(tmp_path / "r.png").size == (128, 128)
    assert "100.0% of pixels identical" in out and "warning" not in err
    code, _, err = bdia_cli("reconstruct", tmp_path, "--upscale", 2, "-o", tmp_path / "many", "-q")
    assert code == 2 and "--upscale applies to single outputs" in err


def test_the_python_api_runs_the_embedded_models_on_one_thread(monkeypatch):
    from bdia.editing import Editor, editor

    seen = []
    real = editor._Progress.__call__

    def record(self, index, sigma, state):
        seen.append(torch.get_num_threads())
        return real(self, index, sigma, state)

    monkeypatch.setattr(editor._Progress, "__call__", record)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ed = Editor.from_pretrained("digits", device="cpu", progress=False)
        assert ed.threads == 1
        ed.invert(str(THREE), "3", num_steps=3)
        assert set(seen) == {1} and torch.get_num_threads() == 2  # restored after the loop
        seen.clear()
        mine = Editor.from_pretrained("digits", device="cpu", progress=False, threads=None)
        mine.invert(str(THREE), "3", num_steps=3)
        assert set(seen) == {2}
        with pytest.raises(ValueError, match="threads"):
            Editor(ed.backend, threads=0)
    finally:
        torch.set_num_threads(before)
