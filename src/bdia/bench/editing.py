"""Editing quality on the digits model: which inversion gives the best success/preservation trade-off.

Held-out digits (never seen in training) are inverted under their own class with each method, then
regenerated under other classes over a sweep of edit guidance and strength (the fraction of the grid
that is inverted and regenerated; 1 = from pure noise). For every setting the shipped classifier
judges success (the edit is read as the target class) and preservation is measured against the
source image: SSIM on pixels and the distance of the classifier's penultimate features. The PIE-Bench
idea in miniature: a better inversion reaches the same edit success while keeping more of the image.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from .methods import get_methods
from .requires import DIGITS

REQUIRES = {**DIGITS, "pytorch_msssim": "the SSIM of the edits"}

__all__ = ["run", "section", "plots"]


def _settings(cfg: Any) -> dict[str, Any]:
    return {
        "num_images": cfg.editing_images,
        "targets_per_image": cfg.editing_targets,
        "steps": cfg.editing_steps,
        "strengths": tuple(cfg.editing_strengths),
        "guidances": tuple(cfg.editing_guidances),
        "invert_guidance": 1.0,
        "methods": tuple(cfg.editing_methods),
    }


def _ssim(a_uint8: torch.Tensor, b_uint8: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of 16x16 grayscale images (7x7 Gaussian window: the images are tiny)."""
    from pytorch_msssim import ssim

    return ssim(a_uint8.double(), b_uint8.double(), data_range=255.0, size_average=False, win_size=7)


def run(cfg: Any, log=print) -> dict[str, Any]:
    from ..digits import NUM_CLASSES, eps_model, load_classifier, load_digits, load_model
    from ..digits.data import to_model, to_uint8

    s = _settings(cfg)
    model, clf = load_model(), load_classifier()
    gen = torch.Generator().manual_seed(cfg.seed + 11)
    test = load_digits("test")
    pick = torch.randperm(len(test), generator=gen)[: s["num_images"]]
    source_u8, source_labels = test.images[pick], test.labels[pick]
    x0 = to_model(source_u8).double()
    # each image gets targets_per_image other classes, the same for every method
    offsets = torch.stack(
        [torch.randperm(NUM_CLASSES - 1, generator=gen)[: s["targets_per_image"]] + 1 for _ in range(len(pick))]
    )
    targets = (source_labels[:, None] + offsets) % NUM_CLASSES  # (images, targets)
    rep = targets.shape[1]
    src_feats = clf.features(to_model(source_u8)).detach()
    full_grid = model.schedule.grid(s["steps"])
    results: dict[str, Any] = {
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in s.items()},
        "methods": {},
    }
    t0 = time.perf_counter()
    for method in get_methods(s["methods"]):
        solver = method.make(torch.float64)
        rows = []
        for strength in s["strengths"]:
            grid = full_grid if strength == 1.0 else full_grid.truncated(strength)
            with torch.no_grad():
                inv = solver.invert(eps_model(model, source_labels, s["invert_guidance"]), x0, grid)
                rec = solver.solve(eps_model(model, source_labels, s["invert_guidance"]), inv, grid)
            rec_u8 = to_uint8(rec.x)
            # regenerate every image under each of its targets: repeat the inverted latents per target
            lat = tuple(z.repeat_interleave(rep, dim=0) for z in inv.latents)
            inv_rep = type(inv)(lat, inv.nfe, inv.solver, inv.grid, inv.input_dtype)
            for guidance in s["guidances"]:
                with torch.no_grad():
                    out = solver.solve(eps_model(model, targets.reshape(-1), guidance), inv_rep, grid)
                edit_u8 = to_uint8(out.x)
                with torch.no_grad():
                    pred = clf.predict(to_model(edit_u8))
                    feats = clf.features(to_model(edit_u8))
                src_rep = source_u8.repeat_interleave(rep, dim=0)
                rows.append(
                    {
                        "strength": strength,
                        "guidance": guidance,
                        "success": float((pred == targets.reshape(-1)).float().mean()),
                        "ssim": float(_ssim(src_rep, edit_u8).mean()),
                        "feature_distance": float((feats - src_feats.repeat_interleave(rep, dim=0)).norm(dim=1).mean()),
                        "reconstruction_ssim": float(_ssim(source_u8, rec_u8).mean()),
                        "reconstruction_identical": float((rec_u8 == source_u8).float().mean()),
                        "nfe_invert": inv.nfe,
                        "nfe_edit": out.nfe,
                    }
                )
            log(
                f"  editing {method.label:28s} strength {strength:.2f}: "
                + ", ".join(
                    f"g{r['guidance']:g} success {r['success']:.2f} ssim {r['ssim']:.3f}"
                    for r in rows[-len(s["guidances"]) :]
                )
            )
        results["methods"][method.key] = {"label": method.label, "rows": rows, "best_ssim_at_success": _best(rows)}
    results["seconds"] = round(time.perf_counter() - t0, 1)
    return results


SUCCESS_LEVELS = (0.5, 0.8, 0.9)


def _best(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Highest SSIM among settings whose success reaches each level (None: no setting reaches it)."""
    out = {}
    for level in SUCCESS_LEVELS:
        ok = [r["ssim"] for r in rows if r["success"] >= level]
        out[str(level)] = max(ok) if ok else None
    return out


def section(results: dict[str, Any]) -> str:
    s = results["settings"]
    lines = [
        "## Editing quality on the digits model",
        "",
        f"{s['num_images']} held-out digits inverted under their own class (guidance {s['invert_guidance']:g}, "
        f"{s['steps']} steps), each regenerated under {s['targets_per_image']} other classes for every edit "
        f"guidance in {s['guidances']} and strength in {s['strengths']}. Success: the shipped classifier reads "
        "the target class. Preservation: SSIM to the source image (7x7 window) and the distance of the "
        "classifier's features to the source's.",
        "",
        "| method | reconstruction identical px | best SSIM at success >= 0.5 | >= 0.8 | >= 0.9 |",
        "|---|---|---|---|---|",
    ]
    for _key, m in results["methods"].items():
        rec = max(r["reconstruction_identical"] for r in m["rows"])
        b = m["best_ssim_at_success"]
        cells = [f"{b[str(level)]:.3f}" if b[str(level)] is not None else "not reached" for level in SUCCESS_LEVELS]
        lines.append(f"| {m['label']} | {rec:.1%} | " + " | ".join(cells) + " |")
    ranking = _ranking(results)
    if ranking:
        lines += [
            "",
            f"Best trade-off (highest SSIM at success >= 0.8): **{ranking[0][1]}** "
            f"({ranking[0][0]:.3f}); then " + ", ".join(f"{label} {v:.3f}" for v, label in ranking[1:]) + ".",
        ]
    lines += [
        "",
        "All settings (strength, guidance: success / SSIM / feature distance):",
        "",
        "| method | "
        + " | ".join(f"s{r['strength']:g} g{r['guidance']:g}" for r in next(iter(results["methods"].values()))["rows"])
        + " |",
        "|---|" + "---|" * len(next(iter(results["methods"].values()))["rows"]),
    ]
    for m in results["methods"].values():
        lines.append(
            f"| {m['label']} | "
            + " | ".join(f"{r['success']:.2f} / {r['ssim']:.3f} / {r['feature_distance']:.2f}" for r in m["rows"])
            + " |"
        )
    return "\n".join(lines) + "\n"


def _ranking(results: dict[str, Any]) -> list[tuple[float, str]]:
    scored = [
        (m["best_ssim_at_success"]["0.8"], m["label"])
        for m in results["methods"].values()
        if m["best_ssim_at_success"]["0.8"] is not None
    ]
    return sorted(scored, reverse=True)


def plots(results: dict[str, Any], out_dir: Path, overwrite: bool) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for k, m in enumerate(results["methods"].values()):
        rows = sorted(m["rows"], key=lambda r: r["success"])
        for ax, key, name in (
            (axes[0], "ssim", "SSIM to source (higher keeps more)"),
            (axes[1], "feature_distance", "classifier feature distance to source (lower keeps more)"),
        ):
            ax.plot([r["success"] for r in rows], [r[key] for r in rows], "o-", color=f"C{k}", label=m["label"])
            ax.set_xlabel("edit success (classifier reads the target class)")
            ax.set_ylabel(name)
    axes[0].legend(fontsize=8)
    fig.suptitle("Editing trade-off on held-out digits (each point: one strength and guidance)")
    fig.tight_layout()
    save_figure(fig, Path(out_dir) / "editing_tradeoff.png", overwrite)
    return ["editing_tradeoff.png"]
