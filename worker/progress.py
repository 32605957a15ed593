"""How far the worker is on its way to serving, and how far a download is: pure and thread-safe.

:class:`LoadProgress` is the state behind ``/readyz``
(:class:`~loraplex.shared.contract.Readiness`): the loader moves it forward (starting →
downloading → loading → warming_up → ready, or failed from any state before ready) from its
thread while the ops app reads snapshots from the event
loop. Byte counts come from progress bars huggingface_hub drives (``worker/hub_bars.py``):
several bars may report the same bytes (huggingface_hub 2.x keeps a "transfer" and a
"written" bar per download), so the count of one download is the largest any bar reports.

:class:`DownloadLog` decides when a long download deserves a log line (a decile further and
some seconds later, or a while without one), so a log stays readable whatever the file size.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from loraplex.shared.contract import LoadState, Readiness

ORDER = (  # the way to ready; failed may come from any of them but ready
    LoadState.STARTING,
    LoadState.DOWNLOADING,
    LoadState.LOADING,
    LoadState.WARMING_UP,
    LoadState.READY,
)
LOGGED_DOWNLOAD_BYTES = 50 * 2**20  # downloads over this size log their progress


class ByteTally:
    """Bytes of one download as its progress bars report them (the largest count wins).

    Not locked: its owner holds the lock."""

    def __init__(self) -> None:
        self._done: dict[Hashable, int] = {}
        self._totals: dict[Hashable, int] = {}

    def report(self, bar: Hashable, done: int, total: int | None) -> None:
        self._done[bar] = max(0, done)
        if total:
            self._totals[bar] = total

    @property
    def done(self) -> int:
        return max(self._done.values(), default=0)

    @property
    def total(self) -> int:
        return max(self._totals.values(), default=0)


class LoadProgress:
    """The worker's load state with the base download's byte counts; see the module docstring.

    Raises ValueError on a move backwards or out of ready/failed (a bug in the loader)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = LoadState.STARTING
        self._total = 0  # the base's files, from the Hub's listing
        self._cached = 0  # of those, already in the HF cache when the download began
        self._tally = ByteTally()
        self._final: int | None = None  # bytes once the download is over
        self._reason: str | None = None

    def downloading(self, total_bytes: int = 0, cached_bytes: int = 0) -> None:
        """The base download begins: ``total_bytes`` of files, ``cached_bytes`` already here."""
        with self._lock:
            self._advance(LoadState.DOWNLOADING)
            self._total, self._cached = max(0, total_bytes), max(0, cached_bytes)

    def report(self, bar: Hashable, done: int, total: int | None) -> None:
        """A progress bar of the base download counts ``done`` bytes (of ``total``)."""
        with self._lock:
            if self._state is LoadState.DOWNLOADING:
                self._tally.report(bar, done, total)

    def loading(self) -> None:
        with self._lock:
            if self._state is LoadState.DOWNLOADING:  # every file is here now
                self._final = max(self._downloaded(), self._total_bytes())
            self._advance(LoadState.LOADING)

    def warming_up(self) -> None:
        with self._lock:
            self._advance(LoadState.WARMING_UP)

    def ready(self) -> None:
        with self._lock:
            self._advance(LoadState.READY)

    def failed(self, reason: str) -> None:
        with self._lock:
            if self._state in (LoadState.READY, LoadState.FAILED):
                raise ValueError(f"a {self._state} worker cannot fail its load")
            self._state, self._reason = LoadState.FAILED, reason

    def snapshot(self) -> Readiness:
        with self._lock:
            done = self._final if self._final is not None else self._downloaded()
            total = max(self._total_bytes(), self._final or 0)
            return Readiness(
                state=self._state, downloaded_bytes=done, total_bytes=total, reason=self._reason
            )

    def _advance(self, state: LoadState) -> None:
        if self._state is LoadState.FAILED or ORDER.index(state) <= ORDER.index(self._state):
            raise ValueError(f"a worker cannot go from {self._state} to {state}")
        self._state = state

    def _downloaded(self) -> int:
        return self._cached + self._tally.done

    def _total_bytes(self) -> int:
        # The listing's sum when the Hub gave sizes, else what the bars learnt (files as they
        # begin; huggingface_hub adds each file's size to its bar's total).
        return self._total or (self._cached + self._tally.total)


@dataclass(frozen=True)
class LogPolicy:
    """When :class:`DownloadLog` speaks: a new decile at least ``min_interval_s`` after the last
    line, or ``max_silence_s`` without one (a slow link); at most ~10 + duration/silence lines."""

    step: float = 0.1
    min_interval_s: float = 5.0
    max_silence_s: float = 30.0


class DownloadLog:
    """Progress lines for one download of ``total_bytes`` (the caller logs them at INFO).

    Thread-safe: bars of parallel file downloads may report at once."""

    def __init__(
        self,
        what: str,
        total_bytes: int,
        clock: Callable[[], float] = time.monotonic,
        policy: LogPolicy = LogPolicy(),
    ) -> None:
        self.what = what
        self.total = total_bytes
        self._clock = clock
        self._policy = policy
        self._started = self._last = clock()
        self._decile = 0
        self._tally = ByteTally()
        self._lock = threading.Lock()

    def report(self, bar: Hashable, done: int, total: int | None) -> str | None:
        """Record a bar's count; returns a line to log now, or None."""
        with self._lock:
            self._tally.report(bar, done, total)
            now, done = self._clock(), self._tally.done
            decile = int(done / self.total / self._policy.step) if self.total else 0
            since = now - self._last
            due = decile > self._decile and since >= self._policy.min_interval_s
            if not (due or since >= self._policy.max_silence_s):
                return None
            self._decile, self._last = max(decile, self._decile), now
            return self._line(done, now)

    def finished(self) -> str:
        with self._lock:
            now = self._clock()
            done = max(self._tally.done, self.total)
            return f"downloaded {self.what}: {human_bytes(done)} in {now - self._started:.1f} s"

    def _line(self, done: int, now: float) -> str:
        elapsed = max(now - self._started, 1e-9)
        share = f" ({done / self.total:.0%})" if self.total else ""
        return (
            f"downloading {self.what}: {human_bytes(done)} of {human_bytes(self.total)}{share} "
            f"at {human_bytes(done / elapsed)}/s"
        )


def human_bytes(count: float) -> str:
    """``1536`` → ``1.5 KiB``; whole bytes below 1 KiB."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    index = 0
    while abs(count) >= 1024 and index < len(units) - 1:
        count, index = count / 1024, index + 1
    return f"{count:.0f} B" if index == 0 else f"{count:.1f} {units[index]}"
