"""The embedded digits model behind the same editor interface as Stable Diffusion: ``--model digits``.

    editor = DigitsEditor.load()
    inv = editor.invert("three.png", "3", num_steps=50)        # prompts are class labels "0".."9"
    editor.reconstruct(inv).images[0]                          # the same 16x16 digit, pixel for pixel
    editor.edit(inv, "8").images[0].save("eight.png")          # regenerated as an 8

The model works in pixel space: there is no VAE, the "latents" are the 16x16 grayscale pixels in
[-1, 1] (``bdia.digits.to_model``), encode is that conversion and decode the identity. Images of
another size or in colour are converted to 16x16 grayscale with a warning. The prompt "" is the
null class (the unconditional model); guidance is the model's classifier-free guidance.
Inversions save and load with :func:`~bdia.pipelines.save_inversion` under the model id
``"digits"``. Nothing here imports diffusers or transformers.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from typing import Any, Sequence

import torch

from .editor import BaseEditor, EditResult, Prompt, resolve_dtype
from .images import ImageSizeWarning
from .saved import ImageInversion, dtype_name

__all__ = ["DIGITS_MODEL_ID", "DigitsEditor", "parse_class"]

DIGITS_MODEL_ID = "digits"
_CLASS_NAME = "DigitsUNet"


def parse_class(prompt: Any) -> int | None:
    """The class a digits prompt names: "0".."9" -> 0..9, "" -> None (the null class)."""
    text = str(prompt).strip() if isinstance(prompt, (str, int)) and not isinstance(prompt, bool) else None
    if text == "":
        return None
    if text is None or not (text.isdigit() and 0 <= int(text) <= 9):
        raise ValueError(
            f"the digits model's prompt is a class label \"0\"..\"9\" (or \"\" for no class), got {prompt!r}; "
            "text prompts need a Stable Diffusion model (--model PATH_OR_ID)"
        )
    return int(text)


def _prompt_list(prompt: Prompt, batch: int, what: str) -> list[str]:
    prompts = [prompt] if isinstance(prompt, (str, int)) else list(prompt)
    if len(prompts) == 1:
        prompts = prompts * batch
    if len(prompts) != batch:
        raise ValueError(f"got {len(prompts)} {what}s for {batch} images; give one, or one per image")
    return [str(p).strip() for p in prompts]


class DigitsEditor(BaseEditor):
    """Inversion, reconstruction, editing and generation with the embedded digits model (see the module).

    Args:
        model: a :class:`bdia.digits.DigitsUNet` (``bdia.digits.load_model()``; :meth:`load` does it).
        state_dtype: the solver state's dtype (float64 by default).
        progress: show a progress bar on the sampling loops.
    """

    latent_name = "pixel"
    default_guidance = 2.0

    def __init__(self, model: Any, *, state_dtype: torch.dtype = torch.float64, progress: bool = True):
        if state_dtype not in (torch.float32, torch.float64):
            raise ValueError(f"state_dtype must be torch.float32 or torch.float64, got {state_dtype}")
        self.model = model
        self.eps_model = model  # eps-prediction: model(x, t, labels) -> eps
        self.schedule = model.schedule
        self.state_dtype = state_dtype
        self.progress = progress
        self.size = int(model.image_size)
        self.model_id = DIGITS_MODEL_ID
        self.revision = None
        self._fingerprint: dict[str, Any] | None = None

    @classmethod
    def load(cls, *, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
             state_dtype: torch.dtype = torch.float64, progress: bool = True) -> "DigitsEditor":
        """The shipped digits model on ``device`` (default: CUDA when available), float32 unless ``dtype``."""
        from ..digits import load_model

        if device in (None, "auto"):
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model = load_model(device)
        torch_dtype = resolve_dtype(None if dtype == "auto" else dtype)
        if torch_dtype is not None and torch_dtype != torch.float32:
            model = model.to(torch_dtype)
        if model.conv_in.weight.device.type == "mps" and state_dtype == torch.float64:
            state_dtype = torch.float32
        return cls(model, state_dtype=state_dtype, progress=progress)

    # ----- the model ----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def fingerprint(self) -> dict[str, Any]:
        """The architecture and a sha256 of the weights (the model is small: hashing all of it is cheap)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for name, t in sorted(self.model.state_dict().items()):
                h.update(name.encode())
                h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
            self._fingerprint = {"config": dict(self.model.config), "weights_sha256": h.hexdigest()}
        return self._fingerprint

    def _model_record(self) -> dict[str, Any]:
        return {"id": DIGITS_MODEL_ID, "revision": None, "class": _CLASS_NAME, "dtype": dtype_name(self.dtype),
                "fingerprint": self.fingerprint()}

    def check_model(self, inv: ImageInversion) -> None:
        model_id, cls = inv.model.get("id"), inv.model.get("class")
        if model_id != DIGITS_MODEL_ID or cls != _CLASS_NAME:
            raise ValueError(
                f"this inversion was made with model {model_id!r} ({cls}), not the embedded digits model; "
                f"load the model it was inverted with (--model {model_id}, or no --model)"
            )
        saved = inv.model.get("fingerprint", {})
        if saved.get("config") != self.fingerprint()["config"]:
            raise ValueError("this inversion was made with a digits model of another architecture; "
                             "reinstall the bdia version it was made with")
        if saved.get("weights_sha256") != self.fingerprint()["weights_sha256"]:
            raise ValueError("this inversion was made with other digits weights than the ones shipped with this "
                             "bdia; reconstruct it with the bdia version it was made with")

    # ----- prompts: class labels --------------------------------------------------------------------
    def validate_prompt(self, prompt: Prompt | None) -> None:
        if prompt is None:
            return
        for p in [prompt] if isinstance(prompt, (str, int)) else list(prompt):
            parse_class(p)

    def labels(self, prompt: Prompt, batch: int, what: str = "prompt") -> torch.Tensor:
        """Class indices (B,) for ``prompt`` (one, or one per image); the null class for ""."""
        classes = [parse_class(p) for p in _prompt_list(prompt, batch, what)]
        null = int(self.model.null_label)
        return torch.tensor([null if c is None else c for c in classes], dtype=torch.long, device=self.device)

    def encode_prompt(self, prompt: Prompt, negative_prompt: Prompt | None, batch: int,
                      height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond, uncond) class labels; the unconditional branch is the null class unless a negative class is given."""
        cond = self.labels(prompt, batch)
        if negative_prompt is None:
            uncond = torch.full((batch,), int(self.model.null_label), dtype=torch.long, device=self.device)
        else:
            uncond = self.labels(negative_prompt, batch, "negative prompt")
        return cond, uncond

    def invert(self, image: Any, prompt: Prompt = "", **kwargs: Any) -> ImageInversion:
        """Invert 16x16 digits under class ``prompt`` (see :meth:`BaseEditor.invert`); prompts are stored as text."""
        self.validate_prompt(prompt)
        if kwargs.get("negative_prompt") is not None:
            self.validate_prompt(kwargs["negative_prompt"])
        if isinstance(prompt, int):
            prompt = str(prompt)
        elif not isinstance(prompt, str):
            prompt = [str(p).strip() for p in prompt]
        return super().invert(image, prompt, **kwargs)

    def edit(self, inv: ImageInversion, prompt: Prompt, **kwargs: Any) -> EditResult:
        self.validate_prompt(prompt)
        return super().edit(inv, prompt, **kwargs)

    def generate(self, prompt: Prompt, **kwargs: Any) -> EditResult:
        self.validate_prompt(prompt)
        if isinstance(prompt, int):
            prompt = str(prompt)
        return super().generate(prompt, **kwargs)

    # ----- pixels: the latents ------------------------------------------------------------------------
    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        if (width, height) != (self.size, self.size):
            raise ValueError(f"the digits model makes {self.size}x{self.size} images only, got {width}x{height}")
        return (batch, int(self.model.in_channels), self.size, self.size)

    def default_size(self) -> tuple[int, int]:
        return self.size, self.size

    def preprocess(self, image: Any, size: int | Sequence[int] | None = None) -> torch.Tensor:
        """Images (path, PIL, uint8 or [0, 1] tensors, or a list) to a (B, 1, 16, 16) batch in [-1, 1].

        8-bit 16x16 grayscale images map exactly (``bdia.digits.to_model``); others are converted to
        grayscale and resized to 16x16, with a warning. The model knows light digits on a dark
        background (as ``bdia.digits.load_digits`` stores them).
        """
        if size is not None:
            wh = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
            if wh != (self.size, self.size):
                raise ValueError(f"the digits model takes {self.size}x{self.size} images only, "
                                 f"got size {wh[0]}x{wh[1]}")
        from ..digits import to_model

        if isinstance(image, torch.Tensor) and image.dim() == 4:
            items: list[Any] = list(image)
        elif isinstance(image, (list, tuple)):
            items = list(image)
        else:
            items = [image]
        if not items:
            raise ValueError("no images given")
        pixels = torch.stack([to_model(self._gray_uint8(im, k)) for k, im in enumerate(items)])
        return pixels.to(self.device)

    def _gray_uint8(self, image: Any, index: int) -> torch.Tensor:
        """One image as uint8 (1, 16, 16), converting and resizing (with a warning) when needed."""
        import numpy as np
        from PIL import Image

        if isinstance(image, (str, os.PathLike)):
            if not os.path.isfile(image):
                raise FileNotFoundError(f"no image file at {os.fspath(image)!r}")
            with Image.open(image) as im:
                im.load()
                image = im.copy()
        if isinstance(image, torch.Tensor):
            x = image.detach().cpu()
            if x.dim() == 2:
                x = x[None]
            if x.dim() != 3 or x.shape[0] not in (1, 3):
                raise ValueError(f"image {index}: a tensor image must have shape (1, H, W) or (3, H, W), "
                                 f"got {tuple(x.shape)}")
            if x.dtype != torch.uint8:
                x = x.float()
                if not torch.isfinite(x).all() or x.min() < -1e-3 or x.max() > 1 + 1e-3:
                    raise ValueError(f"image {index}: float tensor values must be in [0, 1] "
                                     f"(got {x.min():.3g}..{x.max():.3g})")
                x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
            arr = x.permute(1, 2, 0).numpy()
            image = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
        if not isinstance(image, Image.Image):
            raise TypeError(f"image {index}: expected a PIL image, a path or a tensor, got {type(image).__name__}")
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
            warnings.warn(f"image {index} is mostly light: the digits model knows light digits on a dark "
                          "background (invert the image's colours if it is dark on light)", stacklevel=4)
        return torch.from_numpy(arr)[None]

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """The identity: the latents are the pixels in [-1, 1] (float32)."""
        return pixels.to(self.device, torch.float32)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """The identity, clipped to [-1, 1] (kept in the latents' precision)."""
        return latents.detach().clamp(-1.0, 1.0)

    def to_images(self, pixels: torch.Tensor) -> list:
        """Grayscale ("L") PIL images, quantised with ``bdia.digits.to_uint8``."""
        from PIL import Image

        from ..digits import to_uint8

        return [Image.fromarray(im[0].numpy()) for im in to_uint8(pixels.cpu())]

    def reconstruct(self, inv: ImageInversion, *, progress: bool | None = None) -> EditResult:
        """As :meth:`BaseEditor.reconstruct`, plus ``info["identical"]``: the fraction of 8-bit pixels
        equal to the inverted image's."""
        result = super().reconstruct(inv, progress=progress)
        if inv.clean is not None:
            from ..digits import to_uint8

            same = to_uint8(result.latents.cpu()) == to_uint8(inv.clean.cpu())
            result.info["identical"] = float(same.double().mean())
        return result

    def pixel_errors(self, image: Any, result: EditResult | torch.Tensor, inv: ImageInversion | None = None,
                     size: int | Sequence[int] | None = None) -> dict[str, float]:
        """Errors of a reconstruction against ``image`` after 8-bit quantisation: ``reconstruction`` (mean
        absolute error in [0, 1] units), ``max_error`` (in 8-bit levels) and ``identical`` (fraction of
        equal pixels). There is no VAE, so nothing else to compare with."""
        from ..digits import to_uint8

        pixels = to_uint8(self.preprocess(image, size).cpu())
        latents = result.latents if isinstance(result, EditResult) else result
        rec = to_uint8(self.decode(latents).cpu())
        if rec.shape != pixels.shape:
            raise ValueError(f"{pixels.shape[0]} image(s) given for {rec.shape[0]} reconstruction(s)")
        diff = (rec.int() - pixels.int()).abs()
        return {"reconstruction": float(diff.double().mean() / 255.0), "max_error": int(diff.max()),
                "identical": float((diff == 0).double().mean())}


def _is_gray(image: Any) -> bool:
    """True when every pixel of an RGB(A)/P image has equal channels (grayscale stored as colour)."""
    import numpy as np

    arr = np.asarray(image.convert("RGB"))
    return bool((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all())
