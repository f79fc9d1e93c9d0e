"""Inversions of real images, and their ``.safetensors`` files.

An :class:`ImageInversion` is the core :class:`bdia.Inversion` (latents, solver, grid, NFE) plus what
it takes to reconstruct or edit it with a pipeline: the prompts and guidance it was inverted under,
the step count and strength that rebuild the grid, the schedule config, the model it came from, the
image size, and the clean VAE latents (for the round-trip error).

File format: safetensors tensors ``latent.0``, ``latent.1`` ... (noisiest first) and ``clean``;
metadata ``format`` = ``bdia.inversion``, ``version``, ``bdia`` (JSON of everything else) and
``sha256`` over the tensors and that JSON. Loading verifies the checksum; pickles are never read.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_path
from ..solvers import SOLVERS, Inversion, Solver

__all__ = ["ImageInversion", "save_inversion", "load_inversion", "solver_from_config"]

FORMAT = "bdia.inversion"
VERSION = 1

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def solver_from_config(config: dict[str, Any], state_dtype: torch.dtype = torch.float64) -> Solver:
    """Rebuild a solver from ``Solver.config()`` (``{"name": ..., **params}``)."""
    params = dict(config)
    name = params.pop("name", None)
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r} in the inversion; known: {sorted(SOLVERS)}")
    return SOLVERS[name](**params, state_dtype=state_dtype)


@dataclass
class ImageInversion:
    """An inverted image batch: the core :class:`~bdia.Inversion` and the context to reuse it."""

    inversion: Inversion
    prompt: list[str]
    negative_prompt: list[str] | None
    guidance_scale: float
    num_steps: int
    strength: float
    image_size: tuple[int, int]  # (width, height) in pixels
    schedule: dict[str, Any]  # the scheduler config the grid was built from
    model: dict[str, Any]  # id, revision, class, dtype, fingerprint
    state_dtype: torch.dtype = torch.float64
    clean: torch.Tensor | None = None  # the scaled VAE latents that were inverted
    info: dict[str, Any] = field(default_factory=dict)  # timings and other figures (not checked)

    @property
    def latents(self) -> tuple[torch.Tensor, ...]:
        return self.inversion.latents

    @property
    def noise(self) -> torch.Tensor:
        return self.inversion.noise

    @property
    def solver(self) -> dict[str, Any]:
        return self.inversion.solver

    @property
    def batch_size(self) -> int:
        return int(self.inversion.latents[0].shape[0])

    def make_solver(self) -> Solver:
        return solver_from_config(self.inversion.solver, self.state_dtype)

    def describe(self) -> dict[str, Any]:
        """Plain data: everything but the tensors (what the file's metadata holds)."""
        return {
            "solver": self.inversion.solver,
            "grid": self.inversion.grid,
            "nfe": self.inversion.nfe,
            "input_dtype": dtype_name(self.inversion.input_dtype),
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "guidance_scale": self.guidance_scale,
            "num_steps": self.num_steps,
            "strength": self.strength,
            "image_size": list(self.image_size),
            "schedule": self.schedule,
            "model": self.model,
            "state_dtype": dtype_name(self.state_dtype),
            "latent_shape": list(self.inversion.latents[0].shape),
            "info": self.info,
        }

    def __repr__(self) -> str:
        return (f"ImageInversion({self.inversion.solver}, {self.batch_size} image(s) {self.image_size[0]}x"
                f"{self.image_size[1]}, steps={self.num_steps}, strength={self.strength}, "
                f"guidance={self.guidance_scale}, prompt={self.prompt!r})")


def _checksum(tensors: dict[str, torch.Tensor], description: str) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(description.encode())
    return h.hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, torch.dtype):
        return dtype_name(value)
    if isinstance(value, Path):
        return os.fspath(value)
    raise TypeError(f"cannot store {type(value).__name__} in an inversion's metadata")


def _sorted_header(data: bytes) -> bytes:
    """A safetensors file with its JSON header's keys sorted. safetensors writes the metadata in hash
    order, which changes from process to process; sorted, one inversion always gives the same bytes."""
    n = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8:8 + n]), sort_keys=True, separators=(",", ":")).encode("utf-8")
    header += b" " * (-len(header) % 8)  # the tensor data stays 8-byte aligned, as safetensors pads it
    return len(header).to_bytes(8, "little") + header + data[8 + n:]


def save_inversion(inv: ImageInversion, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``inv`` to a ``.safetensors`` file atomically; refuse an existing file unless ``overwrite``.
    The same inversion gives the same bytes in any process."""
    from safetensors.torch import save

    tensors = {f"latent.{k}": z.detach().cpu().contiguous() for k, z in enumerate(inv.inversion.latents)}
    if inv.clean is not None:
        tensors["clean"] = inv.clean.detach().cpu().contiguous()
    description = json.dumps(inv.describe(), sort_keys=True, default=_jsonable)
    metadata = {"format": FORMAT, "version": str(VERSION), "bdia": description,
                "sha256": _checksum(tensors, description)}
    data = _sorted_header(save(tensors, metadata=metadata))
    with atomic_path(path, overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def load_inversion(path: str | os.PathLike, device: str | torch.device = "cpu") -> ImageInversion:
    """Read an inversion written by :func:`save_inversion`, verifying its format and checksum."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no inversion file at {os.fspath(p)!r}")
    try:
        with safe_open(os.fspath(p), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(os.fspath(p))
    except Exception as e:  # safetensors' own error type differs between versions
        raise ValueError(f"{p} is not a safetensors file written by bdia ({e}); pickled files are never loaded") from None
    if metadata.get("format") != FORMAT or "bdia" not in metadata:
        raise ValueError(f"{p} is a safetensors file but not a bdia inversion (no '{FORMAT}' metadata)")
    if int(metadata.get("version", "0")) > VERSION:
        raise ValueError(f"{p} was written by a newer bdia (format version {metadata['version']}); upgrade bdia")
    if _checksum(tensors, metadata["bdia"]) != metadata.get("sha256"):
        raise ValueError(f"{p} fails its sha256 checksum: the file was modified or damaged after it was written")
    d = json.loads(metadata["bdia"])
    latents = []
    while f"latent.{len(latents)}" in tensors:
        latents.append(tensors[f"latent.{len(latents)}"].to(device))
    core = Inversion(tuple(latents), int(d["nfe"]), d["solver"], d["grid"],
                     input_dtype=dtype_from_name(d["input_dtype"]))
    clean = tensors.get("clean")
    return ImageInversion(
        inversion=core, prompt=d["prompt"], negative_prompt=d["negative_prompt"],
        guidance_scale=float(d["guidance_scale"]), num_steps=int(d["num_steps"]), strength=float(d["strength"]),
        image_size=tuple(d["image_size"]), schedule=d["schedule"], model=d["model"],
        state_dtype=dtype_from_name(d["state_dtype"]), clean=None if clean is None else clean.to(device),
        info=d.get("info", {}),
    )
