"""Captions as tokens: a word-level tokenizer over the closed vocabulary, and a tiny text encoder.

:class:`SceneTokenizer` behaves like ``transformers.CLIPTokenizer`` where Prompt-to-Prompt's word
alignment needs it to: ``encode`` adds BOS/EOS, ``decode`` of one id gives its word, calling it on a
list of texts pads to ``model_max_length`` and returns ``.input_ids``. :class:`TextEncoder` is a
small causal transformer (like CLIP's text model: a word's state depends only on the words before
it), trained jointly with the UNet. The empty caption "" is the null caption of classifier-free
guidance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .render import BACKGROUNDS, COLOURS, SHAPES, SIZES

__all__ = ["MAX_LENGTH", "VOCABULARY", "SceneTokenizer", "TextEncoder", "TokenizerOutput"]

BOS, EOS, PAD = "<bos>", "<eos>", "<pad>"
VOCABULARY: tuple[str, ...] = (PAD, BOS, EOS, "a", "and", "on", "background", *SIZES, *COLOURS, *SHAPES, *BACKGROUNDS)
MAX_LENGTH = 24  # BOS + the 19 words of a three-object caption... + EOS, with room to spare


@dataclass
class TokenizerOutput:
    """What calling the tokenizer returns (``input_ids`` (B, L) long when ``return_tensors="pt"``)."""

    input_ids: torch.Tensor | list[list[int]]
    attention_mask: torch.Tensor | list[list[int]]


class SceneTokenizer:
    """Words of the closed vocabulary <-> ids; ``encode("")`` is [BOS, EOS] (the null caption)."""

    def __init__(self, vocabulary: Sequence[str] = VOCABULARY, model_max_length: int = MAX_LENGTH) -> None:
        self.vocabulary = tuple(vocabulary)
        self.model_max_length = int(model_max_length)
        self._ids = {w: i for i, w in enumerate(self.vocabulary)}
        self.pad_token_id, self.bos_token_id, self.eos_token_id = self._ids[PAD], self._ids[BOS], self._ids[EOS]

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary)

    def words(self, text: str) -> list[str]:
        if not isinstance(text, str):
            raise TypeError(f"a caption is a string, got {type(text).__name__}")
        words = text.lower().split()
        specials = (PAD, BOS, EOS)
        for w in words:
            if w not in self._ids or w in specials:
                known = " ".join(v for v in self.vocabulary if v not in specials)
                raise ValueError(f"the word {w!r} is not in the scenes model's vocabulary; use only: {known}")
        return words

    def encode(self, text: str) -> list[int]:
        """[BOS] + word ids + [EOS]; ValueError for an unknown word or a caption that is too long."""
        ids = [self.bos_token_id] + [self._ids[w] for w in self.words(text)] + [self.eos_token_id]
        if len(ids) > self.model_max_length:
            raise ValueError(
                f"the caption has {len(ids) - 2} words; the scenes model takes at most {self.model_max_length - 2}"
            )
        return ids

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        """The words of ``ids`` joined by spaces (special tokens kept unless ``skip_special_tokens``)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        if isinstance(ids, int):
            ids = [ids]
        out = []
        for i in ids:
            if not 0 <= int(i) < len(self.vocabulary):
                raise ValueError(f"token id {i} is outside the vocabulary (0..{len(self.vocabulary) - 1})")
            w = self.vocabulary[int(i)]
            if skip_special_tokens and w in (PAD, BOS, EOS):
                continue
            out.append(w)
        return " ".join(out)

    def __call__(
        self,
        texts: str | Sequence[str],
        padding: str | bool = "max_length",
        max_length: int | None = None,
        truncation: bool = False,
        return_tensors: str | None = None,
    ) -> TokenizerOutput:
        """Token ids of ``texts``, padded with PAD to ``max_length`` (default ``model_max_length``)."""
        if isinstance(texts, str):
            texts = [texts]
        length = self.model_max_length if max_length is None else int(max_length)
        rows = []
        for t in texts:
            ids = self.encode(t)
            if len(ids) > length:
                if not truncation:
                    raise ValueError(f"caption {t!r} is {len(ids)} tokens, longer than max_length={length}")
                ids = ids[: length - 1] + [self.eos_token_id]
            rows.append(ids)
        if padding in ("max_length", True, "longest"):
            width = length if padding == "max_length" else max(len(r) for r in rows)
            mask = [[1] * len(r) + [0] * (width - len(r)) for r in rows]
            rows = [r + [self.pad_token_id] * (width - len(r)) for r in rows]
        else:
            mask = [[1] * len(r) for r in rows]
        if return_tensors == "pt":
            return TokenizerOutput(torch.tensor(rows, dtype=torch.long), torch.tensor(mask, dtype=torch.long))
        if return_tensors is not None:
            raise ValueError(f"return_tensors must be 'pt' or None, got {return_tensors!r}")
        return TokenizerOutput(rows, mask)


class _Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TextEncoder(nn.Module):
    """Token ids (B, L) -> hidden states (B, L, width): embeddings + causal pre-norm transformer + LayerNorm."""

    def __init__(
        self,
        vocab_size: int = len(VOCABULARY),
        max_length: int = MAX_LENGTH,
        width: int = 64,
        layers: int = 2,
        heads: int = 4,
    ) -> None:
        super().__init__()
        self.config = {
            "vocab_size": vocab_size,
            "max_length": max_length,
            "width": width,
            "layers": layers,
            "heads": heads,
        }
        self.token = nn.Embedding(vocab_size, width)
        self.position = nn.Parameter(torch.zeros(max_length, width))
        nn.init.normal_(self.token.weight, std=0.02)
        nn.init.normal_(self.position, std=0.01)
        self.blocks = nn.ModuleList(_Block(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        L = ids.shape[1]
        if L > self.position.shape[0]:
            raise ValueError(f"token sequences are at most {self.position.shape[0]} long, got {L}")
        x = self.token(ids) + self.position[:L]
        mask = torch.triu(torch.full((L, L), float("-inf"), dtype=x.dtype, device=x.device), diagonal=1)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)
