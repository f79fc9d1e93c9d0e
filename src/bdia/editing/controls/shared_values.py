"""Shared attention values for the flow transformers (SD3, Flux), in the manner of RF-Solver-Edit and FireFlow.

    editor.edit(inv, "a photo of a dog", control=SharedValues(steps=3))

In the chosen attention layers and for the first ``steps`` steps of the edit, the target branch's attention uses
the source branch's values for the image tokens (its queries, keys and its text tokens' values stay its own), so
the target keeps the source's appearance where the new prompt does not pull it away. The layer runs the
pipeline's own processor with its value projection answering the source's values for the image tokens, so any
processor works and a same-prompt edit gives the reconstruction exactly. Both halves of a guided batch (SD3's
classifier-free guidance) read their source counterpart.

``layers``: indices into the network's attention layers in execution order (Flux: the double-stream blocks,
then the single-stream ones; SD3: its joint blocks); default the second half of them. These defaults are ours,
not measured against the papers' settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from .base import AttentionLayer, Control, EditContext, attention_network, network_layers

__all__ = ["SharedValues"]


class _SourceValues(torch.nn.Module):
    """A value projection whose last ``count`` tokens answer the source branch's values."""

    def __init__(self, projection: torch.nn.Module, values: torch.Tensor, count: int):
        super().__init__()
        self.projection, self.values, self.count = projection, values, count

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.projection(x)
        if v.shape != self.values.shape:
            raise RuntimeError(f"source values {tuple(self.values.shape)} do not fit the target's {tuple(v.shape)}")
        v = v.clone()
        v[:, v.shape[1] - self.count :] = self.values[:, v.shape[1] - self.count :]
        return v


class SharedValues(Control):
    """Shared image-token values: see the module."""

    attention: ClassVar[bool] = True
    name: ClassVar[str] = "shared values"

    def __init__(self, steps: int = 5, layers: Sequence[int] | None = None):
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be a number of steps >= 0, got {steps!r}")
        if layers is not None:
            layers = list(layers)
            if not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in layers):
                raise ValueError(f"layers must be attention layer indices >= 0, got {layers!r}")
        self.steps, self.layers = steps, layers
        self.applied: list[tuple[int, str]] = []

    def __repr__(self) -> str:
        return f"SharedValues(steps={self.steps}, layers={self.layers})"

    def install(self, backend: Any, context: EditContext) -> None:
        super().install(backend, context)
        net = attention_network(backend)
        if net is None or type(net).__name__ not in ("SD3Transformer2DModel", "FluxTransformer2DModel"):
            raise ValueError(
                "shared values act on the joint attention of SD3 and Flux transformers; this "
                f"{getattr(backend, 'family', '?')} model has none (UNets: PromptToPrompt, MutualSelfAttention)"
            )
        if context.batch and getattr(backend, "family", "") == "flux" and len(context.latent_shape) != 3:
            raise ValueError(f"unexpected Flux latent shape {context.latent_shape}")
        n = len(network_layers(net))
        chosen = list(range(n // 2, n)) if self.layers is None else self.layers
        if any(k >= n for k in chosen):
            raise ValueError(f"layers {chosen} go past the network's {n} attention layers (0..{n - 1})")
        self.chosen = set(chosen)
        # image tokens: Flux's packed latents are (B, tokens, C); SD3's (B, C, h, w) in 2x2 patches
        shape = context.latent_shape
        self.image_tokens = shape[1] if len(shape) == 3 else (shape[2] // 2) * (shape[3] // 2)
        self.applied = []

    def active(self, layer: AttentionLayer, step: int) -> bool:
        return step < self.steps and layer.index in self.chosen

    def capture(self, layer: AttentionLayer, attn: Any, hidden: torch.Tensor, encoder: torch.Tensor | None) -> Any:
        return attn.to_v(hidden)

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
        if hidden.shape[0] != captured.shape[0]:
            raise ValueError("shared values need both branches guided alike (the same guidance on or off)")
        projection = attn.to_v
        count = min(self.image_tokens, hidden.shape[1])
        attn.to_v = _SourceValues(projection, captured, count)
        try:
            result = call(hidden, encoder)
        finally:
            attn.to_v = projection
        self.applied.append((self.context.step, layer.name))
        return result
