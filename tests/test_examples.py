"""The README's round-trip example prints what the tests assert."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_round_trip_example_output():
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "round_trip.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    lines = out.strip().splitlines()
    assert [line.split("(")[0] for line in lines] == ["DDIM", "EDICT", "BDIA", "BDIA", "BDIA"]
    for line in lines:
        err = float(line.rsplit(" ", 1)[1])
        assert err > 1e-3 if line.startswith("DDIM") else err <= 1e-10, line


def test_doodl_example_writes_a_fresh_folder_not_tracked_files(tmp_path):
    """By default the example writes doodl-out/ where it runs; docs/doodl.png changes only with --docs."""
    docs = ROOT / "docs" / "doodl.png"
    before = docs.read_bytes()
    cmd = [sys.executable, str(ROOT / "examples" / "doodl_digits.py"), "--quick"]
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "doodl-out" / "doodl.png").stat().st_size > 0
    assert docs.read_bytes() == before
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert "already exists" in again.stderr and "--overwrite" in again.stderr
