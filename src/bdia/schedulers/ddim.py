"""BDIA as diffusers schedulers: ``BDIAScheduler`` (a drop-in for ``DDIMScheduler``) and
``BDIAInverseScheduler`` (a drop-in for ``DDIMInverseScheduler``, exact for gamma > 0).

    pipe.scheduler = bdia.BDIAScheduler.from_config(pipe.scheduler.config, gamma=0.5)
    image = pipe("a photo of a cat", num_inference_steps=10).images[0]

The state is BDIA's pair (docs/math.md section 4): ``step`` keeps the sample it was given, z_{i-1}.
The first step of a run is a plain DDIM step (z_0 -> z_1); every later step is

    z_{i+1} = gamma_i * (z_{i-1} - D_{i->i-1}(z_i)) + D_{i->i+1}(z_i)

with one model output used for both DDIM moves (docs/math.md section 3). gamma = 0 is DDIM, computed
as DDIMScheduler computes it: the model output is converted to (x0, eps) with DDIMScheduler's
formulas, x0 is clipped or thresholded when the config asks, and D_{i->j} = alpha_j x0 + sigma_j eps.
The pair is the sequence of samples ``step`` receives: a callback that edits the latents edits z_i,
and the next step pairs it with the sample given before. A step that does not follow the previous
one on the grid (a new run, img2img's first step, a different batch shape) is a plain DDIM step.
Zero terminal SNR (``rescale_betas_zero_snr``): abar = 0 at the last training timestep, exactly as in
DDIMScheduler (x0 = -v there for v-prediction); an eps-prediction model, for which DDIMScheduler
returns non-finite values at that point, is converted with the 2**-24 floor of diffusers' other
schedulers. Unlike DDIMScheduler, at least 2 inference steps are needed (BDIA's pair).
With gamma = 0 at every step nothing needs the pair, and BDIAScheduler takes what DDIMScheduler takes:
a step from a timestep that is not in ``timesteps`` goes to t - num_train_timesteps // N (DDIMScheduler's
rule), ``sample_max_value`` below 1, ``trained_betas`` of another length than ``num_train_timesteps``
(used as given). With gamma > 0 these are refused with an error saying what to change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.schedulers.scheduling_utils import SCHEDULER_CONFIG_NAME, KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from ..schedule import Grid, Schedule
from ..solvers import BDIA
from ..solvers.bdia import bdia_step, bdia_unstep

__all__ = ["BDIAScheduler", "BDIAInverseScheduler"]

STEP_PAIRINGS = ("next", "stride")


def _ddim_move(x0: torch.Tensor, eps: torch.Tensor, abar_to: float) -> torch.Tensor:
    """D_{i->j} = alpha_j x0 + sigma_j eps: docs/math.md section 3 in DDIMScheduler's (x0, eps) form,
    the form in which x0 can be clipped and which stays finite where alpha_i = 0 (zero terminal SNR)."""
    return math.sqrt(abar_to) * x0 + math.sqrt(1.0 - abar_to) * eps


if TYPE_CHECKING:

    class _FrozenConfig(dict[str, Any]):
        """diffusers' FrozenDict, the type ``ConfigMixin.config`` really returns: every entry is an attribute too."""

        def __getattr__(self, name: str) -> Any: ...


class DiffusersScheduler(SchedulerMixin, ConfigMixin):
    """The two diffusers mixins every scheduler here is built on, with their types reconciled."""

    # diffusers types ConfigMixin's placeholder ``config_name = None`` as None, so the str that SchedulerMixin
    # (listed first, so this very value) gives it reads as a conflict; this is SchedulerMixin's value.
    config_name: str = SCHEDULER_CONFIG_NAME  # type: ignore[assignment]

    if TYPE_CHECKING:

        @property
        def config(self) -> _FrozenConfig: ...


class PairMemory:
    """The BDIA pair a generating scheduler keeps across ``step`` calls, and diffusers' begin index.

    A step at grid point i is a BDIA step when the previous call was at point i - 1 on a sample of the
    same shape (its z_{i-1} is remembered); anything else (a new run, img2img's start, another batch)
    starts a new pair with the plain forward move.
    """

    _begin_index: int | None  # set by each scheduler's __init__

    def _reset(self) -> None:
        self._prev_sample: torch.Tensor | None = None  # z_{i-1}, the sample the previous step was given
        self._last_index: int | None = None  # grid index of the last step taken

    def _paired(self, z: torch.Tensor, i: int) -> bool:
        return (
            self._prev_sample is not None
            and self._last_index == i - 1
            and i >= 1
            and self._prev_sample.shape == z.shape
        )

    def _partner(self, z: torch.Tensor, i: int) -> torch.Tensor | None:
        """z_{i-1} when the step at grid point i on ``z`` pairs with the previous one, else None."""
        return self._prev_sample if self._paired(z, i) else None

    def _remember(self, z: torch.Tensor, i: int) -> None:
        self._prev_sample, self._last_index = z, i

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Where img2img-style pipelines start on the grid (their first step then starts a new pair)."""
        self._begin_index = int(begin_index)

    @property
    def begin_index(self) -> int | None:
        return self._begin_index


class _BDIASchedulerBase(DiffusersScheduler):
    """What both schedulers share: the config, the grid, and one evaluation's (x0, eps, F, B)."""

    order = 1

    def _setup(self, gamma: Any, inverse: bool) -> None:
        self._solver = BDIA(gamma)  # validates gamma; gives the per-step values on a grid
        c = self.config
        zero_gamma = self._solver.gamma == 0.0 or (
            isinstance(self._solver.gamma, tuple) and not any(self._solver.gamma)
        )
        # gamma = 0 at every step is DDIM, which needs no pair: such a generating scheduler takes what
        # DDIMScheduler takes (any timestep, any sample_max_value, trained_betas of any length).
        self._ddim_only = zero_gamma and not inverse
        cfg = {k: v for k, v in dict(c).items() if not k.startswith("_")}
        if cfg.get("trained_betas") is not None:
            cfg["trained_betas"] = [float(b) for b in cfg["trained_betas"]]
            if self._ddim_only and len(cfg["trained_betas"]) != c.num_train_timesteps:
                # DDIMScheduler's table is the betas as given; its timesteps still follow num_train_timesteps
                cfg["num_train_timesteps"] = len(cfg["trained_betas"])
        self.schedule = Schedule.from_config(cfg)
        if c.step_pairing not in STEP_PAIRINGS:
            raise ValueError(f"step_pairing must be one of {STEP_PAIRINGS}, got {c.step_pairing!r}")
        if c.step_pairing == "stride" and not self._ddim_only:
            raise ValueError(
                "step_pairing='stride' reproduces DDIMScheduler (gamma=0) only; BDIA's pair needs every step to "
                "land on the next grid point: use step_pairing='next' (the default) or gamma=0"
            )
        if c.thresholding and not 0.0 < c.dynamic_thresholding_ratio <= 1.0:
            raise ValueError(f"dynamic_thresholding_ratio must be in (0, 1], got {c.dynamic_thresholding_ratio}")
        if c.thresholding and c.sample_max_value < 1.0 and not self._ddim_only:
            # below 1 the threshold s = sample_max_value always rescales x0 (a stretch, not a clip)
            raise ValueError(
                f"sample_max_value must be at least 1, got {c.sample_max_value} "
                "(smaller values are taken as DDIMScheduler takes them only with gamma=0)"
            )
        if c.clip_sample and not c.thresholding and c.clip_sample_range <= 0:
            raise ValueError(f"clip_sample_range must be positive, got {c.clip_sample_range}")
        if inverse and (c.clip_sample or c.thresholding):
            raise ValueError(
                "clipping or thresholding x0 cannot be inverted exactly: pass clip_sample=False and thresholding=False "
                "to BDIAInverseScheduler (and generate from its latents with the same settings)"
            )
        # DDIMScheduler's float32 table, bit for bit. Schedule floors a zero-SNR abar at 2**-24 so that
        # its eps-only moves stay finite; DDIMScheduler keeps the exact 0, which v- and x0-prediction
        # models handle (x0 = -v there), so the exact value is used except for eps-prediction below.
        assert self.schedule.betas is not None  # Schedule.from_config keeps them
        self.betas = self.schedule.betas
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = self.schedule.alphas_cumprod.float()
        if c.rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = 0.0
        self.final_alpha_cumprod = torch.tensor(self.schedule.final_alphas_cumprod, dtype=torch.float32)
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.grid: Grid | None = None
        self._gammas: list[float] = []
        self._abars: list[float] = []  # abar at the N grid points and the clean terminal point

    def _set_grid(self, num_inference_steps: int) -> None:
        n = int(num_inference_steps)
        if n > self.config.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps ({n}) cannot exceed num_train_timesteps ({self.config.num_train_timesteps})"
            )
        self.grid = grid = self.schedule.grid(n, self.config.num_train_timesteps)
        self._gammas = self._solver.gammas(grid)
        self.num_inference_steps = n
        self._abars = [self._abar(int(t)) for t in grid.timesteps] + [float(self.final_alpha_cumprod)]

    @property
    def _grid(self) -> Grid:
        """The grid of ``set_timesteps``; a step before it is refused."""
        if self.grid is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        return self.grid

    def _abar(self, t: int) -> float:
        """DDIMScheduler's alpha_prod at training timestep t; the clean end for t < 0."""
        return float(self.alphas_cumprod[t]) if t >= 0 else float(self.final_alpha_cumprod)

    def _predict(
        self, model_output: torch.Tensor, sample: torch.Tensor, t: int, use_clipped_model_output: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) from the model output at (sample, t), as DDIMScheduler.step computes them."""
        abar = self._abar(t)
        if abar == 0.0 and self.config.prediction_type == "epsilon":
            abar = float(self.schedule.alphas_cumprod[t])  # x0 = (z - eps) / 0 is undefined: the floor
        alpha, sigma = math.sqrt(abar), math.sqrt(1.0 - abar)
        if self.config.prediction_type == "epsilon":
            eps = model_output
            x0 = (sample - sigma * eps) / alpha
        elif self.config.prediction_type == "sample":
            x0 = model_output
            eps = (sample - alpha * x0) / sigma
        else:  # v_prediction
            x0 = alpha * sample - sigma * model_output
            eps = alpha * model_output + sigma * sample
        if self.config.thresholding:
            x0 = self._threshold(x0)
        elif self.config.clip_sample:
            x0 = x0.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        if use_clipped_model_output:
            eps = (sample - alpha * x0) / sigma
        return x0, eps

    def _threshold(self, x0: torch.Tensor) -> torch.Tensor:
        """Dynamic thresholding (Saharia et al. 2022, Imagen) as DDIMScheduler applies it, per sample."""
        flat = x0.reshape(x0.shape[0], -1)
        s = torch.quantile(flat.abs(), self.config.dynamic_thresholding_ratio, dim=1)
        s = s.clamp(min=1.0, max=self.config.sample_max_value).unsqueeze(1)
        return (flat.clamp(-s, s) / s).reshape(x0.shape)

    def _moves(
        self,
        model_output: torch.Tensor,
        sample: torch.Tensor,
        i: int,
        backward: bool,
        use_clipped_model_output: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(x0, F = D_{i->i+1}(z_i), B = D_{i->i-1}(z_i) or None) from one model output at grid point i;
        the single definition both schedulers use, so an inverse step undoes a forward one exactly."""
        t = int(self._grid.timesteps[i])
        x0, eps = self._predict(model_output, sample, t, use_clipped_model_output)
        fwd = _ddim_move(x0, eps, self._abars[i + 1])
        bwd = _ddim_move(x0, eps, self._abars[i - 1]) if backward else None
        return x0, fwd, bwd

    @staticmethod
    def _work(sample: torch.Tensor, model_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both in float64 where the device has it, so BDIA's pair is combined without extra rounding."""
        work = torch.float64 if sample.device.type in ("cpu", "cuda") else torch.float32
        return sample.to(work), model_output.to(work)

    def _timestep(self, timestep: Any) -> int:
        if self.grid is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        t = float(timestep.item() if isinstance(timestep, torch.Tensor) else timestep)
        n = self.alphas_cumprod.numel()  # num_train_timesteps, or the length of trained_betas as DDIM uses them
        if t != int(t) or not 0 <= t < n:
            raise ValueError(f"timestep {t:g} is not a training timestep in [0, {n - 1}]")
        return int(t)

    def _output(self, prev: torch.Tensor, x0: torch.Tensor, sample: torch.Tensor, return_dict: bool):
        prev, x0 = prev.to(sample.dtype), x0.to(sample.dtype)
        return DDIMSchedulerOutput(prev_sample=prev, pred_original_sample=x0) if return_dict else (prev, x0)

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        return sample

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """sqrt(abar_t) x0 + sqrt(1 - abar_t) noise (for img2img pipelines), as DDIMScheduler computes it."""
        abar = self.alphas_cumprod.to(original_samples.device, original_samples.dtype)
        abar = abar[timesteps.to(original_samples.device).long()].flatten()
        abar = abar.reshape((-1,) + (1,) * (original_samples.dim() - 1))
        return abar**0.5 * original_samples + (1 - abar) ** 0.5 * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """v = sqrt(abar_t) noise - sqrt(1 - abar_t) sample (training targets of v-prediction models)."""
        abar = self.alphas_cumprod.to(sample.device, sample.dtype)[timesteps.to(sample.device).long()].flatten()
        abar = abar.reshape((-1,) + (1,) * (sample.dim() - 1))
        return abar**0.5 * noise - (1 - abar) ** 0.5 * sample

    def __len__(self) -> int:
        return self.config.num_train_timesteps


_SCHEDULE_DOC = """
    Schedule arguments are DDIMScheduler's, with its defaults and meaning (``clip_sample`` defaults to
    True there and here; Stable Diffusion's configs set it to False). ``clip_sample`` /
    ``clip_sample_range`` and ``thresholding`` / ``dynamic_thresholding_ratio`` / ``sample_max_value``
    act on x0 exactly as in DDIMScheduler; they are fine for sampling but make a step impossible to
    undo, so :class:`BDIAInverseScheduler` refuses them.
"""


class BDIAScheduler(PairMemory, _BDIASchedulerBase):
    (
        """BDIA-DDIM sampling (Zhang, Lewis & Kleijn, ECCV 2024) as a drop-in for diffusers' ``DDIMScheduler``.

    Args:
        gamma: a number in [0, 1] (0.5 is the authors' text-to-image default at ~10 steps, 1.0 at ~40),
            a list of N-1 per-step values, or "belm" (BELM's second-order O-BELM coefficients).
            With gamma = 0 every step is DDIMScheduler's step with eta = 0.
        step_pairing: where a step from timestep t lands.
            ``"next"`` (default): the next element of ``timesteps`` (the clean end after the last);
            BDIA's backward move lands on the previous element. A timestep not in ``timesteps``
            is refused, except with gamma = 0, where it takes DDIMScheduler's rule as "stride" does.
            ``"stride"``: ``t - num_train_timesteps // num_inference_steps`` (the clean end below 0),
            DDIMScheduler's rule, for bit-level compatibility with gamma = 0 only.
            The two agree for ``timestep_spacing="leading"``. For "trailing" and "linspace" they differ:
            with "stride" DDIMScheduler's step from t lands on a noise level that is not the next
            timestep (linspace, N=10: 999 -> 899 while the model is next called at 888), so it solves
            the ODE on a grid that does not match the model's inputs; "next" keeps them matched.
    """
        + _SCHEDULE_DOC
        + """
    ``step`` accepts DDIMScheduler's arguments; ``eta`` must be 0 unless gamma = 0 (BDIA's pair is
    deterministic); at ``eta = 0`` ``generator`` / ``variance_noise`` have no effect, as in DDIMScheduler.
    To regenerate an image inverted with :class:`BDIAInverseScheduler`, call
    :meth:`set_inverted_start` with its ``latents`` and pass ``latents=z_0`` to the pipeline.
    """
    )

    _compatibles = [e.name for e in KarrasDiffusionSchedulers] + ["BDIAInverseScheduler"]

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
        gamma: float | Sequence[float] | str = 0.5,
        step_pairing: str = "next",
    ):
        self._setup(gamma, inverse=False)
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1)  # as DDIMScheduler, until set_timesteps
        self._begin_index: int | None = None
        self._start: tuple[int, torch.Tensor, torch.Tensor, tuple | None] | None = None
        self._reset()

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Materialise the N-step grid (DDIMScheduler's timesteps) and reset the BDIA pair."""
        self._set_grid(num_inference_steps)
        self.timesteps = self._grid.timesteps.to(device)
        self._begin_index = None
        self._reset()

    @property
    def step_index(self) -> int | None:
        return None if self._last_index is None else self._last_index + 1

    def set_inverted_start(self, latents: Sequence[torch.Tensor] | None) -> None:
        """Start the next run from BDIA's pair (z_i, z_{i+1}): ``BDIAInverseScheduler.latents``, or a
        plain (z_0, z_1) tuple for i = 0.

        The step at grid point i that is given z_i returns the stored z_{i+1} instead of a DDIM step,
        so the run retraces the inverted trajectory exactly. Kept across ``set_timesteps`` and used
        once; ``None`` clears it.
        """
        if latents is None:
            self._start = None
            return
        if self.config.clip_sample or self.config.thresholding:
            raise ValueError(
                "an inverted start is retraced exactly only without clipping x0: "
                "use clip_sample=False and thresholding=False, as BDIAInverseScheduler does"
            )
        z, z_next = latents
        if z.shape != z_next.shape:
            raise ValueError(f"the pair's latents differ in shape: {tuple(z.shape)} and {tuple(z_next.shape)}")
        index, grid = getattr(latents, "start_index", 0), getattr(latents, "grid", None)
        self._start = (index, z.detach().clone(), z_next.detach().clone(), grid)

    def _started_pair(self, z: torch.Tensor, i: int) -> torch.Tensor | None:
        """The stored z_{i+1} when this step is the start set by set_inverted_start, else None."""
        if self._start is None or self._prev_sample is not None:
            return None
        index, z_start, z_next, grid = self._start
        here = (self._grid.timesteps.tolist(), self._abars, self._gammas)
        if grid is not None and grid != here:
            raise ValueError(
                f"the inverted start was made on timesteps {grid[0]} with gammas {grid[2]}, but this run uses "
                f"{here[0]} with {here[2]}: use the inverse scheduler's config (from_config(inverse.config)) "
                "and the same num_inference_steps"
            )
        if i != index or z.shape != z_start.shape or not torch.equal(z, z_start.to(z)):
            raise ValueError(
                f"set_inverted_start expects the run to start at grid point {index} with its z_{index}; "
                f"got grid point {i} and other latents: pass latents=inverse_scheduler.latents[0] to the pipeline, "
                "or call set_inverted_start(None)"
            )
        self._start = None
        return z_next.to(z)

    def _get_variance(self, timestep: int, prev_timestep: int) -> torch.Tensor:
        """DDIMScheduler's variance of its step timestep -> prev_timestep (the noise eta > 0 scales, gamma = 0
        only), computed as it does."""
        abar = self.alphas_cumprod[timestep]
        abar_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        return (1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> DDIMSchedulerOutput | tuple:
        """One step from ``timestep`` (see ``step_pairing``); DDIMScheduler's signature.

        ``eta > 0`` (DDIM's stochastic sampling) needs gamma = 0, where this scheduler is DDIMScheduler;
        BDIA's pair (gamma > 0) is deterministic.
        """
        if eta != 0 and not self._ddim_only:
            raise ValueError(
                f"eta={eta}: BDIA's pair (gamma > 0) is deterministic and takes no noise; use eta=0, "
                "or gamma=0 (DDIM) for stochastic sampling"
            )
        if eta != 0 and variance_noise is not None and generator is not None:
            raise ValueError("pass either generator or variance_noise to step, not both")
        t = self._timestep(timestep)
        z, out = self._work(sample, model_output)
        hits = (self._grid.timesteps == t).nonzero().flatten()
        if self.config.step_pairing == "stride" or (self._ddim_only and (hits.numel() == 0 or eta != 0)):
            # DDIMScheduler's rule from any timestep; only gamma = 0 gets here, which needs no pair
            x0, eps = self._predict(out, z, t, use_clipped_model_output)
            prev_t = t - self.config.num_train_timesteps // self.num_inference_steps
            if hits.numel() == 0 or eta != 0:
                self._reset()  # off the grid or noised: the next grid step starts a new pair
            if eta == 0:
                return self._output(_ddim_move(x0, eps, self._abar(prev_t)), x0, sample, return_dict)
            abar_prev = self._abar(prev_t)
            std = eta * float(self._get_variance(t, prev_t)) ** 0.5
            prev = math.sqrt(abar_prev) * x0 + math.sqrt(max(1.0 - abar_prev - std**2, 0.0)) * eps
            if variance_noise is None:
                variance_noise = randn_tensor(
                    model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype
                )
            return self._output(prev + std * variance_noise.to(prev), x0, sample, return_dict)
        if hits.numel() == 0:
            raise ValueError(
                f"timestep {t} is not on this scheduler's grid {self.grid!r}: BDIA's pair (gamma > 0) "
                "needs the timesteps of set_timesteps; only gamma=0 (DDIM) steps from other ones"
            )
        i = int(hits[0])
        z_prev = self._partner(z, i) if self._gammas[i - 1] != 0 else None
        x0, fwd, bwd = self._moves(out, z, i, z_prev is not None, use_clipped_model_output)
        z_next = self._started_pair(z, i)
        if z_next is None:
            z_next = fwd if z_prev is None or bwd is None else bdia_step(z_prev.to(z), fwd, bwd, self._gammas[i - 1])
        self._remember(z, i)
        return self._output(z_next, x0, sample, return_dict)


class BDIAInverseScheduler(_BDIASchedulerBase):
    (
        """Exact BDIA inversion, a drop-in for diffusers' ``DDIMInverseScheduler`` in inversion loops

        inverse.set_timesteps(N)
        for t in inverse.timesteps:
            latents = inverse.step(unet(latents, t, ...).sample, t, latents).prev_sample

    that starts from clean latents x0 = z_N and ends at z_0, undoing :class:`BDIAScheduler`'s steps
    with the same config to float rounding (docs/math.md section 4): z_{i-1} = (z_{i+1} - F(z_i)) / gamma_i + B(z_i).
    The start: BDIA's inverse step needs the pair (z_N, z_{N-1}); z_{N-1} comes from one DDIM inversion
    step from x0 with the model evaluated at (x0, t_{N-1}), as DDIMInverseScheduler does (any z_{N-1}
    is exact, this one keeps the noise close to the ODE's). So ``timesteps`` is
    [t_{N-1}, t_{N-1}, t_{N-2}, ..., t_1] (ascending, N model calls, like DDIMInverseScheduler's N):
    the model is never called at t_0, and z_0 needs z_1 to be regenerated. After the loop
    ``latents`` is the pair (z_0, z_1); give it to ``BDIAScheduler.set_inverted_start`` and pass
    ``latents=z_0`` to the pipeline to regenerate x0 (same prompt, guidance and N).

    gamma must be positive at every step (default 1.0: time-symmetric, loses the fewest digits;
    the round trip amplifies rounding by prod 1/gamma_i). ``step_pairing`` must be "next".
    """
        + _SCHEDULE_DOC
    )

    _compatibles = ["DDIMInverseScheduler", "BDIAScheduler"]

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
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
        gamma: float | Sequence[float] | str = 1.0,
        step_pairing: str = "next",
    ):
        self._setup(gamma, inverse=True)
        self.timesteps = torch.arange(0, num_train_timesteps)  # as DDIMInverseScheduler, until set_timesteps
        self._reset()

    def _reset(self) -> None:
        self._calls = 0
        self._next_sample: torch.Tensor | None = None  # z_{i+1}
        self.latents: tuple[torch.Tensor, torch.Tensor] | None = None  # (z_{i-1}, z_i) after the last step

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """[t_{N-1}, t_{N-1}, t_{N-2}, ..., t_1] of BDIAScheduler's N-step grid; resets the pair."""
        self._set_grid(num_inference_steps)
        zero = [k + 1 for k, g in enumerate(self._gammas) if g == 0]
        if zero:
            raise ValueError(
                f"gamma is 0 at step(s) {zero}: BDIA with gamma = 0 is DDIM and cannot be inverted "
                "exactly; use gamma > 0 (e.g. 1.0)"
            )
        ts = self._grid.timesteps
        self.timesteps = torch.cat([ts[-1:], ts.flip(0)[:-1]]).to(device)
        self._reset()

    def step(
        self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor, return_dict: bool = True
    ) -> DDIMSchedulerOutput | tuple:
        """One inversion step toward noise; call k must get ``timesteps[k]``, model evaluated at ``sample``."""
        t = self._timestep(timestep)
        k, n = self._calls, self._grid.num_steps
        if k >= n or t != int(self.timesteps[k]):
            expected = (
                "no more steps (call set_timesteps to start again)" if k >= n else f"timestep {int(self.timesteps[k])}"
            )
            raise ValueError(f"inversion call {k} got timestep {t}; expected {expected}, in the order of .timesteps")
        z, out = self._work(sample, model_output)
        if k == 0:  # z_{N-1} from x0 = z_N: a DDIM inversion step with eps from the model at (x0, t_{N-1})
            _, eps = self._predict(out, z, t)
            abar_x0 = self._abars[n]
            x0 = (z - math.sqrt(1.0 - abar_x0) * eps) / math.sqrt(abar_x0)
            z_prev = _ddim_move(x0, eps, self._abars[n - 1])
        else:  # z_{i-1} from (z_{i+1}, z_i), i = N - k
            i = n - k
            x0, fwd, bwd = self._moves(out, z, i, backward=True)
            assert self._next_sample is not None and bwd is not None  # call k > 0 follows call k - 1
            z_prev = bdia_unstep(self._next_sample.to(z), fwd, bwd, self._gammas[i - 1])
        self._next_sample, self._calls = z, k + 1
        result = self._output(z_prev, x0, sample, return_dict)
        prev = result.prev_sample if return_dict else result[0]
        self.latents = _Pair(
            prev, sample.detach().clone(), n - k - 1, (self._grid.timesteps.tolist(), self._abars, self._gammas)
        )
        return result


class _Pair(tuple):
    """(z_i, z_{i+1}) with its grid index i and the (timesteps, abars, gammas) it was made on, so that
    regenerating on another grid or with other gammas is refused."""

    start_index: int
    grid: tuple[list[float], list[float], list[float]]

    def __new__(cls, z: torch.Tensor, z_next: torch.Tensor, index: int, grid: tuple):
        pair = super().__new__(cls, (z, z_next))
        pair.start_index, pair.grid = index, grid
        return pair
