"""worker/base_files.py: the files of a base repo the worker downloads (pure)."""

from __future__ import annotations

from loraplex.worker.base_files import MODEL_INDEX, base_files, components, weight_variant

INDEX = {
    "_class_name": "StableDiffusionXLPipeline",
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "image_encoder": [None, None],
}
# stabilityai/stable-diffusion-xl-base-1.0's shape, abridged.
SDXL_REPO = [
    MODEL_INDEX,
    "README.md",
    "sd_xl_base_1.0.safetensors",
    "sd_xl_base_1.0_0.9vae.safetensors",
    "sd_xl_offset_example-lora_1.0.safetensors",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "text_encoder/model.fp16.safetensors",
    "text_encoder/openvino_model.bin",
    "tokenizer/merges.txt",
    "tokenizer/vocab.json",
    "tokenizer/special_tokens_map.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.bin",
    "unet/diffusion_flax_model.msgpack",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.fp16.safetensors",
    "vae_1_0/diffusion_pytorch_model.safetensors",
    "vae_decoder/model.onnx",
    "image_encoder/model.safetensors",
]


def test_components_skip_private_keys_and_null_entries() -> None:
    assert components(INDEX) == ["unet", "vae", "text_encoder", "tokenizer", "scheduler"]


def test_weight_variants() -> None:
    assert weight_variant("diffusion_pytorch_model.safetensors") == (True, None)
    assert weight_variant("diffusion_pytorch_model.fp16.safetensors") == (True, "fp16")
    assert weight_variant("diffusion_pytorch_model-00001-of-00003.safetensors") == (True, None)
    assert weight_variant("model.fp16-00002-of-00002.safetensors") == (True, "fp16")
    assert weight_variant("diffusion_pytorch_model.safetensors.index.json") == (True, None)
    assert weight_variant("model.safetensors.index.fp16.json") == (True, "fp16")
    assert weight_variant("config.json") == (False, None)


def test_float32_takes_the_plain_folders_and_no_root_checkpoint() -> None:
    picked = base_files(SDXL_REPO, INDEX, prefer=None)
    assert picked.variant is None
    assert set(picked.files) == {
        MODEL_INDEX,
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/merges.txt",
        "tokenizer/vocab.json",
        "tokenizer/special_tokens_map.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    }


def test_float16_takes_the_fp16_variant() -> None:
    picked = base_files(SDXL_REPO, INDEX, prefer="fp16")
    assert picked.variant == "fp16"
    weights = {f for f in picked.files if f.endswith(".safetensors")}
    assert weights == {
        "text_encoder/model.fp16.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
    }


def test_sharded_weights_come_with_their_index_and_a_missing_variant_falls_back() -> None:
    repo = [
        MODEL_INDEX,
        "transformer/config.json",
        "transformer/diffusion_pytorch_model-00001-of-00002.safetensors",
        "transformer/diffusion_pytorch_model-00002-of-00002.safetensors",
        "transformer/diffusion_pytorch_model.safetensors.index.json",
        "vae/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
        "flux1-dev.safetensors",
    ]
    index = {"transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "X"]}
    picked = base_files(repo, index, prefer="fp16")
    assert picked.variant == "fp16"  # the VAE has it; from_pretrained falls back for the rest
    assert set(picked.files) == {
        MODEL_INDEX,
        "transformer/config.json",
        "transformer/diffusion_pytorch_model-00001-of-00002.safetensors",
        "transformer/diffusion_pytorch_model-00002-of-00002.safetensors",
        "transformer/diffusion_pytorch_model.safetensors.index.json",
        "vae/diffusion_pytorch_model.fp16.safetensors",
    }


def test_a_repo_with_only_a_variant_loads_that_variant() -> None:
    repo = [MODEL_INDEX, "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors"]
    picked = base_files(repo, {"unet": ["diffusers", "UNet2DConditionModel"]}, prefer=None)
    assert picked.variant == "fp16"
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in picked.files
