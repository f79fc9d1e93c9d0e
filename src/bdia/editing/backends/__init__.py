"""Model backends of the :class:`~bdia.editing.Editor`, found through one registry keyed by family.

    backend = load_backend(resolve_model_choice("digits"))       # what Editor.from_pretrained does
    backend_class("sd")                                           # StableDiffusionBackend

A family names a module and a class here; the module is imported only when that family is used, so
``import bdia.editing`` stays free of diffusers. The next model family plugs in with
:func:`register_backend` (an embedded model also names its model id, e.g. ``"digits"``).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any

import torch

from ...runtime import choose_device, resolve_dtype
from .base import FAMILY_NAMES, Backend

__all__ = [
    "Backend",
    "FAMILY_NAMES",
    "ModelChoice",
    "backend_class",
    "backend_for_pipeline",
    "embedded_models",
    "load_backend",
    "register_backend",
    "resolve_model_choice",
]

# family -> (module, class). Embedded models ship with bdia: model id -> family.
_BACKENDS: dict[str, tuple[str, str]] = {}
_EMBEDDED: dict[str, str] = {}


def register_backend(
    family: str, module: str, class_name: str, *, embedded_id: str | None = None, description: str | None = None
) -> None:
    """Make ``family`` loadable: ``module.class_name`` is its :class:`Backend`; ``embedded_id`` is the model id of a
    model that ships with bdia (no folder, no network)."""
    _BACKENDS[family] = (module, class_name)
    if embedded_id is not None:
        _EMBEDDED[embedded_id] = family
    if description is not None:
        FAMILY_NAMES[family] = description


register_backend("digits", "bdia.editing.backends.digits", "DigitsBackend", embedded_id="digits")
register_backend("scenes", "bdia.editing.backends.scenes", "ScenesBackend", embedded_id="scenes")
register_backend("sd", "bdia.editing.backends.stable_diffusion", "StableDiffusionBackend")
register_backend("sd3", "bdia.editing.backends.flow", "SD3Backend")
register_backend("flux", "bdia.editing.backends.flow", "FluxBackend")


def embedded_models() -> list[str]:
    """The model ids that ship with bdia ("digits", ...)."""
    return sorted(_EMBEDDED)


def backend_class(family: str) -> type[Backend]:
    """The :class:`Backend` subclass of ``family`` ("digits", "sd", "sd3", "flux", ...)."""
    if family not in _BACKENDS:
        raise ValueError(f"no backend for model family {family!r}; known: {', '.join(sorted(_BACKENDS))}")
    module, name = _BACKENDS[family]
    cls: type[Backend] = getattr(importlib.import_module(module), name)
    return cls


@dataclass(frozen=True)
class ModelChoice:
    """A model resolved once: what to load (``model``), its ``family``, and where and how it runs."""

    model: str
    family: str
    device: torch.device
    dtype: torch.dtype | None
    revision: str | None = None

    @property
    def embedded(self) -> bool:
        return self.model in _EMBEDDED


def resolve_model_choice(
    model: str | os.PathLike,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    revision: str | None = None,
    cli_defaults: bool = False,
) -> ModelChoice:
    """Resolve ``model`` once: its family (an embedded id, else the folder's ``model_index.json``), the device
    (default CUDA, else MPS, else the CPU) and the dtype.

    ``cli_defaults``: the command line's "auto" dtype, float16 for Stable Diffusion and bfloat16 for SD3/Flux on
    CUDA (their transformers overflow float16), float32 elsewhere; the embedded models default to float32.
    """
    name = os.fspath(model)
    dev = choose_device(device)
    torch_dtype = resolve_dtype(dtype)
    if name in _EMBEDDED:
        if revision is not None:
            raise ValueError(f"--revision applies to hub models; the {name} model ships with bdia")
        return ModelChoice(name, _EMBEDDED[name], dev, torch_dtype)
    from ...io.loading import model_family

    family = model_family(name, revision)
    if cli_defaults and torch_dtype is None:
        torch_dtype = (torch.float16 if family == "sd" else torch.bfloat16) if dev.type == "cuda" else torch.float32
    return ModelChoice(name, family, dev, torch_dtype, revision)


def load_backend(choice: ModelChoice, *, progress: bool = True, **kwargs: Any) -> Backend:
    """Load the backend of a resolved model. Keywords (``variant``, ``allow_pickle``...) go to the family's
    ``from_pretrained``; an embedded model takes none."""
    cls = backend_class(choice.family)
    if choice.embedded and kwargs:
        raise ValueError(
            f"{', '.join(sorted(kwargs))}: these apply to diffusers models; the {choice.model} model ships with bdia"
        )
    if choice.revision is not None:
        kwargs["revision"] = choice.revision
    return cls.from_pretrained(
        choice.model, torch_dtype=choice.dtype, device=choice.device, progress=progress, **kwargs
    )


def backend_for_pipeline(pipe: Any, **options: Any) -> Backend:
    """Wrap a loaded diffusers pipeline: SD3 and Flux by their pipeline class, anything else as Stable Diffusion."""
    for family in ("sd3", "flux"):
        cls = backend_class(family)
        if getattr(cls, "pipeline_class", None) == type(pipe).__name__:
            return cls(pipe, **options)  # type: ignore[call-arg]
    return backend_class("sd")(pipe, **options)  # type: ignore[call-arg]
