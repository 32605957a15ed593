"""Worker metrics (prefix ``loraplex_worker_``) in a per-app CollectorRegistry.

A registry per app, not prometheus_client's global one, so several workers can live in one
process (tests, the embedded mode) without "duplicated timeseries" errors.
"""

from __future__ import annotations

from loraplex.worker.prefetch import DEVICE_EVENTS
from loraplex.worker.queue import CancelReason
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from loraplex.shared.contract import SwitchTier

PREFIX = "loraplex_worker_"
# Switches span 50 µs (already active) to tens of seconds (Hub download of a big adapter).
SWITCH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
INFERENCE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class WorkerMetrics:
    def __init__(self, base_model: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.switch_seconds = Histogram(
            f"{PREFIX}adapter_switch_seconds",
            "Time to make the request's adapter active, by the tier it came from",
            ["tier"],
            buckets=SWITCH_BUCKETS,
            registry=r,
        )
        self.slow_switches = Counter(
            f"{PREFIX}slow_tier_switches",
            "Switches that took the slow tier (diffusers load/unload), by why the adapter does "
            "not fit the slot: dora, lora_bias, other_weights, control_lora, outside_slot, rank",
            ["reason"],
            registry=r,
        )
        self.inference_seconds = Histogram(
            f"{PREFIX}inference_seconds",
            "Pipeline time per generation (after the switch)",
            buckets=INFERENCE_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            f"{PREFIX}batch_size",
            "Requests the device took from the queue together, per run (one pipeline call "
            "unless their tokens resolved the adapter to different commits; MAX_BATCH)",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            f"{PREFIX}requests", "Generate requests by outcome (HTTP status)", ["code"], registry=r
        )
        self.dropped = Counter(
            f"{PREFIX}dropped_requests",
            "Queued requests dropped before they started: the client disconnected or the "
            "deadline passed (each also counted in cancelled_total)",
            registry=r,
        )
        # reason: client_gone (answered 499) or deadline (504); queued or stopped mid-run.
        self.cancelled = Counter(
            f"{PREFIX}cancelled",
            "Generate requests stopped before their image because the client left or the "
            "deadline passed, by reason; a running one stops at its next denoising step",
            ["reason"],
            registry=r,
        )
        self.queue_depth = Gauge(f"{PREFIX}queue_depth", "Requests waiting", registry=r)
        self.in_flight = Gauge(f"{PREFIX}in_flight", "Requests running on the device", registry=r)
        self.resident_adapters = Gauge(
            f"{PREFIX}resident_adapters", "Adapters in the device-resident tier", registry=r
        )
        self.resident_bytes = Gauge(
            f"{PREFIX}resident_adapter_bytes", "Bytes of the device-resident tier", registry=r
        )
        self.host_adapters = Gauge(
            f"{PREFIX}host_adapters", "Adapters in the host-RAM tier", registry=r
        )
        self.host_bytes = Gauge(
            f"{PREFIX}host_adapter_bytes", "Bytes of the host-RAM tier", registry=r
        )
        self.ready = Gauge(f"{PREFIX}ready", "1 once the base is warm", registry=r)
        # Prefetch (worker/prefetch.py). The device time a switch costs per request, prefetch
        # wait included, is adapter_switch_seconds (a prefetched adapter switches as tier host).
        self.prefetch_switches = Counter(
            f"{PREFIX}prefetch_switches",
            "Device switches to an adapter not already active, by what prefetch did: hit "
            "(loaded before the job got the device), wait (the device waited for it), miss "
            "(the device loaded it itself); switches to adapters cached anyway count nothing",
            ["outcome"],
            registry=r,
        )
        self.prefetch_loads = Counter(
            f"{PREFIX}prefetch_loads",
            "Prefetches by result: admitted, failed (its jobs load it on the device), dropped "
            "(no job wanted it before it started), unwanted (downloaded, not converted), "
            "skipped (over the bounds), slow (takes the slow tier: left on disk)",
            ["result"],
            registry=r,
        )
        self.prefetch_downloading_bytes = Gauge(
            f"{PREFIX}prefetch_downloading_bytes",
            "Bytes of the adapter files being prefetched now (downloading or converting)",
            registry=r,
        )
        # Fused serving (worker/merge.py): the pristine copy's memory and how often it fused.
        self.merge_pristine_bytes = Gauge(
            f"{PREFIX}merge_pristine_bytes",
            "Bytes of the pristine copies of fused weights (what an unfuse restores from)",
            registry=r,
        )
        self.merge_fuses = Counter(
            f"{PREFIX}merge_fuses", "Adapters folded into the base weights", registry=r
        )
        for outcome in DEVICE_EVENTS:  # zero series
            self.prefetch_switches.labels(outcome=outcome)
        info = Gauge(f"{PREFIX}base_model_info", "Base model served", ["base_model"], registry=r)
        info.labels(base_model=base_model).set(1)
        for tier in SwitchTier:
            self.switch_seconds.labels(tier=tier.value)  # export zero series for every tier
        for reason in CancelReason:
            self.cancelled.labels(reason=reason.value)
