"""The adapter switch: how :class:`~loraplex.worker.pipeline.Engine` makes an adapter active.

Switch order (see ``adapters.py`` for the cache policy): active slot → resident → host → disk
(HF cache, then convert) → Hub (download, then convert). Adapters that do not fit the slot use
diffusers' ``load_lora_weights`` and are unloaded with ``unload_lora_weights`` when the next
request needs something else (never fused: fuse/unfuse is not bit-exact). A base request turns
the slot off, so its image is bit-exact with the pristine base.

:class:`AdapterSwitching` is mixed into the engine, which builds everything it declares; a
mixin rather than a separate object so that the engine's callers (the queue, prefetch, the
tests) keep one object to switch, generate and inspect.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from loraplex.worker.adapters import AdapterCache, AdapterKey, Hit
from loraplex.worker.convert import Converted, SlowReason, convert
from loraplex.worker.prefetch import Settled
from loraplex.worker.slot_layout import PackedAdapter

from loraplex.shared.contract import AdapterRef, SwitchTier

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline
    from loraplex.worker.fetch import HubFetcher
    from loraplex.worker.merge import Merger
    from loraplex.worker.prefetch import Prefetcher
    from loraplex.worker.settings import WorkerSettings
    from loraplex.worker.slot import LoraSlot
    from loraplex.worker.slot_layout import SlotLayout
    from loraplex.worker.slow_tier import SlowTier
    from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Switch:
    tier: SwitchTier
    seconds: float
    active: AdapterKey | None
    slow_reason: SlowReason | None = None  # why a slow-tier adapter does not fit the slot


class AdapterSwitching:
    """The engine's adapter half: cache tiers, slot and slow-tier activation, and the download +
    convert that prefetch also runs. ``Engine.__init__`` sets every attribute declared here."""

    settings: WorkerSettings
    pipe: DiffusionPipeline
    fetcher: HubFetcher
    components: dict[str, nn.Module]
    device: torch.device
    dtype: torch.dtype
    cuda: bool
    slot: LoraSlot
    layout: SlotLayout
    merger: Merger
    cache: AdapterCache[PackedAdapter]
    active: AdapterKey | None
    prefetcher: Prefetcher | None
    _slow: SlowTier
    _lock: threading.Lock

    def _to_device(self, host: PackedAdapter) -> PackedAdapter:
        # On CPU the "device" is host memory: the resident tier shares the host tensor.
        return host.to(self.device) if self.cuda else host

    @staticmethod
    def _nbytes(packed: PackedAdapter) -> int:
        return packed.nbytes

    def switch_to(
        self, ref: AdapterRef | None, token: str | None = None, *, spill: bool = False
    ) -> Switch:
        """Make ``ref`` (or the bare base) active; returns the tier it came from and the time.
        ``spill``: a fresh load is kept on probation (``AdapterCache.admit(keep=False)``)."""
        started = time.perf_counter()
        key = None if ref is None else self.fetcher.resolve(ref, token)
        return self.switch_to_key(key, token, spill=spill, started=started)

    def switch_to_key(
        self,
        key: AdapterKey | None,
        token: str | None,
        *,
        spill: bool = False,
        started: float | None = None,
    ) -> Switch:
        """:meth:`switch_to` for an adapter already resolved (and so authorized) for ``token``:
        a batch resolves each member once, before it joins (generation.py)."""
        started = time.perf_counter() if started is None else started
        if key is None:
            self._deactivate()
            return Switch(SwitchTier.NONE, time.perf_counter() - started, None)
        if key == self.active:
            return Switch(SwitchTier.ACTIVE, time.perf_counter() - started, key)
        lookup = partial(self._lookup, key)
        # A prefetch in flight for the key is waited for, not downloaded again: then the switch
        # counts under the tier the prefetch loaded from (see prefetch.Settled), else a host hit.
        settled = self.prefetcher.settle(key, lookup) if self.prefetcher else Settled(lookup())
        hit = settled.found
        if hit is not None:
            self._activate_slot(key, hit.value)
            tier = settled.waited_from if settled.waited_from is not None else hit.tier
            return Switch(tier, time.perf_counter() - started, key)
        tier, reason = self._load_new(key, token, keep=not spill)
        return Switch(tier, time.perf_counter() - started, key, reason)

    def _lookup(self, key: AdapterKey) -> Hit[PackedAdapter] | None:
        with self._lock:
            return self.cache.lookup(key, self._nbytes)

    def _load_new(
        self, key: AdapterKey, token: str | None, *, keep: bool = True
    ) -> tuple[SwitchTier, SlowReason | None]:
        self._deactivate()  # a slow adapter's peft layers must not be in the model we convert for
        known_slow = self._slow.known(key)
        if known_slow is not None:
            self._activate_slow(key, known_slow[0])
            return SwitchTier.SLOW, known_slow[1]
        path, tier = self.fetch_file(key, token)
        converted = self.convert_file(path)
        if converted.packed is None:
            log.info("adapter %s takes the slow path: %s", key, converted.slow_reason)
            self._slow.paths[key] = (path, converted.slow_reason)
            self._activate_slow(key, path)
            return SwitchTier.SLOW, converted.slow_reason
        with self._lock:
            value = self.cache.admit(key, converted.packed, converted.nbytes, keep=keep)
        self._activate_slot(key, value)
        return tier, None

    # Download + convert: the half of a load that prefetch (worker/prefetch.py) also runs, on
    # its I/O threads; thread-safe (the fetcher is; convert only reads the module tree).

    def fetch_file(self, key: AdapterKey, token: str | None) -> tuple[Path, SwitchTier]:
        """The adapter's local file: from the disk tier, else downloaded (then the disk trimmed)."""
        weight = self.fetcher.weight_file(key, token)
        path = self.fetcher.cached_path(weight)
        if path is not None:
            return path, SwitchTier.DISK
        path = self.fetcher.download(weight, token)
        protected = frozenset({self.settings.base_model, key.repo_id})
        self.fetcher.trim_disk(self.settings.disk_cache_bytes, protected)
        return path, SwitchTier.HUB

    def convert_file(self, path: Path) -> Converted:
        return convert(
            type(self.pipe),
            path,
            self.components,
            self.layout,
            dtype=self.dtype,
            pin_memory=self.cuda,
        )

    def needs_load(self, key: AdapterKey) -> bool:
        """False when ``key`` is in memory (then touched: most recently used, so a prefetch
        admitted for a later job does not evict it) or known to take the slow tier."""
        with self._lock:
            if self.cache.host.get(key) is not None or key in self.cache.resident:
                return False
        return key not in self._slow.paths

    def admit_host(self, key: AdapterKey, packed: PackedAdapter, nbytes: int, keep: bool) -> None:
        """Store a prefetched adapter in the host tier only (the device promotes it on use)."""
        with self._lock:
            self.cache.host.put(key, packed, nbytes, recent=keep)

    def _activate_slot(self, key: AdapterKey, value: PackedAdapter) -> None:
        self.merger.restore()  # a fused adapter's delta leaves the weights first
        self._slow.unload()
        self.slot.load(value)
        self._sync()  # the copy is async: wait so switch_ms is the copy, not its launch
        self.active = key

    def _activate_slow(self, key: AdapterKey, path: Path) -> None:
        self._deactivate()
        self._slow.load(key, path)
        self.active = key

    def _deactivate(self) -> None:
        self.merger.restore()
        self.slot.deactivate()
        self._slow.unload()
        self.active = None

    def _sync(self) -> None:
        """On CUDA, wait for the work queued on the device (no-op on CPU)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
