"""The router's retry rule as tables: what each attempt outcome means, buffering, giving up."""

from __future__ import annotations

import pytest
from loraplex.router.retry import (
    Action,
    GiveUp,
    RetryDecision,
    Transport,
    buffer_whole,
    classify_failure,
    give_up,
)

RETRY = RetryDecision(Action.RETRY)
RETRY_MARK_DOWN = RetryDecision(Action.RETRY, mark_down=True)
PASS = RetryDecision(Action.PASS)
DEADLINE = RetryDecision(Action.DEADLINE)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, PASS),
        (204, PASS),
        (400, PASS),  # bad parameters: the worker's verdict
        (404, PASS),
        (413, PASS),
        (422, PASS),  # adapter refused
        (429, RetryDecision(Action.RETRY, queue_full=True)),  # queue full: another may have room
        (500, RETRY),  # about this request: retried, replica stays ready
        (502, RETRY),  # e.g. the Hub failed an adapter download
        (503, RETRY_MARK_DOWN),  # the worker itself is unavailable
        (504, DEADLINE),  # the deadline budget sent to the worker ran out: no retry
        (599, RETRY),
    ],
)
def test_worker_status(status: int, expected: RetryDecision) -> None:
    assert classify_failure(status) == expected


@pytest.mark.parametrize(
    ("transport", "expected"),
    [
        (Transport.CONNECT_TIMEOUT, RETRY_MARK_DOWN),
        (Transport.CONNECTION, RETRY_MARK_DOWN),  # refused, reset, buffered body cut short
        (Transport.DEADLINE, RetryDecision(Action.DEADLINE)),
    ],
)
def test_transport_failure(transport: Transport, expected: RetryDecision) -> None:
    decision = classify_failure(transport=transport)
    assert decision == expected
    assert decision.retry is (expected.action is Action.RETRY)


@pytest.mark.parametrize(("status", "transport"), [(None, None), (500, Transport.CONNECTION)])
def test_exactly_one_outcome_is_given(status: int | None, transport: Transport | None) -> None:
    with pytest.raises(ValueError):
        classify_failure(status, transport=transport)


@pytest.mark.parametrize(
    ("status", "content_length", "expected"),
    [
        (200, 10, True),
        (200, 100, True),  # exactly the limit: still read whole
        (200, 101, False),  # larger: streams, not retried once started
        (200, None, False),  # unsized: streams
        (413, None, True),  # error answers are read whole whatever their size
        (422, 10_000, True),
        (404, 101, True),
    ],
)
def test_buffer_whole(status: int, content_length: int | None, expected: bool) -> None:
    assert buffer_whole(status, content_length, limit_bytes=100) is expected


@pytest.mark.parametrize(
    ("queue_full", "tried", "pool_ready", "lost", "expected"),
    [
        (True, 2, True, False, GiveUp.QUEUE_FULL),
        (True, 2, False, True, GiveUp.QUEUE_FULL),  # a full queue wins over lost replicas
        (False, 1, False, True, GiveUp.REPLICAS_LOST),  # a lone replica restarting: hold for it
        (False, 2, True, False, GiveUp.UPSTREAM_FAILED),  # replicas up but failing this request
        # Replicas went away (dropped, refused, 503) though another is still up: not this
        # request's failure, so never a 502 — another round after the (instant) hold.
        (False, 2, True, True, GiveUp.REPLICAS_LOST),
        (False, 0, False, False, GiveUp.REPLICAS_LOST),  # none ready to try: hold for one
        (False, 0, True, False, GiveUp.UPSTREAM_FAILED),  # e.g. the retry budget is spent
    ],
)
def test_give_up(
    queue_full: bool, tried: int, pool_ready: bool, lost: bool, expected: GiveUp
) -> None:
    verdict = give_up(queue_full=queue_full, tried=tried, pool_ready=pool_ready, lost=lost)
    assert verdict is expected
