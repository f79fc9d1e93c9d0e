"""The edge between diffusers' Stable Diffusion pipelines and the core's model contract.

:class:`StableDiffusionBackend` is the Stable Diffusion family (SD 1.x, 2.x, SDXL) behind
:class:`~bdia.editing.Editor`: VAE latents, text prompts, classifier-free guidance.

:class:`UNetModel` turns a ``UNet2DConditionModel`` into ``model(x, t, cond) -> prediction`` with
``cond`` a flat dict of tensors (``encoder_hidden_states``; for SDXL also ``text_embeds`` and
``time_ids``), which ``bdia.to_eps`` and ``bdia.ClassifierFreeGuidance`` compose with.
:func:`encode_prompts` builds the (cond, uncond) pair for SD 1.x/2.x and SDXL pipelines with the
pipeline's own ``encode_prompt``, so prompt weighting conventions (clip skip, SDXL's zeroed empty
negative prompt, two text encoders) stay those of diffusers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ...io.images import to_pixels
from ...io.saved import dtype_name
from ...models import to_eps
from ...runtime import choose_device, prompt_list, resolve_dtype
from ...schedule import Schedule
from ...solvers import NonFiniteError
from .base import Backend

if TYPE_CHECKING:
    from diffusers.models.modeling_utils import ModelMixin

__all__ = [
    "StableDiffusionBackend",
    "UNetModel",
    "check_pipeline",
    "encode_prompts",
    "fingerprint_mismatch",
    "is_sdxl",
    "pipeline_fingerprint",
]


def is_sdxl(pipe: Any) -> bool:
    """True for UNets with SDXL's added conditioning (pooled text embeddings and size/crop ids)."""
    return getattr(pipe.unet.config, "addition_embed_type", None) == "text_time"


def check_pipeline(pipe: Any) -> None:
    """Refuse pipelines this module cannot drive, with a message saying what is supported."""
    missing = [name for name in ("unet", "vae", "scheduler") if getattr(pipe, name, None) is None]
    if missing or not hasattr(pipe, "encode_prompt"):
        raise ValueError(
            f"{type(pipe).__name__} is not a Stable Diffusion pipeline (missing {missing or ['encode_prompt']}); "
            "bdia supports StableDiffusionPipeline (SD 1.x/2.x) and StableDiffusionXLPipeline checkpoints"
        )
    if type(pipe.unet).__name__ != "UNet2DConditionModel":
        raise ValueError(f"expected a UNet2DConditionModel, the pipeline has a {type(pipe.unet).__name__}")
    addition = getattr(pipe.unet.config, "addition_embed_type", None)
    if addition not in (None, "text_time"):
        raise ValueError(f"UNet addition_embed_type {addition!r} is not supported (only SD and SDXL's 'text_time')")
    if dict(getattr(pipe, "config", None) or {}).get("requires_aesthetics_score", False):
        raise ValueError("SDXL refiner checkpoints (aesthetic-score conditioning) are not supported; use a base model")
    if pipe.unet.config.in_channels != pipe.vae.config.latent_channels:
        raise ValueError(
            f"the UNet takes {pipe.unet.config.in_channels} channels but the VAE makes "
            f"{pipe.vae.config.latent_channels}: inpainting and depth checkpoints are not supported"
        )


class UNetModel(torch.nn.Module):
    """``model(x, t, cond)``: a UNet2DConditionModel called with a condition dict.

    Declares the UNet's dtype, so the solver keeps its state in float64/float32 and feeds the UNet
    its own dtype; the output is returned in float32 so guidance and the v->eps conversion are not
    done in half precision. Raw prediction (eps, v or x0, as the checkpoint was trained): wrap with
    ``bdia.to_eps`` for the eps contract.
    """

    def __init__(self, unet: ModelMixin):
        super().__init__()
        self.unet = unet

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        dt = self.unet.dtype
        added = None
        if "text_embeds" in cond:
            added = {"text_embeds": cond["text_embeds"].to(dt), "time_ids": cond["time_ids"].to(dt)}
        out = self.unet(
            x.to(dt),
            t,
            encoder_hidden_states=cond["encoder_hidden_states"].to(dt),
            added_cond_kwargs=added,
            return_dict=False,
        )[0]
        return out.float()


def encode_prompts(
    pipe: Any,
    prompt: str | Sequence[str],
    negative_prompt: str | Sequence[str] | None,
    batch: int,
    height: int,
    width: int,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(cond, uncond) dicts for ``UNetModel`` with batch ``batch`` (one prompt, or one per image).

    ``negative_prompt`` None means the pipeline's default unconditional branch ("" for SD; zeros
    for SDXL checkpoints with ``force_zeros_for_empty_prompt``). ``height, width`` are the image's
    pixel size, used for SDXL's size conditioning (original = target size, no crop).
    """
    prompts = prompt_list(prompt, batch, "prompt")
    negatives = None if negative_prompt is None else prompt_list(negative_prompt, batch, "negative prompt")
    device = pipe.unet.device
    with torch.no_grad():
        if is_sdxl(pipe):
            c, u, pooled_c, pooled_u = pipe.encode_prompt(
                prompts,
                device=device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=True,
                negative_prompt=negatives,
            )
            if pipe.text_encoder_2 is None:
                proj_dim = int(pooled_c.shape[-1])
            else:
                proj_dim = pipe.text_encoder_2.config.projection_dim
            ids = pipe._get_add_time_ids(
                (height, width), (0, 0), (height, width), dtype=c.dtype, text_encoder_projection_dim=proj_dim
            )
            ids = ids.to(device).repeat(batch, 1)
            cond = {"encoder_hidden_states": c, "text_embeds": pooled_c, "time_ids": ids}
            uncond = {"encoder_hidden_states": u, "text_embeds": pooled_u, "time_ids": ids}
        else:
            c, u = pipe.encode_prompt(
                prompts,
                device=device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=True,
                negative_prompt=negatives,
            )
            cond, uncond = {"encoder_hidden_states": c}, {"encoder_hidden_states": u}
    return cond, uncond


# Parameters sampled for the weights probe: present in every UNet2DConditionModel.
_PROBE_PARAMS = ("conv_in.weight", "time_embedding.linear_1.weight", "conv_out.weight")
_PROBE_SIZE = 64


def _plain_config(config: Any) -> dict[str, Any]:
    """A module's config as JSON-ready data, without private keys (name, diffusers version)."""
    cfg = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    return json.loads(json.dumps(cfg, sort_keys=True, default=str))


def pipeline_fingerprint(pipe: Any) -> dict[str, Any]:
    """What a saved inversion records to refuse being used with another model.

    The UNet and VAE configs (architecture), and a probe of a few UNet weights (values at
    a fixed stride, compared with a tolerance that admits float16/bfloat16 copies of the same
    checkpoint). Hashing every weight would cost seconds on a real checkpoint; this catches a
    different checkpoint of the same architecture in practice, not adversarially.
    """
    state = dict(pipe.unet.named_parameters())
    probe = {}
    for name in _PROBE_PARAMS:
        flat = state[name].detach().flatten()
        stride = max(1, flat.numel() // _PROBE_SIZE)
        probe[name] = [float(v) for v in flat[::stride][:_PROBE_SIZE].float().cpu()]
    return {
        "unet_config": _plain_config(pipe.unet.config),
        "vae_config": _plain_config(pipe.vae.config),
        "unet_probe": probe,
        "pipeline_class": type(pipe).__name__,
    }


def fingerprint_mismatch(
    saved: dict[str, Any], current: dict[str, Any], network: str = "unet", what: str = "UNet"
) -> str | None:
    """A sentence naming what differs between two fingerprints, or None when they match.

    Compares the ``{network}_config`` and ``vae_config`` architectures (keys both sides have: a key on
    one side only comes from another diffusers version's defaults, not another model), then the
    ``{network}_probe`` weight samples loosely enough that float16/bfloat16 copies of one checkpoint pass.
    """
    for key, name in ((f"{network}_config", f"{what} architecture"), ("vae_config", "VAE architecture")):
        mine, theirs = current.get(key, {}), saved.get(key, {})
        differing = sorted(k for k in set(mine) & set(theirs) if mine[k] != theirs[k])
        if differing:
            return f"the {name} differs ({', '.join(differing[:3])})"
    for name, values in saved.get(f"{network}_probe", {}).items():
        mine = torch.tensor(current.get(f"{network}_probe", {}).get(name, []), dtype=torch.float64)
        theirs = torch.tensor(values, dtype=torch.float64)
        if mine.shape != theirs.shape or not torch.allclose(mine, theirs, rtol=1e-2, atol=1e-4):
            return f"the {what} weights differ ({name})"
    return None


class StableDiffusionBackend(Backend):
    """A diffusers SD 1.x/2.x/SDXL pipeline as an editor backend: VAE latents, text prompts, CFG.

    Args:
        pipe: a loaded ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline`` (any scheduler;
            only its config is used, to build the :class:`~bdia.Schedule`).
        model_id, revision: recorded in saved inversions (``from_pretrained`` fills them in).
        schedule_overrides: scheduler config keys to replace, e.g. ``timestep_spacing="trailing"``.
    """

    family = "sd"

    def __init__(
        self, pipe: Any, *, model_id: str | None = None, revision: str | None = None, **schedule_overrides: Any
    ):
        check_pipeline(pipe)
        self.pipe = pipe
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

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike,
        *,
        torch_dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        revision: str | None = None,
        progress: bool = True,
        **kwargs: Any,
    ) -> StableDiffusionBackend:
        """Load a pipeline from a local folder or a hub id (hub ids download on the user's machine) with
        :func:`~bdia.io.loading.load_pipeline`: safetensors weights only unless ``allow_pickle=True``;
        other keywords (``variant``, ...) go to diffusers."""
        from ...io.loading import load_pipeline, resolve_model

        pipe = load_pipeline(model, dtype=resolve_dtype(torch_dtype), revision=revision, progress=progress, **kwargs)
        pipe = pipe.to(choose_device(device))
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=not progress)
        return cls(pipe, model_id=resolve_model(model), revision=revision)

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.unet.dtype

    @property
    def default_size(self) -> tuple[int, int]:
        size = int(self.pipe.unet.config.sample_size) * self.vae_factor
        return size, size

    def load_images(self, images: Any, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Images (PIL, path, tensor in [0, 1], or a list) to a batch in [-1, 1], sized for the VAE."""
        return to_pixels(images, self.vae_factor, size)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Scaled VAE latents (float32) of pixels in [-1, 1]: the posterior mean, deterministic."""
        vae = self.pipe.vae
        latents = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mean.float()
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        latents = (latents - shift) * vae.config.scaling_factor
        if not torch.isfinite(latents).all():
            raise NonFiniteError(
                f"the VAE encoder returned NaN or inf in {vae.dtype}; load the model with torch_dtype=float32"
            )
        return latents

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Pixels in [-1, 1] (float32, clipped) from scaled latents."""
        vae = self.pipe.vae
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        z = latents.float() / vae.config.scaling_factor + shift
        pixels = vae.decode(z.to(vae.device, vae.dtype)).sample.float()
        if not torch.isfinite(pixels).all():
            raise NonFiniteError(f"the VAE decoder returned NaN or inf in {vae.dtype}; use torch_dtype=float32")
        return pixels.clamp(-1.0, 1.0)

    def conditions(self, prompts: list[str], negatives: list[str] | None, height: int, width: int) -> tuple[dict, dict]:
        return encode_prompts(self.pipe, prompts, negatives, len(prompts), height, width)

    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        if height % self.vae_factor or width % self.vae_factor or height <= 0 or width <= 0:
            raise ValueError(
                f"height and width must be multiples of the VAE factor {self.vae_factor}, got {width}x{height}"
            )
        return (batch, self.pipe.unet.config.in_channels, height // self.vae_factor, width // self.vae_factor)

    def fingerprint(self) -> dict[str, Any]:
        if self._fingerprint is None:
            self._fingerprint = pipeline_fingerprint(self.pipe)
        return self._fingerprint

    def record(self) -> dict[str, Any]:
        return {
            "id": self.model_id,
            "revision": self.revision,
            "class": type(self.pipe).__name__,
            "dtype": dtype_name(self.dtype),
            "fingerprint": self.fingerprint(),
        }

    def check_record(self, record: dict[str, Any]) -> None:
        saved = record.get("fingerprint", {})
        if "unet_config" not in saved:
            raise ValueError(
                f"this inversion was made with model {record.get('id')!r} ({record.get('class')}), not a "
                f"Stable Diffusion pipeline; load that model (bdia: --model {record.get('id')}, or no --model)"
            )
        mismatch = fingerprint_mismatch(saved, self.fingerprint())
        if mismatch:
            raise ValueError(
                f"this inversion was made with model {record.get('id')!r} ({record.get('class')}) and "
                f"{mismatch} in the loaded model {self.model_id!r}; load the model it was inverted with"
            )
