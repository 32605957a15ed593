"""One generation through the router: resolve → locate → hold → pick/forward, with metrics.

Independent of the public API shape: ``app.py`` turns Hugging Face and OpenAI requests into a
:class:`GenerationCall` and the answer back into HTTP.

Hold: when the pool has no available replica — scaling up from zero, or every replica down,
restarting or backing off after dropping connections — the request waits (counted in
``loraplex_router_pending{base_model}``) until one is ready, ``hold_timeout_s`` of waiting in
all have passed (503 with ``estimated_time`` and ``Retry-After``) or the request's deadline
does (504 with ``Retry-After``). A round of attempts that lost its replicas (a restart) is not a
failure: the request holds again and retries while its retry budget (``retry_budget``
attempts) lasts; once spent, 503 with Retry-After — never a 502 because replicas restarted.
``wait_for_model=False`` (the Hugging Face Inference API's ``options.wait_for_model``) answers
those 503s at once instead of holding.

A pool whose base cannot be served (a replica's ``/v1/state`` says why, or the pool source
marks it failing) and has no available replica answers 503 at once, saying it is failing and
why: holding for a replica that will never load would only turn into a later, vaguer 503.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from loraplex.router.forward import Forwarder, ReplicasLost, WorkerAnswer
from loraplex.router.metrics import NO_BASE, RouterMetrics
from loraplex.router.pools import Pool, PoolRegistry
from loraplex.router.resolve import Resolver, Route
from loraplex.router.retry import GiveUp, Next, RetryBudget, after_round

from loraplex.shared.contract import GenerateRequest, GenerationParameters, ImageFormat, Limits
from loraplex.shared.errors import DeadlineExceeded, PoolFailing, Unavailable, WarmingUp

CLIENT_CLOSED = 499  # nginx's code for "client closed the request"; only ever in metrics
# A held request rechecks its pool at least this often (seconds): a backoff that ran out, a
# pool that turned failing. Readiness itself wakes it at once (the pool's ready event).
HOLD_CHECK_S = 0.25


@dataclass(frozen=True)
class GenerationCall:
    model_id: str
    prompt: str
    parameters: GenerationParameters
    output_format: ImageFormat = ImageFormat.PNG
    lora: str | None = None  # the seed's `lora:` header, for a base model id
    token: str | None = None  # the caller's Hub token: resolution only, never logged
    wait_for_model: bool = True


class RouterService:
    def __init__(
        self,
        registry: PoolRegistry,
        resolver: Resolver,
        forwarder: Forwarder,
        metrics: RouterMetrics,
        *,
        hold_timeout_s: float,
        estimated_warmup_s: float,
        request_timeout_s: float,
        recent_adapters: int = 0,
        retry_budget: int = 6,
        lost_retry_after_s: float = 5.0,
    ) -> None:
        self.registry = registry
        self.resolver = resolver
        self.forwarder = forwarder
        self.metrics = metrics
        self.hold_timeout_s = hold_timeout_s
        self.estimated_warmup_s = estimated_warmup_s
        self.request_timeout_s = request_timeout_s
        self.recent_adapters = recent_adapters
        self.retry_budget = retry_budget
        self.lost_retry_after_s = lost_retry_after_s

    async def resolve(self, call: GenerationCall) -> Route:
        return await self.resolver.resolve_with_lora(
            call.model_id, call.lora, call.token, self.registry.served()
        )

    async def generate(self, call: GenerationCall, route: Route) -> WorkerAnswer:
        """Hold for a ready replica, then forward, holding again after a round that lost its
        replicas while the retry budget lasts; the deadline covers it all."""
        started = time.monotonic()
        deadline = started + self.request_timeout_s
        hold_until = started + self.hold_timeout_s  # the hold's time in all, per request
        pool = self.registry.get(route.base_model)
        if pool is None:  # the pool went away between resolve and now
            raise WarmingUp(
                f"{route.base_model} is not served right now; retry later",
                retry_after_s=self.estimated_warmup_s,
                estimated_time_s=self.estimated_warmup_s,
            )
        await self._hold(pool, call.wait_for_model, deadline, hold_until)
        request = GenerateRequest(
            prompt=call.prompt,
            adapter=route.adapter,
            output_format=call.output_format,
            **with_seed(call.parameters).model_dump(exclude_none=True),
        )
        budget = RetryBudget(self.retry_budget)
        inflight = self.metrics.inflight.labels(route.base_model)
        inflight.inc()
        try:
            while True:
                try:
                    return await self.forwarder.generate(
                        pool, route, request, deadline, call.token, budget
                    )
                except ReplicasLost as lost:
                    step = after_round(
                        GiveUp.REPLICAS_LOST, budget_left=budget.left, wait=call.wait_for_model
                    )
                    if step is not Next.HOLD_AND_RETRY:
                        raise self._lost(pool, lost, budget) from None
                # The replicas went away (a restart): wait for one as for a cold pool.
                await self._hold(pool, True, deadline, hold_until)
        finally:
            inflight.dec()

    async def _hold(self, pool: Pool, wait: bool, deadline: float, hold_until: float) -> None:
        """Return once ``pool`` has an available replica; raise the 503/504 that ends the hold
        (see the module docstring)."""
        pool.refresh()  # a backoff may have run out since the last poll
        if pool.ready_event.is_set():
            return
        self._raise_if_failing(pool)
        if not wait:
            raise self._no_replica(pool)
        pending = self.metrics.pending.labels(pool.base_model)
        pending.inc()
        pool.pending += 1
        try:
            while not pool.ready_event.is_set():
                now = time.monotonic()
                if now >= min(deadline, hold_until):
                    if deadline <= hold_until:  # the request's own deadline ran out first
                        raise DeadlineExceeded(
                            f"the request deadline passed while {pool.base_model} had no ready "
                            f"replica; retry in about {self.estimated_warmup_s:.0f} s",
                            retry_after_s=self.estimated_warmup_s,
                        )
                    raise self._no_replica(pool)
                # Woken by a ready replica; else rechecked every HOLD_CHECK_S, so a backoff
                # running out or a pool turning failing ends the wait too.
                await pool.wait_ready(min(HOLD_CHECK_S, min(deadline, hold_until) - now))
                pool.refresh()
                self._raise_if_failing(pool)
        finally:
            pending.dec()
            pool.pending -= 1

    def _raise_if_failing(self, pool: Pool) -> None:
        reason = pool.failure_reason()
        if reason is not None:
            raise PoolFailing(
                f"{pool.base_model} is failing: {reason}. Its workers cannot serve this base "
                "(their logs say more); retry once it is fixed",
                retry_after_s=self.estimated_warmup_s,
            )

    def _no_replica(self, pool: Pool) -> WarmingUp:
        """The 503 of a hold that ran out (or was not wanted): scaling from zero, or replicas
        that are there but not ready (starting, restarting, unreachable)."""
        est = self.estimated_warmup_s
        if pool.replicas:
            why = f"its {len(pool.replicas)} replica(s) are starting, restarting or unreachable"
        else:
            why = "scaling up"
        return WarmingUp(
            f"{pool.base_model} has no ready replica yet ({why}); retry in about {est:.0f} s",
            retry_after_s=est,
            estimated_time_s=est,
        )

    def _lost(self, pool: Pool, lost: ReplicasLost, budget: RetryBudget) -> Unavailable:
        """The 503 once replicas kept going away and the request may not retry any more."""
        reason = pool.failure_reason()
        if reason is not None:
            return PoolFailing(
                f"{pool.base_model} is failing: {reason}; retry once it is fixed",
                retry_after_s=self.estimated_warmup_s,
            )
        return Unavailable(
            f"{lost.message} — {budget.spent} attempt(s) made; retry in about "
            f"{self.lost_retry_after_s:.0f} s",
            retry_after_s=self.lost_retry_after_s,
        )

    def record(self, route: Route | None, call: GenerationCall, code: int, started: float) -> None:
        """Count one answered request (the operator scales on this counter)."""
        if route is None:
            base = NO_BASE
            kind = "adapter" if call.lora or call.model_id not in self.registry.served() else "base"
        else:
            base, kind = route.base_model, route.kind
        self.metrics.requests.labels(base, kind, str(code)).inc()
        self.metrics.latency.labels(base, kind).observe(time.monotonic() - started)
        if code == 200 and route is not None:
            self.remember_adapter(route)

    def remember_adapter(self, route: Route) -> None:
        """List a served adapter in its pool's ``recent`` (GET /v1/models), if it is public.

        A gated or private route was resolved with one caller's token: naming it to every
        caller would reveal what that caller can read, so it is never listed."""
        if route.adapter is None or route.needs_token or self.recent_adapters == 0:
            return
        pool = self.registry.get(route.base_model)
        if pool is not None:
            pool.note_adapter(route.adapter.repo_id, self.recent_adapters)


def with_seed(parameters: GenerationParameters) -> GenerationParameters:
    """``parameters`` with a seed: the caller's, else one drawn here, before the first attempt,
    so a request retried on another replica (or after a restart) returns the image the first
    attempt would have, rather than a different random one."""
    if parameters.seed is not None:
        return parameters
    return parameters.model_copy(update={"seed": secrets.randbelow(Limits.MAX_SEED + 1)})
