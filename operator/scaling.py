"""The request-rate scaling policy for one BaseModelPool: pure, no I/O, injected clock.

The operator's timer builds an :class:`Observation` each tick (rate and pending from the
routers, replicas from the Deployment) and asks :meth:`ScalingPolicy.decide` for a replica
count. The capacity simulator imports the same class, so what it plans is what the operator does.
This is the one place replicas are chosen; the rules around the choice (``spec.replicas``
pinning it, the count a reconcile writes, spotting a manual ``kubectl scale``, the status
conditions) are pure functions in :mod:`loraplex.operator.replicas`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class ScalingSpec:
    """The pool's ``spec.scaling`` (seconds and requests per second)."""

    min_replicas: int = 0
    max_replicas: int = 1
    target_requests_per_replica: float = 1.0  # requests per second one replica should carry
    scale_down_stabilization_s: float = 300.0
    idle_to_zero_s: float = 600.0
    scale_up_stabilization_s: float = 0.0  # 0: scale up at once (the default policy)
    # Fraction of one replica's target the load may exceed before another replica is asked
    # for: measured rates jitter (3.01 req/s for a steady 3), and ceil() would add a replica.
    tolerance: float = 0.05

    def clamp(self, replicas: int) -> int:
        """``replicas`` within [min_replicas, max_replicas]."""
        return min(max(replicas, self.min_replicas), self.max_replicas)

    def validate(self) -> None:
        """Raise ValueError naming the field when the spec cannot be followed."""
        if self.min_replicas < 0 or self.max_replicas < 0:
            raise ValueError("scaling.minReplicas and maxReplicas must be >= 0")
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"scaling.minReplicas ({self.min_replicas}) exceeds scaling.maxReplicas "
                f"({self.max_replicas}); lower minReplicas or raise maxReplicas"
            )
        if not 0 <= self.tolerance < 1:
            raise ValueError("scaling tolerance must be in [0, 1)")
        if not self.target_requests_per_replica > 0:
            raise ValueError("scaling.targetRequestsPerReplica must be > 0")
        for name in ("scale_down_stabilization_s", "idle_to_zero_s", "scale_up_stabilization_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"scaling {name} must be >= 0")


@dataclass(frozen=True)
class Observation:
    now: float  # seconds, injected clock
    rate: float  # requests/s for this base model, summed over routers
    pending: int  # requests held by routers for a pool with no ready replica
    ready_replicas: int
    current_replicas: int  # replicas the Deployment asks for now


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str
    recommended: int = 0  # what the load alone asks for now, before stabilization


_SEED_AGE_S = 1e-3  # how long before the first tick the seeded recommendation counts as made


class ScalingPolicy:
    """Replicas for one pool from its request rate; keeps the history its windows need.

    Each :meth:`decide`:

    1. **Load recommendation** ``r = ceil(rate / targetRequestsPerReplica - tolerance)``
       (tolerance 0.05 by default, so measurement jitter such as 3.01 req/s for a steady 3
       does not add a replica; any traffic at all gives ``r >= 1``); if anything is pending,
       ``r >= 1``; then ``r`` is clamped to ``[minReplicas, maxReplicas]`` and remembered
       with its time.
    2. **Scale from zero**: pending > 0 with no ready replica and nothing requested → at least
       1 at once, whatever the windows say (a request is waiting).
    3. **Scale up** (``r`` > current): to the *lowest* ``r`` over the last
       ``scaleUpStabilizationSeconds`` (0, the default: at once), never below current.
    4. **Scale down** (``r`` < current): only to the *highest* ``r`` over the last
       ``scaleDownStabilizationSeconds`` — a dip must last the whole window (Kubernetes HPA's
       rule), so flapping load does not flap replicas.
    5. **To zero**: a result of 0 (no traffic, nothing pending, minReplicas 0) is held at 1
       until ``idleToZeroSeconds`` have passed since the last request or pending one; the
       pool then goes to 0. The first tick counts as activity, so a new operator never drops a
       running pool to zero before a full idle window.
    6. The result is clamped to ``[minReplicas, maxReplicas]`` again, so spec changes apply at
       once (``maxReplicas: 0`` stops the pool now).

    The policy is the one place replicas are chosen; the operator's timer writes the result to
    the Deployment, through the rules of :mod:`loraplex.operator.replicas`. The ``kubectl
    scale`` rule (docs/operator.md): ``kubectl scale deployment
    <pool>-worker`` is overwritten at the next tick, with a warning log and Event naming both
    numbers (:func:`~loraplex.operator.replicas.scaled_outside`); ``kubectl scale bmp <pool>``
    sets ``spec.replicas``, which pins the pool to that size (autoscaling paused) until the
    field is removed (:func:`~loraplex.operator.replicas.apply_pin`).
    """

    def __init__(self, spec: ScalingSpec, initial_replicas: int | None = None) -> None:
        """``initial_replicas``: what this pool was last scaled to before this policy existed
        (the pool's ``status.desiredReplicas`` after an operator restart or failover)."""
        spec.validate()
        self.spec = spec
        self._initial = initial_replicas
        self._history: deque[tuple[float, int]] = deque()  # (time, recommendation)
        self._last_active: float | None = None  # last time with traffic or pending

    def update_spec(self, spec: ScalingSpec) -> None:
        """Follow a changed ``spec.scaling`` without forgetting the windows' history."""
        spec.validate()
        self.spec = spec

    def recommend(self, obs: Observation) -> int:
        """Step 1: what the load alone asks for, clamped to [min, max]."""
        load = obs.rate / self.spec.target_requests_per_replica
        # Any traffic at all wants a replica; the tolerance only trims jitter above a multiple.
        wanted = max(1, math.ceil(load - self.spec.tolerance)) if load > 0 else 0
        if obs.pending > 0:
            wanted = max(wanted, 1)
        return self._clamp(wanted)

    def decide(self, obs: Observation) -> Decision:
        spec = self.spec
        if obs.rate > 0 or obs.pending > 0 or self._last_active is None:
            self._last_active = obs.now
        if not self._history and self._initial is not None:
            # A policy that replaces another (operator restart, failover; the first scrape has
            # no rate yet) counts the last decided replicas as a recommendation made just
            # before this tick, as the HPA does, so a busy pool is not cut to 1 before a rate
            # exists. It sits outside a zero-length scale-up window: scale-up stays immediate.
            # Not the Deployment's current count: that may be a manual `kubectl scale`.
            self._history.append((obs.now - _SEED_AGE_S, self._initial))
        recommended = self.recommend(obs)
        self._remember(obs.now, recommended)
        current = obs.current_replicas
        if spec.max_replicas == 0:
            return Decision(0, "maxReplicas is 0: pool stopped", recommended)
        if obs.pending > 0 and obs.ready_replicas == 0 and current == 0:
            replicas = max(1, recommended)
            return Decision(
                replicas,
                f"{obs.pending} pending with no ready replica: scale from zero to {replicas}",
                recommended,
            )
        if recommended > current:
            replicas = max(current, min(self._window(spec.scale_up_stabilization_s, obs.now)))
            reason = f"scale up: {self._load(obs)} asks for {recommended}"
            if replicas < recommended:
                reason += (
                    f"; up-stabilization ({spec.scale_up_stabilization_s:g} s) allows {replicas}"
                )
        elif recommended < current:
            replicas = min(current, max(self._window(spec.scale_down_stabilization_s, obs.now)))
            reason = (
                f"scale down: {self._load(obs)} asks for {recommended}; highest in the last "
                f"{spec.scale_down_stabilization_s:g} s is {replicas}"
            )
        else:
            replicas, reason = current, f"steady: {self._load(obs)} asks for {recommended}"
        if replicas == 0 and current > 0:
            idle = obs.now - (self._last_active if self._last_active is not None else obs.now)
            if idle < spec.idle_to_zero_s:
                replicas = 1
                reason = f"idle {idle:.0f} s of {spec.idle_to_zero_s:g} s before zero: keep 1"
            else:
                reason = f"idle {idle:.0f} s (>= {spec.idle_to_zero_s:g} s), nothing pending: to 0"
        clamped = self._clamp(replicas)
        if clamped != replicas:
            reason += f"; clamped to [{spec.min_replicas}, {spec.max_replicas}] → {clamped}"
        return Decision(clamped, reason, recommended)

    def _clamp(self, replicas: int) -> int:
        return self.spec.clamp(replicas)

    def _load(self, obs: Observation) -> str:
        return f"rate {obs.rate:.3g} req/s at {self.spec.target_requests_per_replica:g}/replica" + (
            f", {obs.pending} pending" if obs.pending else ""
        )

    def _remember(self, now: float, recommended: int) -> None:
        self._history.append((now, recommended))
        keep = max(self.spec.scale_down_stabilization_s, self.spec.scale_up_stabilization_s)
        while self._history and self._history[0][0] < now - keep:
            self._history.popleft()

    def _window(self, seconds: float, now: float) -> list[int]:
        """Recommendations within the last ``seconds`` (always includes the newest)."""
        values = [r for t, r in self._history if t >= now - seconds]
        return values or [self._history[-1][1]]
