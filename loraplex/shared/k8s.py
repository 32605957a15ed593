"""What router and operator agree on about Kubernetes objects (they never import each other).

The ``BaseModelPool`` resource, the name of the worker Service the operator creates for a pool
(whose EndpointSlices the router watches), and how both read those slices. Plain data: how both
log in to the cluster is in :mod:`loraplex.shared.kube_login` (it needs kubernetes_asyncio).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

GROUP = "loraplex.dev"
VERSION = "v1alpha1"
PLURAL = "basemodelpools"
KIND = "BaseModelPool"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"  # set by Kubernetes on EndpointSlices


def worker_service_name(pool_name: str) -> str:
    """The worker Deployment and Service of a pool (the operator creates both)."""
    return f"{pool_name}-worker"


def slice_urls(endpoint_slice: Mapping[str, Any], port_name: str = "http") -> list[str]:
    """``http://addr:port`` for every ready, non-terminating endpoint of one EndpointSlice
    (``conditions.ready`` absent means ready, as Kubernetes defines it); the port named
    ``port_name``, else the slice's first."""
    ports = endpoint_slice.get("ports") or []
    port = next((p.get("port") for p in ports if p.get("name") == port_name), None)
    if port is None and ports:
        port = ports[0].get("port")
    if port is None:
        return []
    ipv6 = endpoint_slice.get("addressType") == "IPv6"
    urls = []
    for endpoint in endpoint_slice.get("endpoints") or []:
        conditions = endpoint.get("conditions") or {}
        if conditions.get("ready") is False or conditions.get("terminating") is True:
            continue
        for address in endpoint.get("addresses") or []:
            host = f"[{address}]" if ipv6 or ":" in address else address
            urls.append(f"http://{host}:{port}")
    return urls
