"""The flow workload of `bdia bench` (src/bdia/bench/flow.py) in a few seconds."""

import math

from bdia.bench import flow
from bdia.bench.config import BenchConfig


def test_flow_workload_runs_small_and_reports():
    cfg = BenchConfig.quick(extra={"flow": {"shape": (2, 4), "components": 3, "batch": 2, "budgets": (10, 20)}})
    results = flow.run(cfg, log=lambda *_: None)
    assert set(results["results"]) == {"sd3", "flux"}
    res = results["results"]["sd3"]["methods"]
    for key, m in [(k, m) for fam in results["results"].values() for k, m in fam["methods"].items()]:
        for b, row in m["by_nfe"].items():
            assert row["nfe_invert"] <= int(b), (key, b, row)  # equal budgets, never more
            if m["exact"]:
                assert row["round_trip"]["max"] <= 1e-10, (key, row)
            else:
                assert row["round_trip"]["max"] > 1e-8, (key, row)
            assert math.isfinite(row["fidelity"]["rms"])
    # BDIA's inverted noise is closer to the exact ODE's than plain Euler inversion's at every budget
    for b in ("10", "20"):
        assert res["bdia-1"]["by_nfe"][b]["fidelity"]["rms"] < res["euler"]["by_nfe"][b]["fidelity"]["rms"]
    text = flow.section(results)
    assert "RF-Solver" in text and "FireFlow" in text and "| BDIA gamma=1 |" in text


def test_flow_plots_are_written(tmp_path):
    import pytest

    pytest.importorskip("matplotlib")
    cfg = BenchConfig.quick(extra={"flow": {"shape": (2,), "components": 2, "batch": 1, "budgets": (10, 20)}})
    names = flow.plots(flow.run(cfg, log=lambda *_: None), tmp_path, overwrite=False)
    assert names == ["flow_sd3.png", "flow_flux.png"]
    assert all((tmp_path / n).stat().st_size > 10_000 for n in names)
