"""BDIA as a diffusers scheduler, for plain text-to-image generation with any diffusers pipeline.

    pipe.scheduler = bdia.BDIAScheduler.from_config(pipe.scheduler.config, gamma=0.5)
    image = pipe("a photo of a cat", num_inference_steps=10).images[0]

The state is BDIA's pair (docs/math.md section 4): ``step`` keeps the previous sample z_{i-1}. The first
step of a run is a plain DDIM step (z_0 -> z_1); every later step is

    z_{i+1} = gamma_i * (z_{i-1} - D_{i->i-1}(z_i)) + D_{i->i+1}(z_i)

with one model output used for both DDIM moves. gamma = 0 is exactly DDIM. Steps are paired with the
next element of the materialised timestep list (never ``t - T // N``), and the pair is reset on every
``set_timesteps``. v- and x0-prediction models are converted to eps with ``bdia.to_eps``.
Generation only: for exact inversion of real images use :class:`bdia.pipelines.Editor`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin

from ..models import to_eps
from ..schedule import Schedule
from ..solvers import BDIA
from ..solvers.bdia import bdia_step
from ..solvers.base import ddim_transition

__all__ = ["BDIAScheduler"]


class BDIAScheduler(SchedulerMixin, ConfigMixin):
    """BDIA-DDIM sampling (Zhang, Lewis & Kleijn, ECCV 2024) with diffusers' scheduler conventions.

    The schedule arguments are DDIMScheduler's, with the same defaults and meaning. ``gamma`` is a
    number in [0, 1] (0.5 is the authors' text-to-image default at ~10 steps, 1.0 at ~40), a list
    of N-1 per-step values, or "belm" (BELM's second-order O-BELM coefficients).
    ``clip_sample`` and ``thresholding`` are accepted for config compatibility and not applied.
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        clip_sample: bool = False,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
        gamma: float | Sequence[float] | str = 0.5,
    ):
        cfg = {k: v for k, v in dict(self.config).items() if not k.startswith("_")}
        if cfg.get("trained_betas") is not None:
            cfg["trained_betas"] = [float(b) for b in cfg["trained_betas"]]
        self.schedule = Schedule.from_config(cfg)
        self._solver = BDIA(gamma)  # validates gamma; gives the per-step values on a grid
        self.alphas_cumprod = self.schedule.alphas_cumprod.float()
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1)  # as DDIMScheduler, until set_timesteps
        self.grid = None
        self._gammas: list[float] = []
        self._begin_index: int | None = None
        self._reset()

    # ----- diffusers conventions ---------------------------------------------------------------------
    def _reset(self) -> None:
        self._prev_sample: torch.Tensor | None = None  # z_{i-1}
        self._last_index: int | None = None  # grid index of the last step taken

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Materialise the N-step grid (DDIMScheduler's timesteps) and reset the BDIA pair."""
        self.grid = self.schedule.grid(int(num_inference_steps))
        self._gammas = self._solver.gammas(self.grid)
        self.num_inference_steps = int(num_inference_steps)
        self.timesteps = self.grid.timesteps.to(device)
        self._begin_index = None
        self._reset()

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Where img2img-style pipelines start on the grid (their first step is then a DDIM step)."""
        self._begin_index = int(begin_index)

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    @property
    def step_index(self) -> int | None:
        return self._last_index

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        return sample

    def _index(self, timestep: Any) -> int:
        if self.grid is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        t = float(timestep.item() if isinstance(timestep, torch.Tensor) else timestep)
        hits = (self.grid.timesteps.double() == t).nonzero().flatten()
        if hits.numel() == 0:
            raise ValueError(f"timestep {t:g} is not on this scheduler's grid {self.grid!r}")
        return int(hits[0])

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
             return_dict: bool = True, **kwargs: Any) -> DDIMSchedulerOutput | tuple:
        """One step from ``timestep`` to the next grid point; DDIM on the first step of a run."""
        i = self._index(timestep)
        grid = self.grid
        work = torch.float64 if sample.device.type in ("cpu", "cuda") else torch.float32
        z = sample.to(work)
        t = grid.timesteps[i].to(sample.device).expand(sample.shape[0])
        eps = to_eps(lambda x, t_: model_output.to(work), self.schedule)(z, t)  # v / x0 -> eps
        z_next = ddim_transition(z, eps, grid, i, i + 1)  # F: the DDIM step forward
        if self._prev_sample is not None and self._last_index == i - 1 and i >= 1:
            z_back = ddim_transition(z, eps, grid, i, i - 1)  # B: the DDIM step back, same eps
            z_next = bdia_step(self._prev_sample, z_next, z_back, self._gammas[i - 1])
        self._prev_sample, self._last_index = z, i
        x0 = (z - float(grid.sigmas[i]) * eps) / float(grid.alphas[i])
        prev, pred = z_next.to(sample.dtype), x0.to(sample.dtype)
        if not return_dict:
            return (prev, pred)
        return DDIMSchedulerOutput(prev_sample=prev, pred_original_sample=pred)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """sqrt(abar_t) x0 + sqrt(1 - abar_t) noise (for img2img pipelines)."""
        abar = self.alphas_cumprod.to(original_samples.device)[timesteps.to(original_samples.device).long()]
        shape = (-1,) + (1,) * (original_samples.dim() - 1)
        abar = abar.to(original_samples.dtype).reshape(shape)
        return abar.sqrt() * original_samples + (1 - abar).sqrt() * noise

    def __len__(self) -> int:
        return self.config.num_train_timesteps
