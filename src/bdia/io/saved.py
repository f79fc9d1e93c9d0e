"""Inversions of real images, and their ``.safetensors`` files.

An :class:`ImageInversion` is the core :class:`bdia.Inversion` (latents, solver, grid, NFE) plus what
it takes to reconstruct or edit it with a pipeline: the prompts and guidance it was inverted under,
the step count and strength that rebuild the grid, the schedule config, the model it came from and
its family ("digits", "scenes", "sd", "sd3", "flux": flow families have a FlowSchedule and velocity grids), the
image size, and the clean VAE latents (for the round-trip error).

File format: safetensors tensors ``latent.0``, ``latent.1`` ... (noisiest first) and ``clean``;
metadata ``format`` = ``bdia.inversion``, ``version``, ``bdia`` (JSON of everything else) and
``sha256`` over the tensors and that JSON. Loading verifies the checksum, then the whole header
against that format (a checksum shows damage, not who wrote the file: anyone can recompute it), so a
malformed file is a ValueError naming what is wrong before anything is built; pickles are never read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..flow import FlowSchedule
from ..grids import GRID_KINDS
from ..schedule import Grid, Schedule
from ..solvers import SOLVERS, Inversion, Solver, make_solver
from .files import atomic_path

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
    try:
        return make_solver(config, state_dtype=state_dtype)
    except (TypeError, ValueError) as e:
        raise ValueError(f"the inversion records a solver bdia cannot rebuild ({e})") from None


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
    family: str | None = None  # one of FAMILIES (None: a file from before families)
    grid_kind: str = "diffusers"  # how the grid was made (bdia.grids.make_grid's kinds; flow models: "diffusers")
    # null-text inversion (Editor.null_text_invert): the optimised unconditional embedding per grid step and
    # image, shape (steps, batch, ...); reconstruct and edit guide with them
    null_embeddings: torch.Tensor | None = None

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
            "family": self.family,
            "grid_kind": self.grid_kind,
        } | ({} if self.null_embeddings is None else {"null_text": list(self.null_embeddings.shape)})

    def __repr__(self) -> str:
        return (
            f"ImageInversion({self.inversion.solver}, {self.batch_size} image(s) {self.image_size[0]}x"
            f"{self.image_size[1]}, steps={self.num_steps}, strength={self.strength}, "
            f"guidance={self.guidance_scale}, prompt={self.prompt!r})"
        )


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
    header = json.dumps(json.loads(data[8 : 8 + n]), sort_keys=True, separators=(",", ":")).encode("utf-8")
    header += b" " * (-len(header) % 8)  # the tensor data stays 8-byte aligned, as safetensors pads it
    return len(header).to_bytes(8, "little") + header + data[8 + n :]


def save_inversion(inv: ImageInversion, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``inv`` to a ``.safetensors`` file atomically; refuse an existing file unless ``overwrite``.
    The same inversion gives the same bytes in any process."""
    from safetensors.torch import save

    tensors = {f"latent.{k}": z.detach().cpu().contiguous() for k, z in enumerate(inv.inversion.latents)}
    if inv.clean is not None:
        tensors["clean"] = inv.clean.detach().cpu().contiguous()
    if inv.null_embeddings is not None:
        tensors["null_embeddings"] = inv.null_embeddings.detach().cpu().contiguous()
    description = json.dumps(inv.describe(), sort_keys=True, default=_jsonable)
    metadata = {
        "format": FORMAT,
        "version": str(VERSION),
        "bdia": description,
        "sha256": _checksum(tensors, description),
    }
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
        raise ValueError(
            f"{p} is not a safetensors file written by bdia ({e}); pickled files are never loaded"
        ) from None
    if metadata.get("format") != FORMAT or "bdia" not in metadata:
        raise ValueError(f"{p} is a safetensors file but not a bdia inversion (no '{FORMAT}' metadata)")
    version = metadata.get("version", "0")
    if not version.isdigit():
        raise ValueError(f"{p} has format version {version[:20]!r}, expected a number; the file is not bdia's")
    if int(version) > VERSION:
        raise ValueError(f"{p} was written by a newer bdia (format version {metadata['version']}); upgrade bdia")
    if _checksum(tensors, metadata["bdia"]) != metadata.get("sha256"):
        raise ValueError(f"{p} fails its sha256 checksum: the file was modified or damaged after it was written")
    # A checksum is integrity, not authenticity: anyone can recompute it, so the header is validated in full.
    try:
        return _parse(metadata["bdia"], tensors, device)
    except _HeaderError as e:
        raise ValueError(f"{p} is not a valid bdia inversion: {e}") from None


class _HeaderError(ValueError):
    """What is wrong with a saved inversion's header (the caller adds the file name)."""


_FIELDS = {
    "solver",
    "grid",
    "nfe",
    "input_dtype",
    "prompt",
    "negative_prompt",
    "guidance_scale",
    "num_steps",
    "strength",
    "image_size",
    "schedule",
    "model",
    "state_dtype",
    "latent_shape",
}
_OPTIONAL_FIELDS = {"info", "family", "grid_kind", "null_text"}  # absent from files written before they existed
FAMILIES = ("digits", "scenes", "sd", "sd3", "flux")
FLOW_FAMILIES = ("sd3", "flux")  # flow-matching models: velocity grids from a FlowSchedule


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise _HeaderError(message)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int beyond float range
        return False


def _parse(description: str, tensors: dict[str, torch.Tensor], device: str | torch.device) -> ImageInversion:
    """The header's JSON and the tensors checked against the format :meth:`ImageInversion.describe` writes."""
    try:
        d = json.loads(description)
    except (ValueError, RecursionError) as e:
        raise _HeaderError(f"its metadata is not JSON ({e})") from None
    _need(isinstance(d, dict), f"its metadata is a JSON {type(d).__name__}, expected an object")
    missing, unknown = sorted(_FIELDS - set(d)), sorted(set(d) - _FIELDS - _OPTIONAL_FIELDS)
    _need(not missing, f"its metadata lacks {missing}")
    _need(not unknown, f"its metadata has unknown fields {unknown}")

    shape = d["latent_shape"]
    _need(
        isinstance(shape, list) and len(shape) >= 2 and all(_is_int(n) and n > 0 for n in shape),
        f"latent_shape must be a list of positive ints (batch first), got {_short_repr(shape)}",
    )
    batch = shape[0]
    for key in ("prompt", "negative_prompt"):
        v = d[key]
        _need(
            (v is None and key == "negative_prompt")
            or (isinstance(v, list) and len(v) == batch and all(isinstance(t, str) for t in v)),
            f"{key} must be a list of {batch} strings (one per image), got {_short_repr(v)}",
        )
    _need(
        _is_number(d["guidance_scale"]),
        f"guidance_scale must be a finite number, got {_short_repr(d['guidance_scale'])}",
    )
    _need(
        _is_number(d["strength"]) and 0 < d["strength"] <= 1,
        f"strength must be in (0, 1], got {_short_repr(d['strength'])}",
    )
    _need(_is_int(d["nfe"]) and d["nfe"] >= 0, f"nfe must be a non-negative int, got {_short_repr(d['nfe'])}")
    size = d["image_size"]
    _need(
        isinstance(size, list) and len(size) == 2 and all(_is_int(n) and n > 0 for n in size),
        f"image_size must be [width, height] in pixels, got {_short_repr(size)}",
    )
    _need(
        isinstance(d["input_dtype"], str) and d["input_dtype"] in _DTYPES,
        f"input_dtype must be one of {sorted(_DTYPES)}, got {_short_repr(d['input_dtype'])}",
    )
    _need(
        isinstance(d["state_dtype"], str) and d["state_dtype"] in ("float32", "float64"),
        f"state_dtype must be float32 or float64, got {_short_repr(d['state_dtype'])}",
    )
    _need(isinstance(d.get("info", {}), dict), "info must be an object")
    family = d.get("family")
    _need(family is None or family in FAMILIES, f"family must be one of {list(FAMILIES)}, got {_short_repr(family)}")
    _check_model_record(d["model"])
    schedule = _check_schedule(d["schedule"], flow=family in FLOW_FAMILIES)
    steps = d["num_steps"]
    _need(
        _is_int(steps) and 2 <= steps <= schedule.num_train_timesteps,
        f"num_steps must be an int in [2, {schedule.num_train_timesteps}], got {_short_repr(steps)}",
    )
    grid = _check_grid(d["grid"], steps, d["strength"], "velocity" if family in FLOW_FAMILIES else "epsilon")
    state_dtype = _DTYPES[d["state_dtype"]]
    solver = _check_solver(d["solver"], state_dtype, grid)

    names = [f"latent.{k}" for k in range(solver.num_latents)]
    null_shape = d.get("null_text")
    if null_shape is not None:
        _need(solver.name == "ddim", f"a null-text inversion is a DDIM inversion, this file's solver is {solver.name}")
        _need(
            isinstance(null_shape, list)
            and len(null_shape) >= 3
            and all(_is_int(n) and n > 0 for n in null_shape)
            and null_shape[:2] == [grid.num_steps, batch],
            f"null_text must be the embeddings' shape [{grid.num_steps} steps, {batch} images, ...], "
            f"got {_short_repr(null_shape)}",
        )
    expected = set(names) | ({"clean"} & set(tensors)) | ({"null_embeddings"} if null_shape is not None else set())
    _need(
        set(tensors) == expected,
        f"a {solver.name} inversion holds tensors {sorted(expected)}, this file {sorted(tensors)}",
    )
    for name, t in tensors.items():
        want = null_shape if name == "null_embeddings" else shape
        _need(t.is_floating_point(), f"tensor {name!r} is {dtype_name(t.dtype)}, expected a floating-point dtype")
        _need(list(t.shape) == want, f"tensor {name!r} has shape {list(t.shape)}, the metadata says {want}")
        _need(bool(torch.isfinite(t).all()), f"tensor {name!r} holds NaN or inf")
    grid_kind = d.get("grid_kind", "diffusers")
    _need(grid_kind in GRID_KINDS, f"grid_kind {_short_repr(grid_kind)} is not one of {', '.join(GRID_KINDS)}")
    core = Inversion(
        tuple(tensors[n].to(device) for n in names),
        d["nfe"],
        d["solver"],
        d["grid"],
        input_dtype=_DTYPES[d["input_dtype"]],
    )
    clean = tensors.get("clean")
    return ImageInversion(
        inversion=core,
        prompt=d["prompt"],
        negative_prompt=d["negative_prompt"],
        guidance_scale=float(d["guidance_scale"]),
        num_steps=d["num_steps"],
        strength=float(d["strength"]),
        image_size=(size[0], size[1]),
        schedule=d["schedule"],
        model=d["model"],
        state_dtype=state_dtype,
        clean=None if clean is None else clean.to(device),
        info=d.get("info", {}),
        family=family,
        grid_kind=grid_kind,
        null_embeddings=None if null_shape is None else tensors["null_embeddings"].to(device),
    )


def _short_repr(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _check_model_record(model: Any) -> None:
    _need(isinstance(model, dict), f"model must be an object, got {_short_repr(model)}")
    for key in ("id", "revision", "class", "dtype"):
        _need(model.get(key) is None or isinstance(model[key], str), f"model.{key} must be a string or null")
    _need(model.get("dtype") in (None, *_DTYPES), f"model.dtype must be one of {sorted(_DTYPES)}")
    fingerprint = model.get("fingerprint", {})
    _need(isinstance(fingerprint, dict), "model.fingerprint must be an object")
    for key in ("unet_config", "vae_config", "config"):
        _need(isinstance(fingerprint.get(key, {}), dict), f"model.fingerprint.{key} must be an object")
    for key in ("unet_probe", "transformer_probe"):
        probe = fingerprint.get(key, {})
        _need(
            isinstance(probe, dict)
            and all(isinstance(v, list) and all(_is_number(x) for x in v) for v in probe.values()),
            f"model.fingerprint.{key} must map names to lists of numbers",
        )
    _need(
        isinstance(fingerprint.get("transformer_config", {}), dict),
        "model.fingerprint.transformer_config must be an object",
    )


_MAX_TRAIN_TIMESTEPS = 100_000  # far above any trained model's (1000); bounds what a header can make us allocate


def _check_schedule(schedule: Any, flow: bool = False) -> Schedule | FlowSchedule:
    _need(isinstance(schedule, dict), f"schedule must be an object, got {_short_repr(schedule)}")
    t = schedule.get("num_train_timesteps", 1000)
    _need(
        _is_int(t) and 2 <= t <= _MAX_TRAIN_TIMESTEPS,
        f"schedule.num_train_timesteps must be an int in [2, {_MAX_TRAIN_TIMESTEPS}], got {_short_repr(t)}",
    )
    try:
        return FlowSchedule.from_config(schedule) if flow else Schedule.from_config(schedule)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RuntimeError) as e:
        raise _HeaderError(
            f"its schedule is not a valid scheduler config ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
        ) from None


def _check_grid(grid: Any, num_steps: int, strength: float, prediction: str = "epsilon") -> Grid:
    keys = {"timesteps", "alphas", "sigmas"}
    _need(
        isinstance(grid, dict) and set(grid) - {"prediction"} == keys,
        f"grid must be an object with keys {sorted(keys)} (and 'prediction')",
    )
    _need(
        grid.get("prediction", "epsilon") == prediction,
        f"grid.prediction must be {prediction!r} for this model family, got {_short_repr(grid.get('prediction'))}",
    )
    for key in sorted(keys):
        _need(
            isinstance(grid[key], list) and all(_is_number(x) for x in grid[key]),
            f"grid.{key} must be a list of finite numbers",
        )
    try:
        timesteps, alphas, sigmas = (
            torch.tensor(grid[key], dtype=torch.float64) for key in ("timesteps", "alphas", "sigmas")
        )
        g = Grid(timesteps, alphas, sigmas, prediction=prediction)
    except ValueError as e:
        raise _HeaderError(f"its grid is not valid ({e})") from None
    steps = num_steps if strength == 1.0 else int(round(strength * num_steps))
    _need(
        g.num_steps == steps,
        f"its grid has {g.num_steps} steps, but {num_steps} steps at strength {strength} make {steps}",
    )
    return g


def _model_time_unknown(lam: torch.Tensor) -> torch.Tensor:
    raise ValueError("a grid read from a saved inversion knows no model times; build it from the model")


def _check_solver(config: Any, state_dtype: torch.dtype, grid: Grid) -> Solver:
    _need(isinstance(config, dict), f"solver must be an object, got {_short_repr(config)}")
    name = config.get("name")
    _need(isinstance(name, str) and name in SOLVERS, f"unknown solver {_short_repr(name)}; known: {sorted(SOLVERS)}")
    allowed = set(SOLVERS[name]().params())
    unknown = sorted(set(config) - allowed - {"name"})
    _need(not unknown, f"solver {name!r} has no parameter(s) {unknown} (it takes {sorted(allowed)})")
    try:
        solver = solver_from_config(config, state_dtype)
        # e.g. a gamma sequence of the wrong length. The header has no model, so a grid read from it has
        # no lambda -> model time map; the editor's own grid has one, and that is what sampling runs on.
        solver.check_grid(dataclasses.replace(grid, time_of=_model_time_unknown), inverting=False)
    except (ValueError, TypeError) as e:
        raise _HeaderError(f"its solver {_short_repr(config)} is not valid ({e})") from None
    _need(
        solver.config() == config,
        f"its solver {_short_repr(config)} is not complete (bdia writes {_short_repr(solver.config())})",
    )
    return solver
