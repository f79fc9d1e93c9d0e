"""Issue 21: random and mutated lists and manifests (paths, names, encodings) given to data-set runs.

Every case ends in a clean per-input failure or a one-line error; nothing is written outside the output
folder (the whole temporary tree is compared before and after) and no input is modified."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from bdia.datasets.batch import file_sha256, invert_files, read_manifest, reconstruct_files
from bdia.digits import load_digits
from bdia.editing import load_editor

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

STEPS = 2
FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The digits editor, 2 digit PNGs and their inversions (copied into each case's fresh tree)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("fuzzsrc")
    (root / "in").mkdir()
    for k in range(2):
        Image.fromarray(load_digits("test").images[k, 0].numpy()).save(root / "in" / f"d{k}.png")
    editor = load_editor("digits", device="cpu", progress=False)
    assert invert_files(editor, [root / "in"], root / "inv", "3", num_steps=STEPS, progress=False).done == 2
    return editor, root


def _snapshot(top: Path, out: Path) -> dict[str, str]:
    return {
        os.fspath(p.relative_to(top)): file_sha256(p) for p in top.rglob("*") if p.is_file() and out not in p.parents
    }


# Paths and names an attacker or a careless user could write into a list or a manifest.
HOSTILE = st.sampled_from(
    [
        "../../victim",
        "../victim.png",
        "/tmp/abs",
        "..",
        ".",
        "",
        ".hidden",
        "a/../../b",
        "a//b",
        "x\\..\\y",
        "d0\x00",
        "in/d0.png",
        "d0.png",
        "d1",
        "\u2028",
        "\ufeffd0.png",
        "C:/x",
        "in/../../../x",
        "sub/deep/name",
        "out/../../escape",
        "é",
    ]
)
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
PATHS = st.one_of(HOSTILE, TEXT)
PROMPTS = st.one_of(st.none(), st.sampled_from(["", "3", "7", "12"]), TEXT)
JSONISH = st.one_of(
    st.none(),
    st.integers(-5, 5),
    st.booleans(),
    PATHS,
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.sampled_from(["a", "id"]), st.integers(), max_size=1),
)


def _encode(text: str, bom: bool) -> bytes:
    return ("\ufeff" if bom else "").encode("utf-8") + text.encode("utf-8")


@st.composite
def lists(draw):
    kind = draw(st.sampled_from(["txt", "csv", "jsonl"]))
    rows = draw(st.lists(st.tuples(PATHS, PROMPTS), min_size=1, max_size=4))
    if kind == "txt":
        text = "".join(f"{p}\t{q}\n" if q is not None else f"{p}\n" for p, q in rows)
    elif kind == "csv":
        buf = io.StringIO(newline="")
        w = csv.writer(buf)
        w.writerow(draw(st.sampled_from([["path", "prompt"], ["image", "prompt"], ["prompt", "path"], ["x"]])))
        w.writerows([[p, q or ""] for p, q in rows])
        text = buf.getvalue()
    else:
        text = "".join(
            json.dumps({draw(st.sampled_from(["path", "file", "nope"])): p, "prompt": q}) + "\n" for p, q in rows
        )
    data = _encode(text, draw(st.booleans()))
    if draw(st.booleans()):  # a mutation of the bytes: a cut, or a byte that is not UTF-8
        k = draw(st.integers(0, len(data)))
        data = data[:k] + draw(st.sampled_from([b"", b"\xff", b"\r", b'\n"', b"\x0b"])) + data[k:]
    return kind, data


def _run_safely(run, top: Path, out: Path) -> None:
    before = _snapshot(top, out)
    try:
        summary = run()
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        assert len(str(e).splitlines()) == 1, str(e)
    else:
        assert summary.done + summary.skipped + summary.failed >= 0
        records = read_manifest(out)
        for r in records.values():  # every record names an output inside the folder, or none
            assert r["output"] is None or (out / r["output"]).resolve().is_relative_to(out.resolve())
    assert _snapshot(top, out) == before  # nothing outside the output folder written, no input changed
    if out.is_dir():
        assert not (out / ".bdia-lock").exists()


@FUZZ
@given(lists())
def test_random_lists(setup, case):
    editor, src = setup
    kind, data = case
    with tempfile.TemporaryDirectory() as d:
        top = Path(d)
        a = top / "a"
        shutil.copytree(src / "in", a / "in")
        (a / f"list.{kind}").write_bytes(data)
        (top / "victim.png").write_bytes(b"precious")
        out = a / "out"
        _run_safely(
            lambda: invert_files(editor, [a / f"list.{kind}"], out, "", num_steps=STEPS, progress=False), top, out
        )


@st.composite
def manifests(draw, records):
    lines = []
    for r in records:
        r = dict(r)
        for key in draw(
            st.lists(st.sampled_from(["name", "output", "status", "sha256", "time", "settings"]), max_size=3)
        ):
            r[key] = draw(JSONISH if key not in ("name", "output") else st.one_of(PATHS, JSONISH))
        lines.append(json.dumps(r))
    lines += draw(
        st.lists(st.sampled_from(['{"name": "d0", "status": "do', "[1, 2]", "null", '{"name": ["x"]}']), max_size=2)
    )
    data = _encode("\n".join(lines) + "\n", draw(st.booleans()))
    return data


@FUZZ
@given(st.data())
def test_mutated_manifests(setup, data):
    editor, src = setup
    records = [json.loads(ln) for ln in (src / "inv" / "manifest.jsonl").read_text().splitlines()]
    manifest = data.draw(manifests(records))
    with tempfile.TemporaryDirectory() as d:
        top = Path(d)
        a = top / "a"
        shutil.copytree(src / "inv", a / "inv")
        shutil.copytree(src / "in", top / "in")
        (a / "inv" / "manifest.jsonl").write_bytes(manifest)
        out = a / "out"
        _run_safely(lambda: reconstruct_files(editor, [a / "inv" / "manifest.jsonl"], out, progress=False), top, out)
        # the same manifest as the output folder's own: a run into it must not trip over it
        out2 = a / "inv2"
        out2.mkdir()
        (out2 / "manifest.jsonl").write_bytes(manifest)
        _run_safely(lambda: invert_files(editor, [top / "in"], out2, "3", num_steps=STEPS, progress=False), top, out2)
