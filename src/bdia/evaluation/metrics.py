"""PIE-Bench's metrics, computed as its authors' evaluation script (PnPInversion, ``evaluation/``) defines them.

Images are 8-bit RGB arrays (H, W, 3); ``mask`` is PIE's decoded edit mask (H, W) of 0/1, its border already
set to 1 (:func:`bdia.evaluation.pie.mask_decode`). The rules (docs/pie.md has the full account):

- "unedit part" metrics multiply *both* images by ``1 - mask`` (pixels in [0, 1]) and score the whole
  products: the zeroed edit region counts as agreeing pixels, as in the authors' script. NaN when
  ``1 - mask`` is empty.
- PSNR (data range 1), MSE and SSIM (Gaussian 11x11, sigma 1.5, data range 1) are torchmetrics' functions on
  float32 pixels; LPIPS is the SqueezeNet variant on pixels in [-1, 1].
- structure distance: the mean squared difference of the self-similarity (cosine) matrices of the last
  block's attention keys of DINO ViT-B/8, for the whole images. Like the authors' script, the pixels go in
  as 0..255 floats (not 0..1) before the 224 resize and the ImageNet normalisation.
- CLIP similarity: torchmetrics' CLIPScore, ``max(100 * cos(image, text), 0)``; the edit part is the edited
  image times ``mask`` (8-bit), scored against the editing prompt.

Networks load only from local paths (:class:`PieMetrics`); a metric whose network is not given is skipped
(NaN), and :attr:`PieMetrics.skipped` says why.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "METRICS",
    "NETWORK_OF",
    "ClipSimilarity",
    "DinoStructure",
    "Lpips",
    "PieMetrics",
    "masked",
    "mse",
    "psnr",
    "squeezenet1_1_features",
    "ssim",
]

# The metrics of PIE-Bench's evaluation (its default list, in its order).
METRICS = (
    "structure_distance",
    "psnr_unedit_part",
    "lpips_unedit_part",
    "mse_unedit_part",
    "ssim_unedit_part",
    "clip_similarity_source_image",
    "clip_similarity_target_image",
    "clip_similarity_target_image_edit_part",
)
# Which network (flag) each metric needs; the others need none.
NETWORK_OF = {
    "structure_distance": "dino",
    "lpips_unedit_part": "lpips",
    "clip_similarity_source_image": "clip",
    "clip_similarity_target_image": "clip",
    "clip_similarity_target_image_edit_part": "clip",
}


def _torchmetrics() -> Any:
    try:
        import torchmetrics
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("PIE-Bench metrics need torchmetrics: pip install 'bdia[eval]'") from e
    return torchmetrics


# ----- pixel metrics ---------------------------------------------------------------------------------
def masked(image: np.ndarray, mask: np.ndarray | None) -> torch.Tensor:
    """An 8-bit (H, W, 3) image as float32 (1, 3, H, W) in [0, 1], times ``mask`` (H, W) where given."""
    x = np.asarray(image).astype(np.float32) / 255
    if mask is not None:
        x = x * np.asarray(mask, dtype=np.float32)[..., None]
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two (1, 3, H, W) images in [0, 1] (inf when they are equal)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    _torchmetrics()
    return float(peak_signal_noise_ratio(a, b, data_range=1.0))


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared error over all pixels and channels."""
    from torchmetrics.functional import mean_squared_error

    _torchmetrics()
    return float(mean_squared_error(a.contiguous(), b.contiguous()))


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """SSIM with torchmetrics' defaults (Gaussian 11x11, sigma 1.5, k1 0.01, k2 0.03), data range 1.

    Images smaller than the 11x11 window have no valid window: refused (ValueError)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    _torchmetrics()
    if min(a.shape[-2:]) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11 pixels, got {a.shape[-1]}x{a.shape[-2]}")
    value = structural_similarity_index_measure(a, b, data_range=1.0)
    return float(value if isinstance(value, torch.Tensor) else value[0])


# ----- LPIPS (SqueezeNet) ---------------------------------------------------------------------------------
class _Fire(torch.nn.Module):
    """SqueezeNet's fire module, with torchvision's parameter names."""

    def __init__(self, inplanes: int, squeeze: int, expand1x1: int, expand3x3: int):
        super().__init__()
        self.squeeze = torch.nn.Conv2d(inplanes, squeeze, kernel_size=1)
        self.expand1x1 = torch.nn.Conv2d(squeeze, expand1x1, kernel_size=1)
        self.expand3x3 = torch.nn.Conv2d(squeeze, expand3x3, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.squeeze(x))
        return torch.cat([torch.relu(self.expand1x1(x)), torch.relu(self.expand3x3(x))], 1)


def squeezenet1_1_features() -> torch.nn.Sequential:
    """SqueezeNet 1.1's feature layers, laid out (indices, names, shapes) as torchvision's ``features``, so a
    torchvision checkpoint's ``features.*`` tensors load into it. Defined here because torchmetrics builds
    it through torchvision, which is not always installable beside a given torch build."""

    def pool() -> torch.nn.MaxPool2d:
        return torch.nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)

    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 64, kernel_size=3, stride=2),
        torch.nn.ReLU(),
        pool(),
        _Fire(64, 16, 64, 64),
        _Fire(128, 16, 64, 64),
        pool(),
        _Fire(128, 32, 128, 128),
        _Fire(256, 32, 128, 128),
        pool(),
        _Fire(256, 48, 192, 192),
        _Fire(384, 48, 192, 192),
        _Fire(384, 64, 256, 256),
        _Fire(512, 64, 256, 256),
    )


# LPIPS taps SqueezeNet after these feature layers (torchmetrics' and the lpips package's slices).
_LPIPS_TAPS = (1, 4, 7, 9, 10, 11, 12)
_LPIPS_CHANNELS = (64, 128, 256, 384, 384, 512, 512)


class Lpips(torch.nn.Module):
    """LPIPS v0.1 with the SqueezeNet backbone, as torchmetrics' ``LearnedPerceptualImagePatchSimilarity
    (net_type="squeeze")`` computes it: scale the [-1, 1] inputs (LPIPS's shift/scale), take the 7 tapped
    activations, normalise each pixel's feature vector to unit length, weight the squared differences with
    the learned 1x1 layers and average over the image; the sum over layers is the distance.

    ``backbone``: a torchvision ``squeezenet1_1`` checkpoint (state dict; its ``features.*`` tensors are
    used). ``linear``: the learned layer weights (``lin{k}.model.1.weight``; default: the file torchmetrics
    ships, lpips_models/squeeze.pth).
    """

    shift: torch.Tensor
    scale: torch.Tensor

    def __init__(self, backbone: str | os.PathLike, linear: str | os.PathLike | None = None):
        super().__init__()
        self.features = squeezenet1_1_features()
        self.lins = torch.nn.ModuleList(torch.nn.Conv2d(c, 1, 1, bias=False) for c in _LPIPS_CHANNELS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])
        state = _load_state(backbone, "--lpips")
        wanted = self.features.state_dict()
        got = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        problems = sorted(set(wanted) ^ set(got)) or [
            k for k in wanted if tuple(wanted[k].shape) != tuple(got[k].shape)
        ]
        if problems:
            raise ValueError(
                f"--lpips {backbone}: not a torchvision squeezenet1_1 checkpoint (features.{problems[0]} is "
                "missing, unexpected or of another shape)"
            )
        self.features.load_state_dict(got)
        if linear is None:
            linear = Path(_torchmetrics().__file__).parent / "functional" / "image" / "lpips_models" / "squeeze.pth"
        lin = _load_state(linear, "LPIPS linear layers")
        with torch.no_grad():
            for k, conv in enumerate(self.lins):
                if isinstance(conv, torch.nn.Conv2d):
                    conv.weight.copy_(lin[f"lin{k}.model.1.weight"])
        self.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The distance of (B, 3, H, W) images in [-1, 1], one value per image."""
        fa, fb = (self.scale_input(x) for x in (a, b))
        total = torch.zeros(a.shape[0], dtype=a.dtype, device=a.device)
        lins: list[torch.nn.Module] = list(self.lins)
        k = 0
        for i, layer in enumerate(self.features):
            fa, fb = layer(fa), layer(fb)
            if i in _LPIPS_TAPS:
                na = fa / torch.sqrt(1e-8 + (fa**2).sum(1, keepdim=True))
                nb = fb / torch.sqrt(1e-8 + (fb**2).sum(1, keepdim=True))
                total = total + lins[k]((na - nb) ** 2).mean((1, 2, 3))
                k += 1
        return total

    def scale_input(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


def _load_state(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what}: no file at {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle that is not plain tensors, or not a torch file at all
        raise ValueError(f"{what} {p}: not a state dict of tensors ({type(e).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{what} {p}: not a state dict of tensors")
    return state


# ----- DINO structure distance ---------------------------------------------------------------------------
def _resize_short_side(x: torch.Tensor, size: int = 224, max_size: int = 480) -> torch.Tensor:
    """torchvision's ``Resize(size, max_size)`` on a (B, C, H, W) tensor: the short side to ``size``, the long
    side in proportion (at most ``max_size``), bilinear without antialiasing (torchvision 0.13, the version
    the authors' environment pins)."""
    h, w = x.shape[-2:]
    short, long = min(h, w), max(h, w)
    new_short, new_long = size, int(size * long / short)
    if new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    out = (new_short, new_long) if h <= w else (new_long, new_short)
    return torch.nn.functional.interpolate(x, size=out, mode="bilinear", align_corners=False)


def _last_key_projection(model: Any) -> torch.nn.Module:
    """The key projection of a transformers ViT's last block (the names changed in transformers 5)."""
    layers = getattr(model, "layers", None)
    if layers is None:
        layers = model.encoder.layer
    attn = layers[-1].attention
    for name in ("k_proj", "key"):
        if hasattr(attn, name):
            return getattr(attn, name)
    return attn.attention.key


class DinoStructure:
    """PIE-Bench's structure distance with a transformers ``ViTModel`` (DINO ViT-B/8: ``facebook/dino-vitb8``)
    loaded from a local folder; the keys of the last block (block 11 of ViT-B/8) are hooked."""

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu"):
        from transformers import ViTModel

        self.model = ViTModel.from_pretrained(os.fspath(path), add_pooling_layer=False)
        torch.nn.Module.to(self.model, device)
        self.model.eval().requires_grad_(False)
        self.device = torch.device(device)
        self.mean = torch.tensor([0.485, 0.456, 0.406], device=device)[:, None, None]
        self.std = torch.tensor([0.229, 0.224, 0.225], device=device)[:, None, None]

    @torch.no_grad()
    def self_similarity(self, image: np.ndarray) -> torch.Tensor:
        """The (tokens, tokens) cosine self-similarity of the last block's keys for an 8-bit (H, W, 3) image."""
        x = torch.from_numpy(np.asarray(image).astype(np.float32).transpose(2, 0, 1)).to(self.device)
        x = (_resize_short_side(x[None])[0] - self.mean) / self.std  # 0..255 in, as the authors' script
        keys: list[torch.Tensor] = []
        hook = _last_key_projection(self.model).register_forward_hook(lambda m, i, o: keys.append(o))
        try:
            self.model(pixel_values=x[None], interpolate_pos_encoding=True)
        finally:
            hook.remove()
        k = keys[-1][0]  # (tokens, heads * head_dim): the heads' keys side by side
        norm = k.norm(dim=1, keepdim=True)
        return (k @ k.T) / torch.clamp(norm @ norm.T, min=1e-8)

    def distance(self, source: np.ndarray, edited: np.ndarray) -> float:
        a, b = self.self_similarity(edited), self.self_similarity(source)
        return float(torch.nn.functional.mse_loss(a, b))


# ----- CLIP similarity ------------------------------------------------------------------------------------
class _ClipEmbeddings(torch.nn.Module):
    """A CLIPModel whose ``get_*_features`` return the projected embeddings as tensors, as torchmetrics expects
    (transformers 5 returns them in an output object's ``pooler_output``)."""

    def __init__(self, model: Any):
        super().__init__()
        self.model = model
        self.config = model.config

    @staticmethod
    def _tensor(out: Any) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._tensor(self.model.get_image_features(pixel_values=pixel_values))

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._tensor(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


class ClipSimilarity:
    """torchmetrics' ``CLIPScore`` over a transformers ``CLIPModel`` + ``CLIPProcessor`` from a local folder
    (PIE-Bench: ``openai/clip-vit-large-patch14``)."""

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu"):
        from torchmetrics.multimodal.clip_score import CLIPScore
        from transformers import CLIPModel, CLIPProcessor

        _torchmetrics()
        model = _ClipEmbeddings(CLIPModel.from_pretrained(os.fspath(path)).eval().requires_grad_(False))
        processor = CLIPProcessor.from_pretrained(os.fspath(path))
        # CLIPScore takes a callable giving (model, processor); the adapter stands in for the CLIPModel.
        self.metric = CLIPScore(model_name_or_path=lambda: (model, processor)).to(device)  # type: ignore[arg-type,return-value]
        self.device = torch.device(device)

    @torch.no_grad()
    def score(self, image: np.ndarray, text: str) -> float:
        x = torch.from_numpy(np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)))
        self.metric.reset()
        return float(self.metric(x.to(self.device), text))


# ----- all of them ------------------------------------------------------------------------------------------
class PieMetrics:
    """The PIE-Bench metrics of one edit; networks from local paths, each one optional.

    Args:
        dino: a transformers ViTModel folder (DINO ViT-B/8), or None to skip structure distance.
        clip: a transformers CLIPModel + CLIPProcessor folder (CLIP ViT-L/14), or None to skip the CLIP scores.
        lpips: a torchvision squeezenet1_1 checkpoint, or None to skip LPIPS.
    """

    def __init__(
        self,
        dino: str | os.PathLike | None = None,
        clip: str | os.PathLike | None = None,
        lpips: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
    ):
        _torchmetrics()
        self.paths = {"dino": dino, "clip": clip, "lpips": lpips}
        for flag, path in self.paths.items():
            if path is not None and not Path(path).exists():
                raise FileNotFoundError(f"--{flag} {path}: no such file or folder")
        self.dino = DinoStructure(dino, device) if dino is not None else None
        self.clip = ClipSimilarity(clip, device) if clip is not None else None
        self.lpips = Lpips(lpips).to(device) if lpips is not None else None
        self.device = torch.device(device)

    @property
    def skipped(self) -> dict[str, str]:
        """Metric -> why it is NaN in every row (its network was not given)."""
        return {
            m: f"skipped: no --{net} given (its network loads only from a local path)"
            for m, net in NETWORK_OF.items()
            if self.paths[net] is None
        }

    def compute(
        self, source: np.ndarray, edited: np.ndarray, mask: np.ndarray, source_prompt: str, target_prompt: str
    ) -> dict[str, float]:
        """All of :data:`METRICS` for one edit (NaN: skipped, or no pixel in the region the metric uses)."""
        if source.shape != edited.shape:
            raise ValueError(
                f"the edited image is {edited.shape[1]}x{edited.shape[0]}, the source "
                f"{source.shape[1]}x{source.shape[0]}: PIE-Bench compares images of one size"
            )
        if mask.shape != source.shape[:2]:
            raise ValueError(
                f"the mask is {mask.shape[1]}x{mask.shape[0]}, the image {source.shape[1]}x{source.shape[0]}"
            )
        nan = math.nan
        out: dict[str, float] = dict.fromkeys(METRICS, nan)
        keep = 1.0 - np.asarray(mask, dtype=np.float32)
        if self.dino is not None:
            out["structure_distance"] = self.dino.distance(source, edited)
        if keep.sum() > 0:
            a, b = masked(source, keep), masked(edited, keep)
            out["psnr_unedit_part"] = psnr(a, b)
            out["mse_unedit_part"] = mse(a, b)
            out["ssim_unedit_part"] = ssim(a, b)
            if self.lpips is not None:
                dev = self.device
                out["lpips_unedit_part"] = float(self.lpips(a.to(dev) * 2 - 1, b.to(dev) * 2 - 1)[0])
        if self.clip is not None:
            out["clip_similarity_source_image"] = self.clip.score(source, source_prompt)
            out["clip_similarity_target_image"] = self.clip.score(edited, target_prompt)
            if mask.sum() > 0:
                part = (np.asarray(edited) * np.asarray(mask, dtype=np.float64)[..., None]).astype(np.uint8)
                out["clip_similarity_target_image_edit_part"] = self.clip.score(part, target_prompt)
        return out


def summarise(rows: list[dict[str, Any]], metrics: tuple[str, ...] = METRICS) -> dict[str, dict[str, Any]]:
    """Per metric: the mean over the rows whose value is not NaN (as a NaN-skipping mean of the authors' CSV
    does), the number of values averaged and the number of NaN rows. An infinite PSNR (unedited part kept
    exactly) is kept, so the mean is then inf; ``finite_mean`` leaves those rows out and says how many."""
    out: dict[str, dict[str, Any]] = {}
    for m in metrics:
        values = [float(r[m]) for r in rows if m in r and r[m] is not None]
        ok = [v for v in values if not math.isnan(v)]
        finite = [v for v in ok if math.isfinite(v)]
        out[m] = {
            "mean": sum(ok) / len(ok) if ok else math.nan,
            "count": len(ok),
            "nan": len(values) - len(ok),
            "finite_mean": sum(finite) / len(finite) if finite else math.nan,
            "infinite": len(ok) - len(finite),
        }
    return out
