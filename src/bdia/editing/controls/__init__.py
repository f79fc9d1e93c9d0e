"""Edit controls over an exact source branch (one module each): :class:`Mask` (every model),
:class:`PromptToPrompt` and :class:`MutualSelfAttention` (UNet models). See docs/editing.md.

    editor.edit(inv, "a large blue circle on a gray background", control=PromptToPrompt(), mask="mask.png")

Names load on first use.
"""

from __future__ import annotations

from ..._lazy import lazy_exports

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

__getattr__ = lazy_exports(__name__, _EXPORTS)
