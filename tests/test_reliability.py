"""Bad input is refused with a clear error before any work, and outputs are written safely (issue 14).

Each test reproduces one reported failure: output files (mode, stale temporaries, long names),
solver parameters whose amplification overflowed or went unchecked, unreadable or silently
mis-scaled images, and models whose weights are pickles.
"""

import math
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import bdia
from bdia.analytic import Gaussian
from bdia.io import atomic_path, check_writable, write_text

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1, set_alpha_to_one=False,
          clip_sample=False)
SCHEDULE = bdia.Schedule.from_config(SD)
IO_PY = Path(bdia.__file__).parent / "io.py"


# ----- output files ------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_get_the_mode_of_a_new_file_even_when_the_writer_makes_it_private(tmp_path, umask):
    from safetensors.torch import save_file  # writes its files 0600

    old = os.umask(umask)
    try:
        with atomic_path(tmp_path / "x.safetensors") as tmp:
            save_file({"a": torch.zeros(2)}, os.fspath(tmp))
        write_text(tmp_path / "y.txt", "text")
    finally:
        os.umask(old)
    for name in ("x.safetensors", "y.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask


def test_temporary_left_by_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "out.png"
    child = textwrap.dedent(f"""
        import importlib.util, sys, time
        spec = importlib.util.spec_from_file_location("bdia_io", {os.fspath(IO_PY)!r})
        io = importlib.util.module_from_spec(spec); spec.loader.exec_module(io)
        with io.atomic_path({os.fspath(target)!r}) as tmp:
            tmp.write_bytes(b"partial")
            print(tmp, flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        left = Path(proc.stdout.readline().strip())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert left.exists() and left.parent == tmp_path and left.name.startswith(".")
    assert not target.exists()
    # A live writer's temporary (this process's) is kept; the dead one's is removed.
    with atomic_path(target, overwrite=True) as mine:
        mine.write_bytes(b"png")
        with atomic_path(target, overwrite=True) as tmp:
            tmp.write_bytes(b"second")
        assert mine.exists()
    assert not left.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_a_legal_long_name_is_written_and_an_illegal_one_refused_up_front(tmp_path):
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    longest = "n" * (limit - 4) + ".png"
    write_text(tmp_path / longest, "ok")
    assert (tmp_path / longest).read_text() == "ok"
    with pytest.raises(ValueError, match="bytes long.*shorter name"):
        check_writable(tmp_path / ("n" * limit + ".png"))
    with pytest.raises(ValueError, match="shorter name"):
        write_text(tmp_path / ("n" * limit + ".png"), "never")


def test_outputs_that_cannot_be_written_are_refused_before_any_work(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        check_writable(tmp_path / "folder", overwrite=True)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        check_writable(tmp_path / "folder")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        check_writable(tmp_path / "file" / "sub" / "out.png")
    assert check_writable(tmp_path / "new" / "deeper" / "out.png").name == "out.png"  # made when written


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_folder_is_refused_before_any_work(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="no write permission"):
            check_writable(ro / "out.png")
    finally:
        ro.chmod(0o755)


# ----- solver parameters (items 4, 5, 6) -----------------------------------------------------------
@pytest.mark.parametrize("gamma, steps", [(0.001, 200), (1e-300, 10), (1e-300, 2)])
def test_tiny_gamma_warns_without_overflowing(gamma, steps):
    grid = SCHEDULE.grid(steps)
    with pytest.warns(bdia.InversionPrecisionWarning, match="amplifies rounding error") as record:
        bdia.BDIA(gamma).check_grid(grid, inverting=True)
    log10_amp = -math.log10(gamma) * (steps - 1)  # one factor 1/gamma per BDIA step i = 1..N-1
    expected = f"10^{log10_amp:.1f}" if log10_amp > 304 else f"{10 ** log10_amp:.3g}"
    assert f"by at least {expected}x" in str(record[0].message)


@pytest.mark.parametrize("gamma", [[1e6] * 19, [1.0] * 18 + [1.5], [0.5] * 18 + [float("nan")], [-0.1] * 19])
def test_gamma_sequences_are_validated_as_scalars_are(gamma):
    with pytest.raises(ValueError, match=r"gamma\[\d+\].*must be in \[0, 1\]"):
        bdia.BDIA(gamma=gamma)


def test_edict_warns_where_its_round_trip_loses_digits():
    model = Gaussian(torch.zeros(8, dtype=torch.float64), 0.5, schedule=SCHEDULE)  # linear in x
    x0 = model.sample_data(2, torch.Generator().manual_seed(0))
    solver = bdia.EDICT()
    errors = {}
    for steps in (100, 500):
        grid = SCHEDULE.grid(steps)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            inv = solver.invert(model, x0, grid)
        warned = any(issubclass(w.category, bdia.InversionPrecisionWarning) for w in caught)
        errors[steps] = float((solver.sample(model, inv, grid) - x0).abs().max())
        # The warning is given exactly where the round trip is no longer good to 1e-4.
        assert warned == (steps == 500), (steps, errors[steps])
    assert errors[100] < 1e-8 and errors[500] > 1e-4
