"""`bdia --help` and `bdia CMD --help` parse before anything heavy loads: no torch, numpy, Pillow or diffusers
(the commands import those when they run). Checked by the modules imported, not by timing."""

import subprocess
import sys

import pytest

from bdia.cli import COMMAND_MODULES

HEAVY = ("torch", "numpy", "PIL", "diffusers", "transformers", "safetensors", "matplotlib", "scipy")
COMMANDS = [name.rsplit(".", 1)[1] for name in COMMAND_MODULES]


def imported_modules(*args: str) -> set[str]:
    """The modules that `python -m bdia.cli ARGS` imports (from -X importtime, which lists every one)."""
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "bdia.cli", *args], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "usage: bdia" in run.stdout
    return {line.rsplit("|", 1)[1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_imports_nothing_heavy(command):
    modules = imported_modules(*([command] if command else []), "--help")
    assert "bdia.cli" in modules  # the listing works
    loaded = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert not loaded, f"`bdia {command} --help` imported {loaded[:5]}"


def test_import_bdia_is_light_and_its_names_load_on_use():
    code = (
        "import sys, bdia; assert 'torch' not in sys.modules, 'import bdia imported torch'; "
        "assert bdia.BDIA.__name__ == 'BDIA' and 'torch' in sys.modules; "
        "missing = [n for n in bdia.__all__ if getattr(bdia, n, None) is None]; assert not missing, missing; "
        "assert bdia.analytic.GaussianMixture and bdia.solvers.make_solver and 'Schedule' in dir(bdia); "
        "assert not hasattr(bdia, 'no_such_name')"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_the_cli_copies_of_torch_side_constants_agree():
    from bdia.cli import common, datasets
    from bdia.datasets import batch
    from bdia.grids import GRID_KINDS

    assert common.GRID_KINDS == GRID_KINDS
    assert datasets.IMAGE_EXTENSIONS == batch.IMAGE_EXTENSIONS
    assert datasets.LIST_EXTENSIONS == batch.LIST_EXTENSIONS and datasets.MANIFEST == batch.MANIFEST
