"""Tiny Stable Diffusion 3 and Flux pipelines built from configs (random weights), saved to a temporary folder.

Nothing is downloaded: transformers, VAE, CLIP and T5 text models come from small configs with fixed
seeds; the CLIP tokenizers reuse tests/pipelines_fixtures.py's, and the T5 tokenizer is a word-level
fast tokenizer over single letters built here.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

from pipelines_fixtures import tiny_text_encoder, tiny_tokenizer

SD3_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0)
FLUX_SCHEDULER = dict(
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)


def tiny_t5_tokenizer():
    from transformers import T5TokenizerFast

    letters = list(string.ascii_lowercase)
    pieces = ["\u2581"] + letters + ["\u2581" + c for c in letters]  # Unigram pieces, as sentencepiece's
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(p, -1.0 - 0.01 * i) for i, p in enumerate(pieces)]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=32)


T5_VOCAB = 3 + 1 + 2 * 26
CLIP_VOCAB = 2 * 26 + 2  # tests/pipelines_fixtures.py: letters, letters</w>, start and end


def tiny_t5(seed: int, d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    cfg = T5Config(
        vocab_size=T5_VOCAB,
        d_model=d_model,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(cfg).eval()


def tiny_flow_vae(seed: int = 1, shift_factor: float = 0.1159, scaling_factor: float = 1.5305):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=[32, 32],
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        sample_size=32,
        norm_num_groups=16,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=shift_factor,
        scaling_factor=scaling_factor,
    ).eval()


def build_sd3(path: Path, with_t5: bool = True) -> Path:
    """A tiny SD3-shaped pipeline (two CLIP encoders, optional T5) saved at ``path``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        caption_projection_dim=16,
        pooled_projection_dim=64,
        pos_embed_max_size=32,
    ).eval()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        vae=tiny_flow_vae(),
        text_encoder=tiny_text_encoder(CLIP_VOCAB, seed=2, projection=True),
        tokenizer=tiny_tokenizer(),
        text_encoder_2=tiny_text_encoder(CLIP_VOCAB, seed=3, projection=True),
        tokenizer_2=tiny_tokenizer(),
        text_encoder_3=tiny_t5(4) if with_t5 else None,
        tokenizer_3=tiny_t5_tokenizer() if with_t5 else None,
        scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER),
    )
    pipe.save_pretrained(path)
    return path


def build_flux(path: Path) -> Path:
    """A tiny Flux-shaped pipeline (CLIP pooled + T5, guidance embedding, packed latents) saved at ``path``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    ).eval()
    pipe = FluxPipeline(
        transformer=transformer,
        vae=tiny_flow_vae(),
        text_encoder=tiny_text_encoder(CLIP_VOCAB, seed=2),
        tokenizer=tiny_tokenizer(),
        text_encoder_2=tiny_t5(3),
        tokenizer_2=tiny_t5_tokenizer(),
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER),
    )
    pipe.save_pretrained(path)
    return path


_BUILT: dict[str, Path] = {}
_BUILDERS = {"sd3": build_sd3, "sd3-no-t5": lambda p: build_sd3(p, with_t5=False), "flux": build_flux}


def flow_model_dir(kind: str) -> Path:
    """The saved tiny pipeline of ``kind`` ("sd3", "sd3-no-t5", "flux"), built once per test process."""
    if kind not in _BUILT:
        import atexit
        import shutil
        import tempfile

        root = Path(tempfile.mkdtemp(prefix=f"bdia-tiny-{kind}-"))
        atexit.register(shutil.rmtree, root, True)
        _BUILT[kind] = _BUILDERS[kind](root / kind)
    return _BUILT[kind]
