"""A user mask: outside it the target branch's solver state is the source branch's after every step.

    editor.edit(inv, "a large blue circle on a gray background", mask="mask.png")
    editor.edit(inv, "8", mask=Mask(torch.ones(16, 16)))

Works on every backend (no attention needed). The mask (an image file, a PIL image, a numpy array or a
tensor, any size, values in [0, 1]; 1 = edit) is resized to the latent grid by area averaging. After every
move each tensor of the solver state (BDIA's pair, EDICT's two chains) becomes ``m * target + (1 - m) *
source`` on the target rows: where ``m`` is 0 the target state *is* the source state (bit for bit), where it
is 1 it is the unblended edit (bit for bit), so the unmasked region ends equal to the reconstruction.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from .base import Control, EditContext

__all__ = ["Mask", "blend_state", "load_mask"]


def load_mask(mask: Any) -> torch.Tensor:
    """A mask as a float64 tensor (K, H, W) with K = 1 (shared) or one per image; values checked in [0, 1]."""
    import numpy as np

    what = "the mask"
    if isinstance(mask, (str, os.PathLike)):
        path = os.fspath(mask)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no mask file at {path!r}")
        from PIL import Image

        what = f"the mask {path!r}"
        with Image.open(path) as im:
            im.load()
            mask = im.copy()
    if hasattr(mask, "mode") and hasattr(mask, "getbands"):  # a PIL image
        if mask.mode == "F":
            arr = np.asarray(mask, dtype=np.float64)
        elif mask.mode in ("I", "I;16"):
            arr = np.asarray(mask, dtype=np.float64)
            arr = arr / (65535.0 if arr.max() > 255 else 255.0)
        else:
            arr = np.asarray(mask.convert("L"), dtype=np.float64) / 255.0
        mask = torch.from_numpy(arr.copy())
    if isinstance(mask, np.ndarray):
        if mask.dtype == np.uint8:
            mask = mask.astype(np.float64) / 255.0
        mask = torch.from_numpy(np.ascontiguousarray(mask))
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"a mask is an image path, a PIL image, a numpy array or a tensor, got {type(mask).__name__}")
    m = mask.detach().cpu()
    if m.dtype == torch.bool:
        m = m.double()
    elif m.dtype == torch.uint8:
        m = m.double() / 255.0
    elif not m.is_floating_point():
        raise TypeError(f"{what} must hold floats in [0, 1] (or uint8/bool), got {m.dtype}")
    m = m.double()
    if m.dim() == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.dim() == 2:
        m = m[None]
    if m.dim() != 3 or min(m.shape[-2:]) < 1:
        raise ValueError(f"{what} must be (H, W), (1, H, W), (B, H, W) or (B, 1, H, W), got shape {tuple(mask.shape)}")
    if not torch.isfinite(m).all() or m.min() < 0 or m.max() > 1:
        raise ValueError(f"{what} must hold values in [0, 1] (1 = edit, 0 = keep), got {m.min():.3g}..{m.max():.3g}")
    return m


def blend_state(state: tuple, batch: int, mask: torch.Tensor, reference_rule: bool = False) -> tuple:
    """The state with its target rows blended toward its source rows: ``m t + (1 - m) s`` per tensor
    (``reference_rule``: Prompt-to-Prompt's ``s + m (t - s)``). ``mask`` broadcasts over one branch's rows."""
    out = []
    for z in state:
        s, t = z[:batch], z[batch:]
        m = mask.to(device=z.device, dtype=z.dtype)
        t = s + m * (t - s) if reference_rule else m * t + (1 - m) * s
        out.append(torch.cat([s, t]))
    return type(state)(*out)


def latent_mask(mask: torch.Tensor, latent_shape: tuple[int, ...], image_size: tuple[int, int]) -> torch.Tensor:
    """``mask`` (K, H, W) resized (area averaging) to broadcast over latents of ``latent_shape``.

    Spatial latents (B, C, h, w) get (K, 1, h, w); packed token latents (B, tokens, C) (Flux) get (K, tokens, 1)
    on the token grid of the image's aspect ratio.
    """
    batch = latent_shape[0]
    if mask.shape[0] not in (1, batch):
        raise ValueError(f"the mask holds {mask.shape[0]} masks for {batch} images; give one, or one per image")
    if len(latent_shape) == 4:
        h, w = latent_shape[2], latent_shape[3]
    elif len(latent_shape) == 3:
        tokens = latent_shape[1]
        width, height = image_size
        h = max(1, round((tokens * height / width) ** 0.5))
        w = tokens // h
        if h * w != tokens:
            raise ValueError(f"cannot lay {tokens} latent tokens on a grid for a {width}x{height} image")
    else:
        raise ValueError(f"masks need spatial latents, these have shape {tuple(latent_shape)}")
    m = F.interpolate(mask[:, None], size=(h, w), mode="area")[:, 0].clamp(0.0, 1.0)
    return m.reshape(m.shape[0], 1, h, w) if len(latent_shape) == 4 else m.reshape(m.shape[0], h * w, 1)


class Mask(Control):
    """Keep the source outside ``mask`` (1 = edit, 0 = keep): see the module. ``invert=True`` swaps the two."""

    name: ClassVar[str] = "mask"

    def __init__(self, mask: Any, *, invert: bool = False):
        self.mask = load_mask(mask)
        if invert:
            self.mask = 1.0 - self.mask
        self.latent: torch.Tensor | None = None

    def install(self, backend: Any, context: EditContext) -> None:
        super().install(backend, context)
        self.latent = latent_mask(self.mask, context.latent_shape, context.image_size)

    def after_step(self, step: int, state: tuple) -> tuple:
        assert self.latent is not None, "Mask.install was not called"
        return blend_state(state, self.context.batch, self.latent)

    def __repr__(self) -> str:
        return f"Mask({tuple(self.mask.shape)}, mean {float(self.mask.mean()):.3g})"
