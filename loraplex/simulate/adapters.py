"""What a simulated worker holds and what making an adapter active costs (pure: no SimPy).

Three adapter models cover the three scenarios:

* :class:`DedicatedAdapter` — the seed's "before": the adapter is part of the deployment.
* :class:`SingleAdapterSlot` — the seed's "after": unload + load from the Hub on every switch.
* :class:`WorkerAdapters` — loraplex's worker. Its resident and host tiers *are* the worker's
  :class:`~loraplex.worker.adapters.AdapterCache` (LRU tiers bounded in bytes and, resident, in
  slots; a host hit is promoted; a resident hit refreshes the host copy; a request the router
  spilled past its homes is admitted on probation), and its disk
  tier (:class:`DiskCache`) is trimmed by the worker's own
  :func:`~loraplex.worker.adapters.disk_evictions`. The switch itself follows the worker's
  ``Engine.switch_to``: active ◂ resident ◂ host ◂ disk ◂ Hub. Only the seconds are the model's:
  flat per tier (:class:`~loraplex.simulate.config.SwitchTimes`, the seed-blog preset) or priced
  from each adapter's size (:class:`~loraplex.simulate.config.TierBandwidth`: Hub bandwidth, disk
  read, conversion, host→device copy), with the tiers then sized in bytes
  (:meth:`WorkerAdapters.sized`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace

from loraplex.shared.contract import SwitchTier
from loraplex.simulate.config import HardwareProfile, PoolSettings, SwitchTimes
from loraplex.worker.adapters import (
    AdapterCache,
    AdapterKey,
    DiskEntry,
    HostPolicy,
    disk_evictions,
)
from loraplex.worker.settings import WorkerSettings

# Simulated adapters name no commit; one fixed commit keeps the key one-to-one with the name.
SIM_COMMIT = "sim"


# Seconds of a switch from a tier (SwitchTier value) for an adapter of so many bytes.
Price = Callable[[str, int], float]
RESIDENT_BYTES = WorkerSettings.model_fields["resident_cache_bytes"].default


def flat_price(times: SwitchTimes) -> Price:
    """Seconds by tier alone, whatever the adapter's size."""
    return lambda tier, _nbytes: float(getattr(times, tier))


@dataclass(frozen=True)
class Switch:
    seconds: float
    tier: str
    loaded: bool  # adapter weights were copied onto the GPU
    nbytes: int = 0  # the adapter's size, when the model knows it


class DedicatedAdapter:
    """The deployment *is* the adapter: loaded once during warm-up, never switched."""

    resident: tuple[str, ...] = ()
    host: tuple[str, ...] = ()

    def __init__(self, adapter: str | None) -> None:
        self.active = adapter

    def switch(self, adapter: str | None, *, spill: bool = False) -> Switch:
        return Switch(0.0, SwitchTier.ACTIVE.value, loaded=False)


class SingleAdapterSlot:
    """One adapter at a time; a different adapter costs unload (if any) + a fresh load."""

    resident: tuple[str, ...] = ()
    host: tuple[str, ...] = ()

    def __init__(self, load_s: float, unload_s: float) -> None:
        self.active: str | None = None
        self._load_s = load_s
        self._unload_s = unload_s

    def switch(self, adapter: str | None, *, spill: bool = False) -> Switch:
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
        self._names: frozenset[str] | None = None

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def names(self) -> frozenset[str]:
        """The adapters on disk (what a worker lists as ``disk_cached_adapters``)."""
        if self._names is None:
            self._names = frozenset(k.repo_id for k in self._entries)
        return self._names

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
        self._names = None
        return [e.key for e in evicted]


def _worker_cache(
    resident_bytes: int, slots: int, host_bytes: int, host_policy: HostPolicy
) -> AdapterCache[int]:
    """The worker's own cache with the given budgets (values are adapter ids: no device)."""
    return AdapterCache(
        resident_bytes=resident_bytes,
        resident_slots=slots,
        host_bytes=host_bytes,
        to_device=_identity,
        host_policy=host_policy,
    )


def _shared(disk: DiskCache | int) -> DiskCache:
    """``disk`` as a DiskCache: one shared by several replicas, or a new one of that size."""
    return disk if isinstance(disk, DiskCache) else DiskCache(disk)


def _identity(value: int) -> int:
    return value


class WorkerAdapters:
    """loraplex's worker cache, driven through the worker's own policy objects.

    The cached value of an adapter is its size in bytes: the policy only needs a non-None value
    and its size, and the simulator moves no weights (``to_device`` is the identity).
    """

    def __init__(
        self,
        times: SwitchTimes | Price,
        cache: AdapterCache[int],
        disk: DiskCache,
        nbytes_of: Callable[[str], int],
    ) -> None:
        self.active: str | None = None
        self.cache = cache
        self.disk = disk
        self._price = times if callable(times) else flat_price(times)
        self._nbytes_of = nbytes_of
        self._names: tuple[frozenset[str], frozenset[str]] | None = None  # resident, host

    @classmethod
    def sized(
        cls,
        price: Price,
        *,
        slots: int,
        host_bytes: int,
        disk: DiskCache | int,
        nbytes_of: Callable[[str], int],
        host_policy: HostPolicy = "lru",
    ) -> WorkerAdapters:
        """Tiers sized in bytes as the worker's settings size them (resident: the worker's
        default RESIDENT_CACHE_BYTES and ``slots`` entries)."""
        cache = _worker_cache(RESIDENT_BYTES, slots, host_bytes, host_policy)
        return cls(price, cache, _shared(disk), nbytes_of)

    @classmethod
    def counted(
        cls,
        times: SwitchTimes,
        *,
        slots: int,
        host: int,
        disk: DiskCache | int,
        host_policy: HostPolicy = "lru",
    ) -> WorkerAdapters:
        """Tiers sized in adapters: every adapter weighs one byte, so byte budgets count them."""
        cache = _worker_cache(slots, slots, host, host_policy)
        return cls(times, cache, _shared(disk), lambda _adapter: 1)

    @property
    def resident(self) -> tuple[str, ...]:
        """Device-resident adapters, most recently used first (the worker's snapshot order)."""
        return tuple(k.repo_id for k in self.cache.resident.recent())

    @property
    def host(self) -> tuple[str, ...]:
        return tuple(k.repo_id for k in self.cache.host.recent())

    def switch(self, adapter: str | None, *, spill: bool = False) -> Switch:
        """Make ``adapter`` active, in the order of the worker's ``Engine.switch_to``; ``spill``:
        the router sent it past its home, so a fresh load is kept on probation
        (``AdapterCache.admit(keep=False)``)."""
        if adapter is None:
            self.active = None
            return Switch(0.0, SwitchTier.NONE.value, loaded=False)
        if adapter == self.active:  # the worker answers before looking in its cache
            return Switch(0.0, SwitchTier.ACTIVE.value, loaded=False)
        self.active = adapter
        key = adapter_key(adapter)
        nbytes = self._nbytes_of(adapter)
        hit = self.cache.lookup(key, _identity)
        if hit is not None and hit.tier == SwitchTier.RESIDENT:
            return self._switch(SwitchTier.RESIDENT, nbytes, loaded=False)
        self._names = None  # a promotion or an admission: the tiers' members change
        if hit is not None:
            return self._switch(SwitchTier.HOST, nbytes, loaded=True)
        if key in self.disk:
            self.disk.read(key)
            found = self._switch(SwitchTier.DISK, nbytes, loaded=True)
        else:
            self.disk.download(key, nbytes)
            found = self._switch(SwitchTier.HUB, nbytes, loaded=True)
        self.cache.admit(key, nbytes, nbytes, keep=not spill)
        return found

    def _switch(self, tier: SwitchTier, nbytes: int, *, loaded: bool) -> Switch:
        return Switch(self._price(tier.value, nbytes), tier.value, loaded=loaded, nbytes=nbytes)

    def disk_names(self) -> frozenset[str]:
        return self.disk.names()

    def names(self) -> tuple[frozenset[str], frozenset[str]]:
        """(resident, host) members as sets, kept until a switch changes them."""
        if self._names is None:
            self._names = (frozenset(self.resident), frozenset(self.host))
        return self._names


AdapterModel = DedicatedAdapter | SingleAdapterSlot | WorkerAdapters


def worker_caches(
    hw: HardwareProfile, settings: PoolSettings, base: str
) -> Callable[[], WorkerAdapters]:
    """A new worker's adapter cache, per replica; the disk is one for the pool when shared.

    With ``hw.tiers`` the tiers are sized in bytes (``host_cache_gb``, ``disk_cache_gb``) and
    switches priced by the adapter's size; otherwise counted in adapters at flat prices."""
    tiers = hw.tiers
    if tiers is None:
        shared_disk = DiskCache(settings.disk_cache_adapters)
    else:
        shared_disk = DiskCache(int(settings.disk_cache_gb * 1e9))
    nbytes = hw.adapter_bytes(base)

    def worker_cache() -> WorkerAdapters:
        disk = shared_disk if settings.shared_disk_cache else shared_disk.capacity_bytes
        slots = settings.adapter_slots
        if tiers is None:
            host = settings.host_cache_adapters
            return WorkerAdapters.counted(hw.switch_s, slots=slots, host=host, disk=disk)
        return WorkerAdapters.sized(
            tiers.seconds,
            slots=slots,
            host_bytes=int(settings.host_cache_gb * 1e9),
            disk=disk,
            nbytes_of=lambda _adapter: nbytes,
        )

    return worker_cache
