"""A small CNN digit classifier, the judge of generated digits (accuracy and Frechet distance).

Trained on the training split only (:func:`bdia.digits.train.train_classifier`). Its 128-d
penultimate activations are the features of the Frechet distance in :mod:`bdia.digits.quality`,
the digits analogue of FID's Inception features.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["DigitsClassifier"]


class DigitsClassifier(nn.Module):
    """logits(x) for x (B, 1, 16, 16) in [-1, 1]; ``features(x)`` gives the (B, 128) embedding."""

    def __init__(self, in_channels: int = 1, width: int = 32, feature_dim: int = 128, num_classes: int = 10) -> None:
        super().__init__()
        self.config: dict[str, Any] = {
            "in_channels": in_channels,
            "width": width,
            "feature_dim": feature_dim,
            "num_classes": num_classes,
        }
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 16 -> 8
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8 -> 4
            nn.Flatten(),
            nn.Linear(2 * w * 16, feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Class indices (B,) for images in [-1, 1] of any float dtype."""
        p = next(self.parameters())
        out = [self(x[i : i + batch_size].to(p)).argmax(1) for i in range(0, x.shape[0], batch_size)]
        return torch.cat(out)
