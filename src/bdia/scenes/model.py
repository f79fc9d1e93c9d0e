"""The scenes text-to-image model: a small diffusers ``UNet2DConditionModel`` on 32x32 RGB pixels.

:class:`ScenesModel` bundles the UNet (eps-prediction, pixel space, cross-attention to the text
states: every transformer block has a self-attention ``attn1`` and a cross-attention ``attn2``, so
Prompt-to-Prompt style attention controls install through ``unet.set_attn_processor``), the
:class:`~bdia.scenes.text.TextEncoder`, the :class:`~bdia.scenes.text.SceneTokenizer` and the
noise schedule. ``model(x, t, cond) -> eps`` with ``cond`` token ids (B, L) or text states
(B, L, width). Importing this module imports diffusers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..training import SCHEDULE_CONFIG  # the model's noise schedule, shared with the digits model
from .render import IMAGE_SIZE
from .text import MAX_LENGTH, VOCABULARY, SceneTokenizer, TextEncoder

__all__ = ["DEFAULT_CONFIG", "SCHEDULE_CONFIG", "ScenesModel", "unet_config"]


DEFAULT_CONFIG: dict[str, Any] = {
    "image_size": IMAGE_SIZE,
    "block_out_channels": [32, 64, 64],
    "layers_per_block": 1,
    "attention_head_dim": 8,  # diffusers' name; with these blocks it is the number of heads
    "norm_num_groups": 8,
    "text_width": 64,
    "text_layers": 2,
    "text_heads": 4,
    "vocabulary": list(VOCABULARY),
    "max_length": MAX_LENGTH,
}


def unet_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The ``UNet2DConditionModel`` keywords for a scenes config: plain blocks at full resolution, attention below."""
    n = len(cfg["block_out_channels"])
    return {
        "sample_size": cfg["image_size"],
        "in_channels": 3,
        "out_channels": 3,
        # Full-resolution self-attention (1024 tokens) would dominate the cost on a CPU; 16x16 and 8x8 carry it.
        "down_block_types": ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (n - 1),
        "up_block_types": ["CrossAttnUpBlock2D"] * (n - 1) + ["UpBlock2D"],
        "block_out_channels": list(cfg["block_out_channels"]),
        "layers_per_block": cfg["layers_per_block"],
        "attention_head_dim": cfg["attention_head_dim"],
        "norm_num_groups": cfg["norm_num_groups"],
        "cross_attention_dim": cfg["text_width"],
    }


class ScenesModel(nn.Module):
    """eps(x, t, cond): x (B, 3, H, W) pixels in [-1, 1], t (B,) training timesteps, cond ids or text states."""

    def __init__(self, **config: Any) -> None:
        super().__init__()
        from diffusers.models import UNet2DConditionModel

        unknown = set(config) - set(DEFAULT_CONFIG)
        if unknown:
            raise TypeError(f"unknown scenes model settings: {sorted(unknown)}")
        cfg = {**DEFAULT_CONFIG, **config}
        self.config: dict[str, Any] = cfg
        self.tokenizer = SceneTokenizer(cfg["vocabulary"], cfg["max_length"])
        self.text_encoder = TextEncoder(
            len(cfg["vocabulary"]), cfg["max_length"], cfg["text_width"], cfg["text_layers"], cfg["text_heads"]
        )
        self.unet = UNet2DConditionModel(**unet_config(cfg))
        self.image_size = int(cfg["image_size"])
        self.in_channels = 3
        self.schedule: Any = None  # a bdia.Schedule, set by the loader

    def tokenize(self, captions: Sequence[str]) -> torch.Tensor:
        """(B, max_length) token ids on the model's device."""
        ids = self.tokenizer(list(captions), padding="max_length", return_tensors="pt").input_ids
        assert isinstance(ids, torch.Tensor)  # return_tensors="pt"
        return ids.to(next(self.parameters()).device)

    def encode_text(self, captions: Sequence[str] | torch.Tensor) -> torch.Tensor:
        """Text states (B, L, width) of captions or token ids, in the UNet's dtype."""
        ids = captions if isinstance(captions, torch.Tensor) else self.tokenize(captions)
        return self.text_encoder(ids).to(self.unet.dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        states = self.encode_text(cond) if not torch.is_floating_point(cond) else cond
        if states.shape[0] == 1 and x.shape[0] > 1:
            states = states.expand(x.shape[0], -1, -1)
        out = self.unet(x.to(self.unet.dtype), t, encoder_hidden_states=states.to(self.unet.dtype)).sample
        return out.to(x.dtype)
