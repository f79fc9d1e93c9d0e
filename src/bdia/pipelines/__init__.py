"""Real-image inversion and editing: one :class:`Editor` over model backends (Stable Diffusion via
the ``diffusers`` extra, Stable Diffusion 3 and Flux, the embedded digits model), saved inversions, a diffusers-compatible BDIA
scheduler, and the image commands of the CLI.

    editor = bdia.pipelines.Editor.from_pretrained("path/or/hub-id", torch_dtype=torch.float16)
    inv = editor.invert("cat.png", "a photo of a cat", num_steps=50)
    editor.edit(inv, "a photo of a dog").images[0].save("dog.png")
    digits = bdia.pipelines.Editor.from_pretrained("digits")   # no diffusers needed

Names are imported on first use, so ``import bdia.pipelines`` does not import diffusers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Editor": ".editor",
    "Backend": ".editor",
    "EditResult": ".editor",
    "load_editor": ".editor",
    "StableDiffusionBackend": ".diffusers_model",
    "DigitsBackend": ".digits_editor",
    "make_solver": "..solvers",
    "ImageInversion": ".saved",
    "save_inversion": ".saved",
    "load_inversion": ".saved",
    "BDIAScheduler": ".scheduler",
    "BDIAInverseScheduler": ".scheduler",
    "BDIAFlowScheduler": ".flow_scheduler",
    "SD3Backend": ".flow_backend",
    "FluxBackend": ".flow_backend",
    "UNetModel": ".diffusers_model",
    "encode_prompts": ".diffusers_model",
    "ImageSizeWarning": ".images",
    "ImageConversionWarning": ".images",
    "ImageReadError": ".images",
    "read_image": ".images",
    "load_pipeline": ".loading",
    "model_family": ".loading",
    "UnsafeWeightsError": ".loading",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
