"""What switches cost on this worker, and what its disk holds: the inputs of fleet placement.

The router's :class:`~loraplex.router.pick.PlacementPicker` prices a request on each replica by
the tier that replica holds the adapter in. Those prices come from here, through
``GET /v1/state`` (``load_seconds``, ``generate_seconds``, ``disk_cached_adapters``):

* :class:`LoadCosts` — an exponentially weighted moving average of the switch seconds per tier
  (resident, host, disk, hub) and of the seconds per generation, fed after every generation
  from the :class:`~loraplex.worker.switch.Switch` the engine returns. Bytes-aware: a switch
  is stored as seconds per byte when the adapter's size is known, so one 400 MB adapter does
  not make every 20 MB one look slow; the estimate for a tier is then that rate times the mean
  adapter size seen there. Pure: no I/O, no clock.
* :class:`DiskListing` — the adapter commits in the HF cache (the disk tier), most recently
  used first, at most ``limit`` of them, re-read at most every ``ttl_s`` seconds (a scan
  stats every file). Pure: the scan and the clock are injected; the worker passes
  :func:`loraplex.worker.hf_cache.scan_hf_cache` (the HF cache as the disk tier).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

TIERS = ("resident", "host", "disk", "hub")  # the tiers the router prices


@dataclass
class _Average:
    value: float | None = None

    def add(self, sample: float, alpha: float) -> None:
        self.value = sample if self.value is None else self.value + alpha * (sample - self.value)


@dataclass
class _Tier:
    seconds: _Average
    per_byte: _Average
    nbytes: _Average


class LoadCosts:
    """EWMA estimates per tier; ``alpha`` is the weight of the newest sample (0 < alpha ≤ 1)."""

    def __init__(self, alpha: float = 0.2) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self._tiers = {t: _Tier(_Average(), _Average(), _Average()) for t in TIERS}
        self._generate = _Average()
        self._lock = threading.Lock()  # the device thread writes, /v1/state reads

    def observe_switch(self, tier: str, seconds: float, nbytes: int | None = None) -> None:
        """One switch from ``tier``; tiers the router does not price (active, none, slow) and
        negative times are ignored."""
        if tier not in self._tiers or seconds < 0:
            return
        with self._lock:
            entry = self._tiers[tier]
            entry.seconds.add(seconds, self.alpha)
            if nbytes:
                entry.per_byte.add(seconds / nbytes, self.alpha)
                entry.nbytes.add(float(nbytes), self.alpha)

    def observe_generate(self, seconds: float) -> None:
        if seconds >= 0:
            with self._lock:
                self._generate.add(seconds, self.alpha)

    def load_seconds(self) -> dict[str, float]:
        """Estimated seconds per measured tier (bytes-aware where sizes were given)."""
        out = {}
        with self._lock:
            for tier, entry in self._tiers.items():
                if entry.per_byte.value is not None and entry.nbytes.value is not None:
                    out[tier] = round(entry.per_byte.value * entry.nbytes.value, 6)
                elif entry.seconds.value is not None:
                    out[tier] = round(entry.seconds.value, 6)
        return out

    def generate_seconds(self) -> float | None:
        with self._lock:
            value = self._generate.value
        return None if value is None else round(value, 6)


Scan = Callable[[], Iterable[tuple[str, float]]]  # (adapter key "<repo>@<commit>", last used)


class DiskListing:
    """The disk tier's adapter keys, newest first, bounded and re-scanned at most every ttl."""

    def __init__(self, scan: Scan, clock: Callable[[], float], *, ttl_s: float, limit: int) -> None:
        self._scan, self._clock, self.ttl_s, self.limit = scan, clock, ttl_s, limit
        self._keys: list[str] = []
        self._at: float | None = None
        self._lock = threading.Lock()

    def keys(self) -> list[str]:
        with self._lock:
            now = self._clock()
            if self._at is None or now - self._at >= self.ttl_s:
                found = sorted(self._scan(), key=lambda item: (-item[1], item[0]))
                self._keys = [key for key, _ in found[: self.limit]]
                self._at = now
            return list(self._keys)
