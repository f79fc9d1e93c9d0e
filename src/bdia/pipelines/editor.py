"""Invert, reconstruct and edit real images with a Stable Diffusion pipeline (SD 1.x, 2.x, SDXL).

    editor = Editor.from_pretrained("path/or/hub-id", torch_dtype=torch.float16, device="cuda")
    inv = editor.invert("cat.png", "a photo of a cat", num_steps=50)
    editor.edit(inv, "a photo of a dog").images[0].save("dog.png")

Inversion: VAE encode (posterior mean, times the scaling factor), then ``solver.invert`` with
classifier-free guidance under the source prompt. Reconstruction regenerates with the same guided
model, so BDIA and EDICT return the latents exactly (up to rounding); an edit regenerates from the
same latents under another prompt and guidance. The UNet and VAE run in the pipeline's dtype while
the solver state stays in ``state_dtype`` (float64 by default).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch

from ..models import ClassifierFreeGuidance, to_eps
from ..schedule import Grid, Schedule
from ..solvers import BDIA, SOLVERS, NonFiniteError, Solver
from .diffusers_model import (UNetModel, _as_list, check_pipeline, encode_prompts, fingerprint_mismatch,
                             pipeline_fingerprint)
from .images import pixel_errors, to_pil, to_pixels
from .saved import ImageInversion, dtype_from_name, dtype_name

__all__ = ["BaseEditor", "Editor", "EditResult", "make_solver", "resolve_dtype"]

Prompt = str | Sequence[str]
SAME = type("Same", (), {"__repr__": lambda self: "SAME"})()  # edit(): keep the inversion's negative prompt


@dataclass
class EditResult:
    """What ``reconstruct``, ``edit`` and ``generate`` return."""

    images: list  # PIL images
    latents: torch.Tensor  # the clean latents, in the solver's state dtype
    nfe: int
    seconds: float
    latent_error: float | None = None  # max |z_rec - z| against the inverted latents (reconstruct only)
    info: dict[str, Any] = field(default_factory=dict)


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``torch.float16``, "fp16", "float16", "bf16", "bfloat16", "fp32", "float32" or None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32",
             "fp64": "float64", "double": "float64"}
    return dtype_from_name(names.get(str(dtype).lower(), str(dtype).lower()))


def make_solver(method: str | Solver = "bdia", *, gamma: float | Sequence[float] | str = 1.0, p: float = 0.93,
                state_dtype: torch.dtype = torch.float64) -> Solver:
    """A solver by name ("bdia", "edict", "ddim"), or ``method`` itself when it is a Solver."""
    if isinstance(method, Solver):
        return method
    name = str(method).lower()
    if name == "bdia":
        return BDIA(gamma, state_dtype=state_dtype)
    if name == "edict":
        return SOLVERS["edict"](p, state_dtype=state_dtype)
    if name in SOLVERS:
        return SOLVERS[name](state_dtype=state_dtype)
    raise ValueError(f"unknown method {method!r}; choose one of {sorted(SOLVERS)}")


class _Progress:
    """A tqdm bar driven by the solvers' ``callback(index, sigma, state)``, one tick a move; silent when disabled."""

    def __init__(self, enabled: bool, desc: str, total: int):
        self.enabled, self.desc, self.total, self.bar = enabled, desc, total, None

    def __call__(self, index: int, sigma: float, state: tuple) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            try:
                from tqdm.auto import tqdm
            except ImportError:  # tqdm is an optional extra
                self.enabled = False
                return
            self.bar = tqdm(total=self.total, desc=self.desc, leave=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _looks_like_hub_id(model: str) -> bool:
    return bool(_HUB_ID.match(model)) and ".." not in model and not model.endswith((".ckpt", ".safetensors"))


def _has_safety_checker(name: str, revision: str | None) -> bool:
    try:
        from diffusers import DiffusionPipeline

        return "safety_checker" in DiffusionPipeline.load_config(name, revision=revision)
    except Exception:  # let from_pretrained report what is wrong with the model
        return False


@contextlib.contextmanager
def _quiet_loading(progress: bool) -> Iterator[None]:
    """Hide the loaders' progress bars unless progress is wanted, and transformers' torch_dtype notice."""
    from diffusers.utils import logging as dlog

    was_enabled = dlog.is_progress_bar_enabled()
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


class BaseEditor:
    """What every editor shares: inversion, reconstruction, editing and generation with a core solver.

    A subclass supplies the model: ``schedule``, ``state_dtype``, ``progress``, ``device``/``dtype``,
    latents (``preprocess``, ``encode``, ``decode``, ``to_images``, ``latent_shape``,
    ``default_size``), prompts (``encode_prompt``, ``eps_model``) and the record saved with an
    inversion (``_model_record``, ``check_model``). :class:`Editor` is Stable Diffusion (VAE
    latents, text prompts); :class:`~bdia.pipelines.digits_editor.DigitsEditor` is the embedded
    digits model (pixels, class labels).
    """

    latent_name = "latent"  # what the round-trip error is measured on, for reports
    default_guidance = 7.5  # generate()'s guidance scale when none is given

    schedule: Schedule
    state_dtype: torch.dtype
    progress: bool
    eps_model: Any

    # ----- what a subclass supplies -------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        raise NotImplementedError

    @property
    def dtype(self) -> torch.dtype:
        raise NotImplementedError

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def preprocess(self, image: Any, size: int | Sequence[int] | None = None) -> torch.Tensor:
        raise NotImplementedError

    def encode_prompt(self, prompt: Prompt, negative_prompt: Prompt | None, batch: int,
                      height: int, width: int) -> tuple[Any, Any]:
        raise NotImplementedError

    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        """The latents' shape for ``batch`` images of ``width`` x ``height`` pixels (ValueError if unsupported)."""
        raise NotImplementedError

    def default_size(self) -> tuple[int, int]:
        """(width, height) that ``generate`` makes by default."""
        raise NotImplementedError

    def fingerprint(self) -> dict[str, Any]:
        raise NotImplementedError

    def _model_record(self) -> dict[str, Any]:
        raise NotImplementedError

    def check_model(self, inv: ImageInversion) -> None:
        """Refuse an inversion made with another model (ValueError naming both)."""
        raise NotImplementedError

    def validate_prompt(self, prompt: Prompt | None) -> None:
        """Refuse a prompt this model cannot take, before any work is done (any text is fine by default)."""

    def to_images(self, pixels: torch.Tensor) -> list:
        """PIL images from decoded pixels in [-1, 1]."""
        return to_pil(pixels)

    # ----- shared ---------------------------------------------------------------------------------------
    def grid(self, num_steps: int, strength: float = 1.0) -> Grid:
        """The grid of ``num_steps`` steps, keeping the last ``strength`` fraction of it."""
        grid = self.schedule.grid(int(num_steps))
        return grid if float(strength) == 1.0 else grid.truncated(strength)

    def guided(self, cond: Any, uncond: Any, guidance_scale: float) -> ClassifierFreeGuidance:
        return ClassifierFreeGuidance(self.eps_model, cond, uncond, guidance_scale)

    # ----- inversion, reconstruction, editing -------------------------------------------------------
    @torch.no_grad()
    def invert(self, image: Any, prompt: Prompt = "", *, negative_prompt: Prompt | None = None,
               guidance_scale: float = 1.0, num_steps: int = 50, strength: float = 1.0,
               method: str | Solver = "bdia", gamma: float | Sequence[float] | str = 1.0, p: float = 0.93,
               size: int | Sequence[int] | None = None, progress: bool | None = None) -> ImageInversion:
        """Invert real images under ``prompt`` (one, or one per image) with classifier-free guidance.

        ``strength`` < 1 inverts only the last part of the grid (the BDIA authors edit with 0.8):
        the result sits at an intermediate noise level, and edits keep more of the image.
        ``method`` is "bdia" (with ``gamma``), "edict" (mixing ``p``), "ddim" (approximate), or a
        Solver. ``size=(width, height)`` resizes the images; without it, :class:`Editor` center-crops
        images that are not multiples of the VAE factor (with a warning).
        """
        solver = make_solver(method, gamma=gamma, p=p, state_dtype=self.state_dtype)
        grid = self.grid(num_steps, strength)
        pixels = self.preprocess(image, size)
        batch, _, height, width = pixels.shape
        start = time.perf_counter()
        clean = self.encode(pixels)
        cond, uncond = self.encode_prompt(prompt, negative_prompt, batch, height, width)
        model = self.guided(cond, uncond, guidance_scale)
        bar = _Progress(self.progress if progress is None else progress, f"{solver.name} inversion", grid.num_steps)
        try:
            core = solver.invert(model, clean.to(self.state_dtype), grid, callback=bar)
        finally:
            bar.close()
        prompts = _as_list(prompt, batch, "prompt")
        negatives = None if negative_prompt is None else _as_list(negative_prompt, batch, "negative prompt")
        return ImageInversion(
            inversion=core, prompt=prompts, negative_prompt=negatives, guidance_scale=float(guidance_scale),
            num_steps=int(num_steps), strength=float(strength), image_size=(int(width), int(height)),
            schedule=_plain(self.schedule.config), model=self._model_record(), state_dtype=self.state_dtype,
            clean=clean, info={"seconds": time.perf_counter() - start},
        )

    @torch.no_grad()
    def reconstruct(self, inv: ImageInversion, *, progress: bool | None = None) -> EditResult:
        """Regenerate the inverted images with the same prompt and guidance (exact for BDIA and EDICT)."""
        result = self._regenerate(inv, inv.prompt, inv.negative_prompt, inv.guidance_scale, progress, "reconstruction")
        if inv.clean is not None:
            result.latent_error = float((result.latents - inv.clean.to(result.latents)).abs().max())
        return result

    @torch.no_grad()
    def edit(self, inv: ImageInversion, prompt: Prompt, *, negative_prompt: Any = SAME,
             guidance_scale: float | None = None, progress: bool | None = None) -> EditResult:
        """Regenerate the inverted images under ``prompt``: an edit.

        ``guidance_scale`` and ``negative_prompt`` default to the inversion's (None: the pipeline's
        default unconditional branch).
        """
        negative = inv.negative_prompt if negative_prompt is SAME else negative_prompt
        scale = inv.guidance_scale if guidance_scale is None else float(guidance_scale)
        return self._regenerate(inv, prompt, negative, scale, progress, "edit")

    @torch.no_grad()
    def generate(self, prompt: Prompt, *, negative_prompt: Prompt | None = None, guidance_scale: float | None = None,
                 num_steps: int = 50, method: str | Solver = "bdia", gamma: float | Sequence[float] | str = 0.5,
                 p: float = 0.93, height: int | None = None, width: int | None = None, num_images: int = 1,
                 generator: torch.Generator | None = None, seed: int | None = None,
                 progress: bool | None = None) -> EditResult:
        """Text to image with a core solver from Gaussian noise (float64 state, like inversion).

        ``gamma`` defaults to 0.5, the BDIA authors' choice for text-to-image at few steps;
        ``guidance_scale`` to the editor's ``default_guidance`` (7.5 for Stable Diffusion).
        """
        if guidance_scale is None:
            guidance_scale = self.default_guidance
        solver = make_solver(method, gamma=gamma, p=p, state_dtype=self.state_dtype)
        grid = self.grid(num_steps)
        default_w, default_h = self.default_size()
        height, width = int(height or default_h), int(width or default_w)
        prompts = [prompt] * num_images if isinstance(prompt, str) else list(prompt)
        shape = self.latent_shape(len(prompts), height, width)
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
        noise = torch.randn(shape, generator=generator, dtype=torch.float32, device=generator.device).to(self.device)
        start = time.perf_counter()
        cond, uncond = self.encode_prompt(prompts, negative_prompt, len(prompts), height, width)
        bar = _Progress(self.progress if progress is None else progress, f"{solver.name} sampling", grid.num_steps)
        try:
            out = solver.solve(self.guided(cond, uncond, guidance_scale), noise.to(self.state_dtype), grid, callback=bar)
        finally:
            bar.close()
        images = self.to_images(self.decode(out.x))
        return EditResult(images, out.x, out.nfe, time.perf_counter() - start)

    def pixel_errors(self, image: Any, result: EditResult | torch.Tensor, inv: ImageInversion | None = None,
                     size: int | Sequence[int] | None = None) -> dict[str, float]:
        """Pixel errors of a reconstruction against ``image``, beside the VAE's own round trip.

        Mean absolute errors in [0, 1] units (see :func:`bdia.pipelines.images.pixel_errors`).
        Pass the inversion's size if it was resized (``size=``).
        """
        pixels = self.preprocess(image, size if size is not None else (inv.image_size if inv else None))
        latents = result.latents if isinstance(result, EditResult) else result
        rec = self.decode(latents)
        vae = self.decode(inv.clean if inv is not None and inv.clean is not None else self.encode(pixels))
        return pixel_errors(pixels, vae, rec)

    def check(self, inv: ImageInversion) -> Grid:
        """Refuse an inversion made with another model, schedule, grid or latent shape; return its grid."""
        self.check_model(inv)
        saved_schedule = Schedule.from_config(inv.schedule)
        if not torch.equal(saved_schedule.alphas_cumprod, self.schedule.alphas_cumprod):
            raise ValueError("this inversion was made with another noise schedule (betas) than this pipeline's; "
                             "load the model it was inverted with")
        if saved_schedule.prediction_type != self.schedule.prediction_type:
            raise ValueError(
                f"this inversion was made with a {saved_schedule.prediction_type!r}-prediction model and this "
                f"pipeline predicts {self.schedule.prediction_type!r}; load the model it was inverted with"
            )
        grid = self.grid(inv.num_steps, inv.strength)
        if not grid.matches(inv.inversion.grid):
            raise ValueError(
                f"this inversion's grid ({inv.num_steps} steps, strength {inv.strength}, "
                f"{saved_schedule.timestep_spacing} spacing) differs from this pipeline's "
                f"({self.schedule.timestep_spacing} spacing, steps_offset {self.schedule.steps_offset}); "
                "pass the scheduler settings used for inversion"
            )
        shape = tuple(inv.inversion.latents[0].shape)
        w, h = inv.image_size
        expected = tuple(self.latent_shape(shape[0], h, w))
        if shape != expected:
            raise ValueError(f"this inversion's latents have shape {shape}, but this model makes {expected} "
                             f"for {w}x{h} images")
        if inv.model.get("dtype") not in (None, dtype_name(self.dtype)):
            warnings.warn(
                f"this inversion was made with the UNet in {inv.model['dtype']} and it now runs in "
                f"{dtype_name(self.dtype)}: the reconstruction is exact only with the same dtype",
                stacklevel=3,
            )
        return grid

    def _regenerate(self, inv: ImageInversion, prompt: Prompt, negative_prompt: Prompt | None,
                    guidance_scale: float, progress: bool | None, what: str) -> EditResult:
        if not isinstance(inv, ImageInversion):
            raise TypeError(f"expected an ImageInversion (from invert or load_inversion), got {type(inv).__name__}")
        grid = self.check(inv)
        solver = inv.make_solver()
        w, h = inv.image_size
        start = time.perf_counter()
        cond, uncond = self.encode_prompt(prompt, negative_prompt, inv.batch_size, h, w)
        model = self.guided(cond, uncond, guidance_scale)
        core = inv.inversion
        if any(z.device != self.device for z in core.latents):
            core = type(core)(tuple(z.to(self.device) for z in core.latents), core.nfe, core.solver, core.grid,
                              core.input_dtype, core.metadata)
        bar = _Progress(self.progress if progress is None else progress, f"{solver.name} {what}", grid.num_steps)
        try:
            out = solver.solve(model, core, grid, callback=bar)
        finally:
            bar.close()
        images = self.to_images(self.decode(out.x))
        return EditResult(images, out.x, out.nfe, time.perf_counter() - start)


class Editor(BaseEditor):
    """Exact inversion, reconstruction and editing of real images with a diffusers SD pipeline.

    Args:
        pipe: a loaded ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline`` (any scheduler;
            only its config is used, to build the :class:`~bdia.Schedule`).
        state_dtype: the solver state's dtype (float64 by default; float32 loses digits, see docs/math.md).
        progress: show a progress bar on the sampling loops (tqdm); each call may override it.
        model_id, revision: recorded in saved inversions (``from_pretrained`` fills them in).
        schedule_overrides: scheduler config keys to replace, e.g. ``timestep_spacing="trailing"``.
    """

    def __init__(self, pipe: Any, *, state_dtype: torch.dtype = torch.float64, progress: bool = True,
                 model_id: str | None = None, revision: str | None = None, **schedule_overrides: Any):
        check_pipeline(pipe)
        if state_dtype not in (torch.float32, torch.float64):
            raise ValueError(f"state_dtype must be torch.float32 or torch.float64, got {state_dtype}")
        if state_dtype == torch.float64 and pipe.unet.device.type == "mps":
            warnings.warn("MPS has no float64: the solver state is kept in float32 (the round trip loses digits)",
                          stacklevel=2)
            state_dtype = torch.float32
        self.pipe = pipe
        self.state_dtype = state_dtype
        self.progress = progress
        self.schedule = Schedule.from_config(dict(pipe.scheduler.config), **schedule_overrides)
        self.model = UNetModel(pipe.unet)
        self.eps_model = to_eps(self.model, self.schedule)
        self.vae_factor = int(getattr(pipe, "vae_scale_factor", 8))
        # SDXL's VAE overflows in float16; diffusers upcasts it, so do we (the latents stay the same).
        if pipe.vae.dtype == torch.float16 and getattr(pipe.vae.config, "force_upcast", False):
            pipe.vae.to(torch.float32)
        self.model_id = model_id or getattr(pipe, "name_or_path", None) or None
        self.revision = revision
        self._fingerprint: dict[str, Any] | None = None

    # ----- loading ------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model: str | os.PathLike, *, torch_dtype: str | torch.dtype | None = None,
                        device: str | torch.device | None = None, revision: str | None = None,
                        variant: str | None = None, state_dtype: torch.dtype = torch.float64, progress: bool = True,
                        **kwargs: Any) -> "Editor":
        """Load a pipeline from a local folder or a hub id (hub ids download on the user's machine).

        ``torch_dtype`` is the UNet's/VAE's dtype (float16 halves memory; the solver state stays
        float64). ``device`` defaults to CUDA when available, else CPU.
        """
        from diffusers import DiffusionPipeline

        name = os.fspath(model)
        dtype = resolve_dtype(torch_dtype)
        if not os.path.isdir(os.path.expanduser(name)):
            if not _looks_like_hub_id(name) or os.path.exists(name):
                raise FileNotFoundError(
                    f"no model folder at {name!r}: give a folder saved with save_pretrained "
                    "(holding model_index.json) or a hub id such as 'org/model'"
                )
        else:
            name = os.path.expanduser(name)
            if not os.path.isfile(os.path.join(name, "model_index.json")):
                raise FileNotFoundError(
                    f"{name!r} has no model_index.json: it is not a diffusers pipeline folder "
                    "(single-file .ckpt/.safetensors checkpoints: convert them with diffusers first)"
                )
        load_kwargs = dict(kwargs)
        if dtype is not None:
            load_kwargs["torch_dtype"] = dtype
        if revision is not None:
            load_kwargs["revision"] = revision
        if variant is not None:
            load_kwargs["variant"] = variant
        if _has_safety_checker(name, revision):
            # Inversion and editing use the UNet, VAE and text encoders only; skip loading the checker.
            load_kwargs.setdefault("safety_checker", None)
            load_kwargs.setdefault("requires_safety_checker", False)
        try:
            with _quiet_loading(progress):
                pipe = DiffusionPipeline.from_pretrained(name, **load_kwargs)
        except OSError as e:
            raise FileNotFoundError(f"could not load model {name!r}: {e}") from None
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        pipe = pipe.to(device)
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=not progress)
        model_id = os.path.abspath(name) if os.path.isdir(name) else name
        return cls(pipe, state_dtype=state_dtype, progress=progress, model_id=model_id, revision=revision)

    # ----- the pieces -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.unet.dtype

    def fingerprint(self) -> dict[str, Any]:
        if self._fingerprint is None:
            self._fingerprint = pipeline_fingerprint(self.pipe)
        return self._fingerprint

    def encode_prompt(self, prompt: Prompt, negative_prompt: Prompt | None, batch: int,
                      height: int, width: int) -> tuple[dict, dict]:
        return encode_prompts(self.pipe, prompt, negative_prompt, batch, height, width)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Scaled VAE latents (float32) of pixels in [-1, 1]: the posterior mean, deterministic."""
        vae = self.pipe.vae
        dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
        latents = dist.mean.float()
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        latents = (latents - shift) * vae.config.scaling_factor
        if not torch.isfinite(latents).all():
            raise NonFiniteError(
                f"the VAE encoder returned NaN or inf in {vae.dtype}; load the model with torch_dtype=float32"
            )
        return latents

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] (float32, clipped) from scaled latents."""
        vae = self.pipe.vae
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        z = latents.float() / vae.config.scaling_factor + shift
        pixels = vae.decode(z.to(vae.device, vae.dtype)).sample.float()
        if not torch.isfinite(pixels).all():
            raise NonFiniteError(f"the VAE decoder returned NaN or inf in {vae.dtype}; use torch_dtype=float32")
        return pixels.clamp(-1.0, 1.0)

    def preprocess(self, image: Any, size: int | Sequence[int] | None = None) -> torch.Tensor:
        """Images (PIL, path, tensor in [0, 1], or a list) to a batch in [-1, 1], sized for the VAE."""
        return to_pixels(image, self.vae_factor, size)

    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        if height % self.vae_factor or width % self.vae_factor or height <= 0 or width <= 0:
            raise ValueError(f"height and width must be multiples of the VAE factor {self.vae_factor}, "
                             f"got {width}x{height}")
        return (batch, self.pipe.unet.config.in_channels, height // self.vae_factor, width // self.vae_factor)

    def default_size(self) -> tuple[int, int]:
        size = int(self.pipe.unet.config.sample_size) * self.vae_factor
        return size, size

    def check_model(self, inv: ImageInversion) -> None:
        saved = inv.model.get("fingerprint", {})
        if "unet_config" not in saved:
            raise ValueError(
                f"this inversion was made with model {inv.model.get('id')!r} ({inv.model.get('class')}), not a "
                f"Stable Diffusion pipeline; load that model (bdia: --model {inv.model.get('id')}, or no --model)"
            )
        mismatch = fingerprint_mismatch(saved, self.fingerprint())
        if mismatch:
            raise ValueError(
                f"this inversion was made with model {inv.model.get('id')!r} ({inv.model.get('class')}) and "
                f"{mismatch} in the loaded model {self.model_id!r}; load the model it was inverted with"
            )

    # ----- helpers ---------------------------------------------------------------------------------
    def _model_record(self) -> dict[str, Any]:
        return {
            "id": self.model_id, "revision": self.revision, "class": type(self.pipe).__name__,
            "dtype": dtype_name(self.dtype), "fingerprint": self.fingerprint(),
        }

def _plain(config: Any) -> dict[str, Any]:
    out = {}
    for k, v in dict(config).items():
        if isinstance(v, torch.Tensor):
            v = v.tolist()
        elif hasattr(v, "tolist"):
            v = v.tolist()
        out[k] = v
    return out
