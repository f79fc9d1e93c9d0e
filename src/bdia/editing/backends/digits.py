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

from typing import Any

import torch

from .pixels import PixelBackend

__all__ = ["DIGITS_MODEL_ID", "DigitsBackend", "parse_class"]

DIGITS_MODEL_ID = "digits"  # the embedded model's id, registered in bdia.editing.backends


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


class DigitsBackend(PixelBackend):
    """The embedded digits model (see the module): 16x16 grayscale pixels are the latents, prompts are classes.

    Args:
        model: a :class:`bdia.digits.DigitsUNet` (``bdia.digits.load_model()``; :meth:`load` does it).
    """

    family = "digits"
    default_guidance = 2.0
    model_id = DIGITS_MODEL_ID
    class_name = "DigitsUNet"
    package = "bdia.digits"
    image_mode = "L"
    alpha_background = (0, 0, 0, 255)  # the model knows light digits on a dark background

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

    # ----- images the model does not know ---------------------------------------------------------------
    def _conversion_is_visible(self, image: Any) -> bool:
        """Gray stored as colour converts silently; colour to gray is warned about."""
        import numpy as np

        if image.mode not in ("RGB", "RGBA", "P"):
            return True
        arr = np.asarray(image.convert("RGB"))
        return not bool((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all())

    def _check_pixels(self, pixels: Any, index: int) -> None:
        if pixels.mean() > 127.5:
            import warnings

            warnings.warn(
                f"image {index} is mostly light: the digits model knows light digits on a dark "
                "background (invert the image's colours if it is dark on light)",
                stacklevel=5,
            )
