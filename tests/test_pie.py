"""``bdia eval pie``: PIE-Bench's format (RLE masks, [bracketed] prompts), its metrics against independent
computations, the metric networks' plumbing on randomly initialised networks, and the command end to end on a
PIE-format folder made from held-out scenes."""

from __future__ import annotations

import csv
import json
import math
import string

import numpy as np
import pytest
import torch

pytest.importorskip("torchmetrics")

from bdia.evaluation import pie  # noqa: E402
from bdia.evaluation.metrics import METRICS, Lpips, PieMetrics, squeezenet1_1_features, summarise  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    from bdia.runtime import torch_threads

    with torch_threads(1):
        yield


def run_cli(*args):
    import bdia.cli

    try:
        return bdia.cli.main([str(a) for a in args])
    except SystemExit as e:
        return e.code


# ----- the format -------------------------------------------------------------------------------------------
def test_mask_decode_follows_pie_convention_on_a_hand_made_example():
    # 4 x 5 image, flat row-major: run 6..8 (row 1, cols 1..3) and run from 17 of length 10, clipped at 20.
    got = pie.mask_decode([6, 3, 17, 10], (4, 5), border=False)
    expected = np.array(
        [
            [0, 0, 0, 0, 0],
            [0, 1, 1, 1, 0],
            [0, 0, 0, 0, 0],
            [0, 0, 1, 1, 1],
        ],
        dtype=np.uint8,
    )
    np.testing.assert_array_equal(got, expected)
    with_border = pie.mask_decode([6, 3, 17, 10], (4, 5))
    expected_border = expected.copy()
    expected_border[0, :] = expected_border[-1, :] = expected_border[:, 0] = expected_border[:, -1] = 1
    np.testing.assert_array_equal(with_border, expected_border)
    assert pie.mask_encode(expected) == [6, 3, 17, 3]
    with pytest.raises(ValueError, match="pairs"):
        pie.mask_decode([1, 2, 3], (4, 5))
    with pytest.raises(ValueError, match="non-negative"):
        pie.mask_decode([-1, 2], (4, 5))


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (32, 32), (17, 5)])
def test_rle_round_trip(shape):
    rng = np.random.default_rng(sum(shape))
    for density in (0.0, 0.1, 0.5, 1.0):
        mask = (rng.random(shape) < density).astype(np.uint8)
        encoded = pie.mask_encode(mask)
        assert all(isinstance(v, int) for v in encoded) and len(encoded) % 2 == 0
        np.testing.assert_array_equal(pie.mask_decode(encoded, shape, border=False), mask)


def test_brackets_mark_the_words_that_differ():
    assert pie.bracket_difference(
        "a large red circle on a gray background", "a large blue circle on a gray background"
    ) == (
        "a large [red] circle on a gray background",
        "a large [blue] circle on a gray background",
    )
    src, tgt = pie.bracket_difference(
        "a red circle on a gray background", "a red circle and a blue square on a gray background"
    )
    assert src == "a red circle on a gray background"
    assert tgt == "a red circle [and a blue square] on a gray background"
    assert pie.strip_brackets(tgt) == "a red circle and a blue square on a gray background"


def test_scenes_folder_is_in_pie_format(tmp_path):
    from PIL import Image

    from bdia.scenes import held_out_edit_pairs

    n = 7
    folder = pie.make_scenes_pie(tmp_path / "data", n)
    mapping = json.loads((folder / pie.MAPPING).read_text())
    pairs = held_out_edit_pairs(n)
    assert len(mapping) == n
    fields = {
        "image_path",
        "original_prompt",
        "editing_prompt",
        "editing_instruction",
        "editing_type_id",
        "blended_word",
        "mask",
    }
    for (key, entry), pair in zip(mapping.items(), pairs):
        assert set(entry) == fields
        assert len(key) == 12 and key.isdigit() and key[0] == entry["editing_type_id"] == pie.SCENE_TYPES[pair.kind]
        folder_name = entry["image_path"].split("/")[0]
        type_id, rest = folder_name.split("_", 1)
        assert type_id == entry["editing_type_id"] and rest.startswith(pie.EDIT_TYPES[type_id])
        image = np.asarray(Image.open(folder / pie.IMAGES / entry["image_path"]))
        np.testing.assert_array_equal(image, pair.source_image)
        assert pie.strip_brackets(entry["original_prompt"]) == pair.source_caption
        assert pie.strip_brackets(entry["editing_prompt"]) == pair.target_caption
        assert "[" in entry["original_prompt"] + entry["editing_prompt"]
        src_word, tgt_word = entry["blended_word"].split()
        assert src_word in pair.source_caption.split() and tgt_word in pair.target_caption.split()
        decoded = pie.mask_decode(entry["mask"], image.shape[:2], border=False).astype(bool)
        np.testing.assert_array_equal(decoded, pair.region | pair.mask)
        assert decoded[pair.mask].all()  # every changed pixel is in the edit region
    items = pie.read_pie(folder)
    assert [i.key for i in items] == sorted(mapping)
    assert len(pie.read_pie(folder, types=["6"])) == sum(p.kind == "colour" for p in pairs)
    with pytest.raises(FileExistsError, match="not empty"):
        pie.make_scenes_pie(folder, 2)


def test_bad_mapping_entries_are_refused(tmp_path):
    folder = pie.make_scenes_pie(tmp_path / "data", 1)
    path = folder / pie.MAPPING
    good = json.loads(path.read_text())
    key = next(iter(good))
    for change, message in (
        ({"mask": [1, 2, 3]}, "RLE"),
        ({"image_path": "../x.png"}, "relative path inside"),
        ({"blended_word": "one two three"}, "two words"),
        ({"editing_prompt": 5}, "must be a string"),
    ):
        path.write_text(json.dumps({key: {**good[key], **change}}))
        with pytest.raises(ValueError, match=message):
            pie.read_pie(folder)
    path.write_text(json.dumps({key: {**good[key], "image_path": "missing/x.png"}}))
    with pytest.raises(FileNotFoundError, match="no image"):
        pie.read_pie(folder)


# ----- pixel metrics against an independent computation -----------------------------------------------------
def _gaussian_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM (Wang et al. 2004) of (H, W, C) float64 images in [0, 1]: Gaussian 11x11 window, sigma 1.5, the map at
    every pixel (the image mirrored by 5 pixels at its edges, torchmetrics' rule), averaged with the channels."""
    from numpy.lib.stride_tricks import sliding_window_view

    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    g /= g.sum()
    w = np.outer(g, g)

    def filt(x):
        return np.einsum("hwij,ij->hw", sliding_window_view(np.pad(x, 5, mode="reflect"), (11, 11)), w)

    c1, c2 = 0.01**2, 0.03**2
    maps = []
    for c in range(a.shape[2]):
        x, y = a[..., c], b[..., c]
        mx, my = filt(x), filt(y)
        sxx, syy, sxy = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
        maps.append(((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2)))
    return float(np.mean(maps))


def test_pixel_metrics_match_numpy_with_pies_mask_rule():
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    edited = np.clip(source.astype(int) + rng.integers(-40, 41, source.shape), 0, 255).astype(np.uint8)
    mask = pie.mask_decode(pie.mask_encode(rng.random((32, 32)) < 0.3), (32, 32))
    got = PieMetrics().compute(source, edited, mask, "a", "b")
    keep = (1 - mask.astype(np.float64))[..., None]
    a = source.astype(np.float32).astype(np.float64) / 255 * keep
    b = edited.astype(np.float32).astype(np.float64) / 255 * keep
    mse = np.mean((a - b) ** 2)
    assert got["mse_unedit_part"] == pytest.approx(mse, rel=1e-5)
    assert got["psnr_unedit_part"] == pytest.approx(10 * np.log10(1 / mse), rel=1e-5)
    assert got["ssim_unedit_part"] == pytest.approx(_gaussian_ssim(a, b), abs=2e-5)
    for m in ("structure_distance", "lpips_unedit_part", "clip_similarity_source_image"):
        assert math.isnan(got[m])  # no network given: skipped
    # Everything edited: no unedited pixel, so PIE's rule gives NaN.
    full = PieMetrics().compute(source, edited, np.ones((32, 32), np.uint8), "a", "b")
    assert all(math.isnan(full[m]) for m in ("psnr_unedit_part", "mse_unedit_part", "ssim_unedit_part"))
    # Identical unedited parts: PSNR is infinite, MSE 0, SSIM 1.
    same = PieMetrics().compute(source, source, mask, "a", "b")
    assert (
        same["psnr_unedit_part"] == math.inf
        and same["mse_unedit_part"] == 0
        and same["ssim_unedit_part"] == pytest.approx(1)
    )


def test_summary_skips_nan_and_counts_infinities():
    rows = [{"m": 1.0}, {"m": math.nan}, {"m": 3.0}, {"m": math.inf}]
    s = summarise(rows, ("m",))["m"]
    assert s["mean"] == math.inf and s["count"] == 3 and s["nan"] == 1
    assert s["finite_mean"] == 2.0 and s["infinite"] == 1


# ----- network metrics on random networks of the right architectures --------------------------------------
@pytest.fixture(scope="module")
def networks(tmp_path_factory):
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
        ViTConfig,
        ViTModel,
    )

    root = tmp_path_factory.mktemp("nets")
    torch.manual_seed(0)
    vit = ViTModel(
        ViTConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            image_size=224,
            patch_size=8,
        ),
        add_pooling_layer=False,
    )
    vit.save_pretrained(root / "dino")
    letters = list(string.ascii_lowercase)
    tokens = letters + [c + "</w>" for c in letters] + ["<|startoftext|>", "<|endoftext|>"]
    tokenizer = CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=77)
    small = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    text = dict(
        small,
        vocab_size=len(tokens),
        bos_token_id=len(tokens) - 2,
        eos_token_id=len(tokens) - 1,
        max_position_embeddings=77,
    )
    clip = CLIPModel(
        CLIPConfig(text_config=text, vision_config=dict(small, image_size=32, patch_size=8), projection_dim=16)
    )
    clip.save_pretrained(root / "clip")
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(root / "clip")
    backbone = torch.nn.Module()
    backbone.features = squeezenet1_1_features()
    backbone.classifier = torch.nn.Sequential(torch.nn.Dropout(), torch.nn.Conv2d(512, 1000, 1))
    torch.save(backbone.state_dict(), root / "squeezenet1_1.pth")
    return {"dino": root / "dino", "clip": root / "clip", "lpips": root / "squeezenet1_1.pth"}


def test_squeezenet_layout_is_torchvisions():
    # Names and shapes of torchvision's squeezenet1_1 checkpoint (features part), which --lpips loads.
    sd = squeezenet1_1_features().state_dict()
    assert len(sd) == 50  # conv1 and 8 fire modules (the classifier, 2 more, is not used)
    expected = {
        "0.weight": (64, 3, 3, 3),
        "3.squeeze.weight": (16, 64, 1, 1),
        "3.expand3x3.weight": (64, 16, 3, 3),
        "7.expand1x1.weight": (128, 32, 1, 1),
        "10.squeeze.weight": (48, 384, 1, 1),
        "12.expand3x3.weight": (256, 64, 3, 3),
        "12.expand3x3.bias": (256,),
    }
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape


def test_lpips_matches_torchmetrics_when_torchvision_is_there(networks):
    tv = pytest.importorskip("torchvision")  # torchmetrics builds its SqueezeNet through torchvision
    from torchmetrics.functional.image.lpips import _LPIPS

    reference = _LPIPS(pretrained=True, net="squeeze", pnet_rand=True)
    model = tv.models.squeezenet1_1(weights=None)
    model.load_state_dict(torch.load(networks["lpips"]))
    for s in reference.net.slices:
        for name, layer in s.named_children():
            layer.load_state_dict(model.features[int(name)].state_dict())
    ours = Lpips(networks["lpips"])
    a, b = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(ours(a, b), reference(a, b).reshape(-1))


def test_lpips_matches_torchmetrics_lpips_module(networks, monkeypatch):
    """Our LPIPS against torchmetrics' own module (scaling, unit normalisation, learned layers, averaging), both
    on the same random SqueezeNet: torchmetrics gets the backbone layout from here instead of torchvision."""
    import torchmetrics.functional.image.lpips as tm_lpips

    monkeypatch.setattr(tm_lpips, "_get_tv_model_features", lambda net, pretrained=False: squeezenet1_1_features())
    reference = tm_lpips._LPIPS(pretrained=True, net="squeeze", pnet_rand=True)
    features = {k.removeprefix("features."): v for k, v in torch.load(networks["lpips"]).items() if "features." in k}
    for s in reference.net.slices:
        for name, layer in s.named_children():
            layer.load_state_dict({k.split(".", 1)[1]: v for k, v in features.items() if k.split(".")[0] == name})
    ours = Lpips(networks["lpips"])
    torch.manual_seed(3)
    a, b = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    expected = reference(a, b).reshape(-1)
    assert bool((expected > 0).all())
    torch.testing.assert_close(ours(a, b), expected)


def test_network_metrics_plumbing(networks):
    from transformers import CLIPModel, CLIPProcessor, ViTModel

    rng = np.random.default_rng(1)
    source = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    edited = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    mask = pie.mask_decode([300, 40], (32, 32))
    metrics = PieMetrics(**networks)
    assert metrics.skipped == {}
    got = metrics.compute(source, edited, mask, "a red circle", "a blue circle")
    assert all(math.isfinite(got[m]) for m in METRICS)

    # structure distance: 0 for the same image; else the MSE of the last block's key self-similarities, here
    # recomputed from the hidden states (the last block's input, its layer norm and key projection).
    assert metrics.dino.distance(source, source) == 0
    vit = ViTModel.from_pretrained(networks["dino"], add_pooling_layer=False).eval()
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]

    def sim(img):
        x = torch.from_numpy(img.astype(np.float32).transpose(2, 0, 1))[None]
        x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
        with torch.no_grad():
            hidden = vit(pixel_values=(x - mean) / std, output_hidden_states=True).hidden_states[-2]
            last = vit.layers[-1] if hasattr(vit, "layers") else vit.encoder.layer[-1]
            attn = last.attention
            proj = attn.k_proj if hasattr(attn, "k_proj") else attn.attention.key
            k = proj(last.layernorm_before(hidden))[0]
        k = k / k.norm(dim=1, keepdim=True)
        return k @ k.T

    expected = float(((sim(source) - sim(edited)) ** 2).mean())
    assert got["structure_distance"] == pytest.approx(expected, rel=1e-4)

    # CLIP similarity: max(100 cos, 0) of the model's image and text embeddings.
    clip = CLIPModel.from_pretrained(networks["clip"]).eval()
    processor = CLIPProcessor.from_pretrained(networks["clip"])

    def score(img, text):
        with torch.no_grad():
            inputs = processor(text=[text], images=[img], return_tensors="pt", padding=True)
            i = clip.get_image_features(pixel_values=inputs["pixel_values"])
            t = clip.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            i = getattr(i, "pooler_output", i)
            t = getattr(t, "pooler_output", t)
        return max(100 * float(torch.nn.functional.cosine_similarity(i, t)[0]), 0.0)

    assert got["clip_similarity_source_image"] == pytest.approx(score(source, "a red circle"), abs=1e-3)
    assert got["clip_similarity_target_image"] == pytest.approx(score(edited, "a blue circle"), abs=1e-3)
    part = (edited * mask[..., None]).astype(np.uint8)
    assert got["clip_similarity_target_image_edit_part"] == pytest.approx(score(part, "a blue circle"), abs=1e-3)

    # LPIPS: 0 for the same image, positive for another.
    same = metrics.compute(source, source, mask, "a", "b")
    assert same["lpips_unedit_part"] == 0 and got["lpips_unedit_part"] > 0


def test_a_bad_lpips_checkpoint_is_refused(tmp_path):
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "x.pth")
    with pytest.raises(ValueError, match="squeezenet1_1"):
        Lpips(tmp_path / "x.pth")
    with pytest.raises(FileNotFoundError, match="--dino"):
        PieMetrics(dino=tmp_path / "missing")


# ----- the command end to end ---------------------------------------------------------------------------------
def test_eval_pie_end_to_end(tmp_path, networks, capsys):
    from PIL import Image

    from bdia.editing import load_editor

    data, out = tmp_path / "data", tmp_path / "out"
    assert run_cli("eval", "pie", "--make-scenes", 6, data) == 0
    flags = ["--dino", networks["dino"], "--clip", networks["clip"], "--lpips", networks["lpips"]]
    code = run_cli(
        "eval",
        "pie",
        data,
        "--model",
        "scenes",
        "--method",
        "bdia",
        "--steps",
        3,
        "-o",
        out,
        "-q",
        "--device",
        "cpu",
        *flags,
    )
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "6/6 edited" in printed.out
    mapping = json.loads((data / pie.MAPPING).read_text())
    for entry in mapping.values():
        assert (out / pie.IMAGES / entry["image_path"]).is_file()
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["key"] for r in rows] == sorted(mapping)
    assert all(r["status"] == "done" for r in rows)
    report = json.loads((out / "results.json").read_text())
    assert report["images"] == 6 and report["failed"] == 0 and report["skipped"] == {}
    assert report["settings"]["method"] == "bdia" and report["settings"]["steps"] == 3
    assert report["versions"]["torchmetrics"] and report["rules"]["mask"]
    for m in METRICS:
        values = [float(r[m]) for r in rows]
        assert all(math.isfinite(v) for v in values), m
        assert report["summary"][m]["mean"] == pytest.approx(sum(values) / len(values))
        assert report["summary"][m]["count"] == 6
    assert set(report["by_type"]) == {e["editing_type_id"] for e in mapping.values()}

    # The edit written is the Editor's: invert under the original prompt, edit under the editing prompt.
    editor = load_editor("scenes", device="cpu", progress=False)
    key = sorted(mapping)[0]
    entry = mapping[key]
    inv = editor.invert(
        str(data / pie.IMAGES / entry["image_path"]),
        pie.strip_brackets(entry["original_prompt"]),
        guidance_scale=3.0,
        num_steps=3,
        method="bdia",
        gamma=1.0,
    )
    expected = np.asarray(editor.edit(inv, pie.strip_brackets(entry["editing_prompt"]), guidance_scale=3.0).images[0])
    np.testing.assert_array_equal(np.asarray(Image.open(out / pie.IMAGES / entry["image_path"])), expected)

    # A non-empty output folder is refused without --overwrite; the output may not lie in the data folder.
    assert run_cli("eval", "pie", data, "--steps", 3, "-o", out, "-q") == 2
    assert "not empty" in capsys.readouterr().err
    assert run_cli("eval", "pie", data, "--steps", 3, "-o", data / "inside", "-q") == 2
    assert "input folder" in capsys.readouterr().err
    # Other methods, one image each, pixel metrics only.
    others = (["--method", "ddim"], ["--method", "bdia", "--gamma", "belm"], ["--method", "edict"], ["--method", "rex"])
    for method in (*others, ["--method", "nulltext"], ["--method", "nulltext", "--control", "p2p", "--blend"]):
        target = tmp_path / f"out-{'-'.join(method)}"
        code = run_cli("eval", "pie", data, "--steps", 3, "--limit", 1, "-o", target, "-q", "--device", "cpu", *method)
        assert code == 0, capsys.readouterr().err
        r = json.loads((target / "results.json").read_text())
        assert r["images"] == 1 and r["failed"] == 0 and "structure_distance" in r["skipped"]
        assert math.isfinite(r["summary"]["psnr_unedit_part"]["mean"])
    assert run_cli("eval", "pie", data, "--method", "ddim", "--gamma", "0.5", "-o", tmp_path / "x") == 2
    assert "--gamma applies" in capsys.readouterr().err
    # Two entries naming one image would write one output file twice: refused before any work.
    doubled = {**mapping, "999999999999": mapping[key]}
    (data / pie.MAPPING).write_text(json.dumps(doubled))
    assert run_cli("eval", "pie", data, "--steps", 3, "-o", tmp_path / "y", "-q", "--device", "cpu") == 2
    assert "share the image_path" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


def test_an_unchanged_prompt_gives_back_the_source_with_an_exact_method(tmp_path):
    """Editing under the original prompt is a reconstruction: BDIA returns the source's 8-bit pixels, so the
    unedited part has infinite PSNR (kept in the mean, left out of finite_mean); DDIM inversion does not."""
    from PIL import Image

    from bdia.editing import load_editor

    data = pie.make_scenes_pie(tmp_path / "data", 1)
    mapping = json.loads((data / pie.MAPPING).read_text())
    entry = next(iter(mapping.values()))
    entry["editing_prompt"] = entry["original_prompt"]
    (data / pie.MAPPING).write_text(json.dumps(mapping))
    editor = load_editor("scenes", device="cpu", progress=False)
    report = pie.run_pie(editor, data, tmp_path / "bdia", pie.PieSettings(method="bdia", steps=4), log=lambda s: None)
    written = np.asarray(Image.open(tmp_path / "bdia" / pie.IMAGES / entry["image_path"]))
    np.testing.assert_array_equal(written, np.asarray(Image.open(data / pie.IMAGES / entry["image_path"])))
    s = report["summary"]["psnr_unedit_part"]
    assert s["mean"] == math.inf and s["infinite"] == 1 and math.isnan(s["finite_mean"])
    assert report["summary"]["mse_unedit_part"]["mean"] == 0
    saved = json.loads((tmp_path / "bdia" / "results.json").read_text())
    assert (
        saved["summary"]["psnr_unedit_part"]["mean"] == "inf"
        and saved["summary"]["psnr_unedit_part"]["finite_mean"] is None
    )
    ddim = pie.run_pie(editor, data, tmp_path / "ddim", pie.PieSettings(method="ddim", steps=4), log=lambda s: None)
    assert math.isfinite(ddim["summary"]["psnr_unedit_part"]["mean"])


def test_controls_reach_the_edit_and_the_pie_mask_keeps_the_rest(tmp_path, capsys):
    """--use-mask keeps the source outside each entry's mask: with BDIA on the scenes model (no VAE) the unedited
    part is the source pixel for pixel; --control p2p --blend runs Prompt-to-Prompt with LocalBlend on the
    entry's blended_word; a control that cannot apply is refused before any work."""
    from bdia.cli import main

    data = pie.make_scenes_pie(tmp_path / "data", 2)
    out = tmp_path / "masked"
    args = ["eval", "pie", str(data), "-o", str(out), "--steps", "4", "-q", "--use-mask", "--control", "p2p"]
    assert main([*args, "--blend"]) == 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["summary"]["psnr_unedit_part"]["infinite"] == 2
    item = next(iter(pie.read_pie(data)))
    settings = pie.PieSettings(edit_options={"control": "p2p", "blend": True, "mask": False})
    keywords = pie.edit_keywords(item, np.zeros((32, 32)), settings, 3.0)
    assert keywords["control"].blend.source_words == [item.blended_word[0]] and "mask" not in keywords
    capsys.readouterr()
    assert main(["eval", "pie", str(data), "-o", str(tmp_path / "x"), "--blend"]) == 2
    assert "--blend is Prompt-to-Prompt's LocalBlend" in capsys.readouterr().err
