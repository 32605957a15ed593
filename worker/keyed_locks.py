"""One lock per key, made on first use and dropped when nobody holds or waits for it."""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterator
from contextlib import contextmanager


class KeyedLocks:
    """``with locks.hold(key):`` runs one thread at a time per ``key``; other keys go on.

    The fetcher uses it so that the device thread and prefetch's threads (worker/prefetch.py)
    ask the Hub the same question once, not twice: the second waits, then finds the answer
    the first one remembered. The standard library has no keyed lock; this is ~20 lines."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _gates
        self._gates: dict[Hashable, tuple[threading.Lock, int]] = {}  # key -> (lock, users)

    def __len__(self) -> int:
        with self._lock:
            return len(self._gates)

    @contextmanager
    def hold(self, key: Hashable) -> Iterator[None]:
        with self._lock:
            gate, users = self._gates.get(key, (threading.Lock(), 0))
            self._gates[key] = (gate, users + 1)
        try:
            with gate:
                yield
        finally:
            with self._lock:
                gate, users = self._gates[key]
                if users == 1:
                    del self._gates[key]
                else:
                    self._gates[key] = (gate, users - 1)
