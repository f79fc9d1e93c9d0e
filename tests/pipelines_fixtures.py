"""Tiny Stable Diffusion pipelines built from configs (random weights), saved to a temporary folder.

Nothing is downloaded: the UNet, VAE and CLIP text models are built from small configs with a fixed
seed, and the CLIP tokenizer from a vocabulary of single characters written here. Shared by the
pipeline, scheduler and CLI tests (imported by their fixtures; not a conftest, to avoid clashes).
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

SD_SCHEDULER = dict(  # Stable Diffusion 1.x's scheduler config
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


def tiny_tokenizer():
    from transformers import CLIPTokenizer

    letters = list(string.ascii_lowercase)
    tokens = letters + [c + "</w>" for c in letters] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def tiny_text_encoder(vocab_size: int, seed: int, projection: bool = False, hidden_size: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        hidden_size=hidden_size,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=vocab_size,
        max_position_embeddings=77,
        projection_dim=32,
        hidden_act="gelu",
        layer_norm_eps=1e-05,
    )
    torch.manual_seed(seed)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def tiny_vae(seed: int = 1):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=32,
    ).eval()


def build_sd(path: Path, prediction_type: str = "epsilon") -> Path:
    """A tiny SD 1.x-shaped (or, with v_prediction, SD 2.x-shaped) pipeline saved at ``path``."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    ).eval()
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=tiny_vae(),
        text_encoder=tiny_text_encoder(len(tok), seed=2),
        tokenizer=tok,
        scheduler=DDIMScheduler(**SD_SCHEDULER, prediction_type=prediction_type),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    return path


def build_sdxl(path: Path) -> Path:
    """A tiny SDXL-shaped pipeline (two text encoders, text_time added conditioning) saved at ``path``."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 time ids * 8 + pooled 32
        cross_attention_dim=64,
        norm_num_groups=32,
    ).eval()
    pipe = StableDiffusionXLPipeline(
        unet=unet,
        vae=tiny_vae(),
        text_encoder=tiny_text_encoder(len(tok), seed=2),
        tokenizer=tok,
        text_encoder_2=tiny_text_encoder(len(tok), seed=3, projection=True),
        tokenizer_2=tiny_tokenizer(),
        scheduler=EulerDiscreteScheduler(
            num_train_timesteps=1000,
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            steps_offset=1,
            timestep_spacing="leading",
        ),
        force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(path)
    return path


def make_image(size: tuple[int, int] = (32, 32), seed: int = 0):
    """A smooth RGB test image (gradients and a disc), deterministic."""
    from PIL import Image

    w, h = size
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    phase = torch.rand(3, generator=g)
    disc = (((xx - 0.5) ** 2 + (yy - 0.5) ** 2) < 0.08).float()
    rgb = torch.stack([(xx + phase[0]) % 1, (yy + phase[1]) % 1, 0.5 * disc + 0.5 * phase[2]], dim=-1)
    return Image.fromarray((rgb * 255).round().to(torch.uint8).numpy(), mode="RGB")


_BUILT: dict[str, Path] = {}
_BUILDERS = {
    "sd": lambda p: build_sd(p),
    "sd-v": lambda p: build_sd(p, prediction_type="v_prediction"),
    "sdxl": build_sdxl,
}


def model_dir(kind: str) -> Path:
    """The saved tiny pipeline of ``kind`` ("sd", "sd-v", "sdxl"), built once per test process."""
    if kind not in _BUILT:
        import atexit
        import shutil
        import tempfile

        root = Path(tempfile.mkdtemp(prefix=f"bdia-tiny-{kind}-"))
        atexit.register(shutil.rmtree, root, True)
        _BUILT[kind] = _BUILDERS[kind](root / kind)
    return _BUILT[kind]


_EDITORS: dict[str, object] = {}


def editor(kind: str):
    """A cached, silent Editor over the tiny pipeline of ``kind`` (CPU, float32 UNet)."""
    if kind not in _EDITORS:
        from bdia.editing import Editor

        _EDITORS[kind] = Editor.from_pretrained(model_dir(kind), device="cpu", progress=False)
    return _EDITORS[kind]
