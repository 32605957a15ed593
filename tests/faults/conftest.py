"""Fixtures for tests/faults (each test's docstring gives its figure).

``proxied_kubeconfig`` — a kubeconfig for the Kubernetes API emulator (``k8s``) *through* a
:class:`fixtures.faults.CuttableProxy`; yields the proxy. Made the default kubeconfig as
``k8s_kubeconfig`` does (``$KUBECONFIG`` and kubernetes_asyncio's default location).
"""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator

import pytest
from fixtures.faults import CuttableProxy
from fixtures.k8s import write_kubeconfig
from fixtures.k8s_emulator import K8sEmulator
from yarl import URL


@pytest.fixture()
async def proxied_kubeconfig(
    k8s: K8sEmulator, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[CuttableProxy]:
    """The emulator behind a :class:`CuttableProxy`, as every client's default kubeconfig."""
    import kubernetes_asyncio.config.kube_config as kube_config

    url = URL(str(k8s.url))
    proxy = await CuttableProxy(url.host or "127.0.0.1", url.port or 80).start()
    path = tmp_path / "kubeconfig"
    write_kubeconfig(path, proxy.url)
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    for var in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        monkeypatch.delenv(var, raising=False)
    yield proxy
    await proxy.stop()
