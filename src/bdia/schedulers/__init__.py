"""Drop-in diffusers schedulers: ``BDIAScheduler`` / ``BDIAInverseScheduler`` (DDIM's config and ``step``,
:mod:`.ddim`) and ``BDIAFlowScheduler`` (flow matching, :mod:`.flow_match`).

    pipe.scheduler = bdia.BDIAScheduler.from_config(pipe.scheduler.config, gamma=0.5)

They need the ``diffusers`` extra; names load on first use, so ``import bdia.schedulers`` does not import diffusers.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {"BDIAScheduler": ".ddim", "BDIAInverseScheduler": ".ddim", "BDIAFlowScheduler": ".flow_match"}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
