"""The scenes editing workload: measures against the renderer's ground truth, a tiny run end to end."""

import math

import numpy as np
import torch

from bdia.bench import scene_editing
from bdia.bench.config import BenchConfig
from bdia.scenes import held_out_edit_pairs, load_classifier


def _u8(images):
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)


def test_measures_against_an_independent_computation():
    pairs = held_out_edit_pairs(6)
    judge = load_classifier()
    target, source = _u8([p.target_image for p in pairs]), _u8([p.source_image for p in pairs])
    # the ground-truth edit itself: infinite PSNR to target, the judge reads the target scene
    perfect = scene_editing.measure(target, pairs, source, judge)
    assert all(math.isinf(v) for v in perfect["psnr_gt"]) and perfect["mse_gt"] == [0.0] * 6
    assert perfect["success"] == [1.0] * 6
    assert all(abs(v - 1.0) < 1e-9 for v in perfect["ssim_gt"])
    # the source unchanged: outside the edit region it equals the source exactly
    kept = scene_editing.measure(source, pairs, source, judge)
    assert all(math.isinf(v) for v in kept["psnr_outside_source"]) and kept["success"] == [0.0] * 6
    # a shifted image: PSNR by hand, in numpy
    shifted = (source.int() + 10).clamp(0, 255).to(torch.uint8)
    got = scene_editing.measure(shifted, pairs, source, judge)
    for k, p in enumerate(pairs):
        a, b = shifted[k].numpy().astype(np.float64), p.target_image.transpose(2, 0, 1).astype(np.float64)
        assert np.isclose(got["psnr_gt"][k], 10 * np.log10(255**2 / np.mean((a - b) ** 2)))
        outside = ~p.region
        d = (a - p.source_image.transpose(2, 0, 1)) ** 2
        assert np.isclose(got["psnr_outside_source"][k], 10 * np.log10(255**2 / d[:, outside].mean()))


def test_blend_measures_by_hand():
    pairs = held_out_edit_pairs(6)
    full = [torch.ones(1, 1, 32, 32) for _ in pairs]  # no blending: the whole image may change
    got = scene_editing.blend_measures(full, pairs)
    assert got["blend_coverage"] == [1.0] * 6
    assert np.allclose(got["blend_iou"], [p.region.mean() for p in pairs])
    exact = [torch.from_numpy(p.region).float()[None, None] for p in pairs]
    assert scene_editing.blend_measures(exact, pairs)["blend_iou"] == [1.0] * 6


def test_scene_editing_workload_tiny(tmp_path):
    cfg = BenchConfig.quick(
        scene_editing_pairs=1,
        scene_editing_steps=(4,),
        scene_editing_methods=("ddim", "nulltext", "bdia-1"),
        scene_editing_controls=("swap", "p2p", "p2p-blend", "mask"),
    )
    res = scene_editing.run(cfg, log=lambda *a: None)
    methods, controls = ("ddim", "nulltext", "bdia-1"), ("swap", "p2p", "p2p-blend", "mask")
    assert set(res["runs"]) == {f"{m}/{c}/4" for m in methods for c in controls}
    null = res["runs"]["nulltext/p2p/4"]
    assert null["method_label"] == "null-text" and null["nfe_invert"] > res["runs"]["ddim/p2p/4"]["nfe_invert"]
    bdia, ddim = res["runs"]["bdia-1/swap/4"], res["runs"]["ddim/swap/4"]
    assert bdia["reconstruction_identical"] == 1.0 and ddim["reconstruction_identical"] < 1.0
    assert bdia["nfe_edit"] == 3 and len(bdia["psnr_gt"]) == 6  # N - 1 evaluations from BDIA's pair
    # the true mask keeps the exact method's reconstruction outside the edit region, to the last 8-bit level
    masked = res["runs"]["bdia-1/mask/4"]
    assert all(math.isinf(v) for v in masked["psnr_outside_reconstruction"])
    blend = res["runs"]["bdia-1/p2p-blend/4"]
    assert len(blend["blend_coverage"]) == 6 and all(0 <= v <= 1 for v in blend["blend_coverage"] + blend["blend_iou"])
    assert "blend_coverage" not in res["runs"]["bdia-1/swap/4"]
    md = scene_editing.section(res)
    assert "| BDIA gamma=1 | prompt swap | 4 |" in md and "Targets" in md
    assert "BDIA gamma=1 with LocalBlend: its last mask lets the edit change" in md
    assert "P2P: BDIA gamma=1" in md and "against null-text" in md
    files = scene_editing.plots(res, tmp_path, False)
    assert files == ["scene_editing_tradeoff.png", "scene_edits.png"]
    assert all((tmp_path / f).stat().st_size > 1000 for f in files)
