"""What ``loraplex up`` prints once it is ready: the playground, copy-paste requests, metrics.

Pure: strings in, lines out (``up.py`` prints them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from loraplex.embedded.supervise import ChildSpec


def banner_example(
    loras: Mapping[str, Sequence[str]], bases: Sequence[str]
) -> tuple[str, str | None]:
    """The base and LoRA the banner's copy-paste requests use: the first LoRA of a served base,
    with that base (the ``lora`` header form is refused with any other), else the first base."""
    pairs = ((base, lora) for lora, of in loras.items() for base in bases if base in of)
    return next(pairs, (bases[0], None))


def usage_lines(
    url: str, base: str, lora: str | None, worker_metrics: Sequence[tuple[str, str]] = ()
) -> list[str]:
    """What we print once ready: the playground's URL first, then copy-paste requests, then
    where the metrics are (``worker_metrics``: each worker's name and ``/metrics`` URL)."""
    body = '-d \'{"inputs": "a red fox"}\''
    lines = [
        f"loraplex is serving on {url}/  (open it in a browser: the playground)",
        f"  base:  curl -s {url}/models/{base} {body} -o base.png",
    ]
    if lora:
        lines.append(f"  LoRA:  curl -s {url}/models/{lora} {body} -o lora.png")
        seed_form = f"curl -s -H 'lora: {lora}' {url}/models/{base} {body} -o lora2.png"
        lines.append(f"  seed's form: {seed_form}")
    client = f'InferenceClient(base_url="{url}/models/{lora or base}")'
    lines += [
        "  Python: from huggingface_hub import InferenceClient",
        f'          {client}.text_to_image("a red fox").save("fox.png")',
        f"  metrics: {url}/metrics   models: {url}/v1/models   (Ctrl-C stops)",
    ]
    lines += [
        f"  worker metrics: {name.removeprefix('worker ')}  {metrics}"
        for name, metrics in worker_metrics
    ]
    return lines


def worker_metrics_urls(workers: Mapping[str, Sequence[ChildSpec]]) -> list[tuple[str, str]]:
    """Each worker's name and ``/metrics`` URL (its health port, where ``/readyz`` is)."""
    return [
        (spec.name, str(spec.ready_url).removesuffix("/readyz") + "/metrics")
        for specs in workers.values()
        for spec in specs
        if spec.ready_url
    ]
