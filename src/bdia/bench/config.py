"""What a benchmark run measures and at what size: the quick and full presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

__all__ = ["BenchConfig", "WORKLOADS"]

# The workload modules of this package, in report order (the contract is in .runner). Here, in a module
# that imports no torch, so that `bdia bench --help` can list them without loading anything.
WORKLOADS: tuple[str, ...] = (
    "analytic",
    "digits",
    "unet",
    "edm",
    "rex",
    "flow",
    "editing",
    "scene_editing",
    "reversible",
    "throughput",
)


@dataclass(frozen=True)
class BenchConfig:
    """Every size and setting of a run. ``quick()`` and ``full()`` are the presets; tests shrink further."""

    mode: str = "quick"
    seed: int = 0
    workloads: tuple[str, ...] | None = None  # names from bench.runner.WORKLOADS; None: all of them
    methods: tuple[str, ...] = ("ddim", "edict", "bdia-1", "bdia-0.96", "bdia-0.9", "bdia-0.5", "belm")
    dtypes: tuple[str, ...] = ("float64", "float32")
    headline_steps: int = 50
    # torch intra-op threads during the run; 0 keeps torch's default. On a machine shared with other
    # work, multi-threaded CPU kernels can run 10-100x slower and erratically, which ruins timings.
    threads: int = 1
    # Workload 1: Gaussian mixture with exact eps, SD 1.5's schedule.
    analytic_shape: tuple[int, ...] = (4, 16, 16)
    analytic_components: int = 8
    analytic_std: float = 0.3
    analytic_batch: int = 4
    analytic_steps: tuple[int, ...] = (10, 20, 50, 100)
    analytic_check_dim: int = 16  # also a small mixture in this many dimensions (8 components, std 0.3); 0 skips
    # Workload 2: the embedded digits model; references by Heun on a fine grid.
    digits_batch: int = 8
    digits_steps: tuple[int, ...] = (10, 20, 50)
    digits_guidance: float = 1.0
    digits_ref_stride: int = 2  # fine reference grid: every stride-th training timestep (plus the coarse ones)
    # Workload 3: diffusers UNet2DConditionModel with SD 1.5's configuration, random weights.
    unet_width: float = 0.1  # scale of block_out_channels; 1.0 is SD 1.5 itself
    unet_latent: int = 16  # latent height and width
    unet_steps: int = 10
    unet_repeats: int = 3
    unet_guidance: float = 7.5
    unet_float32_methods: tuple[str, ...] = ("bdia-1", "edict")
    sd15_forward_repeats: int = 2  # > 0 and unet_width < 1: also time forwards of the full-width SD 1.5 UNet
    solver_steps: int = 100  # steps of the zero-cost-model timing of solver arithmetic
    solver_repeats: int = 5
    nulltext_width: float = 0.1
    nulltext_steps: int = 10  # 0 skips null-text inversion
    nulltext_inner: int = 10
    # Workload 4: EDM's Karras grids; solvers compared at equal NFE budgets.
    edm_methods: tuple[str, ...] = (
        "ddim",
        "heun",
        "bdia-1",
        "bdia-0.5",
        "bdia-heun-1",
        "bdia-heun-0.96",
        "bdia-heun-0.5",
    )
    edm_samples: int = 32
    edm_budgets: tuple[int, ...] = (10, 20, 50, 100, 200)  # the order is fitted over the three largest
    edm_round_trip_methods: tuple[str, ...] = ("bdia-heun-1", "bdia-heun-0.96", "bdia-heun-0.5", "heun", "ddim")
    edm_round_trip_steps: int = 25
    edm_round_trip_samples: int = 16
    edm_digits_methods: tuple[str, ...] = ("ddim", "heun", "bdia-heun-1", "bdia-heun-0.5")
    edm_digits_per_class: int = 10  # 0 skips the digits model's Frechet distance
    edm_digits_budgets: tuple[int, ...] = (10, 20)
    edm_digits_guidance: float = 2.0
    # Editing on the digits model: held-out digits inverted, regenerated under other classes.
    editing_methods: tuple[str, ...] = ("ddim", "edict", "bdia-1", "belm", "rex")
    editing_images: int = 10
    editing_targets: int = 2  # other classes per image (9: all)
    editing_steps: int = 20
    editing_strengths: tuple[float, ...] = (0.6, 1.0)
    editing_guidances: tuple[float, ...] = (1.0, 3.0)
    # Editing with ground truth on the scenes model: held-out edit pairs, every method x control.
    scene_editing_methods: tuple[str, ...] = ("ddim", "nulltext", "edict", "bdia-1", "belm", "rex")
    scene_editing_pairs: int = 2  # per edit kind (six kinds)
    scene_editing_steps: tuple[int, ...] = (10, 20)
    scene_editing_guidance: float = 3.0
    scene_editing_controls: tuple[str, ...] = ("swap", "p2p", "p2p-blend", "masactrl", "mask")
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def quick(cls, seed: int = 0, **overrides: Any) -> BenchConfig:
        return replace(cls(mode="quick", seed=seed), **overrides)

    @classmethod
    def full(cls, seed: int = 0, **overrides: Any) -> BenchConfig:
        base = cls(
            mode="full",
            seed=seed,
            analytic_batch=8,
            digits_batch=16,
            digits_steps=(10, 20, 50, 100),
            digits_ref_stride=1,
            unet_width=1.0,
            unet_repeats=3,
            solver_repeats=7,
            nulltext_steps=20,
            edm_samples=256,
            edm_round_trip_samples=64,
            edm_digits_per_class=50,
            edm_digits_budgets=(10, 20, 50),
            edm_digits_methods=BenchConfig.edm_methods,
            editing_images=20,
            editing_targets=3,
            editing_steps=25,
            editing_strengths=(0.5, 0.75, 1.0),
            editing_guidances=(1.0, 2.0, 4.0),
            scene_editing_pairs=3,
            scene_editing_steps=(10, 25),
        )
        return replace(base, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
