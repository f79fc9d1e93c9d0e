"""The embedded digits model as an editor backend: ``Editor.from_pretrained("digits")``, ``--model digits``.

    editor = Editor.from_pretrained("digits")
    inv = editor.invert("three.png", "3", num_steps=50)        # prompts are class labels "0".."9"
    editor.reconstruct(inv).images[0]                          # the same 16x16 digit, pixel for pixel
    editor.edit(inv, "8").images[0].save("eight.png")          # regenerated as an 8

The model works in pixel space: there is no VAE, the "latents" are the 16x16 grayscale pixels in
[-1, 1] (``bdia.digits.to_model``), encode is that conversion and decode the identity. Images of
another size or in colour are converted to 16x16 grayscale with a warning. The prompt "" is the
null class (the unconditional model); guidance is the model's classifier-free guidance.
Inversions save and load with :func:`~bdia.io.saved.save_inversion` under the model id
``"digits"``. Nothing here imports diffusers or transformers.
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

__all__ = ["DIGITS_MODEL_ID", "DigitsBackend", "parse_class"]

DIGITS_MODEL_ID = "digits"  # the embedded model's id, registered in bdia.editing.backends
_CLASS_NAME = "DigitsUNet"


def parse_class(prompt: Any) -> int | None:
    """The class a digits prompt names: "0".."9" -> 0..9, "" -> None (the null class)."""
    from ...digits import parse_label

    if isinstance(prompt, str) and prompt.strip() == "":
        return None
    try:
        if isinstance(prompt, bool) or not isinstance(prompt, (str, int)):
            raise ValueError
        return parse_label(prompt)
    except ValueError:
        raise ValueError(
            f'the digits model\'s prompt is a class label "0".."9" (or "" for no class), got {prompt!r}; '
            "text prompts need a Stable Diffusion model (--model PATH_OR_ID)"
        ) from None


class DigitsBackend(Backend):
    """The embedded digits model (see the module): 16x16 grayscale pixels are the latents, prompts are classes.

    Args:
        model: a :class:`bdia.digits.DigitsUNet` (``bdia.digits.load_model()``; :meth:`load` does it).
    """

    family = "digits"
    latent_name = "pixel"
    lossy_codec = False
    default_guidance = 2.0

    def __init__(self, model: Any):
        self.model = model
        self.eps_model = model  # eps-prediction: model(x, t, labels) -> eps
        self.schedule = model.schedule
        self.size = int(model.image_size)
        self._fingerprint: dict[str, Any] | None = None

    @classmethod
    def load(cls, *, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> DigitsBackend:
        """The shipped digits model on ``device`` (default: CUDA, else MPS, else CPU), float32 unless ``dtype``."""
        from ...digits import load_model

        model = load_model(choose_device(device))
        torch_dtype = resolve_dtype(dtype)
        if torch_dtype is not None and torch_dtype != torch.float32:
            model = model.to(torch_dtype)
        return cls(model)

    @classmethod
    def from_pretrained(
        cls,
        model: str = DIGITS_MODEL_ID,
        *,
        torch_dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        progress: bool = True,
    ) -> DigitsBackend:
        """The registry's entry point (:func:`bdia.editing.backends.load_backend`): :meth:`load` under the model id."""
        if model != DIGITS_MODEL_ID:
            raise ValueError(f"the digits backend loads the embedded model {DIGITS_MODEL_ID!r}, not {model!r}")
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

    def fingerprint(self) -> dict[str, Any]:
        """The architecture and a sha256 of the weights (the model is small: hashing all of it is cheap)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for name, t in sorted(self.model.state_dict().items()):
                h.update(name.encode())
                h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
            self._fingerprint = {"config": dict(self.model.config), "weights_sha256": h.hexdigest()}
        return self._fingerprint

    def record(self) -> dict[str, Any]:
        return {
            "id": DIGITS_MODEL_ID,
            "revision": None,
            "class": _CLASS_NAME,
            "dtype": dtype_name(self.dtype),
            "fingerprint": self.fingerprint(),
        }

    def check_record(self, record: dict[str, Any]) -> None:
        model_id, cls = record.get("id"), record.get("class")
        if model_id != DIGITS_MODEL_ID or cls != _CLASS_NAME:
            raise ValueError(
                f"this inversion was made with model {model_id!r} ({cls}), not the embedded digits model; "
                f"load the model it was inverted with (--model {model_id}, or no --model)"
            )
        saved = record.get("fingerprint", {})
        if saved.get("config") != self.fingerprint()["config"]:
            raise ValueError(
                "this inversion was made with a digits model of another architecture; "
                "reinstall the bdia version it was made with"
            )
        if saved.get("weights_sha256") != self.fingerprint()["weights_sha256"]:
            raise ValueError(
                "this inversion was made with other digits weights than the ones shipped with this "
                "bdia; reconstruct it with the bdia version it was made with"
            )

    # ----- prompts: class labels --------------------------------------------------------------------
    def check_prompt(self, prompt: str) -> None:
        parse_class(prompt)

    def conditions(
        self, prompts: list[str], negatives: list[str] | None, height: int, width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond, uncond) class labels; the unconditional branch is the null class unless a negative class is given."""
        null = int(self.model.null_label)

        def labels(texts: list[str]) -> torch.Tensor:
            classes = [parse_class(p) for p in texts]
            return torch.tensor([null if c is None else c for c in classes], dtype=torch.long, device=self.device)

        uncond = labels([""] * len(prompts) if negatives is None else negatives)
        return labels(prompts), uncond

    # ----- pixels: the latents ------------------------------------------------------------------------
    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        if (width, height) != (self.size, self.size):
            raise ValueError(f"the digits model makes {self.size}x{self.size} images only, got {width}x{height}")
        return (batch, int(self.model.in_channels), self.size, self.size)

    def load_images(self, images: Any, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Images (path, PIL, uint8 or [0, 1] tensors, or a list) to a (B, 1, 16, 16) batch in [-1, 1].

        8-bit 16x16 grayscale images map exactly (``bdia.digits.to_model``); others are converted to
        grayscale and resized to 16x16, with a warning. The model knows light digits on a dark
        background (as ``bdia.digits.load_digits`` stores them).
        """
        if size is not None and tuple(size) != (self.size, self.size):
            raise ValueError(
                f"the digits model takes {self.size}x{self.size} images only, got size {size[0]}x{size[1]}"
            )
        from ...digits import to_model

        pixels = torch.stack([to_model(self._gray_uint8(im, k)) for k, im in enumerate(image_items(images))])
        return pixels.to(self.device)

    def _gray_uint8(self, image: Any, index: int) -> torch.Tensor:
        """One image as uint8 (1, 16, 16), converting and resizing (with a warning) when needed."""
        import numpy as np
        from PIL import Image

        if isinstance(image, (str, os.PathLike)):
            image = read_image(image)
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
        image = to_8bit(image, f"image {index}")  # 16-bit and float images by their real range
        notes = []
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (0, 0, 0, 255))
            image = Image.alpha_composite(background, image)
            notes.append("flattened onto black")
        if image.mode != "L":
            if image.mode not in ("RGB", "RGBA", "P") or not _is_gray(image):  # gray stored as colour is silent
                notes.append(f"converted from {image.mode} to grayscale")
            image = image.convert("L")
        if image.size != (self.size, self.size):
            notes.append(f"resized from {image.size[0]}x{image.size[1]} to {self.size}x{self.size}")
            image = image.resize((self.size, self.size), Image.Resampling.LANCZOS)
        arr = np.asarray(image, dtype=np.uint8).copy()
        if notes:
            warnings.warn(f"image {index}: {', '.join(notes)} for the digits model", ImageSizeWarning, stacklevel=4)
        if arr.mean() > 127.5:
            warnings.warn(
                f"image {index} is mostly light: the digits model knows light digits on a dark "
                "background (invert the image's colours if it is dark on light)",
                stacklevel=4,
            )
        return torch.from_numpy(arr)[None]

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """The identity: the latents are the pixels in [-1, 1] (float32)."""
        return pixels.to(self.device, torch.float32)

    def decode(self, latents: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """The identity, clipped to [-1, 1] (kept in the latents' precision)."""
        return latents.detach().clamp(-1.0, 1.0)


def _is_gray(image: Any) -> bool:
    """True when every pixel of an RGB(A)/P image has equal channels (grayscale stored as colour)."""
    import numpy as np

    arr = np.asarray(image.convert("RGB"))
    return bool((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all())
