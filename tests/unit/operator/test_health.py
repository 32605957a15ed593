"""Why a pool's workers fail (loraplex.operator.health): one table per rule, plain dicts in."""

from __future__ import annotations

from typing import Any

import pytest
from loraplex.operator.health import (
    Failure,
    pods_worth_reading,
    pool_state,
    workload_failure,
)
from loraplex.operator.replicas import status_conditions

DEPLOYMENT = {"spec": {"replicas": 2}, "status": {"readyReplicas": 1}}


def pod(name: str, *, waiting: str | None = None, message: str = "", **extra: Any) -> dict:
    status: dict[str, Any] = {"containerStatuses": [{"name": "worker", "state": {}}]}
    container = status["containerStatuses"][0]
    if waiting:
        container["state"] = {"waiting": {"reason": waiting, "message": message}}
    if "exit_code" in extra:
        container["lastState"] = {
            "terminated": {
                "exitCode": extra["exit_code"],
                "reason": "Error",
                "message": extra.get("log", ""),
            }
        }
    if extra.get("unschedulable"):
        status["conditions"] = [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
            }
        ]
    return {"metadata": {"name": name}, "status": status}


def test_crash_loop_names_pod_exit_code_and_the_workers_last_words() -> None:
    pods = [
        pod("w-b", waiting="ContainerCreating"),
        pod(
            "w-a",
            waiting="CrashLoopBackOff",
            message="back-off 40s restarting failed container=worker",
            exit_code=3,
            log="INFO starting\nERROR base org/flux cannot be served: FluxPipeline unsupported",
        ),
    ]
    failure = workload_failure(DEPLOYMENT, pods)
    assert failure is not None and failure.reason == "CrashLoopBackOff"
    assert failure.message.startswith("1 of 2 worker pods failing; pod w-a: container worker")
    assert "back-off 40s" in failure.message and "last exit code 3 (Error)" in failure.message
    assert "org/flux cannot be served: FluxPipeline unsupported" in failure.message


@pytest.mark.parametrize(
    "reason", ["ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError"]
)
def test_other_waiting_reasons_that_do_not_fix_themselves(reason: str) -> None:
    failure = workload_failure(DEPLOYMENT, [pod("w-a", waiting=reason, message="nope")])
    assert failure == Failure(reason, f"pod w-a: container worker {reason}: nope")


def test_starting_pods_are_not_failing() -> None:
    pods = [pod("w-a", waiting="ContainerCreating"), pod("w-b")]
    assert workload_failure(DEPLOYMENT, pods) is None


def test_unschedulable_pod_then_deployment_conditions() -> None:
    failure = workload_failure(DEPLOYMENT, [pod("w-a", unschedulable=True)])
    assert failure is not None and failure.reason == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in failure.message
    stuck = {
        **DEPLOYMENT,
        "status": {
            "conditions": [
                {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"},
                {
                    "type": "Progressing",
                    "status": "False",
                    "reason": "ProgressDeadlineExceeded",
                    "message": 'ReplicaSet "w-1" has timed out progressing.',
                },
            ]
        },
    }
    assert workload_failure(stuck) == Failure(
        "ProgressDeadlineExceeded", 'ReplicaSet "w-1" has timed out progressing.'
    )
    failed_create = {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate"}
    quota = {"status": {"conditions": [{**failed_create, "message": "exceeded quota"}]}}
    assert workload_failure(quota) == Failure("FailedCreate", "exceeded quota")


def test_long_messages_are_cut_keeping_the_end_of_the_log() -> None:
    log = "x" * 5000 + " the reason"
    failure = workload_failure(
        DEPLOYMENT, [pod("w", waiting="CrashLoopBackOff", exit_code=1, log=log)]
    )
    assert failure is not None and failure.message.endswith("the reason")
    assert len(failure.message) < 900


@pytest.mark.parametrize(
    ("spec", "ready", "expected"), [(2, 1, True), (2, 2, False), (0, 0, False), (None, 0, False)]
)
def test_pods_are_read_only_while_replicas_are_missing(spec, ready, expected) -> None:
    deployment = {"spec": {"replicas": spec}, "status": {"readyReplicas": ready}}
    assert pods_worth_reading(deployment) is expected


@pytest.mark.parametrize(
    ("ready", "desired", "failure", "state"),
    [
        (1, 1, None, "Serving"),
        (0, 1, None, "WarmingUp"),
        (0, 0, None, "ScaledToZero"),
        (0, 1, Failure("CrashLoopBackOff", "m"), "CrashLoopBackOff"),
        (1, 2, Failure("ImagePullBackOff", "m"), "ImagePullBackOff"),  # half serving, shown
    ],
)
def test_pool_state(ready: int, desired: int, failure: Failure | None, state: str) -> None:
    assert pool_state(ready, desired, failure) == state
    assert pool_state(ready, desired, failure, invalid=True) == "InvalidSpec"


def test_conditions_carry_the_failure() -> None:
    failure = Failure("CrashLoopBackOff", "pod w: exit 3")
    ready, _, degraded = status_conditions(0, 1, "steady", failure)
    assert (ready.ok, ready.reason) == (False, "CrashLoopBackOff")
    assert (degraded.ok, degraded.reason, degraded.message) == (
        True,
        failure.reason,
        failure.message,
    )
    ready, _, degraded = status_conditions(1, 1, "steady")
    assert (ready.reason, degraded.ok, degraded.reason) == ("ReplicasReady", False, "Reconciled")
