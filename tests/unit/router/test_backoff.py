"""The router's restart policy, pure and with an injected clock: a replica that drops
connections backs off (exponential, capped, never for good), a poll that reaches it again
after failing brings it back, a good answer resets it; a request's retry budget; what a round
that lost its replicas leads to."""

from __future__ import annotations

import pytest
from loraplex.router.pools import PoolRegistry
from loraplex.router.retry import (
    BackoffPolicy,
    GiveUp,
    Next,
    ReplicaBackoff,
    RetryBudget,
    after_round,
)

from loraplex.shared.contract import WorkerState


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ready_state(**fields: object) -> WorkerState:
    values: dict[str, object] = {
        "base_model": "org/base",
        "ready": True,
        "queue_depth": 0,
        "queue_capacity": 4,
        "free_slots": 4,
    }
    return WorkerState.model_validate({**values, **fields})


@pytest.mark.parametrize(
    ("failures", "delay"),
    [(0, 0.0), (1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0), (6, 10.0), (50, 10.0), (10_000, 10.0)],
)
def test_backoff_doubles_up_to_its_cap(failures: int, delay: float) -> None:
    assert BackoffPolicy(min_s=0.5, max_s=10.0).delay(failures) == delay


def test_backoff_policy_refuses_a_cap_below_its_start() -> None:
    with pytest.raises(ValueError, match="min_s <= max_s"):
        BackoffPolicy(min_s=2.0, max_s=1.0)


def test_a_replica_is_out_for_its_backoff_then_back_without_any_poll() -> None:
    policy, backoff = BackoffPolicy(0.5, 4.0), ReplicaBackoff()
    assert backoff.failed(100.0, policy) == 0.5
    assert backoff.out(100.4) and not backoff.out(100.5)
    assert backoff.failed(101.0, policy) == 1.0  # consecutive: twice as long
    assert backoff.out(101.9) and not backoff.out(102.0)
    for second in range(10):
        backoff.failed(200.0 + 10 * second, policy)
    assert backoff.out(293.9) and not backoff.out(294.0)  # capped: never out for good


def test_requests_lost_together_are_one_outage() -> None:
    """The requests in flight when a replica dies fail at the same moment: one failure."""
    policy, backoff = BackoffPolicy(0.5, 10.0), ReplicaBackoff()
    assert backoff.failed(10.0, policy) == 0.5
    assert backoff.failed(10.1, policy) == pytest.approx(0.4)  # the same outage
    assert backoff.failures == 1 and not backoff.out(10.5)
    assert backoff.failed(10.5, policy) == 1.0  # lost again once back: the next step


def test_a_restart_ends_the_backoff_but_keeps_the_count_and_an_answer_resets_it() -> None:
    policy, backoff = BackoffPolicy(0.5, 10.0), ReplicaBackoff()
    backoff.failed(0.0, policy)
    backoff.failed(1.0, policy)
    backoff.came_back()
    assert not backoff.out(1.0)
    assert backoff.failed(1.0, policy) == 2.0  # dropped again after the restart: longer
    backoff.answered()
    assert not backoff.out(0.0) and backoff.failed(0.0, policy) == 0.5


def test_pool_availability_follows_the_backoff_on_the_injected_clock() -> None:
    clock = Clock()
    registry = PoolRegistry(backoff_policy=BackoffPolicy(1.0, 8.0), clock=clock)
    registry.set_pool("org/base", ["http://a", "http://b"])
    pool = registry.get("org/base")
    assert pool is not None
    for replica in pool.replicas.values():
        replica.observe_state(ready_state())
    pool.refresh()
    assert pool.mark_failed("http://a") == 1.0
    assert [v.endpoint for v in pool.ready_views()] == ["http://b"]
    assert pool.mark_failed("http://b") == 1.0
    assert not pool.ready_event.is_set() and pool.ready_views() == []
    assert pool.ready_count == 2  # still ready by their polls: only backing off
    clock.now += 1.0
    pool.refresh()
    assert pool.ready_event.is_set() and len(pool.ready_views()) == 2
    assert pool.mark_failed("http://unknown") == 0.0


def test_a_pool_is_failing_only_while_no_replica_is_available() -> None:
    clock = Clock()
    registry = PoolRegistry(clock=clock)
    registry.set_pool("org/base", ["http://a", "http://b"])
    pool = registry.get("org/base")
    assert pool is not None
    a, b = pool.replicas["http://a"], pool.replicas["http://b"]
    assert pool.failure_reason() is None  # not ready, but nobody said why: warming up
    a.failure = "NotServable: no UNet"
    assert pool.failure_reason() == "NotServable: no UNet"
    b.observe_state(ready_state())
    assert pool.failure_reason() is None  # b serves: the pool is not failing
    b.ready = False
    registry.set_failing("org/base", "CrashLoopBackOff: base cannot load")
    assert pool.failure_reason() == "CrashLoopBackOff: base cannot load"  # the source first
    registry.set_failing("org/base", None)
    assert pool.failure_reason() == "NotServable: no UNet"


def test_the_retry_budget_counts_attempts_across_rounds() -> None:
    budget = RetryBudget(3)
    assert [budget.take() for _ in range(4)] == [True, True, True, False]
    assert (budget.left, budget.spent) == (0, 3)
    with pytest.raises(ValueError):
        RetryBudget(0)


@pytest.mark.parametrize(
    ("verdict", "budget_left", "wait", "expected"),
    [
        (GiveUp.REPLICAS_LOST, 3, True, Next.HOLD_AND_RETRY),  # a restart: hold, try again
        (GiveUp.REPLICAS_LOST, 0, True, Next.UNAVAILABLE),  # budget spent: 503, not 502
        (GiveUp.REPLICAS_LOST, 3, False, Next.UNAVAILABLE),  # wait_for_model false: 503 now
        (GiveUp.UPSTREAM_FAILED, 3, True, Next.FAIL),  # they answered and failed it: 502
        (GiveUp.QUEUE_FULL, 3, True, Next.FAIL),  # 429 with Retry-After
    ],
)
def test_after_a_round(verdict: GiveUp, budget_left: int, wait: bool, expected: Next) -> None:
    assert after_round(verdict, budget_left=budget_left, wait=wait) is expected
