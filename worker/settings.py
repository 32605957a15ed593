"""Worker settings: environment variables ``LORAPLEX_WORKER_<FIELD>`` (e.g. ``..._BASE_MODEL``).

Hub access itself is configured the way huggingface_hub users expect: ``HF_ENDPOINT``,
``HF_TOKEN`` and ``HF_HUB_CACHE``/``HF_HOME`` are read by huggingface_hub, not duplicated here
(``CACHE_DIR`` overrides the cache folder when set).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from loraplex.shared.settings import ComponentSettings

MIB = 1024 * 1024


class WorkerSettings(ComponentSettings):
    """One worker process: one base model on one device."""

    # The rest of the config (nested delimiter, extra="ignore", frozen) is the base's.
    # hide_input_in_errors: a rejected SECRET must not be echoed in a validation error.
    model_config = SettingsConfigDict(env_prefix="LORAPLEX_WORKER_", hide_input_in_errors=True)

    base_model: str = Field(
        description="Hub repo id of the diffusers base pipeline kept warm. Required: a worker "
        "serves exactly one base."
    )
    base_revision: str = Field(
        default="main",
        description="Branch, tag or commit of the base. Default main; pin a commit in production "
        "so replicas agree.",
    )
    host: str = Field(
        default="0.0.0.0",
        description="Listen address of both ports (default all interfaces). Any address but "
        "loopback needs SECRET: the worker refuses to start without one.",
    )
    port: int = Field(
        default=8000,
        ge=0,
        le=65535,
        description="Port of the router-only API, /v1/generate and /v1/state (default 8000; "
        "0: any free port).",
    )
    metrics_port: int = Field(
        default=9100,
        ge=0,
        le=65535,
        description="Port of /healthz, /readyz and /metrics (default 9100; 0: any free port). "
        "Separate from PORT so probes and Prometheus, which need no secret, never reach "
        "generation: a NetworkPolicy can open this one to the metrics namespace and PORT to the "
        "router alone.",
    )
    secret: SecretStr | None = Field(
        default=None,
        min_length=16,
        description="The worker secret: the router must send it in X-Loraplex-Worker-Secret on "
        "/v1/generate and /v1/state (missing: 401, wrong: 403). At least 16 characters; on "
        "Kubernetes the operator sets it from the chart's Secret. Unset (default) is allowed "
        "only when HOST is a loopback address (tests, a worker run by hand); `loraplex up` "
        "makes a random one per run. Never logged.",
    )
    device: str = Field(
        default="auto",
        description="torch device: 'auto' picks cuda when available, else cpu. Default auto.",
    )
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        default="auto",
        description="Weights dtype. auto = float16 on CUDA (half the memory, same images within "
        "fp16 noise), float32 on CPU (CPU kernels are slow or missing in fp16).",
    )
    cache_dir: Path | None = Field(
        default=None,
        description="HF cache folder (the disk tier). Default: huggingface_hub's own "
        "(HF_HUB_CACHE). Mount a volume here so restarts keep downloaded adapters.",
    )
    slot_rank: int = Field(
        default=64,
        ge=1,
        le=1024,
        description="Rank of the LoRA slot (default 64). Adapters of rank ≤ this switch by a "
        "copy of their own bytes; higher ranks take the slow diffusers path. The slot costs "
        "rank·(in+out) values per slot module at the base's dtype: at 64 in fp16, all modules "
        "(SLOT_MODULES=all) ~395 MB for the SDXL UNet (743 Linear + 51 Conv2d), ~694 MB for "
        "the Flux.1 transformer, ~190 MB for SD-1.5; attention only ~186 / 149 / 100 MB. The "
        "worker logs the figure at start-up.",
    )
    slot_modules: Literal["all", "attention"] = Field(
        default="all",
        description="Which modules the slot covers (default all): 'all' is every nn.Linear "
        "and plain nn.Conv2d of the denoiser and the LoRA-loadable text encoders, so kohya's "
        "default network (attention + feed-forward + proj_in/out), LoCon (resnet convs) and "
        "DiT LoRAs all switch fast; 'attention' covers only attention projections (about half "
        "the memory; other adapters take the slow tier).",
    )
    slot_text_encoders: bool = Field(
        default=True,
        description="Whether the slot covers the text encoders diffusers loads LoRAs into "
        "(CLIP-L, CLIP-G; never T5, which diffusers does not load LoRAs into) — default true: "
        "kohya trains the text encoder by default. Off saves their share of the slot (~10 % "
        "for SDXL); text-encoder adapters then take the slow tier.",
    )
    compile: bool = Field(
        default=False,
        description="Compile the denoiser with torch.compile at start-up (default off). The "
        "slot's shapes never change, so switching adapters never recompiles; start-up gets "
        "slower by the compile time (minutes for SDXL with inductor) and the warm-up runs "
        "both the base and the adapter graph. The slow tier (DoRA, LoKr …) recompiles.",
    )
    compile_backend: str = Field(
        default="inductor",
        description="torch.compile backend when COMPILE is on (default inductor; 'eager' or "
        "'aot_eager' compile fast and are what the tests use).",
    )
    # --- exact fused serving (worker/merge.py, docs/merge.md) ------------------------------
    merge: Literal["never", "auto", "always"] = Field(
        default="never",
        description="Fold the active slot adapter into the weights (hooks off: a step costs "
        "the base's) and restore them bit-exact from a pristine copy when something else "
        "becomes active. never (default: no pristine copy, no start-up measurement); always: "
        "once per switch; auto: when hook overhead per step × same-adapter steps queued "
        "exceeds fuse + restore, both measured at warm-up. The pristine copy holds every "
        "module ever fused: up to the denoiser's + text encoders' slot-module weights (~5 GB "
        "for SDXL fp16 with SLOT_MODULES=all), see MERGE_PRISTINE.",
    )
    merge_pristine: Literal["host", "device"] = Field(
        default="host",
        description="Where MERGE keeps the pristine copy of fused weights: host (default; "
        "pinned on CUDA: costs host RAM, a restore is one PCIe copy) or device (GPU memory, "
        "restores at device bandwidth). On CPU both are host memory.",
    )
    max_adapter_slots: int = Field(
        default=16,
        ge=0,
        description="Adapters kept resident on the device (entries, default 16); also bounded by "
        "RESIDENT_CACHE_BYTES. Reported as free_slots to the router for affinity.",
    )
    resident_cache_bytes: int = Field(
        default=2048 * MIB,
        ge=0,
        description="Device memory for resident adapters, bytes (default 2 GiB: ~20 SD-1.5 "
        "adapters at rank 64 fp16). On CPU the device is host memory.",
    )
    host_cache_bytes: int = Field(
        default=8192 * MIB,
        ge=0,
        description="Host RAM (pinned on CUDA) for converted adapters, bytes (default 8 GiB). "
        "A host hit is one host→device copy; a miss reads and converts the file from disk.",
    )
    # --- prefetch: cold loads off the device thread (worker/prefetch.py, docs/prefetch.md) ---
    prefetch: bool = Field(
        default=True,
        description="Resolve, download and convert a queued job's adapter on I/O threads as "
        "soon as the job is accepted, so the device thread only copies it (a host hit) "
        "instead of waiting for the Hub (default on). Off: the device thread loads in line.",
    )
    prefetch_concurrency: int = Field(
        default=2,
        ge=1,
        le=16,
        description="Prefetches downloading or converting at once (default 2: one download "
        "usually fills the link; a second overlaps the other's conversion).",
    )
    prefetch_max_bytes_in_flight: int = Field(
        default=1024 * MIB,
        ge=0,
        description="Bytes of adapter files being prefetched at once, by the size the Hub lists "
        "(bytes, default 1 GiB: at least MAX_ADAPTER_BYTES, so any accepted adapter can be "
        "prefetched). Bounds the disk and memory a burst of cold jobs takes; an adapter "
        "bigger than this is loaded by the device as without prefetch; 0 turns prefetch off.",
    )
    prefetch_host_fraction: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Most of HOST_CACHE_BYTES that prefetched adapters not yet used (plus "
        "those in flight) may hold (fraction, default 0.5), so prefetching for later jobs "
        "cannot evict from the host tier what the jobs before them need. 0 turns prefetch "
        "off.",
    )
    disk_cache_bytes: int = Field(
        default=50 * 1024 * MIB,
        ge=0,
        description="HF cache budget for adapter files, bytes (default 50 GiB ≈ 500 SD-1.5 "
        "LoRAs at 100 MB). After each download the least recently used adapter commits beyond "
        "it are deleted; the base model's files are never deleted and count toward it.",
    )
    max_adapter_bytes: int = Field(
        default=512 * MIB,
        ge=1,
        description="Largest adapter file accepted, bytes (default 512 MiB; SD/SDXL LoRAs are "
        "10-400 MB). Larger ones are refused with 413 before download.",
    )
    queue_capacity: int = Field(
        default=32,
        ge=1,
        description="Requests waiting for the device (default 32); more answer 429 with "
        "Retry-After so the router retries elsewhere instead of piling up latency.",
    )
    max_overtake: int = Field(
        default=4,
        ge=0,
        description="How many later requests may run before a waiting one because they use the "
        "adapter already active (default 4). 0 = strict FIFO; higher saves more switches but "
        "adds tail latency.",
    )
    # --- batching (worker/batching.py, docs/batching.md) ----------------------------------
    max_batch: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Most waiting requests with the same adapter and the same size, steps, "
        "guidance and negative-prompt presence served by ONE pipeline call (requests, default "
        "4; 1 turns batching off). Each keeps its own seed and image. Measured here "
        "(bench/throughput/batching.py: tiny SD 64², 4 steps, 1 torch thread on 2 shared CPU "
        "cores, vs one request per call): batch 2 1.1-1.25×, batch 4 1.05-1.38× (3 runs), "
        "batch 8 no better than 4 — hence 4 on CPU. On a GPU: SDXL 1024² is compute-bound "
        "(HF measured batch 8 +25 % on an A10G): 4 on 24 GB cards, 8 on 80 GB+ (H100/H200); "
        "SD-1.5 512² or small images: 8-16. Memory bounds it (activations grow linearly with "
        "the batch), and every image of a call arrives at its end.",
    )
    retry_after_seconds: float = Field(
        default=2.0,
        gt=0,
        description="Retry-After sent with 429 when the queue is full (seconds, default 2).",
    )
    branch_ttl_seconds: float = Field(
        default=60.0,
        ge=0,
        description="How long a branch → commit resolution is reused (seconds, default 60), "
        "per caller token: one made with a token is never reused for another caller. The "
        "router sends commits from the Hub, so this matters for branch names (the embedded "
        "mode sends main).",
    )
    access_ttl_seconds: float = Field(
        default=60.0,
        ge=0,
        description="How long a Hub 'yes' to 'may this token read this gated/private adapter' "
        "is reused (seconds, default 60; 0: ask on every request). Cached adapters of such "
        "repos are served only after that check, so this bounds how long a revoked token "
        "still works; each check costs one Hub call on the device thread.",
    )
    num_inference_steps: int = Field(
        default=30, ge=1, le=150, description="Steps when the request names none (default 30)."
    )
    guidance_scale: float = Field(
        default=7.5, ge=0, description="Classifier-free guidance when the request names none."
    )
    width: int | None = Field(
        default=None,
        ge=64,
        multiple_of=8,
        description="Width in pixels when the request names none. Default: the base's native "
        "size (UNet sample size × VAE scale: 512 for SD-1.5, 1024 for SDXL, 64 for the demo).",
    )
    height: int | None = Field(
        default=None,
        ge=64,
        multiple_of=8,
        description="Height in pixels when the request names none (default: the base's native).",
    )
    warmup_steps: int = Field(
        default=2,
        ge=1,
        description="Steps of the warm-up generation run before /readyz turns 200 (default 2: "
        "enough to load kernels and allocate memory).",
    )
    shutdown_grace_seconds: float = Field(
        default=60.0,
        ge=0,
        description="On SIGTERM, how long to finish the request in progress (seconds, default "
        "60; keep it below the pod's terminationGracePeriodSeconds).",
    )
    # --- fleet-wide placement: what /v1/state tells the router (docs/placement.md) ---------
    state_disk_adapters: int = Field(
        default=512,
        ge=0,
        description="Most adapter commits of the disk cache listed in /v1/state "
        "(disk_cached_adapters, most recently used first; default 512 ≈ 40 KB per poll). The "
        "router prices a disk hit below a Hub download; 0 lists none.",
    )
    disk_scan_interval_s: float = Field(
        default=10.0,
        ge=0,
        description="Seconds between scans of the HF cache for that list (default 10: a scan "
        "stats every cached file; a new download shows up at most this late).",
    )
    load_cost_alpha: float = Field(
        default=0.2,
        gt=0,
        le=1,
        description="Weight of the newest switch in the per-tier load-seconds averages the "
        "worker exports in /v1/state (load_seconds, generate_seconds; default 0.2: about the "
        "last 5 switches of a tier).",
    )

    @field_validator("secret", mode="before")
    @classmethod
    def _empty_secret_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _distinct_ports(self) -> WorkerSettings:
        if self.port and self.port == self.metrics_port:
            raise ValueError(
                f"metrics_port and port are both {self.port}: the metrics port must differ"
            )
        return self

    def exposure_problem(self) -> str | None:
        """Why this worker must not start as configured (no secret off loopback), or None."""
        if self.secret is not None or is_loopback(self.host):
            return None
        return (
            f"refusing to serve /v1/generate on {self.host} without a worker secret: set "
            "LORAPLEX_WORKER_SECRET (the router's LORAPLEX_ROUTER_WORKER_SECRET) or listen on "
            "127.0.0.1"
        )


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1); False for wildcards."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
