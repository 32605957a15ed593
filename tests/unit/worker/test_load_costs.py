"""The worker's load-seconds estimates and disk listing: what /v1/state tells the router."""

from __future__ import annotations

from pathlib import Path

import pytest
from loraplex.worker.hf_cache import scan_hf_cache
from loraplex.worker.load_costs import DiskListing, LoadCosts


def test_per_tier_averages_ignore_tiers_the_router_does_not_price() -> None:
    costs = LoadCosts(alpha=0.5)
    assert costs.load_seconds() == {} and costs.generate_seconds() is None
    costs.observe_switch("hub", 4.0)
    costs.observe_switch("hub", 2.0)
    for ignored in ("active", "none", "slow"):
        costs.observe_switch(ignored, 100.0)
    costs.observe_switch("host", -1.0)  # a clock step backwards is no measurement
    costs.observe_generate(3.0)
    assert costs.load_seconds() == {"hub": 3.0}
    assert costs.generate_seconds() == 3.0
    with pytest.raises(ValueError, match="alpha"):
        LoadCosts(alpha=0)


def test_bytes_aware_estimate_is_rate_times_mean_size() -> None:
    costs = LoadCosts(alpha=0.5)
    costs.observe_switch("disk", 1.0, nbytes=100)  # 0.01 s/B
    costs.observe_switch("disk", 4.0, nbytes=200)  # 0.02 s/B
    # rate 0.015 s/B × mean size 150 B, not the mean of the seconds (2.5)
    assert costs.load_seconds()["disk"] == pytest.approx(2.25)


def test_disk_listing_is_bounded_newest_first_and_rescanned_after_ttl() -> None:
    now = [0.0]
    found = [("a@1", 1.0), ("b@2", 3.0), ("c@3", 2.0)]
    scans = []

    def scan():
        scans.append(now[0])
        return list(found)

    listing = DiskListing(scan, lambda: now[0], ttl_s=10.0, limit=2)
    assert listing.keys() == ["b@2", "c@3"]
    found.append(("d@4", 9.0))
    now[0] = 5.0
    assert listing.keys() == ["b@2", "c@3"] and scans == [0.0]  # cached within the ttl
    now[0] = 10.0
    assert listing.keys() == ["d@4", "b@2"] and scans == [0.0, 10.0]


def _cached_repo(cache: Path, repo: str, commit: str) -> None:
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "snapshots" / commit).mkdir(parents=True)
    (folder / "snapshots" / commit / "pytorch_lora_weights.safetensors").write_bytes(b"x" * 10)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)


def test_scan_lists_adapter_commits_of_a_real_hf_cache_but_not_the_base(tmp_path: Path) -> None:
    """The HF cache layout written by hand and read by huggingface_hub's own scan_cache_dir."""
    assert scan_hf_cache(tmp_path / "missing", frozenset())() == []
    _cached_repo(tmp_path, "org/lora-a", "a" * 40)
    _cached_repo(tmp_path, "org/base", "b" * 40)
    keys = [key for key, _ in scan_hf_cache(tmp_path, frozenset({"org/base"}))()]
    assert keys == ["org/lora-a@" + "a" * 40]
