"""Images in and out: PIL images, paths or tensors to a batch in [-1, 1], and back to PIL.

Sizes must be multiples of the VAE's downsampling factor. An image that is not is center-cropped
down to the nearest multiple (never padded or stretched), with a warning saying so; ``size=``
resizes instead.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Sequence

import torch

__all__ = ["ImageSizeWarning", "to_pixels", "to_pil", "pixel_errors"]


class ImageSizeWarning(UserWarning):
    """An input image was cropped so that its sides are multiples of the VAE factor."""


def _open(image: Any, index: int) -> torch.Tensor:
    """One image as a float tensor (3, H, W) in [0, 1]."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        if not os.path.isfile(image):
            raise FileNotFoundError(f"no image file at {os.fspath(image)!r}")
        with Image.open(image) as im:
            image = im.convert("RGB")
    if isinstance(image, Image.Image):
        import numpy as np

        arr = np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
        return torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0
    if isinstance(image, torch.Tensor):
        x = image.detach().float().cpu()
        if x.dim() != 3 or x.shape[0] not in (1, 3):
            raise ValueError(f"image {index}: a tensor image must have shape (3, H, W) or (1, H, W), got {tuple(x.shape)}")
        if not torch.isfinite(x).all() or x.min() < -1e-3 or x.max() > 1 + 1e-3:
            raise ValueError(f"image {index}: tensor values must be in [0, 1] (got {x.min():.3g}..{x.max():.3g})")
        return x.clamp(0, 1).expand(3, -1, -1)
    raise TypeError(f"image {index}: expected a PIL image, a path or a tensor, got {type(image).__name__}")


def _fit(x: torch.Tensor, size: tuple[int, int] | None, factor: int, index: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if size is not None:
        tw, th = size
        if tw % factor or th % factor or tw <= 0 or th <= 0:
            raise ValueError(f"size {tw}x{th} must be positive multiples of the VAE factor {factor}")
        if (w, h) != (tw, th):
            x = torch.nn.functional.interpolate(x[None], size=(th, tw), mode="bicubic", antialias=True,
                                                align_corners=False)[0].clamp(0, 1)
        return x
    tw, th = w - w % factor, h - h % factor
    if tw == 0 or th == 0:
        raise ValueError(f"image {index} is {w}x{h}, smaller than the VAE factor {factor}; pass a larger image or size=")
    if (tw, th) != (w, h):
        warnings.warn(
            f"image {index} is {w}x{h}, not a multiple of the VAE factor {factor}: center-cropped to {tw}x{th} "
            "(pass size=(width, height) to resize instead)",
            ImageSizeWarning, stacklevel=4,
        )
        top, left = (h - th) // 2, (w - tw) // 2
        x = x[:, top:top + th, left:left + tw]
    return x


def to_pixels(images: Any, factor: int, size: int | Sequence[int] | None = None) -> torch.Tensor:
    """A batch (B, 3, H, W) in [-1, 1] from a PIL image, a path, a tensor, or a list of those.

    A 4-d tensor is taken as a batch of images in [0, 1]. ``size`` is ``(width, height)`` or one
    int for a square; without it each image keeps its size, cropped to a multiple of ``factor``.
    """
    if isinstance(size, int):
        size = (size, size)
    elif size is not None:
        size = (int(size[0]), int(size[1]))
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        items: list[Any] = list(images)
    elif isinstance(images, (list, tuple)):
        items = list(images)
    else:
        items = [images]
    if not items:
        raise ValueError("no images given")
    xs = [_fit(_open(im, k), size, factor, k) for k, im in enumerate(items)]
    shapes = {tuple(x.shape[-2:]) for x in xs}
    if len(shapes) > 1:
        sizes = ", ".join(f"{w}x{h}" for h, w in sorted(shapes))
        raise ValueError(f"images in a batch must have one size, got {sizes}; pass size=(width, height)")
    return torch.stack(xs) * 2.0 - 1.0


def to_pil(pixels: torch.Tensor) -> list:
    """PIL images from a batch in [-1, 1] (values outside are clipped)."""
    from PIL import Image

    x = ((pixels.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(im.permute(1, 2, 0).numpy(), mode="RGB") for im in x]


def pixel_errors(original: torch.Tensor, vae_roundtrip: torch.Tensor, reconstruction: torch.Tensor) -> dict[str, float]:
    """Mean absolute errors in [0, 1] pixel units: the reconstruction's, beside the VAE's own round trip.

    Exact latent inversion cannot beat the VAE: ``reconstruction`` is bounded below by
    ``vae_roundtrip`` (docs/math.md section 7). ``vs_vae`` compares the two decoded images directly.
    """
    def mae(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a.float() - b.float()).abs().mean() / 2.0)  # [-1, 1] -> [0, 1] units

    return {
        "reconstruction": mae(reconstruction, original),
        "vae_roundtrip": mae(vae_roundtrip, original),
        "vs_vae": mae(reconstruction, vae_roundtrip),
    }
