"""Operator settings: environment variables ``LORAPLEX_OPERATOR_<FIELD>`` (one object, passed in).

Every field says its unit, default and why. Lists come as JSON, e.g.
``LORAPLEX_OPERATOR_ROUTER_URLS='["http://10.0.0.5:8080/metrics"]'``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from loraplex import __version__
from loraplex.shared.settings import ComponentSettings


class OperatorSettings(ComponentSettings):
    # The rest of the config (nested delimiter, extra="ignore", frozen) is the base's.
    model_config = SettingsConfigDict(env_prefix="LORAPLEX_OPERATOR_")

    log_level: str = Field("INFO", description="Python log level name. Default INFO.")
    metrics_port: int = Field(
        8080,
        ge=0,
        le=65535,
        description="Port (TCP) of the operator's /metrics and /healthz; 0 disables the server. "
        "Default 8080, the chart's liveness probe and ServiceMonitor target.",
    )
    interval_s: float = Field(
        5.0,
        gt=0,
        description="Seconds between scaling ticks per pool (kopf timer). Default 5 s: a "
        "request waiting for a scale-from-zero sees the pool asked for within ~5 s, and the API "
        "server sees one read per pool per tick.",
    )
    rate_source: Literal["scrape", "prometheus"] = Field(
        "scrape",
        description="Where request rates come from: 'scrape' reads every router's /metrics "
        "(no Prometheus needed); 'prometheus' queries prometheus_url. Default scrape.",
    )
    router_urls: list[str] = Field(
        default_factory=list,
        description="Fixed router metrics URLs (JSON list). Empty (default): find router pods "
        "through the router Service's EndpointSlices.",
    )
    router_service: str = Field(
        "loraplex-router",
        description="Name of the router Service whose EndpointSlices list the routers to "
        "scrape. Default loraplex-router (the chart's name).",
    )
    router_namespace: str = Field(
        "",
        description="Namespace of the router Service. Empty (default): the namespace the "
        "operator watches (--namespace), else 'default'.",
    )
    router_port_name: str = Field(
        "http",
        description="EndpointSlice port name of the router's HTTP port (the first port when "
        "none has this name). Default http.",
    )
    router_metrics_path: str = Field("/metrics", description="Path of the router metrics.")
    prometheus_url: str = Field(
        "",
        description="Prometheus base URL for rate_source=prometheus, e.g. "
        "http://prometheus-operated.monitoring:9090. Default empty.",
    )
    rate_window_s: float = Field(
        60.0,
        gt=0,
        description="Seconds of counter history a scraped rate averages over. Default 60 s: "
        "a pool's target is often well under one request per second (an SDXL image takes "
        "~8 s), and over a 10 s window one extra request reads as a whole extra replica, "
        "which the scale-down window then keeps for minutes — `loraplex simulate --scenario "
        "seed-blog` measured 15.1 GPU-hours at 10 s against 7.8 at 60 s for a p95 of 14.6 vs "
        "17.3 s. A step in traffic still adds replicas at the next tick (in proportion to how "
        "much of the window it fills), and a request waiting on an empty pool scales it from "
        "zero at once through `pending`, whatever the window.",
    )
    scrape_timeout_s: float = Field(
        2.0, gt=0, description="Timeout (s) of one router or Prometheus request. Default 2 s."
    )
    default_worker_image: str = Field(
        f"ghcr.io/loraplex/loraplex-worker:{__version__}",
        description="Worker image for pools whose spec.worker.image is empty.",
    )
    worker_secret_name: str = Field(
        "loraplex-worker-secret",
        description="Secret (in each pool's namespace) holding the worker secret, which every "
        "worker pod gets as LORAPLEX_WORKER_SECRET (secretKeyRef; the operator never reads "
        "it) and the router sends. Default loraplex-worker-secret; the chart sets its own. "
        "Empty: workers get none and refuse to start on their pod address (there is no open "
        "mode on Kubernetes). A missing Secret shows as CreateContainerConfigError.",
    )
    worker_secret_key: str = Field(
        "worker-secret",
        min_length=1,
        description="Key inside worker_secret_name. Default worker-secret (the chart's).",
    )
    peering: str | None = Field(
        None,
        description="kopf peering, so that of several operator replicas only one handles the "
        "pools. A name: peering is mandatory (kopf's peering CRDs and that KopfPeering object "
        "must exist). Empty string: standalone, no peering (what the chart sets unless "
        "operator.peering.enabled). Unset (default): kopf's auto mode, peering through the "
        "object named 'default' if it exists, standalone otherwise.",
    )
    peering_priority: int = Field(
        0,
        ge=0,
        description="kopf peering priority of this replica. Default 0: a random priority per "
        "process, because kopf freezes all peers that share one; set it only to make one "
        "replica the preferred active one.",
    )
    cluster_scanning: bool = Field(
        False,
        description="Let kopf list CRDs and namespaces. Default off: the operator serves one "
        "known resource, and least-privilege RBAC grants no CRD/namespace listing.",
    )

    @model_validator(mode="after")
    def _prometheus_needs_url(self) -> OperatorSettings:
        if self.rate_source == "prometheus" and not self.prometheus_url:
            raise ValueError(
                "rate_source=prometheus needs LORAPLEX_OPERATOR_PROMETHEUS_URL "
                "(e.g. http://prometheus-operated.monitoring:9090)"
            )
        return self
