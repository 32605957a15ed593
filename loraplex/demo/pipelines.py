"""Tiny random-weight diffusers pipelines built from configs (no downloads), for demos and tests.

:func:`tiny_sd_pipeline` is a StableDiffusionPipeline (UNet block_out_channels (32, 64), 2-layer
CLIP text encoder, 2-block VAE) that draws 64x64 in ~0.1 s on CPU with 2-4 steps;
:func:`tiny_sdxl_pipeline` is the same size with SDXL's two text encoders and ``text_time``
conditioning. Both use a byte-level CLIP tokenizer built from an in-memory vocabulary (every
byte is a token, no merges), and are deterministic for a seed.

The DiT bases: :func:`tiny_flux_pipeline` is a FluxPipeline (FluxTransformer2DModel with one
double-stream and one single-stream block, 2 heads of 16, ``guidance_embeds=True`` like
Flux.1-dev, CLIP-L-like and T5 text encoders, 16-channel VAE with Flux's shift/scaling factors)
and :func:`tiny_sd3_pipeline` a StableDiffusion3Pipeline (SD3Transformer2DModel with two joint
blocks, the last ``context_pre_only`` as in SD3, two CLIP encoders with projection and a T5,
16-channel VAE with SD3's factors). Both draw 64x64 in ~0.05 s on CPU with 2 steps. The T5
tokenizer is a Unigram model over single characters built in memory (:func:`char_t5_tokenizer`).
Every component is put in ``eval()`` mode (T5's dropout would otherwise make images random).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from diffusers import (
        AutoencoderKL,
        FluxPipeline,
        StableDiffusion3Pipeline,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )
    from transformers import CLIPTextConfig, CLIPTokenizer, T5EncoderModel, T5Tokenizer

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


def _tiny_vae(**config: object) -> AutoencoderKL:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
        **{"latent_channels": 4, **config},
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


# ---------------------------------------------------------------- DiT bases (Flux, SD3)


def char_t5_tokenizer(max_length: int) -> T5Tokenizer:
    """A T5 tokenizer (Unigram, sentencepiece-style ``▁`` word starts) over printable ASCII
    characters, built in memory: no ``spiece.model`` download."""
    import string

    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    chars = sorted(set(string.ascii_letters + string.digits + string.punctuation))
    vocab += [(ch, -3.0) for ch in chars] + [("\u2581" + ch, -3.5) for ch in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)


def _tiny_t5(vocab_size: int, d_model: int) -> T5EncoderModel:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=d_model // 4,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5EncoderModel(config)


def _eval(*modules: torch.nn.Module) -> None:
    """Built modules start in training mode; from_pretrained ones in eval (match it)."""
    for module in modules:
        module.eval()


# Flux and SD3 VAEs: 16 latent channels, no quant convs.
_DIT_VAE = {"latent_channels": 16, "use_quant_conv": False, "use_post_quant_conv": False}


def tiny_flux_pipeline(seed: int = BASE_SEED) -> FluxPipeline:
    """A FluxPipeline with random weights: 1 double + 1 single block, inner width 32."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    tokenizer, tokenizer_2 = byte_level_tokenizer(), char_t5_tokenizer(512)
    with seeded(seed):
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,  # 16 latent channels packed 2x2
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            guidance_embeds=True,
            axes_dims_rope=(4, 4, 8),
        )
        vae = _tiny_vae(**_DIT_VAE, shift_factor=0.1159, scaling_factor=0.3611)
        text_encoder = CLIPTextModel(_text_config(len(tokenizer), 32))
        text_encoder_2 = _tiny_t5(len(tokenizer_2), 32)
    _eval(transformer, vae, text_encoder, text_encoder_2)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd3_pipeline(seed: int = BASE_SEED) -> StableDiffusion3Pipeline:
    """A StableDiffusion3Pipeline with random weights: 2 joint blocks, inner width 32."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection

    tokenizer_3 = char_t5_tokenizer(256)
    with seeded(seed):
        text_config = _text_config(len(byte_level_tokenizer()), 32)
        transformer = SD3Transformer2DModel(
            sample_size=32,
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=64,  # T5 width; CLIP-L + CLIP-G (32 + 32) are padded to it
            caption_projection_dim=32,
            pooled_projection_dim=2 * text_config.projection_dim,
            pos_embed_max_size=32,
        )
        vae = _tiny_vae(**_DIT_VAE, shift_factor=0.0609, scaling_factor=1.5305)
        text_encoder = CLIPTextModelWithProjection(text_config)
        text_encoder_2 = CLIPTextModelWithProjection(text_config)
        text_encoder_3 = _tiny_t5(len(tokenizer_3), 64)
    _eval(transformer, vae, text_encoder, text_encoder_2, text_encoder_3)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=byte_level_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=byte_level_tokenizer(),
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
