"""A compact class-conditional UNet for 16x16 one-channel images (eps-prediction).

Three resolutions (16, 8, 4), one residual block per level on each side, skip connections by
concatenation, GroupNorm + SiLU, timestep and class embeddings added inside every block (the DDPM
recipe of Ho et al. 2020 without attention, which a 4x4 bottleneck does not need). Class index
``num_classes`` is the learned null class used for classifier-free guidance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from ..schedule import Schedule

__all__ = ["DigitsUNet", "timestep_embedding"]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.to(torch.float32)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def _zero(conv: nn.Conv2d) -> None:
    """Zero a conv's weight and bias: its block starts as the identity, the output as zero."""
    nn.init.zeros_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int = 8) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        _zero(self.conv2)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(nn.functional.silu(self.norm2(h)))
        return self.skip(x) + h


class DigitsUNet(nn.Module):
    """eps(x, t, labels): x (B, C, H, W) float, t (B,) training timesteps, labels (B,) in 0..num_classes.

    ``labels == null_label`` (= ``num_classes``) asks for the unconditional prediction.
    """

    schedule: Schedule  # its noise schedule, set by bdia.digits.load_model

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (32, 64, 96),
        emb_dim: int = 128,
        num_classes: int = 10,
        image_size: int = 16,
    ) -> None:
        super().__init__()
        self.config: dict[str, Any] = {
            "in_channels": in_channels,
            "channels": list(channels),
            "emb_dim": emb_dim,
            "num_classes": num_classes,
            "image_size": image_size,
        }
        self.num_classes = num_classes
        self.null_label = num_classes
        self.image_size = image_size
        self.in_channels = in_channels
        self.time_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim)
        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        c = channels[0]
        for i, ch in enumerate(channels):
            self.down.append(ResBlock(c, ch, emb_dim))
            c = ch
            if i < len(channels) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid = ResBlock(c, c, emb_dim)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, ch in reversed(list(enumerate(channels))):
            self.up.append(ResBlock(c + ch, ch, emb_dim))
            c = ch
            if i > 0:
                self.upsample.append(nn.Conv2d(c, channels[i - 1], 3, padding=1))
                c = channels[i - 1]
        self.norm_out = nn.GroupNorm(8, c)
        self.conv_out = nn.Conv2d(c, in_channels, 3, padding=1)
        _zero(self.conv_out)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        labels = torch.as_tensor(labels, device=x.device, dtype=torch.long)
        if labels.dim() == 0:
            labels = labels.expand(x.shape[0])
        # The embedding is computed in float32 (exact timesteps), then follows the model's dtype (float16/bfloat16).
        emb = self.time_mlp(timestep_embedding(t, self.config["emb_dim"]).to(x.dtype)) + self.class_emb(labels)
        h = self.conv_in(x)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid(h, emb)
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if i < len(self.upsample):
                h = nn.functional.interpolate(h, scale_factor=2, mode="nearest")
                h = self.upsample[i](h)
        return self.conv_out(nn.functional.silu(self.norm_out(h)))
