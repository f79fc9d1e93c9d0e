"""Workload 3: cost on the real architecture, diffusers' UNet2DConditionModel with SD 1.5's configuration.

Random weights (nothing is downloaded); ``width`` scales the channel counts (1.0 is SD 1.5 itself,
860M parameters; the quick mode uses a narrower copy of the same architecture). Condition: random
77x768 "text embeddings" under classifier-free guidance, the two branches batched as in SD.

Measured here, in one process, each timing repeated with the methods interleaved (medians):
- one guided UNet forward;
- the solver's own arithmetic per step: invert + reconstruct with a zero-cost eps model of the
  same shapes (state updates, dtype casts and finiteness checks; no network);
- invert + reconstruct wall time of DDIM inversion, BDIA and EDICT with the UNet, as ratios to DDIM;
- peak memory of live torch CPU allocations during invert + reconstruct (torch profiler's memory
  events), and the bytes of solver state held between steps;
- the round-trip error with float32 and float64 solver state (the UNet runs in float32);
- null-text inversion (Mokady et al. 2023), the optimisation-based baseline, on the narrow UNet.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from ..models import ClassifierFreeGuidance
from ..schedule import Schedule
from .analytic import SD15_SCHEDULE
from .config import BenchConfig
from .measures import ZeroModel, error_stats, interleaved_times, median
from .methods import METHODS
from .report import fmt, table

REQUIRES = {"diffusers": "SD 1.5's UNet2DConditionModel"}

# Stable Diffusion 1.5's unet/config.json (runwayml/stable-diffusion-v1-5), written out.
SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
TEXT_TOKENS, TEXT_DIM = 77, 768
TIMED = ("ddim", "bdia-1", "edict")  # METHODS keys whose cost is measured


def unet_config(width: float) -> dict[str, Any]:
    cfg = dict(SD15_UNET)
    if width != 1.0:
        cfg["block_out_channels"] = tuple(
            max(32, int(round(c * width / 32)) * 32) for c in SD15_UNET["block_out_channels"]
        )
    return cfg


def build_unet(width: float, seed: int):
    from diffusers.models import UNet2DConditionModel

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_config(width))
    return unet.eval().requires_grad_(False)


class UNetEps:
    """A diffusers UNet as ``model(x, t, cond)`` over text embeddings (SD's eps prediction)."""

    dtype = torch.float32

    def __init__(self, unet):
        self.unet = unet

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=cond).sample


def _guided(unet, cfg: BenchConfig, gen: torch.Generator) -> ClassifierFreeGuidance:
    cond = torch.randn(1, TEXT_TOKENS, TEXT_DIM, generator=gen)
    uncond = torch.randn(1, TEXT_TOKENS, TEXT_DIM, generator=gen)
    return ClassifierFreeGuidance(UNetEps(unet), cond, uncond, cfg.unet_guidance)


@contextlib.contextmanager
def _fd2_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null: the profiler's C++ side writes start/stop lines straight to it.
    Python exceptions still propagate, and are printed after the descriptor is restored."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_torch_bytes(fn: Callable[[], Any]) -> int:
    """Peak of the torch CPU allocations made during ``fn()`` and alive at once (the profiler's memory
    events); memory allocated before the call, such as the model's weights, is not counted."""
    from torch.profiler import ProfilerActivity, profile

    with _fd2_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def _round_trip(solver, model, x0, grid) -> tuple[torch.Tensor, int]:
    """Invert then reconstruct; returns the reconstruction and the NFE of both."""
    inv = solver.invert(model, x0, grid)
    rec = solver.solve(model, inv, grid)
    return rec.x, inv.nfe + rec.nfe


def solver_arithmetic(cfg: BenchConfig, shape: tuple[int, ...], schedule: Schedule) -> dict[str, Any]:
    """Seconds per grid step of invert + reconstruct with a zero-cost model, per method and state dtype."""
    grid = schedule.grid(cfg.solver_steps)
    zero = ZeroModel(shape)
    x0 = torch.randn(shape, generator=torch.Generator().manual_seed(cfg.seed))
    tasks = {}
    for key in TIMED:
        for dt in ("float64", "float32"):
            solver = METHODS[key].make(getattr(torch, dt))
            tasks[f"{key}/{dt}"] = lambda s=solver: _round_trip(s, zero, x0, grid)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for f in tasks.values():  # warm-up
            f()
        times = interleaved_times(tasks, cfg.solver_repeats)
    steps = 2 * cfg.solver_steps  # inversion steps + reconstruction steps
    return {k: {"seconds_per_step": median(v) / steps, "times": v} for k, v in times.items()}


def run(cfg: BenchConfig, log=print) -> dict[str, Any]:
    import importlib.util

    if importlib.util.find_spec("diffusers") is None:
        return {"skipped": "diffusers is not installed; pip install 'bdia[diffusers]'"}
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    schedule = Schedule.from_config(SD15_SCHEDULE)
    shape = (1, 4, cfg.unet_latent, cfg.unet_latent)
    out: dict[str, Any] = {}

    log(f"  unet: building UNet2DConditionModel (SD 1.5 config, width x{cfg.unet_width:g}, random weights)")
    t0 = time.perf_counter()
    unet = build_unet(cfg.unet_width, cfg.seed)
    out["build_seconds"] = time.perf_counter() - t0
    params = sum(p.numel() for p in unet.parameters())
    guided = _guided(unet, cfg, gen)
    x0 = torch.randn(shape, generator=gen)
    grid = schedule.grid(cfg.unet_steps)
    out["setup"] = {
        "width": cfg.unet_width,
        "block_out_channels": list(unet_config(cfg.unet_width)["block_out_channels"]),
        "parameters": params,
        "latent_shape": list(shape),
        "steps": cfg.unet_steps,
        "guidance": cfg.unet_guidance,
        "repeats": cfg.unet_repeats,
        "threads": torch.get_num_threads(),
    }

    log(f"  unet: solver arithmetic with a zero-cost model ({cfg.solver_steps} steps x {cfg.solver_repeats})")
    out["solver_arithmetic"] = solver_arithmetic(cfg, shape, schedule)

    log(f"  unet: invert + reconstruct, {cfg.unet_steps} steps, {cfg.unet_repeats} interleaved repeats")
    results: dict[str, Any] = {}
    t_fwd = grid.timesteps[len(grid) // 2].expand(1)
    with torch.no_grad():
        guided(x0, t_fwd)  # warm-up
        tasks: dict[str, Callable[[], Any]] = {"forward": lambda: [guided(x0, t_fwd) for _ in range(3)]}
        for key in TIMED:
            solver = METHODS[key].make(torch.float64)

            def store(s: Any = solver, k: str = key) -> None:
                results[k] = _round_trip(s, guided, x0, grid)

            tasks[key] = store
        cpu: dict[str, list[float]] = {}
        times = interleaved_times(tasks, cfg.unet_repeats, cpu)
    forward = median(times.pop("forward")) / 3
    out["forward_seconds"] = forward
    out["forward_cpu_seconds"] = median(cpu.pop("forward")) / 3
    timing = {}
    for key, ts in times.items():
        rec, nfe = results[key]
        timing[key] = {
            "label": METHODS[key].label,
            "seconds": median(ts),
            "times": ts,
            "cpu_seconds": median(cpu[key]),
            "cpu_times": cpu[key],
            "cpu_ratio_to_ddim": median(cpu[key]) / median(cpu["ddim"]),
            "ratio_to_ddim": median(ts) / median(times["ddim"]),
            "nfe": nfe,
            "round_trip_float64": error_stats(rec, x0),
        }
    out["invert_reconstruct"] = timing
    arith = out["solver_arithmetic"]
    out["arithmetic_fraction"] = {k: v["seconds_per_step"] / forward for k, v in arith.items()}

    msteps = 2  # the fewest a grid allows: peak memory does not grow with the steps
    log(f"  unet: peak memory (torch profiler memory events, {msteps} steps)")
    mgrid = schedule.grid(msteps)
    memory = {}
    with torch.no_grad():
        for key in TIMED:
            solver = METHODS[key].make(torch.float64)
            peak = peak_torch_bytes(lambda: _round_trip(solver, guided, x0, mgrid))
            zpeak = peak_torch_bytes(lambda: _round_trip(solver, ZeroModel(shape), x0, mgrid))
            memory[key] = {
                "peak_bytes": peak,
                "solver_peak_bytes": zpeak,
                "state_bytes": solver.num_latents * x0.numel() * 8,
                "steps": msteps,
            }
    out["memory"] = memory

    log("  unet: float32 vs float64 state round trip")
    dtype_rt: dict[str, Any] = {}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key in cfg.unet_float32_methods:
            rec, _ = _round_trip(METHODS[key].make(torch.float32), guided, x0, grid)
            dtype_rt[key] = {
                "label": METHODS[key].label,
                "float32": error_stats(rec, x0),
                "float64": timing[key]["round_trip_float64"],
            }
        dtype_rt["ddim"] = {"label": METHODS["ddim"].label, "float64": timing["ddim"]["round_trip_float64"]}
    out["state_dtype_round_trip"] = dtype_rt

    if cfg.nulltext_steps:
        out["nulltext"] = nulltext(cfg, schedule, shape, log, unet if cfg.nulltext_width == cfg.unet_width else None)
    if cfg.sd15_forward_repeats and cfg.unet_width != 1.0:
        out["sd15_forward"] = sd15_forward(cfg, shape, grid, out, log)
    return out


def sd15_forward(cfg: BenchConfig, shape: tuple[int, ...], grid, out: dict[str, Any], log=print) -> dict[str, Any]:
    """Guided forward time of the full-width SD 1.5 UNet, and what it implies for the solvers' overhead.

    The full-width model is too slow on a CPU to time whole inversions repeatedly; its forward time
    with the separately timed solver arithmetic gives the predicted invert + reconstruct ratios.
    """
    log(f"  unet: full-width SD 1.5 UNet, {cfg.sd15_forward_repeats} guided forwards")
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    t0 = time.perf_counter()
    unet = build_unet(1.0, cfg.seed)
    build = time.perf_counter() - t0
    guided = _guided(unet, cfg, gen)
    x = torch.randn(shape, generator=gen)
    t = grid.timesteps[len(grid) // 2].expand(1)
    with torch.no_grad():
        guided(x, t)  # warm-up
        times = interleaved_times({"forward": lambda: guided(x, t)}, cfg.sd15_forward_repeats)["forward"]
    f = median(times)
    ar = out["solver_arithmetic"]
    frac = {k: v["seconds_per_step"] / f for k, v in ar.items()}
    n = cfg.unet_steps
    nfe = {k: v["nfe"] for k, v in out["invert_reconstruct"].items()}
    steps = {"ddim": 2 * n, "bdia-1": 2 * n, "edict": 2 * n}  # grid steps of invert + reconstruct

    def predicted(key: str) -> float:
        return nfe[key] * f + steps[key] * ar[f"{key}/float64"]["seconds_per_step"]

    return {
        "parameters": sum(p.numel() for p in unet.parameters()),
        "build_seconds": build,
        "forward_seconds": f,
        "times": times,
        "arithmetic_fraction": frac,
        "predicted_ratio_to_ddim": {k: predicted(k) / predicted("ddim") for k in steps},
    }


def nulltext(cfg: BenchConfig, schedule: Schedule, shape: tuple[int, ...], log=print, unet=None) -> dict[str, Any]:
    """Null-text inversion versus DDIM inversion and BDIA under guidance, on the narrow UNet."""
    from ..nulltext import null_text_invert

    log(
        f"  unet: null-text inversion (width x{cfg.nulltext_width:g}, {cfg.nulltext_steps} steps, "
        f"<= {cfg.nulltext_inner} Adam iterations per step)"
    )
    gen = torch.Generator().manual_seed(cfg.seed + 4)
    if unet is None:
        unet = build_unet(cfg.nulltext_width, cfg.seed)
    guided = _guided(unet, cfg, gen)
    x0 = torch.randn(shape, generator=gen)
    grid = schedule.grid(cfg.nulltext_steps)
    rows: dict[str, Any] = {}
    with torch.no_grad():
        guided(x0, grid.timesteps[:1])  # warm-up
        for key in ("ddim", "bdia-1"):
            solver = METHODS[key].make(torch.float64)
            c0, t0 = time.process_time(), time.perf_counter()
            rec, nfe = _round_trip(solver, guided, x0, grid)
            rows[key] = {
                "label": METHODS[key].label,
                "seconds": time.perf_counter() - t0,
                "cpu_seconds": time.process_time() - c0,
                "nfe": nfe,
                "round_trip": error_stats(rec, x0),
            }
    c0, t0 = time.process_time(), time.perf_counter()
    nt = null_text_invert(guided, x0, grid, inner_steps=cfg.nulltext_inner)
    with torch.no_grad():
        rec = nt.sample(guided, grid)
    rows["nulltext"] = {
        "label": f"null-text inversion ({cfg.nulltext_inner} iters/step)",
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
        "losses": nt.losses,
        "nfe": nt.nfe + cfg.nulltext_steps,
        "round_trip": error_stats(rec, x0),
    }
    for r in rows.values():
        r["time_ratio_to_ddim"] = r["seconds"] / rows["ddim"]["seconds"]
        r["cpu_ratio_to_ddim"] = r["cpu_seconds"] / rows["ddim"]["cpu_seconds"]
    return {
        "width": cfg.nulltext_width,
        "parameters": sum(p.numel() for p in unet.parameters()),
        "steps": cfg.nulltext_steps,
        "inner_steps": cfg.nulltext_inner,
        "guidance": cfg.unet_guidance,
        "rows": rows,
    }


PLOT = "unet_time.png"


def plots(results: dict[str, Any], out_dir: Path, overwrite: bool) -> list[str]:
    from .plots import time_per_method

    time_per_method(results, out_dir / PLOT, overwrite)
    return [PLOT]


def section(u: dict[str, Any]) -> str:
    s = u["setup"]
    out = [
        "## Workload 3: SD 1.5 UNet architecture, cost",
        f"diffusers `UNet2DConditionModel` with SD 1.5's configuration, block_out_channels "
        f"{tuple(s['block_out_channels'])} (width x{s['width']:g}; {s['parameters'] / 1e6:.1f}M parameters), random "
        f"weights, float32; latent {tuple(s['latent_shape'])}; random 77x768 text embeddings, classifier-free "
        f"guidance {s['guidance']:g} (both branches in one batch); {s['steps']} steps; SD 1.5 schedule; solver state "
        f"float64 unless stated; torch threads: {s['threads']}. Random weights make the guided ODE unlike a trained "
        f"model's (DDIM inversion's round trip here: max error "
        f"{fmt(u['invert_reconstruct']['ddim']['round_trip_float64']['max'])}), so this workload is about cost and "
        "exactness, not image "
        "quality. Times vary from run to run and machine to machine; the errors and memory are deterministic "
        "for the seed.",
    ]
    out.append(f"![time per method]({PLOT})")
    ir = u["invert_reconstruct"]
    per_nfe = ir["ddim"]["cpu_seconds"] / ir["ddim"]["nfe"]
    fastest = min(ir["ddim"]["times"])
    rows = [
        [
            r["label"],
            r["nfe"],
            r["seconds"],
            f"{r['ratio_to_ddim']:.3f}x",
            f"{min(r['times']) / fastest:.3f}x",
            f"{r['cpu_ratio_to_ddim']:.3f}x",
            f"{r['cpu_seconds'] / r['nfe'] / per_nfe:.3f}x",
            r["round_trip_float64"]["max"],
        ]
        for r in ir.values()
    ]
    out.append(
        f"**Invert + reconstruct** (median of {s['repeats']} interleaved repeats; one guided UNet forward: "
        f"{1000 * u['forward_seconds']:.1f} ms). BDIA's reconstruction from the inverted pair (z_0, z_1) "
        "needs N - 1 evaluations, so invert + reconstruct costs 2N - 1 NFE against DDIM's 2N; the per-NFE "
        "column (CPU time) removes that advantage. Seconds: median wall time; fastest: ratio of the fastest "
        "runs; CPU: ratio of median process CPU times, which other processes on the machine disturb less "
        "than wall time.\n\n"
        + table(
            [
                "Method",
                "NFE",
                "seconds",
                "vs DDIM (median wall)",
                "vs DDIM (fastest wall)",
                "vs DDIM (CPU)",
                "per NFE vs DDIM (CPU)",
                "round trip max",
            ],
            rows,
        )
    )
    sd = u.get("sd15_forward")
    if sd:
        fr = sd["arithmetic_fraction"]
        pr = sd["predicted_ratio_to_ddim"]
        out.append(
            f"**Full-width SD 1.5 UNet** ({sd['parameters'] / 1e6:.0f}M parameters, same latent): one guided "
            f"forward {sd['forward_seconds']:.2f} s (median of {len(sd['times'])}). Solver arithmetic per step "
            f"as a share of it: BDIA {100 * fr['bdia-1/float64']:.4f}% (float64 state), DDIM "
            f"{100 * fr['ddim/float64']:.4f}%, EDICT {100 * fr['edict/float64']:.4f}%. Predicted invert + "
            f"reconstruct time at {s['steps']} steps (NFE x forward + steps x arithmetic): BDIA "
            f"{pr['bdia-1']:.4f}x DDIM, EDICT {pr['edict']:.3f}x. Too slow on this CPU to time whole "
            "inversions repeatedly, hence the prediction."
        )
    ar = u["solver_arithmetic"]
    rows = [
        [k.split("/")[0], k.split("/")[1], 1e6 * v["seconds_per_step"], f"{100 * u['arithmetic_fraction'][k]:.3f}%"]
        for k, v in ar.items()
    ]
    out.append(
        "**Solver arithmetic per grid step** (invert + reconstruct with a zero-cost eps model of the same "
        "shape: state updates, dtype casts and finiteness checks, no network)\n\n"
        + table(["Method", "state", "microseconds / step", "of one UNet forward"], rows)
    )
    rows = [
        [k, m["peak_bytes"] / 2**20, m["solver_peak_bytes"] / 2**10, m["state_bytes"] / 2**10]
        for k, m in u["memory"].items()
    ]
    out.append(
        "**Peak memory** of the torch CPU allocations made during invert + reconstruct and alive at once "
        "(the weights, allocated before, excluded; torch profiler memory "
        f"events; {next(iter(u['memory'].values()))['steps']} steps, float64 state): with the UNet (MiB), "
        "with the zero-cost model (the solver alone, "
        "KiB), and the solver state held between steps (KiB)\n\n"
        + table(["Method", "peak with UNet (MiB)", "solver alone peak (KiB)", "state (KiB)"], rows)
    )
    rows = [
        [r["label"], r.get("float32", {}).get("max"), r["float64"]["max"]] for r in u["state_dtype_round_trip"].values()
    ]
    out.append(
        "**Round trip by solver state dtype** (UNet in float32, guidance "
        f"{s['guidance']:g}, {s['steps']} steps)\n\n" + table(["Method", "float32 state", "float64 state"], rows)
    )
    nt = u.get("nulltext")
    if nt:
        rows = [
            [
                r["label"],
                r["nfe"],
                r["round_trip"]["max"],
                r["round_trip"]["rms"],
                r["seconds"],
                f"{r['time_ratio_to_ddim']:.2f}x",
                f"{r['cpu_ratio_to_ddim']:.2f}x",
            ]
            for r in nt["rows"].values()
        ]
        out.append(
            f"**Null-text inversion** (Mokady et al. 2023) against the exact methods under guidance "
            f"{nt['guidance']:g}: UNet width x{nt['width']:g} ({nt['parameters'] / 1e6:.1f}M parameters), "
            f"{nt['steps']} steps, at most {nt['inner_steps']} Adam iterations per step. NFE: guided evaluations "
            "for the solvers; for null-text, single-branch UNet passes during inversion (forward and backward "
            "each counted) plus the guided evaluations of the reconstruction.\n\n"
            + table(
                ["Method", "NFE", "round trip max", "round trip rms", "seconds", "time vs DDIM", "CPU time vs DDIM"],
                rows,
            )
        )
    return "\n\n".join(out)
