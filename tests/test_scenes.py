"""The embedded scenes model: renderer, edit pairs, split, tokenizer, tiny model round trip, training,
classifier, shipped weights through the Editor."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("safetensors")

import bdia  # noqa: E402
from bdia import scenes  # noqa: E402
from bdia.scenes.text import SceneTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
R = importlib.import_module("bdia.scenes.render")  # the module; bdia.scenes.render is the function
TINY = {
    "block_out_channels": [8, 16],
    "norm_num_groups": 4,
    "attention_head_dim": 2,
    "text_width": 16,
    "text_layers": 1,
    "text_heads": 2,
}

pytestmark = pytest.mark.usefixtures("single_thread")


# ----- renderer, captions, split ---------------------------------------------------------------------


def test_render_is_deterministic_and_caption_follows_the_scene():
    a, b = R.scene_from_seed(7), R.scene_from_seed(7)
    assert a == b and np.array_equal(R.render(a), R.render(b))
    img = R.render(a)
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert tuple(img[0, 0]) == R.BACKGROUNDS[a.background] or any(o.box()[0] < 1 for o in a.objects)
    s = R.Scene(
        "gray",
        (R.SceneObject("square", "blue", "small", 22.0, 10.0), R.SceneObject("circle", "red", "large", 9.0, 20.0)),
    )
    assert R.caption(s) == "a large red circle and a small blue square on a gray background"  # left to right
    assert tuple(R.render(s)[20, 9]) == R.COLOURS["red"] and tuple(R.render(s)[10, 22]) == R.COLOURS["blue"]
    with pytest.raises(ValueError, match="closer"):
        R.Scene(
            "gray",
            (R.SceneObject("circle", "red", "large", 10.0, 10.0), R.SceneObject("circle", "blue", "large", 14.0, 12.0)),
        )
    with pytest.raises(ValueError, match="colour must be one of"):
        R.SceneObject("circle", "pink", "large", 10.0, 10.0)


def test_split_is_disjoint_and_holds_out_captions():
    train = R.training_scenes(300)
    held = R.held_out_scenes(300)
    assert not any(R.is_held_out_caption(R.caption(s)) for s in train)
    assert set(map(R.caption, R.held_out_scenes(40, unseen_only=True))).isdisjoint(map(R.caption, train))
    assert all(R.is_held_out_caption(R.caption(s)) for s in R.held_out_scenes(20, unseen_only=True))
    assert set(train).isdisjoint(held)
    assert R.training_scenes(5) == train[:5] and R.held_out_scenes(5) == held[:5]


@pytest.mark.parametrize("kind", R.EDIT_KINDS)
def test_edit_pairs(kind):
    pairs = R.held_out_edit_pairs(4, kinds=[kind])
    assert len(pairs) == 4
    for p in pairs:
        assert p.kind == kind
        assert np.array_equal(p.mask, (p.source_image != p.target_image).any(-1)) and p.mask.any()
        assert np.array_equal(p.source_image, R.render(p.source)) and np.array_equal(p.target_image, R.render(p.target))
        assert not (p.mask & ~p.region).any()  # every changed pixel lies in the changed objects' footprints
        src, tgt = p.source_caption.split(), p.target_caption.split()
        old, new = p.changed_words
        if kind in ("add", "remove"):
            longer, shorter, words = (tgt, src, new) if kind == "add" else (src, tgt, old)
            assert len(longer) == len(shorter) + 5 and len(words) == 3  # "and a SIZE COLOUR SHAPE"
            assert " ".join(words) in " ".join(longer)
        else:
            assert len(src) == len(tgt) and len(old) == len(new) == 1 and old != new
            diff = [(a, b) for a, b in zip(src, tgt) if a != b]
            assert diff == [(old[0], new[0])]
    if kind == "remove":
        with pytest.raises(ValueError, match="only object"):
            R.make_edit(
                R.Scene("gray", (R.SceneObject("circle", "red", "large", 10.0, 10.0),)),
                "remove",
                np.random.default_rng(0),
            )
    with pytest.raises(ValueError, match="edit kind"):
        R.make_edit(pairs[0].source, "rotate", np.random.default_rng(0))


# ----- tokenizer --------------------------------------------------------------------------------------


def test_tokenizer_round_trip_padding_and_errors():
    tok = SceneTokenizer()
    text = "a large red circle and a small blue square on a gray background"
    ids = tok.encode(text)
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) == 15
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert [tok.decode([i]) for i in ids][1:-1] == text.split()  # Prompt-to-Prompt's per-token words
    assert tok.encode("") == [tok.bos_token_id, tok.eos_token_id]
    out = tok([text, ""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt")
    assert out.input_ids.shape == (2, tok.model_max_length) and out.input_ids[1, 2] == tok.pad_token_id
    with pytest.raises(ValueError, match=r"'pink'.*vocabulary.*red"):
        tok.encode("a large pink circle on a gray background")
    with pytest.raises(ValueError, match="at most"):
        tok.encode(" ".join(["a"] * 30))


# ----- tiny model --------------------------------------------------------------------------------------


def test_tiny_model_attention_and_exact_round_trip():
    from bdia.scenes.model import SCHEDULE_CONFIG, ScenesModel

    torch.manual_seed(0)
    model = ScenesModel(image_size=16, **TINY).double().eval().requires_grad_(False)
    model.schedule = bdia.Schedule.from_config(SCHEDULE_CONFIG)
    procs = model.unet.attn_processors
    assert any(k.endswith("attn1.processor") for k in procs) and any(k.endswith("attn2.processor") for k in procs)
    model.unet.set_attn_processor(dict(procs))  # controls install this way
    eps = scenes.eps_model(
        model, ["a small red circle on a gray background", "a large blue square on a navy background"], guidance=3.0
    )
    x0 = torch.rand(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    grid = model.schedule.grid(10)
    solver = bdia.BDIA()
    with torch.no_grad():
        rec = solver.sample(eps, solver.invert(eps, x0, grid), grid)
    assert (rec - x0).abs().max() < 1e-10


def test_training_is_reproducible_from_a_seed(tmp_path):
    from bdia.scenes.train import save_weights, train_model

    kw = {"steps": 3, "batch_size": 4, "warmup": 1, "model": {"image_size": 32, **TINY}}
    m1, h1 = train_model(seed=3, log=None, **kw)
    m2, h2 = train_model(seed=3, log=None, **kw)
    assert h1["loss_curve"] == h2["loss_curve"] and all(np.isfinite(v) for _, v in h1["loss_curve"])
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    path = save_weights(m1, tmp_path / "m.safetensors", {"schedule": h1["schedule"]})
    loaded = scenes.load_model(path=path)
    x = torch.zeros(1, 3, 32, 32)
    assert torch.equal(loaded(x, torch.tensor([5]), loaded.tokenize([""])), m1(x, torch.tensor([5]), m1.tokenize([""])))
    with pytest.raises(FileNotFoundError, match="train_scenes.py"):
        scenes.load_model(path=tmp_path / "missing.safetensors")


# ----- classifier and shipped weights ----------------------------------------------------------------


def test_shipped_classifier_is_accurate_on_held_out_renders():
    from bdia.scenes.classifier import _object_accuracy

    acc = _object_accuracy(scenes.load_classifier(), R.held_out_scenes(150))
    assert acc["background"] == 1.0 and acc["count"] >= 0.95 and acc["objects"] >= 0.95


def test_shipped_model_inverts_and_reconstructs_pixel_identically(recwarn):
    from bdia.editing import Editor

    editor = Editor.from_pretrained("scenes", device="cpu", progress=False)
    pair = R.held_out_edit_pairs(1, kinds=["colour"])[0]
    inv = editor.invert(pair.source_image, pair.source_caption, guidance_scale=3.0, num_steps=20)
    result = editor.reconstruct(inv)
    assert np.array_equal(np.asarray(result.images[0]), pair.source_image)
    assert not [w for w in recwarn if "scenes model" in str(w.message)]  # 32x32 RGB needs no conversion
    edited = editor.edit(inv, pair.target_caption)
    assert np.asarray(edited.images[0]).shape == (32, 32, 3)
    with pytest.raises(ValueError, match="vocabulary"):
        editor.invert(pair.source_image, "a cat", num_steps=5)
