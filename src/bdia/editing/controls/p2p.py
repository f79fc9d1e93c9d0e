"""Prompt-to-Prompt (Hertz et al., 2022) on the exact source branch, for UNet models (SD 1.x/2.x/XL, scenes).

    p2p = PromptToPrompt(cross_steps=0.8, self_steps=0.4, blend=("circle", "square"), reweight={"large": 2.0})
    editor.edit(inv, "a large red square on a gray background", control=p2p)

The rules are those of the authors' reference code (and of diffusers' community ``Prompt2PromptPipeline``,
which mirrors it), applied to the conditional half of the guided batch only:

- cross-attention: the target's maps become the source's maps carried over to the target prompt's tokens,
  ``mapped * alpha + (1 - alpha) * target`` with ``alpha`` 1 inside the window. ``replace`` (prompts of the
  same number of words) maps token to token (a word split into several tokens shares its map); ``refine``
  aligns the two token sequences globally (match +1, mismatch -1, gap 0) and keeps the target's own map for
  tokens that have no source counterpart. ``reweight`` multiplies chosen target words' maps by a factor (on top
  of the mapping). The window of a fraction ``c`` is steps ``int(c0 (N + 1)) <= i < int(c1 (N + 1))``.
- self-attention: the target's maps become the source's, at layers with at most as many queries as the blend
  resolution has cells, for steps ``int(s0 N) <= i < int(s1 N)``.
- LocalBlend: the cross-attention maps of the blend words (source words in the source prompt, target words in
  the target prompt), summed over the steps so far at the resolution latent/4 (16x16 for SD at 512),
  averaged over layers and heads, max-pooled 3x3, resized to the latent grid, divided by their maximum and
  thresholded (0.3); the union of the two masks keeps the target where it is 1 and the source elsewhere,
  ``s + m (t - s)``, on every tensor of the solver state after every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from .base import AttentionLayer, Control, EditContext, Explicit, attention_network, cond_rows, tokenizer_of
from .mask import blend_state

__all__ = [
    "LocalBlend",
    "PromptToPrompt",
    "refinement_mapper",
    "replacement_mapper",
    "step_window",
    "word_indices",
]

MODES = ("auto", "replace", "refine", "none")


def word_indices(text: str, word: str | int, tokenizer: Any) -> list[int]:
    """Token positions (BOS = 0) of ``word`` (a word of ``text`` split on spaces, or its index) in ``text``.

    As the reference: the text's tokens are decoded one by one and their lengths summed until they cover the
    current word, so a word split into several tokens gives all its positions.
    """
    words = text.split(" ")
    places = [i for i, w in enumerate(words) if w == word] if isinstance(word, str) else [int(word)]
    out: list[int] = []
    if not places:
        return out
    pieces = [tokenizer.decode([t]).strip("#") for t in tokenizer.encode(text)][1:-1]
    length, ptr = 0, 0
    for i, piece in enumerate(pieces):
        length += len(piece)
        if ptr in places:
            out.append(i + 1)
        if ptr < len(words) and length >= len(words[ptr]):
            ptr, length = ptr + 1, 0
    return out


def replacement_mapper(source: str, target: str, tokenizer: Any, length: int) -> torch.Tensor:
    """(length, length) matrix M with target maps = source maps @ M, for prompts of the same number of words."""
    ws, wt = source.split(" "), target.split(" ")
    if len(ws) != len(wt):
        raise ValueError(
            f"replace needs prompts with the same number of words, got {len(ws)} ({source!r}) and "
            f"{len(wt)} ({target!r}); use mode='refine'"
        )
    swapped = [i for i in range(len(wt)) if wt[i] != ws[i]]
    src_inds = [word_indices(source, i, tokenizer) for i in swapped]
    tgt_inds = [word_indices(target, i, tokenizer) for i in swapped]
    mapper = torch.zeros(length, length, dtype=torch.float64)
    i = j = k = 0
    while i < length and j < length:
        if k < len(src_inds) and src_inds[k] and src_inds[k][0] == i:
            a, b = src_inds[k], tgt_inds[k]
            if len(a) == len(b):
                mapper[a, b] = 1.0
            else:
                for t in b:
                    mapper[a, t] = 1.0 / len(b)
            k += 1
            i, j = i + len(a), j + len(b)
        elif k < len(src_inds):
            mapper[i, j] = 1.0
            i, j = i + 1, j + 1
        else:
            mapper[j, j] = 1.0  # the reference's rule after the last swapped word
            i, j = i + 1, j + 1
    return mapper.float()


def _align(x: Sequence[int], y: Sequence[int]) -> list[tuple[int, int]]:
    """Global alignment (match +1, mismatch -1, gap 0); for each target token (j, source index or -1)."""
    n, m = len(x), len(y)
    score = [[0] * (m + 1) for _ in range(n + 1)]
    trace = [[0] * (m + 1) for _ in range(n + 1)]
    for j in range(1, m + 1):
        trace[0][j] = 1
    for i in range(1, n + 1):
        trace[i][0] = 2
    trace[0][0] = 4
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            left, up = score[i][j - 1], score[i - 1][j]
            diag = score[i - 1][j - 1] + (1 if x[i - 1] == y[j - 1] else -1)
            best = max(left, up, diag)
            score[i][j] = best
            trace[i][j] = 1 if best == left else 2 if best == up else 3
    out: list[tuple[int, int]] = []
    i, j = n, m
    while i > 0 or j > 0:
        move = trace[i][j]
        if move == 3:
            i, j = i - 1, j - 1
            out.append((j, i))
        elif move == 1:
            j -= 1
            out.append((j, -1))
        elif move == 2:
            i -= 1
        else:
            break
    return out[::-1]


def refinement_mapper(source: str, target: str, tokenizer: Any, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, alpha): target token j takes the source map at ``index[j]`` where ``alpha[j]`` is 1, and keeps its
    own where it is 0 (tokens added by the target prompt)."""
    x, y = tokenizer.encode(source), tokenizer.encode(target)
    pairs = _align(x, y)
    alphas = torch.ones(length)
    index = torch.zeros(length, dtype=torch.int64)
    for k, (_, src) in enumerate(pairs[:length]):
        alphas[k] = float(src != -1)
        index[k] = src
    if len(pairs) < length:
        index[len(pairs) :] = len(y) + torch.arange(length - len(pairs))
    return index, alphas


def step_window(bounds: float | tuple[float, float], count: int) -> tuple[int, int]:
    """(start, end) step indices of a window given as a fraction (0, f) or a pair of fractions of ``count``."""
    lo, hi = (0.0, float(bounds)) if isinstance(bounds, (int, float)) else (float(bounds[0]), float(bounds[1]))
    return int(lo * count), int(hi * count)


def _fractions(name: str, value: Any) -> float | tuple[float, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} must be a fraction of the steps in [0, 1], got {value!r}")
        return float(value)
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a fraction in [0, 1] or a pair (start, end) of them, got {value!r}") from None
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"{name} must satisfy 0 <= start <= end <= 1, got ({lo}, {hi})")
    return lo, hi


class LocalBlend:
    """LocalBlend's settings: the words whose maps make the mask (in the source and in the target prompt)."""

    def __init__(self, source_words: str | Sequence[str], target_words: str | Sequence[str], threshold: float = 0.3):
        self.source_words = [source_words] if isinstance(source_words, str) else list(source_words)
        self.target_words = [target_words] if isinstance(target_words, str) else list(target_words)
        if not self.source_words and not self.target_words:
            raise ValueError("LocalBlend needs at least one word (of the source or the target prompt)")
        if not 0.0 <= float(threshold) < 1.0:
            raise ValueError(f"LocalBlend threshold must be in [0, 1), got {threshold!r}")
        self.threshold = float(threshold)

    def __repr__(self) -> str:
        return f"LocalBlend({self.source_words}, {self.target_words}, threshold={self.threshold})"


class PromptToPrompt(Control):
    """Prompt-to-Prompt: see the module.

    Args:
        mode: "replace" (word swap: prompts of the same number of words), "refine" (token alignment),
            "none" (reweighting of the source maps only) or "auto" (replace when the word counts match, else refine).
        cross_steps: fraction of the steps (or a (start, end) pair) with cross-attention injection; default 0.8.
        self_steps: the same for self-attention injection; default 0.4.
        reweight: {target word: factor} scaling those words' cross-attention maps.
        blend: a :class:`LocalBlend`, or a pair (source words, target words).
        blend_threshold: LocalBlend's threshold when ``blend`` is a pair (default 0.3).
    """

    attention: ClassVar[bool] = True
    name: ClassVar[str] = "prompt-to-prompt"

    def __init__(
        self,
        mode: str = "auto",
        *,
        cross_steps: float | tuple[float, float] = 0.8,
        self_steps: float | tuple[float, float] = 0.4,
        reweight: dict[str, float] | None = None,
        blend: LocalBlend | tuple[Any, Any] | None = None,
        blend_threshold: float = 0.3,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.cross_steps = _fractions("cross_steps", cross_steps)
        self.self_steps = _fractions("self_steps", self_steps)
        self.reweight = dict(reweight or {})
        for word, factor in self.reweight.items():
            if not isinstance(word, str) or not word or " " in word:
                raise ValueError(f"reweight keys are single words of the target prompt, got {word!r}")
            if not isinstance(factor, (int, float)) or isinstance(factor, bool) or not factor >= 0:
                raise ValueError(f"reweight factor for {word!r} must be a number >= 0, got {factor!r}")
        if blend is not None and not isinstance(blend, LocalBlend):
            blend = LocalBlend(*blend, threshold=blend_threshold)
        self.blend = blend
        self.applied: list[tuple[int, str]] = []
        # LocalBlend's mask of the last step, (B, 1, H, W) in {0, 1} (None without blend): to look at what it
        # keeps, e.g. a diffuse attention map gives a mask of all ones and so no blending at all
        self.last_blend_mask: torch.Tensor | None = None

    def __repr__(self) -> str:
        return (
            f"PromptToPrompt(mode={self.mode!r}, cross_steps={self.cross_steps}, self_steps={self.self_steps}, "
            f"reweight={self.reweight}, blend={self.blend})"
        )

    # ----- setup -------------------------------------------------------------------------------------
    def install(self, backend: Any, context: EditContext) -> None:
        super().install(backend, context)
        net, tok = attention_network(backend), tokenizer_of(backend)
        if net is None or tok is None or type(net).__name__ != "UNet2DConditionModel":
            raise ValueError(
                "Prompt-to-Prompt needs a UNet with cross-attention to a tokenized prompt (Stable Diffusion "
                f"1.x/2.x/XL, scenes); this {getattr(backend, 'family', '?')} model has none"
            )
        self.applied = []
        self.last_blend_mask = None
        n, batch = context.num_steps, context.batch
        length = int(tok.model_max_length)
        self.length = length
        device = next(net.parameters()).device
        mappers, indices, alphas, equalizers = [], [], [], []
        pairs = list(zip(context.source_prompts, context.target_prompts))
        mode = self.mode
        if mode == "auto":  # one mapping for the whole batch: replace only when every pair can take it
            mode = "replace" if all(len(s.split(" ")) == len(t.split(" ")) for s, t in pairs) else "refine"
        self.resolved_mode = mode
        for src, tgt in pairs:
            if mode == "replace":
                mappers.append(replacement_mapper(src, tgt, tok, length))
            elif mode == "refine":
                index, alpha = refinement_mapper(src, tgt, tok, length)
                indices.append(index)
                alphas.append(alpha)
            eq = torch.ones(length)
            for word, factor in self.reweight.items():
                inds = word_indices(tgt, word, tok)
                if not inds:
                    raise ValueError(f"reweight word {word!r} is not a word of the target prompt {tgt!r}")
                eq[inds] = float(factor)
            equalizers.append(eq)
        self.mapper = torch.stack(mappers).to(device) if mappers else None
        self.index = torch.stack(indices).to(device) if indices else None
        self.alphas = torch.stack(alphas).reshape(batch, 1, 1, length).to(device) if alphas else None
        self.equalizer = torch.stack(equalizers).to(device) if self.reweight else None
        # cross window: the reference's per-step alphas over N + 1 rows
        lo, hi = step_window(self.cross_steps, n + 1)
        self.cross_alpha = torch.zeros(n + 1, device=device)
        self.cross_alpha[lo:hi] = 1.0
        self.self_window = step_window(self.self_steps, n)
        # LocalBlend resolution: latent/4 (16x16 for SD at 512), else the network's coarsest cross-attention grid
        h, w = context.latent_shape[-2:]
        grids: set[tuple[int, int]] = set()
        for name in net.attn_processors:
            grid = _layer_grid(name, (h, w), net)
            if grid is not None and ".attn2." in name:
                grids.add(grid)
        want = (h // 4, w // 4)
        self.res = want if want in grids else (min(grids, key=lambda g: g[0] * g[1]) if grids else want)
        self.grids = {name: _layer_grid(name, (h, w), net) for name in net.attn_processors}
        self.store: dict[str, list[torch.Tensor | None]] = {}
        if self.blend is not None:
            self.blend_alpha = [
                self._word_alpha(context.source_prompts, self.blend.source_words, tok, device),
                self._word_alpha(context.target_prompts, self.blend.target_words, tok, device),
            ]

    def _word_alpha(self, prompts: Sequence[str], words: Sequence[str], tok: Any, device: Any) -> torch.Tensor:
        alpha = torch.zeros(len(prompts), 1, 1, 1, 1, self.length)
        for b, prompt in enumerate(prompts):
            for word in words:
                inds = word_indices(prompt, word, tok)
                if not inds:
                    raise ValueError(f"blend word {word!r} is not a word of the prompt {prompt!r}")
                alpha[b, ..., inds] = 1.0
        return alpha.to(device)

    # ----- attention -----------------------------------------------------------------------------------
    def _stores(self, layer: AttentionLayer) -> bool:
        return self.blend is not None and layer.cross and self.grids.get(layer.name) == self.res

    def _self_on(self, layer: AttentionLayer, step: int) -> bool:
        grid = self.grids.get(layer.name)
        small = grid is not None and grid[0] * grid[1] <= self.res[0] * self.res[1]
        return small and self.self_window[0] <= step < self.self_window[1]

    def active(self, layer: AttentionLayer, step: int) -> bool:
        if layer.cross:
            return self._stores(layer) or bool(self.cross_alpha[min(step, len(self.cross_alpha) - 1)] != 0)
        return self._self_on(layer, step)

    def capture(self, layer: AttentionLayer, attn: Any, hidden: torch.Tensor, encoder: torch.Tensor | None) -> Any:
        b = self.context.batch
        probs = Explicit(attn, cond_rows(hidden, b), None if encoder is None else cond_rows(encoder, b)).probs()
        if self._stores(layer):
            self._accumulate(layer.name, 0, probs)
        return probs

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
        b, step = self.context.batch, self.context.step
        ex = Explicit(attn, cond_rows(hidden, b), None if encoder is None else cond_rows(encoder, b))
        probs = ex.probs()
        heads = probs.shape[0] // b
        base = captured.reshape(b, heads, *captured.shape[1:])
        mine = probs.reshape(b, heads, *probs.shape[1:])
        if layer.cross:
            if base.shape[-1] != self.length:
                raise ValueError(f"cross-attention over {base.shape[-1]} tokens, the tokenizer makes {self.length}")
            alpha = self.cross_alpha[min(step, len(self.cross_alpha) - 1)]
            new = (self._replace_cross(base, mine) * alpha + (1 - alpha) * mine).to(probs.dtype)
        else:
            alpha, new = None, base
        new = new.reshape(probs.shape)
        if self._stores(layer):
            self._accumulate(layer.name, 1, new)
        if alpha is None or bool(alpha != 0):  # an injection (not only the maps LocalBlend keeps)
            self.applied.append((step, layer.name))
        result = out.clone()
        result[result.shape[0] - b :] = ex.output(new)
        return result

    def _replace_cross(self, base: torch.Tensor, mine: torch.Tensor) -> torch.Tensor:
        """The source maps carried to the target's tokens (then reweighted): (B, heads, queries, tokens)."""
        if self.mapper is not None:
            base = torch.einsum("bhpw,bwn->bhpn", base, self.mapper.to(base.dtype))
        elif self.index is not None and self.alphas is not None:
            picked = torch.stack([base[k][..., self.index[k]] for k in range(base.shape[0])])
            base = picked * self.alphas + mine * (1 - self.alphas)
        if self.equalizer is not None:
            base = base * self.equalizer[:, None, None, :]
        return base

    def _accumulate(self, name: str, branch: int, probs: torch.Tensor) -> None:
        """Running sum over steps of one branch's maps at one layer (what LocalBlend reads)."""
        slot = self.store.setdefault(name, [None, None])
        held = slot[branch]
        slot[branch] = probs.detach().clone() if held is None else held + probs

    # ----- LocalBlend --------------------------------------------------------------------------------
    def after_step(self, step: int, state: tuple) -> tuple:
        if self.blend is None or not self.store:
            return state
        mask = self.blend_mask(state[0].shape[2:])
        self.last_blend_mask = mask
        return blend_state(state, self.context.batch, mask, reference_rule=True)

    def blend_mask(self, size: Sequence[int]) -> torch.Tensor:
        """The union of the source and target word masks, (B, 1, *size), as float."""
        b = self.context.batch
        h, w = self.res
        masks = []
        for branch in (0, 1):
            maps = [m.reshape(b, -1, 1, h, w, self.length) for s in self.store.values() if (m := s[branch]) is not None]
            cat = torch.cat(maps, dim=1)
            m = (cat * self.blend_alpha[branch]).sum(-1).mean(1)
            m = F.max_pool2d(m, (3, 3), (1, 1), padding=(1, 1))
            m = F.interpolate(m, size=tuple(size))
            m = m / m.max(2, keepdim=True)[0].max(3, keepdim=True)[0]
            masks.append(m.gt(self.blend.threshold))  # type: ignore[union-attr]
        return (masks[0] | masks[1]).float()

    def remove(self) -> None:
        self.store = {}


def _layer_grid(name: str, latent: tuple[int, int], net: Any) -> tuple[int, int] | None:
    """The query grid of a UNet attention layer from its block: down block i works at latent / 2^i."""
    n = len(net.config.block_out_channels)
    parts = name.split(".")
    if parts[0] == "down_blocks":
        level = int(parts[1])
    elif parts[0] == "up_blocks":
        level = n - 1 - int(parts[1])
    elif parts[0] == "mid_block":
        level = n - 1
    else:
        return None
    h, w = latent
    for _ in range(level):
        h, w = (h + 1) // 2, (w + 1) // 2
    return h, w
