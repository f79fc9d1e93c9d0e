"""Invert, reconstruct, edit and generate images with one :class:`Editor` over a small model backend.

    editor = Editor.from_pretrained("path/or/hub-id", torch_dtype=torch.float16, device="cuda")
    inv = editor.invert("cat.png", "a photo of a cat", num_steps=50)
    editor.edit(inv, "a photo of a dog").images[0].save("dog.png")

    digits = Editor.from_pretrained("digits")      # the embedded 16x16 digits model; prompts "0".."9"

Inversion: the backend encodes the images to latents (Stable Diffusion: the VAE's posterior mean
times the scaling factor; digits: the pixels themselves), then ``solver.invert`` runs under the
backend's guided eps model for the source prompt. Reconstruction regenerates with the same guided
model, so BDIA and EDICT return the latents exactly (up to rounding); an edit regenerates from the
same latents under another prompt and guidance. The model runs in its own dtype while the solver
state stays in ``state_dtype`` (float64 by default).

What is model-specific lives in a :class:`Backend`; the Editor holds the flow that every model
shares. Backends (:mod:`bdia.editing.backends`, one module per family): Stable Diffusion 1.x/2.x/XL
(``stable_diffusion``), Stable Diffusion 3 and Flux (``flow``, velocity grids: docs/math.md section 9) and
the digits model (``digits``); ``from_pretrained`` resolves the model once and the backend registry loads
it (an embedded model by its id, a diffusers folder by its ``model_index.json``). A new model family is a
new backend registered there, not a new editor.
"""

from __future__ import annotations

import inspect
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..io.images import pixel_errors, to_uint8
from ..io.saved import ImageInversion, dtype_name
from ..models import ClassifierFreeGuidance, _cat, _expand, model_dtype
from ..runtime import as_size, prompt_list, state_dtype_for, torch_threads
from ..schedule import Grid, Schedule
from ..solvers import Inversion, Solver, make_solver
from .backends import FAMILY_NAMES, Backend, backend_for_pipeline, load_backend, resolve_model_choice

__all__ = ["Backend", "Editor", "EditResult", "compare_pixels", "load_editor"]

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


class _Progress:
    """A tqdm bar driven by the solvers' ``callback(index, sigma, state)``, one tick a move; silent when disabled."""

    def __init__(self, enabled: bool, desc: str, total: int):
        self.enabled, self.desc, self.total = enabled, desc, total
        self.bar: Any = None  # a tqdm bar (an optional, untyped extra), made on the first tick

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


class Editor:
    """Inversion, reconstruction, editing and generation over a :class:`Backend`.

    Args:
        backend: a :class:`Backend`, or a loaded diffusers ``StableDiffusionPipeline`` /
            ``StableDiffusionXLPipeline`` (wrapped in
            :class:`~bdia.editing.backends.stable_diffusion.StableDiffusionBackend` with ``model_id``, ``revision``
            and ``schedule_overrides`` such as ``timestep_spacing="trailing"``),
            ``StableDiffusion3Pipeline`` or ``FluxPipeline`` (:mod:`bdia.editing.backends.flow`).
        state_dtype: the solver state's dtype (float64 by default; float32 loses digits, see docs/math.md).
        progress: show a progress bar on the sampling loops (tqdm); each call may override it.
        threads: torch CPU threads during the sampling loops, restored after each. Default "auto": one thread
            for the embedded models (digits, scenes) on the CPU, which are so small that per-operation overhead
            dominates and extra threads mostly wait (on a shared 2-core machine the default thread count ran one
            digit 25x slower); torch's own setting otherwise. None: always torch's setting
            (``torch.set_num_threads``).
    """

    EMBEDDED_FAMILIES = ("digits", "scenes")

    def __init__(
        self,
        backend: Any,
        *,
        state_dtype: torch.dtype = torch.float64,
        progress: bool = True,
        threads: int | str | None = "auto",
        **pipeline_options: Any,
    ):
        if not isinstance(backend, Backend):
            backend = backend_for_pipeline(backend, **pipeline_options)
        elif pipeline_options:
            raise TypeError(
                f"options {sorted(pipeline_options)} apply to a diffusers pipeline, not a {type(backend).__name__}"
            )
        self.backend = backend
        self.state_dtype = state_dtype_for(backend.device, state_dtype)
        self.progress = progress
        if threads == "auto":
            tiny = backend.family in self.EMBEDDED_FAMILIES and torch.device(backend.device).type == "cpu"
            threads = 1 if tiny else None
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be 'auto', None or a positive integer, got {threads!r}")
        self.threads: int | None = threads

    @classmethod
    def from_pretrained(
        cls,
        model: Any,
        *,
        torch_dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        state_dtype: torch.dtype = torch.float64,
        progress: bool = True,
        **kwargs: Any,
    ) -> Editor:
        """An editor for ``model``: "digits" (the embedded digits model), a diffusers folder or a hub id.

        The backend follows the pipeline class in the folder's ``model_index.json``: Stable Diffusion
        (1.x/2.x/XL), Stable Diffusion 3 or Flux (:func:`~bdia.io.loading.model_family`).

        ``torch_dtype`` is the model's dtype (float16 halves memory; the solver state stays float64);
        ``device`` defaults to CUDA, else MPS, else the CPU. Other keywords (``revision``,
        ``variant``, ``allow_pickle``...) go to :func:`~bdia.io.loading.load_pipeline`.
        """
        threads = kwargs.pop("threads", "auto")
        choice = resolve_model_choice(model, dtype=torch_dtype, device=device, revision=kwargs.pop("revision", None))
        backend = load_backend(choice, progress=progress, **kwargs)
        return cls(backend, state_dtype=state_dtype, progress=progress, threads=threads)

    # ----- what callers read ----------------------------------------------------------------------
    @property
    def schedule(self) -> Schedule:
        return self.backend.schedule

    @property
    def device(self) -> torch.device:
        return self.backend.device

    @property
    def default_guidance(self) -> float:
        return self.backend.default_guidance

    def grid(
        self, num_steps: int, strength: float = 1.0, size: tuple[int, int] | None = None, kind: str = "diffusers"
    ) -> Grid:
        """The grid of ``num_steps`` steps for images of ``size`` (width, height), keeping the last
        ``strength`` fraction of it. ``kind`` is one of :data:`bdia.grids.GRID_KINDS` ("diffusers": the
        schedule's own spacing, as the pipeline's scheduler; "karras" measured most faithful, see README)."""
        return self.backend.grid(num_steps, strength, size, kind)

    def validate_prompt(self, prompt: Prompt | None) -> None:
        """Refuse a prompt (or list of prompts) the model cannot take, before any work is done."""
        if prompt is None:
            return
        for p in [prompt] if isinstance(prompt, str) else list(prompt):
            self.backend.check_prompt(p)

    def _conditions(self, prompt: Prompt, negative: Prompt | None, batch: int, height: int, width: int):
        prompts = prompt_list(prompt, batch, "prompt")
        negatives = None if negative is None else prompt_list(negative, batch, "negative prompt")
        self.validate_prompt(prompts)
        self.validate_prompt(negatives)
        return prompts, negatives, self.backend.conditions(prompts, negatives, height, width)

    def _run(self, solver: Solver, model: Any, start: Any, grid: Grid, progress: bool | None, what: str) -> Any:
        bar = _Progress(self.progress if progress is None else progress, f"{solver.name} {what}", grid.num_steps)
        try:
            with torch_threads(self.threads):
                if what == "inversion":
                    return solver.invert(model, start, grid, callback=bar)
                return solver.solve(model, start, grid, callback=bar)
        finally:
            bar.close()

    # ----- inversion, reconstruction, editing -------------------------------------------------------
    @torch.no_grad()
    def invert(
        self,
        image: Any,
        prompt: Prompt = "",
        *,
        negative_prompt: Prompt | None = None,
        guidance_scale: float = 1.0,
        num_steps: int = 50,
        strength: float = 1.0,
        method: str | Solver = "bdia",
        gamma: float | Sequence[float] | str | None = None,
        p: float | None = None,
        size: int | Sequence[int] | None = None,
        progress: bool | None = None,
        grid: str = "diffusers",
    ) -> ImageInversion:
        """Invert real images under ``prompt`` (one, or one per image) with classifier-free guidance.

        ``strength`` < 1 inverts only the last part of the grid (the BDIA authors edit with 0.8):
        the result sits at an intermediate noise level, and edits keep more of the image.
        ``method`` is "bdia" (with ``gamma``, default 1), "edict" (mixing ``p``, default 0.93),
        "ddim" (approximate), or a Solver; a parameter the method does not take is refused.
        ``size=(width, height)`` resizes the images; without it the backend decides (Stable
        Diffusion center-crops to the VAE factor, with a warning).
        """
        solver = make_solver(method, state_dtype=self.state_dtype, gamma=gamma, p=p)
        pixels = self.backend.load_images(image, as_size(size))
        batch, _, height, width = pixels.shape
        grid_kind, run_grid = grid, self.backend.grid(num_steps, strength, (width, height), grid)
        prompts, negatives, (cond, uncond) = self._conditions(prompt, negative_prompt, batch, height, width)
        start = time.perf_counter()
        clean = self.backend.encode(pixels)
        model = self.backend.guided(cond, uncond, guidance_scale)
        core = self._run(solver, model, clean.to(self.state_dtype), run_grid, progress, "inversion")
        settings = (guidance_scale, num_steps, strength, (width, height))
        return self._inversion(core, prompts, negatives, *settings, clean, grid_kind, start)

    def check_null_text(self) -> None:
        """Refuse (ValueError) a model whose unconditional condition null-text inversion cannot optimise."""
        if self.backend.family in ("sd3", "flux"):
            raise ValueError("null-text inversion runs DDIM on eps models; this flow-matching model has none")
        from ..nulltext import text_part

        w, h = self.backend.default_size
        cond, uncond = self.backend.conditions([""], None, h, w)
        guided = self.backend.guided(cond, uncond, 2.0)
        if not isinstance(guided, ClassifierFreeGuidance) or text_part(guided.uncond) is None:
            raise ValueError(
                "null-text inversion optimises the unconditional text embedding, and this model's unconditional "
                "branch has none: use another method"
            )

    @torch.no_grad()
    def null_text_invert(
        self,
        image: Any,
        prompt: Prompt = "",
        *,
        negative_prompt: Prompt | None = None,
        guidance_scale: float | None = None,
        num_steps: int = 50,
        strength: float = 1.0,
        inner_steps: int = 10,
        size: int | Sequence[int] | None = None,
        grid: str = "diffusers",
    ) -> ImageInversion:
        """Null-text inversion (Mokady et al. 2023; :func:`bdia.nulltext.null_text_invert`), image by image.

        The result is a DDIM inversion at guidance 1 (the pivot) plus, per grid step and image, an
        unconditional embedding optimised so that guided DDIM at ``guidance_scale`` (default: the model's)
        retraces the pivot (``inv.null_embeddings``, shape (steps, batch, ...)). ``reconstruct`` and ``edit``
        use them in place of the negative prompt's embedding on every branch, controls included: close to
        the image, not exact, at up to ``2 * inner_steps + 2`` network passes (forward or backward) a step.
        Stable Diffusion: the token states of the empty prompt are optimised (SDXL's pooled embedding and
        time ids are kept); flow models (SD3, Flux) are refused.
        """
        from ..nulltext import null_text_invert

        self.check_null_text()
        scale = self.default_guidance if guidance_scale is None else float(guidance_scale)
        solver = make_solver("ddim", state_dtype=self.state_dtype)
        pixels = self.backend.load_images(image, as_size(size))
        batch, _, height, width = pixels.shape
        run_grid = self.backend.grid(num_steps, strength, (width, height), grid)
        prompts, negatives, (cond, uncond) = self._conditions(prompt, negative_prompt, batch, height, width)
        guided = self.backend.guided(cond, uncond, scale)
        assert isinstance(guided, ClassifierFreeGuidance)  # check_null_text made sure
        start = time.perf_counter()
        clean = self.backend.encode(pixels)
        noise, embeddings, nfe, losses = [], [], 0, []
        with torch_threads(self.threads):
            for k in range(batch):
                cond_k, uncond_k = (_row(_expand(c, batch), k) for c in (guided.cond, guided.uncond))
                one = ClassifierFreeGuidance(guided.model, cond_k, uncond_k, scale, guided.batched)
                nt = null_text_invert(
                    one, clean[k : k + 1].to(self.state_dtype), run_grid, inner_steps=inner_steps,
                    state_dtype=self.state_dtype,
                )  # fmt: skip
                noise.append(nt.noise)
                embeddings.append(torch.stack(nt.uncond))
                nfe += nt.nfe
                losses.append(nt.losses)
        core = Inversion(
            (torch.cat(noise),), nfe, solver.config(), run_grid.fingerprint(), input_dtype=self.state_dtype
        )
        settings = (scale, num_steps, strength, (width, height))
        inv = self._inversion(core, prompts, negatives, *settings, clean, grid, start)
        inv.info["null_text_losses"] = losses
        inv.null_embeddings = torch.cat(embeddings, dim=1)
        return inv

    def _inversion(
        self,
        core: Inversion,
        prompts: list[str],
        negatives: list[str] | None,
        guidance_scale: float,
        num_steps: int,
        strength: float,
        size: tuple[int, int],
        clean: torch.Tensor,
        grid_kind: str,
        start: float,
    ) -> ImageInversion:
        """The :class:`ImageInversion` of ``core``: what a later reconstruct or edit needs beside the latents."""
        return ImageInversion(
            inversion=core,
            prompt=prompts,
            negative_prompt=negatives,
            guidance_scale=float(guidance_scale),
            num_steps=int(num_steps),
            strength=float(strength),
            image_size=(int(size[0]), int(size[1])),
            schedule=self.backend.schedule_record(),
            model=self.backend.record(),
            state_dtype=self.state_dtype,
            clean=clean,
            info={"seconds": time.perf_counter() - start},
            family=self.backend.family,
            grid_kind=grid_kind,
        )

    @torch.no_grad()
    def reconstruct(self, inv: ImageInversion, *, progress: bool | None = None) -> EditResult:
        """Regenerate the inverted images with the same prompt and guidance (exact for BDIA and EDICT).

        ``latent_error`` is the max latent difference from the inverted latents; ``info["identical"]``
        the fraction of 8-bit pixels equal to those of the decoded inverted latents.
        """
        if not isinstance(inv, ImageInversion):
            raise TypeError(
                f"reconstruct takes an ImageInversion (from invert or load_inversion), got "
                f"{type(inv).__name__}; for a file: editor.reconstruct(load_inversion(path))"
            )
        result = self._regenerate(inv, inv.prompt, inv.negative_prompt, inv.guidance_scale, progress, "reconstruction")
        if inv.clean is not None:
            clean = inv.clean.to(result.latents)
            result.latent_error = float((result.latents - clean).abs().max())
            decode = self.backend.decode
            same = to_uint8(decode(result.latents, inv.image_size)) == to_uint8(decode(clean, inv.image_size))
            result.info["identical"] = float(same.double().mean())
        return result

    @torch.no_grad()
    def edit(
        self,
        inv: ImageInversion,
        prompt: Prompt,
        *,
        negative_prompt: Any = SAME,
        guidance_scale: float | None = None,
        progress: bool | None = None,
        control: Any = None,
        mask: Any = None,
        branches: str = "sequential",
    ) -> EditResult:
        """Regenerate the inverted images under ``prompt``: an edit.

        ``guidance_scale`` and ``negative_prompt`` default to the inversion's (None: the model's
        default unconditional branch).

        With ``control`` (a :class:`~bdia.editing.controls.Control` such as ``PromptToPrompt()`` or
        ``MutualSelfAttention()`` for UNets, ``SharedValues()`` for SD3/Flux, or a list of them; ``Control()``
        alone is the plain two-branch edit) or ``mask`` (a :class:`~bdia.editing.controls.Mask`, or what it
        takes: an image path, PIL image, array or tensor; 1 = edit), the edit runs two branches: the source
        branch (the inversion's prompt and guidance; it walks the inversion's states back, exactly for BDIA,
        EDICT and Rex) and the target branch (``prompt``), from the same latents; the controls see both
        (docs/editing.md). ``info["source_latents"]`` holds the source branch's result. ``branches``:
        "sequential" (the source branch's network calls are a reconstruction's, exact to the bit) or "batched"
        (both branches in one network call per evaluation: cheaper on a GPU, the source branch exact only to
        float rounding since matrix kernels are not batch-invariant).
        """
        if inv.null_embeddings is not None and negative_prompt is not SAME:
            raise ValueError(
                "a null-text inversion's optimised embeddings replace the negative prompt; leave negative_prompt out"
            )
        negative = inv.negative_prompt if negative_prompt is SAME else negative_prompt
        scale = inv.guidance_scale if guidance_scale is None else float(guidance_scale)
        controls = _controls(control, mask)
        if controls is None:
            if branches not in BRANCH_MODES:
                raise ValueError(f"branches must be one of {BRANCH_MODES}, got {branches!r}")
            return self._regenerate(inv, prompt, negative, scale, progress, "edit")
        return self._two_branches(inv, prompt, negative, scale, progress, controls, branches)

    @torch.no_grad()
    def generate(
        self,
        prompt: Prompt,
        *,
        negative_prompt: Prompt | None = None,
        guidance_scale: float | None = None,
        num_steps: int = 50,
        method: str | Solver = "bdia",
        gamma: float | Sequence[float] | str | None = None,
        p: float | None = None,
        height: int | None = None,
        width: int | None = None,
        num_images: int = 1,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        progress: bool | None = None,
        grid: str = "diffusers",
    ) -> EditResult:
        """Text to image with a core solver from Gaussian noise (float64 state, like inversion).

        ``gamma`` defaults to 0.5 for BDIA, the authors' choice for text-to-image at few steps;
        ``guidance_scale`` to the backend's ``default_guidance`` (7.5 for Stable Diffusion, 2 for digits).
        """
        if guidance_scale is None:
            guidance_scale = self.backend.default_guidance
        if gamma is None and str(method).lower() == "bdia":
            gamma = 0.5
        solver = make_solver(method, state_dtype=self.state_dtype, gamma=gamma, p=p)
        default_w, default_h = self.backend.default_size
        for name, v in (("height", height), ("width", width)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(
                    f"{name} must be a positive number of pixels (or None: the model's default), got {v!r}"
                )
        if not isinstance(prompt, str) and num_images not in (1, len(prompt)):
            raise ValueError(
                f"num_images={num_images} with {len(prompt)} prompts: give one prompt for num_images "
                "images, or one prompt per image"
            )
        height, width = int(height or default_h), int(width or default_w)
        run_grid = self.backend.grid(num_steps, 1.0, (width, height), grid)
        batch = num_images if isinstance(prompt, str) else len(prompt)
        shape = self.backend.latent_shape(batch, height, width)
        _, _, (cond, uncond) = self._conditions(prompt, negative_prompt, batch, height, width)
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
        noise = torch.randn(shape, generator=generator, dtype=torch.float32, device=generator.device)
        start = time.perf_counter()
        model = self.backend.guided(cond, uncond, guidance_scale)
        out = self._run(solver, model, noise.to(self.device, self.state_dtype), run_grid, progress, "sampling")
        images = self.backend.to_images(self.backend.decode(out.x, (width, height)))
        return EditResult(images, out.x, out.nfe, time.perf_counter() - start)

    def pixel_errors(
        self,
        image: Any,
        result: EditResult | torch.Tensor,
        inv: ImageInversion | None = None,
        size: int | Sequence[int] | None = None,
    ) -> dict[str, float]:
        """Errors of a reconstruction against ``image`` (see :func:`compare_pixels`); with a lossy codec (a
        VAE) also ``vae_roundtrip`` (the codec's own round trip, which exact inversion cannot beat) and
        ``vs_vae`` (reconstruction against that round trip; :func:`bdia.io.images.pixel_errors`).
        Pass the inversion's size if it was resized.
        """
        pixels = self.backend.load_images(image, as_size(size) or (inv.image_size if inv else None))
        latents = result.latents if isinstance(result, EditResult) else result
        size = (pixels.shape[-1], pixels.shape[-2])
        rec = self.backend.decode(latents, size)
        errors = compare_pixels(pixels, rec)
        if not self.backend.lossy_codec:
            return errors
        clean = inv.clean if inv is not None and inv.clean is not None else self.backend.encode(pixels)
        codec = self.backend.decode(clean.to(self.device), size).float().cpu()
        return {**errors, **pixel_errors(pixels.float().cpu(), codec, rec.float().cpu())}

    def file_errors(self, image: Any, written: Any, size: int | Sequence[int] | None = None) -> dict[str, float]:
        """:func:`compare_pixels` of image files as written (e.g. after a lossy format) against ``image``."""
        size = as_size(size)
        return compare_pixels(self.backend.load_images(image, size), self.backend.load_images(written, size))

    def check(self, inv: ImageInversion) -> Grid:
        """Refuse an inversion made with another model, schedule, grid or latent shape; return its grid."""
        if not isinstance(inv, ImageInversion):
            raise TypeError(f"expected an ImageInversion (from invert or load_inversion), got {type(inv).__name__}")
        if inv.family is not None and inv.family != self.backend.family:
            loaded = FAMILY_NAMES.get(self.backend.family, f"a {self.backend.family!r} model")
            raise ValueError(
                f"this inversion was made with model {inv.model.get('id')!r}, a {inv.family!r} model, "
                f"not {loaded} like the loaded one; load the model it was inverted with"
            )
        self.backend.check_record(inv.model)
        self.backend.check_schedule(inv.schedule)
        grid = self.backend.grid(inv.num_steps, inv.strength, tuple(inv.image_size), inv.grid_kind)
        if not grid.matches(inv.inversion.grid):
            spacing = (inv.schedule.get("timestep_spacing"), getattr(self.backend.schedule, "timestep_spacing", None))
            raise ValueError(
                f"this inversion's grid ({inv.num_steps} steps, strength {inv.strength}, {spacing[0]} spacing) "
                f"differs from this model's ({spacing[1]} spacing); pass the scheduler settings used for inversion"
            )
        shape = tuple(inv.inversion.latents[0].shape)
        w, h = inv.image_size
        expected = tuple(self.backend.latent_shape(shape[0], h, w))
        if shape != expected:
            raise ValueError(
                f"this inversion's latents have shape {shape}, but this model makes {expected} for {w}x{h} images"
            )
        if inv.null_embeddings is not None and tuple(inv.null_embeddings.shape[:2]) != (grid.num_steps, shape[0]):
            raise ValueError(
                f"this null-text inversion holds embeddings of shape {tuple(inv.null_embeddings.shape)}; its grid and "
                f"batch need ({grid.num_steps}, {shape[0]}, ...): one per step and image"
            )
        if inv.model.get("dtype") not in (None, dtype_name(self.backend.dtype)):
            warnings.warn(
                f"this inversion was made with the model in {inv.model['dtype']} and it now runs in "
                f"{dtype_name(self.backend.dtype)}: the reconstruction is exact only with the same dtype",
                stacklevel=3,
            )
        return grid

    def _guided(self, inv: ImageInversion, grid: Grid, cond: Any, uncond: Any, scale: float) -> Any:
        """The backend's guided model; for a null-text inversion, with its per-step unconditional embeddings."""
        guided = self.backend.guided(cond, uncond, scale)
        if inv.null_embeddings is None:
            return guided
        from ..nulltext import PerStepUncond

        embeddings = inv.null_embeddings.to(self.device)
        return PerStepUncond(guided, list(embeddings), grid.timesteps.tolist())

    def _regenerate(
        self,
        inv: ImageInversion,
        prompt: Prompt,
        negative_prompt: Prompt | None,
        guidance_scale: float,
        progress: bool | None,
        what: str,
    ) -> EditResult:
        grid = self.check(inv)
        solver = inv.make_solver()
        w, h = inv.image_size
        _, _, (cond, uncond) = self._conditions(prompt, negative_prompt, inv.batch_size, h, w)
        start = time.perf_counter()
        model = self._guided(inv, grid, cond, uncond, guidance_scale)
        core = inv.inversion
        if any(z.device != self.device for z in core.latents):
            core = type(core)(
                tuple(z.to(self.device) for z in core.latents),
                core.nfe,
                core.solver,
                core.grid,
                core.input_dtype,
                core.metadata,
            )
        out = self._run(solver, model, core, grid, progress, what)
        images = self.backend.to_images(self.backend.decode(out.x, (w, h)))
        return EditResult(images, out.x, out.nfe, time.perf_counter() - start)

    def _two_branches(
        self,
        inv: ImageInversion,
        prompt: Prompt,
        negative_prompt: Prompt | None,
        guidance_scale: float,
        progress: bool | None,
        controls: list[Any],
        branches: str,
    ) -> EditResult:
        """The source and target branches advanced together; see :meth:`edit`."""
        from .controls.base import EditContext, attention_network, install_processors

        if branches not in BRANCH_MODES:
            raise ValueError(f"branches must be one of {BRANCH_MODES}, got {branches!r}")
        if branches == "batched" and inv.null_embeddings is not None:
            raise ValueError("a null-text inversion's branches use per-step embeddings; use branches='sequential'")
        grid = self.check(inv)
        solver = inv.make_solver()
        if "between" not in inspect.signature(solver.solve).parameters:
            raise ValueError(f"edit controls need a float solver; {type(solver).__name__} has no between-steps hook")
        b = inv.batch_size
        w, h = inv.image_size
        source_prompts = prompt_list(inv.prompt, b, "prompt")
        target_prompts, _, (cond_t, uncond_t) = self._conditions(prompt, negative_prompt, b, h, w)
        _, _, (cond_s, uncond_s) = self._conditions(source_prompts, inv.negative_prompt, b, h, w)
        attention = [c for c in controls if getattr(c, "attention", False)]
        net = attention_network(self.backend)
        if attention and net is None:
            family = FAMILY_NAMES.get(self.backend.family, self.backend.family)
            raise ValueError(
                f"the {attention[0].name} control acts on attention layers and {family} has none; "
                "use a mask (mask=...) instead"
            )
        if len(attention) > 1:
            raise ValueError(f"one attention control at a time, got {', '.join(c.name for c in attention)}")
        start = time.perf_counter()
        source = self._guided(inv, grid, cond_s, uncond_s, inv.guidance_scale)
        target = self._guided(inv, grid, cond_t, uncond_t, guidance_scale)
        context = EditContext(
            self.backend,
            grid.num_steps,
            b,
            source_prompts,
            target_prompts,
            tuple(inv.inversion.latents[0].shape),
            (w, h),
        )
        model = _TwoBranches(source, target, context, branches)
        core = inv.inversion
        doubled = type(core)(
            tuple(torch.cat([z, z]).to(self.device) for z in core.latents),
            core.nfe,
            core.solver,
            core.grid,
            core.input_dtype,
            core.metadata,
        )

        def between(index: int, state: tuple) -> tuple:
            for c in controls:
                state = c.after_step(index - 1, state)
            context.step = index
            return state

        context.step = solver.warmup
        installed: list[Any] = []
        originals = None
        bar = _Progress(self.progress if progress is None else progress, f"{solver.name} edit", grid.num_steps)
        try:
            for c in controls:
                c.install(self.backend, context)
                installed.append(c)
            if attention:
                originals = install_processors(net, attention[0], context)
            with torch_threads(self.threads):  # as the reconstruction runs: the source branch must match it
                out = solver.solve(model, doubled, grid, callback=bar, between=between)
        finally:
            bar.close()
            if originals is not None and net is not None:
                net.set_attn_processor(originals)
            for c in installed:
                c.remove()
        source_x, target_x = out.x[:b], out.x[b:]
        images = self.backend.to_images(self.backend.decode(target_x, (w, h)))
        info = {"source_latents": source_x, "controls": [repr(c) for c in controls], "branches": branches}
        return EditResult(images, target_x, out.nfe, time.perf_counter() - start, info=info)


BRANCH_MODES = ("sequential", "batched")


def _controls(control: Any, mask: Any) -> list[Any] | None:
    """The edit's controls (a list), or None for a plain one-branch edit."""
    from .controls.base import Control

    if control is None and mask is None:
        return None
    items = [] if control is None else list(control) if isinstance(control, (list, tuple)) else [control]
    for c in items:
        if not isinstance(c, Control):
            raise TypeError(
                f"control must be a bdia.editing Control (PromptToPrompt(), MutualSelfAttention(), Mask(...)) "
                f"or a list of them, got {type(c).__name__}"
            )
    if mask is not None:
        if isinstance(mask, Control):
            items.append(mask)
        else:
            from .controls.mask import Mask

            items.append(Mask(mask))
    return items


def _row(cond: Any, k: int) -> Any:
    """Image ``k`` of a batched condition (a tensor or a dict of them)."""
    return {key: _row(v, k) for key, v in cond.items()} if isinstance(cond, dict) else cond[k : k + 1]


def _halves(guided: Any) -> int:
    """2 when ``guided`` calls its network on one [unconditional, conditional] batch, else 1."""
    return 2 if isinstance(guided, ClassifierFreeGuidance) and guided.batched and guided.scale not in (0.0, 1.0) else 1


class _TwoBranches:
    """``model(x, t)`` over the two-branch state (rows [source B, target B]): each branch under its own guided
    model, one after the other ("sequential") or in one network call ("batched")."""

    def __init__(self, source: Any, target: Any, context: Any, mode: str):
        self.source, self.target, self.context, self.mode = source, target, context, mode
        if mode == "batched":
            same = (
                isinstance(source, ClassifierFreeGuidance)
                and isinstance(target, ClassifierFreeGuidance)
                and source.model is target.model
                and _halves(source) == _halves(target)
                and (source.scale == target.scale or _halves(source) == 2)
            )
            if not same:
                raise ValueError(
                    "branches='batched' needs both branches guided alike (both with or both without an "
                    "unconditional half, one network); use branches='sequential'"
                )

    @property
    def dtype(self) -> torch.dtype | None:
        return model_dtype(self.source)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b, ctx = self.context.batch, self.context
        if self.mode == "sequential":
            ctx.phase, ctx.halves = "source", _halves(self.source)
            e_s = self.source(x[:b], t[:b])
            ctx.phase, ctx.halves = "target", _halves(self.target)
            e_t = self.target(x[b:], t[b:])
            return torch.cat([e_s, e_t])
        src, tgt = self.source, self.target
        cond = _cat(_expand(src.cond, b), _expand(tgt.cond, b))
        ctx.phase, ctx.halves = "both", _halves(src)
        if ctx.halves == 1:
            if src.scale == 0.0:
                cond = _cat(_expand(src.uncond, b), _expand(tgt.uncond, b))
            return src.model(x, t, cond)
        uncond = _cat(_expand(src.uncond, b), _expand(tgt.uncond, b))
        e_u, e_c = src.model(torch.cat([x, x]), torch.cat([t, t]), _cat(uncond, cond)).chunk(2)
        e_s = e_u[:b] + src.scale * (e_c[:b] - e_u[:b])
        e_t = e_u[b:] + tgt.scale * (e_c[b:] - e_u[b:])
        return torch.cat([e_s, e_t])


def load_editor(
    model: str,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    revision: str | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> Editor:
    """An editor with the command line's defaults: "auto" dtype on CUDA is float16 for Stable Diffusion
    and bfloat16 for SD3 and Flux (their transformers overflow float16), float32 elsewhere (the embedded
    models always default to float32). The model is resolved once (:func:`resolve_model_choice`)."""
    choice = resolve_model_choice(model, dtype=dtype, device=device, revision=revision, cli_defaults=True)
    return Editor(load_backend(choice, progress=progress, **kwargs), progress=progress)


def compare_pixels(original: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    """Errors of ``other`` against ``original`` (both pixels in [-1, 1], one shape): ``reconstruction``
    (mean absolute error in [0, 1] units), ``max_error`` (in 8-bit levels) and ``identical`` (fraction
    of equal 8-bit values, as image files hold them)."""
    if original.shape != other.shape:
        raise ValueError(
            f"{original.shape[0]} image(s) of shape {tuple(original.shape[1:])} given for "
            f"{other.shape[0]} of shape {tuple(other.shape[1:])}"
        )
    a, b = original.detach().double().cpu(), other.detach().double().cpu()
    diff8 = (to_uint8(a).int() - to_uint8(b).int()).abs()
    return {
        "reconstruction": float((a - b).abs().mean() / 2.0),
        "max_error": int(diff8.max()),
        "identical": float((diff8 == 0).double().mean()),
    }
