"""The router's retry rule: what one failed forwarding attempt means (pure, no I/O).

:mod:`loraplex.router.forward` does the HTTP and asks this module three questions:

* :func:`classify_failure` — an attempt ended with a worker status or a transport failure:
  pass the answer through, retry on another replica (and mark this one down?), or stop
  because the request's own deadline passed?
* :func:`buffer_whole` — read this answer whole before the client gets a byte (so a body cut
  short is still a failure *before the answer started*, and retryable), or stream it?
* :func:`give_up` — every attempt failed: which error does the caller get?

Kept free of aiohttp so the rule is testable as a table (``tests/unit/router/test_retry.py``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Transport(enum.Enum):
    """How an attempt failed without a usable HTTP status."""

    # No connection within the connect timeout: the replica is unreachable.
    CONNECT_TIMEOUT = "connect_timeout"
    # Refused, reset, a malformed answer, or a buffered body cut short.
    CONNECTION = "connection"
    # The request's total timeout fired while the worker was generating.
    DEADLINE = "deadline"


class Action(enum.Enum):
    PASS = "pass"  # the worker's answer is the verdict: it goes to the client unchanged
    RETRY = "retry"  # try another ready replica (while attempts remain)
    DEADLINE = "deadline"  # the request's own deadline passed: stop, no replica would be faster


@dataclass(frozen=True)
class RetryDecision:
    action: Action
    mark_down: bool = False  # mark the replica not ready until its next good /v1/state poll
    queue_full: bool = False  # the worker's queue was full (429): counts toward QueueFull

    @property
    def retry(self) -> bool:
        return self.action is Action.RETRY


PASS = RetryDecision(Action.PASS)
DEADLINE = RetryDecision(Action.DEADLINE)

QUEUE_FULL_STATUS = 429
UNAVAILABLE_STATUS = 503
WORKER_DEADLINE_STATUS = 504


def classify_failure(
    status: int | None = None, *, transport: Transport | None = None
) -> RetryDecision:
    """What an attempt's outcome means, given before any byte reached the client.

    Exactly one of ``status`` (the worker answered) or ``transport`` (it did not) is given.

    1. ``transport``: ``DEADLINE`` stops (504; another replica cannot give the time back).
       ``CONNECT_TIMEOUT`` and ``CONNECTION`` retry elsewhere and mark the replica down: it
       could not be reached or broke mid-answer, so nobody else should be sent there until a
       poll says it is back.
    2. ``status`` 504 stops: a worker answers it only when the deadline budget the router sent
       it (``x-loraplex-deadline-ms``) ran out, and no other replica can give the time back.
    3. ``status`` 5xx or 429 retries elsewhere. Only 503 marks the replica down: it says the
       worker itself is unavailable (warming up, shutting down). A 500/502 is about this
       request (say the Hub failed an adapter download), and marking the replica down would
       empty the pool for everyone else. A 429 is a full queue, noted for :func:`give_up`.
    4. Any other status (2xx, 4xx: bad parameters, adapter refused) is the worker's verdict
       and passes through.
    """
    if transport is not None:
        if status is not None:
            raise ValueError("give a status or a transport failure, not both")
        if transport is Transport.DEADLINE:
            return DEADLINE
        return RetryDecision(Action.RETRY, mark_down=True)
    if status is None:
        raise ValueError("give a status or a transport failure")
    if status == WORKER_DEADLINE_STATUS:
        return DEADLINE
    if status >= 500 or status == QUEUE_FULL_STATUS:
        return RetryDecision(
            Action.RETRY,
            mark_down=status == UNAVAILABLE_STATUS,
            queue_full=status == QUEUE_FULL_STATUS,
        )
    return PASS


def buffer_whole(status: int, content_length: int | None, limit_bytes: int) -> bool:
    """Read the answer whole before answering the client (True), or stream it (False).

    Error answers are always small and read whole. A 200 is read whole when its declared
    length is at most ``limit_bytes``; then a body cut short is a transport failure before
    the answer started, and retried. A longer or unsized 200 streams, and once streaming has
    started it is never retried (the client already has part of it).
    """
    if status != 200:
        return True
    return content_length is not None and content_length <= limit_bytes


class GiveUp(enum.Enum):
    QUEUE_FULL = "queue_full"  # 429 with Retry-After: the pool is saturated, not broken
    REPLICAS_LOST = "replicas_lost"  # none is ready now: the caller may hold and try again
    UPSTREAM_FAILED = "upstream_failed"  # 502: replicas are up but failed this request


def give_up(*, queue_full: bool, tried: int, pool_ready: bool) -> GiveUp:
    """The error once no attempt is left (or no untried replica is ready).

    Any full queue wins: the client should back off rather than treat the pool as broken.
    Otherwise, when replicas were tried and none is ready any more (e.g. a lone replica
    restarting), the failures took the pool out, so holding for a ready replica may succeed.
    """
    if queue_full:
        return GiveUp.QUEUE_FULL
    if tried and not pool_ready:
        return GiveUp.REPLICAS_LOST
    return GiveUp.UPSTREAM_FAILED
