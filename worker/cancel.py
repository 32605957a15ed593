"""One request's stop signal: its client going away or its deadline passing.

The event loop sets a :class:`CancelToken` (the client disconnected); the device thread polls
it at every denoising step and notices the deadline by itself. How the queue and the engine use
it: :mod:`loraplex.worker.queue` and :mod:`loraplex.worker.pipeline`.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable

# A disconnect this close to the request's deadline is counted as the deadline: the router
# closes the connection when its deadline passes, and its clock gets there a network transit
# (plus our poll interval) before ours, which started counting on arrival.
DEADLINE_GRACE_S = 0.25


class CancelReason(enum.StrEnum):
    """Why a request stopped before its answer (the ``reason`` label of the cancel counter)."""

    CLIENT_GONE = "client_gone"  # the client (or the router for it) closed the connection
    DEADLINE = "deadline"  # the caller's deadline passed


class Cancelled(Exception):
    """A job stopped for ``reason``: dropped while waiting (``started`` False), or stopped
    while it had the device (at a denoising step, before its image was decoded)."""

    def __init__(self, reason: CancelReason, *, started: bool, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.started = started
        self.detail = detail

    @classmethod
    def in_batch(cls, reason: CancelReason, size: int) -> Cancelled:
        """One member of a batch of ``size`` stopped while the batch ran on for the others."""
        return cls(
            reason, started=True, detail=f"while it ran in a batch of {size}; the others went on"
        )


class CancelToken:
    """One request's stop signal, shared by the event loop and the device thread.

    The loop sets it (:meth:`client_gone`); the device thread polls :meth:`check`, which also
    notices the deadline (``clock`` seconds, default monotonic) by itself, so a deadline stops
    a run even when nobody on the loop is looking. The first reason wins. ``steps_done`` is the
    run's progress (written by the device thread; for messages and tests).
    """

    def __init__(
        self, deadline: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.deadline = deadline
        self._clock = clock
        self._lock = threading.Lock()
        self._set = threading.Event()
        self._reason: CancelReason | None = None
        self.steps_done = 0

    @classmethod
    def with_budget(
        cls, budget_s: float | None, clock: Callable[[], float] = time.monotonic
    ) -> CancelToken:
        """A token whose deadline is ``budget_s`` from now (None: no deadline)."""
        return cls(None if budget_s is None else clock() + budget_s, clock)

    def cancel(self, reason: CancelReason) -> None:
        with self._lock:
            if self._reason is None:
                self._reason = reason
                self._set.set()

    def client_gone(self) -> None:
        """The client disconnected (see ``DEADLINE_GRACE_S`` for when that is the deadline)."""
        due = self.deadline is not None and self._clock() >= self.deadline - DEADLINE_GRACE_S
        self.cancel(CancelReason.DEADLINE if due else CancelReason.CLIENT_GONE)

    def check(self) -> CancelReason | None:
        """The reason to stop now, or None while the request should go on."""
        expired = self.deadline is not None and self._clock() >= self.deadline
        if expired and not self._set.is_set():
            self.cancel(CancelReason.DEADLINE)
        return self._reason
