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

from typing import Any

import torch

from .pixels import PixelBackend

__all__ = ["SCENES_MODEL_ID", "ScenesBackend"]

SCENES_MODEL_ID = "scenes"


class ScenesBackend(PixelBackend):
    """The embedded scenes model (see the module): 32x32 RGB pixels are the latents, prompts are captions.

    Args:
        model: a :class:`bdia.scenes.model.ScenesModel` with ``.schedule`` (``bdia.scenes.load_model()``).
    """

    family = "scenes"
    default_guidance = 3.0
    model_id = SCENES_MODEL_ID
    class_name = "ScenesModel"
    package = "bdia.scenes"
    image_mode = "RGB"
    alpha_background = (128, 128, 128, 255)

    @property
    def unet(self) -> Any:
        """The diffusers UNet, where attention processors are installed."""
        return self.model.unet

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

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
