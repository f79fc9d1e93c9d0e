"""Process settings the commands share."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch CPU threads (None or 0: leave as is), then restore the caller's count.

    The embedded models are tiny, so per-op overhead dominates: on a busy machine extra threads
    mostly spin-wait, and one thread is often several times faster.
    """
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
