"""The tiered adapter cache: a pure core (no HTTP, no Hub, no pipeline).

Tiers, fastest first: the active slot ◂ device-resident cache ◂ host-RAM cache ◂ disk (the HF
cache) ◂ Hub download. This module owns the two in-memory tiers — each an LRU bounded in bytes
(and the resident one also in entries: the "adapter slots") — and the rule that picks an
adapter repo's weight file. Values are opaque (the worker stores packed slot tensors); moving a
value to the device is an injected function, so the policy is tested without torch.

Policy (:class:`AdapterCache`):

* ``lookup(key)`` returns the resident value (tier ``resident``), else the host value after
  promoting it to the resident tier (tier ``host``), else nothing (the caller goes to disk/Hub
  and calls :meth:`AdapterCache.admit`).
* ``admit`` stores a new host value and promotes it. A value bigger than a tier's whole budget
  is simply not kept there (the request still runs: the slot holds a copy).
* Eviction is least-recently-used per tier; dropping from the resident tier keeps the host copy,
  so a later use costs a host→device copy, not a disk read.

Keys are ``(repo_id, commit)``: a branch name is resolved to its commit before lookup, so a
pushed update is a new entry and never serves stale weights.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar

from loraplex.shared.contract import SwitchTier
from loraplex.shared.errors import NotServable

V = TypeVar("V")

PREFERRED_WEIGHT_FILE = "pytorch_lora_weights.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class AdapterKey(NamedTuple):
    """An adapter pinned to a commit: the cache key."""

    repo_id: str
    commit: str

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.commit}"


@dataclass
class _Entry(Generic[V]):
    value: V
    nbytes: int


class LruTier(Generic[V]):
    """A least-recently-used map bounded in bytes and, optionally, in entries."""

    def __init__(self, capacity_bytes: int, max_entries: int | None = None) -> None:
        if capacity_bytes < 0 or (max_entries is not None and max_entries < 0):
            raise ValueError("tier capacity must not be negative")
        self.capacity_bytes = capacity_bytes
        self.max_entries = max_entries
        self._entries: OrderedDict[AdapterKey, _Entry[V]] = OrderedDict()
        self.bytes_used = 0

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def recent(self) -> list[AdapterKey]:
        """Keys from most to least recently used."""
        return list(reversed(self._entries))

    def get(self, key: AdapterKey) -> V | None:
        """The value (marked most recently used), or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry.value

    def fits(self, nbytes: int) -> bool:
        return nbytes <= self.capacity_bytes and self.max_entries != 0

    def put(self, key: AdapterKey, value: V, nbytes: int) -> list[AdapterKey]:
        """Store ``value``, evicting least recently used entries; returns the evicted keys.

        A value bigger than the whole tier is not stored (and evicts nothing).
        """
        if not self.fits(nbytes):
            return []
        self.pop(key)
        evicted = []
        while self._entries and (
            self.bytes_used + nbytes > self.capacity_bytes
            or (self.max_entries is not None and len(self._entries) >= self.max_entries)
        ):
            old_key, old = self._entries.popitem(last=False)
            self.bytes_used -= old.nbytes
            evicted.append(old_key)
        self._entries[key] = _Entry(value, nbytes)
        self.bytes_used += nbytes
        return evicted

    def pop(self, key: AdapterKey) -> V | None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        self.bytes_used -= entry.nbytes
        return entry.value


class Hit(NamedTuple, Generic[V]):
    tier: SwitchTier
    value: V


class AdapterCache(Generic[V]):
    """Device-resident and host-RAM tiers with promotion; see the module docstring."""

    def __init__(
        self,
        *,
        resident_bytes: int,
        resident_slots: int,
        host_bytes: int,
        to_device: Callable[[V], V],
    ) -> None:
        self.resident: LruTier[V] = LruTier(resident_bytes, resident_slots)
        self.host: LruTier[V] = LruTier(host_bytes)
        self._to_device = to_device

    def lookup(self, key: AdapterKey, nbytes_of: Callable[[V], int]) -> Hit[V] | None:
        value = self.resident.get(key)
        if value is not None:
            return Hit(SwitchTier.RESIDENT, value)
        value = self.host.get(key)
        if value is None:
            return None
        return Hit(SwitchTier.HOST, self._promote(key, value, nbytes_of(value)))

    def admit(self, key: AdapterKey, host_value: V, nbytes: int) -> V:
        """Keep a freshly converted value; returns the value to copy into the slot."""
        self.host.put(key, host_value, nbytes)
        return self._promote(key, host_value, nbytes)

    def _promote(self, key: AdapterKey, host_value: V, nbytes: int) -> V:
        if not self.resident.fits(nbytes):
            return host_value
        device_value = self._to_device(host_value)
        self.resident.put(key, device_value, nbytes)
        return device_value

    def drop(self, key: AdapterKey) -> None:
        self.resident.pop(key)
        self.host.pop(key)


def choose_weight_file(repo_id: str, filenames: Iterable[str]) -> str:
    """The adapter's weight file: the diffusers name if present, else the only .safetensors.

    Raises NotServable (422) for pickle-only repos (never loaded: pickle runs code), repos
    without weights, and repos with several safetensors files and none by the convention.
    """
    names = sorted(filenames)
    if PREFERRED_WEIGHT_FILE in names:
        return PREFERRED_WEIGHT_FILE
    candidates = [n for n in names if n.endswith(".safetensors")]
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise NotServable(
            f"{repo_id} has several .safetensors files and none named "
            f"{PREFERRED_WEIGHT_FILE}: {', '.join(candidates)}; publish one adapter per repo "
            f"or name the adapter file {PREFERRED_WEIGHT_FILE}"
        )
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise NotServable(
            f"{repo_id} has only pickle weights ({', '.join(pickles)}); this worker refuses to "
            "load pickle because it can run code — convert the adapter to .safetensors"
        )
    raise NotServable(f"{repo_id} has no .safetensors weight file; is it a LoRA adapter repo?")


@dataclass(frozen=True)
class DiskEntry:
    """One adapter commit in the HF cache (the disk tier)."""

    key: AdapterKey
    nbytes: int
    last_used: float


def disk_evictions(
    entries: Iterable[DiskEntry], capacity_bytes: int, protected: frozenset[str] = frozenset()
) -> list[DiskEntry]:
    """Entries to delete, least recently used first, until the rest fit in ``capacity_bytes``.

    Repos in ``protected`` (the base model) are never chosen, and count toward the total.
    """
    entries = list(entries)
    total = sum(e.nbytes for e in entries)
    chosen = []
    for entry in sorted(entries, key=lambda e: e.last_used):
        if total <= capacity_bytes:
            break
        if entry.key.repo_id in protected:
            continue
        chosen.append(entry)
        total -= entry.nbytes
    return chosen
