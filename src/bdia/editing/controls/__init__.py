"""Edit controls over an exact source branch (one module each): :class:`Mask` (every model),
:class:`PromptToPrompt` and :class:`MutualSelfAttention` (UNet models). See docs/editing.md.

    editor.edit(inv, "a large blue circle on a gray background", control=PromptToPrompt(), mask="mask.png")

Names load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Control": ".base",
    "EditContext": ".base",
    "Mask": ".mask",
    "LocalBlend": ".p2p",
    "PromptToPrompt": ".p2p",
    "MutualSelfAttention": ".masactrl",
    "SharedValues": ".shared_values",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
