"""What every edit control shares: the :class:`Control` hooks, the running edit's :class:`EditContext`, and the
attention processors that let a control see both branches at every attention layer.

A two-branch edit (:meth:`bdia.editing.Editor.edit` with ``control=`` or ``mask=``) runs the solver on a batch
of 2B: rows 0..B-1 are the source branch (the inversion's prompt and guidance, the inverted latents: it walks the
inversion's states back) and rows B..2B-1 the target branch (the new prompt, the same start). A control may

- act on the whole solver state after every move (``after_step``: masks, LocalBlend), and
- act inside the network's attention layers (``attention = True``): for each layer it may ``capture`` what it
  needs from the source branch and ``apply`` it to the target branch's output.

The network sees the branches either one after the other (``branches="sequential"``, the default: the source
branch's calls are exactly those of a reconstruction, so it is exact to the bit) or as one batch per step
(``branches="batched"``: [source, target] in one call, cheaper on a GPU; matrix kernels are not batch-invariant,
so the source branch then matches the reconstruction only to float rounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

__all__ = ["AttentionLayer", "Control", "EditContext", "attention_network", "install_processors", "tokenizer_of"]


class EditContext:
    """What controls see of the running edit: the grid, the branch batch, the prompts and the current step.

    ``step`` is the grid index of the move being made (0..N-1; BDIA edits start at 1, its first move being part
    of the inversion); ``phase`` is "source", "target" or "both" during a network call; ``halves`` is 2 when that
    call's batch is [unconditional, conditional] (classifier-free guidance), else 1.
    """

    def __init__(
        self,
        backend: Any,
        num_steps: int,
        batch: int,
        source_prompts: Sequence[str],
        target_prompts: Sequence[str],
        latent_shape: Sequence[int],
        image_size: tuple[int, int],
    ):
        self.backend = backend
        self.num_steps = int(num_steps)
        self.batch = int(batch)
        self.source_prompts, self.target_prompts = list(source_prompts), list(target_prompts)
        self.latent_shape = tuple(latent_shape)
        self.image_size = image_size
        self.step = 0
        self.phase = "both"
        self.halves = 1


class Control:
    """Base of the edit controls. Subclasses override the hooks they need; the base changes nothing.

    ``attention``: the control acts inside attention layers (refused on a backend without them, e.g. digits).
    ``install(backend, context)`` before the edit's first step, ``remove()`` after its last (also on error);
    ``after_step(step, state)`` returns the solver state to go on with (both branches, every tensor of it).
    """

    attention: ClassVar[bool] = False
    name: ClassVar[str] = "control"

    def install(self, backend: Any, context: EditContext) -> None:
        self.context = context

    def remove(self) -> None:
        """Undo :meth:`install` (processors restored); called after the edit, also when it fails."""

    def after_step(self, step: int, state: tuple) -> tuple:
        return state

    # ----- attention hooks (attention controls) ----------------------------------------------------
    def active(self, layer: AttentionLayer, step: int) -> bool:
        """Whether this control touches ``layer`` at ``step`` (inactive layers run the pipeline's processor only)."""
        return False

    def capture(self, layer: AttentionLayer, attn: Any, hidden: torch.Tensor, encoder: torch.Tensor | None) -> Any:
        """What the target branch needs from the source branch's rows (``hidden``: that branch's rows)."""
        return None

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
        """The target branch's output given the pipeline processor's ``out`` for its rows; ``call(hidden, encoder)``
        runs the pipeline's processor (with this call's other arguments) on other rows or keys and values."""
        return out


class AttentionLayer:
    """One attention module of the network: its processor name, kind and place in execution order."""

    def __init__(self, name: str, index: int, self_index: int, cross: bool, place: str):
        self.name, self.index, self.self_index, self.cross, self.place = name, index, self_index, cross, place

    def __repr__(self) -> str:
        return f"AttentionLayer({self.name!r}, {'cross' if self.cross else 'self'}, {self.place})"


def attention_network(backend: Any) -> Any | None:
    """The diffusers network whose attention processors controls replace (a UNet or a transformer), or None."""
    for owner in (backend, getattr(backend, "pipe", None)):
        for attr in ("unet", "transformer"):
            net = getattr(owner, attr, None) if owner is not None else None
            if net is not None and hasattr(net, "attn_processors"):
                return net
    return None


def tokenizer_of(backend: Any) -> Any | None:
    """The tokenizer of the backend's (first) text encoder, or None."""
    for owner in (backend, getattr(backend, "pipe", None)):
        tok = getattr(owner, "tokenizer", None) if owner is not None else None
        if tok is not None:
            return tok
    return None


_PLACE_ORDER = {"down": 0, "mid": 1, "up": 2, "other": 3}


def _place(name: str) -> str:
    for place, prefix in (("down", "down_blocks"), ("mid", "mid_block"), ("up", "up_blocks")):
        if name.startswith(prefix):
            return place
    return "other"


def network_layers(net: Any) -> list[AttentionLayer]:
    """The network's attention layers in execution order (down, mid, up blocks), self/cross told by the name
    (diffusers' transformer blocks call self-attention ``attn1`` and cross-attention ``attn2``)."""
    names = sorted(net.attn_processors, key=lambda n: _PLACE_ORDER[_place(n)])  # stable: keeps order within blocks
    layers, n_self = [], 0
    for k, name in enumerate(names):
        cross = ".attn2." in name
        layers.append(AttentionLayer(name, k, -1 if cross else n_self, cross, _place(name)))
        n_self += 0 if cross else 1
    return layers


class _ControlledProcessor:
    """Runs the pipeline's own processor on every call (so the source branch computes exactly what a
    reconstruction does), then lets the control replace the target branch's rows where it is active."""

    def __init__(self, original: Any, layer: AttentionLayer, control: Control, context: EditContext):
        self.original, self.layer, self.control, self.context = original, layer, control, context
        self.captured: Any = None

    def __call__(self, attn: Any, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        out = self.original(attn, hidden_states, *args, **kwargs)
        ctx = self.context
        if not self.control.active(self.layer, ctx.step):
            return out
        # diffusers passes (encoder_hidden_states, attention_mask, temb or image_rotary_emb) by position or name
        encoder = args[0] if args else kwargs.get("encoder_hidden_states")
        mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
        if mask is not None:
            raise ValueError(f"{self.control.name} does not support attention masks (layer {self.layer.name})")
        rest, named = args[1:], {k: v for k, v in kwargs.items() if k != "encoder_hidden_states"}

        def call(hidden: torch.Tensor, enc: torch.Tensor | None) -> Any:
            """The pipeline's processor on other rows (``enc``: their encoder states, or other keys and values)."""
            return self.original(attn, hidden, enc, *rest, **named)

        if ctx.phase == "source":
            self.captured = self.control.capture(self.layer, attn, hidden_states, encoder)
            return out
        if ctx.phase == "target":
            captured, self.captured = self.captured, None
            if captured is None:
                raise RuntimeError(f"layer {self.layer.name}: the target branch ran before the source branch")
            return self.control.apply(self.layer, attn, hidden_states, encoder, captured, out, call)
        # "both": rows [source, target] inside each half
        if not isinstance(out, torch.Tensor) or any(isinstance(a, torch.Tensor) for a in rest):
            raise ValueError(f"{self.control.name} runs with branches='sequential' on this model")
        src, tgt = _branch_rows(hidden_states.shape[0], ctx.halves, ctx.batch, hidden_states.device)
        enc_s = None if encoder is None else encoder[src]
        enc_t = None if encoder is None else encoder[tgt]
        captured = self.control.capture(self.layer, attn, hidden_states[src], enc_s)
        new = self.control.apply(self.layer, attn, hidden_states[tgt], enc_t, captured, out[tgt], call)
        out = out.clone()
        out[tgt] = new
        return out


def _branch_rows(n: int, halves: int, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices of the source and target branches in a batched call of ``halves`` x [source B, target B]."""
    if n != halves * 2 * batch:
        raise RuntimeError(f"an attention call of batch {n} is not {halves} x 2 branches x {batch} images")
    rows = torch.arange(n, device=device).reshape(halves, 2, batch)
    return rows[:, 0].reshape(-1), rows[:, 1].reshape(-1)


def install_processors(net: Any, control: Control, context: EditContext) -> dict[str, Any]:
    """Wrap every attention processor of ``net`` for ``control``; returns the originals (to restore them)."""
    originals = dict(net.attn_processors)
    layers = network_layers(net)
    net.set_attn_processor({ly.name: _ControlledProcessor(originals[ly.name], ly, control, context) for ly in layers})
    return originals


def cond_rows(x: torch.Tensor, batch: int) -> torch.Tensor:
    """The conditional rows of one branch's rows (the last ``batch``: after the unconditional half, if any)."""
    return x[x.shape[0] - batch :]


class Explicit:
    """Attention computed with explicit probabilities, the same operations as diffusers' ``AttnProcessor``
    (so, over that processor, an unchanged map gives the pipeline's output to the bit)."""

    def __init__(self, attn: Any, hidden: torch.Tensor, encoder: torch.Tensor | None):
        if attn.spatial_norm is not None:
            raise ValueError("attention controls do not support spatially normalised attention layers")
        self.attn, self.residual, self.ndim = attn, hidden, hidden.ndim
        if self.ndim == 4:
            b, c, h, w = hidden.shape
            self.shape4 = (b, c, h, w)
            hidden = hidden.view(b, c, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            hidden = attn.group_norm(hidden.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden)
        if encoder is None:
            encoder = hidden
        elif attn.norm_cross:
            encoder = attn.norm_encoder_hidden_states(encoder)
        self.key = attn.head_to_batch_dim(attn.to_k(encoder))
        self.value = attn.head_to_batch_dim(attn.to_v(encoder))
        self.query = attn.head_to_batch_dim(query)
        self.heads = attn.heads

    def probs(self) -> torch.Tensor:
        """(B * heads, queries, keys) attention probabilities."""
        return self.attn.get_attention_scores(self.query, self.key, None)

    def output(self, probs: torch.Tensor) -> torch.Tensor:
        attn = self.attn
        hidden = torch.bmm(probs, self.value)
        hidden = attn.batch_to_head_dim(hidden)
        hidden = attn.to_out[0](hidden)
        hidden = attn.to_out[1](hidden)
        if self.ndim == 4:
            hidden = hidden.transpose(-1, -2).reshape(*self.shape4)
        if attn.residual_connection:
            hidden = hidden + self.residual
        return hidden / attn.rescale_output_factor
