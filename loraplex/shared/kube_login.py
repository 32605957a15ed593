"""How router and operator find cluster credentials (both use kubernetes_asyncio's client)."""

from __future__ import annotations

from kubernetes_asyncio import client, config


async def load_client_config() -> client.Configuration:
    """In-cluster service account first, then the standard kubeconfig ($KUBECONFIG, ~/.kube)."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:  # not in a pod (no service-account token or env)
        await config.load_kube_config(client_configuration=configuration)
    return configuration
