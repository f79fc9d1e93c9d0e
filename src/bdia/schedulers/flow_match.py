"""BDIA as a drop-in for diffusers' FlowMatchEulerDiscreteScheduler (SD3, Flux), for generation.

    pipe.scheduler = bdia.BDIAFlowScheduler.from_config(pipe.scheduler.config, gamma=1.0)
    image = pipe("a photo of a cat", num_inference_steps=28).images[0]

docs/math.md sections 4 and 9. The grid is the one FlowMatchEulerDiscreteScheduler materialises (same
``shift``, ``mu``, ``sigmas``; :class:`bdia.flow.FlowSchedule`), the model output is the velocity v,
and the first step of a run is the Euler step z_1 = z_0 + (t_1 - t_0) v. Every later step is

    z_{i+1} = gamma_i (z_{i-1} - (z_i + (t_{i-1} - t_i) v_i)) + z_i + (t_{i+1} - t_i) v_i

with both moves the one DDIM transition on a velocity grid, in float32 (or the sample's wider dtype).
gamma = 0 is FlowMatchEulerDiscreteScheduler bit for bit with a float32 model; with a float16/bfloat16
model diffusers rounds the increment (t_{i+1} - t_i) v to the model's dtype before adding it, this
scheduler does not, so latents differ by a few units in the last place of that dtype. For exact
inversion of real images use the editor's flow backend (:mod:`bdia.editing.backends.flow`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteSchedulerOutput

from ..flow import FlowSchedule
from ..schedule import Grid
from ..solvers import BDIA
from ..solvers.base import ddim_transition
from ..solvers.bdia import bdia_step
from .ddim import DiffusersScheduler, PairMemory

__all__ = ["BDIAFlowScheduler"]


class BDIAFlowScheduler(PairMemory, DiffusersScheduler):
    """BDIA over flow matching's Euler step with FlowMatchEulerDiscreteScheduler's conventions.

    The schedule arguments are FlowMatchEulerDiscreteScheduler's, with its defaults; ``gamma`` is a
    number in [0, 1], N-1 per-step values, or "belm". Options that change the grid away from the
    pipeline's own (karras/exponential/beta sigmas, ``invert_sigmas``, ``stochastic_sampling``) are refused.
    """

    _compatibles = ["FlowMatchEulerDiscreteScheduler"]
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float | None = 0.5,
        max_shift: float | None = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        invert_sigmas: bool = False,
        shift_terminal: float | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        time_shift_type: str = "exponential",
        stochastic_sampling: bool = False,
        gamma: float | Sequence[float] | str = 1.0,
    ):
        cfg = {k: v for k, v in dict(self.config).items() if not k.startswith("_") and k != "gamma"}
        self.schedule = FlowSchedule.from_config(cfg)
        self._solver = BDIA(gamma)  # validates gamma; gives the per-step values on a grid
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.grid: Grid | None = None
        self._gammas: list[float] = []
        self._begin_index: int | None = None
        self.sigmas = torch.ones(1)
        self.timesteps = torch.full((1,), float(num_train_timesteps))
        self._reset()

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: Sequence[float] | np.ndarray | None = None,
        mu: float | None = None,
        timesteps: Sequence[float] | None = None,
    ) -> None:
        """Materialise the grid as FlowMatchEulerDiscreteScheduler.set_timesteps does; reset the BDIA pair."""
        if timesteps is not None:
            raise ValueError("custom timesteps are not supported by BDIAFlowScheduler; pass sigmas (and mu) instead")
        self.grid = grid = self.schedule.grid(num_inference_steps, sigmas=sigmas, mu=mu)
        self._gammas = self._solver.gammas(grid)
        self.num_inference_steps = grid.num_steps
        self.timesteps = grid.timesteps.to(device)
        self.sigmas = grid.sigmas.to(torch.float32)
        self._begin_index = None
        self._reset()

    @property
    def step_index(self) -> int | None:
        return self._last_index

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        return sample

    def scale_noise(self, sample: torch.Tensor, timestep: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """(1 - t) x0 + t noise at ``timestep`` (for img2img pipelines)."""
        t = self.sigmas[[self._index(s) for s in timestep.flatten()]].to(sample.device, sample.dtype)
        t = t.reshape((-1,) + (1,) * (sample.dim() - 1))
        return t * noise + (1.0 - t) * sample

    def _index(self, timestep: Any) -> int:
        if self.grid is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        t = float(timestep.item() if isinstance(timestep, torch.Tensor) else timestep)
        hits = (self.grid.timesteps.double() == t).nonzero().flatten()
        if hits.numel() == 0:
            raise ValueError(f"timestep {t:g} is not on this scheduler's grid {self.grid!r}")
        return int(hits[0])

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> FlowMatchEulerDiscreteSchedulerOutput | tuple:
        """One step from ``timestep`` to the next grid point; plain Euler on the first step of a run."""
        i = self._index(timestep)
        assert self.grid is not None  # _index refuses a step before set_timesteps
        work = torch.promote_types(sample.dtype, torch.float32)  # diffusers upcasts the sample to float32
        z, v = sample.to(work), model_output.to(work)
        z_next = ddim_transition(z, v, self.grid, i, i + 1)  # F: Euler forward
        z_prev = self._partner(z, i)
        if z_prev is not None:
            z_back = ddim_transition(z, v, self.grid, i, i - 1)  # B: Euler back, same v
            z_next = bdia_step(z_prev, z_next, z_back, self._gammas[i - 1])
        self._remember(z, i)
        prev = z_next.to(model_output.dtype)
        if not return_dict:
            return (prev,)
        # diffusers annotates the field with the legacy torch.FloatTensor; it holds any floating tensor
        return FlowMatchEulerDiscreteSchedulerOutput(prev_sample=prev)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.config.num_train_timesteps
