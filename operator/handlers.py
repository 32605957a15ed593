"""kopf handlers for BaseModelPool: thin wiring of the pure builders and policy to the API.

* create / update / resume → :func:`reconcile`: validate the spec, create-or-patch the worker
  Deployment and Service (owned by the pool, so the garbage collector removes them with it),
  write status. An invalid spec sets ``Degraded`` and raises ``kopf.PermanentError``; nothing
  is created.
* a timer every ``interval_s`` → :func:`tick`: repair drift, read rate and pending, ask the
  policy, write replicas and status, export metrics.
* delete → forget the pool's policy and metric series (``optional``: it adds no finalizer of
  its own; the timer's finalizer makes kopf see the deletion and run it).

Which replicas and conditions to write is decided by pure functions —
:mod:`loraplex.operator.scaling` (the policy) and :mod:`loraplex.operator.replicas` (the pin,
the reconcile count, the manual-scale rule, the conditions); this module only wires them.

Register them on an explicit registry with :func:`register` (no global registry).
"""

from __future__ import annotations

import datetime
import logging
import secrets
from collections.abc import Mapping
from typing import Any

import aiohttp
import httpx
import kopf
from kubernetes_asyncio import client
from loraplex.operator import health
from loraplex.operator import replicas as rules
from loraplex.operator import resources as res
from loraplex.operator.kube import api_errors
from loraplex.operator.runtime import Runtime
from loraplex.operator.scaling import Decision, Observation
from loraplex.operator.settings import OperatorSettings

from loraplex.shared import k8s

log = logging.getLogger(__name__)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _conditions(status: Any, *updates: tuple[str, bool, str, str]) -> list[dict[str, Any]]:
    """The pool's status.conditions with each (type, ok, reason, message) of ``updates`` set."""
    conditions = list((status or {}).get("conditions") or [])
    for type_, ok, reason, message in updates:
        conditions = res.condition(conditions, type_, ok, reason, message, _now())
    return conditions


def parse_pool(body: Mapping[str, Any], settings: OperatorSettings) -> res.Pool:
    """:func:`res.parse_pool` with the operator's defaults: worker image and worker secret."""
    secret = None
    if settings.worker_secret_name:
        secret = res.SecretKeyRef(settings.worker_secret_name, settings.worker_secret_key)
    return res.parse_pool(body, settings.default_worker_image, worker_secret=secret)


def _parse(body: kopf.Body, runtime: Runtime, patch: kopf.Patch) -> res.Pool:
    try:
        return parse_pool(body, runtime.settings)
    except res.InvalidPool as exc:
        patch.status["conditions"] = _conditions(
            body.get("status"),
            ("Degraded", True, "InvalidSpec", str(exc)),
            ("Ready", False, "InvalidSpec", "fix the spec; nothing was created"),
        )
        patch.status["state"] = health.pool_state(0, 0, None, invalid=True)
        raise kopf.PermanentError(f"invalid BaseModelPool: {exc}") from None


async def reconcile(body: kopf.Body, patch: kopf.Patch, operator: Runtime, **_: Any) -> None:
    """Create or patch the pool's Deployment and Service (``operator``: kopf passes its own
    ``runtime`` kwarg, hence the name)."""
    runtime = operator
    pool = _parse(body, runtime, patch)
    try:
        current = await runtime.kube.read_deployment(pool.namespace, pool.workload_name)
        service = await runtime.kube.read_service(pool.namespace, pool.workload_name)
    except (client.ApiException, aiohttp.ClientError) as exc:
        raise api_errors("reading the pool's Deployment", exc) from exc
    await _apply(pool, current, service, body, patch, runtime)


async def _apply(
    pool: res.Pool,
    current: dict[str, Any] | None,
    service: dict[str, Any] | None,
    body: kopf.Body,
    patch: kopf.Patch,
    runtime: Runtime,
) -> None:
    """Create or patch the Deployment and Service from objects already read; write status."""
    replicas = rules.replicas_on_reconcile(
        pool.pinned_replicas,
        None if current is None else current["spec"].get("replicas") or 0,
        pool.scaling,
    )
    did = await runtime.kube.ensure(res.build_deployment(pool, replicas), current)
    await runtime.kube.ensure(res.build_service(pool), service)
    runtime.memory(pool, last_desired(body)).last_written = replicas
    log.info("pool %s/%s: Deployment %s (%d replicas)", pool.namespace, pool.name, did, replicas)
    patch.status.update(
        {
            "deployment": pool.workload_name,
            "service": pool.workload_name,
            "selector": ",".join(f"{k}={v}" for k, v in res.selector_labels(pool).items()),
            "desiredReplicas": replicas,
            "observedGeneration": body.get("metadata", {}).get("generation"),
            "conditions": _conditions(body.get("status"), *_reconciled(body, did)),
        }
    )


def _reconciled(body: kopf.Body, did: str) -> list[tuple[str, bool, str, str]]:
    """Degraded=False after a reconcile, unless the workers are what is failing: that is the
    timer's to clear (a spec edit does not heal a crash-looping pod)."""
    conditions = (body.get("status") or {}).get("conditions") or []
    degraded = next((c for c in conditions if c.get("type") == "Degraded"), None)
    if degraded and degraded.get("status") == "True" and degraded.get("reason") != "InvalidSpec":
        return []
    return [("Degraded", False, "Reconciled", f"Deployment {did}")]


async def tick(
    body: kopf.Body, patch: kopf.Patch, operator: Runtime, logger: kopf.Logger, **_: Any
) -> None:
    runtime = operator
    try:
        pool = parse_pool(body, runtime.settings)
    except res.InvalidPool:
        return  # reconcile() reported it; a spec change re-runs reconcile
    try:
        # Every input is read fresh each tick, before anything is decided: while the API
        # server is unreachable a tick raises here (kopf retries it) and writes nothing.
        deployment = await runtime.kube.read_deployment(pool.namespace, pool.workload_name)
        service = await runtime.kube.read_service(pool.namespace, pool.workload_name)
        snapshot = await runtime.rates.read()
        pods = []
        if deployment is not None and health.pods_worth_reading(deployment):
            pods = await runtime.kube.list_pods(pool.namespace, res.selector_labels(pool))
    except (client.ApiException, aiohttp.ClientError, httpx.HTTPError) as exc:
        raise api_errors("reading the pool's objects and the routers' rates", exc) from exc
    if (
        deployment is None
        or res.drifted(_without_replicas(pool), deployment)
        or res.drifted(res.build_service(pool), service)
    ):
        seen = pool.uid in runtime.pools  # not yet: the create handler is still on its way
        (logger.warning if seen else logger.info)(
            "Deployment or Service %s missing or changed by hand: repairing", pool.workload_name
        )
        await _apply(pool, deployment, service, body, patch, runtime)  # objects just read
        return
    memory = runtime.memory(pool, last_desired(body))
    current = deployment["spec"].get("replicas") or 0
    ready = (deployment.get("status") or {}).get("readyReplicas") or 0
    obs = Observation(
        now=runtime.clock(),
        rate=snapshot.rate(pool.base_model),
        pending=snapshot.pending_for(pool.base_model),
        ready_replicas=ready,
        current_replicas=current,
    )
    if snapshot.blind:
        # Routers were asked and none answered: a rate of 0 would be a guess, and acting on
        # it would scale a busy pool down and back up when they answer again. Keep the count
        # (a pin still applies) and let the policy's windows see nothing.
        if not memory.blind:
            logger.warning(
                "no router answered its /metrics (%d asked): keeping %d replicas until one does",
                snapshot.expected,
                current,
            )
        kept = Decision(current, f"no rate data: none of {snapshot.expected} routers answered")
        decision = rules.apply_pin(kept, pool.pinned_replicas)
    else:
        decision = rules.apply_pin(memory.policy.decide(obs), pool.pinned_replicas)
    memory.blind = snapshot.blind
    if decision.replicas != current:
        if rules.scaled_outside(current, memory.last_written):
            logger.warning(
                "Deployment %s was scaled to %d outside the operator; setting %d (%s). To pin a "
                "size, `kubectl scale bmp %s --replicas=N` instead.",
                pool.workload_name,
                current,
                decision.replicas,
                decision.reason,
                pool.name,
            )
        await runtime.kube.scale_deployment(pool.namespace, pool.workload_name, decision.replicas)
        logger.info("scaled %d → %d: %s", current, decision.replicas, decision.reason)
        patch.status["lastScaleTime"] = _now().strftime("%Y-%m-%dT%H:%M:%SZ")
        patch.status["lastScaleReason"] = decision.reason
    else:
        logger.debug("keeping %d: %s", current, decision.reason)
    memory.last_written = decision.replicas
    runtime.metrics.record(
        pool.namespace, pool.name, pool.base_model, decision.replicas, obs.rate, obs.pending
    )
    _write_status(body, patch, decision, obs, deployment, health.workload_failure(deployment, pods))


def _without_replicas(pool: res.Pool) -> dict[str, Any]:
    desired = res.build_deployment(pool, 0)
    del desired["spec"]["replicas"]
    return desired


def _write_status(
    body: kopf.Body,
    patch: kopf.Patch,
    decision: Decision,
    obs: Observation,
    deployment: dict[str, Any],
    failure: health.Failure | None,
) -> None:
    conditions = rules.status_conditions(
        obs.ready_replicas, decision.replicas, decision.reason, failure
    )
    patch.status.update(
        {
            "state": health.pool_state(obs.ready_replicas, decision.replicas, failure),
            "replicas": (deployment.get("status") or {}).get("replicas") or 0,
            "readyReplicas": obs.ready_replicas,
            "desiredReplicas": decision.replicas,
            "observedRate": round(obs.rate, 4),
            "pending": obs.pending,
            "conditions": _conditions(body.get("status"), *conditions),
        }
    )


def last_desired(body: Mapping[str, Any]) -> int | None:
    """The replicas the operator last decided for a pool (kept in its status across restarts);
    whichever handler meets the pool first after a restart seeds its policy with them."""
    return (body.get("status") or {}).get("desiredReplicas")


def configure_kopf(settings: kopf.OperatorSettings, config: OperatorSettings) -> None:
    """kopf's own settings: progress and diff-base in annotations (not in status, which the
    CRD's structural schema would prune), peering, and no cluster scanning by default."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="loraplex.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="loraplex.dev", key="last-handled-configuration"
    )
    # Warnings and errors logged about a pool (e.g. a manual `kubectl scale deployment` that
    # the operator overwrites) become Kubernetes Events on the pool (kopf 1.45: off by default).
    settings.posting.loggers = True
    settings.posting.level = logging.WARNING
    settings.scanning.disabled = not config.cluster_scanning
    # kopf freezes *every* operator when peers share a priority, so each replica draws its
    # own: the highest one runs, the others pause, and when it dies (its peering entry
    # expires after settings.peering.lifetime) the next highest resumes — one active scaler.
    settings.peering.priority = config.peering_priority or secrets.randbelow(2**31 - 1) + 1


def register(registry: kopf.OperatorRegistry, config: OperatorSettings) -> None:
    """Register every BaseModelPool handler on ``registry``."""
    resource = (k8s.GROUP, k8s.VERSION, k8s.PLURAL)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        configure_kopf(settings, config)
        memo["runtime"] = await Runtime.start(config)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        if "runtime" in memo:
            await memo["runtime"].close()

    @kopf.on.resume(*resource, registry=registry)
    @kopf.on.create(*resource, registry=registry)
    @kopf.on.update(*resource, registry=registry)
    async def reconcile_pool(memo: kopf.Memo, **kwargs: Any) -> None:
        await reconcile(operator=memo["runtime"], **kwargs)

    @kopf.timer(*resource, interval=config.interval_s, registry=registry)
    async def scale_pool(memo: kopf.Memo, **kwargs: Any) -> None:
        await tick(operator=memo["runtime"], **kwargs)

    @kopf.on.delete(*resource, optional=True, registry=registry)
    async def forget_pool(memo: kopf.Memo, body: kopf.Body, **_: Any) -> None:
        runtime: Runtime = memo["runtime"]
        uid = body.get("metadata", {}).get("uid", "")
        runtime.pools.pop(uid, None)
        meta, spec = body.get("metadata", {}), body.get("spec") or {}
        runtime.metrics.forget(
            meta.get("namespace", ""), meta.get("name", ""), spec.get("baseModel", "")
        )
