"""Inputs of the capacity planner: traffic, hardware profile, pool settings, scenario knobs.

Every model is a pydantic model, loadable from a YAML or JSON file (:func:`load_config`) and
overridable from CLI flags. Times are seconds, rates requests per second, money US dollars.
``SEED_BLOG`` is the setting of the blog post the project starts from (A10G timings,
~2,500 LoRAs, 92% on SDXL, ~10 distinct LoRAs requested per 2 minutes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from loraplex.operator.settings import OperatorSettings
from loraplex.router.settings import RouterSettings
from loraplex.worker.settings import WorkerSettings

# Defaults taken from the components' own settings, so the plan follows what they run with.
_OPERATOR = OperatorSettings.model_fields
_ROUTER = RouterSettings.model_fields
_WORKER = WorkerSettings.model_fields


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Burst(_Model):
    """A window in which the request rate is multiplied (a launch, a viral adapter)."""

    start_s: float = Field(ge=0)
    duration_s: float = Field(gt=0)
    multiplier: float = Field(gt=0)


class SyntheticTraffic(_Model):
    """Poisson arrivals over adapters ranked by a Zipf law, split across base models.

    Adapters are assigned to bases in proportion to ``base_share`` (the blog: 92% of public
    LoRAs are SDXL), so each base's traffic share matches its adapter share. The rate follows
    ``rate_per_s × (1 + diurnal_amplitude × cos(2π (t − diurnal_peak_s) / diurnal_period_s))``,
    times each burst's multiplier inside the burst.
    """

    rate_per_s: float = Field(default=0.1, gt=0)
    adapters: int = Field(default=2500, ge=1)
    zipf_exponent: float = Field(default=1.0, ge=0)
    base_share: dict[str, float] = Field(default_factory=lambda: {"sdxl": 0.92, "sd15": 0.08})
    base_request_share: float = Field(default=0.0, ge=0, le=1)  # requests with no adapter
    diurnal_amplitude: float = Field(default=0.0, ge=0, lt=1)
    diurnal_period_s: float = Field(default=86_400.0, gt=0)
    diurnal_peak_s: float = Field(default=50_400.0, ge=0)  # 14:00 when t=0 is midnight
    bursts: tuple[Burst, ...] = ()

    @model_validator(mode="after")
    def _shares_positive(self) -> SyntheticTraffic:
        if not self.base_share or any(v <= 0 for v in self.base_share.values()):
            raise ValueError("base_share needs at least one base with a positive share")
        return self


class TrafficConfig(_Model):
    """Either a trace file (CSV or JSONL with ``time`` and ``model_id``) or the generator."""

    trace: Path | None = None
    default_base: str | None = None  # base for trace rows without ``base_model``
    synthetic: SyntheticTraffic = SyntheticTraffic()
    horizon_s: float = Field(default=7200.0, gt=0)  # measured seconds
    # Simulated before measuring, so deployments, pools and caches are past their start-up
    # (a fleet that has been running); a trace's first warmup_s seconds are replayed unmeasured.
    warmup_s: float = Field(default=600.0, ge=0)
    seed: int = 0


class SwitchTimes(_Model):
    """Seconds to make an adapter active, by where it is found (worker's tiered cache)."""

    resident: float = Field(default=0.02, ge=0)  # already on the GPU: set_adapters
    host: float = Field(default=0.3, ge=0)  # pinned host RAM → device copy
    disk: float = Field(default=1.0, ge=0)  # safetensors read from the local HF cache
    hub: float = Field(default=3.0, ge=0)  # downloaded from the Hub, then loaded


class TierBandwidth(_Model):
    """Switch seconds from the adapter's size, by tier (used when ``HardwareProfile.tiers`` is
    set; otherwise the flat :class:`SwitchTimes`). Defaults: a datacenter node — the Hub's CDN
    at ~100 MB/s after ~0.5 s of requests, local NVMe at ~1 GB/s, the worker's conversion into
    packed slot tensors at ~3 ms per MB on the CPU, pinned host → device at ~10 GB/s, and a
    resident adapter scattered into the slot in ~5 ms."""

    hub_mb_per_s: float = Field(default=100.0, gt=0)
    hub_latency_s: float = Field(default=0.5, ge=0)
    disk_mb_per_s: float = Field(default=1000.0, gt=0)
    convert_s_per_mb: float = Field(default=0.003, ge=0)
    host_to_device_gb_per_s: float = Field(default=10.0, gt=0)
    resident_s: float = Field(default=0.005, ge=0)

    def seconds(self, tier: str, nbytes: int) -> float:
        """Seconds to make an adapter of ``nbytes`` active from ``tier`` (resident … hub)."""
        mb = nbytes / 1e6
        to_device = mb / (self.host_to_device_gb_per_s * 1000.0)
        if tier == "resident":
            return self.resident_s
        if tier == "host":
            return to_device
        disk = mb / self.disk_mb_per_s + mb * self.convert_s_per_mb + to_device
        if tier == "disk":
            return disk
        return self.hub_latency_s + mb / self.hub_mb_per_s + disk  # downloaded, then read


class HardwareProfile(_Model):
    """Service times of one GPU worker. Defaults: the blog's A10G measurements."""

    pod_start_s: float = Field(default=10.0, ge=0)  # schedule + image pull + container start
    base_load_cold_s: float = Field(default=15.0, ge=0)  # base weights from remote storage
    base_load_cached_s: float = Field(default=6.0, ge=0)  # base weights from the node cache
    switch_s: SwitchTimes = SwitchTimes()
    # Set: switch seconds follow each adapter's size (adapter_mb) through these tiers, and the
    # pools' host/disk caches are sized in GB (host_cache_gb, disk_cache_gb); unset: flat
    # switch_s and caches counted in adapters (the seed-blog preset).
    tiers: TierBandwidth | None = None
    adapter_mb: dict[str, float] = Field(default_factory=lambda: {"sdxl": 100.0, "sd15": 40.0})
    default_adapter_mb: float = Field(default=100.0, gt=0)
    unload_s: float = Field(default=0.3, ge=0)  # diffusers unload_lora_weights (seed "after")
    inference_s: dict[str, float] = Field(default_factory=lambda: {"sdxl": 8.5, "sd15": 3.0})
    default_inference_s: float = Field(default=8.5, gt=0)  # bases missing from inference_s
    gpu_cost_per_hour: float = Field(default=1.006, ge=0)  # AWS g5.xlarge (A10G) on demand

    def inference_for(self, base: str) -> float:
        return self.inference_s.get(base, self.default_inference_s)

    def adapter_bytes(self, base: str) -> int:
        return int(self.adapter_mb.get(base, self.default_adapter_mb) * 1e6)

    def hub_load_s(self, base: str) -> float:
        """Seconds to download and load one of ``base``'s adapters (the seed's every switch)."""
        if self.tiers is None:
            return self.switch_s.hub
        return self.tiers.seconds("hub", self.adapter_bytes(base))


class ScalingSettings(_Model):
    """The operator's scaling knobs for one pool (mirrors ``spec.scaling`` of a pool)."""

    min_replicas: int = Field(default=0, ge=0)
    max_replicas: int = Field(default=50, ge=0)
    target_requests_per_replica: float = Field(default=0.07, gt=0)  # req/s one GPU should take
    scale_down_stabilization_s: float = Field(default=300.0, ge=0)
    scale_up_stabilization_s: float = Field(default=0.0, ge=0)
    idle_to_zero_s: float = Field(default=600.0, ge=0)


class PoolSettings(_Model):
    """One base-model pool of the loraplex scenario."""

    adapter_slots: int = Field(default=4, ge=1)  # adapters resident on the GPU at once
    host_cache_adapters: int = Field(default=64, ge=0)  # adapters kept in host RAM
    disk_cache_adapters: int = Field(default=1000, ge=0)  # adapters kept in the HF cache
    # True: the pool's workers share one disk cache (the chart's ReadWriteMany modelCache PVC),
    # so an adapter one replica downloaded is a disk hit on every other; False: per node.
    shared_disk_cache: bool = True
    # With hardware.tiers: each replica's host RAM and disk for adapters, GB (the worker's
    # LORAPLEX_WORKER_HOST_CACHE_BYTES / DISK_CACHE_BYTES); the counts above are then unused.
    host_cache_gb: float = Field(default=8.0, ge=0)
    disk_cache_gb: float = Field(default=50.0, ge=0)
    # The worker's GroupingQueue: how often a waiting request may be overtaken by later ones
    # for the active adapter (the worker's LORAPLEX_WORKER_MAX_OVERTAKE; 0 = FIFO).
    max_overtake: int = Field(default=_WORKER["max_overtake"].default, ge=0)
    max_queue_per_replica: int = Field(default=_ROUTER["max_queue_per_replica"].default, ge=1)
    max_homes: int = Field(default=_ROUTER["max_homes"].default, ge=1)  # PlacementPicker's
    hot_window_requests: int = Field(default=_ROUTER["hot_window_requests"].default, ge=1)
    scaling: ScalingSettings = ScalingSettings()


class ScenarioSettings(_Model):
    """Knobs of the three scenarios and of the measurement."""

    # The operator's own defaults (its settings object), so the plan follows the operator:
    # seconds between scaling ticks, and seconds of counter history its rate averages over.
    operator_interval_s: float = Field(default=_OPERATOR["interval_s"].default, gt=0)
    rate_window_s: float = Field(default=_OPERATOR["rate_window_s"].default, gt=0)
    request_timeout_s: float = Field(default=300.0, gt=0)  # held longer → rejected (504)
    # Requests waiting per replica (the worker queue's capacity, the running one not counted);
    # a full queue answers 429 and the router tries another replica, up to router_attempts.
    max_queue_depth: int = Field(default=64, ge=1)
    router_attempts: int = Field(default=_ROUTER["attempts"].default, ge=1)
    before_idle_stop_s: float = Field(default=300.0, ge=0)  # dedicated deployment scale-down
    after_picker: Literal["round_robin", "least_loaded"] = "round_robin"
    after_replicas: dict[str, int] = Field(default_factory=dict)  # fixed pool size per base
    after_target_utilization: float = Field(default=0.6, gt=0, le=1)  # auto-size when absent
    cold_requests_per_hour: float = Field(default=1.0, ge=0)  # at most this often → cold
    sample_interval_s: float = Field(default=5.0, gt=0)  # replicas-over-time resolution
    # Also search the smallest static loraplex pool per base meeting a p95 (static.py):
    # the target, or loraplex's own p95 on the same stream when None.
    static_search: bool = False
    static_target_p95_s: float | None = Field(default=None, gt=0)


class SimConfig(_Model):
    """Everything one ``loraplex simulate`` run needs."""

    traffic: TrafficConfig = TrafficConfig()
    hardware: HardwareProfile = HardwareProfile()
    pools: dict[str, PoolSettings] = Field(default_factory=dict)  # by base; missing → default
    default_pool: PoolSettings = PoolSettings()
    scenarios: ScenarioSettings = ScenarioSettings()
    sizing_multipliers: tuple[float, ...] = ()
    sizing_horizon_s: float = Field(default=1800.0, gt=0)

    def pool_for(self, base: str) -> PoolSettings:
        return self.pools.get(base, self.default_pool)


SEED_BLOG = SimConfig(
    traffic=TrafficConfig(
        synthetic=SyntheticTraffic(
            rate_per_s=0.1,
            adapters=2500,
            zipf_exponent=1.0,
            base_share={"sdxl": 0.92, "sd15": 0.08},
        ),
        horizon_s=7200.0,
    ),
    sizing_multipliers=(10.0, 100.0),
)

# A day of the seed's catalogue with a diurnal swing (peak 1.8×, trough 0.2× the mean at
# 14:00 / 02:00), size-based tiers (SDXL LoRAs ~100 MB, SD 1.5 ~40 MB), 30 GB of host RAM and
# 100 GB of node disk for adapters per replica; loraplex pools keep one replica at night.
DIURNAL = SimConfig(
    traffic=TrafficConfig(
        synthetic=SyntheticTraffic(
            rate_per_s=0.2,
            adapters=2500,
            zipf_exponent=1.1,
            base_share={"sdxl": 0.92, "sd15": 0.08},
            diurnal_amplitude=0.8,
        ),
        horizon_s=86_400.0,
        warmup_s=1800.0,
    ),
    hardware=HardwareProfile(tiers=TierBandwidth()),
    default_pool=PoolSettings(
        host_cache_gb=30.0,
        disk_cache_gb=100.0,
        shared_disk_cache=False,
        scaling=ScalingSettings(min_replicas=1),
    ),
    scenarios=ScenarioSettings(static_search=True),
)

PRESETS: dict[str, SimConfig] = {"seed-blog": SEED_BLOG, "diurnal": DIURNAL}


class ConfigError(ValueError):
    """A config file that cannot be read or does not validate; the message says which field."""


def load_config(path: Path, base: SimConfig | None = None) -> SimConfig:
    """Read a YAML or JSON file (JSON is YAML) and merge it over ``base`` (or the defaults)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of sections, got {type(data).__name__}")
    merged = _deep_merge((base or SimConfig()).model_dump(mode="json"), data)
    try:
        return SimConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(f"config {path} is invalid:\n{exc}") from exc


# Maps keyed by the user's own names (bases): a file's value replaces the default, never merges.
_REPLACED_MAPS = frozenset({"base_share", "inference_s", "after_replicas"})


def _deep_merge(into: dict, update: dict) -> dict:
    out = dict(into)
    for key, value in update.items():
        mergeable = key not in _REPLACED_MAPS and isinstance(out.get(key), dict)
        if isinstance(value, dict) and mergeable:
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
