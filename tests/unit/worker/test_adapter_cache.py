"""The tiered cache core: byte-bounded LRU tiers, promotion, and the weight-file rule."""

from __future__ import annotations

import pytest
from loraplex.worker.adapters import (
    AccessCounts,
    AdapterCache,
    AdapterKey,
    LruTier,
    choose_weight_file,
)

from loraplex.shared.contract import SwitchTier
from loraplex.shared.errors import NotServable


def key(n: int) -> AdapterKey:
    return AdapterKey(f"org/a{n}", f"{n:040x}")


def test_lru_tier_evicts_least_recently_used_to_stay_within_bytes() -> None:
    tier: LruTier[str] = LruTier(capacity_bytes=100)
    assert tier.put(key(1), "one", 40) == []
    assert tier.put(key(2), "two", 40) == []
    assert tier.get(key(1)) == "one"  # key(1) is now the most recent
    assert tier.put(key(3), "three", 40) == [key(2)]
    assert tier.recent() == [key(3), key(1)]
    assert tier.bytes_used == 80


def test_lru_tier_bounds_entries_and_refuses_values_bigger_than_the_tier() -> None:
    tier: LruTier[str] = LruTier(capacity_bytes=1000, max_entries=2)
    tier.put(key(1), "a", 1)
    tier.put(key(2), "b", 1)
    assert tier.put(key(3), "c", 1) == [key(1)]
    assert len(tier) == 2
    assert tier.put(key(4), "huge", 1001) == []
    assert key(4) not in tier and len(tier) == 2


def test_lru_tier_replacing_a_key_does_not_double_count_bytes() -> None:
    tier: LruTier[str] = LruTier(capacity_bytes=100)
    tier.put(key(1), "a", 60)
    tier.put(key(1), "a2", 70)
    assert tier.bytes_used == 70 and tier.get(key(1)) == "a2"


def test_cache_promotes_host_hits_to_resident_and_keeps_host_copy_on_resident_eviction() -> None:
    moved: list[str] = []

    def to_device(value: str) -> str:
        moved.append(value)
        return f"dev:{value}"

    cache: AdapterCache[str] = AdapterCache(
        resident_bytes=100, resident_slots=1, host_bytes=1000, to_device=to_device
    )
    size = len
    assert cache.lookup(key(1), size) is None
    assert cache.admit(key(1), "w1", 10) == "dev:w1"
    assert cache.lookup(key(1), size) == (SwitchTier.RESIDENT, "dev:w1")
    cache.admit(key(2), "w2", 10)  # one resident slot: key(1) leaves the device tier
    assert key(1) not in cache.resident and key(1) in cache.host
    hit = cache.lookup(key(1), size)
    assert hit == (SwitchTier.HOST, "dev:w1")
    assert moved == ["w1", "w2", "w1"]
    assert key(1) in cache.resident and key(2) not in cache.resident


def test_cache_with_zero_resident_budget_serves_from_host() -> None:
    cache: AdapterCache[str] = AdapterCache(
        resident_bytes=0, resident_slots=4, host_bytes=100, to_device=lambda v: "never"
    )
    assert cache.admit(key(1), "w1", 10) == "w1"
    assert cache.lookup(key(1), len) == (SwitchTier.HOST, "w1")


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            ["README.md", "pytorch_lora_weights.safetensors", "other.safetensors"],
            "pytorch_lora_weights.safetensors",
        ),
        (["README.md", "lora.safetensors"], "lora.safetensors"),
        (["adapter_config.json", "adapter_model.safetensors"], "adapter_model.safetensors"),
    ],
)
def test_weight_file_rule(files: list[str], expected: str) -> None:
    assert choose_weight_file("org/x", files) == expected


def test_weight_file_rule_lists_candidates_when_ambiguous() -> None:
    with pytest.raises(NotServable) as err:
        choose_weight_file("org/x", ["style_b.safetensors", "style_a.safetensors"])
    assert "style_a.safetensors, style_b.safetensors" in err.value.message


def test_weight_file_rule_refuses_pickle_only_and_empty_repos() -> None:
    with pytest.raises(NotServable, match="pickle"):
        choose_weight_file("org/x", ["README.md", "pytorch_lora_weights.bin"])
    with pytest.raises(NotServable, match=r"no \.safetensors"):
        choose_weight_file("org/x", ["README.md"])


def test_disk_evictions_drop_least_recently_used_and_never_the_protected_base() -> None:
    from loraplex.worker.adapters import DiskEntry, disk_evictions

    base = DiskEntry(AdapterKey("org/base", "b" * 40), 500, last_used=0.0)
    old, mid, new = (DiskEntry(key(n), 100, last_used=float(n)) for n in (1, 2, 3))
    assert disk_evictions([new, base, mid, old], 800, frozenset({"org/base"})) == []
    assert disk_evictions([new, base, mid, old], 700, frozenset({"org/base"})) == [old]
    assert disk_evictions([new, base, mid, old], 0, frozenset({"org/base"})) == [old, mid, new]


def test_access_counts_halve_every_window_and_forget_zeros() -> None:
    counts = AccessCounts(window=4)
    for n in (1, 1, 1, 2):  # the 4th record halves: key(1) 3 → 1, key(2) 1 → forgotten
        counts.record(key(n))
    assert (counts[key(1)], counts[key(2)], len(counts)) == (1, 0, 1)


def test_tinylfu_admission_keeps_the_frequent_and_refuses_a_one_off() -> None:
    counts = AccessCounts(window=1000)
    tier: LruTier[str] = LruTier(capacity_bytes=20, admission=counts)
    for n in (1, 1, 2, 2):
        counts.record(key(n))
    tier.put(key(1), "a", 10)
    tier.put(key(2), "b", 10)  # room for both: no filter without a victim
    counts.record(key(3))
    assert tier.put(key(3), "c", 10) == [] and key(3) not in tier  # 1 use vs the victim's 2
    for _ in range(2):
        counts.record(key(3))
    assert tier.put(key(3), "c", 10) == [key(1)]  # 3 uses beat key(1)'s 2
    assert tier.recent() == [key(3), key(2)]


def test_probation_puts_a_spilled_value_first_in_line_for_eviction() -> None:
    cache: AdapterCache[str] = AdapterCache(
        resident_bytes=0, resident_slots=0, host_bytes=30, to_device=lambda v: v
    )
    cache.admit(key(1), "w1", 10)
    cache.admit(key(2), "w2", 10)
    assert cache.admit(key(9), "spilled", 10, keep=False) == "spilled"  # still served
    assert cache.host.recent() == [key(2), key(1), key(9)]
    cache.admit(key(3), "w3", 10)
    assert key(9) not in cache.host and key(1) in cache.host


def test_a_resident_hit_counts_as_a_host_use() -> None:
    cache: AdapterCache[str] = AdapterCache(
        resident_bytes=100, resident_slots=2, host_bytes=20, to_device=lambda v: v
    )
    cache.admit(key(1), "w1", 10)
    cache.admit(key(2), "w2", 10)
    assert cache.lookup(key(1), len) == (SwitchTier.RESIDENT, "w1")
    cache.admit(key(3), "w3", 10)  # the host tier drops key(2), not the just-used key(1)
    assert key(1) in cache.host and key(2) not in cache.host


def test_unknown_host_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="host_policy"):
        AdapterCache(
            resident_bytes=0, resident_slots=0, host_bytes=1, to_device=str, host_policy="lfu"
        )  # type: ignore[arg-type]
