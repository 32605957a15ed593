"""The rules around the scaling policy that the kopf handlers follow: pure, no I/O.

:class:`~loraplex.operator.scaling.ScalingPolicy` chooses replicas from load; this module says
what happens around that choice, so :mod:`loraplex.operator.handlers` only wires it to the API:

* which count a reconcile (create / update / resume) writes — :func:`replicas_on_reconcile`;
* ``spec.replicas`` (``kubectl scale bmp``) pinning the pool over the policy — :func:`apply_pin`;
* telling a manual ``kubectl scale deployment`` apart from the operator's own writes —
  :func:`scaled_outside`;
* the ``Ready`` / ``Scaling`` / ``Degraded`` conditions a tick writes — :func:`status_conditions`
  (``Degraded`` from the workers' failure, :mod:`loraplex.operator.health`).
"""

from __future__ import annotations

from typing import NamedTuple

from loraplex.operator.health import Failure
from loraplex.operator.scaling import Decision, ScalingSpec

PINNED_REASON = "pinned by spec.replicas (kubectl scale bmp)"


class Condition(NamedTuple):
    """One status condition to set: ``type`` is True/False (``ok``) for ``reason``."""

    type: str
    ok: bool
    reason: str
    message: str


def replicas_on_reconcile(pinned: int | None, current: int | None, scaling: ScalingSpec) -> int:
    """The replicas a reconcile writes to the Deployment.

    ``pinned`` (``spec.replicas``) wins. Otherwise an existing Deployment keeps its ``current``
    count, clamped to the (maybe just changed) ``[minReplicas, maxReplicas]``: a spec edit must
    not undo what the timer scaled to, and the next tick decides from load anyway. A Deployment
    not created yet (``current`` None) starts at ``minReplicas``.
    """
    if pinned is not None:
        return pinned
    if current is not None:
        return scaling.clamp(current)
    return scaling.min_replicas


def apply_pin(decision: Decision, pinned: int | None) -> Decision:
    """The policy's ``decision``, or ``pinned`` replicas when ``spec.replicas`` is set.

    The policy still decides every tick while pinned (its windows keep their history), so
    removing the pin resumes autoscaling from the load, not from stale history.
    """
    if pinned is None:
        return decision
    return Decision(pinned, PINNED_REASON)


def scaled_outside(current: int, last_written: int | None) -> bool:
    """True when the Deployment's ``current`` replicas are not what this operator last wrote.

    That is a ``kubectl scale deployment <pool>-worker`` (or another controller): the operator
    overwrites it at the tick and warns, naming both numbers and ``kubectl scale bmp`` as the
    way to pin a size. ``last_written`` None (nothing written since this operator started)
    tells nothing, so it is not reported.
    """
    return last_written is not None and current != last_written


def ready_reason(ready: int, desired: int, failure: Failure | None = None) -> str:
    """Why the pool is (not) serving: ready replicas, stopped on purpose, failing (the
    failure's reason: CrashLoopBackOff, ImagePullBackOff, …), or still starting."""
    if ready:
        return "ReplicasReady"
    if desired == 0:
        return "ScaledToZero"
    return failure.reason if failure is not None else "WarmingUp"


def status_conditions(
    ready: int, desired: int, reason: str, failure: Failure | None = None
) -> list[Condition]:
    """The conditions a tick sets, from ``ready`` replicas, the ``desired`` count just decided,
    the decision's ``reason`` and the workers' ``failure`` (:mod:`loraplex.operator.health`).

    * ``Ready``: true while a replica is ready, or when zero replicas is what was decided (a
      pool scaled to zero is serving as intended: the router holds requests and wakes it).
    * ``Scaling``: true while ready replicas differ from the desired count.
    * ``Degraded``: true while a worker pod or the Deployment is failing (reason
      CrashLoopBackOff, ImagePullBackOff, Unschedulable, ProgressDeadlineExceeded, …, with the
      pod's message); false otherwise (a tick only runs on a valid spec with its objects).
    """
    scaling = ready != desired
    degraded = (
        Condition("Degraded", True, failure.reason, failure.message)
        if failure is not None
        else Condition("Degraded", False, "Reconciled", "spec is valid; owned objects in place")
    )
    return [
        Condition(
            "Ready",
            ready > 0 or desired == 0,
            ready_reason(ready, desired, failure),
            f"{ready}/{desired} ready",
        ),
        Condition("Scaling", scaling, "Scaling" if scaling else "Stable", reason),
        degraded,
    ]
