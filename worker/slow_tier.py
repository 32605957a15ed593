"""The slow tier: diffusers' own ``load_lora_weights`` / ``unload_lora_weights``.

Only for adapters the slot cannot express (DoRA, LoRA biases, LoKr, Flux Control LoRAs, modules
or ranks outside the slot as configured; ``convert.py`` gives the reason). Never fused:
diffusers' fuse/unfuse is not bit-exact. Unloading after every such request keeps the base
pristine; on Flux it also undoes a Control LoRA's widened input layer.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path

from diffusers import DiffusionPipeline
from loraplex.worker.adapters import AdapterKey
from loraplex.worker.convert import SlowReason

from loraplex.shared.errors import NotServable

SLOW_ADAPTER_NAME = "loraplex_slow"


@dataclass
class SlowTier:
    """Adapters known not to fit the slot (their local file and the reason), and the one
    loaded now."""

    pipe: DiffusionPipeline
    paths: dict[AdapterKey, tuple[Path, SlowReason]] = field(default_factory=dict)
    loaded: AdapterKey | None = None

    def known(self, key: AdapterKey) -> tuple[Path, SlowReason] | None:
        """The file and reason of a known slow adapter, if its file is still on disk (disk
        trimming may delete it)."""
        known = self.paths.get(key)
        return known if known is not None and known[0].exists() else None

    def load(self, key: AdapterKey, path: Path) -> None:
        """Load ``path`` with diffusers; on any failure nothing stays loaded (422)."""
        self.unload()
        # Marked loaded before loading: whatever fails half-way, unload() removes it.
        self.loaded = key
        try:
            self.pipe.load_lora_weights(
                str(path.parent),
                weight_name=path.name,
                adapter_name=SLOW_ADAPTER_NAME,
                use_safetensors=True,  # never diffusers' pickle fallback
            )
        except Exception as exc:  # noqa: BLE001 - diffusers/peft raise many types on bad files
            self.unload()  # a half-loaded adapter must not touch base images
            self.paths.pop(key, None)
            raise NotServable(
                f"adapter {key} cannot be loaded on this base: {type(exc).__name__}: {exc}"
            ) from None

    def unload(self) -> None:
        if self.loaded is None:
            return
        unload = self.pipe.unload_lora_weights
        if "reset_to_overwritten_params" in inspect.signature(unload).parameters:
            unload(reset_to_overwritten_params=True)  # Flux: restore a widened input layer
        else:
            unload()
        self.loaded = None
