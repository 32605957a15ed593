"""Router settings: environment variables ``LORAPLEX_ROUTER_<FIELD>`` (upper-case field name).

Example: ``LORAPLEX_ROUTER_STATIC_POOLS='{"org/base": ["http://127.0.0.1:8001"]}'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from loraplex.shared.edge_policy import EdgeSettings
from loraplex.shared.ids import validate_model_id


class RouterSettings(EdgeSettings):
    """Everything the router reads from its environment; every field says unit, default, why.

    The HTTP edge fields (max_body_bytes, header_timeout_s, body_timeout_s, allowed_hosts,
    cors_origins) come from :class:`~loraplex.shared.edge_policy.EdgeSettings`, shared with
    the worker.
    """

    # The rest of the config (nested delimiter, extra="ignore", frozen) is the base's.
    # hide_input_in_errors: a rejected secret must not be echoed in a validation error.
    model_config = SettingsConfigDict(env_prefix="LORAPLEX_ROUTER_", hide_input_in_errors=True)

    host: str = Field("127.0.0.1", description="Listen address; 0.0.0.0 in a container.")
    port: int = Field(8000, ge=0, le=65535, description="Listen port (0: any free port).")

    # --- where the pools come from -------------------------------------------------------
    pool_source: Literal["static", "kubernetes"] = Field(
        "static",
        description="static: `static_pools` below; kubernetes: watch BaseModelPool objects and "
        "their Services' EndpointSlices in `namespace`.",
    )
    static_pools: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Base model id → worker base URLs (JSON), for the static pool source.",
    )
    namespace: str = Field(
        "loraplex",
        description="Kubernetes namespace of the BaseModelPool objects to watch; empty: all "
        "namespaces (needs a ClusterRole, as the chart's operator.clusterWide mode sets up).",
    )
    state_poll_interval_s: float = Field(
        1.0,
        gt=0,
        description="Seconds between GET /v1/state polls of each worker. Worker answers also "
        "update the state, so this only bounds staleness when traffic is idle.",
    )
    state_timeout_s: float = Field(
        2.0, gt=0, description="Seconds before a /v1/state poll counts as failed."
    )

    # --- resolution ------------------------------------------------------------------------
    hub_endpoint: str | None = Field(
        None,
        description="Hub (or Hub-compatible server) base URL; default: huggingface_hub's own "
        "(HF_ENDPOINT or https://huggingface.co).",
    )
    hub_timeout_s: float = Field(10.0, gt=0, description="Seconds per Hub metadata call.")
    models_dir: Path | None = Field(
        None,
        description="Read model cards from DIR/<org>/<name>/README.md instead of the Hub "
        "(embedded mode).",
    )
    models_dir_token: SecretStr | None = Field(
        None,
        description="With models_dir: the one Hub token that opens its gated and private repos "
        "(DIR/.hub-access.json, `gated: true` cards), the embedded local Hub's; unset: they are "
        "closed to every caller (401/403/404 as on the Hub).",
    )
    resolve_ttl_s: float = Field(300.0, ge=0, description="Seconds a resolved model id is cached.")
    resolve_negative_ttl_s: float = Field(
        30.0, ge=0, description="Seconds a 'no such model / no access' answer is cached."
    )
    resolve_stale_s: float = Field(
        86400.0,
        ge=0,
        description="Seconds an expired answer may still serve while the Hub is unreachable.",
    )
    resolve_cache_size: int = Field(10_000, ge=1, description="Most cached ids (LRU); ~1 KB each.")

    # --- picking and forwarding -------------------------------------------------------------
    pick_strategy: Literal[
        "adapter_affinity", "resident_affinity", "least_loaded", "round_robin"
    ] = Field(
        "adapter_affinity",
        description="Replica picking strategy (router/pick.py): adapter_affinity = "
        "PlacementPicker (rendezvous homes + load-seconds score, docs/placement.md); "
        "resident_affinity = the previous default (residency only).",
    )
    max_queue_per_replica: int = Field(
        2,
        ge=1,
        description="Affinity bound: a replica whose queue is this many requests longer than "
        "the pool's shortest gets no request for its warm adapter — spreads a hot adapter. "
        "The placement picker counts it in work: this many of the replica's own generations, "
        "less what its running job has done (the worker's running_seconds).",
    )
    attempts: int = Field(
        3,
        ge=1,
        description="Replicas tried per round before the request holds again or fails "
        "(failures before the answer). 502 only when replicas answered and failed this very "
        "request; replicas that went away make it hold and retry (retry_budget).",
    )
    retry_budget: int = Field(
        6,
        ge=1,
        description="Forwarding attempts one request may make in all (count), across the "
        "holds between rounds: a request whose replicas restart under it holds for a ready "
        "one and tries again, but a replica that keeps dropping connections cannot bounce it "
        "forever. Spent with replicas still lost: 503 with Retry-After. 6 rides out three "
        "restarts of a two-replica pool.",
    )
    replica_backoff_s: float = Field(
        0.5,
        ge=0,
        description="Seconds a replica that dropped a connection (refused, reset, 503) stays "
        "out of picking after its first such failure; doubles per consecutive failure up to "
        "replica_backoff_max_s. It comes back early once a state poll reaches it again after "
        "failing (it restarted), and a good answer resets the count.",
    )
    replica_backoff_max_s: float = Field(
        10.0,
        ge=0,
        description="Cap of that backoff (seconds): a replica that keeps dropping connections "
        "is tried again at least this often, never taken out for good.",
    )
    request_timeout_s: float = Field(
        120.0,
        gt=0,
        description="Deadline per request, hold included; past it the answer is 504.",
    )
    connect_timeout_s: float = Field(2.0, gt=0, description="Seconds to connect to a worker.")
    max_connections: int = Field(
        1000, ge=1, description="Connections in the one pooled worker client."
    )
    buffer_limit_bytes: int = Field(
        8 * 1024 * 1024,
        ge=0,
        description="Worker answers up to this size are read whole before the client gets a "
        "byte, so a body cut short is retried on another replica; larger ones stream.",
    )

    # --- hold during scale-up ---------------------------------------------------------------
    hold_timeout_s: float = Field(
        60.0,
        ge=0,
        description="How long (seconds, in all per request) a request waits for a pool with "
        "no available replica — scaling from zero, or every replica restarting or backing "
        "off — before 503 with Retry-After.",
    )
    estimated_warmup_s: float = Field(
        60.0,
        gt=0,
        description="The estimated_time (and Retry-After) in a 503 while a pool warms up: a "
        "GPU node plus a base-model load is typically about a minute.",
    )
    max_images_per_request: int = Field(
        4, ge=1, le=16, description="Largest `n` accepted by /v1/images/generations."
    )

    log_level: str = Field("INFO", description="Python logging level.")
    log_json: bool = Field(False, description="One JSON object per log line.")

    # --- the closed worker API ---------------------------------------------------------------
    worker_secret: SecretStr | None = Field(
        None,
        min_length=16,
        description="The worker secret, sent to every worker in X-Loraplex-Worker-Secret on "
        "/v1/generate and /v1/state (workers answer 401/403 without the one they hold, in "
        "LORAPLEX_WORKER_SECRET). At least 16 characters; the chart mounts it from its Secret "
        "and `loraplex up` makes one per run. Unset (default): none is sent, which only "
        "workers listening on loopback without a secret accept. Never logged.",
    )

    debug_replica_header: bool = Field(
        False,
        description="Add X-Loraplex-Worker: <replica id> to answers, naming the worker replica "
        "that served (debugging affinity and retries). Default off: answers say nothing of the "
        "cluster. The id is an opaque 12-hex keyed hash of the worker address (random key per "
        "router process, so pod IPs cannot be brute-forced from it); the router logs each "
        "id with its address once at INFO.",
    )

    # --- the browser playground --------------------------------------------------------------
    playground: bool = Field(
        True,
        description="Serve the playground at GET /: a page (HTML, script and style shipped in "
        "the package; no CDN, no build, works offline) with a form over the public API — "
        "pick a base and a LoRA, generate, see the image and the switch/compute/queue "
        "timings. On in embedded mode (`loraplex up`). False: GET / answers 404. With the Helm "
        "chart set the value router.playground (default true). The page holds no secret and "
        "can do nothing a client of the API cannot.",
    )
    recent_adapters: int = Field(
        20,
        ge=0,
        le=1000,
        description="Per pool, how many LoRA ids GET /v1/models lists in `adapters` (newest "
        "first), for the playground's picker: adapters this router served an image of, plus "
        "in embedded mode (models_dir) the folder's open LoRAs at start. Public repos only: a "
        "gated or private adapter (resolved with a caller's token) is never listed. Kept in "
        "memory per router replica; 0: none listed.",
    )

    # --- fleet-wide adapter placement (PlacementPicker, docs/placement.md) ------------------
    max_homes: int = Field(
        4,
        ge=1,
        description="Most home replicas a hot adapter gets (rendezvous hashing over the pool's "
        "ready replicas); the long tail has one home each. Bounds how many replicas' caches a "
        "hot adapter occupies, like llm-d's maxReplicas.",
    )
    hot_spread: float = Field(
        2.0,
        gt=0,
        description="Homes per replica's worth of traffic: an adapter with share s of a pool's "
        "requests over N replicas gets ceil(hot_spread·s·N) homes (≥ 1, ≤ max_homes). 2 leaves "
        "each home half busy with it, so bounded load can balance.",
    )
    hot_window_requests: int = Field(
        1000,
        ge=1,
        description="Requests of a pool over which an adapter's share is measured (an "
        "exponentially decayed count, aged per request, no clock). Shorter reacts faster to a "
        "new hot adapter; longer keeps homes steadier. ~10 KB per 100 tracked adapters.",
    )

    @field_validator("worker_secret", mode="before")
    @classmethod
    def _empty_secret_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("static_pools")
    @classmethod
    def _valid_pools(cls, pools: dict[str, list[str]]) -> dict[str, list[str]]:
        for base, urls in pools.items():
            validate_model_id(base)
            for url in urls:
                if not url.startswith(("http://", "https://")):
                    raise ValueError(f"worker URL {url!r} of {base} must start with http(s)://")
        return {base: [u.rstrip("/") for u in urls] for base, urls in pools.items()}
