"""Kubernetes I/O for the operator (kubernetes_asyncio), kept out of the kopf handlers.

Objects go in and out as plain dicts (the builders in :mod:`loraplex.operator.resources` make
them). Writes are create-if-absent, then JSON merge patches of only what drifted, so a pool
that is already right costs one GET per object and no write.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
import kopf
from kubernetes_asyncio import client
from loraplex.operator.resources import drifted

from loraplex.shared.k8s import SERVICE_NAME_LABEL
from loraplex.shared.kube_login import load_client_config

log = logging.getLogger(__name__)
MERGE_PATCH = "application/merge-patch+json"


def api_errors(what: str, exc: Exception) -> Exception:
    """Map an API failure to kopf: bad requests are permanent, the rest retried with a delay."""
    if isinstance(exc, client.ApiException):
        if exc.status in (400, 422):
            return kopf.PermanentError(
                f"{what}: the API server refused it ({exc.status}): {exc.body}"
            )
        delay = 10.0 if exc.status in (401, 403) else 3.0
        return kopf.TemporaryError(f"{what}: API error {exc.status} {exc.reason}", delay=delay)
    return kopf.TemporaryError(f"{what}: {exc}", delay=3.0)


class Kube:
    """The few calls the operator makes, on one shared ApiClient."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.discovery = client.DiscoveryV1Api(api)
        self._pods_refused = False  # warned once that RBAC forbids listing Pods

    @classmethod
    async def connect(cls) -> Kube:
        return cls(client.ApiClient(await load_client_config()))

    async def close(self) -> None:
        await self.api.close()

    def _dict(self, model: Any) -> dict[str, Any]:
        return self.api.sanitize_for_serialization(model)

    async def read_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._dict(await self.apps.read_namespaced_deployment(name, namespace))
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def read_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._dict(await self.core.read_namespaced_service(name, namespace))
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def ensure(self, desired: Mapping[str, Any], actual: Mapping[str, Any] | None) -> str:
        """Create ``desired`` if absent, patch it if drifted; returns what was done."""
        meta = desired["metadata"]
        ns, name, kind = meta["namespace"], meta["name"], desired["kind"]
        try:
            if actual is None:
                try:
                    if kind == "Deployment":
                        await self.apps.create_namespaced_deployment(ns, desired)
                    else:
                        await self.core.create_namespaced_service(ns, desired)
                except client.ApiException as exc:
                    if exc.status != 409:
                        raise
                    # Created meanwhile (the pool's timer and its create handler can race);
                    # the next tick compares and patches it like any other.
                    return "already exists"
                return "created"
            if not drifted(desired, actual):
                return "unchanged"
            if kind == "Deployment":
                await self.apps.patch_namespaced_deployment(
                    name, ns, desired, _content_type=MERGE_PATCH
                )
            else:
                await self.core.patch_namespaced_service(
                    name, ns, desired, _content_type=MERGE_PATCH
                )
            return "patched"
        except (client.ApiException, aiohttp.ClientError) as exc:
            raise api_errors(f"{kind} {ns}/{name}", exc) from exc

    async def scale_deployment(self, namespace: str, name: str, replicas: int) -> None:
        patch = {"spec": {"replicas": replicas}}
        try:
            await self.apps.patch_namespaced_deployment(
                name, namespace, patch, _content_type=MERGE_PATCH
            )
        except (client.ApiException, aiohttp.ClientError) as exc:
            raise api_errors(f"scaling Deployment {namespace}/{name}", exc) from exc

    async def list_pods(self, namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        """The pool's worker Pods (for :mod:`loraplex.operator.health`). A 403 (RBAC from a
        chart older than this operator: no ``list pods``) gives none, with a warning once, so
        scaling goes on and only the pod-level reasons are missing."""
        label_selector = ",".join(f"{k}={v}" for k, v in selector.items())
        try:
            # Raw JSON, not kubernetes_asyncio's models: their validation raises on a status
            # the kubelet may legitimately leave half-filled (a container not yet pulled).
            response = await self.core.list_namespaced_pod(
                namespace, label_selector=label_selector, _preload_content=False
            )
            async with response:
                result = await response.json()
        except client.ApiException as exc:
            if exc.status != 403:
                raise
            if not self._pods_refused:
                log.warning(
                    "listing Pods in %s is forbidden: pool conditions show Deployment failures "
                    "only (grant 'list pods' to the operator, as the chart does)",
                    namespace,
                )
                self._pods_refused = True
            return []
        return list(result.get("items") or [])

    async def endpoint_slices(self, namespace: str, service: str) -> list[dict[str, Any]]:
        result = await self.discovery.list_namespaced_endpoint_slice(
            namespace, label_selector=f"{SERVICE_NAME_LABEL}={service}"
        )
        return [self._dict(item) for item in result.items]
