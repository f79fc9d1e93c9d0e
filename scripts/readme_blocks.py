"""The README's printed blocks, made by the code they show: check them, or rewrite them.

A block is the fenced code block right after a line ``<!-- printed by: NAME -->`` in README.md; NAME is
one of :data:`BLOCKS`, which says what to run. Only timings may differ from a fresh run (they depend on
the machine and its load); every other character must match.

    python scripts/readme_blocks.py            # check: exit 1 and a diff when a block drifted
    python scripts/readme_blocks.py --update   # rewrite the blocks that drifted (timings alone do not count)
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKER = re.compile(r"^<!-- printed by: (.+?) -->$")

# The demo's table: the last column ("time s") of each method's row is wall-clock time.
_DEMO_TIME = re.compile(r"^(\S.*\d%)\s+\d+\.\d+$")


def _no_timings(text: str) -> str:
    return text


def _demo_timings(text: str) -> str:
    return "\n".join(_DEMO_TIME.sub(r"\1 <seconds>", line) for line in text.splitlines())


def _run(args: list[str]) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=900
    ).stdout


def round_trip() -> str:
    return _run(["examples/round_trip.py"])


def demo() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        out = _run(["-m", "bdia.cli", "demo", "--out", str(Path(tmp) / "demo"), "--quiet"])
    return "".join(line for line in out.splitlines(keepends=True) if not line.startswith("wrote "))


# NAME -> (what prints the block, what masks its timings)
BLOCKS: dict[str, tuple[Callable[[], str], Callable[[str], str]]] = {
    "examples/round_trip.py": (round_trip, _no_timings),
    "bdia demo": (demo, _demo_timings),
}


def blocks(text: str) -> dict[str, tuple[int, int]]:
    """NAME -> (first line, end line) of its block's body in ``text``'s lines."""
    lines = text.splitlines()
    found: dict[str, tuple[int, int]] = {}
    for i, line in enumerate(lines):
        m = MARKER.match(line.strip())
        if not m:
            continue
        if m.group(1) not in BLOCKS:
            raise ValueError(f"README.md line {i + 1}: unknown printed block {m.group(1)!r}")
        if i + 1 >= len(lines) or not lines[i + 1].startswith("```"):
            raise ValueError(f"README.md line {i + 1}: a fenced block must follow the marker")
        end = next(j for j in range(i + 2, len(lines)) if lines[j].startswith("```"))
        found[m.group(1)] = (i + 2, end)
    return found


def compare(name: str, readme_block: str, printed: str) -> list[str]:
    """The diff of the two, timings masked; empty when they agree."""
    mask = BLOCKS[name][1]
    a, b = mask(readme_block.rstrip("\n")).splitlines(), mask(printed.rstrip("\n")).splitlines()
    return list(difflib.unified_diff(a, b, "README.md", name, lineterm=""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--update", action="store_true", help="rewrite the blocks that drifted")
    ap.add_argument("--only", choices=sorted(BLOCKS), help="one block")
    args = ap.parse_args()
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    drifted = 0
    for name, (start, end) in sorted(blocks(text).items(), key=lambda kv: -kv[1][0]):  # bottom up: indices stay
        if args.only and name != args.only:
            continue
        printed = BLOCKS[name][0]()
        diff = compare(name, "".join(lines[start:end]), printed)
        if not diff:
            print(f"{name}: matches")
            continue
        drifted += 1
        print("\n".join(diff))
        if args.update:
            lines[start:end] = [printed if printed.endswith("\n") else printed + "\n"]
            print(f"{name}: rewritten")
    if args.update and drifted:
        README.write_text("".join(lines), encoding="utf-8")
    return 0 if args.update or not drifted else 1


if __name__ == "__main__":
    sys.exit(main())
