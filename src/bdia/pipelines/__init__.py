"""Deprecated: the old home of the Editor, the diffusers schedulers, saved inversions and the image commands.

Everything moved in 0.2 (README, "Layout"); the old names and module paths keep working for one
version with a :class:`DeprecationWarning`:

    bdia.pipelines.Editor            -> bdia.editing.Editor
    bdia.pipelines.scheduler         -> bdia.schedulers.ddim
    bdia.pipelines.batch             -> bdia.datasets.batch      (and the others in MOVED_MODULES)
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Any

# old module (under bdia.pipelines) -> new module
MOVED_MODULES = {
    "editor": "bdia.editing.editor",
    "digits_editor": "bdia.editing.backends.digits",
    "diffusers_model": "bdia.editing.backends.stable_diffusion",
    "flow_backend": "bdia.editing.backends.flow",
    "scheduler": "bdia.schedulers.ddim",
    "flow_scheduler": "bdia.schedulers.flow_match",
    "saved": "bdia.io.saved",
    "images": "bdia.io.images",
    "loading": "bdia.io.loading",
    "policy": "bdia.runtime",
    "batch": "bdia.datasets.batch",
    "batch_cli": "bdia.cli.datasets",
    "cli": "bdia.cli.common",
}
# old name -> new module that defines it
MOVED_NAMES = {
    "Editor": "bdia.editing.editor",
    "EditResult": "bdia.editing.editor",
    "load_editor": "bdia.editing.editor",
    "Backend": "bdia.editing.backends.base",
    "StableDiffusionBackend": "bdia.editing.backends.stable_diffusion",
    "UNetModel": "bdia.editing.backends.stable_diffusion",
    "encode_prompts": "bdia.editing.backends.stable_diffusion",
    "DigitsBackend": "bdia.editing.backends.digits",
    "SD3Backend": "bdia.editing.backends.flow",
    "FluxBackend": "bdia.editing.backends.flow",
    "make_solver": "bdia.solvers",
    "ImageInversion": "bdia.io.saved",
    "save_inversion": "bdia.io.saved",
    "load_inversion": "bdia.io.saved",
    "BDIAScheduler": "bdia.schedulers.ddim",
    "BDIAInverseScheduler": "bdia.schedulers.ddim",
    "BDIAFlowScheduler": "bdia.schedulers.flow_match",
    "ImageSizeWarning": "bdia.io.images",
    "ImageConversionWarning": "bdia.io.images",
    "ImageReadError": "bdia.io.images",
    "read_image": "bdia.io.images",
    "load_pipeline": "bdia.io.loading",
    "model_family": "bdia.io.loading",
    "UnsafeWeightsError": "bdia.io.loading",
}

__all__ = sorted(MOVED_NAMES)


def _warn(old: str, new: str) -> None:
    warnings.warn(
        f"{old} moved to {new}; the old path will be removed in the next version", DeprecationWarning, stacklevel=3
    )


def __getattr__(name: str) -> Any:
    if name in MOVED_NAMES:
        _warn(f"bdia.pipelines.{name}", f"{MOVED_NAMES[name]}.{name}")
        return getattr(importlib.import_module(MOVED_NAMES[name]), name)
    if name in MOVED_MODULES:
        _warn(f"bdia.pipelines.{name}", MOVED_MODULES[name])
        return importlib.import_module(MOVED_MODULES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import bdia.pipelines.batch`` (and the other old module paths) gives the new module, with a warning."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        prefix, _, leaf = fullname.rpartition(".")
        if prefix != __name__ or leaf not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: Any) -> ModuleType:
        new = MOVED_MODULES[spec.name.rpartition(".")[2]]
        _warn(spec.name, new)
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        """The new module is already executed."""


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _MovedModuleFinder())
