"""Stable Diffusion 3 and Flux as :class:`~bdia.editing.editor.Backend` s of the one Editor.

docs/math.md sections 7 and 9. A backend wraps a loaded ``StableDiffusion3Pipeline`` or ``FluxPipeline``;
``Editor.from_pretrained(DIR)`` picks it from the folder's ``model_index.json``
(:func:`~bdia.io.loading.model_family`). What differs from Stable Diffusion's backend:

- ``encode(pixels)`` / ``decode(latents, size)``: the VAE with its ``shift_factor`` and
  ``scaling_factor`` (the posterior mean, so encoding is deterministic); Flux latents packed into
  2x2 patches, as FluxPipeline keeps them;
- ``grid(num_steps, strength, size)``: the velocity grid the pipeline would run (SD3: ``shift``, and
  ``mu`` when the scheduler shifts dynamically; Flux: ``linspace(1, 1/N, N)`` shifted by ``mu`` from the
  image's token count), see :class:`bdia.flow.FlowSchedule`;
- ``conditions(prompts, negatives, height, width)``: ``(cond, uncond)`` dicts of batched tensors (SD3:
  three text encoders, ``text_encoder_3`` optional as diffusers allows; Flux: CLIP pooled + T5, and
  uncond only when a negative prompt is given);
- ``guided(cond, uncond, scale)``: ``model(x, t) -> v`` for the solvers (SD3: classifier-free guidance
  when scale != 1; Flux: ``scale`` is the guidance embedding, and true CFG over the two branches only
  with ``true_cfg_scale > 1`` and a negative prompt, as FluxPipeline);
- ``record()`` / ``check_record``: family, transformer and VAE configs and a probe of transformer
  weights (:func:`flow_fingerprint_mismatch`) to refuse another model.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, cast

import torch

from ...flow import FlowSchedule, flux_sigmas
from ...io.images import to_pixels
from ...io.saved import dtype_name
from ...models import ClassifierFreeGuidance
from ...runtime import choose_device, resolve_dtype
from ...schedule import Grid
from .base import Backend
from .stable_diffusion import _plain_config, fingerprint_mismatch

if TYPE_CHECKING:
    from diffusers.models.modeling_utils import ModelMixin

__all__ = ["FluxBackend", "SD3Backend", "flow_fingerprint_mismatch", "FluxTransformerModel", "SD3TransformerModel"]

_PROBE_SIZE = 64  # transformer weights sampled per probed parameter


def flow_fingerprint_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    """A sentence naming what differs between two flow fingerprints (family, then as
    :func:`~bdia.editing.backends.stable_diffusion.fingerprint_mismatch` over the transformer), or None."""
    if saved.get("family") != current.get("family"):
        return f"it was made with a {saved.get('family')!r} model and this one is {current.get('family')!r}"
    return fingerprint_mismatch(saved, current, "transformer", "transformer")


class _FlowBackend(Backend):
    """What SD3 and Flux share: the VAE with shift and scale, the flow schedule, the image size checks.

    Args:
        pipe: a loaded ``StableDiffusion3Pipeline`` / ``FluxPipeline`` (its scheduler config makes the
            :class:`~bdia.flow.FlowSchedule`).
        model_id, revision: recorded in saved inversions (``from_pretrained`` fills them in).
        max_sequence_length: T5 tokens of a prompt (the pipelines' defaults: SD3 256, Flux 512).
    """

    family: str
    pipeline_class: str
    default_sequence_length: int
    backend_options: tuple[str, ...] = ()  # from_pretrained keywords for the backend rather than diffusers
    # a flow schedule, not Backend's VP Schedule: this class overrides every Backend method that reads it
    schedule: FlowSchedule  # type: ignore[assignment]

    def __init__(
        self,
        pipe: Any,
        *,
        model_id: str | None = None,
        revision: str | None = None,
        max_sequence_length: int | None = None,
    ):
        if type(pipe).__name__ != self.pipeline_class:
            raise ValueError(f"{type(self).__name__} drives a {self.pipeline_class}, got a {type(pipe).__name__}")
        self.pipe = pipe
        self.schedule = FlowSchedule.from_config(dict(pipe.scheduler.config))
        self.vae_scale = int(pipe.vae_scale_factor)
        self.model_id = model_id or getattr(pipe, "name_or_path", None) or None
        self.revision = revision
        self.max_sequence_length = int(max_sequence_length or self.default_sequence_length)

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike,
        *,
        torch_dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        revision: str | None = None,
        progress: bool = True,
        max_sequence_length: int | None = None,
        **kwargs: Any,
    ) -> _FlowBackend:
        """Load with :func:`~bdia.io.loading.load_pipeline` (safetensors only unless
        ``allow_pickle=True``); components the folder lacks (SD3's ``text_encoder_3``) stay absent.
        The backend's own options (Flux: ``true_cfg_scale``) go to the backend, the rest to diffusers."""
        from ...io.loading import absent_components, load_pipeline, resolve_model

        options = {k: kwargs.pop(k) for k in cls.backend_options if k in kwargs}
        kwargs = {**absent_components(model, revision), **kwargs}
        pipe = load_pipeline(model, dtype=resolve_dtype(torch_dtype), revision=revision, progress=progress, **kwargs)
        if type(pipe).__name__ != cls.pipeline_class:
            raise ValueError(f"{os.fspath(model)!r} holds a {type(pipe).__name__}, not a {cls.pipeline_class}")
        pipe = pipe.to(choose_device(device))
        pipe.set_progress_bar_config(disable=not progress)
        return cls(
            pipe, model_id=resolve_model(model), revision=revision, max_sequence_length=max_sequence_length, **options
        )

    @property
    def device(self) -> torch.device:
        return self.pipe.transformer.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.transformer.dtype

    @property
    def patch(self) -> int:
        raise NotImplementedError

    @property
    def factor(self) -> int:
        """Image sides must be multiples of this: the VAE's downsampling times the transformer's patch."""
        return self.vae_scale * self.patch

    @property
    def default_size(self) -> tuple[int, int]:
        size = int(self.pipe.default_sample_size) * self.vae_scale
        return size, size

    def _latent_hw(self, height: int, width: int) -> tuple[int, int]:
        if height % self.factor or width % self.factor or height <= 0 or width <= 0:
            raise ValueError(
                f"{self.family} needs height and width divisible by {self.factor}, got "
                f"{width}x{height}; resize or crop the image"
            )
        return height // self.vae_scale, width // self.vae_scale

    def image_seq_len(self, height: int, width: int) -> int:
        """The image's transformer token count (what Flux's mu depends on)."""
        h, w = self._latent_hw(height, width)
        return (h // self.patch) * (w // self.patch)

    def load_images(self, images: Any, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Images (PIL, path, tensor in [0, 1], or a list) to a batch in [-1, 1], cropped to :attr:`factor`."""
        return to_pixels(images, self.factor, size).to(self.device)

    def grid(
        self, num_steps: int, strength: float = 1.0, size: tuple[int, int] | None = None, kind: str = "diffusers"
    ) -> Grid:
        if kind != "diffusers":
            raise ValueError(
                f"grid kind {kind!r} is for discrete-time models; a flow model runs on its pipeline's "
                "own (shifted) grid: leave the grid at 'diffusers'"
            )
        width, height = size or self.default_size
        grid = self._grid(int(num_steps), height, width)
        return grid if float(strength) == 1.0 else grid.truncated(strength)

    def _grid(self, num_steps: int, height: int, width: int) -> Grid:
        raise NotImplementedError

    def schedule_record(self) -> dict[str, Any]:
        return {k: v for k, v in self.schedule.config.items() if not k.startswith("_")}

    def check_schedule(self, record: dict[str, Any]) -> None:
        if FlowSchedule.from_config(record) != self.schedule:
            raise ValueError(
                "this inversion was made with another flow schedule (shift, dynamic shifting) than this "
                "model's; load the model it was inverted with"
            )

    # ----- the model's identity ------------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        """Family, transformer and VAE configs, and strided values of the transformer's first and last weights.

        The probe tolerates float16/bfloat16 copies of one checkpoint (see :func:`flow_fingerprint_mismatch`).
        """
        params = [(n, p) for n, p in self.pipe.transformer.named_parameters() if p.dim() > 1]
        probe = {}
        for name, p in (params[0], params[-1]):  # cheap: computed each time, so it follows a dtype change
            flat = p.detach().flatten()
            probe[name] = [float(v) for v in flat[:: max(1, flat.numel() // _PROBE_SIZE)][:_PROBE_SIZE].float().cpu()]
        return {
            "family": self.family,
            "transformer_config": _plain_config(self.pipe.transformer.config),
            "vae_config": _plain_config(self.pipe.vae.config),
            "transformer_probe": probe,
        }

    def record(self) -> dict[str, Any]:
        return {
            "id": self.model_id,
            "revision": self.revision,
            "class": type(self.pipe).__name__,
            "dtype": dtype_name(self.dtype),
            "fingerprint": self.fingerprint(),
            "max_sequence_length": self.max_sequence_length,
        }

    def check_record(self, record: dict[str, Any]) -> None:
        mismatch = flow_fingerprint_mismatch(record.get("fingerprint", {}), self.fingerprint())
        if mismatch:
            raise ValueError(
                f"this inversion was made with model {record.get('id')!r} ({record.get('class')}) and "
                f"{mismatch} in the loaded model {self.model_id!r}; load the model it was inverted with"
            )
        if record.get("max_sequence_length", self.max_sequence_length) != self.max_sequence_length:
            raise ValueError(
                f"this inversion encoded its prompts with {record['max_sequence_length']} T5 tokens, this "
                f"model with {self.max_sequence_length}; load it with max_sequence_length="
                f"{record['max_sequence_length']}"
            )

    # ----- the VAE ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def _vae_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        from ...solvers import NonFiniteError

        self._latent_hw(pixels.shape[-2], pixels.shape[-1])
        vae = self.pipe.vae
        mean = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mean.float()
        latents = (mean - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor
        if not torch.isfinite(latents).all():
            raise NonFiniteError(f"the VAE encoder returned NaN or inf in {vae.dtype}; load the model in float32")
        return latents

    @torch.no_grad()
    def _vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        from ...solvers import NonFiniteError

        vae = self.pipe.vae
        z = latents.float() / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
        pixels = vae.decode(z.to(vae.device, vae.dtype)).sample.float()
        if not torch.isfinite(pixels).all():
            raise NonFiniteError(f"the VAE decoder returned NaN or inf in {vae.dtype}; load the model in float32")
        return pixels.clamp(-1.0, 1.0)


class SD3Backend(_FlowBackend):
    """Stable Diffusion 3 / 3.5: latents (B, C, H/8, W/8), three text encoders, classifier-free guidance."""

    family = "sd3"
    pipeline_class = "StableDiffusion3Pipeline"
    default_guidance = 7.0
    default_sequence_length = 256

    @property
    def patch(self) -> int:
        return int(self.pipe.transformer.config.patch_size)

    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        h, w = self._latent_hw(height, width)
        return (batch, int(self.pipe.transformer.config.in_channels), h, w)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1], (B, 3, H, W) -> latents (float32)."""
        return self._vae_latents(pixels)

    def decode(self, latents: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Latents -> pixels in [-1, 1] (float32, clipped)."""
        return self._vae_decode(latents)

    def _grid(self, num_steps: int, height: int, width: int) -> Grid:
        mu = self.schedule.mu(self.image_seq_len(height, width)) if self.schedule.use_dynamic_shifting else None
        return self.schedule.grid(num_steps, mu=mu)

    def conditions(self, prompts: list[str], negatives: list[str] | None, height: int, width: int) -> tuple[dict, dict]:
        """(cond, uncond): ``encoder_hidden_states`` and ``pooled_projections`` from the pipeline's encode_prompt."""
        with torch.no_grad():
            c, u, pooled_c, pooled_u = self.pipe.encode_prompt(
                prompt=list(prompts),
                prompt_2=None,
                prompt_3=None,
                device=self.device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=True,
                negative_prompt=None if negatives is None else list(negatives),
                max_sequence_length=self.max_sequence_length,
            )
        return (
            {"encoder_hidden_states": c, "pooled_projections": pooled_c},
            {"encoder_hidden_states": u, "pooled_projections": pooled_u},
        )

    def guided(self, cond: dict, uncond: dict | None, scale: float) -> Any:
        """``model(x, t) -> v`` under ``cond``, guided by ``uncond`` when scale != 1 (as SD3's pipeline)."""
        return ClassifierFreeGuidance(SD3TransformerModel(self.pipe.transformer), cond, uncond, scale)


class FluxBackend(_FlowBackend):
    """Flux: latents packed as (B, H/16 * W/16, 4C), CLIP pooled + T5 prompts, guidance embedding.

    ``true_cfg_scale`` > 1 adds classifier-free guidance over a negative prompt's branch, as
    FluxPipeline's ``true_cfg_scale``; it is recorded with inversions (a reconstruction needs the same).
    """

    family = "flux"
    pipeline_class = "FluxPipeline"
    backend_options = ("true_cfg_scale",)
    default_guidance = 3.5
    default_sequence_length = 512

    def __init__(self, pipe: Any, *, true_cfg_scale: float = 1.0, **kwargs: Any):
        super().__init__(pipe, **kwargs)
        self.true_cfg_scale = float(true_cfg_scale)

    @property
    def patch(self) -> int:
        return 2  # FluxPipeline packs 2x2 latent patches into tokens

    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        h, w = self._latent_hw(height, width)
        return (batch, (h // 2) * (w // 2), 4 * int(self.pipe.vae.config.latent_channels))

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1], (B, 3, H, W) -> packed latents (float32)."""
        z = self._vae_latents(pixels)
        return self.pipe._pack_latents(z, *z.shape)

    def decode(self, latents: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Packed latents of images of ``size`` = (width, height) pixels -> pixels in [-1, 1] (float32, clipped)."""
        width, height = size or self.default_size
        self._latent_hw(height, width)
        return self._vae_decode(self.pipe._unpack_latents(latents.float(), height, width, self.vae_scale))

    def _grid(self, num_steps: int, height: int, width: int) -> Grid:
        return self.schedule.grid(
            num_steps, sigmas=flux_sigmas(num_steps), mu=self.schedule.mu(self.image_seq_len(height, width))
        )

    def conditions(
        self, prompts: list[str], negatives: list[str] | None, height: int, width: int
    ) -> tuple[dict, dict | None]:
        """(cond, uncond): T5 ``encoder_hidden_states``, CLIP ``pooled_projections`` and the latent size the
        image ids come from; uncond only for a negative prompt."""
        out: list[dict[str, Any] | None] = []
        for texts in (prompts, negatives):
            if texts is None:
                out.append(None)
                continue
            with torch.no_grad():
                embeds, pooled, _ = self.pipe.encode_prompt(
                    prompt=list(texts),
                    prompt_2=None,
                    device=self.device,
                    num_images_per_prompt=1,
                    max_sequence_length=self.max_sequence_length,
                )
            out.append(
                {
                    "encoder_hidden_states": embeds,
                    "pooled_projections": pooled,
                    "latent_size": self._latent_hw(height, width),
                }
            )
        return cast(dict, out[0]), out[1]  # the prompts are always given

    def guided(self, cond: dict, uncond: dict | None, scale: float) -> Any:
        """``model(x, t) -> v`` with ``scale`` as the guidance embedding; true CFG over ``uncond`` only with
        ``true_cfg_scale > 1`` (one branch by default, as FluxPipeline)."""
        model = FluxTransformerModel(self.pipe, scale)
        if self.true_cfg_scale > 1.0 and uncond is not None:
            return ClassifierFreeGuidance(model, cond, uncond, self.true_cfg_scale, batched=False)
        return ClassifierFreeGuidance(model, cond, None, 1.0)

    def record(self) -> dict[str, Any]:
        return {**super().record(), "true_cfg_scale": self.true_cfg_scale}

    def check_record(self, record: dict[str, Any]) -> None:
        super().check_record(record)
        if float(record.get("true_cfg_scale", 1.0)) != self.true_cfg_scale:
            raise ValueError(
                f"this inversion was made with true_cfg_scale {record['true_cfg_scale']}, this model "
                f"runs {self.true_cfg_scale}; set FluxBackend.true_cfg_scale to match"
            )


class SD3TransformerModel(torch.nn.Module):
    """``model(x, t, cond) -> v``: SD3's transformer called as StableDiffusion3Pipeline calls it (t = 1000 t).

    Declares the transformer's dtype (the solver feeds it that); returns float32 so guidance and the
    solver's arithmetic are not done in half precision.
    """

    def __init__(self, transformer: ModelMixin):
        super().__init__()
        self.transformer = transformer

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        dt = self.transformer.dtype
        with torch.no_grad():
            out = self.transformer(
                hidden_states=x.to(dt),
                timestep=t.float(),
                encoder_hidden_states=cond["encoder_hidden_states"].to(dt),
                pooled_projections=cond["pooled_projections"].to(dt),
                return_dict=False,
            )[0]
        return out.float()


class FluxTransformerModel(torch.nn.Module):
    """``model(x, t, cond) -> v``: Flux's transformer on packed latents, called as FluxPipeline calls it.

    Timestep t / 1000, the guidance embedding (when the checkpoint has one), zero text ids and the
    image's position ids for the latent size ``cond["latent_size"]`` = (height, width) in latent pixels.
    """

    def __init__(self, pipe: Any, guidance_scale: float = 3.5):
        super().__init__()
        self.pipe, self.transformer = pipe, pipe.transformer
        self.guidance_scale = float(guidance_scale)
        self._img_ids: dict[tuple[int, int], torch.Tensor] = {}

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    def img_ids(self, latent_size: tuple[int, int]) -> torch.Tensor:
        h, w = (int(v) for v in latent_size)
        if (h, w) not in self._img_ids:
            self._img_ids[h, w] = self.pipe._prepare_latent_image_ids(
                1, h // 2, w // 2, self.transformer.device, self.transformer.dtype
            )
        return self._img_ids[h, w]

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        dt = self.transformer.dtype
        text = cond["encoder_hidden_states"].to(dt)
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((x.shape[0],), self.guidance_scale, device=x.device, dtype=torch.float32)
        txt_ids = torch.zeros(text.shape[1], 3, device=x.device, dtype=dt)
        with torch.no_grad():
            out = self.transformer(
                hidden_states=x.to(dt),
                timestep=t.to(dt) / 1000,
                guidance=guidance,
                pooled_projections=cond["pooled_projections"].to(dt),
                encoder_hidden_states=text,
                txt_ids=txt_ids,
                img_ids=self.img_ids(cond["latent_size"]),
                return_dict=False,
            )[0]
        return out.float()
