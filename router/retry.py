"""The router's retry rule: what one failed forwarding attempt means (pure, no I/O).

:mod:`loraplex.router.forward` does the HTTP and asks this module three questions:

* :func:`classify_failure` — an attempt ended with a worker status or a transport failure:
  pass the answer through, retry on another replica (and mark this one down?), or stop
  because the request's own deadline passed?
* :func:`buffer_whole` — read this answer whole before the client gets a byte (so a body cut
  short is still a failure *before the answer started*, and retryable), or stream it?
* :func:`give_up` — every attempt of a round failed: which error does the caller get?
* :func:`after_round` — a round lost its replicas: hold for a ready one and try again, or stop?

And it keeps two small policies, clock injected:

* :class:`ReplicaBackoff` — a replica that dropped a connection (or answered 503) is taken out
  of picking for a backoff that doubles per consecutive failure up to a cap
  (:class:`BackoffPolicy`), not until some poll happens to succeed: it comes back once the
  backoff is over, or as soon as its state poll reaches it again after having failed (it
  restarted); a good answer resets the count.
* :class:`RetryBudget` — how many forwarding attempts one request may make in all, holds
  between rounds included (setting ``retry_budget``): a restart is waited out, but a replica
  that keeps dropping connections cannot bounce one request forever.

Kept free of aiohttp so the rule is testable as a table (``tests/unit/router/test_retry.py``,
``tests/unit/router/test_backoff.py``).
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
    REPLICAS_LOST = "replicas_lost"  # replicas went away: the caller holds and tries again
    UPSTREAM_FAILED = "upstream_failed"  # 502: replicas are up but failed this request


def give_up(*, queue_full: bool, tried: int, pool_ready: bool, lost: bool = False) -> GiveUp:
    """The error once a round has no attempt left (or no untried replica is ready).

    Any full queue wins: the client should back off rather than treat the pool as broken.
    Otherwise, when an attempt lost its replica (``lost``: it dropped the connection, was
    unreachable or answered 503 — a restart looks like that), or replicas were tried and none
    is ready any more, the failures were the replicas going away, not this request: holding for
    a ready replica and trying again may succeed. Only replicas that answered and failed this
    very request (5xx) make it a 502. Nothing tried because none is ready (it went away between
    the hold and the pick) is lost replicas too.
    """
    if queue_full:
        return GiveUp.QUEUE_FULL
    if not pool_ready or (tried and lost):
        return GiveUp.REPLICAS_LOST
    return GiveUp.UPSTREAM_FAILED


class Next(enum.Enum):
    HOLD_AND_RETRY = "hold_and_retry"  # wait for a ready replica, then another round
    UNAVAILABLE = "unavailable"  # 503 with Retry-After: replicas keep going away
    FAIL = "fail"  # raise the round's own error (429, 502) or hold's (503 at once)


def after_round(verdict: GiveUp, *, budget_left: int, wait: bool) -> Next:
    """What a request does after a round of attempts failed with ``verdict``.

    Lost replicas are not the request's failure: it holds, exactly as for a pool scaling from
    zero, and tries again while its :class:`RetryBudget` lasts (the hold itself ends at the
    hold timeout or the deadline). A caller that asked not to wait (``wait_for_model: false``)
    and a spent budget get a 503 with Retry-After — never a 502 because replicas restarted.
    """
    if verdict is not GiveUp.REPLICAS_LOST:
        return Next.FAIL
    if wait and budget_left > 0:
        return Next.HOLD_AND_RETRY
    return Next.UNAVAILABLE


class RetryBudget:
    """Forwarding attempts one request may still make (``retry_budget``), across rounds."""

    def __init__(self, attempts: int) -> None:
        if attempts < 1:
            raise ValueError("a request needs a budget of at least one attempt")
        self.left = attempts
        self.spent = 0

    def take(self) -> bool:
        """Spend one attempt; False (nothing spent) once the budget is gone."""
        if self.left <= 0:
            return False
        self.left -= 1
        self.spent += 1
        return True


@dataclass(frozen=True)
class BackoffPolicy:
    """How long a replica that lost a request stays out: ``min_s`` after one failure, doubling
    per consecutive failure, at most ``max_s``."""

    min_s: float = 0.5
    max_s: float = 10.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_s <= self.max_s:
            raise ValueError("backoff needs 0 <= min_s <= max_s")

    def delay(self, failures: int) -> float:
        if failures <= 0:
            return 0.0
        # Capped before the power grows: 2**failures overflows a float after ~1,000 failures.
        return min(self.max_s, self.min_s * 2 ** min(failures - 1, 62))


@dataclass
class ReplicaBackoff:
    """One replica's backoff state; times are the injected clock's (``time.monotonic``)."""

    failures: int = 0  # consecutive lost requests since its last good answer
    until: float = 0.0  # out of picking before this time

    def failed(self, now: float, policy: BackoffPolicy) -> float:
        """A request was lost on this replica: out for the next backoff; returns the time
        it is out. Requests lost while it is already out are the same outage (the requests
        in flight when it died), not more failures: they leave the count alone."""
        if self.out(now):
            return self.until - now
        self.failures += 1
        delay = policy.delay(self.failures)
        self.until = now + delay
        return delay

    def out(self, now: float) -> bool:
        return now < self.until

    def came_back(self) -> None:
        """Its state poll reached it again after failing (a restart): back at once; the
        count stays, so a replica that keeps dropping connections still backs off longer."""
        self.until = 0.0

    def answered(self) -> None:
        """It answered a request: healthy again, the next failure starts from ``min_s``."""
        self.failures = 0
        self.until = 0.0
