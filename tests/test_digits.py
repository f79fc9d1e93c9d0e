"""The embedded digits model: data split, UNet, training, classifier, shipped weights, quality measures."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("safetensors")

import bdia  # noqa: E402
from bdia import digits  # noqa: E402
from bdia.digits import data as digits_data  # noqa: E402
from bdia.digits.quality import evaluate_sampler, frechet_distance  # noqa: E402
from bdia.digits.train import save_weights, train_classifier, train_unet  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def model():
    return digits.load_model()


@pytest.fixture(scope="module")
def classifier():
    return digits.load_classifier()


# ----- data ------------------------------------------------------------------------------------------


def test_split_is_fixed_disjoint_and_stratified():
    from sklearn.datasets import load_digits as sklearn_digits

    labels = sklearn_digits().target
    train, test = digits_data._split_indices(labels)
    assert len(set(train.tolist()) & set(test.tolist())) == 0
    assert len(train) + len(test) == 1797
    counts = np.bincount(labels[test], minlength=10)
    assert counts.min() >= 34 and counts.max() <= 37  # 20% of each class
    again_train, again_test = digits_data._split_indices(labels)
    assert np.array_equal(train, again_train) and np.array_equal(test, again_test)


def test_images_are_16x16_uint8_and_round_trip_through_model_space():
    d = digits.load_digits("test")
    assert d.images.shape == (len(d), 1, 16, 16) and d.images.dtype == torch.uint8
    assert len(d) == 359 and len(digits.load_digits("train")) == 1438
    x = d.as_model_input()
    assert x.min() >= -1 and x.max() <= 1
    every = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(digits.to_uint8(digits.to_model(every)), every)
    with pytest.raises(ValueError, match="split"):
        digits.load_digits("validation")


# ----- UNet and training ----------------------------------------------------------------------------


def test_unet_shapes_and_null_label():
    net = digits.DigitsUNet(channels=(8, 16, 16), emb_dim=32)
    x = torch.randn(3, 1, 16, 16)
    out = net(x, torch.tensor([0, 500, 999]), torch.tensor([1, 2, net.null_label]))
    assert out.shape == x.shape and net.null_label == 10


def test_train_unet_few_steps_loss_finite_and_decreasing():
    net, hist = train_unet(
        seed=1, steps=40, batch_size=16, warmup=5, channels=[8, 16, 16], emb_dim=32, lr=3e-3, log=None, log_every=10
    )
    losses = [loss for _, loss in hist["loss_curve"]]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    assert hist["seed"] == 1 and hist["settings"]["steps"] == 40
    assert all(torch.isfinite(p).all() for p in net.parameters())
    # same seed, same weights
    net2, _ = train_unet(seed=1, steps=3, batch_size=8, channels=[8, 16, 16], emb_dim=32, log=None)
    net3, _ = train_unet(seed=1, steps=3, batch_size=8, channels=[8, 16, 16], emb_dim=32, log=None)
    assert all(torch.equal(a, b) for a, b in zip(net2.state_dict().values(), net3.state_dict().values()))


def test_train_unet_rejects_unknown_setting():
    with pytest.raises(TypeError, match="unknown"):
        train_unet(steps=1, learning_rate=1.0, log=None)


def test_train_classifier_few_steps():
    clf, hist = train_classifier(seed=0, steps=45, batch_size=32, lr=3e-3, log=None, log_every=15)
    assert all(math.isfinite(v) for _, v in hist["loss_curve"])
    assert hist["loss_curve"][-1][1] < hist["loss_curve"][0][1]
    assert hist["test_accuracy"] > 0.5


def test_save_and_load_round_trip(tmp_path):
    net, _ = train_unet(seed=0, steps=2, batch_size=8, channels=[8, 16, 16], emb_dim=32, log=None)
    path = save_weights(net, tmp_path / "u.safetensors", {"schedule": bdia.digits.train.SCHEDULE_CONFIG})
    loaded = digits.load_model(path=path)
    x, t, y = torch.randn(2, 1, 16, 16), torch.tensor([3, 700]), torch.tensor([4, 10])
    assert torch.equal(loaded(x, t, y), net(x, t, y))
    assert isinstance(loaded.schedule, bdia.Schedule)
    assert not any(p.requires_grad for p in loaded.parameters())


def test_missing_weights_say_how_to_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="reinstall"):
        digits.load_model(path=tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match="reinstall"):
        digits.load_classifier(path=tmp_path / "missing.safetensors")


def test_training_script_runs_a_few_steps(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("train_digits", ROOT / "scripts" / "train_digits.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    rc = script.main(
        [
            "--out",
            str(tmp_path),
            "--unet-steps",
            "4",
            "--classifier-steps",
            "4",
            "--log-every",
            "2",
            "--threads",
            str(torch.get_num_threads()),
        ]
    )
    assert rc == 0
    assert "unet step" in capsys.readouterr().out
    rec = json.loads((tmp_path / "training.json").read_text())
    assert rec["seed"] == 0 and len(rec["unet"]["loss_curve"]) == 2 and rec["classifier"]["settings"]["steps"] == 4
    assert digits.load_model(path=tmp_path / "digits_unet.safetensors").schedule.num_train_timesteps == 1000
    digits.load_classifier(path=tmp_path / "digits_classifier.safetensors")


# ----- shipped weights ------------------------------------------------------------------------------


def test_shipped_weights_are_small_and_documented():
    for name in ("digits_unet.safetensors", "digits_classifier.safetensors"):
        size = (digits.WEIGHTS_DIR / name).stat().st_size
        assert size < 4_000_000, f"{name} is {size} bytes"
    rec = json.loads((digits.WEIGHTS_DIR / "training.json").read_text())
    assert rec["unet"]["loss_curve"] and rec["unet"]["settings"]["steps"] > 0 and "seed" in rec


def test_shipped_classifier_is_accurate_on_held_out_split(classifier):
    test = digits.load_digits("test")
    acc = (classifier.predict(test.as_model_input()) == test.labels).float().mean()
    assert acc >= 0.97


def test_shipped_model_generates_the_asked_class(model, classifier):
    r = evaluate_sampler(bdia.BDIA(), 10, guidance=2.0, num_per_class=2, model=model, classifier=classifier)
    assert r["num_samples"] == 20 and r["accuracy"] >= 0.8 and math.isfinite(r["fd"])


@pytest.mark.parametrize("solver", [bdia.BDIA(gamma=0.96), bdia.BDIA(gamma=1.0), bdia.EDICT()], ids=repr)
def test_exact_inversion_is_pixel_identical_on_the_shipped_model(model, solver):
    test = digits.load_digits("test")
    idx = torch.tensor([0, 50, 100, 150, 200, 250])
    x0 = digits.to_model(test.images[idx]).double()
    eps = digits.eps_model(model, test.labels[idx], guidance=2.0)
    grid = model.schedule.grid(20)
    with torch.no_grad():
        inv = solver.invert(eps, x0, grid)
        rec = solver.sample(eps, inv, grid)
    assert (rec - x0).abs().max() < 1e-6
    assert torch.equal(digits.to_uint8(rec), test.images[idx])


def test_eps_model_labels():
    assert digits.parse_label("3") == 3 and digits.parse_label(7) == 7
    for bad in ("x", "10", "-1", ""):
        with pytest.raises(ValueError, match="0..9"):
            digits.parse_label(bad)
    net = digits.DigitsUNet(channels=(8, 16, 16), emb_dim=32)
    eps = digits.eps_model(net, "3", guidance=2.0)
    assert eps(torch.randn(2, 1, 16, 16), torch.tensor([10, 10])).shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="labels"):
        digits.eps_model(net, [11])


# ----- quality measures -----------------------------------------------------------------------------


def test_frechet_distance_against_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    shift = np.array([1.0, -2.0, 0.5])
    assert frechet_distance(a, a + shift) == pytest.approx(float((shift**2).sum()), rel=1e-9)
    # scaled copies: covariances S and 9 S, so FD = tr(S + 9 S - 2 * 3 S) = 4 tr(S)
    b = rng.normal(size=(500, 3))
    b -= b.mean(0)
    assert frechet_distance(b, 3 * b) == pytest.approx(4 * np.trace(np.cov(b, rowvar=False)), rel=1e-9)
    scipy_linalg = pytest.importorskip("scipy.linalg")
    x, y = rng.normal(size=(50, 4)) @ rng.normal(size=(4, 4)), rng.normal(size=(60, 4)) @ rng.normal(size=(4, 4))
    sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    ref = ((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(sx + sy - 2 * scipy_linalg.sqrtm(sx @ sy).real)
    assert frechet_distance(x, y) == pytest.approx(ref, rel=1e-8)
