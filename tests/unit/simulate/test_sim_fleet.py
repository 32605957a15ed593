"""Worker models: switch cost by tier, LRU eviction, and the single-slot seed worker."""

from __future__ import annotations

from loraplex.shared.contract import SwitchTier
from loraplex.simulate.config import SwitchTimes
from loraplex.simulate.fleet import SingleAdapterSlot, TieredAdapterCache

TIMES = SwitchTimes(resident=0.01, host=0.2, disk=1.0, hub=3.0)


def test_tiered_cache_walks_down_the_tiers_and_back_up() -> None:
    cache = TieredAdapterCache(TIMES, slots=2, host=3, disk=6)
    assert cache.switch("a").tier == SwitchTier.HUB and cache.switch("a").tier == SwitchTier.ACTIVE
    cache.switch("b")
    first = cache.switch("a")
    assert (first.tier, first.seconds, first.loaded) == (SwitchTier.RESIDENT, 0.01, False)
    cache.switch("c")  # slots=2: b (least recent) leaves the GPU, stays in host RAM
    assert cache.resident == ("a", "c")
    again = cache.switch("b")
    assert (again.tier, again.seconds, again.loaded) == (SwitchTier.HOST, 0.2, True)
    for name in ("d", "e", "f"):
        cache.switch(name)
    assert "a" not in cache.host  # host=3 keeps the three most recent
    assert cache.switch("a").tier == SwitchTier.DISK
    for name in ("g", "h", "i", "j"):
        cache.switch(name)
    assert cache.switch("b").tier == SwitchTier.HUB  # fell off the 6-adapter disk cache too
    assert cache.switch(None).tier == SwitchTier.NONE and cache.active is None


def test_single_slot_pays_unload_and_load_on_every_change() -> None:
    slot = SingleAdapterSlot(load_s=3.0, unload_s=0.3)
    assert slot.switch("a").seconds == 3.0  # nothing to unload yet
    assert slot.switch("a").seconds == 0.0
    change = slot.switch("b")
    assert (change.seconds, change.tier, change.loaded) == (3.3, SwitchTier.HUB, True)
    back_to_base = slot.switch(None)
    assert (back_to_base.seconds, back_to_base.loaded) == (0.3, False)
