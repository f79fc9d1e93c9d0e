"""Choices every layer makes the same way: device, dtype names, thread count, prompt lists, image batches,
optional dependencies.

This module imports nothing from bdia, so every layer may use it. The solver factory is
:func:`bdia.make_solver` (``bdia/solvers/registry.py``); image files are read by
:func:`bdia.io.images.read_image`. Nothing here imports diffusers or Pillow.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch

__all__ = [
    "DTYPE_NAMES",
    "as_size",
    "choose_device",
    "image_items",
    "prompt_list",
    "require",
    "resolve_dtype",
    "state_dtype_for",
    "torch_threads",
]

# Accepted spellings -> torch dtype names.
DTYPE_NAMES = {
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "float64": "float64",
    "fp64": "float64",
    "double": "float64",
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``torch.float16`` or a name ("fp16", "float16", "bf16", "float32", ...); None or "auto" stay None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).lower()
    if name == "auto":
        return None
    if name not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of float32, float16, bfloat16, float64 (or auto)")
    return getattr(torch, DTYPE_NAMES[name])


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def choose_device(device: str | torch.device | None = None) -> torch.device:
    """The device to run on: CUDA when available, else Apple's MPS, else the CPU (None or "auto").

    A named device must exist here: "cuda" without CUDA, "cuda:3" on a one-GPU machine, "mps" off a
    Mac, or a name torch does not know are ValueErrors saying what to pass instead.
    """
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {str(device)!r}; use cpu, cuda, cuda:N, mps or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {str(device)!r} asked for, but this torch sees no CUDA GPU; use --device cpu (or auto)"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {str(device)!r} asked for, but there are {torch.cuda.device_count()} CUDA "
                "GPU(s); use cuda:0 .. cuda:N-1"
            )
    elif dev.type == "mps":
        if not _mps_available():
            raise ValueError(
                f"device {str(device)!r} asked for, but Apple's MPS is not available here; use --device cpu (or auto)"
            )
    elif dev.type != "cpu":
        raise ValueError(f"device {str(device)!r} is not supported; use cpu, cuda, cuda:N, mps or auto")
    return dev


def state_dtype_for(device: torch.device, state_dtype: torch.dtype) -> torch.dtype:
    """The solver state's dtype on ``device``: MPS has no float64, so it falls back to float32 (with a warning)."""
    if state_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"state_dtype must be torch.float32 or torch.float64, got {state_dtype}")
    if state_dtype == torch.float64 and torch.device(device).type == "mps":
        warnings.warn(
            "MPS has no float64: the solver state is kept in float32 (the round trip loses digits)", stacklevel=3
        )
        return torch.float32
    return state_dtype


def prompt_list(prompt: Any, batch: int, what: str = "prompt") -> list[str]:
    """``prompt`` (a string, or one per image) as a list of ``batch`` strings."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, (list, tuple)) else None
    if prompts is None or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"{what} must be a string or a list of strings, got {prompt!r}")
    if len(prompts) == 1:
        prompts = prompts * batch
    if len(prompts) != batch:
        raise ValueError(f"got {len(prompts)} {what}s for {batch} images; give one, or one per image")
    return prompts


def image_items(images: Any) -> list[Any]:
    """A batch of images as a list: a 4-d tensor, a list or tuple, or one image."""
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        items: list[Any] = list(images)
    elif isinstance(images, (list, tuple)):
        items = list(images)
    else:
        items = [images]
    if not items:
        raise ValueError("no images given")
    return items


def as_size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    """``size`` as (width, height): one int is a square."""
    if size is None:
        return None
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


_PACKAGES = {"PIL": "Pillow", "sklearn": "scikit-learn"}  # import name -> what pip installs


def require(extra: str, *modules: str) -> None:
    """Refuse, before any work, to run without the optional packages ``modules`` (ValueError naming the extra)."""
    from importlib.util import find_spec

    missing = [_PACKAGES.get(m, m) for m in modules if find_spec(m) is None]
    if missing:
        raise ValueError(
            f"this needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
            f'installed: pip install "bdia[{extra}]"'
        )


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
