"""Which files of a base-model repo the worker downloads: what ``from_pretrained`` reads.

Real base repos hold much more than one pipeline. ``stabilityai/stable-diffusion-xl-base-1.0``
has the diffusers folders in fp32 *and* an fp16 variant, plus two 6.9 GB single-file
checkpoints at the root. ``black-forest-labs/FLUX.1-dev`` has its 23.8 GB ``flux1-dev.safetensors``
beside the sharded ``transformer/``. Fetching every ``*.safetensors`` downloads and stores 3–6×
what is loaded. So the worker reads ``model_index.json`` and takes only these files:

* ``model_index.json``, and the config / tokenizer files (``*.json``, ``*.txt``, ``*.model``) in the
  folder of each component it names (a ``[null, null]`` entry is no component);
* one set of weights per component (``*.safetensors``, sharded or not, with its index). That is the
  ``prefer`` variant (``fp16`` when the worker runs in float16) where the component has it, else
  the plain weights, else the one variant the component has. The variant is returned, for
  ``from_pretrained(variant=…)``, which falls back to plain weights for the components without it.

Without a ``model_index.json`` the caller keeps its broad patterns. ``from_pretrained`` then says
what is missing. Pure: file names in, file names out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

MODEL_INDEX = "model_index.json"
CONFIG_SUFFIXES = (".json", ".txt", ".model")
# name.<variant>.safetensors, name.<variant>-00001-of-00002.safetensors; index:
# name.safetensors.index.<variant>.json. A plain file has no variant (None).
_WEIGHT = re.compile(r"^[^.]+(?:\.(?P<variant>\w+))?(?:-\d{5}-of-\d{5})?\.safetensors$")
_INDEX = re.compile(r"^[^.]+\.safetensors\.index(?:\.(?P<variant>\w+))?\.json$")


@dataclass(frozen=True)
class BaseFiles:
    files: tuple[str, ...]  # repo paths to download
    variant: str | None  # for from_pretrained(variant=...)


def components(model_index: Mapping[str, object]) -> list[str]:
    """The component folders a pipeline's ``model_index.json`` names."""
    return [
        name
        for name, value in model_index.items()
        if not name.startswith("_")
        and isinstance(value, list | tuple)
        and len(value) == 2
        and all(part is not None for part in value)
    ]


def weight_variant(filename: str) -> tuple[bool, str | None]:
    """(whether ``filename`` is a weight file or its index, the variant it belongs to)."""
    name = filename.rsplit("/", 1)[-1]
    match = _WEIGHT.fullmatch(name) or _INDEX.fullmatch(name)
    return (match is not None, match["variant"] if match else None)


def base_files(
    filenames: Iterable[str], model_index: Mapping[str, object], prefer: str | None
) -> BaseFiles:
    """The files to download and the variant to load; see the module docstring."""
    folders = set(components(model_index))
    configs: list[str] = []
    weights: dict[str, dict[str | None, list[str]]] = {}  # folder -> variant -> files
    for filename in filenames:
        folder, _, name = filename.partition("/")
        if folder not in folders or "/" in name:
            continue
        is_weight, variant = weight_variant(name)
        if is_weight:
            weights.setdefault(folder, {}).setdefault(variant, []).append(filename)
        elif name.endswith(CONFIG_SUFFIXES):
            configs.append(filename)
    chosen = _choose_variant(weights.values(), prefer)
    picked = [
        filename
        for by_variant in weights.values()
        for filename in (
            by_variant.get(chosen) or by_variant.get(None) or next(iter(by_variant.values()))
        )
    ]
    return BaseFiles(tuple(sorted({MODEL_INDEX, *configs, *picked})), chosen)


def _choose_variant(
    per_component: Iterable[Mapping[str | None, list[str]]], prefer: str | None
) -> str | None:
    """``prefer`` if a component has it; else the one variant of a component without plain
    weights (None when every component has plain weights)."""
    per_component = list(per_component)
    if prefer is not None and any(prefer in by_variant for by_variant in per_component):
        return prefer
    only = {v for by_variant in per_component if None not in by_variant for v in by_variant}
    return sorted(v for v in only if v is not None)[0] if only else None
