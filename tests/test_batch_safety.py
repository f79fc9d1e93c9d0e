"""Issue 21: data-set runs cannot write outside their folder, destroy or adopt inputs, keep stale results,
run twice into one folder, or stop on one bad record; each from the command line where it is one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bdia
from bdia.datasets.batch import file_sha256, find_inputs, read_manifest
from bdia.digits import load_digits

pytestmark = pytest.mark.usefixtures("single_thread")

STEPS = "4"


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its checksum (what a run may not touch outside its output folder)."""
    return {os.fspath(p.relative_to(root)): file_sha256(p) for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def data(tmp_path, bdia_cli):
    """tmp/in: 3 digits; tmp/inv: their inversions (prompt "3")."""
    from PIL import Image

    test = load_digits("test")
    (tmp_path / "in").mkdir()
    for k in range(3):
        Image.fromarray(test.images[k, 0].numpy()).save(tmp_path / "in" / f"d{k}.png")
    code, _, err = bdia_cli("invert", tmp_path / "in", "-o", tmp_path / "inv", "--prompt", "3", "--steps", STEPS, "-q")
    assert code == 0, err
    return tmp_path


def _rewrite_manifest(folder: Path, change) -> None:
    lines = [json.loads(ln) for ln in (folder / "manifest.jsonl").read_text().splitlines()]
    (folder / "manifest.jsonl").write_text("".join(json.dumps(change(r)) + "\n" for r in lines))


def test_item1_manifest_names_and_outputs_cannot_leave_their_folders(data, bdia_cli):
    victim = data / "victim.png"
    victim.write_bytes(b"precious")
    names = {"d0": "../../victim", "d1": str(data / "abs"), "d2": "d2"}
    _rewrite_manifest(data / "inv", lambda r: dict(r, name=names[r["name"]]))
    with open(data / "inv" / "manifest.jsonl", "a") as f:  # an output read from outside the inversion folder
        f.write(json.dumps({"name": "x", "status": "done", "output": "../in/d2.png", "time": 1}) + "\n")
    before = _tree(data)
    for extra in ([], ["--overwrite"]):
        code, out, err = bdia_cli(
            "edit", data / "inv" / "manifest.jsonl", "--prompt", "8", "-o", data / "ed", "-q", *extra
        )
        assert code == 1 and "1 written" in out and "3 failed" in out, (out, err)
        after = _tree(data)
        assert {k: v for k, v in after.items() if not k.startswith("ed/")} == before  # nothing else touched
        assert sorted(p.name for p in (data / "ed").rglob("*.png")) == ["d2.png"]
    assert victim.read_bytes() == b"precious"


def test_item3_inputs_and_outputs_in_one_folder_are_refused_up_front(data, bdia_cli):
    import shutil

    ip = data / "ip"
    shutil.copytree(data / "in", ip)
    code, _, err = bdia_cli("invert", ip, "-o", ip, "--prompt", "3", "--steps", STEPS, "-q")
    assert code == 2 and "is the input folder" in err, err
    for f in (data / "inv").glob("*.safetensors"):
        shutil.copy(f, ip / f.name)
    before = _tree(ip)
    for extra in ([], ["--overwrite"]):
        code, _, err = bdia_cli("edit", ip, "--prompt", "8", "-o", ip, "-q", *extra)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "--overwrite" not in err, err
    assert _tree(ip) == before  # the originals are intact; no lock or manifest left either


def test_item7_folders_that_feed_each_other_are_refused(data, bdia_cli):
    before = _tree(data)
    cases = [
        ("reconstruct", data / "inv", data / "inv"),
        ("reconstruct", data / "inv" / "manifest.jsonl", data / "inv"),
        ("reconstruct", data / "inv", data / "inv" / "rec"),
        ("invert", data / "in", data / "in" / "out"),
        ("invert", data / "in", data),
    ]
    for command, source, out in cases:
        extra = ["--prompt", "3", "--steps", STEPS] if command == "invert" else []
        code, _, err = bdia_cli(command, source, "-o", out, "-q", *extra)
        assert code == 2 and "output folder" in err and len(err.strip().splitlines()) == 1, (command, source, out, err)
    assert _tree(data) == before


def test_item2_files_bdia_did_not_write_are_never_adopted(data, bdia_cli):
    imgs = data / "imgs"
    imgs.mkdir()
    for k in range(3):  # the source images, where the edits would go
        (imgs / f"d{k}.png").write_bytes((data / "in" / f"d{k}.png").read_bytes())
    before = _tree(imgs)
    for extra in ([], ["--overwrite"]):
        code, out, err = bdia_cli("edit", data / "inv", "--prompt", "8", "-o", imgs, "-q", *extra)
        assert code == 1 and "0 written, 0 already done, 3 failed" in out, (out, err)
        assert "not written by this folder" in err and "--overwrite" not in err
    assert {k: v for k, v in _tree(imgs).items() if k.endswith(".png")} == before
    assert all(r["status"] == "failed" for r in read_manifest(imgs).values())


def test_item4_a_change_of_settings_or_source_is_never_taken_as_done(data, bdia_cli):
    e = data / "e"
    assert bdia_cli("edit", data / "inv", "--prompt", "8", "-o", e, "-q")[0] == 0
    eights = _tree(e)
    code, out, err = bdia_cli("edit", data / "inv", "--prompt", "5", "-o", e, "-q")
    assert code == 1 and "0 written, 0 already done, 3 failed" in out and "prompt '8' then, '5' now" in err, (out, err)
    assert _tree(e)["d0.png"] == eights["d0.png"]
    code, out, err = bdia_cli("edit", data / "inv", "--prompt", "5", "-o", e, "-q", "--overwrite")
    assert code == 0 and "3 written" in out, (out, err)
    assert _tree(e)["d0.png"] != eights["d0.png"]
    assert all(r["settings"]["prompt"] == "5" for r in read_manifest(e).values())
    # invert: --steps, --method, the source's content
    inv = data / "inv"
    code, out, err = bdia_cli("invert", data / "in", "-o", inv, "--prompt", "3", "--steps", "5", "-q")
    assert code == 1 and "3 failed" in out and "num_steps 4 then, 5 now" in err, (out, err)
    code, out, err = bdia_cli(
        "invert", data / "in", "-o", inv, "--prompt", "3", "--steps", STEPS, "--method", "edict", "-q"
    )
    assert code == 1 and "method" in err, (out, err)
    from PIL import Image

    Image.fromarray(load_digits("test").images[9, 0].numpy()).save(data / "in" / "d1.png")
    code, out, err = bdia_cli("invert", data / "in", "-o", inv, "--prompt", "3", "--steps", STEPS, "-q")
    assert code == 1 and "2 already done, 1 failed" in out and "the source's content" in err, (out, err)


def test_item8_malformed_model_records_fail_alone(data, bdia_cli):
    from safetensors.torch import load_file, save_file

    from bdia.io.saved import _checksum

    def damage(path: Path, model) -> None:
        from safetensors import safe_open

        with safe_open(os.fspath(path), framework="pt") as f:
            meta = f.metadata()
        d = json.loads(meta["bdia"])
        d["model"] = model
        meta["bdia"] = json.dumps(d)
        tensors = load_file(os.fspath(path))
        meta["sha256"] = _checksum(tensors, meta["bdia"])
        save_file({k: v.contiguous() for k, v in tensors.items()}, os.fspath(path), metadata=meta)

    inv = data / "inv"
    damage(inv / "d0.safetensors", "digits")  # a string instead of an object: the alphabetically first file
    damage(inv / "d1.safetensors", {"id": 7})
    code, out, err = bdia_cli("reconstruct", inv, "-o", data / "rec", "-q")
    assert code == 1 and "1 written" in out and "2 failed" in out and "Traceback" not in err, (out, err)
    assert "model must be an object" in read_manifest(data / "rec")["d0"]["error"]
    # A file made with another model than the others: that file fails, the run goes on with the others' model.
    code, _, err = bdia_cli("invert", data / "in", "-o", inv, "--prompt", "3", "--steps", STEPS, "-q", "--overwrite")
    assert code == 0, err
    damage(inv / "d0.safetensors", {"id": "digits", "revision": "another", "class": "DigitsUNet", "dtype": "float32"})
    code, out, err = bdia_cli("reconstruct", inv, "-o", data / "rec2", "-q")
    assert code == 1 and "2 written" in out and "1 failed" in out and "Traceback" not in err, (out, err)
    assert read_manifest(data / "rec2")["d0"]["status"] == "failed"


def test_item9_a_damaged_manifest_record_is_skipped_and_reported(data, bdia_cli):
    inv = data / "inv"
    with open(inv / "manifest.jsonl", "a") as f:
        f.write(json.dumps({"name": 5, "status": "done", "output": "x.safetensors"}) + "\n")
        f.write(json.dumps({"name": ["a"], "status": "done", "output": None}) + "\n")
    for extra in ([], ["--overwrite"]):
        code, out, err = bdia_cli("invert", data / "in", "-o", inv, "--prompt", "3", "--steps", STEPS, "-q", *extra)
        assert code == 0 and "Traceback" not in err, (out, err)
    assert set(read_manifest(inv)) == {"d0", "d1", "d2"}
    code, out, err = bdia_cli("reconstruct", inv / "manifest.jsonl", "-o", data / "rec", "-q")
    assert code == 0, err


def test_item10_lists_are_read_as_csv_and_json(tmp_path):
    for k in range(3):
        (tmp_path / f"{k}.png").write_bytes(b"")
    (tmp_path / "l.csv").write_text('path,prompt\r\n0.png,"a\nb\x0cc\u2028d"\r\n1.png,\r\n', encoding="utf-8-sig")
    got = find_inputs(tmp_path / "l.csv")
    assert [(it.name, it.prompt) for it in got] == [("0", "a\nb\x0cc\u2028d"), ("1", None)]
    (tmp_path / "l.txt").write_text("0.png\tx\x0by\n1.png\t\n", encoding="utf-8-sig")
    assert [(it.name, it.prompt) for it in find_inputs(tmp_path / "l.txt")] == [("0", "x\x0by"), ("1", None)]
    (tmp_path / "l.jsonl").write_text(json.dumps({"path": "2.png", "prompt": "p\u2028q"}) + "\n", encoding="utf-8-sig")
    assert [(it.name, it.prompt) for it in find_inputs(tmp_path / "l.jsonl")] == [("2", "p\u2028q")]
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe0.png\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        find_inputs(tmp_path / "bad.txt")
    (tmp_path / "out.txt").write_text("../x.png\n/etc/passwd\n0.png\n")
    items = find_inputs(tmp_path / "out.txt")
    assert [it.error is not None for it in items] == [True, True, False]


def _env() -> dict[str, str]:
    src = os.fspath(Path(bdia.__file__).resolve().parents[1])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(var, None)
    return env


HOLD = (
    "import sys; from pathlib import Path; from bdia.datasets.safety import OutputLock; "
    "lock = OutputLock(Path(sys.argv[1])); lock.acquire(); print('locked', flush=True); sys.stdin.read()"
)


def test_item5_one_run_per_output_folder_and_a_killed_runs_lock_is_taken_over(data, bdia_cli):
    out = data / "inv"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, os.fspath(out)],
        env=_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"  # a state, not a time
        before = _tree(out)
        code, _, err = bdia_cli("invert", data / "in", "-o", out, "--prompt", "3", "--steps", STEPS, "-q")
        assert code == 2 and f"pid {holder.pid}" in err and "in use" in err, err
        assert _tree(out) == before
    finally:
        holder.kill()  # SIGKILL: the lock file stays, its flock goes with the process
        holder.wait()
    assert (out / ".bdia-lock").exists()
    code, stdout, err = bdia_cli("invert", data / "in", "-o", out, "--prompt", "3", "--steps", STEPS, "-q")
    assert code == 0 and "3 already done" in stdout and f"pid {holder.pid}" in err and "took over" in err, err
    assert not (out / ".bdia-lock").exists()  # released at the end


def test_item6_an_output_name_too_long_fails_alone(data, bdia_cli):
    long = data / "in" / ("x" * 248 + ".png")  # its .safetensors name exceeds 255 bytes
    long.write_bytes((data / "in" / "d0.png").read_bytes())
    code, out, err = bdia_cli("invert", data / "in", "-o", data / "inv2", "--prompt", "3", "--steps", STEPS, "-q")
    assert code == 1 and "3 written" in out and "1 failed" in out and "Traceback" not in err, (out, err)


def test_item11_bit_exact_refuses_inputs_that_require_grad():
    import torch

    from bdia.solvers import BDIA

    grid = _grid()
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="backprop='reversible'"):
        BDIA(0.5, bit_exact=True).sample(lambda z, t: 0.1 * z, x, grid)
    out = BDIA(0.5, bit_exact=True).sample(lambda z, t: 0.1 * z, x.detach(), grid)  # without grad: as before
    assert not out.requires_grad


def _grid():
    from bdia.schedule import Schedule

    return Schedule.from_config({}).grid(5)


def test_item12_smaller_defects(tmp_path, data, bdia_cli):
    import numpy as np
    import torch
    from PIL import Image

    from bdia.editing import load_editor
    from bdia.io.images import read_image
    from bdia.schedule import Schedule
    from bdia.solvers import BDIA

    # EXIF orientation: a photo tagged Orientation=6 is read as a viewer shows it
    arr = np.zeros((16, 24, 3), np.uint8)
    arr[:4, :, 0] = 255  # a red top strip
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(tmp_path / "rot.jpg", exif=exif, quality=100)
    im = read_image(tmp_path / "rot.jpg")
    assert im.size == (16, 24)  # turned: the stored 24x16 is shown 16 wide
    # names that are not UTF-8 are refused as failed, not written unreadably
    bad = os.fsencode(data / "in") + b"/\xff.png"
    with open(bad, "wb") as f:
        f.write((data / "in" / "d0.png").read_bytes())
    code, out, err = bdia_cli("invert", data / "in", "-o", data / "inv3", "--prompt", "3", "--steps", STEPS, "-q")
    assert code == 1 and "3 written" in out and "1 failed" in out and "not valid UTF-8" in err, (out, err)
    # a schedule config cannot ask for terabytes
    with pytest.raises(ValueError, match="num_train_timesteps must be in"):
        Schedule.from_config({"num_train_timesteps": 10**12})
    # --batch-size 0 is refused before anything is created
    code, _, err = bdia_cli("invert", data / "in", "-o", tmp_path / "b0", "--batch-size", "0", "--prompt", "3", "-q")
    assert code == 2 and "batch_size" in err and not (tmp_path / "b0").exists(), err
    editor = load_editor("digits", device="cpu", progress=False)
    with pytest.raises(ValueError, match="num_images=3 with 2 prompts"):
        editor.generate(["3", "4"], num_images=3, num_steps=2, progress=False)
    with pytest.raises(ValueError, match="height must be a positive"):
        editor.generate("3", height=0, num_steps=2, progress=False)
    with pytest.raises(TypeError, match="load_inversion"):
        editor.reconstruct(os.fspath(data / "in" / "d0.png"))

    # a model that changes its input in place is detected, not a silent round-trip error
    def rude(z, t):
        z.mul_(1.0001)
        return 0.1 * z.clone()

    with pytest.raises(RuntimeError, match="changed its input in place"):
        BDIA(0.5).sample(rude, torch.randn(2, 3, dtype=torch.float64), _grid())
