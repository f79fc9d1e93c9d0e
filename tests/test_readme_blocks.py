"""The README's printed blocks are what the code prints now (scripts/readme_blocks.py; only timings may
differ), so they cannot drift from the code again."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("readme_blocks", ROOT / "scripts" / "readme_blocks.py")
readme_blocks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(readme_blocks)

TEXT = readme_blocks.README.read_text(encoding="utf-8")
FOUND = readme_blocks.blocks(TEXT)


def _block(name: str) -> str:
    start, end = FOUND[name]
    return "\n".join(TEXT.splitlines()[start:end])


def test_every_known_block_is_marked_in_the_readme():
    assert set(FOUND) == set(readme_blocks.BLOCKS)


@pytest.mark.parametrize("name", sorted(readme_blocks.BLOCKS))
def test_readme_block_matches_a_fresh_run(name):
    printed = readme_blocks.BLOCKS[name][0]()
    diff = readme_blocks.compare(name, _block(name), printed)
    assert not diff, "README block drifted; run python scripts/readme_blocks.py --update\n" + "\n".join(diff)


def test_only_timings_are_tolerated():
    block = _block("bdia demo")
    slower = "\n".join(
        line[: line.rfind(" ")] + " 99.99" if line.startswith(("DDIM", "EDICT", "BDIA")) and "%" in line else line
        for line in block.splitlines()
    )
    assert slower != block and not readme_blocks.compare("bdia demo", block, slower)
    assert readme_blocks.compare("bdia demo", block, block.replace("100.00%", "99.00%", 1))
    assert readme_blocks.compare("bdia demo", block, block.replace(" 200 ", " 201 ", 1))
    rt = _block("examples/round_trip.py")
    assert readme_blocks.compare("examples/round_trip.py", rt, rt.replace("e-15", "e-14", 1))
