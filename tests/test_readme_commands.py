"""The README's `bdia` commands run as written, in order, from the repository's root.

Every line of a fenced code block that starts with ``bdia `` is extracted. Commands on a placeholder
(``path/to/...``: a model the reader supplies, and the files such commands read and write) and the long
ones (``demo``, ``bench``) are only parsed, which checks every flag; every other one runs in order, in a
temporary folder holding a copy of ``examples/``, and must exit 0 and write the output it names.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from bdia.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
PLACEHOLDER = "path/to/"
LONG = {"demo", "bench"}  # minutes each: parsed here, run by tests/test_demo.py and tests/test_bench.py


def readme_commands(text: str) -> list[list[str]]:
    """The ``bdia ...`` lines of the fenced code blocks, as argument lists (comments removed)."""
    commands, fenced = [], False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            fenced = not fenced
            continue
        if fenced and stripped.startswith("bdia "):
            commands.append(shlex.split(stripped, comments=True))
    return commands


COMMANDS = readme_commands((ROOT / "README.md").read_text(encoding="utf-8"))


def _is_file_like(arg: str) -> bool:
    return not arg.startswith("-") and " " not in arg and ("/" in arg or re.search(r"\.[A-Za-z]+$", arg) is not None)


def reader_supplied(commands: list[list[str]]) -> set[str]:
    """Files that exist only for a reader with their own model: every file a command on a ``path/to/``
    placeholder names (its own images, its outputs), and, in turn, every file a command on those names."""
    supplied: set[str] = set()
    for argv in commands:
        if any(PLACEHOLDER in a for a in argv) or any(a in supplied for a in argv):
            supplied.update(a for a in argv if _is_file_like(a))
    return supplied


SUPPLIED = reader_supplied(COMMANDS)


def is_runnable(argv: list[str]) -> bool:
    return argv[1] not in LONG and not any(PLACEHOLDER in a or a in SUPPLIED for a in argv)


def test_the_readme_has_runnable_commands():
    assert sum(map(is_runnable, COMMANDS)) >= 8
    assert not any(name.startswith("examples/") for name in SUPPLIED)  # the shipped samples are never skipped
    assert {argv[1] for argv in COMMANDS if is_runnable(argv)} >= {"invert", "reconstruct", "edit", "generate"}


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(a)[:60] for a in COMMANDS])
def test_every_readme_command_parses(argv):
    build_parser().parse_args(argv[1:])  # exits (SystemExit) on an unknown flag or a bad value


def test_every_file_a_readme_command_reads_is_shipped():
    for argv in filter(is_runnable, COMMANDS):
        for arg in argv:
            if arg.startswith("examples/"):
                assert (ROOT / arg).exists(), f"{' '.join(argv)}: {arg} is not in the repository"


def _output(argv: list[str]) -> str:
    return argv[argv.index("-o") + 1]


def test_readme_commands_run_as_written_in_order(tmp_path, monkeypatch, capsys):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    ran = []
    for argv in filter(is_runnable, COMMANDS):
        code = main([*argv[1:], "--quiet"])
        err = capsys.readouterr().err
        assert code == 0, f"{' '.join(argv)} exited {code}: {err}"
        out = Path(_output(argv))
        assert out.exists(), f"{' '.join(argv)} did not write {out}"
        if out.is_dir():
            assert re.search(r'"status": "done"', (out / "manifest.jsonl").read_text())
        ran.append(argv[1])
    assert len(ran) == sum(map(is_runnable, COMMANDS))


def test_the_sample_images_are_what_the_script_makes(tmp_path):
    """The shipped samples are held out from training and reproducible: the script remakes them byte for byte."""
    import subprocess
    import sys

    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_example_images.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    shipped = ROOT / "examples" / "images"
    assert made == sorted(p.relative_to(shipped) for p in shipped.rglob("*") if p.is_file())
    for rel in made:
        assert (tmp_path / rel).read_bytes() == (shipped / rel).read_bytes(), rel
