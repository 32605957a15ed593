"""Adapter homes: which replicas of a pool should hold an adapter. Pure code — no I/O, no clock.

**Rendezvous hashing** (highest random weight): every (adapter, replica) pair gets a weight
from an unkeyed hash that is the same in every process (BLAKE2b of ``adapter \\0 endpoint``);
an adapter's replicas ranked by that weight, highest first, are its *ranking*, and the first
``k`` are its *homes*. The ranking depends only on the adapter and the set of ready endpoints,
so every router replica agrees without talking to the others, and when a replica joins or
leaves only the adapters whose top-``k`` it enters or leaves move: about ``k/N`` of them (1/N
for one home).

**Hot adapters** get more homes. :class:`HotAdapters` keeps, per pool, an exponentially decayed
count of each adapter's requests, decayed by *requests* rather than seconds (no clock: one
request of the pool ages every count by ``1 - 1/window``). An adapter's *share* is its decayed
count over ``window`` — its fraction of the pool's last ``window`` requests (early on, while
fewer than ``window`` requests were seen, shares read low: a new adapter starts with one home).
:func:`home_count` turns a share into homes: an adapter with share ``s`` of a pool of ``N``
replicas needs ``s·N`` replicas' worth of work, so it gets ``ceil(spread · s · N)`` homes (the
``spread`` headroom lets bounded load balance it), at least 1 and at most ``max_homes``. The long
tail (``s < 1/(spread·N)``) stays on one home each.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field


def weight(adapter: str, endpoint: str) -> int:
    """The rendezvous weight of ``endpoint`` for ``adapter`` (64 bits, same in every process)."""
    digest = hashlib.blake2b(f"{adapter}\0{endpoint}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def ranking(adapter: str, endpoints: Sequence[str]) -> list[str]:
    """``endpoints`` from the adapter's first home to its last choice (weight, then name)."""
    return sorted(endpoints, key=lambda e: (-weight(adapter, e), e))


def homes(adapter: str, endpoints: Sequence[str], count: int = 1) -> list[str]:
    """The adapter's ``count`` home endpoints (fewer when the pool is smaller)."""
    return ranking(adapter, endpoints)[: max(0, count)]


def home_count(share: float, replicas: int, *, spread: float, max_homes: int) -> int:
    """Homes for an adapter with ``share`` of its pool's requests: ``ceil(spread·share·N)``,
    clamped to ``[1, min(max_homes, N)]`` (1 for an empty pool)."""
    wanted = math.ceil(spread * share * replicas - 1e-9)
    return max(1, min(wanted, max_homes, replicas))


@dataclass
class _Count:
    value: float
    at: int  # the pool's request number when ``value`` was last updated


@dataclass
class _PoolCounts:
    seen: int = 0
    counts: OrderedDict[str, _Count] = field(default_factory=OrderedDict)


class HotAdapters:
    """Decayed request counts per pool and adapter; see the module docstring.

    Memory is bounded: at most ``max_tracked`` adapters per pool are remembered, the least
    recently requested forgotten first (their counts have decayed the most)."""

    def __init__(self, window_requests: int, max_tracked: int = 10_000) -> None:
        if window_requests < 1 or max_tracked < 1:
            raise ValueError("window_requests and max_tracked must be ≥ 1")
        self.window = window_requests
        self.max_tracked = max_tracked
        self._decay = 1.0 - 1.0 / window_requests
        self._pools: dict[str, _PoolCounts] = {}

    def observe(self, pool: str, adapter: str) -> float:
        """Count one request of ``adapter`` in ``pool``; returns its share after it."""
        counts = self._pools.setdefault(pool, _PoolCounts())
        counts.seen += 1
        entry = counts.counts.pop(adapter, None)
        value = 1.0 if entry is None else entry.value * self._aged(counts, entry) + 1.0
        counts.counts[adapter] = _Count(value, counts.seen)
        while len(counts.counts) > self.max_tracked:
            counts.counts.popitem(last=False)
        return value / self.window

    def share(self, pool: str, adapter: str) -> float:
        """The adapter's share of the pool's last ``window`` requests (0 when unseen)."""
        counts = self._pools.get(pool)
        entry = counts.counts.get(adapter) if counts else None
        if counts is None or entry is None:
            return 0.0
        return entry.value * self._aged(counts, entry) / self.window

    def _aged(self, counts: _PoolCounts, entry: _Count) -> float:
        return self._decay ** (counts.seen - entry.at)
