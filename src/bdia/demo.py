"""``bdia demo``: exact inversion and editing on the embedded digits model, in well under two minutes on a CPU.

Inverts a few held-out digits with DDIM inversion, EDICT and BDIA, reconstructs them, and edits each
to another class by regenerating from its inversion under the new class, all through the same
:class:`bdia.editing.Editor` as ``bdia invert/reconstruct/edit``. Prints a table (method,
NFE, round-trip error, pixel-identical fraction, edit accuracy by the judge classifier, time) and
writes ``figure.png`` and ``results.json`` into the output folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

METHODS = ("ddim", "edict", "bdia")
LABELS = {"ddim": "DDIM inversion", "edict": "EDICT", "bdia": "BDIA"}


def _pick(seed: int, num_images: int):
    """``num_images`` held-out digits (distinct classes while possible) and a target class for each."""
    import torch

    from .digits import NUM_CLASSES, load_digits

    test = load_digits("test")
    gen = torch.Generator().manual_seed(seed)
    classes = torch.randperm(NUM_CLASSES, generator=gen)
    order = torch.randperm(len(test), generator=gen)
    chosen: list[int] = []
    for k in range(num_images):
        want = int(classes[k % NUM_CLASSES])
        idx = next(int(i) for i in order if int(test.labels[i]) == want and int(i) not in chosen)
        chosen.append(idx)
    picked = torch.tensor(chosen)
    source = test.labels[picked]
    shift = torch.randint(1, NUM_CLASSES, (num_images,), generator=gen)
    target = (source + shift) % NUM_CLASSES
    return test.images[picked], source, target, picked


def _strip(images) -> Any:
    """(B, 1, H, W) uint8 -> one (H, B*(W+1)-1) array with 1-pixel gaps."""
    import numpy as np

    b, _, h, w = images.shape
    out = np.full((h, b * (w + 1) - 1), 96, dtype=np.uint8)  # grey gaps between the black backgrounds
    for k in range(b):
        out[:, k * (w + 1) : k * (w + 1) + w] = images[k, 0].numpy()
    return out


def _figure(path: Path, originals, source, target, rows: list[dict[str, Any]], overwrite: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io.files import atomic_path

    n = originals.shape[0]
    fig, axes = plt.subplots(len(rows), 3, figsize=(3 * (0.55 * n + 0.4), 1.25 * len(rows) + 0.5), squeeze=False)
    for r, row in enumerate(rows):
        images = (originals, row["reconstructions"], row["edits"])
        for c, (ax, im) in enumerate(zip(axes[r], images)):
            # light digits on a dark background, as the model sees them and the image commands write them
            ax.imshow(_strip(im), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(row["label"], fontsize=9)
        axes[r][0].set_title("original  " + " ".join(map(str, source.tolist())), fontsize=8)
        ident = row["pixel_identical_fraction"]
        axes[r][1].set_title(
            f"reconstruction  max err {row['round_trip_max_error']:.1e}, {100 * ident:.0f}% pixels identical",
            fontsize=8,
        )
        axes[r][2].set_title("edit to  " + " ".join(map(str, target.tolist())), fontsize=8)
    fig.suptitle(
        "held-out digits: inverted, reconstructed with the same class, regenerated with another class", fontsize=9
    )
    fig.tight_layout()
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=150)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    from .io.files import check_output_dir
    from .runtime import require, torch_threads

    # Everything that can be refused is refused here, before any model call.
    require("demo", "matplotlib", "PIL", "safetensors", "tqdm", "sklearn")
    if args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    if not 0 <= args.scene_steps <= 1000 or args.scene_steps == 1:
        raise ValueError(f"--scene-steps must be 0 (no scenes) or between 2 and 1000, got {args.scene_steps}")
    if not 1 <= args.num_images <= 100:
        raise ValueError(f"--num-images must be between 1 and 100, got {args.num_images}")
    solvers = {name: _solver(name, args) for name in METHODS}
    check_output_dir(args.out, args.overwrite)
    with torch_threads(args.threads):
        return _run(args, solvers)


def _solver(name: str, args: argparse.Namespace):
    from .solvers import make_solver

    try:
        return make_solver(name, gamma=args.gamma if name == "bdia" else None, p=args.p if name == "edict" else None)
    except ValueError as e:
        raise ValueError(f"--{'gamma' if name == 'bdia' else 'p'}: {e}") from None


def _run(args: argparse.Namespace, solvers: dict[str, Any]) -> int:
    import torch
    from tqdm import tqdm

    from .digits import load_classifier, to_model, to_uint8
    from .editing import Editor
    from .io.files import atomic_path

    out = Path(args.out)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))

    torch.manual_seed(args.seed)
    editor, judge = Editor.from_pretrained("digits", device="cpu", progress=False), load_classifier()
    originals, source, target, idx = _pick(args.seed, args.num_images)
    source_prompts, target_prompts = [str(c) for c in source.tolist()], [str(c) for c in target.tolist()]
    log(
        f"bdia demo: {args.num_images} held-out digits {source.tolist()} -> {target.tolist()}, "
        f"{args.steps} steps, guidance {args.guidance} (edits {args.edit_guidance})"
    )

    rows: list[dict[str, Any]] = []
    for name, solver in solvers.items():
        bar = tqdm(
            total=3,
            desc=f"{LABELS[name]:<15}",
            unit="phase",
            disable=args.quiet,
            file=sys.stderr,
            bar_format="{desc} {bar:20} {n}/{total}{postfix}",
        )
        bar.set_postfix_str("inverting")
        inv = editor.invert(
            originals,
            source_prompts,
            guidance_scale=args.guidance,
            num_steps=args.steps,
            strength=args.strength,
            method=solver,
        )
        bar.update()
        bar.set_postfix_str("reconstructing")
        rec = editor.reconstruct(inv)
        bar.update()
        bar.set_postfix_str("editing")
        edit = editor.edit(inv, target_prompts, guidance_scale=args.edit_guidance)
        t_invert, t_round_trip = inv.info["seconds"], inv.info["seconds"] + rec.seconds
        t_total = t_round_trip + edit.seconds
        bar.set_postfix_str(f"{t_total:.1f}s")
        bar.update()
        bar.close()
        rec8, edit8 = to_uint8(rec.latents), to_uint8(edit.latents)
        identical = rec8 == originals
        edit_pred = judge.predict(to_model(edit8))
        rows.append(
            {
                "method": name,
                "label": LABELS[name],
                "solver": solver.config(),
                "exact_inversion": solver.exact_inversion,
                "nfe_invert": inv.inversion.nfe,
                "nfe_round_trip": inv.inversion.nfe + rec.nfe,
                "nfe_edit": edit.nfe,
                "round_trip_max_error": rec.latent_error,
                "pixel_identical_fraction": float(identical.float().mean()),
                "images_pixel_identical": int(identical.flatten(1).all(1).sum()),
                "edit_accuracy": float((edit_pred == target).float().mean()),
                "edit_predicted": edit_pred.tolist(),
                "seconds_invert": round(t_invert, 3),
                "seconds_round_trip": round(t_round_trip, 3),
                "seconds_total": round(t_total, 3),
                "reconstructions": rec8,
                "edits": edit8,
            }
        )
    header = f"{'method':<15} {'NFE':>5} {'max error':>10} {'identical px':>13} {'edit acc':>9} {'time s':>7}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['label']:<15} {r['nfe_round_trip']:>5} {r['round_trip_max_error']:>10.2e} "
            f"{100 * r['pixel_identical_fraction']:>12.2f}% {100 * r['edit_accuracy']:>8.0f}% "
            f"{r['seconds_round_trip']:>7.2f}"
        )
    lines.append(
        f"NFE and time s: inversion + reconstruction of all {len(originals)} digits (wall-clock seconds, "
        f"{torch.get_num_threads()} CPU thread{'s' if torch.get_num_threads() > 1 else ''})"
    )
    table = "\n".join(lines)
    print(table)

    out.mkdir(parents=True, exist_ok=True)
    _figure(out / "figure.png", originals, source, target, rows, args.overwrite)
    results = {
        "model": "digits",
        "seed": args.seed,
        "steps": args.steps,
        "guidance": args.guidance,
        "edit_guidance": args.edit_guidance,
        "strength": args.strength,
        "held_out_indices": idx.tolist(),
        "source_classes": source.tolist(),
        "target_classes": target.tolist(),
        "round_trip_error": "max |reconstruction - original| in model space [-1, 1]; NFE and time cover "
        "inversion plus reconstruction",
        "methods": [{k: v for k, v in r.items() if k not in ("reconstructions", "edits")} for r in rows],
    }
    from . import demo_scenes

    written = [out / "figure.png"]
    why_not = "--scene-steps 0" if args.scene_steps == 0 else demo_scenes.missing()
    if why_not:
        log(f"skipped: {why_not}")
    else:
        log(f"bdia demo: held-out scene edits, {args.scene_steps} steps, guidance 3")
        results["scenes"] = demo_scenes.run(out, args.scene_steps, args.overwrite, log)
        written.append(out / "scenes.png")
    with atomic_path(out / "results.json", overwrite=args.overwrite) as tmp:
        tmp.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {', '.join(map(str, written))} and {out / 'results.json'}")
    return 0
