"""Loading a diffusers pipeline safely: safetensors weights only, unless pickles are explicitly allowed.

A model path can come from a file someone else wrote (a saved inversion records the model it was
made with, and ``reconstruct`` loads it), and a pickled checkpoint (``.bin``, ``.ckpt``, ``.pt``)
can run code when it is unpickled. So :func:`load_pipeline` passes ``use_safetensors=True`` to
diffusers and refuses a folder whose weights are pickles, naming the files, unless the caller
passes ``allow_pickle=True`` (the CLI's ``--allow-pickle``) for files they trust.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

__all__ = [
    "NoNetworkError",
    "UnsafeWeightsError",
    "hub_offline",
    "hub_reachable",
    "absent_components",
    "load_pipeline",
    "model_family",
    "model_index",
    "resolve_model",
    "pickled_weights",
]

# Pipeline classes of the flow-matching families; any other pipeline is the Stable Diffusion family ("sd").
FLOW_FAMILIES = {"StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux"}

# Weight files that torch.load unpickles (diffusers' and transformers' names, and generic checkpoints).
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class UnsafeWeightsError(ValueError):
    """A model's weights are pickles, and loading them was not explicitly allowed."""


class NoNetworkError(ConnectionError):
    """A hub id that cannot be fetched: no network, or HF_HUB_OFFLINE set and the model not in the cache."""


def hub_offline() -> bool:
    """HF_HUB_OFFLINE is set (read at each call: huggingface_hub reads it only when first imported)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub (HF_ENDPOINT, or the HTTPS proxy when one is set) accepts a connection within ``timeout``
    seconds: checked once, so that a machine without network is told at once instead of after the download
    library's retries."""
    from urllib.parse import urlsplit

    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlsplit(proxy or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    if not url.hostname:
        return True  # an address this check does not understand: let the download library try
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_config(name: str, revision: str | None) -> dict[str, Any]:
    """A hub id's model_index.json: at once NoNetworkError without network, or from the cache only when offline."""
    offline = hub_offline()
    if not offline and not hub_reachable():
        raise NoNetworkError(
            f"no network to download {name!r}: pass a local folder, or set HF_HUB_OFFLINE=1 to use the copy "
            "in the Hugging Face cache"
        )
    from diffusers import DiffusionPipeline

    try:
        return dict(DiffusionPipeline.load_config(name, revision=revision, local_files_only=offline))
    except OSError as e:
        if offline:
            raise NoNetworkError(
                f"{name!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set, so it cannot be "
                "downloaded: pass a local folder (or unset HF_HUB_OFFLINE on a machine with network)"
            ) from None
        raise FileNotFoundError(f"could not read the model index of {name!r}: {' '.join(str(e).split())}") from None


def _looks_like_hub_id(model: str) -> bool:
    return bool(_HUB_ID.match(model)) and ".." not in model and not model.endswith((".ckpt", ".safetensors"))


def resolve_model(model: str | os.PathLike) -> str:
    """The absolute folder of a local pipeline, or a hub id; a clear FileNotFoundError for anything else."""
    name = os.fspath(model)
    folder = os.path.expanduser(name)
    if os.path.isdir(folder):
        if not os.path.isfile(os.path.join(folder, "model_index.json")):
            raise FileNotFoundError(
                f"{name!r} has no model_index.json: it is not a diffusers pipeline folder "
                "(single-file .ckpt/.safetensors checkpoints: convert them with diffusers first)"
            )
        return os.path.abspath(folder)
    if not _looks_like_hub_id(name) or os.path.exists(name):
        raise FileNotFoundError(
            f"no model folder at {name!r}: give a folder saved with save_pretrained "
            "(holding model_index.json) or a hub id such as 'org/model'"
        )
    return name


def model_index(model: str | os.PathLike, revision: str | None = None) -> dict[str, Any]:
    """A pipeline's ``model_index.json`` (a local folder's, or a hub id's through diffusers)."""
    name = resolve_model(model)
    if os.path.isdir(name):
        return json.loads(Path(name, "model_index.json").read_text(encoding="utf-8"))
    return _hub_config(name, revision)


def model_family(model: str | os.PathLike, revision: str | None = None) -> str:
    """The editor backend a pipeline needs, from its ``model_index.json``'s class: "sd3"
    (StableDiffusion3Pipeline), "flux" (FluxPipeline), else "sd" (Stable Diffusion 1.x/2.x/XL)."""
    return FLOW_FAMILIES.get(model_index(model, revision).get("_class_name", ""), "sd")


def absent_components(model: str | os.PathLike, revision: str | None = None) -> dict[str, None]:
    """Components the index lists as ``[null, null]`` (e.g. SD3 without T5), passed to diffusers as None."""
    return {k: None for k, v in model_index(model, revision).items() if isinstance(v, list) and v and v[0] is None}


def pickled_weights(folder: str | os.PathLike) -> list[str]:
    """Pickled weight files in a pipeline folder's components that have no safetensors copy beside them."""
    found = []
    root = Path(folder)
    for component in sorted(p for p in root.iterdir() if p.is_dir()):
        files = [p for p in component.iterdir() if p.is_file()]
        if any(p.name.endswith(".safetensors") for p in files):
            continue  # use_safetensors=True picks these
        found += [os.fspath(p.relative_to(root)) for p in files if p.name.endswith(PICKLE_SUFFIXES)]
    return found


def _refusal(model: str, files: list[str]) -> UnsafeWeightsError:
    listed = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    return UnsafeWeightsError(
        f"model {model!r} has pickled weights ({listed}), which can run code when loaded; bdia loads "
        "safetensors only: re-save the model with save_pretrained(..., safe_serialization=True), or pass "
        "allow_pickle=True (--allow-pickle) if you trust these files"
    )


def _has_safety_checker(name: str, revision: str | None) -> bool:
    try:
        from diffusers import DiffusionPipeline

        offline = hub_offline() and not os.path.isdir(name)
        return "safety_checker" in DiffusionPipeline.load_config(name, revision=revision, local_files_only=offline)
    except Exception:  # let from_pretrained report what is wrong with the model
        return False


@contextlib.contextmanager
def quiet_loading(progress: bool) -> Iterator[None]:
    """Hide the loaders' progress bars unless progress is wanted, and transformers' torch_dtype notice."""
    from diffusers.utils import logging as dlog

    was_enabled = dlog.is_progress_bar_enabled()
    tlog: ModuleType | None
    try:
        from transformers.utils import logging as tlog
    except ImportError:  # pragma: no cover - transformers is required by SD pipelines
        tlog = None
    t_enabled = tlog.is_progress_bar_enabled() if tlog else False
    if not progress:
        dlog.disable_progress_bar()
        if tlog:
            tlog.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch_dtype.* is deprecated")
            yield
    finally:
        if was_enabled:
            dlog.enable_progress_bar()
        if tlog and t_enabled:
            tlog.enable_progress_bar()


def load_pipeline(
    model: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    revision: str | None = None,
    variant: str | None = None,
    allow_pickle: bool = False,
    progress: bool = True,
    **kwargs: Any,
) -> Any:
    """A diffusers pipeline from a local folder or a hub id, with safetensors weights only by default.

    ``allow_pickle=True`` lets diffusers fall back to pickled weights (only for files you trust).
    The safety checker is not loaded (inversion and editing use the UNet, VAE and text encoders).
    Raises FileNotFoundError for a missing or unloadable model, :class:`UnsafeWeightsError` for
    pickled weights that were not allowed.
    """
    from diffusers import DiffusionPipeline

    name = resolve_model(model)
    if not allow_pickle and os.path.isdir(name):
        files = pickled_weights(name)
        if files:
            raise _refusal(name, files)
    load_kwargs = dict(kwargs)
    if not allow_pickle:
        load_kwargs["use_safetensors"] = True
    if dtype is not None:
        load_kwargs["torch_dtype"] = dtype
    if revision is not None:
        load_kwargs["revision"] = revision
    if variant is not None:
        load_kwargs["variant"] = variant
    if not os.path.isdir(name):
        _hub_config(name, revision)  # at once NoNetworkError without network, not after the downloader's retries
        if hub_offline():
            load_kwargs.setdefault("local_files_only", True)  # the cache only: no request, no retries
    if _has_safety_checker(name, revision):
        load_kwargs.setdefault("safety_checker", None)
        load_kwargs.setdefault("requires_safety_checker", False)
    try:
        with quiet_loading(progress):
            return DiffusionPipeline.from_pretrained(name, **load_kwargs)
    except OSError as e:
        message = " ".join(str(e).split())
        if not allow_pickle and not os.path.isdir(name) and "safetensors" in message:  # a hub model of pickles
            raise UnsafeWeightsError(
                f"could not load model {name!r} from safetensors weights ({message}); if it has only pickled "
                "weights and you trust them, pass allow_pickle=True (--allow-pickle)"
            ) from None
        raise FileNotFoundError(f"could not load model {name!r}: {message}") from None
