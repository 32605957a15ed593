"""Pure builders for what the operator owns: BaseModelPool spec → worker Deployment and Service.

No I/O and no kopf: :func:`parse_pool` validates a pool body into a :class:`Pool` (or raises
:class:`InvalidPool` saying what to fix), ``build_*`` return plain dicts ready for the API, and
:func:`drifted` tells whether a live object lost fields the operator set.

Ports: each worker pod serves the router-only API on ``http`` (:data:`WORKER_PORT`) and
health and metrics on ``metrics`` (:data:`WORKER_METRICS_PORT`); probes use ``metrics``, the
Service exposes both (the router picks ``http`` from its EndpointSlices, the ServiceMonitor
``metrics``). The worker secret comes from a Secret the operator names but never reads
(``LORAPLEX_WORKER_SECRET`` from ``secretKeyRef``): the operator needs no Secret permission.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from loraplex.operator.scaling import ScalingSpec

from loraplex.shared.errors import BadRequest
from loraplex.shared.ids import validate_model_id, validate_revision
from loraplex.shared.k8s import GROUP, KIND, VERSION, worker_service_name

WORKER_PORT = 8000  # the router-only API (loraplex.shared.contract): /v1/generate, /v1/state
WORKER_METRICS_PORT = 9100  # the worker's /healthz, /readyz, /metrics (no secret)
WORKER_UID = 10001  # the worker image's user (deploy/docker/worker.Dockerfile)
CACHE_MOUNT = "/models"  # HF_HOME lives here, on the pool's model-cache volume
MANAGED_BY = "loraplex-operator"
POOL_LABEL = "loraplex.dev/pool"
BASE_MODEL_ANNOTATION = "loraplex.dev/base-model"
DTYPES = ("auto", "float16", "bfloat16", "float32")
MERGE_MODES = ("never", "auto", "always")  # spec.merge → LORAPLEX_WORKER_MERGE (docs/merge.md)


class InvalidPool(ValueError):
    """The pool's spec cannot be served; the message says which field and how to fix it."""


@dataclass(frozen=True)
class SecretKeyRef:
    """A key of a Secret in the pool's namespace (the worker secret)."""

    name: str
    key: str


@dataclass(frozen=True)
class Pool:
    name: str
    namespace: str
    uid: str
    base_model: str
    revision: str
    image: str
    scaling: ScalingSpec
    pinned_replicas: int | None = None  # spec.replicas, set by `kubectl scale bmp`
    worker: Mapping[str, Any] = field(default_factory=dict)
    worker_secret: SecretKeyRef | None = None  # None: the worker gets no secret (loopback only)
    merge: str | None = None  # spec.merge (fused serving); None: the worker's default

    @property
    def workload_name(self) -> str:
        return worker_service_name(self.name)


def parse_quantity(value: int | str, what: str) -> int:
    """Bytes from a Kubernetes quantity ("16Gi", "1.5G", 1024), read by :func:`quantity_value`;
    negative or milli sizes are refused."""
    number = quantity_value(value)
    if number is None or number < 0 or str(value).strip().endswith("m"):
        raise InvalidPool(f"{what}: {value!r} is not a size such as 16Gi or 1073741824")
    return int(number)


def parse_scaling(scaling: Mapping[str, Any]) -> ScalingSpec:
    spec = ScalingSpec(
        min_replicas=int(scaling.get("minReplicas", 0)),
        max_replicas=int(scaling.get("maxReplicas", 1)),
        target_requests_per_replica=float(scaling.get("targetRequestsPerReplica", 1.0)),
        scale_down_stabilization_s=float(scaling.get("scaleDownStabilizationSeconds", 300)),
        idle_to_zero_s=float(scaling.get("idleToZeroSeconds", 600)),
        scale_up_stabilization_s=float(scaling.get("scaleUpStabilizationSeconds", 0)),
    )
    try:
        spec.validate()
    except ValueError as exc:
        raise InvalidPool(str(exc)) from None
    return spec


def parse_pool(
    body: Mapping[str, Any], default_image: str, *, worker_secret: SecretKeyRef | None = None
) -> Pool:
    """Validate a BaseModelPool body (what the CRD schema cannot check, and what it can, since
    a cluster without the schema, or an older CRD, may let it through). ``worker_secret`` is
    the operator's setting, the same for every pool."""
    meta, spec = body.get("metadata", {}), body.get("spec") or {}
    try:
        base_model = validate_model_id(spec.get("baseModel", ""))
        revision = validate_revision(spec.get("revision") or "main")
    except BadRequest as exc:
        raise InvalidPool(f"spec.baseModel/revision: {exc.message}") from None
    worker = dict(spec.get("worker") or {})
    dtype = worker.get("dtype", "auto")
    if dtype not in DTYPES:
        raise InvalidPool(f"spec.worker.dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    for key in ("residentCacheSize", "hostCacheSize"):
        if worker.get(key) is not None:
            parse_quantity(worker[key], f"spec.worker.{key}")
    merge = spec.get("merge")
    if merge is not None and merge not in MERGE_MODES:
        raise InvalidPool(f"spec.merge: {merge!r} is not one of {', '.join(MERGE_MODES)}")
    pinned = spec.get("replicas")
    if pinned is not None and (not isinstance(pinned, int) or pinned < 0):
        raise InvalidPool(f"spec.replicas: {pinned!r} must be an integer >= 0 (or unset)")
    return Pool(
        name=meta["name"],
        namespace=meta.get("namespace", "default"),
        uid=meta.get("uid", ""),
        base_model=base_model,
        revision=revision,
        image=worker.get("image") or default_image,
        scaling=parse_scaling(spec.get("scaling") or {}),
        pinned_replicas=pinned,
        worker=worker,
        worker_secret=worker_secret,
        merge=merge,
    )


def selector_labels(pool: Pool) -> dict[str, str]:
    return {"app.kubernetes.io/name": "loraplex-worker", POOL_LABEL: pool.name}


def labels(pool: Pool) -> dict[str, str]:
    return {
        **selector_labels(pool),
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/instance": pool.name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def owner_reference(pool: Pool) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": pool.name,
        "uid": pool.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(pool: Pool) -> dict[str, Any]:
    return {
        "name": pool.workload_name,
        "namespace": pool.namespace,
        "labels": labels(pool),
        "annotations": {BASE_MODEL_ANNOTATION: pool.base_model},
        "ownerReferences": [owner_reference(pool)],
    }


def grace_s(pool: Pool) -> int:
    """terminationGracePeriodSeconds: long enough to finish an in-flight generation."""
    return int(pool.worker.get("terminationGracePeriodSeconds", 120))


def worker_env(pool: Pool) -> list[dict[str, Any]]:
    """The worker's settings (``LORAPLEX_WORKER_*``), its secret, the Hub token, then the user's
    env (last, so a user's entry with the same name wins)."""
    worker = pool.worker
    env = [
        {"name": "LORAPLEX_WORKER_BASE_MODEL", "value": pool.base_model},
        {"name": "LORAPLEX_WORKER_BASE_REVISION", "value": pool.revision},
        {"name": "LORAPLEX_WORKER_HOST", "value": "0.0.0.0"},
        {"name": "LORAPLEX_WORKER_PORT", "value": str(WORKER_PORT)},
        {"name": "LORAPLEX_WORKER_METRICS_PORT", "value": str(WORKER_METRICS_PORT)},
        {"name": "LORAPLEX_WORKER_DTYPE", "value": worker.get("dtype", "auto")},
        {"name": "LORAPLEX_WORKER_MAX_ADAPTER_SLOTS", "value": str(worker.get("adapterSlots", 4))},
        # The worker finishes its running generation within this, before the kubelet's kill.
        {
            "name": "LORAPLEX_WORKER_SHUTDOWN_GRACE_SECONDS",
            "value": str(max(0, grace_s(pool) - 10)),
        },
        {"name": "HF_HOME", "value": f"{CACHE_MOUNT}/hf"},
        {"name": "HOME", "value": "/tmp"},
    ]
    for key, var in (
        ("residentCacheSize", "LORAPLEX_WORKER_RESIDENT_CACHE_BYTES"),
        ("hostCacheSize", "LORAPLEX_WORKER_HOST_CACHE_BYTES"),
    ):
        if worker.get(key) is not None:
            env.append({"name": var, "value": str(parse_quantity(worker[key], key))})
    if pool.merge is not None:
        env.append({"name": "LORAPLEX_WORKER_MERGE", "value": pool.merge})
    if pool.worker_secret is not None:
        # Not optional: without it the worker refuses to start, so a missing Secret shows as
        # CreateContainerConfigError naming it, not as a worker every router call fails on.
        ref = {"name": pool.worker_secret.name, "key": pool.worker_secret.key}
        env.append({"name": "LORAPLEX_WORKER_SECRET", "valueFrom": {"secretKeyRef": ref}})
    secret = worker.get("hfTokenSecret")
    if secret:
        ref = {"name": secret["name"], "key": secret.get("key", "token"), "optional": True}
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": ref}})
    return env + [dict(item) for item in worker.get("env") or []]


def _probes() -> dict[str, Any]:
    """Both probes on the metrics port: it needs no secret, and the API port admits only the
    router's pods (the chart's NetworkPolicy)."""
    probe = {
        "httpGet": {"path": "/readyz", "port": "metrics"},
        "periodSeconds": 5,
        "timeoutSeconds": 3,
        "failureThreshold": 3,
    }
    return {
        # Ready only once the base pipeline is warm: the router sends nothing before.
        "readinessProbe": probe,
        # /healthz answers while the process serves HTTP, even while the base loads.
        "livenessProbe": {
            **probe,
            "httpGet": {"path": "/healthz", "port": "metrics"},
            "periodSeconds": 20,
            "failureThreshold": 3,
        },
    }


def _container(pool: Pool) -> dict[str, Any]:
    worker = pool.worker
    container: dict[str, Any] = {
        "name": "worker",
        "image": pool.image,
        "command": ["loraplex", "worker"],
        "ports": [
            {"name": "http", "containerPort": WORKER_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": WORKER_METRICS_PORT, "protocol": "TCP"},
        ],
        "env": worker_env(pool),
        **_probes(),
        "volumeMounts": [
            {"name": "model-cache", "mountPath": CACHE_MOUNT},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        # Same posture as every pod the chart renders: non-root, read-only root filesystem
        # (HOME on /tmp, HF_HOME on the cache volume), no capabilities.
        "securityContext": {
            "runAsNonRoot": True,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "resources": dict(worker.get("resources") or {}),
        # A worker that cannot serve its base exits non-zero naming the model and the reason;
        # the log tail becomes the termination message, which the pool's Degraded shows.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if worker.get("imagePullPolicy"):
        container["imagePullPolicy"] = worker["imagePullPolicy"]
    return container


def _pod_spec(pool: Pool) -> dict[str, Any]:
    worker = pool.worker
    cache = dict(worker.get("cacheVolume") or {})
    if not cache:
        cache = (
            {"emptyDir": {"sizeLimit": worker["cacheSizeLimit"]}}
            if worker.get("cacheSizeLimit")
            else {"emptyDir": {}}
        )
    spec: dict[str, Any] = {
        "containers": [_container(pool)],
        # Long enough to finish an in-flight generation after SIGTERM.
        "terminationGracePeriodSeconds": grace_s(pool),
        "automountServiceAccountToken": False,  # workers never call the Kubernetes API
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "fsGroup": WORKER_UID,  # the cache volume is writable by the worker
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumes": [{"name": "model-cache", **cache}, {"name": "tmp", "emptyDir": {}}],
    }
    for key in ("nodeSelector", "tolerations", "affinity", "serviceAccountName"):
        # None, not omitted, when the pool has none: the merge patch then removes a value
        # the pool used to set, and drifted() sees that one is still there.
        spec[key] = worker.get(key) or None
    return spec


def build_deployment(pool: Pool, replicas: int) -> dict[str, Any]:
    """The worker Deployment of ``pool`` with ``replicas`` (the scaling decision)."""
    template_meta: dict[str, Any] = {"labels": labels(pool)}
    if pool.worker.get("podAnnotations"):
        template_meta["annotations"] = dict(pool.worker["podAnnotations"])
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(pool),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(pool)},
            # Never below the current capacity during a rollout: one new GPU pod at a time.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {"metadata": template_meta, "spec": _pod_spec(pool)},
        },
    }


def build_service(pool: Pool) -> dict[str, Any]:
    """A headless Service: its EndpointSlices list each worker pod, which the router picks
    itself (adapter affinity), so no virtual IP is wanted. Port ``http`` is the router's,
    ``metrics`` the ServiceMonitor's."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(pool),
        "spec": {
            "clusterIP": "None",
            "selector": selector_labels(pool),
            "ports": [
                {"name": "http", "port": WORKER_PORT, "targetPort": "http", "protocol": "TCP"},
                {
                    "name": "metrics",
                    "port": WORKER_METRICS_PORT,
                    "targetPort": "metrics",
                    "protocol": "TCP",
                },
            ],
        },
    }


def drifted(desired: Any, actual: Any, key: str = "") -> bool:
    """True when ``actual`` lacks or changed something in ``desired`` (extra fields, e.g.
    server defaults, are fine; a desired ``None`` means "must be absent"). Lists must match
    element by element. The API server's own rewrites are not drift: quantities in canonical
    form (``16384Mi`` → ``16Gi``, ``0.5`` → ``500m``) and empty strings it drops."""
    if isinstance(desired, Mapping):
        if not isinstance(actual, Mapping):
            return True
        return any(drifted(value, actual.get(name), name) for name, value in desired.items())
    if isinstance(desired, list):
        if not isinstance(actual, list) or len(actual) != len(desired):
            return True
        return any(drifted(d, a, key) for d, a in zip(desired, actual, strict=True))
    if desired == "" and actual is None:
        return False
    if key in QUANTITY_KEYS:
        wanted, have = quantity_value(desired), quantity_value(actual)
        if wanted is not None and have is not None:
            return wanted != have
    # The API server may hand back 1 as "1" (e.g. resource quantities read as strings).
    return bool(desired != actual and str(desired) != str(actual))


# Keys whose values are Kubernetes quantities in the objects we build.
QUANTITY_KEYS = frozenset({"cpu", "memory", "nvidia.com/gpu", "ephemeral-storage", "sizeLimit"})
_QUANTITY = re.compile(r"([+-]?[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)(m|k|[KMGTPE]i?)?")
_QUANTITY_SCALE = {
    "m": Decimal("0.001"),
    "k": Decimal(10**3),
    "": Decimal(1),
    **{s: Decimal(10 ** (3 * i)) for i, s in enumerate("KMGTPE", start=1) if s != "K"},
    **{f"{s}i": Decimal(2 ** (10 * i)) for i, s in enumerate("KMGTPE", start=1)},
}


def quantity_value(value: Any) -> Decimal | None:
    """The number a Kubernetes quantity stands for, or None when ``value`` is not one.
    Hand-written: neither kopf nor kubernetes_asyncio ships a quantity parser."""
    match = _QUANTITY.fullmatch(str(value).strip()) if value is not None else None
    if match is None:
        return None
    try:
        return Decimal(match.group(1)) * _QUANTITY_SCALE[match.group(2) or ""]
    except (InvalidOperation, KeyError):
        return None


def condition(
    conditions: list[Mapping[str, Any]] | None,
    type_: str,
    status: bool,
    reason: str,
    message: str,
    now: datetime.datetime,
) -> list[dict[str, Any]]:
    """``conditions`` with ``type_`` set; lastTransitionTime moves only when status changes."""
    value = "True" if status else "False"
    result, previous = [], None
    for item in conditions or []:
        if item.get("type") == type_:
            previous = item
        else:
            result.append(dict(item))
    changed = previous is None or previous.get("status") != value
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    result.append(
        {
            "type": type_,
            "status": value,
            "reason": reason,
            "message": message,
            "lastTransitionTime": stamp if changed else previous.get("lastTransitionTime", stamp),
        }
    )
    return sorted(result, key=lambda c: c["type"])
