"""Adapter models: switch cost by tier, and the worker's own cache deciding what stays.

The loraplex worker model drives ``loraplex.worker.adapters.AdapterCache`` and
``disk_evictions``; the eviction orders below are theirs (byte budgets, promotion, a resident
hit that does not refresh the host copy), not those of a per-tier LRU over every use.
"""

from __future__ import annotations

import loraplex.worker.adapters as worker_adapters

from loraplex.shared.contract import SwitchTier
from loraplex.simulate.adapters import (
    DiskCache,
    SingleAdapterSlot,
    WorkerAdapters,
    adapter_key,
)
from loraplex.simulate.config import SwitchTimes

TIMES = SwitchTimes(resident=0.01, host=0.2, disk=1.0, hub=3.0)


def _tiers(cache: WorkerAdapters, *adapters: str) -> list[str]:
    return [cache.switch(a).tier for a in adapters]


def test_worker_cache_walks_down_the_tiers_and_back_up() -> None:
    cache = WorkerAdapters.counted(TIMES, slots=2, host=3, disk=6)
    assert _tiers(cache, "a", "a") == [SwitchTier.HUB, SwitchTier.ACTIVE]
    cache.switch("b")
    first = cache.switch("a")
    assert (first.tier, first.seconds, first.loaded) == (SwitchTier.RESIDENT, 0.01, False)
    cache.switch("c")  # slots=2: b (least recent) leaves the GPU, stays in host RAM
    assert cache.resident == ("c", "a")  # most recent first, as the worker reports it
    again = cache.switch("b")
    assert (again.tier, again.seconds, again.loaded) == (SwitchTier.HOST, 0.2, True)
    assert cache.resident == ("b", "c")  # promoted: the host hit is back on the GPU
    _tiers(cache, "d", "e", "f")
    assert "a" not in cache.host  # host=3 keeps the three most recently admitted
    assert cache.switch("a").tier == SwitchTier.DISK
    _tiers(cache, "g", "h", "i", "j")
    assert cache.switch("b").tier == SwitchTier.HUB  # fell off the 6-adapter disk cache too
    assert cache.switch(None).tier == SwitchTier.NONE and cache.active is None


def test_a_resident_hit_refreshes_the_host_copy() -> None:
    """The host tier holds every resident adapter too, so the worker's lookup counts a resident
    hit there as well: a hot adapter served from the GPU does not age out of host RAM (it used
    to, and then came back from disk)."""
    cache = WorkerAdapters.counted(TIMES, slots=2, host=2, disk=10)
    assert _tiers(cache, "a", "b", "a") == [SwitchTier.HUB, SwitchTier.HUB, SwitchTier.RESIDENT]
    cache.switch("c")  # host admits c and drops b, the least recently *used* (a was just used)
    assert cache.resident == ("c", "a") and cache.host == ("c", "a")
    assert _tiers(cache, "b") == [SwitchTier.DISK]


def test_a_spilled_load_is_kept_on_probation() -> None:
    """A request the router spilled past the adapter's home still runs (and sits in a slot),
    but its host copy is the first to go: it evicts this worker's own adapters only when it
    is used again."""
    cache = WorkerAdapters.counted(TIMES, slots=1, host=3, disk=10)
    _tiers(cache, "a", "b", "c")
    assert cache.switch("x", spill=True).tier == SwitchTier.HUB
    assert cache.host == ("c", "b", "x")  # a went to make room; x is the least recent
    cache.switch("d")  # the next admission evicts the spilled x, not b
    assert cache.host == ("d", "c", "b")
    cache.switch("y", spill=True)  # evicts b; y is now first out
    assert _tiers(cache, "d", "y") == [SwitchTier.HOST, SwitchTier.HOST]  # y used again
    cache.switch("z")
    assert cache.host == ("z", "y", "d")  # c went, not y: its second use made it recent


def test_byte_budgets_decide_what_stays() -> None:
    """Tiers bounded in bytes: a big adapter pushes out several small ones, one bigger than a
    whole tier is not kept there (yet runs), and the disk keeps it."""
    sizes = {"s1": 100, "s2": 100, "big": 250, "huge": 600}
    cache = WorkerAdapters(
        TIMES,
        worker_adapters.AdapterCache(
            resident_bytes=300, resident_slots=4, host_bytes=500, to_device=lambda v: v
        ),
        DiskCache(10_000),
        sizes.__getitem__,
    )
    _tiers(cache, "s1", "s2", "big")
    assert cache.resident == ("big",)  # 4 slots, but 100 + 100 + 250 > 300 bytes
    assert cache.host == ("big", "s2", "s1")  # 450 ≤ 500
    assert cache.switch("huge").tier == SwitchTier.HUB and cache.active == "huge"
    assert cache.resident == ("big",) and cache.host == ("big", "s2", "s1")
    assert _tiers(cache, "s1", "huge") == [SwitchTier.HOST, SwitchTier.DISK]
    assert cache.resident == ("s1",)  # promoting s1 (100) evicted big: 350 > 300


def test_disk_trim_is_the_workers_disk_evictions() -> None:
    disk = DiskCache(300)
    a, b, c, d, e = (adapter_key(n) for n in "abcde")
    for key in (a, b, c):
        disk.download(key, 100)
    disk.read(a)
    assert disk.download(d, 200) == [b, c]  # least recently used first, until 300 fit
    assert disk.download(e, 400) == [a, d]  # never the adapter being loaded, even if too big
    assert e in disk


def test_single_slot_pays_unload_and_load_on_every_change() -> None:
    slot = SingleAdapterSlot(load_s=3.0, unload_s=0.3)
    assert slot.switch("a").seconds == 3.0  # nothing to unload yet
    assert slot.switch("a").seconds == 0.0
    change = slot.switch("b")
    assert (change.seconds, change.tier, change.loaded) == (3.3, SwitchTier.HUB, True)
    back_to_base = slot.switch(None)
    assert (back_to_base.seconds, back_to_base.loaded) == (0.3, False)
