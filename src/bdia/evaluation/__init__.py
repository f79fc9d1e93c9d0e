"""Editing benchmarks over folders of images: :mod:`.pie` runs an inversion method over a folder in
PIE-Bench's published format and scores the edits with PIE-Bench's metrics (:mod:`.metrics`).

``import bdia.evaluation`` stays light: torch, transformers and torchmetrics load inside the functions.
"""

from __future__ import annotations

__all__ = ["metrics", "pie"]
