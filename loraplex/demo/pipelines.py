"""Tiny random-weight diffusers pipelines built from configs (no downloads), for demos and tests.

:func:`tiny_sd_pipeline` is a StableDiffusionPipeline (UNet block_out_channels (32, 64), 2-layer
CLIP text encoder, 2-block VAE) that draws 64x64 in ~0.1 s on CPU with 2-4 steps;
:func:`tiny_sdxl_pipeline` is the same size with SDXL's two text encoders and ``text_time``
conditioning. Both use a byte-level CLIP tokenizer built from an in-memory vocabulary (every
byte is a token, no merges), and are deterministic for a seed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTokenizer

BASE_SEED = 0


@contextmanager
def seeded(seed: int) -> Iterator[torch.Generator]:
    """Seed torch's global RNG (module constructors use it) without leaking into the caller."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield torch.Generator().manual_seed(seed)


def byte_level_tokenizer() -> CLIPTokenizer:
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    alphabet = sorted(ByteLevel.alphabet())
    for suffix in ("", "</w>"):
        vocab.update({ch + suffix: len(vocab) + i for i, ch in enumerate(alphabet)})
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _text_config(vocab_size: int, hidden_size: int) -> CLIPTextConfig:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        projection_dim=32,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def _tiny_vae() -> AutoencoderKL:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
    )


def _scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )


def tiny_sd_pipeline(
    seed: int = BASE_SEED, cross_attention_dim: int = 32
) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline with random weights (``cross_attention_dim`` varies the arch)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = byte_level_tokenizer()
    with seeded(seed):
        unet = UNet2DConditionModel(
            sample_size=32,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        vae = _tiny_vae()
        text_encoder = CLIPTextModel(_text_config(len(tokenizer), cross_attention_dim))
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_pipeline(seed: int = BASE_SEED) -> StableDiffusionXLPipeline:
    """A StableDiffusionXLPipeline with random weights: two 32-wide text encoders (so the
    UNet's cross-attention is 64 wide) and ``text_time`` added conditioning."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = byte_level_tokenizer()
    time_embed_dim = 8
    with seeded(seed):
        text_config = _text_config(len(tokenizer), 32)
        unet = UNet2DConditionModel(
            sample_size=32,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=time_embed_dim,
            # 6 size/crop ids embedded plus the pooled text embedding of text_encoder_2.
            projection_class_embeddings_input_dim=6 * time_embed_dim + text_config.projection_dim,
            cross_attention_dim=2 * text_config.hidden_size,
            norm_num_groups=8,
        )
        vae = _tiny_vae()
        text_encoder = CLIPTextModel(text_config)
        text_encoder_2 = CLIPTextModelWithProjection(text_config)
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=byte_level_tokenizer(),
        unet=unet,
        scheduler=_scheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
