"""Editing with ground truth on the embedded scenes model: every inversion x every edit control.

Held-out scenes (never seen in training) come with an exact edit (`bdia.scenes.held_out_edit_pairs`:
an object's colour, shape or size changed, the background changed, an object added or removed): the
renderer gives the source image, the target image the edit should produce, both captions, the words
that changed and the region that should change. Each method inverts the source images under their
captions and regenerates them under the target captions, with each control of :data:`CONTROLS`.

Measures, per edit: PSNR / SSIM / MSE of the edit against the ground-truth target (one number for
"did it make the edit and nothing else"); PSNR / SSIM outside the edit region against the source
(preservation) and PSNR outside it against the method's own reconstruction (what the control keeps);
success, the judge (`bdia.scenes.classifier`, trained on renders only) reading exactly the target scene;
time and NFE.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .methods import get_methods

__all__ = ["CONTROLS", "REQUIRES", "run", "section", "plots"]

REQUIRES = {
    "safetensors": "the scenes model's weights",
    "diffusers": "the scenes model's UNet",
    "pytorch_msssim": "the SSIM of the edits",
    "PIL": "the figure's stored images",
}


def _swap(pairs: list) -> dict[str, Any]:
    """The plain edit: regenerate the inverted latents under the target captions, nothing else."""
    return {}


def _p2p(pairs: list) -> dict[str, Any]:
    """Prompt-to-Prompt with the reference's default windows (word swap or refinement, by the captions)."""
    from ..editing.controls import PromptToPrompt

    return {"control": PromptToPrompt()}


def _p2p_blend(pairs: list) -> dict[str, Any]:
    """Prompt-to-Prompt with LocalBlend on the words the edit changes (the renderer names them)."""
    from ..editing.controls import PromptToPrompt

    (pair,) = pairs
    source_words, target_words = pair.changed_words
    return {"control": PromptToPrompt(blend=(list(source_words), list(target_words)))}


def _masactrl(pairs: list) -> dict[str, Any]:
    """Mutual self-attention with its default start step and layers."""
    from ..editing.controls import MutualSelfAttention

    return {"control": MutualSelfAttention()}


def _true_mask(pairs: list) -> dict[str, Any]:
    """The renderer's edit region as the mask: outside it, the edit keeps the source branch's state."""
    return {"mask": np.stack([p.region for p in pairs]).astype(np.float32)}


# control key -> (label, the keyword arguments of Editor.edit for a list of edit pairs, whether one call can
# take the whole batch; a control whose settings differ per pair, e.g. the words it watches, edits one at a time)
CONTROLS: dict[str, tuple[str, Callable[[list], dict[str, Any]], bool]] = {
    "swap": ("prompt swap", _swap, True),
    "p2p": ("P2P", _p2p, False),
    "p2p-blend": ("P2P + LocalBlend", _p2p_blend, False),
    "masactrl": ("MasaCtrl", _masactrl, True),
    "mask": ("true mask", _true_mask, True),
}
# the methods whose edits the figure shows (one pair of each kind), stored as PNG bytes in the results
FIGURE_METHODS = ("ddim", "bdia-1")


NULL_TEXT = "nulltext"  # a method key beside the solvers': null-text inversion (Editor.null_text_invert)


def _inversions(keys: list[str]) -> list[tuple[str, str, Callable[..., Any]]]:
    """(key, label, invert(editor, images, captions, steps, guidance)) for each method key: a solver of
    ``bench.methods`` through ``Editor.invert``, or null-text inversion through ``Editor.null_text_invert``."""

    def by_solver(method: Any) -> Callable[..., Any]:
        return lambda editor, images, captions, steps, guidance: editor.invert(
            images, captions, num_steps=steps, guidance_scale=guidance, method=method.make(torch.float64)
        )

    def null_text(editor: Any, images: list, captions: list, steps: int, guidance: float) -> Any:
        return editor.null_text_invert(images, captions, num_steps=steps, guidance_scale=guidance)

    solvers = {m.key: m for m in get_methods([k for k in keys if k != NULL_TEXT])}
    return [
        (k, "null-text", null_text) if k == NULL_TEXT else (k, solvers[k].label, by_solver(solvers[k])) for k in keys
    ]


def _settings(cfg: Any) -> dict[str, Any]:
    return {
        "pairs_per_kind": cfg.scene_editing_pairs,
        "steps": list(cfg.scene_editing_steps),
        "guidance": cfg.scene_editing_guidance,
        "methods": list(cfg.scene_editing_methods),
        "controls": [c for c in cfg.scene_editing_controls if c in CONTROLS],
    }


def _ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of uint8 (B, 3, 32, 32) images (7x7 Gaussian window: the images are small)."""
    from pytorch_msssim import ssim

    return ssim(a.double(), b.double(), data_range=255.0, size_average=False, win_size=7)


def _psnr(mse: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of 8-bit images from their MSE; identical images give inf."""
    return torch.where(mse > 0, 10 * torch.log10(255.0**2 / mse.clamp_min(1e-30)), torch.full_like(mse, math.inf))


def _masked_mse(a: torch.Tensor, b: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Per-image MSE over the pixels where ``keep`` (B, 1, H, W) is True, all channels."""
    d = (a.double() - b.double()) ** 2 * keep
    return d.sum(dim=(1, 2, 3)) / (keep.sum(dim=(1, 2, 3)) * a.shape[1]).clamp_min(1)


def measure(edit: torch.Tensor, pairs: list, reconstruction: torch.Tensor, classifier: Any) -> dict[str, Any]:
    """The per-edit measures (see the module) of uint8 ``edit`` images against their ``pairs``."""
    from ..scenes.quality import score

    source = torch.from_numpy(np.stack([p.source_image for p in pairs])).permute(0, 3, 1, 2)
    target = torch.from_numpy(np.stack([p.target_image for p in pairs])).permute(0, 3, 1, 2)
    outside = torch.from_numpy(np.stack([~p.region for p in pairs]))[:, None]
    mse_gt = ((edit.double() - target.double()) ** 2).mean(dim=(1, 2, 3))
    mse_out = _masked_mse(edit, source, outside)
    images = edit.permute(0, 2, 3, 1).numpy()
    success = [score(classifier, images[k : k + 1], [p.target])["exact_accuracy"] for k, p in enumerate(pairs)]
    return {
        "mse_gt": mse_gt.tolist(),
        "psnr_gt": _psnr(mse_gt).tolist(),
        "ssim_gt": _ssim(edit, target).tolist(),
        "psnr_outside_source": _psnr(mse_out).tolist(),
        "ssim_outside_source": _ssim(edit * outside, source * outside).tolist(),
        "psnr_outside_reconstruction": _psnr(_masked_mse(edit, reconstruction, outside)).tolist(),
        "success": success,
    }


def blend_measures(masks: list, pairs: list) -> dict[str, list[float]]:
    """LocalBlend's last mask per edit against the true edit region: the fraction of the image it lets the
    edit change (1: no blending at all) and its intersection over union with the region."""
    cover, iou = [], []
    for mask, p in zip(masks, pairs):
        m = mask[0, 0].bool().cpu().numpy()
        cover.append(float(m.mean()))
        iou.append(float((m & p.region).sum() / max((m | p.region).sum(), 1)))
    return {"blend_coverage": cover, "blend_iou": iou}


def _png(image: torch.Tensor) -> str:
    """A uint8 (3, H, W) image as base64 PNG text (the figure is redrawn from results.json by ``--render``)."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _unpng(text: str) -> np.ndarray:
    import base64
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB"))


def _db(value: float | None) -> float:
    """A PSNR clipped to 100 dB: identical images (inf, written as null in results.json) count as 100."""
    return 100.0 if value is None else min(value, 100.0)


def _mean(values: list[float | None]) -> float:
    """Mean of PSNRs clipped at 100 dB (see :func:`_db`), so one perfect edit does not make the mean inf."""
    return float(np.mean([_db(v) for v in values]))


def run(cfg: Any, log: Callable[[str], None] = print) -> dict[str, Any]:
    from ..datasets.batch import split_inversion
    from ..editing import Editor
    from ..scenes import EDIT_KINDS, held_out_edit_pairs, load_classifier, to_uint8

    s = _settings(cfg)
    pairs = held_out_edit_pairs(s["pairs_per_kind"] * len(EDIT_KINDS))
    kinds = [p.kind for p in pairs]
    editor = Editor.from_pretrained("scenes", progress=False)
    judge = load_classifier()
    sources = [p.source_image for p in pairs]
    source_u8 = torch.from_numpy(np.stack(sources)).permute(0, 3, 1, 2)
    results: dict[str, Any] = {
        "settings": {**s, "kinds": kinds, "region_fraction": [float(p.region.mean()) for p in pairs]},
        "figure_pairs": {
            kind: {
                "source": _png(source_u8[k]),
                "target": _png(torch.from_numpy(pairs[k].target_image).permute(2, 0, 1)),
            }
            for kind, k in ((kind, kinds.index(kind)) for kind in dict.fromkeys(kinds))
        },
        "runs": {},
    }
    t0 = time.perf_counter()
    for steps in s["steps"]:
        for key, label_method, invert in _inversions(s["methods"]):
            start = time.perf_counter()
            inv = invert(editor, sources, [p.source_caption for p in pairs], steps, s["guidance"])
            invert_seconds = time.perf_counter() - start
            rec = to_uint8(editor.reconstruct(inv).latents)
            for control in s["controls"]:
                label, options, batched = CONTROLS[control]
                start = time.perf_counter()
                blends: list[Any] = []  # LocalBlend's last masks, per edit (controls run one pair at a time)
                if batched:
                    res = editor.edit(inv, [p.target_caption for p in pairs], **options(pairs))
                    edits, nfe = to_uint8(res.latents), res.nfe
                else:
                    done = []
                    for one, p in zip(split_inversion(inv), pairs):
                        kwargs = options([p])
                        done.append(editor.edit(one, p.target_caption, **kwargs))
                        blends.append(getattr(kwargs.get("control"), "last_blend_mask", None))
                    edits, nfe = torch.cat([to_uint8(r.latents) for r in done]), done[0].nfe
                seconds = time.perf_counter() - start
                row = measure(edits, pairs, rec, judge)
                if blends and all(b is not None for b in blends):
                    row.update(blend_measures(blends, pairs))
                row.update(
                    method=key,
                    method_label=label_method,
                    control=control,
                    control_label=label,
                    steps=steps,
                    nfe_invert=inv.inversion.nfe,
                    nfe_edit=nfe,
                    seconds_invert_per_image=invert_seconds / len(pairs),
                    seconds_edit_per_image=seconds / len(pairs),
                    reconstruction_identical=float((rec == source_u8).float().mean()),
                )
                if key in FIGURE_METHODS and steps == s["steps"][-1]:
                    row["figure_images"] = {kind: _png(edits[kinds.index(kind)]) for kind in dict.fromkeys(kinds)}
                results["runs"][f"{key}/{control}/{steps}"] = row
                log(
                    f"  scene edits {label_method:16s} {label:14s} N={steps:3d}: PSNR to target "
                    f"{_mean(row['psnr_gt']):.2f} dB, outside the edit {_mean(row['psnr_outside_source']):.2f} dB, "
                    f"success {np.mean(row['success']):.2f}"
                )
    results["seconds"] = round(time.perf_counter() - t0, 1)
    return results


def _summary(row: dict[str, Any], kinds: list[str], kind: str | None = None) -> dict[str, float]:
    pick = [k for k, name in enumerate(kinds) if kind is None or name == kind]
    return {
        key: _mean([row[key][k] for k in pick])
        for key in ("psnr_gt", "ssim_gt", "mse_gt", "psnr_outside_source", "ssim_outside_source", "success")
    } | {"psnr_outside_reconstruction": _mean([row["psnr_outside_reconstruction"][k] for k in pick])}


def _seconds(row: dict[str, Any]) -> float:
    """Inversion plus edit, seconds an image."""
    return float(row["seconds_invert_per_image"] + row["seconds_edit_per_image"])


def section(results: dict[str, Any]) -> str:
    from .report import table

    s = results["settings"]
    kinds = s["kinds"]
    lines = [
        "## Editing with ground truth on the scenes model",
        "",
        f"{len(kinds)} held-out edit pairs ({s['pairs_per_kind']} per kind: {', '.join(dict.fromkeys(kinds))}), "
        f"inverted under the source caption and edited under the target caption at guidance {s['guidance']:g}. "
        "PSNR / SSIM to target: the edit against the image the renderer draws for the target caption. "
        "Outside: PSNR against the source over the pixels outside the edit region (preservation). "
        "Success: the judge reads exactly the target scene. PSNR means clip identical images at 100 dB.",
        "",
    ]
    header = ["method", "control", "N", "PSNR to target", "SSIM to target", "PSNR outside", "SSIM outside", "success"]
    for steps in s["steps"]:
        rows = []
        for row in results["runs"].values():
            if row["steps"] != steps:
                continue
            m = _summary(row, kinds)
            rows.append(
                [
                    row["method_label"],
                    row["control_label"],
                    steps,
                    f"{m['psnr_gt']:.2f}",
                    f"{m['ssim_gt']:.3f}",
                    f"{m['psnr_outside_source']:.2f}",
                    f"{m['ssim_outside_source']:.3f}",
                    f"{m['success']:.2f}",
                ]
            )
        lines += [f"**{steps} steps, all edit kinds**", "", table(header, rows), ""]
    last = s["steps"][-1]
    lines += [f"**PSNR to target by edit kind ({last} steps)**", ""]
    kind_names = list(dict.fromkeys(kinds))
    rows = [
        [row["method_label"], row["control_label"]]
        + [f"{_summary(row, kinds, kind)['psnr_gt']:.2f}" for kind in kind_names]
        for row in results["runs"].values()
        if row["steps"] == last
    ]
    lines += [table(["method", "control", *kind_names], rows), ""]
    lines += _verdicts(results)
    return "\n".join(lines) + "\n"


def _verdicts(results: dict[str, Any]) -> list[str]:
    """The issue's targets, stated met or not from the measured numbers."""
    s, kinds = results["settings"], results["settings"]["kinds"]
    exact, approximate = {"edict", "bdia-1", "belm", "rex"}, {"ddim", NULL_TEXT}
    out = []
    for steps in s["steps"]:
        runs = [r for r in results["runs"].values() if r["steps"] == steps]
        for control in dict.fromkeys(r["control"] for r in runs):
            best_exact = max(
                (
                    (_summary(r, kinds)["psnr_gt"], r["method_label"])
                    for r in runs
                    if r["control"] == control and r["method"] in exact
                ),
                default=None,
            )
            best_approx = max(
                (
                    (_summary(r, kinds)["psnr_gt"], r["method_label"])
                    for r in runs
                    if r["control"] == control and r["method"] in approximate
                ),
                default=None,
            )
            if best_exact and best_approx:
                met = "met" if best_exact[0] > best_approx[0] else "NOT met"
                label = runs[[r["control"] for r in runs].index(control)]["control_label"]
                out.append(
                    f"- N={steps}, {label}: best exact inversion {best_exact[1]} {best_exact[0]:.2f} dB to target "
                    f"against approximate {best_approx[1]} {best_approx[0]:.2f} dB ({met})."
                )
    for steps in s["steps"]:
        bdia, null = (results["runs"].get(f"{m}/p2p/{steps}") for m in ("bdia-1", NULL_TEXT))
        if bdia and null:
            (pb, tb), (pn, tn) = ((_summary(r, kinds)["psnr_gt"], _seconds(r)) for r in (bdia, null))
            met = "met" if pb >= pn and tb <= tn / 5 else "NOT met"
            out.append(
                f"- N={steps}, P2P: {bdia['method_label']} {pb:.2f} dB to target in {tb:.3f} s an image against "
                f"null-text {pn:.2f} dB in {tn:.3f} s ({tn / tb:.1f}x the time; {met}: at least as good at <= 1/5)."
            )
    for row in results["runs"].values():
        if row["control"] == "mask":
            worst = min(_db(v) for v in row["psnr_outside_reconstruction"])
            shown = "identical" if worst >= 100 else f"{worst:.1f} dB"
            out.append(
                f"- N={row['steps']}, {row['method_label']} with the true mask: PSNR outside the mask against its "
                f"reconstruction, worst edit {shown} ({'met' if worst >= 40 else 'NOT met'}: >= 40 dB)."
            )
    for row in results["runs"].values():
        if "blend_coverage" in row and row["steps"] == s["steps"][-1]:
            region = float(np.mean(s.get("region_fraction", [math.nan])))
            out.append(
                f"- N={row['steps']}, {row['method_label']} with LocalBlend: its last mask lets the edit change "
                f"{100 * np.mean(row['blend_coverage']):.0f}% of the image "
                f"(the true edit region: {100 * region:.0f}%), "
                f"intersection over union with the region {np.mean(row['blend_iou']):.2f}."
            )
    return [
        "Targets (an exact inversion beats every approximate one with the same control; the true mask keeps the "
        "reconstruction outside it; BDIA + P2P is at least as good as null-text + P2P at a fifth of its time or less):",
        "",
        *out,
    ]


def plots(results: dict[str, Any], out_dir: Path, overwrite: bool) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import save_figure

    kinds = results["settings"]["kinds"]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    markers = "osD^v<>p"
    methods = list(dict.fromkeys(r["method"] for r in results["runs"].values()))
    controls = list(dict.fromkeys(r["control"] for r in results["runs"].values()))
    for row in results["runs"].values():
        m = _summary(row, kinds)
        ax.scatter(
            m["psnr_outside_source"],
            m["psnr_gt"],
            color=f"C{methods.index(row['method'])}",
            marker=markers[controls.index(row["control"]) % len(markers)],
            s=20 + row["steps"],
        )
    for k, key in enumerate(methods):
        label = next(r["method_label"] for r in results["runs"].values() if r["method"] == key)
        ax.scatter([], [], color=f"C{k}", label=label)
    for k, key in enumerate(controls):
        label = next(r["control_label"] for r in results["runs"].values() if r["control"] == key)
        ax.scatter([], [], color="gray", marker=markers[k % len(markers)], label=label)
    ax.set_xlabel("PSNR outside the edit region, against the source (dB; preservation)")
    ax.set_ylabel("PSNR to the ground-truth target (dB)")
    ax.set_title("Scene edits: method (colour) x control (marker); larger: more steps", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, Path(out_dir) / "scene_editing_tradeoff.png", overwrite)
    return ["scene_editing_tradeoff.png", *_edits_figure(results, out_dir, overwrite)]


def _edits_figure(results: dict[str, Any], out_dir: Path, overwrite: bool) -> list[str]:
    """One row per edit kind: source, ground-truth target, then each shown method x control."""
    import matplotlib.pyplot as plt

    from .plots import save_figure

    shown = [r for r in results["runs"].values() if "figure_images" in r]
    if not shown:
        return []
    kinds = list(results["figure_pairs"])
    columns = [("source", None), ("target (ground truth)", None)] + [
        (f"{r['method_label']}\n{r['control_label']}", r) for r in shown
    ]
    fig, axes = plt.subplots(len(kinds), len(columns), figsize=(1.1 * len(columns), 1.2 * len(kinds) + 0.6))
    axes = np.atleast_2d(axes)
    for i, kind in enumerate(kinds):
        for j, (title, row) in enumerate(columns):
            if row is None:
                image = _unpng(results["figure_pairs"][kind]["source" if j == 0 else "target"])
            else:
                image = _unpng(row["figure_images"][kind])
            ax = axes[i, j]
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=6)
            if j == 0:
                ax.set_ylabel(kind, fontsize=7)
    fig.suptitle(f"Held-out scene edits, {results['settings']['steps'][-1]} steps", fontsize=9)
    fig.tight_layout()
    save_figure(fig, Path(out_dir) / "scene_edits.png", overwrite)
    return ["scene_edits.png"]
