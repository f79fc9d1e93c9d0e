"""The :class:`Backend` base: what the :class:`~bdia.editing.Editor` needs from a model family.

One module per family beside this one (``digits``, ``stable_diffusion``, ``flow``); the registry in
``bdia.editing.backends`` maps a family name to its class, so nothing here imports a backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from ...grids import make_grid
from ...io.images import to_pil, to_uint8
from ...models import ClassifierFreeGuidance
from ...schedule import Grid, Schedule

__all__ = ["Backend", "FAMILY_NAMES"]

# Backend.family -> how messages name it.
FAMILY_NAMES = {
    "digits": "the embedded digits model",
    "scenes": "the embedded scenes model",
    "sd": "a Stable Diffusion pipeline",
    "sd3": "a Stable Diffusion 3 pipeline",
    "flux": "a Flux pipeline",
}


class Backend(ABC):
    """The model-specific pieces the :class:`Editor` needs; everything else is shared.

    Required (size is (width, height) in pixels):

    - ``schedule``: the noise schedule grids are built from (a :class:`bdia.Schedule`);
    - ``device``, ``dtype``: where and in which dtype the model runs;
    - ``load_images(images, size)``: paths/PIL/tensors (or a list) -> a pixel batch in [-1, 1];
    - ``encode(pixels)`` / ``decode(latents, size)``: pixels <-> latents (float32 out; decode clips to [-1, 1]);
    - ``conditions(prompts, negatives, height, width)``: (cond, uncond) for the model; ``negatives`` None
      is the model's default unconditional branch;
    - ``latent_shape(batch, height, width)``: the latents' shape (ValueError for an unsupported size);
    - ``default_size``: (width, height) that ``generate`` makes by default;
    - ``record()`` / ``check_record(record)``: the model id, class, dtype and fingerprint saved with an
      inversion; refuse an inversion of another model;
    - ``family``: "digits", "sd" (Stable Diffusion 1.x/2.x/XL), "sd3" or "flux", saved with an inversion;
      the Editor refuses an inversion of another family before anything else.

    With defaults for :class:`bdia.Schedule` models that a flow-matching backend overrides:

    - ``guided(cond, uncond, scale)``: the model the solvers run on this backend's grids under guidance
      (default: classifier-free guidance over ``eps_model(x, t, cond)``);
    - ``grid(num_steps, strength, size)``: the grid (default ``schedule.grid`` truncated to ``strength``;
      a flow model's grid may depend on the image size);
    - ``schedule_record()`` / ``check_schedule(record)``: the schedule saved with an inversion; refuse another.

    Optional: ``check_prompt(prompt)`` refuses a prompt the model cannot take, before any work;
    ``to_images(pixels)`` (default RGB, or grayscale for one channel); ``latent_name`` and
    ``lossy_codec`` (True when decode(encode(x)) != x, e.g. a VAE) shape the reports;
    ``default_guidance`` is generate()'s guidance scale.
    """

    family: str = "sd"
    latent_name = "latent"
    lossy_codec = True
    default_guidance = 7.5
    schedule: Schedule
    eps_model: Any  # model(x, t, cond) -> eps
    # each family's loader, a classmethod: (model, *, torch_dtype, device, progress, **family_keywords) -> backend
    from_pretrained: ClassVar[Callable[..., Backend]]

    @property
    @abstractmethod
    def device(self) -> torch.device: ...

    @property
    @abstractmethod
    def dtype(self) -> torch.dtype: ...

    @abstractmethod
    def load_images(self, images: Any, size: tuple[int, int] | None = None) -> torch.Tensor: ...

    @abstractmethod
    def encode(self, pixels: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def decode(self, latents: torch.Tensor, size: tuple[int, int]) -> torch.Tensor: ...

    @abstractmethod
    def conditions(
        self, prompts: list[str], negatives: list[str] | None, height: int, width: int
    ) -> tuple[Any, Any]: ...

    @abstractmethod
    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]: ...

    @property
    @abstractmethod
    def default_size(self) -> tuple[int, int]: ...

    @abstractmethod
    def record(self) -> dict[str, Any]: ...

    @abstractmethod
    def check_record(self, record: dict[str, Any]) -> None: ...

    def grid(
        self, num_steps: int, strength: float = 1.0, size: tuple[int, int] | None = None, kind: str = "diffusers"
    ) -> Grid:
        grid = make_grid(self.schedule, int(num_steps), kind)
        return grid if float(strength) == 1.0 else grid.truncated(strength)

    def schedule_record(self) -> dict[str, Any]:
        """The schedule's config as plain data, saved with an inversion."""
        return {k: v.tolist() if hasattr(v, "tolist") else v for k, v in dict(self.schedule.config).items()}

    def check_schedule(self, record: dict[str, Any]) -> None:
        """Refuse an inversion made under another noise schedule or prediction type."""
        saved = Schedule.from_config(record)
        if not torch.equal(saved.alphas_cumprod, self.schedule.alphas_cumprod):
            raise ValueError(
                "this inversion was made with another noise schedule (betas) than this model's; "
                "load the model it was inverted with"
            )
        if saved.prediction_type != self.schedule.prediction_type:
            raise ValueError(
                f"this inversion was made with a {saved.prediction_type!r}-prediction model and this "
                f"model predicts {self.schedule.prediction_type!r}; load the model it was inverted with"
            )

    def guided(self, cond: Any, uncond: Any, scale: float) -> Any:
        return ClassifierFreeGuidance(self.eps_model, cond, uncond, scale)

    def check_prompt(self, prompt: str) -> None:
        """Refuse a prompt this model cannot take (any text is fine by default)."""

    def to_images(self, pixels: torch.Tensor) -> list:
        """PIL images from pixels in [-1, 1]: RGB, or grayscale ("L") for one channel."""
        if pixels.shape[1] != 1:
            return to_pil(pixels)
        from PIL import Image

        return [Image.fromarray(im[0].numpy(), mode="L") for im in to_uint8(pixels.cpu())]
