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
  so a later use costs a host→device copy, not a disk read. A resident hit also counts as a use
  of the host copy (the host tier holds every resident adapter).
* ``admit(..., keep=False)`` — a request the router spilled past the adapter's homes — keeps
  the host copy on probation: least recently used, the first to go unless used again.
* ``host_policy="tinylfu"`` adds TinyLFU admission to the host tier (:class:`AccessCounts`); the
  default stays LRU, which measured better on ``bench/placement.py`` (docs/placement.md).

Keys are ``(repo_id, commit)``: a branch name is resolved to its commit before lookup, so a
pushed update is a new entry and never serves stale weights.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, Literal, NamedTuple, TypeVar

from loraplex.shared.contract import SwitchTier
from loraplex.shared.errors import NotServable

V = TypeVar("V")

PREFERRED_WEIGHT_FILE = "pytorch_lora_weights.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
HostPolicy = Literal["lru", "tinylfu"]
HOST_POLICIES: tuple[HostPolicy, ...] = ("lru", "tinylfu")
FREQUENCY_WINDOW = 10_000  # lookups between halvings of the use counts (TinyLFU's sample)


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


class AccessCounts:
    """How often each key was asked for lately: TinyLFU's frequency estimate, exact and bounded.

    :meth:`record` adds one to a key's count; after every ``window`` records all counts halve
    (integer division, zeros forgotten), so a count is roughly the key's uses over the last
    ``window`` or two and at most ~``2 × window`` keys are remembered.
    """

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"window must be ≥ 1, got {window}")
        self.window = window
        self._counts: dict[AdapterKey, int] = {}
        self._since_reset = 0

    def __getitem__(self, key: AdapterKey) -> int:
        return self._counts.get(key, 0)

    def __len__(self) -> int:
        return len(self._counts)

    def record(self, key: AdapterKey) -> None:
        self._counts[key] = self._counts.get(key, 0) + 1
        self._since_reset += 1
        if self._since_reset >= self.window:
            self._since_reset = 0
            self._counts = {k: c // 2 for k, c in self._counts.items() if c > 1}


class LruTier(Generic[V]):
    """A least-recently-used map bounded in bytes and, optionally, in entries.

    With ``admission`` (an :class:`AccessCounts`), a new key that would evict others is stored
    only if it was used more often lately than each of them (TinyLFU's admission filter): a
    one-off does not push out what is used again and again, and ties keep the incumbents.
    """

    def __init__(
        self,
        capacity_bytes: int,
        max_entries: int | None = None,
        *,
        admission: AccessCounts | None = None,
    ) -> None:
        if capacity_bytes < 0 or (max_entries is not None and max_entries < 0):
            raise ValueError("tier capacity must not be negative")
        self.capacity_bytes = capacity_bytes
        self.max_entries = max_entries
        self.admission = admission
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

    def put(
        self, key: AdapterKey, value: V, nbytes: int, *, recent: bool = True
    ) -> list[AdapterKey]:
        """Store ``value``, evicting least recently used entries; returns the evicted keys.

        A value bigger than the whole tier is not stored (and evicts nothing), nor is one the
        admission filter refuses. ``recent=False`` stores it as the *least* recently used entry:
        the first to go unless it is used again (a probation slot).
        """
        if not self.fits(nbytes):
            return []
        present = self.pop(key) is not None
        victims = self._victims(nbytes)
        if victims and self.admission is not None and not present:
            wanted = self.admission[key]
            if any(self.admission[v] >= wanted for v in victims):
                return []
        for old_key in victims:
            self.bytes_used -= self._entries.pop(old_key).nbytes
        self._entries[key] = _Entry(value, nbytes)
        self.bytes_used += nbytes
        if not recent:
            self._entries.move_to_end(key, last=False)
        return victims

    def _victims(self, nbytes: int) -> list[AdapterKey]:
        """The least recently used keys that must go for ``nbytes`` more to fit."""
        victims: list[AdapterKey] = []
        used, count = self.bytes_used, len(self._entries)
        for old_key in self._entries:  # least recently used first
            if used + nbytes <= self.capacity_bytes and (
                self.max_entries is None or count < self.max_entries
            ):
                break
            victims.append(old_key)
            used -= self._entries[old_key].nbytes
            count -= 1
        return victims

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
        host_policy: HostPolicy = "lru",
        frequency_window: int = FREQUENCY_WINDOW,
    ) -> None:
        if host_policy not in HOST_POLICIES:
            raise ValueError(f"host_policy must be one of {HOST_POLICIES}, got {host_policy!r}")
        self.host_policy = host_policy
        self.counts = AccessCounts(frequency_window)
        self.resident: LruTier[V] = LruTier(resident_bytes, resident_slots)
        admission = self.counts if host_policy == "tinylfu" else None
        self.host: LruTier[V] = LruTier(host_bytes, admission=admission)
        self._to_device = to_device

    def lookup(self, key: AdapterKey, nbytes_of: Callable[[V], int]) -> Hit[V] | None:
        self.counts.record(key)
        value = self.resident.get(key)
        if value is not None:
            self.host.get(key)  # the host tier holds it too: this use counts there as well
            return Hit(SwitchTier.RESIDENT, value)
        value = self.host.get(key)
        if value is None:
            return None
        return Hit(SwitchTier.HOST, self._promote(key, value, nbytes_of(value)))

    def admit(self, key: AdapterKey, host_value: V, nbytes: int, *, keep: bool = True) -> V:
        """Keep a freshly converted value; returns the value to copy into the slot.

        ``keep=False`` (a request the router *spilled* here, past the adapter's busy home) still
        serves from the slot but keeps the host copy only on probation — as the least recently
        used entry, the first to go — so a one-off does not evict this replica's own adapters.
        """
        self.host.put(key, host_value, nbytes, recent=keep)
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
