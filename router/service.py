"""One generation through the router: resolve → locate → hold → pick/forward, with metrics.

Independent of the public API shape: ``app.py`` turns Hugging Face and OpenAI requests into a
:class:`GenerationCall` and the answer back into HTTP.

Hold during scale-up: when the pool has no ready replica, the request waits (counted in
``loraplex_router_pending{base_model}``) until one is ready or ``hold_timeout_s`` passes, then
503 with ``estimated_time`` and ``Retry-After``. ``wait_for_model=False`` answers that 503 at
once — the Hugging Face Inference API's ``options.wait_for_model``.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from loraplex.router.forward import Forwarder, ReplicasLost, WorkerAnswer
from loraplex.router.metrics import NO_BASE, RouterMetrics
from loraplex.router.pools import Pool, PoolRegistry
from loraplex.router.resolve import Resolver, Route

from loraplex.shared.contract import GenerateRequest, GenerationParameters, ImageFormat, Limits
from loraplex.shared.errors import DeadlineExceeded, WarmingUp

CLIENT_CLOSED = 499  # nginx's code for "client closed the request"; only ever in metrics


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
    ) -> None:
        self.registry = registry
        self.resolver = resolver
        self.forwarder = forwarder
        self.metrics = metrics
        self.hold_timeout_s = hold_timeout_s
        self.estimated_warmup_s = estimated_warmup_s
        self.request_timeout_s = request_timeout_s
        self.recent_adapters = recent_adapters

    async def resolve(self, call: GenerationCall) -> Route:
        return await self.resolver.resolve_with_lora(
            call.model_id, call.lora, call.token, self.registry.served()
        )

    async def generate(self, call: GenerationCall, route: Route) -> WorkerAnswer:
        """Hold for a ready replica, then forward; the deadline covers both."""
        deadline = time.monotonic() + self.request_timeout_s
        pool = self.registry.get(route.base_model)
        if pool is None:  # the pool went away between resolve and now
            raise WarmingUp(
                f"{route.base_model} is not served right now; retry later",
                retry_after_s=self.estimated_warmup_s,
                estimated_time_s=self.estimated_warmup_s,
            )
        await self._hold(pool, call.wait_for_model, deadline)
        request = GenerateRequest(
            prompt=call.prompt,
            adapter=route.adapter,
            output_format=call.output_format,
            **with_seed(call.parameters).model_dump(exclude_none=True),
        )
        inflight = self.metrics.inflight.labels(route.base_model)
        inflight.inc()
        try:
            try:
                return await self.forwarder.generate(pool, route, request, deadline, call.token)
            except ReplicasLost:
                if not call.wait_for_model:
                    raise
                # The only replicas failed (a worker restarting): hold once more, then retry.
                await self._hold(pool, True, deadline)
                return await self.forwarder.generate(pool, route, request, deadline, call.token)
        finally:
            inflight.dec()

    async def _hold(self, pool: Pool, wait: bool, deadline: float) -> None:
        if pool.ready_event.is_set():
            return
        warming = WarmingUp(
            f"{pool.base_model} has no ready replica yet (scaling up); retry in about "
            f"{self.estimated_warmup_s:.0f} s",
            retry_after_s=self.estimated_warmup_s,
            estimated_time_s=self.estimated_warmup_s,
        )
        if not wait:
            raise warming
        pending = self.metrics.pending.labels(pool.base_model)
        pending.inc()
        pool.pending += 1
        try:
            left = max(0.0, deadline - time.monotonic())
            if not await pool.wait_ready(min(self.hold_timeout_s, left)):
                if left < self.hold_timeout_s:  # the request's own deadline ran out first
                    raise DeadlineExceeded(
                        f"the request deadline passed while {pool.base_model} was scaling up; "
                        f"retry in about {self.estimated_warmup_s:.0f} s"
                    )
                raise warming
        finally:
            pending.dec()
            pool.pending -= 1

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
