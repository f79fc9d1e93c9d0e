"""`bdia bench` checks every selected workload's optional modules before the first one runs, skips what
cannot run with a note, and keeps each finished workload's results when a later one fails."""

import json
import sys

import pytest

from bdia.bench import BenchConfig, run_bench, runner
from test_bench import tiny


def test_a_missing_module_skips_its_workload_before_any_runs(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch_msssim", None)  # `import pytorch_msssim` now raises ImportError
    lines = []
    res = run_bench(tiny(BenchConfig, workloads=("flow", "editing")), tmp_path / "out", log=lines.append)
    note = res["workloads"]["editing"]["skipped"]
    assert "pytorch_msssim" in note and "bdia[bench]" in note
    # the note comes first, before the first workload starts
    assert lines[0].startswith("[editing] skipped") and "pytorch_msssim" in lines[0]
    assert lines.index("[flow]") > 0
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["workloads"]["editing"] == {"skipped": note} and "skipped" not in saved["workloads"]["flow"]
    assert "incomplete" not in saved
    assert f"Not run: {note}" in (tmp_path / "out" / "report.md").read_text()


def test_every_missing_module_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "diffusers", None)
    notes = runner.unavailable(runner.WORKLOADS)
    assert set(notes) == {"digits", "unet", "editing", "scene_editing", "reversible", "throughput"}
    assert "sklearn (the held-out digits)" in notes["digits"] and "diffusers" in notes["unet"]
    assert "diffusers" not in notes["digits"]


def test_finished_workloads_survive_a_later_failure(tmp_path, monkeypatch):
    import bdia.bench.flow

    def broken(cfg, log=print):
        raise RuntimeError("the second workload fails")

    real = bdia.bench.flow.run
    monkeypatch.setattr(bdia.bench.flow, "run", broken)
    out = tmp_path / "out"
    lines = []
    with pytest.raises(RuntimeError, match="second workload"):
        run_bench(tiny(BenchConfig, workloads=("analytic", "flow")), out, log=lines.append)
    saved = json.loads((out / "results.json").read_text())
    assert list(saved["workloads"]) == ["analytic"] and saved["incomplete"] == ["flow"]
    assert "skipped" not in saved["workloads"]["analytic"]
    assert any("finished before are in" in line for line in lines)
    assert not list(out.glob(".bdia.*"))  # written atomically: no temporary left behind
    # the rest runs into the same folder; the finished workload is kept as it was
    monkeypatch.setattr(bdia.bench.flow, "run", real)
    run_bench(tiny(BenchConfig, workloads=("flow",)), out, overwrite=True, update=True, log=lambda *a: None)
    again = json.loads((out / "results.json").read_text())
    assert (
        list(again["workloads"]) == ["analytic", "flow"]
        and again["workloads"]["analytic"] == saved["workloads"]["analytic"]
    )
    assert "incomplete" not in again and (out / "report.md").is_file()


def test_update_keeps_a_result_when_its_workload_is_skipped_now(tmp_path, monkeypatch):
    out = tmp_path / "out"
    run_bench(tiny(BenchConfig, workloads=("flow",)), out, log=lambda *a: None)
    before = json.loads((out / "results.json").read_text())["workloads"]["flow"]
    import bdia.bench.flow

    monkeypatch.setattr(bdia.bench.flow, "REQUIRES", {"no_such_module_here": "a test"})
    run_bench(tiny(BenchConfig, workloads=("flow",)), out, overwrite=True, update=True, log=lambda *a: None)
    assert json.loads((out / "results.json").read_text())["workloads"]["flow"] == before
