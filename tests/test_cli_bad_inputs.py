"""Every CLI command refuses bad input with exit code 2, one line, no traceback, no output, and no model call."""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

import pytest
import torch

import bdia.cli
from bdia.solvers import Solver

pytest.importorskip("PIL")
pytest.importorskip("safetensors")

pytestmark = pytest.mark.usefixtures("single_thread")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png(path: Path, side: int = 20000) -> Path:
    """A valid PNG header declaring side x side 1-bit pixels: Pillow refuses it as a decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A good digit, unreadable images, a saved inversion, a plain file and an existing output."""
    from PIL import Image

    from bdia.digits import load_digits

    root = tmp_path_factory.mktemp("bad")
    test = load_digits("test")
    good = root / "three.png"
    Image.fromarray(test.images[int((test.labels == 3).nonzero()[0][0]), 0].numpy()).save(good)
    data = good.read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "empty.png").write_bytes(b"")
    (root / "text.png").write_text("not an image")
    _bomb_png(root / "bomb.png")
    (root / "not-inversion.safetensors").write_text("not safetensors")
    (root / "plain.txt").write_text("a file")
    (root / "exists.png").write_bytes(data)
    (root / "folder").mkdir()
    inv = root / "inv.safetensors"
    assert bdia.cli.main(["invert", str(good), "--prompt", "3", "--steps", "4", "-o", str(inv), "-q"]) == 0
    return root


def _no_model_calls(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was evaluated for a bad input")

    for name in ("invert", "solve"):
        monkeypatch.setattr(Solver, name, refuse)


def _run(capsys, args) -> tuple[int, str, str]:
    try:
        code = bdia.cli.main([str(a) for a in args])
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


LONG = "x" * 300
UNWRITABLE = "/sys/bdia-cannot-write-here"  # refused even to root (os.access would say yes)

# (command and arguments, where {D} is the files folder and {O} the output folder; text the message must hold)
CASES = [
    # 1: outputs checked before any work
    ("invert {D}/three.png --prompt 3 -o {O}/folder --overwrite", "folder"),
    ("invert {D}/three.png --prompt 3 -o {O}/" + LONG + ".safetensors", "shorter name"),
    ("invert {D}/three.png --prompt 3 -o " + UNWRITABLE + "/inv.safetensors", "cannot write"),
    ("invert {D}/three.png --prompt 3 -o {D}/plain.txt/inv.safetensors", "not a folder"),
    ("invert {D}/three.png --prompt 3 -o {O}/inv.pt", ".safetensors"),
    ("reconstruct {D}/inv.safetensors -o {O}/folder --overwrite", "folder"),
    ("reconstruct {D}/inv.safetensors -o {O}/" + LONG + ".png", "shorter name"),
    ("reconstruct {D}/inv.safetensors -o " + UNWRITABLE + "/rec.png", "cannot write"),
    ("generate --prompt 3 -o {O}/folder --overwrite", "folder"),
    ("generate --prompt 3 -o {D}/exists.png", "--overwrite"),
    ("generate --prompt 3 --num-images 3 -o {O}/" + LONG + ".png", "shorter name"),
    ("edit {D}/inv.safetensors --prompt 8 -o " + UNWRITABLE + "/e.png", "cannot write"),
    ("demo --out " + UNWRITABLE + "/demo --quiet", "cannot write"),
    ("demo --out {D}/plain.txt --quiet", "not a folder"),
    # 2: unreadable images
    ("invert {D}/truncated.png --prompt 3 -o {O}/i.safetensors", "cannot read"),
    ("invert {D}/empty.png --prompt 3 -o {O}/i.safetensors", "cannot read"),
    ("invert {D}/text.png --prompt 3 -o {O}/i.safetensors", "cannot read"),
    ("invert {D}/bomb.png --prompt 3 -o {O}/i.safetensors", "too large"),
    ("invert {D}/missing.png --prompt 3 -o {O}/i.safetensors", "no image file"),
    ("edit {D}/truncated.png --source-prompt 3 --prompt 8 -o {O}/e.png", "cannot read"),
    ("reconstruct {D}/inv.safetensors --image {D}/bomb.png -o {O}/r.png", "too large"),
    ("reconstruct {D}/not-inversion.safetensors -o {O}/r.png", "not a safetensors file"),
    # 7: devices
    ("generate --prompt 3 --device banana -o {O}/g.png", "unknown device"),
    ("invert {D}/three.png --prompt 3 --device cuda:99 -o {O}/i.safetensors", "cuda"),
    ("reconstruct {D}/inv.safetensors --device banana -o {O}/r.png", "unknown device"),
    # 10: options a saved inversion cannot take; demo's gamma 0
    ("edit {D}/inv.safetensors --prompt 8 --steps 10 -o {O}/e.png", "--steps"),
    ("edit {D}/inv.safetensors --prompt 8 --method ddim -o {O}/e.png", "--method"),
    ("edit {D}/inv.safetensors --prompt 8 --gamma 0.5 -o {O}/e.png", "--gamma"),
    ("edit {D}/inv.safetensors --prompt 8 --strength 0.8 -o {O}/e.png", "--strength"),
    ("edit {D}/inv.safetensors --prompt 8 --source-prompt 3 -o {O}/e.png", "--source-prompt"),
    ("demo --gamma 0 --out {O}/demo --quiet", "gamma 0"),
    # smaller: prompts, seeds, guidance, steps, solver parameters
    ("generate --prompt ² -o {O}/g.png", "class label"),
    ("invert {D}/three.png --prompt 12 -o {O}/i.safetensors", "class label"),
    ("generate --prompt 3 --seed 18446744073709551616 -o {O}/g.png", "seed"),
    ("generate --prompt 3 --seed -1 -o {O}/g.png", "seed"),
    ("generate --prompt 3 --guidance 1e300 -o {O}/g.png", "between"),
    ("generate --prompt 3 --guidance nan -o {O}/g.png", "guidance"),
    ("generate --prompt 3 --num-images 0 -o {O}/g.png", "number of images"),
    ("generate --prompt 3 --width 17 -o {O}/g.png", "16x16"),
    ("generate --prompt 3 --steps 1 --method ddim -o {O}/g.png", "steps must be between 2"),
    ("generate --prompt 3 --method ddim --gamma 0.5 -o {O}/g.png", "--gamma applies to --method bdia"),
    ("invert {D}/three.png --gamma 1.5 -o {O}/i.safetensors", "gamma"),
    ("invert {D}/three.png --strength 0 -o {O}/i.safetensors", "strength"),
    ("invert {D}/three.png --revision main -o {O}/i.safetensors", "--revision"),
    ("demo --steps 1 --out {O}/demo --quiet", "steps"),
]


@pytest.mark.parametrize("line,needle", CASES, ids=[c[0].split(" -o")[0][:60] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(files, tmp_path, capsys, monkeypatch, line, needle):
    if "/sys/" in line and not Path("/sys").is_dir():
        pytest.skip("needs a read-only /sys (Linux)")
    if "--device cuda" in line and torch.cuda.is_available() and torch.cuda.device_count() > 99:
        pytest.skip("this machine has a 100th GPU")
    (tmp_path / "folder").mkdir()
    _no_model_calls(monkeypatch)
    args = line.format(D=files, O=tmp_path).split()
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = _run(capsys, args)
    lines = err.strip().splitlines()
    assert code == 2, (code, out, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"bdia {args[0]}: error:") and needle in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temporary left
    assert not list((tmp_path / "folder").iterdir())
