"""Real-image inversion and editing: one :class:`Editor` over model backends (:mod:`.backends`, one module per
family, found through a registry).

    editor = bdia.editing.Editor.from_pretrained("digits")      # or a diffusers folder / hub id
    inv = editor.invert("three.png", "3", num_steps=50)
    editor.edit(inv, "8").images[0].save("eight.png")

Names load on first use, so ``import bdia.editing`` does not import diffusers.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "Editor": ".editor",
    "EditResult": ".editor",
    "compare_pixels": ".editor",
    "load_editor": ".editor",
    "Backend": ".backends",
    "ModelChoice": ".backends",
    "backend_class": ".backends",
    "load_backend": ".backends",
    "register_backend": ".backends",
    "resolve_model_choice": ".backends",
    "Control": ".controls",
    "LocalBlend": ".controls",
    "Mask": ".controls",
    "MutualSelfAttention": ".controls",
    "PromptToPrompt": ".controls",
    "SharedValues": ".controls",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
