"""Many inputs at once: planning, sharding over processes (accelerate / torchrun), the manifest and resume
(:mod:`.batch`), and what keeps a run inside its output folder and off its inputs (:mod:`.safety`).
The command line's side is :mod:`bdia.cli.datasets`.

    from bdia.datasets import invert_files
    summary = invert_files(editor, ["a.png", "b.png"], "inverted/", prompt="3", num_steps=50)
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    name: ".batch"
    for name in (
        "IMAGE_EXTENSIONS",
        "Item",
        "Summary",
        "find_inputs",
        "plan_batches",
        "iter_inversions",
        "split_inversion",
        "stack_inversions",
        "invert_files",
        "reconstruct_files",
        "edit_files",
        "read_manifest",
        "file_sha256",
        "MANIFEST",
    )
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
