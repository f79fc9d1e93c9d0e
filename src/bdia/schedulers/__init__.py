"""Drop-in diffusers schedulers: ``BDIAScheduler`` / ``BDIAInverseScheduler`` (DDIM's config and ``step``,
:mod:`.ddim`) and ``BDIAFlowScheduler`` (flow matching, :mod:`.flow_match`).

    pipe.scheduler = bdia.BDIAScheduler.from_config(pipe.scheduler.config, gamma=0.5)

They need the ``diffusers`` extra; names load on first use, so ``import bdia.schedulers`` does not import diffusers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"BDIAScheduler": ".ddim", "BDIAInverseScheduler": ".ddim", "BDIAFlowScheduler": ".flow_match"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
