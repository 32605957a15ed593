"""Prefetch wired to the worker: the :class:`~loraplex.worker.prefetch.Loader` over an
:class:`~loraplex.worker.pipeline.Engine`, the prefetcher the app builds from the settings (and
its metrics), and the generate handler's claim (:func:`prefetching`). The policy itself is
:mod:`loraplex.worker.prefetch`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from loraplex.worker.adapters import AdapterKey
from loraplex.worker.prefetch import DEVICE_EVENTS, Plan, Prefetcher

from loraplex.shared.contract import AdapterRef, SwitchTier

if TYPE_CHECKING:
    from loraplex.worker.metrics import WorkerMetrics
    from loraplex.worker.pipeline import Engine
    from loraplex.worker.settings import WorkerSettings
    from loraplex.worker.slot_layout import PackedAdapter


class EngineLoader:
    """:class:`Loader` over an :class:`~loraplex.worker.pipeline.Engine`: the same resolve,
    download and convert code as the device's own load (``Engine.fetch_file``/``convert_file``)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def plan(self, ref: AdapterRef, token: str | None) -> Plan:
        engine = self.engine
        key = engine.fetcher.resolve(ref, token)
        if not engine.needs_load(key):
            return Plan(key, None, needed=False)
        return Plan(key, engine.fetcher.weight_file(key, token).size, needed=True)

    def download(self, key: AdapterKey, token: str | None) -> tuple[Path, int, SwitchTier]:
        path, tier = self.engine.fetch_file(key, token)
        return path, path.stat().st_size, tier

    def convert(self, file: Path) -> tuple[PackedAdapter, int] | None:
        converted = self.engine.convert_file(file)
        return None if converted.packed is None else (converted.packed, converted.nbytes)

    def admit(self, key: AdapterKey, value: PackedAdapter, nbytes: int, keep: bool) -> None:
        self.engine.admit_host(key, value, nbytes, keep)


def engine_prefetcher(
    engine: Engine, settings: WorkerSettings, metrics: WorkerMetrics | None = None
) -> Prefetcher | None:
    """The worker's prefetcher, counting into ``metrics``; None when ``PREFETCH`` is off or a
    bound is 0 (nothing could be prefetched)."""
    host_budget = int(settings.host_cache_bytes * settings.prefetch_host_fraction)
    if not settings.prefetch or host_budget == 0 or settings.prefetch_max_bytes_in_flight == 0:
        return None
    prefetcher = Prefetcher(
        EngineLoader(engine),
        concurrency=settings.prefetch_concurrency,
        max_bytes_in_flight=settings.prefetch_max_bytes_in_flight,
        host_budget_bytes=host_budget,
        on_event=(lambda event: None) if metrics is None else _counter(metrics),
    )
    if metrics is not None:
        metrics.prefetch_downloading_bytes.set_function(lambda: prefetcher.downloading_bytes)
    return prefetcher


def _counter(metrics: WorkerMetrics) -> Callable[[str], None]:
    def on_event(event: str) -> None:
        if event in DEVICE_EVENTS:
            metrics.prefetch_switches.labels(outcome=event).inc()
        else:
            metrics.prefetch_loads.labels(result=event).inc()

    return on_event


@contextmanager
def prefetching(
    prefetcher: Prefetcher | None, ref: AdapterRef | None, token: str | None, *, keep: bool
) -> Iterator[None]:
    """One job's claim for as long as the block runs (the generate handler's queue wait and
    run): :meth:`Prefetcher.want` on entry, :meth:`Prefetcher.release` however it ends."""
    ticket = prefetcher.want(ref, token, keep=keep) if prefetcher and ref else None
    try:
        yield
    finally:
        if prefetcher is not None and ticket is not None:
            prefetcher.release(ticket)
