"""Images in and out: PIL images, paths or tensors to a batch in [-1, 1], and back to PIL.

Sizes must be multiples of the VAE's downsampling factor. An image that is not is center-cropped
down to the nearest multiple (never padded or stretched), with a warning saying so; ``size=``
resizes instead.

Reading a file (:func:`read_image`) refuses what cannot be decoded (truncated, empty, not an image,
over Pillow's decompression-bomb limit) with an :class:`ImageReadError` naming the file. Values are
scaled by the image's real depth (:func:`image_array`): 16-bit images by 65535, float images in
0..1 as they are. :class:`ImageConversionWarning` says when information is lost: only the first
frame of an animation is used, or a depth is reduced.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from ..runtime import image_items

__all__ = [
    "ImageSizeWarning",
    "ImageConversionWarning",
    "ImageReadError",
    "read_image",
    "image_array",
    "to_8bit",
    "to_pixels",
    "to_pil",
    "pixel_errors",
]


class ImageSizeWarning(UserWarning):
    """An input image was cropped so that its sides are multiples of the VAE factor."""


class ImageConversionWarning(UserWarning):
    """An input image lost information on reading: frames of an animation, or bit depth."""


class ImageReadError(ValueError):
    """An image file that cannot be decoded: truncated, empty, not an image, or too large to open safely."""


def read_image(path: str | os.PathLike) -> Any:
    """The first frame of an image file as a decoded PIL image, in the file's own mode and depth.

    Raises FileNotFoundError for a missing file and :class:`ImageReadError` (one line, naming the
    file) for one that cannot be decoded. Warns (:class:`ImageConversionWarning`) when the file is
    an animation, and when Pillow can read a 16-bit colour image only at 8 bits per channel.
    """
    from PIL import Image, ImageOps

    name = os.fspath(path)
    if not os.path.isfile(name):
        raise FileNotFoundError(f"no image file at {name!r}")
    try:
        with Image.open(name) as im:
            frames = int(getattr(im, "n_frames", 1))
            rawmodes = [_tile_rawmode(tile) for tile in im.tile]
            im.load()
            # Turned as the EXIF Orientation tag says (as viewers show it): a phone photo is stored sideways.
            image = ImageOps.exif_transpose(im)
    except Image.DecompressionBombError as e:
        raise ImageReadError(
            f"{name!r} is too large to open safely ({_one_line(e)}); resize it before inverting"
        ) from None
    except Image.UnidentifiedImageError:
        what = "is empty (0 bytes)" if os.path.getsize(name) == 0 else "is not an image file Pillow can decode"
        raise ImageReadError(f"{name!r} {what}; give a PNG, JPEG, TIFF or WebP file") from None
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error... for damaged files
        raise ImageReadError(
            f"cannot read {name!r} as an image ({_one_line(e) or type(e).__name__}); "
            "the file is damaged or unsupported: re-save it as PNG"
        ) from None
    if frames > 1:
        warnings.warn(f"{name!r} has {frames} frames; only the first is used", ImageConversionWarning, stacklevel=3)
    if image.mode in ("RGB", "RGBA", "LA") and any(";16" in r for r in rawmodes):
        warnings.warn(
            f"{name!r} has 16 bits per channel, which Pillow reads as 8 for {image.mode} images; "
            "the lowest 8 bits are dropped",
            ImageConversionWarning,
            stacklevel=3,
        )
    return image


def _tile_rawmode(tile: Any) -> str:
    args = tile[3] if len(tile) > 3 else None
    return (
        args
        if isinstance(args, str)
        else (args[0] if isinstance(args, tuple) and args and isinstance(args[0], str) else "")
    )


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def image_array(image: Any, what: str = "image") -> Any:
    """A PIL image as a float32 array (H, W, C) in [0, 1], scaled by its real depth; C = its bands.

    8-bit modes are divided by 255, 16-bit ones (``I;16``, and ``I`` holding 0..65535) by 65535,
    ``I`` images beyond 16 bits are refused, float ``F`` images are taken as they are in 0..1 (or
    divided by 255 when their values span 0..255, with a warning, since that is a guess). Palette, 1-bit, CMYK and YCbCr
    images are converted to RGB (RGBA when they have transparency).
    """
    import numpy as np

    mode = image.mode
    if mode.startswith("I;16"):
        return (np.asarray(image).astype(np.float32) / 65535.0)[..., None]
    if mode == "I":
        arr = np.asarray(image)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ImageReadError(
                f"{what} is an integer image with values {arr.min()}..{arr.max()}; "
                "save it with 8 or 16 bits per channel"
            )
        # Pillow stores 16-bit data in mode I where it has no I;16 mode for it.
        return (arr.astype(np.float32) / 65535.0)[..., None]
    if mode == "F":
        return _float_values(np.asarray(image, dtype=np.float64), what)[..., None].astype(np.float32)
    if mode not in ("L", "LA", "RGB", "RGBA"):
        transparent = "A" in image.getbands() or "transparency" in image.info
        image = image.convert("RGBA" if transparent else "RGB")
    arr = np.asarray(image, dtype=np.uint8)
    return (arr.astype(np.float32) / 255.0).reshape(arr.shape[0], arr.shape[1], -1)


def _float_values(arr: Any, what: str) -> Any:
    import numpy as np

    if not np.isfinite(arr).all():
        raise ImageReadError(f"{what} is a float image with NaN or inf values")
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if lo >= 0.0 and hi <= 1.0:
        return arr
    if lo >= 0.0 and hi <= 255.0:
        warnings.warn(
            f"{what} is a float image with values {lo:.4g}..{hi:.4g}: taken as 0..255 "
            "(scale it to 0..1 to avoid this guess)",
            ImageConversionWarning,
            stacklevel=4,
        )
        return arr / 255.0
    raise ImageReadError(f"{what} is a float image with values {lo:.4g}..{hi:.4g}; expected 0..1 (or 0..255)")


def to_8bit(image: Any, what: str = "image") -> Any:
    """``image`` with 8 bits per channel: 16-bit and float images rescaled to mode ``L``; others as they are.

    Warns (:class:`ImageConversionWarning`) only when some value is not representable in 8 bits.
    """
    import numpy as np
    from PIL import Image

    if not (image.mode.startswith("I") or image.mode == "F"):
        return image
    scaled = image_array(image, what)[..., 0].astype(np.float64) * 255.0
    levels = np.round(scaled)
    if np.abs(scaled - levels).max(initial=0.0) > 1e-3:
        warnings.warn(
            f"{what} has more than 8 bits of depth ({image.mode}); reduced to 8 bits for this model",
            ImageConversionWarning,
            stacklevel=3,
        )
    return Image.fromarray(levels.astype(np.uint8))  # 2-d uint8: mode L


def _open(image: Any, index: int) -> torch.Tensor:
    """One image as a float tensor (3, H, W) in [0, 1]."""
    from PIL import Image

    what = f"image {index}"
    if isinstance(image, (str, os.PathLike)):
        what = repr(os.fspath(image))
        image = read_image(image)
    if isinstance(image, Image.Image):
        arr = image_array(image, what)
        bands = arr.shape[-1]
        if bands in (2, 4) and arr[..., -1].min() < 1.0:
            warnings.warn(
                f"{what} has transparent pixels; the alpha channel is dropped (the colours stored under them are used)",
                ImageConversionWarning,
                stacklevel=4,
            )
        colour = arr[..., :3] if bands >= 3 else arr[..., :1]
        return torch.from_numpy(colour.copy()).permute(2, 0, 1).expand(3, -1, -1).contiguous()
    if isinstance(image, torch.Tensor):
        x = image.detach().float().cpu()
        if x.dim() != 3 or x.shape[0] not in (1, 3):
            raise ValueError(
                f"image {index}: a tensor image must have shape (3, H, W) or (1, H, W), got {tuple(x.shape)}"
            )
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
            x = torch.nn.functional.interpolate(
                x[None], size=(th, tw), mode="bicubic", antialias=True, align_corners=False
            )[0].clamp(0, 1)
        return x
    tw, th = w - w % factor, h - h % factor
    if tw == 0 or th == 0:
        raise ValueError(
            f"image {index} is {w}x{h}, smaller than the VAE factor {factor}; pass a larger image or size="
        )
    if (tw, th) != (w, h):
        warnings.warn(
            f"image {index} is {w}x{h}, not a multiple of the VAE factor {factor}: center-cropped to {tw}x{th} "
            "(pass size=(width, height) to resize instead)",
            ImageSizeWarning,
            stacklevel=4,
        )
        top, left = (h - th) // 2, (w - tw) // 2
        x = x[:, top : top + th, left : left + tw]
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
    xs = [_fit(_open(im, k), size, factor, k) for k, im in enumerate(image_items(images))]
    shapes = {tuple(x.shape[-2:]) for x in xs}
    if len(shapes) > 1:
        sizes = ", ".join(f"{w}x{h}" for h, w in sorted(shapes))
        raise ValueError(f"images in a batch must have one size, got {sizes}; pass size=(width, height)")
    return torch.stack(xs) * 2.0 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] -> uint8, rounding in float64 and clipping outside (the inverse of ``x / 127.5 - 1``)."""
    return ((x.detach().to(torch.float64) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


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
