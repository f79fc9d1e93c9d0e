"""An embedded text-to-image model of synthetic scenes: coloured shapes on a plain background, 32x32 RGB.

:mod:`.render` draws scenes, captions and edit pairs deterministically from seeds (fixed held-out
split); :mod:`.text` tokenizes the closed-vocabulary captions; :mod:`.model` is a small diffusers
``UNet2DConditionModel`` (pixel space, eps-prediction, self- and cross-attention) with a tiny text
encoder; :mod:`.classifier` and :mod:`.quality` judge samples. Weights ship in ``weights/``::

    model = bdia.scenes.load_model()
    eps = bdia.scenes.eps_model(model, ["a large red circle on a gray background"], guidance=3.0)
    x = bdia.BDIA().sample(eps, torch.randn(1, 3, 32, 32, dtype=torch.float64), model.schedule.grid(50))

``import bdia.scenes`` stays light; :func:`load_model` imports diffusers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..io.weights import read_weights
from ..schedule import Schedule
from .render import (
    EDIT_KINDS,
    IMAGE_SIZE,
    EditPair,
    Scene,
    SceneObject,
    caption,
    held_out_edit_pairs,
    held_out_scenes,
    make_edit,
    render,
    scene_from_seed,
    training_scenes,
)
from .text import VOCABULARY, SceneTokenizer

__all__ = [
    "CLASSIFIER_FILE",
    "EDIT_KINDS",
    "IMAGE_SIZE",
    "MODEL_FILE",
    "VOCABULARY",
    "WEIGHTS_DIR",
    "EditPair",
    "Scene",
    "SceneObject",
    "SceneTokenizer",
    "caption",
    "eps_model",
    "held_out_edit_pairs",
    "held_out_scenes",
    "load_classifier",
    "load_model",
    "make_edit",
    "render",
    "scene_from_seed",
    "to_model",
    "to_uint8",
    "training_scenes",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MODEL_FILE = "scenes_model.safetensors"
CLASSIFIER_FILE = "scenes_classifier.safetensors"


def to_model(images: Any) -> torch.Tensor:
    """uint8 (B, 3, H, W) or (3, H, W) -> float32 in [-1, 1] (exact for 8-bit pixels)."""
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8:
        raise TypeError(f"to_model takes uint8 images, got {x.dtype}")
    return x.to(torch.float32) / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Model pixels in [-1, 1] -> uint8 (round to nearest; the inverse of :func:`to_model` on 8-bit values)."""
    return ((x.detach().to(torch.float64).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def _read(path: str | Path | None, default: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    return read_weights(WEIGHTS_DIR / default if path is None else path, "scenes", "scripts/train_scenes.py")


def load_model(device: str | torch.device = "cpu", path: str | Path | None = None) -> Any:
    """The shipped :class:`~bdia.scenes.model.ScenesModel`, eval mode, no gradients, ``.schedule`` set."""
    tensors, meta = _read(path, MODEL_FILE)
    from .model import ScenesModel

    model = ScenesModel(**meta["config"])
    model.load_state_dict(tensors)
    model.schedule = Schedule.from_config(meta["schedule"])
    return model.to(device).eval().requires_grad_(False)


def load_classifier(device: str | torch.device = "cpu", path: str | Path | None = None) -> Any:
    """The shipped judge (:class:`~bdia.scenes.classifier.ScenesClassifier`, trained on renders only)."""
    tensors, meta = _read(path, CLASSIFIER_FILE)
    from .classifier import ScenesClassifier

    model = ScenesClassifier(**meta["config"])
    model.load_state_dict(tensors)
    return model.to(device).eval().requires_grad_(False)


def eps_model(model: Any, captions: str | Sequence[str], guidance: float = 1.0):
    """The canonical guided ``(x, t) -> eps`` of ``model`` for ``captions`` (one per image, or one for all).

    ``guidance`` is the classifier-free guidance scale; the unconditional branch is the caption "".
    """
    from ..models import ClassifierFreeGuidance

    if isinstance(captions, str):
        captions = [captions]
    with torch.no_grad():
        cond = model.encode_text(list(captions))
        uncond = model.encode_text([""])
    return ClassifierFreeGuidance(model, cond=cond, uncond=uncond, scale=float(guidance))
