"""Mutual self-attention (MasaCtrl, Cao et al., 2023) on the exact source branch, for UNet models.

    editor.edit(inv, "a large red square on a gray background", control=MutualSelfAttention(start_step=4))

From step ``start_step`` and self-attention layer ``start_layer`` on (layers counted in execution order, down,
middle, up), the target branch's self-attention queries read the source branch's keys and values, in the
unconditional and the conditional half alike, as the authors' code does: the target keeps the source's
content and layout while its cross-attention follows the new prompt. The layer runs the pipeline's own
attention processor with the source rows as its keys and values, so any processor (SDPA included) is used as is.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from .base import AttentionLayer, Control, EditContext, attention_network, network_layers

__all__ = ["MutualSelfAttention"]


class MutualSelfAttention(Control):
    """MasaCtrl: see the module. ``start_layer`` None: the last 6/16 of the self-attention layers (the authors'
    10 of SD 1.5's 16); ``end_step`` / ``end_layer`` None: to the end."""

    attention: ClassVar[bool] = True
    name: ClassVar[str] = "mutual self-attention"

    def __init__(
        self,
        start_step: int = 4,
        start_layer: int | None = None,
        *,
        end_step: int | None = None,
        end_layer: int | None = None,
    ):
        for label, v in (
            ("start_step", start_step),
            ("start_layer", start_layer),
            ("end_step", end_step),
            ("end_layer", end_layer),
        ):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"{label} must be a step or layer index >= 0, got {v!r}")
        self.start_step, self.start_layer = start_step, start_layer
        self.end_step, self.end_layer = end_step, end_layer
        self.applied: list[tuple[int, str]] = []

    def __repr__(self) -> str:
        return f"MutualSelfAttention(start_step={self.start_step}, start_layer={self.start_layer})"

    def install(self, backend: Any, context: EditContext) -> None:
        super().install(backend, context)
        net = attention_network(backend)
        if net is None or type(net).__name__ != "UNet2DConditionModel":
            raise ValueError(
                "mutual self-attention needs a UNet with self-attention layers (Stable Diffusion 1.x/2.x/XL, "
                f"scenes); this {getattr(backend, 'family', '?')} model has none"
            )
        n_self = sum(1 for ly in network_layers(net) if not ly.cross)
        self.first_layer = round(n_self * 10 / 16) if self.start_layer is None else self.start_layer
        if self.first_layer >= n_self:
            raise ValueError(f"start_layer {self.first_layer} is past the network's {n_self} self-attention layers")
        if self.start_step >= context.num_steps:
            raise ValueError(f"start_step {self.start_step} is past the edit's {context.num_steps} steps")
        self.applied = []

    def active(self, layer: AttentionLayer, step: int) -> bool:
        if layer.cross or step < self.start_step or layer.self_index < self.first_layer:
            return False
        return (self.end_step is None or step < self.end_step) and (
            self.end_layer is None or layer.self_index < self.end_layer
        )

    def capture(self, layer: AttentionLayer, attn: Any, hidden: torch.Tensor, encoder: torch.Tensor | None) -> Any:
        return hidden

    def apply(
        self,
        layer: AttentionLayer,
        attn: Any,
        hidden: torch.Tensor,
        encoder: torch.Tensor | None,
        captured: Any,
        out: Any,
        call: Any,
    ) -> Any:
        b = self.context.batch
        src_halves = captured.shape[0] // b
        parts = []
        for k in range(hidden.shape[0] // b):
            mine = hidden[k * b : (k + 1) * b]
            theirs = captured[min(k, src_halves - 1) * b : (min(k, src_halves - 1) + 1) * b]
            parts.append(call(mine, theirs))
        self.applied.append((self.context.step, layer.name))
        return torch.cat(parts)
