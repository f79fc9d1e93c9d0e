"""``bdia bench`` end to end at tiny sizes: the files appear and their numbers are finite and sane."""

import json
import math

import pytest

from bdia.bench import BenchConfig, run_bench
from bdia.cli import main

TINY = dict(
    workloads=("analytic", "digits", "unet"),
    analytic_shape=(2, 4, 4), analytic_components=3, analytic_batch=2, analytic_steps=(5, 10),
    digits_batch=2, digits_steps=(5, 10), digits_ref_stride=50,
    unet_latent=8, unet_steps=2, unet_repeats=1, solver_steps=4, solver_repeats=1,
    nulltext_steps=2, nulltext_inner=1, sd15_forward_repeats=0, headline_steps=10,
)


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
    out = tmp_path_factory.mktemp("bench")
    res = run_bench(BenchConfig.quick(seed=0, **TINY), out, log=lambda *a: None)
    return out, res


def test_bench_writes_report_plots_and_json(bench_run):
    out, res = bench_run
    for name in ("report.md", "results.json", "analytic_error_vs_nfe.png", "unet_time.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    assert "## Headline" in report and "## Targets" in report and "analytic_error_vs_nfe.png" in report
    data = json.loads((out / "results.json").read_text())
    assert data["config"]["seed"] == 0 and data["config"]["mode"] == "quick"
    assert all(math.isfinite(v) for v in _numbers(data))


def test_bench_numbers_are_sane(bench_run):
    _, res = bench_run
    wl = res["workloads"]["analytic"]["results"]
    for n in ("5", "10"):
        ddim = wl["ddim/float64"]["by_steps"][n]
        for key in ("bdia-1/float64", "bdia-0.9/float64", "edict/float64", "belm/float64"):
            row = wl[key]["by_steps"][n]
            assert row["round_trip"]["max"] < 1e-10 < ddim["round_trip"]["max"], key
        assert wl["bdia-1/float32"]["by_steps"][n]["round_trip"]["max"] < 1e-4
        assert wl["bdia-1/float64"]["by_steps"][n]["nfe_invert"] == int(n)
        assert wl["edict/float64"]["by_steps"][n]["nfe_invert"] == 2 * int(n)
    unet = res["workloads"]["unet"]
    ir = unet["invert_reconstruct"]
    assert ir["bdia-1"]["round_trip_float64"]["max"] < 1e-10 < ir["ddim"]["round_trip_float64"]["max"]
    assert ir["edict"]["nfe"] == 2 * ir["ddim"]["nfe"]
    assert 0 < unet["arithmetic_fraction"]["bdia-1/float64"] < 1
    assert unet["memory"]["bdia-1"]["peak_bytes"] > unet["memory"]["bdia-1"]["solver_peak_bytes"] > 0
    assert "nulltext" in unet


def test_bench_is_deterministic_for_a_seed(bench_run, tmp_path):
    _, res = bench_run
    cfg = BenchConfig.quick(seed=0, **{**TINY, "workloads": ("analytic",)})
    again = run_bench(cfg, tmp_path, log=lambda *a: None)
    a = res["workloads"]["analytic"]["results"]["bdia-0.96/float64"]["by_steps"]["10"]
    b = again["workloads"]["analytic"]["results"]["bdia-0.96/float64"]["by_steps"]["10"]
    for measure in ("round_trip", "fidelity", "accuracy"):
        assert a[measure] == b[measure]


def test_bench_cli_refuses_to_overwrite_and_bad_workloads(tmp_path, capsys):
    (tmp_path / "report.md").write_text("keep me")
    assert main(["bench", "--out", str(tmp_path), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "report.md").read_text() == "keep me"
    assert main(["bench", "--out", str(tmp_path / "new"), "--only", "nonsense", "--quiet"]) == 2


def test_bench_digits_workload_with_a_stand_in_model(monkeypatch, tmp_path):
    """Workload 2's code path, on an untrained DigitsUNet (the shipped weights are judged elsewhere)."""
    import torch

    digits = pytest.importorskip("bdia.digits")
    pytest.importorskip("sklearn")
    from bdia.digits.train import SCHEDULE_CONFIG
    from bdia.schedule import Schedule

    def stand_in(*args, **kwargs):
        torch.manual_seed(0)
        model = digits.DigitsUNet(channels=(8, 16, 16), emb_dim=16)
        model.schedule = Schedule.from_config(SCHEDULE_CONFIG)
        return model.eval().requires_grad_(False)

    monkeypatch.setattr(digits, "load_model", stand_in)
    cfg = BenchConfig.quick(seed=0, **{**TINY, "workloads": ("digits",), "methods": ("ddim", "bdia-1", "edict")})
    res = run_bench(cfg, tmp_path, log=lambda *a: None)
    wl = res["workloads"]["digits"]
    assert "skipped" not in wl
    rows = wl["results"]["bdia-1/float64"]["by_steps"]
    assert set(rows) == {"5", "10"}
    for n, row in rows.items():
        assert row["round_trip"]["max"] < 1e-4  # float32 model: exact up to its rounding
        assert math.isfinite(row["fidelity"]["rms"]) and math.isfinite(row["accuracy"]["rms"])
        assert row["round_trip"]["max"] < wl["results"]["ddim/float64"]["by_steps"][n]["round_trip"]["max"]
    assert (tmp_path / "digits_error_vs_nfe.png").is_file()


def test_bench_render_rewrites_the_report_from_json(bench_run, tmp_path):
    import shutil

    out, _ = bench_run
    for name in ("results.json", "report.md"):
        shutil.copy(out / name, tmp_path / name)
    (tmp_path / "report.md").write_text("stale")
    assert main(["bench", "--render", "--out", str(tmp_path), "--quiet"]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "## Headline" in text and "bdia bench --render" in text
    assert (tmp_path / "analytic_error_vs_nfe.png").is_file()
