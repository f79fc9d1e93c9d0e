"""``bdia bench`` end to end at tiny sizes: every registered workload runs from the package, the files
appear, the numbers are finite and sane, --quiet prints nothing, and bad output folders are refused first."""

import contextlib
import json
import math
import os
import tempfile
from dataclasses import replace

import pytest

from bdia.bench import BenchConfig, run_bench, runner
from bdia.cli import main

TINY = dict(
    analytic_shape=(2, 4, 4),
    analytic_components=3,
    analytic_batch=2,
    analytic_steps=(5, 10),
    analytic_check_dim=4,
    digits_batch=2,
    digits_steps=(5, 10),
    digits_ref_stride=50,
    unet_width=0.05,
    unet_latent=8,
    unet_steps=2,
    unet_repeats=1,
    solver_steps=4,
    solver_repeats=1,
    nulltext_width=0.05,
    nulltext_steps=2,
    nulltext_inner=1,
    sd15_forward_repeats=0,
    headline_steps=10,
    edm_samples=4,
    edm_budgets=(4, 8, 11),
    edm_round_trip_steps=4,
    edm_round_trip_samples=2,
    edm_digits_per_class=1,
    edm_digits_budgets=(4,),
    editing_images=2,
    editing_targets=1,
    editing_steps=4,
    editing_strengths=(1.0,),
    editing_guidances=(2.0,),
    editing_methods=("ddim", "bdia-1"),
    scene_editing_pairs=1,
    scene_editing_steps=(3,),
    scene_editing_methods=("ddim", "bdia-1"),
    scene_editing_controls=("swap", "mask"),
    extra={
        "rex_budgets": (10,),
        "rex_grids": ("karras",),
        "rex_methods": ("ddim", "bdia-1", "rex"),
        "rex_digits": False,
        "reversible": {
            "batch": 1,
            "grad_steps": (3, 5),
            "drift_steps": 4,
            "drift_gammas": (0.5,),
            "exact_steps": (3,),
            "exact_gammas": (0.1,),
            "exact_batch": 1,
            "arith_steps": 2,
            "arith_shapes": ((1, 1, 4, 4),),
        },
        "flow": {"shape": (2,), "components": 2, "batch": 1, "budgets": (10, 20)},
        "throughput": {"images": 2, "steps": 2, "batch_sizes": (1, 2), "processes": (), "process_batch": 2},
    },
)


def tiny(cls, seed=0, **overrides):
    return replace(cls(mode="quick", seed=seed, **TINY), **overrides)


def stand_in_digits_model(*args, **kwargs):
    """An untrained DigitsUNet with the shipped model's schedule: the code path, in a fraction of the time."""
    import torch

    from bdia.digits import DigitsUNet
    from bdia.digits.train import SCHEDULE_CONFIG
    from bdia.schedule import Schedule

    torch.manual_seed(0)
    model = DigitsUNet(channels=(8, 16, 16), emb_dim=16)
    model.schedule = Schedule.from_config(SCHEDULE_CONFIG)
    return model.eval().requires_grad_(False)


@contextlib.contextmanager
def printed_to_fds():
    """Everything written to file descriptors 1 and 2 meanwhile (C++ output included), as one string."""
    with tempfile.TemporaryFile(mode="w+") as sink:
        saved = [os.dup(1), os.dup(2)]
        text = []
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield text
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            text.append(sink.read())


def _numbers(x):
    if isinstance(x, dict):
        for v in x.values():
            yield from _numbers(v)
    elif isinstance(x, list):
        for v in x:
            yield from _numbers(v)
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        yield x


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """`bdia bench --quick --quiet` over every registered workload, at tiny sizes, with a stand-in digits model."""
    pytest.importorskip("sklearn")
    import bdia.digits

    out = tmp_path_factory.mktemp("bench") / "report"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(BenchConfig, "quick", classmethod(tiny))
        mp.setattr(bdia.digits, "load_model", stand_in_digits_model)
        with printed_to_fds() as printed:
            code = main(["bench", "--quick", "--out", str(out), "--quiet"])
    assert code == 0, printed
    return out, json.loads((out / "results.json").read_text()), printed[0]


def test_bench_runs_every_workload_quietly_and_writes_its_files(bench_run):
    out, res, printed = bench_run
    assert printed == ""
    assert list(res["workloads"]) == list(runner.WORKLOADS)
    assert not [name for name, wl in res["workloads"].items() if "skipped" in wl]
    for name in ("report.md", "results.json", "analytic_error_vs_nfe.png", "digits_error_vs_nfe.png", "unet_time.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    for heading in (
        "## Headline",
        "## Targets",
        "## Workload 1",
        "## Workload 2",
        "## Workload 3",
        "## Workload 4",
        "## Settings and environment",
    ):
        assert heading in report, heading
    assert res["config"]["seed"] == 0 and res["config"]["mode"] == "quick"
    assert all(math.isfinite(v) for v in _numbers(res["workloads"]["unet"]))


def test_bench_numbers_are_sane(bench_run):
    _, res, _ = bench_run
    wl = res["workloads"]["analytic"]["results"]
    for n in ("5", "10"):
        ddim = wl["ddim/float64"]["by_steps"][n]
        for key in ("bdia-1/float64", "bdia-0.9/float64", "edict/float64", "belm/float64"):
            row = wl[key]["by_steps"][n]
            assert row["round_trip"]["max"] < 1e-10 < ddim["round_trip"]["max"], key
        assert wl["bdia-1/float32"]["by_steps"][n]["round_trip"]["max"] < 1e-4
        # NFE as the solvers count it, against the counts of docs/math.md sections 3-5
        assert wl["bdia-1/float64"]["by_steps"][n]["nfe_invert"] == int(n)
        assert wl["bdia-1/float64"]["by_steps"][n]["nfe_reconstruct"] == int(n) - 1
        assert wl["edict/float64"]["by_steps"][n]["nfe_invert"] == 2 * int(n)
    assert wl["bdia-1/float64"]["order"]["declared"] == 2 and wl["bdia-0.9/float64"]["order"]["declared"] == 1
    unet = res["workloads"]["unet"]
    ir = unet["invert_reconstruct"]
    assert ir["bdia-1"]["round_trip_float64"]["max"] < 1e-10 < ir["ddim"]["round_trip_float64"]["max"]
    assert ir["edict"]["nfe"] == 2 * ir["ddim"]["nfe"] and ir["bdia-1"]["nfe"] == ir["ddim"]["nfe"] - 1
    assert 0 < unet["arithmetic_fraction"]["bdia-1/float64"] < 1
    assert unet["memory"]["bdia-1"]["peak_bytes"] > unet["memory"]["bdia-1"]["solver_peak_bytes"] > 0
    assert "nulltext" in unet


def test_bench_digits_workload_with_a_stand_in_model(bench_run):
    out, res, _ = bench_run
    wl = res["workloads"]["digits"]
    rows = wl["results"]["bdia-1/float64"]["by_steps"]
    assert set(rows) == {"5", "10"}
    for n, row in rows.items():
        assert row["round_trip"]["max"] < 1e-4  # float32 model: exact up to its rounding
        assert math.isfinite(row["fidelity"]["rms"]) and math.isfinite(row["accuracy"]["rms"])
        assert row["round_trip"]["max"] < wl["results"]["ddim/float64"]["by_steps"][n]["round_trip"]["max"]


def test_bench_edm_workload_spends_equal_nfe_and_inverts_exactly(bench_run):
    edm = bench_run[1]["workloads"]["edm"]
    for kind, g in edm["analytic"]["grids"].items():
        for key, row in g["rows"].items():
            heun_type = key == "heun" or key.startswith("bdia-heun")
            for b in row["by_budget"]:
                # N = budget steps of one NFE; N = (budget + 1) // 2 Heun steps of 2N - 1 NFE
                n = (b["budget"] + 1) // 2 if heun_type else b["budget"]
                assert b["nfe"] == (2 * n - 1 if heun_type else n) <= b["budget"], (kind, key, b)
                assert math.isfinite(b["median"])
            assert row["declared_order"] == (2 if key in ("heun", "bdia-1") else 1), key
    for row in edm["round_trip"]["rows"]:
        if row["exact_inversion"]:
            assert row["float64"] < 1e-10 and row["float32"] < 1e-3, row
        else:
            assert row["float64"] > 1e-6, row
    assert set(edm["digits"]["rows"]) == {"ddim", "heun", "bdia-heun-1", "bdia-heun-0.5"}


def test_bench_is_deterministic_for_a_seed(bench_run, tmp_path):
    _, res, _ = bench_run
    again = run_bench(tiny(BenchConfig, workloads=("analytic",)), tmp_path, log=lambda *a: None)
    a = res["workloads"]["analytic"]["results"]["bdia-0.96/float64"]["by_steps"]["10"]
    b = again["workloads"]["analytic"]["results"]["bdia-0.96/float64"]["by_steps"]["10"]
    for measure in ("round_trip", "fidelity", "accuracy"):
        assert a[measure] == b[measure]


def test_bench_refuses_bad_outputs_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runner, "run_workloads", lambda *a, **k: pytest.fail("work started"))
    (tmp_path / "report.md").write_text("keep me")
    assert main(["bench", "--out", str(tmp_path), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "report.md").read_text() == "keep me"
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "unet_time.png").write_bytes(b"old")
    assert main(["bench", "--out", str(stale), "--quiet"]) == 2
    assert "unet_time.png already exists" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("")
    assert main(["bench", "--out", str(tmp_path / "a_file" / "out"), "--quiet"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["bench", "--out", str(tmp_path / "a_file"), "--quiet"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["bench", "--out", str(tmp_path / "new"), "--only", "nonsense", "--quiet"]) == 2
    assert "nonsense" in capsys.readouterr().err


def test_profiler_lines_do_not_reach_the_terminal():
    import torch

    from bdia.bench.unet import peak_torch_bytes

    with printed_to_fds() as printed:
        peak = peak_torch_bytes(lambda: torch.ones(1000) + 1)
    assert printed == [""] and peak >= 1000 * 4


def test_bench_render_rewrites_the_report_from_json(bench_run, tmp_path):
    import shutil

    out, _, _ = bench_run
    for name in ("results.json", "report.md"):
        shutil.copy(out / name, tmp_path / name)
    (tmp_path / "report.md").write_text("stale")
    assert main(["bench", "--render", "--out", str(tmp_path), "--quiet"]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "## Headline" in text and "bdia bench --render" in text and "## Workload 4" in text
    assert (tmp_path / "analytic_error_vs_nfe.png").is_file()


def test_update_replaces_one_workload_and_keeps_the_others(tmp_path, monkeypatch):
    """`--update --only X` reruns X into an earlier run's folder; the other workloads' numbers stay as they were."""
    out = tmp_path / "report"
    first = run_bench(tiny(BenchConfig, workloads=("analytic", "editing")), out, log=lambda *a: None)
    kept = json.loads((out / "results.json").read_text())["workloads"]["analytic"]
    monkeypatch.setattr(
        runner,
        "run_workloads",
        lambda cfg, log, **kwargs: {
            "workloads": {"editing": {**first["workloads"]["editing"], "seconds": -1.0}},
            "seconds": {"editing": 0.5},
        },
    )
    run_bench(tiny(BenchConfig, workloads=("editing",)), out, overwrite=True, update=True, log=lambda *a: None)
    again = json.loads((out / "results.json").read_text())
    assert list(again["workloads"]) == ["analytic", "editing"] and again["workloads"]["analytic"] == kept
    assert again["workloads"]["editing"]["seconds"] == -1.0 and again["config"]["workloads"] == ["analytic", "editing"]
    assert "## Editing quality" in (out / "report.md").read_text()
    with pytest.raises(ValueError, match="seed"):
        run_bench(tiny(BenchConfig, seed=1, workloads=("editing",)), out, overwrite=True, update=True)
    with pytest.raises(ValueError, match="earlier run"):
        run_bench(tiny(BenchConfig, workloads=("editing",)), tmp_path / "empty", overwrite=True, update=True)
