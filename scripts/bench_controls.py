"""Time and peak memory of edit controls: a Prompt-to-Prompt (and mutual self-attention, mask) edit against the
plain two-branch edit, on the embedded scenes model and on a UNet of SD 1.5's architecture (random weights).

    python scripts/bench_controls.py                      # scenes, 20 steps
    python scripts/bench_controls.py --sd15 --latent 32   # SD 1.5 UNet, 32x32 latents (256 px on SD), 4 steps

Times are medians over repeats with the variants interleaved in one process (a busy machine slows all alike).
Peak memory comes from one process per variant: on CUDA the peak allocated GPU memory of the edit, on the CPU the
process's peak resident memory (which includes the model and the inversion, the same for every variant). Numbers
are printed only; nothing here asserts a target.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("plain", "two-branch", "p2p", "p2p+blend", "masactrl", "mask")


def build_sd15(root: Path, latent: int) -> Path:
    """A pipeline with SD 1.5's UNet architecture (random weights), a small VAE and text encoder, saved at root."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from pipelines_fixtures import SD_SCHEDULER, tiny_text_encoder, tiny_tokenizer, tiny_vae

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=latent, cross_attention_dim=768)  # diffusers' defaults are SD 1.5's
    tok = tiny_tokenizer()
    pipe = StableDiffusionPipeline(
        unet=unet.eval(),
        vae=tiny_vae(),
        text_encoder=tiny_text_encoder(len(tok), seed=2, hidden_size=768),
        tokenizer=tok,
        scheduler=DDIMScheduler(**SD_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(root)
    return root


def setup(args: argparse.Namespace):
    """The editor, the inversion, the target prompt and the controls of every variant."""
    import torch

    from bdia.editing import Control, Editor, Mask, MutualSelfAttention, PromptToPrompt

    torch.set_num_threads(args.threads)
    if args.sd15:
        ed = Editor.from_pretrained(args.sd15_dir, device=args.device, progress=False)
        from PIL import Image

        image = Image.new("RGB", ed.backend.default_size, (120, 90, 60))
        source, target, blend = "a cat sat", "a dog sat", ("cat", "dog")
    else:
        import importlib

        render = importlib.import_module("bdia.scenes.render")
        ed = Editor.from_pretrained("scenes", device=args.device, progress=False)
        pair = render.held_out_edit_pairs(1, kinds=["colour"])[0]
        image, source, target = pair.source_image, pair.source_caption, pair.target_caption
        blend = pair.changed_words
    inv = ed.invert(image, source, guidance_scale=args.guidance, num_steps=args.steps)
    controls = {
        "plain": lambda: None,
        "two-branch": Control,
        "p2p": PromptToPrompt,
        "p2p+blend": lambda: PromptToPrompt(blend=blend),
        "masactrl": lambda: MutualSelfAttention(start_step=min(4, args.steps - 1)),
        "mask": lambda: Mask(torch.ones(8, 8)),
    }
    return ed, inv, target, controls


def sync(args: argparse.Namespace) -> None:
    import torch

    if args.device.startswith("cuda"):
        torch.cuda.synchronize()


def run_times(args: argparse.Namespace, variants: list[str]) -> dict[str, float]:
    """Median seconds of each variant's edit, the variants interleaved so that a busy machine hits all alike."""
    ed, inv, target, controls = setup(args)
    times: dict[str, list[float]] = {v: [] for v in variants}
    for v in variants:
        ed.edit(inv, target, control=controls[v]())  # warm-up
    for _ in range(args.repeats):
        for v in variants:
            control = controls[v]()
            sync(args)
            start = time.perf_counter()
            ed.edit(inv, target, control=control)
            sync(args)
            times[v].append(time.perf_counter() - start)
    return {v: statistics.median(t) for v, t in times.items()}


def run_memory(args: argparse.Namespace, variant: str) -> int:
    """Peak memory of one variant's edit: allocated GPU memory on CUDA, else this process's peak RSS."""
    import torch

    ed, inv, target, controls = setup(args)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    ed.edit(inv, target, control=controls[variant]())
    sync(args)
    if args.device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sd15", action="store_true", help="SD 1.5's UNet architecture instead of the scenes model")
    p.add_argument("--latent", type=int, default=32, help="SD 1.5 latent size (64 = 512 px); default 32")
    p.add_argument("--steps", type=int, default=None, help="edit steps (default 20 scenes, 4 SD 1.5)")
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--sd15-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.steps is None:
        args.steps = 4 if args.sd15 else 20
    if args.one:
        print(json.dumps(run_memory(args, args.one)))
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bdia-bench-controls-") as tmp:
        extra = []
        if args.sd15:
            extra = ["--sd15", "--sd15-dir", str(build_sd15(Path(tmp) / "sd15", args.latent))]
        variants = args.variants.split(",")
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown:
            raise SystemExit(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
        common = ["--steps", str(args.steps), "--guidance", str(args.guidance), "--device", args.device]
        common += ["--threads", str(args.threads), *extra]
        rows = []
        for variant in variants:  # each in its own process: its peak memory is its own
            cmd = [sys.executable, __file__, "--one", variant, *common]
            out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            if out.returncode != 0:
                raise SystemExit(f"{variant} failed:\n{out.stderr[-2000:]}")
            rows.append({"variant": variant, "peak_bytes": json.loads(out.stdout.strip().splitlines()[-1])})
        if args.sd15:
            args.sd15_dir = extra[-1]
        seconds = run_times(args, variants)
        for r in rows:
            r["seconds"] = seconds[r["variant"]]
    model = f"SD 1.5 UNet, {args.latent}x{args.latent} latents" if args.sd15 else "scenes model, 32x32"
    memory = "peak GPU memory" if args.device.startswith("cuda") else "peak process RSS"
    print(f"{model}, {args.steps} steps, guidance {args.guidance}, {args.device}, {args.threads} thread(s)")
    base = next((r for r in rows if r["variant"] == "two-branch"), rows[0])
    print(f"{'variant':<12} {'seconds':>9} {'x two-branch':>13} {memory + ' MiB':>22} {'x two-branch':>13}")
    for r in rows:
        print(
            f"{r['variant']:<12} {r['seconds']:>9.3f} {r['seconds'] / base['seconds']:>13.2f} "
            f"{r['peak_bytes'] / 2**20:>22.1f} {r['peak_bytes'] / base['peak_bytes']:>13.2f}"
        )


if __name__ == "__main__":
    main()
