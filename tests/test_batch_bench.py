"""The throughput workload of ``bdia bench`` (bdia.bench.throughput), at a tiny size."""

from __future__ import annotations

import pytest

from bdia.bench import throughput
from bdia.bench.config import BenchConfig

pytestmark = pytest.mark.usefixtures("single_thread")


def test_throughput_runs_and_reports(tmp_path):
    sizes = {"images": 8, "steps": 2, "batch_sizes": (1, 4), "processes": (2,), "process_batch": 4}
    cfg = BenchConfig.quick(extra={"throughput": sizes})
    results = throughput.run(cfg, log=lambda *a: None)
    assert set(results["by_batch_size"]) == {"1", "4"} and set(results["by_processes"]) == {"2"}
    for row in results["by_batch_size"].values():
        assert row["images_per_s"] > 0 and row["max_latent_error"] < 1e-10  # real, exact round trips
    two = results["by_processes"]["2"]
    assert two["processes"] == 2 and two["images_per_s"] > 0 and two["max_latent_error_rank0"] < 1e-10
    text = throughput.section(results)
    assert "| 4 |" in text and "2 processes against 1: not measured" in text
    assert throughput.plots(results, tmp_path, overwrite=False) == ["throughput.png"]
    assert (tmp_path / "throughput.png").stat().st_size > 0


def test_section_states_targets_either_way():
    row = lambda r: {"images_per_s": r, "max_latent_error": 1e-15, "seconds": 1.0}  # noqa: E731
    results = {
        "description": "x",
        "cpu_count": 2,
        "by_batch_size": {"1": row(2.0), "64": row(8.0)},
        "by_processes": {"1": row(5.0), "2": row(9.0)},
    }
    results["speedups"] = throughput._speedups(results["by_batch_size"], results["by_processes"])
    text = throughput.section(results)
    assert "2 processes against 1: 1.80x (target >= 1.6x: met)" in text
    assert "batch 64 against batch 1: 4.00x (target >= 5.0x: NOT met)" in text
