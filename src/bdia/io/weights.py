"""Reading the weights that ship with bdia (the embedded models): safetensors files with JSON metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

__all__ = ["read_weights"]


def read_weights(path: str | Path, model: str, script: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the decoded metadata of the ``model`` weights file at ``path`` (which must hold a
    ``config``); ``script`` is what regenerates a missing file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"{model} weights not found at {p}; they ship inside the bdia package: reinstall it "
            f"(pip install --force-reinstall bdia), or regenerate them with {script}"
        )
    try:
        from safetensors import safe_open
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"loading the {model} weights needs safetensors: pip install 'bdia[demo]'") from e
    with safe_open(str(p), framework="pt") as f:
        meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if "config" not in meta:
        raise ValueError(f"{p} has no 'config' metadata; it is not a bdia {model} weights file")
    return tensors, meta
