"""What the embedded models' backends share: pixel space, no VAE, weights that ship with bdia.

The "latents" are the pixels in [-1, 1]; encode is that conversion and decode the identity (clipped).
Images of another size or mode are converted, with a warning. A subclass names its model and package
and says how prompts become conditions (:mod:`.digits`: class labels, :mod:`.scenes`: captions).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import warnings
from typing import Any, ClassVar

import torch

from ...io.images import ImageSizeWarning, read_image, to_8bit
from ...io.saved import dtype_name
from ...runtime import choose_device, image_items, resolve_dtype
from .base import Backend

__all__ = ["PixelBackend"]


class PixelBackend(Backend):
    """A model that ships with bdia and works on pixels (see the module)."""

    model_id: ClassVar[str]  # the embedded model's id ("digits", "scenes"), registered in bdia.editing.backends
    class_name: ClassVar[str]  # the network's class name, saved with an inversion
    package: ClassVar[str]  # the module with load_model() and to_model(uint8) ("bdia.digits")
    image_mode: ClassVar[str]  # PIL mode of the model's images: "L" or "RGB"
    alpha_background: ClassVar[tuple[int, int, int, int]]  # what transparent pixels are flattened onto
    latent_name = "pixel"
    lossy_codec = False

    def __init__(self, model: Any):
        self.model = model
        self.eps_model = model  # eps-prediction: model(x, t, conditions) -> eps
        self.schedule = model.schedule
        self.size = int(model.image_size)
        self._fingerprint: dict[str, Any] | None = None

    @classmethod
    def load(cls, *, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> Any:
        """The shipped model on ``device`` (default: CUDA, else MPS, else CPU), float32 unless ``dtype``."""
        model = importlib.import_module(cls.package).load_model(choose_device(device))
        torch_dtype = resolve_dtype(dtype)
        if torch_dtype is not None and torch_dtype != torch.float32:
            model = model.to(torch_dtype)
        return cls(model)

    @classmethod
    def from_pretrained(
        cls,
        model: str | None = None,
        *,
        torch_dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        progress: bool = True,
    ) -> Any:
        """The registry's entry point (:func:`bdia.editing.backends.load_backend`): :meth:`load` under the model id."""
        if model is not None and model != cls.model_id:
            raise ValueError(f"the {cls.family} backend loads the embedded model {cls.model_id!r}, not {model!r}")
        return cls.load(device=device, dtype=torch_dtype)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def default_size(self) -> tuple[int, int]:
        return self.size, self.size

    @property
    def channels(self) -> int:
        return 1 if self.image_mode == "L" else 3

    # ----- the model record saved with an inversion ----------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        """The config and a sha256 of all the weights (the models are small: hashing them is cheap)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for name, t in sorted(self.model.state_dict().items()):
                h.update(name.encode())
                h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
            self._fingerprint = {"config": dict(self.model.config), "weights_sha256": h.hexdigest()}
        return self._fingerprint

    def record(self) -> dict[str, Any]:
        return {
            "id": self.model_id,
            "revision": None,
            "class": self.class_name,
            "dtype": dtype_name(self.dtype),
            "fingerprint": self.fingerprint(),
        }

    def check_record(self, record: dict[str, Any]) -> None:
        model_id, cls = record.get("id"), record.get("class")
        if model_id != self.model_id or cls != self.class_name:
            raise ValueError(
                f"this inversion was made with model {model_id!r} ({cls}), not the embedded {self.family} model; "
                f"load the model it was inverted with (--model {model_id})"
            )
        saved = record.get("fingerprint", {})
        if saved.get("config") != self.fingerprint()["config"]:
            raise ValueError(
                f"this inversion was made with a {self.family} model of another architecture; "
                "reinstall the bdia version it was made with"
            )
        if saved.get("weights_sha256") != self.fingerprint()["weights_sha256"]:
            raise ValueError(
                f"this inversion was made with other {self.family} weights than the ones shipped with this "
                "bdia; reconstruct it with the bdia version it was made with"
            )

    # ----- pixels: the latents ------------------------------------------------------------------------
    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        if (width, height) != (self.size, self.size):
            raise ValueError(f"the {self.family} model makes {self.size}x{self.size} images only, got {width}x{height}")
        return (batch, self.channels, self.size, self.size)

    def load_images(self, images: Any, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Images (paths, PIL, uint8 arrays or tensors, [0, 1] float tensors, or a list) to a batch in [-1, 1].

        8-bit images of the model's size and mode map exactly (the package's ``to_model``); others are
        converted and resized, with a warning.
        """
        if size is not None and tuple(size) != (self.size, self.size):
            raise ValueError(
                f"the {self.family} model takes {self.size}x{self.size} images only, got size {size[0]}x{size[1]}"
            )
        to_model = importlib.import_module(self.package).to_model
        pixels = torch.stack([to_model(self._uint8(im, k)) for k, im in enumerate(image_items(images))])
        return pixels.to(self.device)

    def _uint8(self, image: Any, index: int) -> torch.Tensor:
        """One image as uint8 (C, size, size), converting and resizing (with a warning) when needed."""
        import numpy as np
        from PIL import Image

        if isinstance(image, (str, os.PathLike)):
            image = read_image(image)
        if isinstance(image, np.ndarray):  # (H, W) or (H, W, C), as PIL and the renderers give them
            image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1) if image.ndim == 3 else image))
        if isinstance(image, torch.Tensor):
            image = _tensor_to_pil(image, index)
        if not isinstance(image, Image.Image):
            raise TypeError(f"image {index}: expected a PIL image, a path or a tensor, got {type(image).__name__}")
        image = to_8bit(image, f"image {index}")  # 16-bit and float images by their real range
        notes = []
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", image.size, self.alpha_background), image)
            notes.append("flattened onto " + ("black" if self.alpha_background[:3] == (0, 0, 0) else "gray"))
        if image.mode != self.image_mode:
            if self._conversion_is_visible(image):
                notes.append(f"converted from {image.mode} to {self.image_mode}")
            image = image.convert(self.image_mode)
        if image.size != (self.size, self.size):
            notes.append(f"resized from {image.size[0]}x{image.size[1]} to {self.size}x{self.size}")
            image = image.resize((self.size, self.size), Image.Resampling.LANCZOS)
        if notes:
            warnings.warn(
                f"image {index}: {', '.join(notes)} for the {self.family} model", ImageSizeWarning, stacklevel=4
            )
        arr = np.asarray(image, dtype=np.uint8).copy()
        self._check_pixels(arr, index)
        return torch.from_numpy(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy())

    def _conversion_is_visible(self, image: Any) -> bool:
        """Whether converting ``image`` to the model's mode changes what it shows (then it is warned about)."""
        return True

    def _check_pixels(self, pixels: Any, index: int) -> None:
        """A hook to warn about images the model does not know (uint8 (H, W) or (H, W, C) array)."""

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """The identity: the latents are the pixels in [-1, 1] (float32)."""
        return pixels.to(self.device, torch.float32)

    def decode(self, latents: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """The identity, clipped to [-1, 1] (kept in the latents' precision)."""
        return latents.detach().clamp(-1.0, 1.0)


def _tensor_to_pil(image: torch.Tensor, index: int) -> Any:
    """A (C, H, W) or (H, W) tensor, uint8 or float in [0, 1], as a PIL image."""
    from PIL import Image

    x = image.detach().cpu()
    if x.dim() == 2:
        x = x[None]
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"image {index}: a tensor image must have shape (1, H, W) or (3, H, W), got {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        x = x.float()
        if not torch.isfinite(x).all() or x.min() < -1e-3 or x.max() > 1 + 1e-3:
            raise ValueError(f"image {index}: float tensor values must be in [0, 1] (got {x.min():.3g}..{x.max():.3g})")
        x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    arr = x.permute(1, 2, 0).numpy()
    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
