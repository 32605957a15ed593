"""What router and operator agree on about Kubernetes objects (they never import each other).

The ``BaseModelPool`` resource, the name of the worker Service the operator creates for a pool
(whose EndpointSlices the router watches), and how both find cluster credentials.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kubernetes_asyncio import client

GROUP = "loraplex.dev"
VERSION = "v1alpha1"
PLURAL = "basemodelpools"
KIND = "BaseModelPool"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"  # set by Kubernetes on EndpointSlices


def worker_service_name(pool_name: str) -> str:
    """The worker Deployment and Service of a pool (the operator creates both)."""
    return f"{pool_name}-worker"


async def load_client_config() -> client.Configuration:
    """In-cluster service account first, then the standard kubeconfig ($KUBECONFIG, ~/.kube)."""
    # Imported here: kubernetes_asyncio is in the router/operator extras, not the core.
    from kubernetes_asyncio import client, config

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:  # not in a pod (no service-account token or env)
        await config.load_kube_config(client_configuration=configuration)
    return configuration
