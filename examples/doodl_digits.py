"""DOODL with BDIA: turn real digits into other classes by gradient descent on their exact inversions.

Each held-out digit is inverted with the unconditional digits model, then its latents are optimised
so that the sample the model regenerates from them is classified as the target class, with a
proximity term keeping it near the original (bdia.optimize). Gradients run through all sampling
steps by reversal, in memory independent of the number of steps. BDIA pays one network evaluation per
step, EDICT (the original DOODL) two; both rows are timed and their peak memory measured.

    python examples/doodl_digits.py                 # writes doodl-out/doodl.png
    python examples/doodl_digits.py --quick --out /tmp/doodl.png
    python examples/doodl_digits.py --docs          # regenerates the README's figure, docs/doodl.png
"""

import argparse
from pathlib import Path

import torch

import bdia
from bdia import digits
from bdia.bench.reversible import peak_memory_mb
from bdia.io import atomic_path
from bdia.io.files import check_writable
from bdia.optimize import classifier_objective, optimize

EDITS = [(3, 8), (7, 1), (1, 7), (9, 4), (0, 6), (5, 9)]  # (class of the real digit, target class)
DEFAULT_OUT = Path("doodl-out") / "doodl.png"  # a fresh folder: an example never writes into tracked files
DOCS_FIGURE = Path(__file__).resolve().parents[1] / "docs" / "doodl.png"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the figure (default {DEFAULT_OUT})")
    where.add_argument("--docs", action="store_true", help="regenerate docs/doodl.png (replaces it)")
    # 50 steps: EDICT's sampler saturates on this model at 20 steps or fewer, even from fresh noise
    ap.add_argument("--steps", type=int, default=50, help="sampling steps")
    ap.add_argument("--iterations", type=int, default=15, help="gradient steps on the latents")
    ap.add_argument("--proximity", type=float, default=1.0)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing figure at --out")
    args = ap.parse_args()
    out, overwrite = (DOCS_FIGURE, True) if args.docs else (args.out, args.overwrite)
    try:  # before minutes of work, not after
        check_writable(out, overwrite)
    except (OSError, ValueError) as e:
        ap.error(str(e))
    steps, iterations, edits = (4, 2, EDITS[:2]) if args.quick else (args.steps, args.iterations, EDITS)
    torch.set_num_threads(1)

    model, classifier = digits.load_model(), digits.load_classifier()
    test = digits.load_digits("test")
    pick = [int((test.labels == src).nonzero()[0]) for src, _ in edits]
    x0 = digits.to_model(test.images[pick]).to(torch.float64)
    targets = torch.tensor([t for _, t in edits])
    eps = digits.eps_model(model, 0, guidance=0.0)  # unconditional: the class comes from the objective alone
    grid = model.schedule.grid(steps)
    objective = classifier_objective(classifier, targets, reference=x0, proximity=args.proximity)

    rows = []
    for label, solver, backprop in [
        ("BDIA gamma=1", bdia.BDIA(1.0), "reversible"),
        ("EDICT p=0.93 (DOODL)", bdia.EDICT(0.93), "reversible"),
        ("BDIA gamma=1, plain autograd", bdia.BDIA(1.0), "autograd"),
    ]:
        inv = solver.invert(eps, x0, grid)
        # warm-up: the first backward pass through the network allocates kernels' workspaces once
        optimize(
            solver,
            eps,
            solver.invert(eps, x0, model.schedule.grid(2)),
            model.schedule.grid(2),
            objective,
            iterations=1,
            backprop=backprop,
        )
        result, mb = peak_memory_mb(
            lambda: optimize(solver, eps, inv, grid, objective, iterations=iterations, backprop=backprop)
        )
        with torch.no_grad():
            prob = torch.softmax(classifier(result.x.float()), 1)
        hit = prob.argmax(1) == targets
        p_target = prob[torch.arange(len(targets)), targets]
        change = (result.x - x0).abs().flatten(1).mean(1)
        rows.append((label, backprop, result, mb, p_target, change))
        print(
            f"{label:30} {backprop:10} {result.seconds:6.1f} s  peak {mb:6.1f} MiB  NFE fwd {result.nfe:5d}  "
            f"hits {int(hit.sum())}/{len(targets)}  mean p(target) {p_target.mean():.2f}  "
            f"mean |change| {change.mean():.3f}"
        )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r[1] == "reversible"]
    fig, axes = plt.subplots(
        1 + len(shown), len(edits), figsize=(1.6 * len(edits), 1.9 * (1 + len(shown))), squeeze=False
    )
    for j, (src, dst) in enumerate(edits):
        axes[0, j].imshow(x0[j, 0], cmap="gray", vmin=-1, vmax=1)
        axes[0, j].set_title(f"real {src} -> {dst}", fontsize=8)
        for i, (_, _, result, _, p_target, _) in enumerate(shown, start=1):
            axes[i, j].imshow(result.x[j, 0].clamp(-1, 1), cmap="gray", vmin=-1, vmax=1)
            axes[i, j].set_title(f"p({dst}) = {p_target[j]:.2f}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    axes[0, 0].set_ylabel("inverted", fontsize=8)
    for i, (label, _, result, mb, _, _) in enumerate(shown, start=1):
        axes[i, 0].set_ylabel(f"{label}\n{result.seconds:.0f} s, {mb:.0f} MiB", fontsize=7)
    auto = next(r for r in rows if r[1] == "autograd")
    fig.suptitle(
        f"DOODL on digits: {steps} steps, {iterations} iterations; plain autograd: "
        f"{auto[2].seconds:.0f} s, {auto[3]:.0f} MiB",
        fontsize=9,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
