"""Many inputs on many processes, and killed runs: torchrun / accelerate launch over CPU (gloo) give the
same inversion files, bit for bit, as one process; a run killed at a random point completes on rerun."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bdia
from bdia.datasets.batch import file_sha256, invert_files, read_manifest
from bdia.digits import load_digits
from bdia.editing import load_editor
from bdia.io.saved import load_inversion

pytestmark = pytest.mark.usefixtures("single_thread")

STEPS, BATCH, COUNT = 10, 4, 20
ARGS = ["--steps", str(STEPS), "--batch-size", str(BATCH), "--prompt", "", "-q"]


def _env() -> dict[str, str]:
    src = os.fspath(Path(bdia.__file__).resolve().parents[1])
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """20 held-out digits as PNGs, and their inversions by one process in this one (the reference)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("batch")
    (root / "in").mkdir()
    for k, im in enumerate(load_digits("test").images[:COUNT, 0].numpy()):
        Image.fromarray(im).save(root / "in" / f"{k:02d}.png")
    editor = load_editor("digits", device="cpu", progress=False)
    summary = invert_files(editor, [root / "in"], root / "ref", batch_size=BATCH, num_steps=STEPS, progress=False)
    assert summary.done == COUNT
    return root, editor, _files(root / "ref")


def _outputs(folder: Path) -> list[Path]:
    """The files at output paths (a killed write's temporary file is hidden, beside them)."""
    return sorted(p for p in folder.glob("*.safetensors") if not p.name.startswith(".")) if folder.is_dir() else []


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in _outputs(folder)}


def _check_complete(out: Path, reference: dict[str, bytes]) -> None:
    assert _files(out) == reference
    records = read_manifest(out)
    assert len(records) == COUNT and all(r["status"] == "done" for r in records.values())
    for r in records.values():
        assert r["sha256"] == file_sha256(out / r["output"])
        load_inversion(out / r["output"])  # and the file's own checksum
    assert not list(out.glob("manifest.part-*"))


LAUNCHERS = {
    "torchrun": lambda port: [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
    ],
    # --multi_gpu launches K processes through torch.distributed.run; on a machine without GPUs
    # they form a CPU (gloo) group because the run asks PartialState for cpu=True.
    "accelerate": lambda port: [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
    ],
}


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_processes_write_the_files_of_one(data, launcher, tmp_path):
    root, editor, reference = data
    if launcher == "accelerate":
        pytest.importorskip("accelerate")
    out = tmp_path / "out"
    cmd = (
        LAUNCHERS[launcher](_free_port())
        + [
            "-m",
            "bdia.cli",
            "invert",
            str(root / "in"),  # as the README
            "-o",
            str(out),
        ]
        + ARGS
    )
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "(process 1 of 2)" in proc.stdout and "(process 2 of 2)" in proc.stdout
    _check_complete(out, reference)
    assert {r["rank"] for r in read_manifest(out).values()} == {0, 1}
    again = invert_files(editor, [root / "in"], out, batch_size=BATCH, num_steps=STEPS, progress=False)
    assert (again.done, again.skipped, again.failed) == (0, COUNT, 0)  # a second run does no work


# Runs `bdia ARGS` with the manifest writer stopping, for good, at one point of the write protocol: before
# or after the k-th "writing" record (the output complete in its temporary file, not yet renamed) or before
# the k-th "done" record (renamed, not yet recorded). It creates MARKER there and waits for a signal, so
# the test signals a run in a known state whatever the machine's load, instead of racing it.
STOPPING_CHILD = """
import os, signal, sys
from pathlib import Path
import bdia.datasets.batch as batch
from bdia.cli import main

# a suite started in the background (`pytest &`) hands its children SIGINT ignored; this child must take it
signal.signal(signal.SIGINT, signal.default_int_handler)
when, status = os.environ["STOP_WHERE"].split(":")
stop_at, marker, seen = int(os.environ["STOP_AT"]), Path(os.environ["STOP_MARKER"]), [0]
real = batch._ManifestWriter.append

def stop():
    marker.write_text("stopped")
    while True:
        signal.pause()

def append(self, record):
    hit = record.get("status") == status and seen[0] + 1 == stop_at
    seen[0] += record.get("status") == status
    if hit and when == "before":
        stop()
    real(self, record)
    if hit and when == "after":
        stop()

batch._ManifestWriter.append = append
sys.argv = ["bdia", *sys.argv[1:]]
sys.exit(main())
"""
STOP_POINTS = ("before:writing", "after:writing", "before:done")


def _interrupt_twice(
    args: list[str], out: Path, reference, rng: random.Random, seed: int, tmp: Path, kill_at: str
) -> None:
    """SIGINT, then SIGKILL, each sent while the run waits at a random output: SIGINT at a random point of the
    write protocol, SIGKILL at ``kill_at``."""
    for sig in (signal.SIGINT, signal.SIGKILL):
        have = len(_outputs(out))
        where = rng.choice(STOP_POINTS) if sig == signal.SIGINT else kill_at
        stop_at = rng.randint(1, COUNT - have - 1)
        marker = tmp / f"stopped-{sig.name}"
        env = dict(_env(), STOP_WHERE=where, STOP_AT=str(stop_at), STOP_MARKER=str(marker))
        proc = subprocess.Popen(
            [sys.executable, "-c", STOPPING_CHILD, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        while not marker.exists():  # a state, not a time: the run is now waiting at its stop
            if proc.poll() is not None:
                _, err = proc.communicate()
                pytest.fail(f"seed {seed}: the run ended ({proc.returncode}) before {where} #{stop_at}: {err[-2000:]}")
            time.sleep(0.01)
        proc.send_signal(sig)
        proc.communicate(timeout=600)
        assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL), f"seed {seed}, {where}"
        done = _outputs(out)
        assert len(done) < COUNT, f"seed {seed}"
        if sig == signal.SIGKILL and where.endswith(":writing"):  # killed mid-write: the temporary is left
            assert list(out.glob(".bdia.*")), f"seed {seed}, {where}"
        for p in done:  # every output present is complete and right
            assert p.read_bytes() == reference[p.name], f"seed {seed}: {p.name}"


@pytest.mark.parametrize("kill_at", STOP_POINTS)
def test_killed_runs_complete_on_rerun(data, tmp_path, kill_at):
    """Interrupted twice at random outputs (SIGINT, then SIGKILL at each point of the write protocol), a run to
    the end completes the set."""
    root, editor, reference = data
    seed = random.randrange(1 << 30)
    out = tmp_path / "out"
    args = ["invert", str(root / "in"), "-o", str(out)] + ARGS
    _interrupt_twice(args, out, reference, random.Random(seed), seed, tmp_path, kill_at)
    summary = invert_files(editor, [root / "in"], out, batch_size=BATCH, num_steps=STEPS, progress=False)
    assert summary.failed == 0 and summary.done + summary.skipped == COUNT, f"seed {seed}"
    _check_complete(out, reference)
