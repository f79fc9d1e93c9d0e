"""The scenes part of ``bdia demo``: held-out scene edits with and without controls, against their ground truth.

Three held-out edit pairs (a colour, a shape and a background change) are inverted with BDIA and with DDIM
inversion, then edited under the target caption: plainly, with Prompt-to-Prompt + LocalBlend on the changed
words, and with the true edit region as a mask. Prints PSNR to the renderer's target image and outside the edit
region against the source, and writes ``scenes.png`` (source, target, reconstruction, the edits).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

KINDS = ("colour", "shape", "background")
METHODS = (("bdia", "BDIA"), ("ddim", "DDIM inversion"))


def missing() -> str | None:
    """Why the scenes part cannot run here (its UNet is a diffusers model), or None."""
    if importlib.util.find_spec("diffusers") is None:
        return "the scenes part needs diffusers: pip install -e '.[demo]'"
    return None


def _controls(pair: Any) -> list[tuple[str, dict[str, Any]]]:
    import numpy as np

    from .editing.controls import PromptToPrompt

    source_words, target_words = pair.changed_words
    return [
        ("prompt swap", {}),
        ("P2P + LocalBlend", {"control": PromptToPrompt(blend=(list(source_words), list(target_words)))}),
        ("true mask", {"mask": pair.region.astype(np.float32)}),
    ]


def run(out: Path, steps: int, overwrite: bool, log: Any) -> dict[str, Any]:
    """Run the scenes part (see the module); returns its results for results.json."""
    import numpy as np
    import torch

    from .bench.measures import finite_or_none
    from .bench.scene_editing import _masked_mse, _mean, _psnr
    from .datasets.batch import split_inversion
    from .editing import Editor
    from .scenes import held_out_edit_pairs, to_uint8

    pairs = held_out_edit_pairs(3, kinds=KINDS)
    editor = Editor.from_pretrained("scenes", device="cpu", progress=False)
    source = torch.from_numpy(np.stack([p.source_image for p in pairs])).permute(0, 3, 1, 2)
    target = torch.from_numpy(np.stack([p.target_image for p in pairs])).permute(0, 3, 1, 2)
    outside = torch.from_numpy(np.stack([~p.region for p in pairs]))[:, None]
    rows, shown = [], {}
    for method, label in METHODS:
        inv = editor.invert(
            list(source.permute(0, 2, 3, 1).numpy()),
            [p.source_caption for p in pairs],
            num_steps=steps,
            guidance_scale=3.0,
            method=method,
        )
        rec = to_uint8(editor.reconstruct(inv).latents)
        shown[f"{label}: reconstruction"] = rec
        singles = split_inversion(inv)  # controls here watch each pair's own words: one edit at a time
        for name in ("prompt swap", "P2P + LocalBlend", "true mask"):
            edits = []
            for k, pair in enumerate(pairs):
                options = dict(_controls(pair))[name]
                one = editor.edit(singles[k], pair.target_caption, **options)
                edits.append(to_uint8(one.latents))
            edit = torch.cat(edits)
            shown[f"{label}: {name}"] = edit
            psnr_target = _psnr(((edit.double() - target.double()) ** 2).mean(dim=(1, 2, 3)))
            psnr_outside = _psnr(_masked_mse(edit, source, outside))
            rows.append(
                {
                    "method": label,
                    "control": name,
                    "reconstruction_identical": float((rec == source).float().mean()),
                    # null: identical images (infinite PSNR; JSON has no inf)
                    "psnr_to_target": finite_or_none([float(v) for v in psnr_target]),
                    "psnr_outside_edit": finite_or_none([float(v) for v in psnr_outside]),
                }
            )
    header = f"{'method':<15} {'control':<17} {'PSNR to target':>15} {'PSNR outside edit':>18}"
    lines = [header, "-" * len(header)]
    for r in rows:
        mean_t, mean_o = _mean(r["psnr_to_target"]), _mean(r["psnr_outside_edit"])
        lines.append(f"{r['method']:<15} {r['control']:<17} {mean_t:>12.2f} dB {mean_o:>15.2f} dB")
    lines.append(
        "scenes: 3 held-out edits (colour, shape, background); PSNR in dB on 8-bit pixels, means clipped at 100 "
        "(identical); outside edit: against the source, outside the renderer's edit region"
    )
    print("\n".join(lines))
    _figure(out / "scenes.png", pairs, source, target, shown, overwrite)
    return {"kinds": list(KINDS), "steps": steps, "guidance": 3.0, "rows": rows}


def _figure(path: Path, pairs: list, source: Any, target: Any, shown: dict[str, Any], overwrite: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io.files import atomic_path

    columns = [("source", source), ("target (ground truth)", target), *shown.items()]
    fig, axes = plt.subplots(len(pairs), len(columns), figsize=(1.25 * len(columns), 1.45 * len(pairs) + 0.5))
    for i, pair in enumerate(pairs):
        for j, (title, images) in enumerate(columns):
            ax = axes[i, j]
            ax.imshow(images[i].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title.replace(": ", ":\n"), fontsize=6)
            if j == 0:
                ax.set_ylabel(pair.kind, fontsize=7)
    fig.suptitle("Held-out scene edits: exact BDIA and approximate DDIM inversion, with and without controls", size=8)
    fig.tight_layout()
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=150)
    plt.close(fig)
