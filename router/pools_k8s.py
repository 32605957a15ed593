"""Kubernetes pool source: ``BaseModelPool`` objects and their Services' EndpointSlices.

Two watches (kubernetes_asyncio) in one namespace, or in all of them when ``namespace`` is
``""``, each list-then-watch from the list's ``resourceVersion``, relisting after a 410 Gone or
a dropped connection:

* ``basemodelpools.loraplex.dev/v1alpha1`` — pool name → ``spec.baseModel``;
* ``discovery.k8s.io/v1`` EndpointSlices labelled ``kubernetes.io/service-name``.

The operator names each pool's Service ``<pool name>-worker``
(``loraplex.operator.resources.Pool.workload_name``) — that naming is the contract read here;
the router does not import the operator. Only *ready*, non-terminating endpoints count
(``conditions.ready`` absent means ready, as Kubernetes defines it). :func:`pool_endpoints`
is the pure part: objects in, ``{base model: [worker URL, …]}`` out.

RBAC: ``get/list/watch`` on ``basemodelpools`` and ``endpointslices`` in the namespace (a
ClusterRole for all namespaces). Objects are keyed ``<namespace>/<name>``, so pools of the
same name in two namespaces stay apart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException
from loraplex.router.pools import PoolRegistry

from loraplex.shared.k8s import (
    GROUP,
    PLURAL,
    SERVICE_NAME_LABEL,
    VERSION,
    slice_urls,
    worker_service_name,
)
from loraplex.shared.kube_login import load_client_config

log = logging.getLogger(__name__)

RELIST_BACKOFF_S = 1.0
WATCH_TIMEOUT_S = 300  # server-side watch timeout; the loop re-watches from the last version


def pool_endpoints(
    pools: Mapping[str, str], slices: Mapping[str, Mapping[str, Any]]
) -> dict[str, list[str]]:
    """Pure: pools (``[namespace/]name`` → base model) and EndpointSlices → base → worker URLs."""
    by_service: dict[str, list[str]] = {}
    for endpoint_slice in slices.values():
        metadata = endpoint_slice.get("metadata") or {}
        service = (metadata.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if service:
            key = f"{metadata.get('namespace') or ''}/{service}"
            by_service.setdefault(key, []).extend(slice_urls(endpoint_slice))
    result: dict[str, list[str]] = {}
    for pool_key, base in sorted(pools.items()):
        namespace, _, pool_name = pool_key.rpartition("/")
        service_key = f"{namespace}/{worker_service_name(pool_name)}"
        result.setdefault(base, []).extend(by_service.get(service_key, []))
    return {base: sorted(set(urls)) for base, urls in result.items()}


def pool_failure(obj: Mapping[str, Any]) -> str | None:
    """Pure: why a BaseModelPool's workers fail, from its ``Degraded=True`` condition (the
    operator's reading of CrashLoopBackOff, ImagePullBackOff, …), or None."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Degraded" and cond.get("status") in (True, "True"):
            reason, message = cond.get("reason") or "Degraded", cond.get("message") or ""
            return f"{reason}: {message}" if message else reason
    return None


def _key(obj: Mapping[str, Any]) -> str:
    metadata = obj["metadata"]
    return f"{metadata.get('namespace') or ''}/{metadata['name']}"


class KubernetesPoolSource:
    """Keeps a :class:`PoolRegistry` equal to the pools and ready endpoints in ``namespace``."""

    def __init__(self, namespace: str, api_client: client.ApiClient | None = None) -> None:
        self.namespace = namespace
        self._api = api_client
        self._pools: dict[str, str] = {}  # pool name -> base model
        self._failing: dict[str, str] = {}  # base model -> why its workers fail
        self._slices: dict[str, dict[str, Any]] = {}
        self._listed = {"pools": False, "slices": False}
        self._registry: PoolRegistry | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, registry: PoolRegistry) -> None:
        self._registry = registry
        if self._api is None:
            self._api = client.ApiClient(await load_client_config())
        custom = client.CustomObjectsApi(self._api)
        discovery = client.DiscoveryV1Api(self._api)
        if self.namespace:
            list_pools = (
                custom.list_namespaced_custom_object,
                (GROUP, VERSION, self.namespace, PLURAL),
            )
            list_slices = (discovery.list_namespaced_endpoint_slice, (self.namespace,))
        else:  # "" = every namespace (the chart's cluster-wide mode)
            list_pools = (custom.list_cluster_custom_object, (GROUP, VERSION, PLURAL))
            list_slices = (discovery.list_endpoint_slice_for_all_namespaces, ())
        selector = {"label_selector": SERVICE_NAME_LABEL}
        self._tasks = [
            asyncio.create_task(
                self._watch_forever("pools", *list_pools, {}, self._on_pool),
                name="loraplex-watch-pools",
            ),
            asyncio.create_task(
                self._watch_forever("slices", *list_slices, selector, self._on_slice),
                name="loraplex-watch-slices",
            ),
        ]
        for task in self._tasks:
            task.add_done_callback(self._on_watch_done)

    def _on_watch_done(self, task: asyncio.Task[None]) -> None:
        """A watch that dies for good makes the router unready, so Kubernetes restarts it."""
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self._registry is not None:
            log.error(
                "watch %s stopped: %s: %s; marking the router not ready",
                task.get_name(),
                type(exc).__name__,
                exc,
            )
            self._registry.synced = False

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        # Only cancellation is expected here; a watch that failed was already logged.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._api is not None:
            await self._api.close()

    def _on_pool(self, kind: str, obj: Mapping[str, Any]) -> None:
        name = _key(obj)
        base = (obj.get("spec") or {}).get("baseModel")
        if kind == "DELETED" or not base:
            old = self._pools.pop(name, None)
            self._failing.pop(old or "", None)
            return
        self._pools[name] = base
        failure = pool_failure(obj)
        if failure is None:
            self._failing.pop(base, None)
        else:
            self._failing[base] = failure

    def _on_slice(self, kind: str, obj: Mapping[str, Any]) -> None:
        name = _key(obj)
        if kind == "DELETED":
            self._slices.pop(name, None)
        else:
            self._slices[name] = dict(obj)

    def _publish(self) -> None:
        registry = self._registry
        if registry is None or not all(self._listed.values()):
            return
        wanted = pool_endpoints(self._pools, self._slices)
        for base in registry.served() - set(wanted):
            registry.remove_pool(base)
        for base, urls in wanted.items():
            registry.set_pool(base, urls)
            registry.set_failing(base, self._failing.get(base))
        registry.synced = True

    async def _watch_forever(
        self,
        what: str,
        list_fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        apply: Callable[[str, Mapping[str, Any]], None],
    ) -> None:
        assert self._api is not None
        while True:
            try:
                listing = await list_fn(*args, **kwargs, _preload_content=False)
                if listing.status != 200:  # unpreloaded answers are not raised for us
                    raise ApiException(status=listing.status, reason=listing.reason)
                body = await listing.json()
                self._replace_all(what, body.get("items") or [], apply)
                version = (body.get("metadata") or {}).get("resourceVersion")
                async with watch.Watch() as stream:
                    async for event in stream.stream(
                        list_fn,
                        *args,
                        **kwargs,
                        resource_version=version,
                        timeout_seconds=WATCH_TIMEOUT_S,
                    ):
                        if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                            apply(event["type"], event["raw_object"])
                            self._publish()
            except ApiException as exc:
                if exc.status != 410:
                    log.warning("watch of %s failed (%s); relisting", what, exc.status)
                    await asyncio.sleep(RELIST_BACKOFF_S)
            except (aiohttp.ClientError, TimeoutError) as exc:
                # %s, never %r: an aiohttp error's repr holds the request's Authorization header.
                log.warning("watch of %s lost (%s: %s); relisting", what, type(exc).__name__, exc)
                await asyncio.sleep(RELIST_BACKOFF_S)

    def _replace_all(
        self,
        what: str,
        items: list[Mapping[str, Any]],
        apply: Callable[[str, Mapping[str, Any]], None],
    ) -> None:
        if what == "pools":
            self._pools.clear()
        else:
            self._slices.clear()
        for item in items:
            apply("ADDED", item)
        self._listed[what] = True
        self._publish()
