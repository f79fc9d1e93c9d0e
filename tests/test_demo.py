"""``bdia demo`` end to end on a reduced setting (2 digits, few steps)."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("safetensors")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from bdia.cli import build_parser, main  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


SMALL = ["--num-images", "2", "--steps", "8", "--quiet", "--scene-steps", "0"]


def _demo(out, *extra):
    return main(["demo", "--out", str(out), *SMALL, *extra])


def test_demo_writes_figure_and_table(tmp_path, capsys):
    out = tmp_path / "demo"
    assert _demo(out) == 0
    printed = capsys.readouterr().out
    for name in ("DDIM inversion", "EDICT", "BDIA", "NFE", "max error"):
        assert name in printed
    assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads((out / "results.json").read_text())
    methods = {m["method"]: m for m in res["methods"]}
    assert set(methods) == {"ddim", "edict", "bdia"}
    assert len(res["source_classes"]) == 2 and res["source_classes"] != res["target_classes"]
    for name in ("edict", "bdia"):
        assert methods[name]["pixel_identical_fraction"] == 1.0
        assert methods[name]["round_trip_max_error"] < 1e-6
    # 8 steps: BDIA inverts with 8 evaluations and regenerates from its pair (z_0, z_1) with 7; EDICT 2 per step
    assert methods["bdia"]["nfe_round_trip"] == 15 and methods["bdia"]["nfe_edit"] == 7
    assert methods["edict"]["nfe_round_trip"] == 32 and methods["ddim"]["nfe_round_trip"] == 16
    assert sorted(p.name for p in out.iterdir()) == ["figure.png", "results.json"]  # no temporary files left


def test_demo_is_deterministic_for_a_seed(tmp_path):
    assert _demo(tmp_path / "a", "--seed", "3") == 0
    assert _demo(tmp_path / "b", "--seed", "3") == 0
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in "ab")
    for r in (a, b):
        for m in r["methods"]:
            for k in [k for k in m if k.startswith("seconds")]:
                del m[k]
    assert a == b


def test_demo_refuses_a_non_empty_folder(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert _demo(out) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    assert _demo(out, "--overwrite") == 0
    assert (out / "mine.txt").read_text() == "keep" and (out / "figure.png").exists()


def test_demo_rejects_bad_arguments(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "x"), "--num-images", "0", "--quiet"]) == 2
    assert "num-images" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_demo_checks_its_extras_before_any_work(tmp_path, capsys, monkeypatch):
    import importlib.util

    from bdia.solvers import Solver

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    monkeypatch.setattr(Solver, "invert", lambda *a, **k: pytest.fail("the demo ran before checking its extras"))
    assert _demo(tmp_path / "d") == 2
    err = capsys.readouterr().err
    assert "matplotlib" in err and 'pip install "bdia[demo]"' in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()


def test_demo_restores_the_thread_count(tmp_path):
    torch.set_num_threads(2)  # the demo runs on --threads (default 1), then puts the caller's count back
    assert _demo(tmp_path / "d", "--num-images", "1", "--steps", "3") == 0
    assert torch.get_num_threads() == 2


def test_demo_is_listed_in_help():
    assert "demo" in build_parser().format_help()


def test_demo_shows_scene_edits_with_and_without_controls(tmp_path, capsys):
    pytest.importorskip("diffusers")
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--num-images", "1", "--steps", "4", "--scene-steps", "6", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "P2P + LocalBlend" in printed and "true mask" in printed
    assert (out / "scenes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = {(r["method"], r["control"]): r for r in json.loads((out / "results.json").read_text())["scenes"]["rows"]}
    assert len(rows) == 6 and rows[("BDIA", "prompt swap")]["reconstruction_identical"] == 1.0
    # the true mask keeps BDIA's exact reconstruction (the source itself) outside the edit region
    assert rows[("BDIA", "true mask")]["psnr_outside_edit"] == [None] * 3  # null: identical (infinite PSNR)
    assert sorted(p.name for p in out.iterdir()) == ["figure.png", "results.json", "scenes.png"]
