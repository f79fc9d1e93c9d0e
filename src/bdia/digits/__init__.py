"""The embedded default model: a class-conditional pixel-space diffusion model of handwritten digits.

A compact UNet (:mod:`.unet`, eps-prediction, learned null class for classifier-free guidance)
trained on scikit-learn's digits at 16x16 (:mod:`.data`, fixed held-out split), and a small
classifier (:mod:`.classifier`) that judges generated digits (:mod:`.quality`). Both ship as
safetensors in ``weights/`` and load with no network::

    model = bdia.digits.load_model()
    grid = model.schedule.grid(50)
    eps = bdia.digits.eps_model(model, labels, guidance=2.0)   # canonical (x, t) -> eps
    x = bdia.BDIA().sample(eps, torch.randn(8, 1, 16, 16, dtype=torch.float64), grid)

``scripts/train_digits.py`` reproduces the weights from a seed (:mod:`.train`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..io.weights import read_weights
from ..schedule import Schedule
from .classifier import DigitsClassifier
from .data import IMAGE_SIZE, NUM_CLASSES, Digits, load_digits, to_model, to_uint8
from .unet import DigitsUNet

__all__ = [
    "IMAGE_SIZE",
    "NUM_CLASSES",
    "WEIGHTS_DIR",
    "Digits",
    "DigitsClassifier",
    "DigitsUNet",
    "eps_model",
    "load_classifier",
    "load_digits",
    "load_model",
    "parse_label",
    "to_model",
    "to_uint8",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
UNET_FILE = "digits_unet.safetensors"
CLASSIFIER_FILE = "digits_classifier.safetensors"


def _read(path: str | Path | None, default: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    return read_weights(WEIGHTS_DIR / default if path is None else path, "digits", "scripts/train_digits.py")


def load_model(device: str | torch.device = "cpu", path: str | Path | None = None) -> DigitsUNet:
    """The shipped digits UNet, in eval mode without gradients.

    ``model(x, t, labels) -> eps`` with x (B, 1, 16, 16) in [-1, 1], t (B,) training timesteps and
    labels (B,) in 0..9, or ``model.null_label`` (10) for the unconditional branch.
    ``model.schedule`` is its :class:`bdia.Schedule` (``model.schedule.config`` the diffusers-style dict).
    """
    tensors, meta = _read(path, UNET_FILE)
    model = DigitsUNet(**meta["config"])
    model.load_state_dict(tensors)
    model.schedule = Schedule.from_config(meta["schedule"])
    return model.to(device).eval().requires_grad_(False)


def load_classifier(device: str | torch.device = "cpu", path: str | Path | None = None) -> DigitsClassifier:
    """The shipped judge classifier (trained on the training split only), in eval mode."""
    tensors, meta = _read(path, CLASSIFIER_FILE)
    model = DigitsClassifier(**meta["config"])
    model.load_state_dict(tensors)
    return model.to(device).eval().requires_grad_(False)


def parse_label(prompt: str | int) -> int:
    """The class a prompt names: ``"3"`` (or ``3``) -> 3."""
    s = str(prompt).strip()
    if not (s.isascii() and s.isdigit() and 0 <= int(s) < NUM_CLASSES):  # isascii: "²" is a digit to Python
        raise ValueError(f"the digits model's prompt is a class, one of 0..9; got {prompt!r}")
    return int(s)


def eps_model(model: DigitsUNet, labels: int | str | Sequence[int] | torch.Tensor, guidance: float = 1.0):
    """The canonical ``(x, t) -> eps`` of ``model`` for class ``labels`` (one per image, or one for all).

    ``guidance`` is the classifier-free guidance scale: 1 is the plain conditional model, 0 the
    unconditional one, larger values follow the class more strictly.
    """
    from ..models import ClassifierFreeGuidance

    if isinstance(labels, (int, str)):
        labels = [parse_label(labels)]
    device = next(model.parameters()).device
    cond = torch.as_tensor(labels, dtype=torch.long, device=device).reshape(-1)
    if ((cond < 0) | (cond >= model.num_classes)).any():
        raise ValueError(f"labels must be in 0..{model.num_classes - 1}, got {cond.tolist()}")
    uncond = torch.full((1,), model.null_label, dtype=torch.long, device=device)
    return ClassifierFreeGuidance(model, cond=cond, uncond=uncond, scale=float(guidance))
