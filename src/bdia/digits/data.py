"""scikit-learn's handwritten digits as 8-bit 16x16 images, with a fixed held-out split.

The 1,797 8x8 digits (UCI optical recognition set, pixel values 0..16) are upsampled bilinearly to
16x16 and quantised to uint8 once, here: the uint8 images *are* the data set, so a reconstruction
can be compared with an original pixel for pixel. Models see them as floats in [-1, 1]
(:func:`to_model`), and :func:`to_uint8` maps model space back the same way.

The split is stratified and fixed (20% of each class, chosen by ``SPLIT_SEED``); training never
sees the held-out part and every demo inverts held-out digits.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from ..io.images import to_uint8  # model space [-1, 1] -> uint8 pixels, the inverse of to_model

__all__ = ["IMAGE_SIZE", "NUM_CLASSES", "Digits", "load_digits", "to_model", "to_uint8"]

IMAGE_SIZE = 16
NUM_CLASSES = 10
SPLIT_SEED = 0
TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Digits:
    """One split: ``images`` (N, 1, 16, 16) uint8 and ``labels`` (N,) int64, both torch tensors."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.numel())

    def as_model_input(self) -> torch.Tensor:
        return to_model(self.images)


def to_model(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [-1, 1] (0 -> -1, 255 -> 1)."""
    return images.to(torch.float32) / 127.5 - 1.0


def _upsample(images8: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images8.astype(np.float32) / 16.0).unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
    x = torch.nn.functional.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    return (x.clamp(0, 1) * 255.0).round().to(torch.uint8)


def _split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(SPLIT_SEED)
    train, test = [], []
    for c in range(NUM_CLASSES):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(TEST_FRACTION * idx.size))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


@functools.lru_cache(maxsize=1)
def _all_digits() -> tuple[torch.Tensor, np.ndarray]:
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the digits data ships with scikit-learn: pip install 'bdia[demo]'") from e
    raw = _sk_load_digits()
    return _upsample(raw.images), raw.target.astype(np.int64)


def load_digits(split: str = "train") -> Digits:
    """The ``"train"`` (1,438 images) or held-out ``"test"`` (359 images) split; ``"all"`` for both."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    images, labels = _all_digits()
    train, test = _split_indices(labels)
    idx = {"train": train, "test": test, "all": np.arange(labels.size)}[split]
    return Digits(images=images[torch.from_numpy(idx)].clone(), labels=torch.from_numpy(labels[idx]))
