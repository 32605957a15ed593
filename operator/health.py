"""Why a pool's workers are not serving, read from its Deployment and Pods: pure, no I/O.

The timer (:func:`loraplex.operator.handlers.tick`) passes the worker Deployment and, while
fewer replicas are ready than it asks for (:func:`pods_worth_reading`), the pool's Pods;
:func:`workload_failure` returns the most telling failure, or None. Most specific first:

1. a container waiting for a reason that will not fix itself (:data:`FAILING_WAITING`:
   ``CrashLoopBackOff``, ``ImagePullBackOff``, ``ErrImagePull``, ``CreateContainerConfigError``
   …) — the message is the kubelet's, plus the last exit code and termination message (the
   worker exits non-zero naming the model and the reason; the operator sets
   ``terminationMessagePolicy: FallbackToLogsOnError``, so the log tail lands there);
2. a pod the scheduler cannot place (``Unschedulable``: no node with a free GPU, say);
3. the Deployment's own verdicts: ``Progressing=False`` with ``ProgressDeadlineExceeded``, or
   ``ReplicaFailure=True`` (``FailedCreate``: a quota, a missing ServiceAccount).

The handlers turn it into the ``Degraded`` condition (reason = the failure's reason) and the
one-word ``status.state`` that ``kubectl get bmp`` prints (:func:`pool_state`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Container waiting reasons that mean "failing", not "starting" (ContainerCreating and
# PodInitializing are starting; these repeat until someone fixes the image, spec or model).
FAILING_WAITING = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)
MAX_MESSAGE = 900  # characters of a condition message (kubectl describe stays readable)
SERVING, WARMING_UP, SCALED_TO_ZERO = "Serving", "WarmingUp", "ScaledToZero"


@dataclass(frozen=True)
class Failure:
    """What keeps (some of) a pool's workers from serving: a reason word and a message."""

    reason: str
    message: str


def pods_worth_reading(deployment: Mapping[str, Any]) -> bool:
    """True when fewer replicas are ready than the Deployment asks for: only then can a pod
    be failing, so a healthy pool costs no Pod list."""
    wanted = (deployment.get("spec") or {}).get("replicas") or 0
    ready = (deployment.get("status") or {}).get("readyReplicas") or 0
    return ready < wanted


def workload_failure(
    deployment: Mapping[str, Any], pods: Sequence[Mapping[str, Any]] = ()
) -> Failure | None:
    """The most telling failure of the pool's workers (see the module docstring), or None."""
    failing = [(pod, found) for pod in pods if (found := _container_failure(pod)) is not None]
    if failing:
        pod, found = sorted(failing, key=lambda item: _name(item[0]))[0]
        return _counted(found, len(failing), len(pods))
    unschedulable = [pod for pod in pods if _unschedulable(pod) is not None]
    if unschedulable:
        pod = sorted(unschedulable, key=_name)[0]
        found = Failure("Unschedulable", f"pod {_name(pod)}: {_unschedulable(pod)}")
        return _counted(found, len(unschedulable), len(pods))
    return _deployment_failure(deployment)


def pool_state(ready: int, desired: int, failure: Failure | None, invalid: bool = False) -> str:
    """One word for ``kubectl get bmp``: the failure's reason when something fails, else
    Serving / WarmingUp / ScaledToZero."""
    if invalid:
        return "InvalidSpec"
    if failure is not None:
        return failure.reason
    if ready:
        return SERVING
    return SCALED_TO_ZERO if desired == 0 else WARMING_UP


def _counted(found: Failure, failing: int, total: int) -> Failure:
    prefix = f"{failing} of {total} worker pods failing; " if total > 1 else ""
    return Failure(found.reason, _short(prefix + found.message))


def _container_failure(pod: Mapping[str, Any]) -> Failure | None:
    status = pod.get("status") or {}
    containers = [*(status.get("initContainerStatuses") or [])]
    containers += status.get("containerStatuses") or []
    for container in containers:
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason not in FAILING_WAITING:
            continue
        message = f"pod {_name(pod)}: container {container.get('name')} {reason}"
        if waiting.get("message"):
            message += f": {waiting['message']}"
        last = (container.get("lastState") or {}).get("terminated") or {}
        if last:
            message += f"; last exit code {last.get('exitCode')}"
            if last.get("reason"):
                message += f" ({last['reason']})"
            if last.get("message"):
                message += f": {_tail(str(last['message']))}"
        return Failure(str(reason), message)
    return None


def _unschedulable(pod: Mapping[str, Any]) -> str | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if (cond.get("type"), cond.get("status"), cond.get("reason")) == (
            "PodScheduled",
            "False",
            "Unschedulable",
        ):
            return str(cond.get("message") or "no node fits the pod")
    return None


def _deployment_failure(deployment: Mapping[str, Any]) -> Failure | None:
    for cond in (deployment.get("status") or {}).get("conditions") or []:
        kind, value, reason = cond.get("type"), cond.get("status"), cond.get("reason")
        if kind == "Progressing" and value == "False" and reason == "ProgressDeadlineExceeded":
            return Failure(reason, _short(str(cond.get("message") or "rollout timed out")))
        if kind == "ReplicaFailure" and value == "True":
            return Failure(
                str(reason or "ReplicaFailure"),
                _short(str(cond.get("message") or "pods cannot be created")),
            )
    return None


def _tail(text: str, limit: int = 400) -> str:
    """The end of a termination message (a log tail: the reason is on its last lines)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else "…" + text[-limit:]


def _short(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def _name(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("name", "?"))
