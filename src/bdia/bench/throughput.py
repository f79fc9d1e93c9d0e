"""Workload: throughput of many-image inversion on the digits model, against batch size and processes.

Images/s of a full round trip (BDIA invert, then reconstruct) of held-out digits under their class
prompts, with the digits editor, as :mod:`bdia.datasets.batch` runs it: by batch size in this
process (one thread), and by number of processes launched with ``torch.distributed.run`` (one thread
each, the batches split with accelerate's ``PartialState().split_between_processes``). Each process
loads the model and warms up before a barrier; the clock runs from that barrier to the last one.

Targets: 2 processes >= 1.6x one process; batch 64 >= 5x batch 1.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .config import BenchConfig
from .requires import DIGITS

REQUIRES = {**DIGITS, "accelerate": "sharing batches between processes"}

TARGET_PROCESSES = 1.6  # 2 processes against 1
TARGET_BATCH = 5.0  # batch 64 against batch 1

# (images, steps, batch sizes, processes, batch size of the process runs) per mode.
SIZES = {
    "quick": {"images": 32, "steps": 5, "batch_sizes": (1, 8), "processes": (1, 2), "process_batch": 8},
    "full": {"images": 128, "steps": 20, "batch_sizes": (1, 8, 64), "processes": (1, 2), "process_batch": 8},
}


def settings(cfg: BenchConfig) -> dict[str, Any]:
    """The sizes of this run: the mode's, with ``cfg.extra["throughput"]`` entries replacing them."""
    out = dict(SIZES["full" if cfg.mode == "full" else "quick"])
    out.update(cfg.extra.get("throughput", {}))
    return out


def _data(count: int) -> tuple[torch.Tensor, list[str]]:
    from ..digits import load_digits

    test = load_digits("test")
    if count > len(test):
        raise ValueError(f"the held-out digits are {len(test)} images; ask for at most that many, not {count}")
    return test.images[:count], [str(int(c)) for c in test.labels[:count]]


def round_trips(
    editor: Any, images: torch.Tensor, prompts: Sequence[str], batches: Sequence[Sequence[int]], steps: int
) -> float:
    """Invert and reconstruct each batch; return the largest latent round-trip error (a check that
    the work timed is the real thing)."""
    worst = 0.0
    for batch in batches:
        inv = editor.invert([images[i] for i in batch], [prompts[i] for i in batch], num_steps=steps, progress=False)
        rec = editor.reconstruct(inv, progress=False)
        worst = max(worst, float(rec.latent_error))
    return worst


def _chunks(count: int, size: int) -> list[list[int]]:
    return [list(range(s, min(s + size, count))) for s in range(0, count, size)]


def _editor():
    from ..cli.datasets import load_editor

    return load_editor("digits", device="cpu", progress=False)


def by_batch_size(s: dict[str, Any], log: Callable = print) -> dict[str, Any]:
    editor = _editor()
    images, prompts = _data(s["images"])
    round_trips(editor, images, prompts, [[0]], s["steps"])  # warm-up
    rows = {}
    for b in s["batch_sizes"]:
        start = time.perf_counter()
        err = round_trips(editor, images, prompts, _chunks(len(images), b), s["steps"])
        seconds = time.perf_counter() - start
        rows[str(b)] = {"seconds": seconds, "images_per_s": len(images) / seconds, "max_latent_error": err}
        log(f"  throughput: batch {b}: {len(images) / seconds:.1f} images/s")
    return rows


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def by_processes(s: dict[str, Any], log: Callable = print) -> dict[str, Any]:
    """Launch the worker with torch.distributed.run on 1, 2... processes of one thread each."""
    src = os.fspath(Path(__file__).resolve().parents[2])
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    rows = {}
    for k in s["processes"]:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc_per_node",
                str(k),
                "--master_port",
                str(_free_port()),
                "-m",
                "bdia.bench.throughput",
                "--images",
                str(s["images"]),
                "--steps",
                str(s["steps"]),
                "--batch-size",
                str(s["process_batch"]),
                "--out",
                os.fspath(out),
            ]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
            if proc.returncode != 0 or not out.is_file():
                raise RuntimeError(f"the {k}-process throughput run failed:\n{proc.stderr[-2000:]}")
            row = json.loads(out.read_text())
        rows[str(k)] = row
        log(f"  throughput: {k} process(es): {row['images_per_s']:.1f} images/s")
    return rows


def run(cfg: BenchConfig, log: Callable = print) -> dict[str, Any]:
    s = settings(cfg)
    try:
        _data(1)
    except (ImportError, FileNotFoundError) as e:
        log(f"  throughput: skipped ({e})")
        return {"skipped": f"the digits model or data is not available: {e}"}
    from ..runtime import torch_threads

    with torch_threads(1):
        batches = by_batch_size(s, log)
    processes = by_processes(s, log) if s["processes"] else {}
    return {
        "description": (
            f"BDIA (gamma 1) invert + reconstruct of {s['images']} held-out digits under their class "
            f"prompts, {s['steps']} steps, digits UNet in float32, float64 state, CPU, one thread per "
            f"process; processes launched with torch.distributed.run, batch {s['process_batch']}"
        ),
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in s.items()},
        "cpu_count": os.cpu_count(),
        "by_batch_size": batches,
        "by_processes": processes,
        "speedups": _speedups(batches, processes),
    }


def _speedups(batches: dict[str, Any], processes: dict[str, Any]) -> dict[str, float | None]:
    def ratio(rows: dict[str, Any], a: str, b: str) -> float | None:
        return rows[a]["images_per_s"] / rows[b]["images_per_s"] if a in rows and b in rows else None

    return {
        "batch_64_vs_1": ratio(batches, "64", "1"),
        "batch_8_vs_1": ratio(batches, "8", "1"),
        "processes_2_vs_1": ratio(processes, "2", "1"),
    }


def section(results: dict[str, Any]) -> str:
    """Markdown for the report: the tables, and the targets with the measured numbers either way."""
    if "skipped" in results:
        return f"## Throughput of many-image inversion\n\nSkipped: {results['skipped']}\n"
    lines = [
        "## Throughput of many-image inversion",
        "",
        results["description"] + ".",
        "",
        "| batch size | images/s | vs batch 1 | max latent round-trip error |",
        "|---:|---:|---:|---:|",
    ]
    base = results["by_batch_size"].get("1", {}).get("images_per_s")
    for b, row in results["by_batch_size"].items():
        rel = f"{row['images_per_s'] / base:.2f}x" if base else "-"
        lines.append(f"| {b} | {row['images_per_s']:.1f} | {rel} | {row['max_latent_error']:.2g} |")
    if results["by_processes"]:
        lines += ["", "| processes | images/s | vs 1 process | seconds |", "|---:|---:|---:|---:|"]
        one = results["by_processes"].get("1", {}).get("images_per_s")
        for k, row in results["by_processes"].items():
            rel = f"{row['images_per_s'] / one:.2f}x" if one else "-"
            lines.append(f"| {k} | {row['images_per_s']:.1f} | {rel} | {row['seconds']:.2f} |")
    sp = results["speedups"]
    lines += ["", f"Targets (on {results['cpu_count']} CPU cores):"]
    for key, target, text in (
        ("processes_2_vs_1", TARGET_PROCESSES, "2 processes against 1"),
        ("batch_64_vs_1", TARGET_BATCH, "batch 64 against batch 1"),
    ):
        value = sp.get(key)
        if value is None:
            lines.append(f"- {text}: not measured in this mode (target >= {target}x)")
        else:
            lines.append(f"- {text}: {value:.2f}x (target >= {target}x: {'met' if value >= target else 'NOT met'})")
    return "\n".join(lines) + "\n"


def plots(results: dict[str, Any], out_dir: Path, overwrite: bool) -> list[str]:
    """throughput.png: images/s against batch size, and against processes."""
    if "skipped" in results:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    rows = results["by_batch_size"]
    axes[0].plot([int(b) for b in rows], [r["images_per_s"] for r in rows.values()], marker="o")
    axes[0].set_xscale("log", base=2)
    axes[0].set_xlabel("batch size (one process, one thread)")
    axes[0].set_ylabel("images/s (invert + reconstruct)")
    rows = results["by_processes"]
    if rows:
        axes[1].bar([str(k) for k in rows], [r["images_per_s"] for r in rows.values()])
    axes[1].set_xlabel(f"processes (one thread each, batch {results['settings']['process_batch']})")
    axes[1].set_ylabel("images/s")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    fig.suptitle("Many-image inversion on the digits model", fontsize=10)
    fig.tight_layout()
    save_figure(fig, Path(out_dir) / "throughput.png", overwrite)
    return ["throughput.png"]


def worker(images: int, steps: int, batch_size: int, out: str) -> None:
    """One launched process: its share of the batches, timed between two barriers; the first writes the result."""
    from accelerate import PartialState

    torch.set_num_threads(1)
    state = PartialState(cpu=True)
    editor = _editor()
    x, prompts = _data(images)
    round_trips(editor, x, prompts, [[0]], steps)  # warm-up
    batches = _chunks(len(x), batch_size)
    state.wait_for_everyone()
    start = time.perf_counter()
    with state.split_between_processes(batches) as mine:
        err = round_trips(editor, x, prompts, mine, steps)
    state.wait_for_everyone()
    seconds = time.perf_counter() - start
    if state.is_main_process:
        Path(out).write_text(
            json.dumps(
                {
                    "seconds": seconds,
                    "images_per_s": images / seconds,
                    "processes": state.num_processes,
                    "max_latent_error_rank0": err,
                }
            )
        )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="one process of the throughput benchmark (launched by torchrun)")
    p.add_argument("--images", type=int, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    worker(a.images, a.steps, a.batch_size, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
