"""What a simulated worker holds and what making an adapter active costs (pure: no SimPy).

Three adapter models cover the three scenarios:

* :class:`DedicatedAdapter` — the seed's "before": the adapter is part of the deployment.
* :class:`SingleAdapterSlot` — the seed's "after": unload + load from the Hub on every switch.
* :class:`WorkerAdapters` — loraplex's worker. Its resident and host tiers *are* the worker's
  :class:`~loraplex.worker.adapters.AdapterCache` (LRU tiers bounded in bytes and, resident, in
  slots; a host hit is promoted; a resident hit does not refresh the host copy), and its disk
  tier (:class:`DiskCache`) is trimmed by the worker's own
  :func:`~loraplex.worker.adapters.disk_evictions`. The switch itself follows the worker's
  ``Engine.switch_to``: active ◂ resident ◂ host ◂ disk ◂ Hub. Only the seconds are the model's.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace

from loraplex.shared.contract import SwitchTier
from loraplex.simulate.config import SwitchTimes
from loraplex.worker.adapters import AdapterCache, AdapterKey, DiskEntry, disk_evictions

# Simulated adapters name no commit; one fixed commit keeps the key one-to-one with the name.
SIM_COMMIT = "sim"


@dataclass(frozen=True)
class Switch:
    seconds: float
    tier: str
    loaded: bool  # adapter weights were copied onto the GPU


class DedicatedAdapter:
    """The deployment *is* the adapter: loaded once during warm-up, never switched."""

    resident: tuple[str, ...] = ()
    host: tuple[str, ...] = ()

    def __init__(self, adapter: str | None) -> None:
        self.active = adapter

    def switch(self, adapter: str | None) -> Switch:
        return Switch(0.0, SwitchTier.ACTIVE.value, loaded=False)


class SingleAdapterSlot:
    """One adapter at a time; a different adapter costs unload (if any) + a fresh load."""

    resident: tuple[str, ...] = ()
    host: tuple[str, ...] = ()

    def __init__(self, load_s: float, unload_s: float) -> None:
        self.active: str | None = None
        self._load_s = load_s
        self._unload_s = unload_s

    def switch(self, adapter: str | None) -> Switch:
        if adapter == self.active:
            tier = SwitchTier.NONE if adapter is None else SwitchTier.ACTIVE
            return Switch(0.0, tier.value, loaded=False)
        seconds = self._unload_s if self.active is not None else 0.0
        self.active = adapter
        if adapter is None:
            return Switch(seconds, SwitchTier.NONE.value, loaded=False)
        return Switch(seconds + self._load_s, SwitchTier.HUB.value, loaded=True)


def adapter_key(adapter: str) -> AdapterKey:
    return AdapterKey(adapter, SIM_COMMIT)


class DiskCache:
    """The HF cache: adapter files by last use, trimmed after each download as the worker does.

    One instance may be shared by a pool's workers (a ReadWriteMany model-cache volume). The
    worker's trim orders by last use as the cache scan reports it (its own download record or
    the files' access time); a disk read counts as a use here, as it does where atime is kept.
    A use counter stands in for the clock: :func:`disk_evictions` only compares the values.
    """

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self._entries: dict[AdapterKey, DiskEntry] = {}
        self._uses = itertools.count()

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def read(self, key: AdapterKey) -> None:
        self._entries[key] = replace(self._entries[key], last_used=next(self._uses))

    def download(self, key: AdapterKey, nbytes: int) -> list[AdapterKey]:
        """Store a downloaded file, then trim; returns the evicted keys (never ``key`` itself:
        the worker protects the adapter it is loading)."""
        self._entries[key] = DiskEntry(key, nbytes, next(self._uses))
        evicted = disk_evictions(
            self._entries.values(), self.capacity_bytes, frozenset({key.repo_id})
        )
        for entry in evicted:
            del self._entries[entry.key]
        return [e.key for e in evicted]


def _identity(value: int) -> int:
    return value


class WorkerAdapters:
    """loraplex's worker cache, driven through the worker's own policy objects.

    The cached value of an adapter is its size in bytes: the policy only needs a non-None value
    and its size, and the simulator moves no weights (``to_device`` is the identity).
    """

    def __init__(
        self,
        times: SwitchTimes,
        cache: AdapterCache[int],
        disk: DiskCache,
        nbytes_of: Callable[[str], int],
    ) -> None:
        self.active: str | None = None
        self.cache = cache
        self.disk = disk
        self._times = times
        self._nbytes_of = nbytes_of

    @classmethod
    def counted(
        cls, times: SwitchTimes, *, slots: int, host: int, disk: DiskCache | int
    ) -> WorkerAdapters:
        """Tiers sized in adapters: every adapter weighs one byte, so byte budgets count them."""
        cache: AdapterCache[int] = AdapterCache(
            resident_bytes=slots, resident_slots=slots, host_bytes=host, to_device=_identity
        )
        shared = disk if isinstance(disk, DiskCache) else DiskCache(disk)
        return cls(times, cache, shared, lambda _adapter: 1)

    @property
    def resident(self) -> tuple[str, ...]:
        """Device-resident adapters, most recently used first (the worker's snapshot order)."""
        return tuple(k.repo_id for k in self.cache.resident.recent())

    @property
    def host(self) -> tuple[str, ...]:
        return tuple(k.repo_id for k in self.cache.host.recent())

    def switch(self, adapter: str | None) -> Switch:
        """Make ``adapter`` active, in the order of the worker's ``Engine.switch_to``."""
        if adapter is None:
            self.active = None
            return Switch(0.0, SwitchTier.NONE.value, loaded=False)
        if adapter == self.active:  # the worker answers before looking in its cache
            return Switch(0.0, SwitchTier.ACTIVE.value, loaded=False)
        self.active = adapter
        key = adapter_key(adapter)
        hit = self.cache.lookup(key, _identity)
        if hit is not None and hit.tier == SwitchTier.RESIDENT:
            return Switch(self._times.resident, SwitchTier.RESIDENT.value, loaded=False)
        if hit is not None:
            return Switch(self._times.host, SwitchTier.HOST.value, loaded=True)
        nbytes = self._nbytes_of(adapter)
        if key in self.disk:
            self.disk.read(key)
            found = Switch(self._times.disk, SwitchTier.DISK.value, loaded=True)
        else:
            self.disk.download(key, nbytes)
            found = Switch(self._times.hub, SwitchTier.HUB.value, loaded=True)
        self.cache.admit(key, nbytes, nbytes)
        return found


AdapterModel = DedicatedAdapter | SingleAdapterSlot | WorkerAdapters
