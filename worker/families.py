"""The base pipeline families the worker serves, and what differs between them.

Served: text-to-image ``StableDiffusionPipeline`` (SD 1.x/2.x), ``StableDiffusionXLPipeline``,
``FluxPipeline`` (Flux.1) and ``StableDiffusion3Pipeline`` (SD3/SD3.5), and their subclasses.
Anything else (img2img, inpainting, video, a pipeline without a LoRA loader) is refused at
start-up with the model id and the class, because the request schema is text-to-image.

What differs, and is read here from the pipeline rather than hard-coded per family: the
denoiser (``unet`` or ``transformer``), which components diffusers loads LoRAs into
(``_lora_loadable_modules``: Flux and SD3 never load into their T5), which call arguments the
pipeline takes (Flux has no classic negative prompt unless ``true_cfg_scale``), and the size it
renders when none is given.
"""

from __future__ import annotations

import inspect
import io

from diffusers import (
    DiffusionPipeline,
    FluxPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from torch import nn

from loraplex.shared.contract import ImageFormat
from loraplex.shared.errors import NotServable

SERVED_FAMILIES: tuple[type, ...] = (
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    FluxPipeline,
    StableDiffusion3Pipeline,
)
DENOISERS = ("unet", "transformer")


def check_servable(pipe: DiffusionPipeline, model_id: str) -> None:
    """Refuse a base this worker cannot serve, naming the model and its pipeline class."""
    if not isinstance(pipe, SERVED_FAMILIES):
        served = ", ".join(cls.__name__ for cls in SERVED_FAMILIES)
        raise NotServable(
            f"base {model_id} is a {type(pipe).__name__}; this worker serves text-to-image "
            f"pipelines: {served}"
        )
    if denoiser_name(pipe) is None:
        raise NotServable(
            f"base {model_id} ({type(pipe).__name__}) has neither a UNet nor a transformer"
        )


def denoiser_name(pipe: DiffusionPipeline) -> str | None:
    for name in DENOISERS:
        if isinstance(getattr(pipe, name, None), nn.Module):
            return name
    return None


def lora_components(pipe: DiffusionPipeline, *, text_encoders: bool) -> dict[str, nn.Module]:
    """The components diffusers loads LoRAs into, denoiser first: ``{"unet": …,
    "text_encoder": …}``; text encoders only when ``text_encoders``."""
    first = denoiser_name(pipe)
    assert first is not None  # check_servable ran
    components = {first: getattr(pipe, first)}
    if text_encoders:
        for name in getattr(pipe, "_lora_loadable_modules", ()):
            module = getattr(pipe, name, None)
            if name not in DENOISERS and isinstance(module, nn.Module):
                components[name] = module
    return components


def call_parameters(pipe: DiffusionPipeline) -> frozenset[str]:
    """The keyword arguments the pipeline's ``__call__`` accepts."""
    return frozenset(inspect.signature(type(pipe).__call__).parameters)


def native_size(pipe: DiffusionPipeline) -> tuple[int, int]:
    """(width, height) diffusers renders when called without them: the UNet's sample size
    times the VAE scale (SD-1.5 512, SDXL 1024) or the DiT pipeline's default sample size
    times its VAE scale (Flux.1 and SD3 1024)."""
    scale = int(getattr(pipe, "vae_scale_factor", 8))
    unet = getattr(pipe, "unet", None)
    sample = unet.config.sample_size if unet is not None else pipe.default_sample_size
    height, width = (sample, sample) if isinstance(sample, int) else sample
    return width * scale, height * scale


def encode(image: object, fmt: ImageFormat) -> bytes:
    """PIL image → bytes in the requested format."""
    buffer = io.BytesIO()
    pil_format = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt.value]
    image.save(buffer, format=pil_format)  # type: ignore[attr-defined]
    return buffer.getvalue()
