"""Stable Diffusion 3 and Flux as editing backends: the pieces an editor needs, over diffusers' pipelines.

docs/math.md sections 7 and 9. A backend wraps a loaded ``StableDiffusion3Pipeline`` or ``FluxPipeline``
and gives, with the editor's solvers doing the rest:

- ``encode_image(images)`` / ``decode(latents)``: the VAE with its ``shift_factor`` and
  ``scaling_factor`` (the posterior mean, so encoding is deterministic); Flux latents packed into
  2x2 patches, as FluxPipeline keeps them;
- ``latent_shape(batch, height, width)``: the solver state's shape for an image size;
- ``grid(num_steps, height, width)``: the velocity grid the pipeline would run (SD3: ``shift``, and
  ``mu`` when the scheduler shifts dynamically; Flux: ``linspace(1, 1/N, N)`` shifted by ``mu`` from the
  image's token count), see :class:`bdia.flow.FlowSchedule`;
- ``encode_prompt(prompt, negative_prompt, batch)``: ``(cond, uncond)`` dicts of batched tensors (SD3:
  three text encoders, ``text_encoder_3`` optional as diffusers allows; Flux: CLIP pooled + T5, and
  uncond only when a negative prompt is given);
- ``velocity_model(cond, uncond, guidance_scale, height, width)``: ``model(x, t) -> v`` for the solvers
  on that grid (SD3: classifier-free guidance when guidance_scale != 1; Flux: the guidance embedding,
  and true CFG over the two branches only with ``true_cfg_scale > 1``);
- ``fingerprint()`` / :func:`flow_fingerprint_mismatch`: what a saved inversion records (family,
  transformer and VAE configs, a probe of transformer weights) to refuse another model.

:func:`flow_family` reads the family from a folder's ``model_index.json``; :func:`load_flow_backend`
loads the pipeline (with ``text_encoder_3`` absent when the folder has none) and returns its backend.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from ..flow import FlowSchedule, flux_sigmas
from ..models import ClassifierFreeGuidance
from ..schedule import Grid
from .diffusers_model import _plain_config

__all__ = ["FLOW_PIPELINES", "FluxBackend", "SD3Backend", "flow_family", "flow_fingerprint_mismatch",
           "load_flow_backend"]

_PROBE_SIZE = 64  # transformer weights sampled per probed parameter

FLOW_PIPELINES = {"StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux"}


def flow_family(model_dir: str | os.PathLike) -> str | None:
    """"sd3" or "flux" from the folder's model_index.json, None for any other pipeline class."""
    index = Path(model_dir) / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(f"no model_index.json in {os.fspath(model_dir)!r}: pass a diffusers pipeline folder")
    return FLOW_PIPELINES.get(json.loads(index.read_text(encoding="utf-8")).get("_class_name"))


def load_flow_backend(model_dir: str | os.PathLike, device: str | torch.device = "cpu",
                      torch_dtype: torch.dtype | None = None) -> "SD3Backend | FluxBackend":
    """Load an SD3 or Flux pipeline folder and wrap it in its backend."""
    family = flow_family(model_dir)
    if family is None:
        raise ValueError(f"{os.fspath(model_dir)!r} is not a StableDiffusion3Pipeline or FluxPipeline folder")
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    index = json.loads((Path(model_dir) / "model_index.json").read_text(encoding="utf-8"))
    absent = {k: None for k, v in index.items() if isinstance(v, list) and v[0] is None}  # e.g. no T5
    cls = StableDiffusion3Pipeline if family == "sd3" else FluxPipeline
    pipe = cls.from_pretrained(model_dir, torch_dtype=torch_dtype, **absent).to(device)
    pipe.set_progress_bar_config(disable=True)
    return (SD3Backend if family == "sd3" else FluxBackend)(pipe)


def flow_fingerprint_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    """A sentence naming what differs between two :meth:`fingerprint` results, or None when they match."""
    if saved.get("family") != current.get("family"):
        return f"it was made with a {saved.get('family')!r} model and this one is {current.get('family')!r}"
    for key, what in (("transformer_config", "transformer architecture"), ("vae_config", "VAE architecture")):
        mine, theirs = current.get(key, {}), saved.get(key, {})
        differing = sorted(k for k in set(mine) & set(theirs) if mine[k] != theirs[k])  # shared keys only:
        if differing:  # a key on one side only comes from another diffusers version's defaults
            return f"the {what} differs ({', '.join(differing[:3])})"
    for name, values in saved.get("transformer_probe", {}).items():
        mine = torch.tensor(current.get("transformer_probe", {}).get(name, []), dtype=torch.float64)
        theirs = torch.tensor(values, dtype=torch.float64)
        if mine.shape != theirs.shape or not torch.allclose(mine, theirs, rtol=1e-2, atol=1e-4):
            return f"the transformer weights differ ({name})"
    return None


def _prompts(prompt: str | Sequence[str], batch: int, what: str) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"{what} must be a string or a list of strings")
    if len(prompts) == 1:
        prompts = prompts * batch
    if len(prompts) != batch:
        raise ValueError(f"got {len(prompts)} {what}s for {batch} images; give one, or one per image")
    return prompts


class _FlowBackend:
    """What SD3 and Flux share: the VAE with shift and scale, the schedule, the image size checks."""

    family: str

    def __init__(self, pipe: Any):
        self.pipe = pipe
        self.schedule = FlowSchedule.from_config(pipe.scheduler.config)
        self.vae_scale = int(pipe.vae_scale_factor)

    @property
    def device(self) -> torch.device:
        return self.pipe.transformer.device

    def _latent_hw(self, height: int, width: int) -> tuple[int, int]:
        step = self.vae_scale * self.patch
        if height % step or width % step:
            raise ValueError(f"{self.family} needs height and width divisible by {step}, got {height}x{width}; "
                             "resize or crop the image")
        return height // self.vae_scale, width // self.vae_scale

    @property
    def patch(self) -> int:
        raise NotImplementedError

    def image_seq_len(self, height: int, width: int) -> int:
        """The image's transformer token count (what Flux's mu depends on)."""
        h, w = self._latent_hw(height, width)
        return (h // self.patch) * (w // self.patch)

    def fingerprint(self) -> dict[str, Any]:
        """Family, transformer and VAE configs, and strided values of the transformer's first and last weights.

        The probe tolerates float16/bfloat16 copies of one checkpoint (see :func:`flow_fingerprint_mismatch`).
        """
        params = [(n, p) for n, p in self.pipe.transformer.named_parameters() if p.dim() > 1]
        probe = {}
        for name, p in (params[0], params[-1]):
            flat = p.detach().flatten()
            probe[name] = [float(v) for v in flat[:: max(1, flat.numel() // _PROBE_SIZE)][:_PROBE_SIZE].float().cpu()]
        return {"family": self.family, "pipeline_class": type(self.pipe).__name__,
                "transformer_config": _plain_config(self.pipe.transformer.config),
                "vae_config": _plain_config(self.pipe.vae.config), "transformer_probe": probe}

    def _vae_latents(self, images: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        with torch.no_grad():
            mean = vae.encode(images.to(vae.device, vae.dtype)).latent_dist.mean
        shift = vae.config.shift_factor or 0.0
        return (mean.float() - shift) * vae.config.scaling_factor

    def _vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        z = latents / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
        with torch.no_grad():
            return vae.decode(z.to(vae.device, vae.dtype)).sample.float()


class SD3Backend(_FlowBackend):
    """Stable Diffusion 3 / 3.5: latents (B, C, H/8, W/8), three text encoders, classifier-free guidance."""

    family = "sd3"

    @property
    def patch(self) -> int:
        return int(self.pipe.transformer.config.patch_size)

    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        h, w = self._latent_hw(height, width)
        return (batch, int(self.pipe.transformer.config.in_channels), h, w)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], (B, 3, H, W) -> latents (float32)."""
        self._latent_hw(images.shape[-2], images.shape[-1])
        return self._vae_latents(images)

    def decode(self, latents: torch.Tensor, height: int | None = None, width: int | None = None) -> torch.Tensor:
        """Latents -> images in about [-1, 1] (float32)."""
        return self._vae_decode(latents)

    def grid(self, num_steps: int, height: int, width: int) -> Grid:
        mu = self.schedule.mu(self.image_seq_len(height, width)) if self.schedule.use_dynamic_shifting else None
        return self.schedule.grid(num_steps, mu=mu)

    def encode_prompt(self, prompt: str | Sequence[str], negative_prompt: str | Sequence[str] | None = None,
                      batch: int = 1, max_sequence_length: int = 256) -> tuple[dict, dict]:
        """(cond, uncond): ``encoder_hidden_states`` and ``pooled_projections`` from the pipeline's encode_prompt."""
        prompts = _prompts(prompt, batch, "prompt")
        negatives = None if negative_prompt is None else _prompts(negative_prompt, batch, "negative prompt")
        with torch.no_grad():
            c, u, pooled_c, pooled_u = self.pipe.encode_prompt(
                prompt=prompts, prompt_2=None, prompt_3=None, device=self.device, num_images_per_prompt=1,
                do_classifier_free_guidance=True, negative_prompt=negatives, max_sequence_length=max_sequence_length)
        return ({"encoder_hidden_states": c, "pooled_projections": pooled_c},
                {"encoder_hidden_states": u, "pooled_projections": pooled_u})

    def velocity_model(self, cond: dict, uncond: dict | None = None, guidance_scale: float = 7.0,
                       height: int | None = None, width: int | None = None) -> Any:
        """``model(x, t) -> v`` under ``cond``; guided by ``uncond`` when guidance_scale != 1 (as SD3's pipeline)."""
        model = SD3TransformerModel(self.pipe.transformer)
        if guidance_scale == 1.0 or uncond is None:
            return _Conditioned(model, cond)
        return ClassifierFreeGuidance(model, cond, uncond, guidance_scale)


class FluxBackend(_FlowBackend):
    """Flux: latents packed as (B, H/16 * W/16, 4C), CLIP pooled + T5 prompts, guidance embedding."""

    family = "flux"

    @property
    def patch(self) -> int:
        return 2  # FluxPipeline packs 2x2 latent patches into tokens

    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        h, w = self._latent_hw(height, width)
        return (batch, (h // 2) * (w // 2), 4 * int(self.pipe.vae.config.latent_channels))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], (B, 3, H, W) -> packed latents (float32)."""
        h, w = self._latent_hw(images.shape[-2], images.shape[-1])
        z = self._vae_latents(images)
        return self.pipe._pack_latents(z, z.shape[0], z.shape[1], h, w)

    def decode(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Packed latents of an image of ``height x width`` pixels -> images in about [-1, 1]."""
        self._latent_hw(height, width)
        return self._vae_decode(self.pipe._unpack_latents(latents, height, width, self.vae_scale))

    def grid(self, num_steps: int, height: int, width: int) -> Grid:
        return self.schedule.grid(num_steps, sigmas=flux_sigmas(num_steps),
                                  mu=self.schedule.mu(self.image_seq_len(height, width)))

    def encode_prompt(self, prompt: str | Sequence[str], negative_prompt: str | Sequence[str] | None = None,
                      batch: int = 1, max_sequence_length: int = 512) -> tuple[dict, dict | None]:
        """(cond, uncond): T5 ``encoder_hidden_states``, CLIP ``pooled_projections``; uncond for a negative prompt."""
        out = []
        for p in (prompt, negative_prompt):
            if p is None:
                out.append(None)
                continue
            with torch.no_grad():
                embeds, pooled, _ = self.pipe.encode_prompt(
                    prompt=_prompts(p, batch, "prompt"), prompt_2=None, device=self.device,
                    num_images_per_prompt=1, max_sequence_length=max_sequence_length)
            out.append({"encoder_hidden_states": embeds, "pooled_projections": pooled})
        return out[0], out[1]

    def velocity_model(self, cond: dict, uncond: dict | None = None, guidance_scale: float = 3.5,
                       height: int = 0, width: int = 0, true_cfg_scale: float = 1.0) -> Any:
        """``model(x, t) -> v`` for packed latents of a ``height x width`` image, guidance embedded as FluxPipeline.

        ``true_cfg_scale > 1`` with ``uncond`` adds classifier-free guidance over two branches, as
        FluxPipeline's ``true_cfg_scale`` with a negative prompt; by default there is one branch.
        """
        h, w = self._latent_hw(height, width)
        model = FluxTransformerModel(self.pipe, h, w, guidance_scale)
        if true_cfg_scale > 1.0 and uncond is not None:
            return ClassifierFreeGuidance(model, cond, uncond, true_cfg_scale, batched=False)
        return _Conditioned(model, cond)


class _Conditioned(torch.nn.Module):
    """``model(x, t, cond)`` with its condition fixed: ``model(x, t)``, the solvers' contract."""

    def __init__(self, model: torch.nn.Module, cond: dict):
        super().__init__()
        self.model, self.cond = model, cond

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        return self.model(x, t, {k: v.expand(b, *v.shape[1:]) if v.shape[0] == 1 else v for k, v in self.cond.items()})


class SD3TransformerModel(torch.nn.Module):
    """``model(x, t, cond) -> v``: SD3's transformer called as StableDiffusion3Pipeline calls it (t = 1000 t).

    Declares the transformer's dtype (the solver feeds it that); returns float32 so guidance and the
    solver's arithmetic are not done in half precision.
    """

    def __init__(self, transformer: torch.nn.Module):
        super().__init__()
        self.transformer = transformer

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        dt = self.transformer.dtype
        with torch.no_grad():
            out = self.transformer(hidden_states=x.to(dt), timestep=t.float(),
                                   encoder_hidden_states=cond["encoder_hidden_states"].to(dt),
                                   pooled_projections=cond["pooled_projections"].to(dt), return_dict=False)[0]
        return out.float()


class FluxTransformerModel(torch.nn.Module):
    """``model(x, t, cond) -> v``: Flux's transformer on packed latents, called as FluxPipeline calls it.

    Timestep t / 1000, the guidance embedding (when the checkpoint has one), zero text ids and the
    image's position ids for a latent of ``latent_height x latent_width``.
    """

    def __init__(self, pipe: Any, latent_height: int, latent_width: int, guidance_scale: float = 3.5):
        super().__init__()
        self.transformer = pipe.transformer
        self.img_ids = pipe._prepare_latent_image_ids(1, latent_height // 2, latent_width // 2,
                                                      self.transformer.device, self.transformer.dtype)
        self.guidance_scale = float(guidance_scale)

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        dt = self.transformer.dtype
        text = cond["encoder_hidden_states"].to(dt)
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((x.shape[0],), self.guidance_scale, device=x.device, dtype=torch.float32)
        txt_ids = torch.zeros(text.shape[1], 3, device=x.device, dtype=dt)
        with torch.no_grad():
            out = self.transformer(hidden_states=x.to(dt), timestep=t.to(dt) / 1000, guidance=guidance,
                                   pooled_projections=cond["pooled_projections"].to(dt), encoder_hidden_states=text,
                                   txt_ids=txt_ids, img_ids=self.img_ids, return_dict=False)[0]
        return out.float()
