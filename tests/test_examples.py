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
