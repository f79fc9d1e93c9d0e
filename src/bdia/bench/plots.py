"""The report's figures (matplotlib, Agg backend): error and fidelity against NFE, time per method."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io.files import atomic_path

PANELS = (
    ("round_trip", "max", "round-trip error (max |x0' - x0|)", "nfe_rt"),
    ("fidelity", "rms", "inverted noise vs exact ODE (rms)", "nfe_rt"),
    ("accuracy", "rms", "sample vs exact ODE (rms)", "nfe_sample"),
)


def save_figure(fig, path: Path, overwrite: bool) -> None:
    """Write ``fig`` as a PNG atomically (no timestamp metadata, so reruns give the same bytes) and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path, overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)


def error_vs_nfe(workload: dict[str, Any], title: str, path: Path, overwrite: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    colors: dict[str, str] = {}
    for key, res in workload["results"].items():
        method, dtype = key.split("/")
        color = colors.setdefault(method, f"C{len(colors)}")
        style = "-" if dtype == "float64" else "--"
        rows = list(res["by_steps"].values())
        for ax, (measure, stat, ylabel, nfe_kind) in zip(axes, PANELS):
            if dtype != "float64" and measure != "round_trip":
                continue
            xs, ys = [], []
            for r in rows:
                nfe = (
                    r.get("nfe_invert", 0) + r.get("nfe_reconstruct", 0)
                    if nfe_kind == "nfe_rt"
                    else r.get("nfe_sample")
                )
                y = r[measure][stat]
                if nfe and y is not None and y == y and y < float("inf"):
                    xs.append(nfe)
                    ys.append(max(y, 1e-17))
            if xs:
                ax.loglog(
                    xs,
                    ys,
                    style,
                    marker="o",
                    ms=3,
                    color=color,
                    label=res["label"] if (measure == "round_trip" and dtype == "float64") else None,
                )
            ax.set_xlabel("NFE (invert + reconstruct)" if nfe_kind == "nfe_rt" else "NFE (sampling)")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    for ax in axes:
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    axes[0].set_title("solid: float64 state, dashed: float32", fontsize=8)
    for ax in axes[1:]:
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, min(hi, 1e2))  # diverging runs (small gamma) leave the plot
    axes[1].set_title("float64 state; runs above the top diverged", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.legend(loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    save_figure(fig, path, overwrite)
    plt.close(fig)


def time_per_method(unet: dict[str, Any], path: Path, overwrite: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    rows = unet["invert_reconstruct"]
    labels = [r["label"] for r in rows.values()]
    secs = [r["cpu_seconds"] for r in rows.values()]
    axes[0].bar(labels, secs, color=[f"C{i}" for i in range(len(labels))])
    for i, r in enumerate(rows.values()):
        axes[0].text(i, r["cpu_seconds"], f"{r['cpu_ratio_to_ddim']:.3f}x", ha="center", va="bottom", fontsize=9)
    axes[0].set_ylabel("CPU seconds (median)")
    s = unet["setup"]
    axes[0].set_title(
        f"invert + reconstruct, {s['steps']} steps, UNet x{s['width']:g}, latent {s['latent_shape'][2]}^2", fontsize=9
    )
    arith = unet["arithmetic_fraction"]
    keys = list(arith)
    vals = [100 * arith[k] for k in keys]
    axes[1].bar(keys, vals, color="C7")
    for i, v in enumerate(vals):
        axes[1].text(i, v, f"{v:.2g}%", ha="center", va="bottom", fontsize=8)
    axes[1].axhline(3.0, color="r", ls="--", lw=1, label="3% target")
    axes[1].set_yscale("log")
    axes[1].set_ylim(min(vals) / 3, 10.0)
    axes[1].set_ylabel("solver arithmetic per step, % of one UNet forward")
    axes[1].tick_params(axis="x", labelrotation=30, labelsize=8)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, overwrite)
    plt.close(fig)
