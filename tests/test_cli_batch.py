"""`bdia invert | reconstruct | edit` with folders: the CLI runs the many-inputs form (bdia.cli.datasets)."""

from __future__ import annotations

import json

import pytest
import torch

from bdia.digits import load_digits
from bdia.io.saved import load_inversion

pytestmark = pytest.mark.usefixtures("single_thread")

STEPS = 4


@pytest.fixture
def folder(tmp_path):
    """3 held-out digits as PNGs."""
    from PIL import Image

    test = load_digits("test")
    root = tmp_path / "in"
    root.mkdir()
    for k in range(3):
        Image.fromarray(test.images[k, 0].numpy()).save(root / f"d{k}.png")
    return root


def _manifest(out):
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_invert_a_folder_writes_one_inversion_each_and_a_rerun_does_no_work(bdia_cli, tmp_path, folder):
    out = tmp_path / "inv"
    code, stdout, err = bdia_cli("invert", folder, "-o", out, "--steps", STEPS, "--batch-size", 3, "-q")
    assert code == 0, err
    assert "3 written, 0 already done, 0 failed" in stdout
    files = sorted(out.glob("*.safetensors"))
    assert len(files) == 3
    records = _manifest(out)
    assert sorted(r["status"] for r in records) == ["done"] * 3
    assert {r["source"] for r in records} == {str(folder / f"d{k}.png") for k in range(3)}
    stamps = {f: f.stat().st_mtime_ns for f in files}

    # each file is its image's slice of the one-file command's batch inversion, bit for bit
    single = tmp_path / "single.safetensors"
    code, _, err = bdia_cli("invert", *[folder / f"d{k}.png" for k in range(3)], "-o", single, "--steps", STEPS, "-q")
    assert code == 0, err
    batch = load_inversion(single)
    for k in range(3):
        record = next(r for r in records if r["source"].endswith(f"d{k}.png"))
        one = load_inversion(out / record["output"])
        assert one.batch_size == 1
        assert all(torch.equal(a[k : k + 1], b) for a, b in zip(batch.latents, one.latents))

    code, stdout, err = bdia_cli("invert", folder, "-o", out, "--steps", STEPS, "-q")
    assert code == 0, err
    assert "0 written, 3 already done, 0 failed" in stdout
    assert {f: f.stat().st_mtime_ns for f in files} == stamps  # nothing rewritten

    rec = tmp_path / "rec"
    code, stdout, err = bdia_cli("reconstruct", out, "-o", rec, "-q")
    assert code == 0, err
    assert len(list(rec.glob("*.png"))) == 3
    code, stdout, err = bdia_cli("edit", out / "manifest.jsonl", "--prompt", "7", "-o", tmp_path / "sevens", "-q")
    assert code == 0, err
    assert len(list((tmp_path / "sevens").glob("*.png"))) == 3


def test_many_inputs_errors_are_one_line(bdia_cli, tmp_path, folder):
    code, _, err = bdia_cli("invert", folder, "-o", tmp_path / "x.safetensors", "-q")
    assert code == 2 and "-o is a folder" in err and len(err.strip().splitlines()) == 1
    code, _, err = bdia_cli("reconstruct", folder / "d0.png", "-o", tmp_path / "r", "-q")
    assert code == 2 and "invert images first" in err


def test_help_names_folders_lists_and_manifests(bdia_cli):
    code, out, _ = bdia_cli("invert", "--help")
    assert code == 0 and "folders and lists" in out and "--batch-size" in out
    code, out, _ = bdia_cli("reconstruct", "--help")
    assert code == 0 and "manifest.jsonl" in out and "--batch-size" in out
