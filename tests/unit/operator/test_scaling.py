"""The scaling policy, table-driven, on an injected clock.

Each case is a list of ticks ``(t, rate, pending)`` and the replicas expected after each tick;
the Deployment is assumed to follow the decision at once (ready = requested), unless a tick
says otherwise with a fourth element (ready replicas).
"""

from __future__ import annotations

import re

import pytest
from loraplex.operator.scaling import Decision, Observation, ScalingPolicy, ScalingSpec

SPEC = ScalingSpec(
    min_replicas=0,
    max_replicas=5,
    target_requests_per_replica=1.0,
    scale_down_stabilization_s=30.0,
    idle_to_zero_s=60.0,
)


def run(
    spec: ScalingSpec, ticks: list[tuple], current: int = 0, initial: int | None = None
) -> list[Decision]:
    policy = ScalingPolicy(spec, initial_replicas=initial)
    decisions = []
    for tick in ticks:
        t, rate, pending, *ready = tick
        obs = Observation(
            now=t,
            rate=rate,
            pending=pending,
            ready_replicas=ready[0] if ready else current,
            current_replicas=current,
        )
        decision = policy.decide(obs)
        decisions.append(decision)
        current = decision.replicas
    return decisions


CASES = {
    "ramp follows ceil(rate/target), capped at max": (
        SPEC,
        0,
        [(0, 0.5, 0), (5, 1.5, 0), (10, 2.5, 0), (15, 3.2, 0), (20, 4.5, 0), (25, 9.0, 0)],
        [1, 2, 3, 4, 5, 5],
    ),
    "jitter just above a multiple does not add a replica; a trickle still gets one": (
        SPEC,
        0,
        [(0, 0.01, 0), (5, 3.0, 0), (10, 3.04, 0), (15, 3.06, 0)],
        [1, 3, 3, 4],
    ),
    "spike scales up at once and down only after the window": (
        SPEC,
        1,
        [(0, 0.5, 0), (5, 4.0, 0), (10, 0.5, 0), (30, 0.5, 0), (34, 0.5, 0), (36, 0.5, 0)],
        [1, 4, 4, 4, 4, 1],
    ),
    "flapping load holds the highest recommendation": (
        SPEC,
        3,
        [(t, 3.0 if (t // 5) % 2 == 0 else 1.0, 0) for t in range(0, 60, 5)],
        [3] * 12,
    ),
    "idle goes to zero only after idle-to-zero": (
        SPEC,
        1,
        [(0, 1.0, 0), (10, 0.0, 0), (35, 0.0, 0), (59, 0.0, 0), (60, 0.0, 0), (90, 0.0, 0)],
        [1, 1, 1, 1, 0, 0],
    ),
    "pending from zero gives one replica at once": (
        ScalingSpec(max_replicas=3, scale_up_stabilization_s=100.0),
        0,
        [(0, 0.0, 0, 0), (1, 0.0, 2, 0), (2, 0.0, 2, 0)],
        [0, 1, 1],
    ),
    "pending with a high rate from zero jumps to the rate's replicas": (
        SPEC,
        0,
        [(0, 2.5, 4, 0)],
        [3],
    ),
    "minReplicas keeps a floor with no traffic": (
        ScalingSpec(min_replicas=2, max_replicas=4, idle_to_zero_s=0.0),
        2,
        [(0, 0.0, 0), (1000, 0.0, 0)],
        [2, 2],
    ),
    "maxReplicas 0 stops the pool at once": (
        ScalingSpec(min_replicas=0, max_replicas=0),
        0,
        [(0, 5.0, 3, 0)],
        [0],
    ),
    "scale-up stabilization takes the lowest recommendation in its window": (
        ScalingSpec(max_replicas=10, scale_up_stabilization_s=10.0, idle_to_zero_s=1e9),
        1,
        [(0, 1.0, 0), (5, 6.0, 0), (10, 6.0, 0), (16, 6.0, 0)],
        [1, 1, 1, 6],
    ),
    "traffic during the idle wait restarts it": (
        SPEC,
        1,
        [(0, 0.0, 0), (50, 0.2, 0), (100, 0.0, 0), (109, 0.0, 0), (111, 0.0, 0)],
        [1, 1, 1, 1, 0],
    ),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_policy_table(case: str) -> None:
    spec, current, ticks, expected = CASES[case]
    decisions = run(spec, ticks, current)
    assert [d.replicas for d in decisions] == expected, [d.reason for d in decisions]
    assert all(d.reason for d in decisions)


def test_lowering_max_applies_at_once_and_keeps_history() -> None:
    policy = ScalingPolicy(SPEC)
    assert policy.decide(Observation(0, 5.0, 0, 5, 0)).replicas == 5
    policy.update_spec(ScalingSpec(max_replicas=2, scale_down_stabilization_s=30.0))
    decision = policy.decide(Observation(1, 5.0, 0, 5, 5))
    assert decision.replicas == 2 and "[0, 2]" in decision.reason


def test_reasons_say_why() -> None:
    decisions = run(SPEC, [(0, 0.0, 3, 0), (1, 3.0, 0), (2, 0.0, 0), (100, 0.0, 0)])
    reasons = [d.reason for d in decisions]
    assert "scale from zero" in reasons[0]
    assert reasons[1].startswith("scale up")
    assert "highest in the last 30 s" in reasons[2]
    assert "to 0" in reasons[3]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"min_replicas": 3, "max_replicas": 2}, "minReplicas (3) exceeds"),
        ({"target_requests_per_replica": 0.0}, "targetRequestsPerReplica"),
        ({"min_replicas": -1}, ">= 0"),
    ],
)
def test_invalid_spec_is_refused(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=re.escape(field)):
        ScalingPolicy(ScalingSpec(**kwargs))


def test_a_restarted_operator_does_not_cut_a_busy_pool() -> None:
    """After a restart the first scrape has no rate yet (0): the last decided replicas (the
    pool's status.desiredReplicas) count as the last recommendation, so scale-down still waits
    for the stabilization window."""
    decisions = run(SPEC, [(0, 0.0, 0), (5, 4.6, 0), (10, 4.6, 0)], current=5, initial=5)
    assert [d.replicas for d in decisions] == [5, 5, 5]
    idle = run(SPEC, [(0, 0.0, 0), (20, 0.0, 0), (31, 0.0, 0), (61, 0.0, 0)], 5, initial=5)
    assert [d.replicas for d in idle] == [5, 5, 1, 0]
    # Without that memory the Deployment's count is not trusted (it may be a manual scale).
    assert run(SPEC, [(0, 2.0, 0)], current=7)[0].replicas == 2


def test_first_tick_scale_up_is_immediate() -> None:
    assert run(SPEC, [(0, 4.2, 0)], current=1, initial=1)[0].replicas == 5
