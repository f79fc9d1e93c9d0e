"""What each workload needs beyond torch and numpy, checked before the first workload runs.

A workload module declares ``REQUIRES``: importable module name -> what it is needed for. The runner
skips a workload whose modules are missing, with a note, instead of failing after the others ran.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping

__all__ = ["DIGITS", "EXTRA", "missing", "missing_note"]

EXTRA = "pip install 'bdia[bench]'"

# The embedded digits model: its weights are safetensors files, its held-out digits come with scikit-learn.
DIGITS: dict[str, str] = {"safetensors": "the digits model's weights", "sklearn": "the held-out digits"}


def _absent(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None  # None also when sys.modules[module] is None
    except (ImportError, ValueError):  # a parent package missing, or a module without a spec
        return True


def missing(requires: Mapping[str, str]) -> dict[str, str]:
    """The entries of ``requires`` whose module cannot be imported here."""
    return {mod: why for mod, why in requires.items() if _absent(mod)}


def missing_note(requires: Mapping[str, str]) -> str | None:
    """One line naming what is missing and what for, or None when everything is there."""
    gone = missing(requires)
    if not gone:
        return None
    return f"needs {', '.join(f'{mod} ({why})' for mod, why in gone.items())}; {EXTRA}"
