"""The rules around the scaling policy (loraplex.operator.replicas), one table per rule."""

from __future__ import annotations

import pytest
from loraplex.operator.replicas import (
    PINNED_REASON,
    Condition,
    apply_pin,
    replicas_on_reconcile,
    scaled_outside,
    status_conditions,
)
from loraplex.operator.scaling import Decision, ScalingSpec

SPEC = ScalingSpec(min_replicas=1, max_replicas=5)
FROM_ZERO = ScalingSpec(min_replicas=0, max_replicas=3)


@pytest.mark.parametrize(
    ("pinned", "current", "spec", "expected"),
    [
        (None, None, SPEC, 1),  # new Deployment: starts at minReplicas
        (None, None, FROM_ZERO, 0),  # ... which may be zero
        (None, 3, SPEC, 3),  # existing: keeps what the timer scaled to
        (None, 0, SPEC, 1),  # ... raised to a raised minReplicas
        (None, 9, SPEC, 5),  # ... lowered to a lowered maxReplicas
        (None, 0, FROM_ZERO, 0),  # a pool scaled to zero stays there
        (2, None, SPEC, 2),  # the pin wins on create
        (4, 1, SPEC, 4),  # ... and over the current count
        (0, 3, SPEC, 0),  # a pin to zero is a pin (not "unset")
        (7, 2, SPEC, 7),  # the pin is exactly N, not clamped (README: "pins ... to exactly N")
    ],
)
def test_replicas_on_reconcile(
    pinned: int | None, current: int | None, spec: ScalingSpec, expected: int
) -> None:
    assert replicas_on_reconcile(pinned, current, spec) == expected


POLICY = Decision(3, "scale up: rate 3 req/s asks for 3", recommended=3)


@pytest.mark.parametrize(
    ("pinned", "expected"),
    [
        (None, POLICY),  # no pin: the policy's decision, untouched
        (2, Decision(2, PINNED_REASON)),  # pinned below what the load asks
        (5, Decision(5, PINNED_REASON)),  # pinned above it
        (3, Decision(3, PINNED_REASON)),  # same number: the reason still says it is pinned
        (0, Decision(0, PINNED_REASON)),  # pinned to zero
    ],
)
def test_apply_pin(pinned: int | None, expected: Decision) -> None:
    assert apply_pin(POLICY, pinned) == expected


@pytest.mark.parametrize(
    ("current", "last_written", "outside"),
    [
        (3, None, False),  # nothing written since this operator started: cannot tell
        (0, None, False),
        (3, 3, False),  # what the operator wrote
        (0, 0, False),
        (5, 3, True),  # `kubectl scale deployment --replicas=5` after the operator wrote 3
        (0, 2, True),  # scaled to zero by hand
        (1, 0, True),  # woken by hand
    ],
)
def test_scaled_outside(current: int, last_written: int | None, outside: bool) -> None:
    assert scaled_outside(current, last_written) is outside


@pytest.mark.parametrize(
    ("ready", "desired", "ready_cond", "scaling_cond"),
    [
        (2, 2, (True, "ReplicasReady", "2/2 ready"), (False, "Stable")),
        (1, 3, (True, "ReplicasReady", "1/3 ready"), (True, "Scaling")),  # scaling up, serving
        (3, 1, (True, "ReplicasReady", "3/1 ready"), (True, "Scaling")),  # scaling down
        (0, 0, (True, "ScaledToZero", "0/0 ready"), (False, "Stable")),  # stopped on purpose
        (0, 2, (False, "WarmingUp", "0/2 ready"), (True, "Scaling")),  # nothing ready yet
        (2, 0, (True, "ReplicasReady", "2/0 ready"), (True, "Scaling")),  # going to zero
    ],
)
def test_status_conditions(
    ready: int,
    desired: int,
    ready_cond: tuple[bool, str, str],
    scaling_cond: tuple[bool, str],
) -> None:
    reason = "whatever the policy said"
    assert status_conditions(ready, desired, reason) == [
        Condition("Ready", *ready_cond),
        Condition("Scaling", *scaling_cond, reason),
        Condition("Degraded", False, "Reconciled", "spec is valid; owned objects in place"),
    ]


def test_conditions_are_plain_tuples_for_the_status_writer() -> None:
    """handlers._conditions unpacks (type, ok, reason, message) tuples."""
    (ready, *_) = status_conditions(1, 1, "steady")
    assert tuple(ready) == ("Ready", True, "ReplicasReady", "1/1 ready")
