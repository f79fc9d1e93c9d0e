"""The embedded scenes model as an editor backend: ``Editor.from_pretrained("scenes")``.

    editor = Editor.from_pretrained("scenes")
    inv = editor.invert("scene.png", "a large red circle on a gray background", num_steps=50)
    editor.reconstruct(inv).images[0]                                   # the same 32x32 scene, pixel for pixel
    editor.edit(inv, "a large blue circle on a gray background").images[0]

Pixel space: no VAE, the "latents" are the 32x32 RGB pixels in [-1, 1] (``bdia.scenes.to_model``);
encode is that conversion and decode the identity. Images of another size or mode are converted to
32x32 RGB with a warning. Prompts are captions in the model's closed vocabulary; "" is the null
caption (the unconditional branch of classifier-free guidance).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from typing import Any

import torch

from ...io.images import ImageSizeWarning, read_image, to_8bit
from ...io.saved import dtype_name
from ...runtime import choose_device, image_items, resolve_dtype
from .base import Backend

__all__ = ["SCENES_MODEL_ID", "ScenesBackend"]

SCENES_MODEL_ID = "scenes"
_CLASS_NAME = "ScenesModel"


class ScenesBackend(Backend):
    """The embedded scenes model (see the module): 32x32 RGB pixels are the latents, prompts are captions.

    Args:
        model: a :class:`bdia.scenes.model.ScenesModel` with ``.schedule`` (``bdia.scenes.load_model()``).
    """

    family = "scenes"
    latent_name = "pixel"
    lossy_codec = False
    default_guidance = 3.0

    def __init__(self, model: Any):
        self.model = model
        self.eps_model = model  # eps-prediction: model(x, t, text_states) -> eps
        self.schedule = model.schedule
        self.size = int(model.image_size)
        self._fingerprint: dict[str, Any] | None = None

    @classmethod
    def load(cls, *, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> ScenesBackend:
        """The shipped scenes model on ``device`` (default: CUDA, else MPS, else CPU), float32 unless ``dtype``."""
        from ...scenes import load_model

        model = load_model(choose_device(device))
        torch_dtype = resolve_dtype(dtype)
        if torch_dtype is not None and torch_dtype != torch.float32:
            model = model.to(torch_dtype)
        return cls(model)

    @classmethod
    def from_pretrained(
        cls,
        model: str = SCENES_MODEL_ID,
        *,
        torch_dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        progress: bool = True,
    ) -> ScenesBackend:
        """The registry's entry point (:func:`bdia.editing.backends.load_backend`): :meth:`load` under the model id."""
        if model != SCENES_MODEL_ID:
            raise ValueError(f"the scenes backend loads the embedded model {SCENES_MODEL_ID!r}, not {model!r}")
        return cls.load(device=device, dtype=torch_dtype)

    @property
    def unet(self) -> Any:
        """The diffusers UNet, where attention processors are installed."""
        return self.model.unet

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def default_size(self) -> tuple[int, int]:
        return self.size, self.size

    def fingerprint(self) -> dict[str, Any]:
        """The config and a sha256 of all the weights (a few MB: cheap)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for name, t in sorted(self.model.state_dict().items()):
                h.update(name.encode())
                h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
            self._fingerprint = {"config": dict(self.model.config), "weights_sha256": h.hexdigest()}
        return self._fingerprint

    def record(self) -> dict[str, Any]:
        return {
            "id": SCENES_MODEL_ID,
            "revision": None,
            "class": _CLASS_NAME,
            "dtype": dtype_name(self.dtype),
            "fingerprint": self.fingerprint(),
        }

    def check_record(self, record: dict[str, Any]) -> None:
        model_id, cls = record.get("id"), record.get("class")
        if model_id != SCENES_MODEL_ID or cls != _CLASS_NAME:
            raise ValueError(
                f"this inversion was made with model {model_id!r} ({cls}), not the embedded scenes "
                f"model; load the model it was inverted with (--model {model_id})"
            )
        saved = record.get("fingerprint", {})
        if saved.get("config") != self.fingerprint()["config"]:
            raise ValueError(
                "this inversion was made with a scenes model of another architecture; "
                "reinstall the bdia version it was made with"
            )
        if saved.get("weights_sha256") != self.fingerprint()["weights_sha256"]:
            raise ValueError(
                "this inversion was made with other scenes weights than the ones shipped with this "
                "bdia; reconstruct it with the bdia version it was made with"
            )

    # ----- prompts: captions ------------------------------------------------------------------------
    def check_prompt(self, prompt: str) -> None:
        self.model.tokenizer.encode(prompt)

    def conditions(
        self, prompts: list[str], negatives: list[str] | None, height: int, width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond, uncond) text states; the unconditional branch is the caption "" unless negatives are given."""
        with torch.no_grad():
            cond = self.model.encode_text(list(prompts))
            uncond = self.model.encode_text([""] * len(prompts) if negatives is None else list(negatives))
        return cond, uncond

    # ----- pixels: the latents ------------------------------------------------------------------------
    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        if (width, height) != (self.size, self.size):
            raise ValueError(f"the scenes model makes {self.size}x{self.size} images only, got {width}x{height}")
        return (batch, 3, self.size, self.size)

    def load_images(self, images: Any, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Images (path, PIL, uint8 or [0, 1] tensors, or a list) to a (B, 3, 32, 32) batch in [-1, 1].

        8-bit 32x32 RGB images map exactly (``bdia.scenes.to_model``); others are converted to RGB
        and resized to 32x32, with a warning.
        """
        if size is not None and tuple(size) != (self.size, self.size):
            raise ValueError(
                f"the scenes model takes {self.size}x{self.size} images only, got size {size[0]}x{size[1]}"
            )
        from ...scenes import to_model

        pixels = torch.stack([to_model(self._rgb_uint8(im, k)) for k, im in enumerate(image_items(images))])
        return pixels.to(self.device)

    def _rgb_uint8(self, image: Any, index: int) -> torch.Tensor:
        """One image as uint8 (3, 32, 32), converting and resizing (with a warning) when needed."""
        import numpy as np
        from PIL import Image

        if isinstance(image, (str, os.PathLike)):
            image = read_image(image)
        if isinstance(image, np.ndarray):
            image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1) if image.ndim == 3 else image))
        if isinstance(image, torch.Tensor):
            x = image.detach().cpu()
            if x.dim() == 2:
                x = x[None]
            if x.dim() != 3 or x.shape[0] not in (1, 3):
                raise ValueError(
                    f"image {index}: a tensor image must have shape (1, H, W) or (3, H, W), got {tuple(x.shape)}"
                )
            if x.dtype != torch.uint8:
                x = x.float()
                if not torch.isfinite(x).all() or x.min() < -1e-3 or x.max() > 1 + 1e-3:
                    raise ValueError(
                        f"image {index}: float tensor values must be in [0, 1] (got {x.min():.3g}..{x.max():.3g})"
                    )
                x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
            arr = x.permute(1, 2, 0).numpy()
            image = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
        if not isinstance(image, Image.Image):
            raise TypeError(f"image {index}: expected a PIL image, a path or a tensor, got {type(image).__name__}")
        image = to_8bit(image, f"image {index}")
        notes = []
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", image.size, (128, 128, 128, 255)), image)
            notes.append("flattened onto gray")
        if image.mode != "RGB":
            notes.append(f"converted from {image.mode} to RGB")
            image = image.convert("RGB")
        if image.size != (self.size, self.size):
            notes.append(f"resized from {image.size[0]}x{image.size[1]} to {self.size}x{self.size}")
            image = image.resize((self.size, self.size), Image.Resampling.LANCZOS)
        if notes:
            warnings.warn(f"image {index}: {', '.join(notes)} for the scenes model", ImageSizeWarning, stacklevel=4)
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy())

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """The identity: the latents are the pixels in [-1, 1] (float32)."""
        return pixels.to(self.device, torch.float32)

    def decode(self, latents: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """The identity, clipped to [-1, 1]."""
        return latents.detach().clamp(-1.0, 1.0)
