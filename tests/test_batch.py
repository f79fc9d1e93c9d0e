"""Many inputs in one process: inputs, batching, manifest, resuming and the CLI glue (bdia.datasets.batch)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from bdia.datasets.batch import (
    edit_files,
    file_sha256,
    find_inputs,
    invert_files,
    iter_inversions,
    plan_batches,
    read_manifest,
    reconstruct_files,
    split_inversion,
    stack_inversions,
)
from bdia.digits import load_digits
from bdia.editing import load_editor
from bdia.io.saved import load_inversion

pytestmark = pytest.mark.usefixtures("single_thread")

STEPS = 4


@pytest.fixture(scope="module")
def editor():
    return load_editor("digits", device="cpu", progress=False)


@pytest.fixture(scope="module")
def digits():
    test = load_digits("test")
    return test.images[:7, 0].numpy(), [str(int(c)) for c in test.labels[:7]]


@pytest.fixture
def folder(tmp_path, digits):
    """7 held-out digits as PNGs: 5 at the top, 2 in a sub-folder, plus a hidden file to ignore."""
    from PIL import Image

    images, _ = digits
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    for k, im in enumerate(images):
        Image.fromarray(im).save(root / ("sub" if k >= 5 else "") / f"d{k}.png")
    (root / ".hidden.png").write_bytes(b"half a file")
    return root


def _tensors(path):
    inv = load_inversion(path)
    return inv.latents + (inv.clean,)


def test_find_inputs_folders_and_lists(tmp_path, folder):
    items = find_inputs([folder])
    assert [it.name for it in items] == ["d0", "d1", "d2", "d3", "d4", "sub/d5", "sub/d6"]
    assert all(it.prompt is None for it in items)
    (tmp_path / "l.txt").write_text("# digits\nin/d0.png\t3\n\nin/sub/d5.png\n")
    (tmp_path / "l.csv").write_text("path,prompt\nin/d1.png,7\n")
    (tmp_path / "l.jsonl").write_text(json.dumps({"path": "in/d2.png", "prompt": "1"}) + "\n")
    got = find_inputs([tmp_path / "l.txt", tmp_path / "l.csv", tmp_path / "l.jsonl"])
    assert [(it.name, it.prompt) for it in got] == [("in/d0", "3"), ("in/sub/d5", None), ("in/d1", "7"), ("in/d2", "1")]
    assert got[0].source == os.fspath(tmp_path / "in" / "d0.png")
    with pytest.raises(ValueError, match="would both be written as 'd0'"):
        find_inputs([folder / "d0.png", folder])
    with pytest.raises(FileNotFoundError, match="no file or folder"):
        find_inputs([tmp_path / "nope"])
    (tmp_path / "bad.csv").write_text("file_name,prompt\nx.png,1\n")
    with pytest.raises(ValueError, match="'path' column"):
        find_inputs([tmp_path / "bad.csv"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        find_inputs([tmp_path / "empty"])


def test_plan_batches_groups_by_key_in_input_order():
    assert plan_batches(["a", "b", "a", None, "a", "b", "a"], 2) == [[0, 2], [1, 5], [4, 6]]
    assert plan_batches(["a", "b", "a"], 8) == [[0, 2], [1]]
    with pytest.raises(ValueError, match="at least 1"):
        plan_batches(["a"], 0)


def test_split_and_stack_are_inverse(editor, digits):
    images, labels = digits
    inv = editor.invert([torch.from_numpy(im)[None] for im in images[:3]], labels[:3], num_steps=STEPS, progress=False)
    parts = split_inversion(inv)
    assert [p.batch_size for p in parts] == [1, 1, 1] and parts[1].prompt == [labels[1]]
    back = stack_inversions(parts)
    assert all(torch.equal(a, b) for a, b in zip(back.latents, inv.latents)) and back.prompt == inv.prompt
    other = editor.invert(torch.from_numpy(images[0])[None], "", num_steps=STEPS + 1, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        stack_inversions([parts[0], other])


def test_invert_files_matches_in_memory_batches_and_records_failures(tmp_path, editor, folder, digits):
    _, labels = digits
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    good = folder / "d0.png"
    (folder / "truncated.png").write_bytes(good.read_bytes()[:60])  # a valid header, cut data
    out = tmp_path / "out"
    summary = invert_files(editor, [folder], out, "", batch_size=3, num_steps=STEPS, progress=False)
    assert (summary.done, summary.skipped, summary.failed) == (7, 0, 2)
    records = read_manifest(out)
    assert {n for n, r in records.items() if r["status"] == "failed"} == {"broken", "truncated"}
    assert "cannot read" in records["broken"]["error"] and records["broken"]["output"] is None
    assert not list(out.glob("broken*")) and not list(out.glob("truncated*"))
    assert (out / "manifest.jsonl").is_file() and not list(out.glob("manifest.part-*"))
    # The files hold what the in-memory API computes with the same batches (the failed inputs left out).
    paths = [folder / f"d{k}.png" for k in range(5)] + [folder / "sub" / f"d{k}.png" for k in (5, 6)]
    for k, inv in iter_inversions(editor, paths, "", batch_size=3, num_steps=STEPS):
        name = f"d{k}" if k < 5 else f"sub/d{k}"
        rec = records[name]
        assert rec["status"] == "done" and rec["output"] == name + ".safetensors"
        assert rec["sha256"] == file_sha256(out / rec["output"])
        assert all(torch.equal(a, b) for a, b in zip(_tensors(out / rec["output"]), inv.latents + (inv.clean,)))
    # Rerun: nothing written again; the unreadable inputs are tried (and recorded) again.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    again = invert_files(editor, [folder], out, "", batch_size=3, num_steps=STEPS, progress=False)
    assert (again.done, again.skipped, again.failed) == (0, 7, 2)
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}


def test_per_image_prompts_from_a_list(tmp_path, editor, folder, digits):
    _, labels = digits
    rows = [{"path": f"in/d{k}.png", "prompt": labels[k]} for k in range(3)] + [{"path": "in/d3.png", "prompt": "x"}]
    lst = tmp_path / "list.jsonl"
    lst.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    summary = invert_files(editor, [lst], out, batch_size=8, num_steps=STEPS, progress=False)
    assert (summary.done, summary.failed) == (3, 1)
    rec = read_manifest(out)
    assert "class label" in rec["in/d3"]["error"]
    for k in range(3):
        assert load_inversion(out / f"in/d{k}.safetensors").prompt == [labels[k]] == [rec[f"in/d{k}"]["prompt"]]


def test_resume_is_safe(tmp_path, editor, folder):
    out = tmp_path / "out"
    invert_files(editor, [folder], out, batch_size=4, num_steps=STEPS, progress=False)
    reference = {p.name: p.read_bytes() for p in out.rglob("*.safetensors")}
    # A run killed after d1's rename but before its "done" record (its "writing" record is there); a torn
    # last line in a manifest part; d0 removed; d2 replaced by garbage with its records gone (a file bdia
    # did not write); d3 changed after it was recorded.
    (out / "d0.safetensors").unlink()
    lines = (out / "manifest.jsonl").read_text().splitlines(keepends=True)
    kept = [ln for ln in lines if json.loads(ln)["name"] not in ("d0", "d1", "d2")]
    d1 = next(json.loads(ln) for ln in lines if json.loads(ln)["name"] == "d1")
    kept.append(json.dumps(dict(d1, status="writing")) + "\n")
    (out / "manifest.jsonl").write_text("".join(kept))
    (out / "manifest.part-0.jsonl").write_text('{"name": "d0", "status": "do')  # the next record goes on a new line
    (out / "d2.safetensors").write_bytes(b"garbage")
    (out / "d3.safetensors").write_bytes(reference["d4.safetensors"])
    summary = invert_files(editor, [folder], out, batch_size=4, num_steps=STEPS, progress=False)
    assert (summary.done, summary.skipped, summary.failed) == (1, 4, 2)
    records = read_manifest(out)
    assert (out / "d0.safetensors").read_bytes() == reference["d0.safetensors"]  # its whole batch was recomputed
    assert records["d1"]["note"] == "completed by an interrupted run"
    assert records["d1"]["sha256"] == file_sha256(out / "d1.safetensors")
    assert "not written by this folder" in records["d2"]["error"] and "--overwrite" not in records["d2"]["error"]
    assert (out / "d2.safetensors").read_bytes() == b"garbage"
    assert "differs from the checksum" in records["d3"]["error"]
    assert not list(out.glob("manifest.part-*"))
    again = invert_files(editor, [folder], out, batch_size=4, num_steps=STEPS, progress=False)
    assert (again.done, again.skipped, again.failed) == (0, 5, 2)  # still refused: a failure is no license
    # Overwriting is asked for: what bdia wrote is recomputed; the file it did not write is still not touched.
    summary = invert_files(editor, [folder], out, batch_size=4, num_steps=STEPS, overwrite=True, progress=False)
    assert (summary.done, summary.failed) == (6, 1)
    assert (out / "d2.safetensors").read_bytes() == b"garbage"
    assert {p.name: p.read_bytes() for p in out.rglob("*.safetensors") if p.name != "d2.safetensors"} == {
        k: v for k, v in reference.items() if k != "d2.safetensors"
    }
    assert [n for n, r in read_manifest(out).items() if r["status"] != "done"] == ["d2"]


def test_reconstruct_and_edit_files(tmp_path, editor, folder, digits):
    _, labels = digits
    inv_dir = tmp_path / "inv"
    lst = tmp_path / "l.txt"
    lst.write_text("".join(f"in/d{k}.png\t{labels[k]}\n" for k in range(4)))
    invert_files(editor, [lst], inv_dir, batch_size=3, num_steps=STEPS, progress=False)
    rec_dir = tmp_path / "rec"
    summary = reconstruct_files(editor, [inv_dir / "manifest.jsonl"], rec_dir, batch_size=3, progress=False)
    assert (summary.done, summary.failed) == (4, 0)
    records = read_manifest(rec_dir)
    import numpy as np
    from PIL import Image

    for k in range(4):
        r = records[f"in/d{k}"]
        assert r["latent_error"] < 1e-9
        one = editor.reconstruct(load_inversion(inv_dir / f"in/d{k}.safetensors"), progress=False)
        with Image.open(rec_dir / f"in/d{k}.png") as im:
            assert np.array_equal(np.asarray(im), np.asarray(one.images[0]))
    # Edits: a list's per-inversion prompts override prompt=; a bad one fails alone.
    edits = tmp_path / "edits.csv"
    edits.write_text("path,prompt\ninv/in/d0.safetensors,8\ninv/in/d1.safetensors,\ninv/in/d2.safetensors,twelve\n")
    summary = edit_files(editor, [edits], tmp_path / "ed", prompt="5", batch_size=8, progress=False)
    assert (summary.done, summary.failed) == (2, 1)
    records = read_manifest(tmp_path / "ed")
    # An empty prompt cell means the run's prompt (issue 21, item 10), not the empty prompt.
    assert records["inv/in/d0"]["prompt"] == "8" and records["inv/in/d1"]["prompt"] == "5"
    assert "class label" in records["inv/in/d2"]["error"]
    with pytest.raises(ValueError, match="no target prompt"):
        edit_files(editor, [inv_dir], tmp_path / "ed2", progress=False)


def test_cli_glue(tmp_path, folder, capsys):
    import bdia.cli
    from bdia.cli.datasets import wants_many

    parser = bdia.cli.build_parser()
    args = parser.parse_args(["invert", str(folder), "-o", str(tmp_path / "inv"), "--steps", str(STEPS)])
    assert wants_many(args, "invert") and args.batch_size == 8
    one = parser.parse_args(["invert", str(folder / "d0.png"), "-o", str(tmp_path / "x.safetensors")])
    assert not wants_many(one, "invert")
    assert (
        bdia.cli.main(
            ["invert", str(folder), "-o", str(tmp_path / "inv"), "--steps", str(STEPS), "-q", "--batch-size", "4"]
        )
        == 0
    )
    assert "7 written, 0 already done, 0 failed" in capsys.readouterr().out
    assert bdia.cli.main(["reconstruct", str(tmp_path / "inv"), "-o", str(tmp_path / "rec"), "-q"]) == 0
    assert len(list((tmp_path / "rec").rglob("*.png"))) == 7
    assert (
        bdia.cli.main(
            ["edit", str(tmp_path / "inv" / "manifest.jsonl"), "--prompt", "1", "-o", str(tmp_path / "ed"), "-q"]
        )
        == 0
    )
    assert len(read_manifest(tmp_path / "ed")) == 7
    capsys.readouterr()
    assert bdia.cli.main(["invert", str(folder), "-o", str(tmp_path / "x.safetensors"), "-q"]) == 2
    assert "-o is a folder" in capsys.readouterr().err
    assert bdia.cli.main(["reconstruct", str(folder / "d0.png"), "-o", str(tmp_path / "r2"), "-q"]) == 2
    assert "invert images first" in capsys.readouterr().err
