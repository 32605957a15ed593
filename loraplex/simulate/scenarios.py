"""The three scenarios, each a SimPy run over the same request stream.

* ``before`` — the seed before pools: one dedicated deployment per model id, spawned on demand
  (pod start + cold base load + adapter load: the blog's ~25 s warm-up) and stopped after
  ``before_idle_stop_s`` without requests.
* ``after`` — the seed's pools: a fixed, always-warm pool per base, one adapter at a time
  (unload + load from the Hub on every switch), replicas picked without affinity by the
  router's own :class:`~loraplex.router.pick.RoundRobinPicker` (or ``LeastLoadedPicker``).
* ``loraplex`` — pools per base whose workers keep the worker's own tiered adapter cache
  (:class:`~loraplex.simulate.adapters.WorkerAdapters`) and let same-adapter requests overtake
  up to the pool's ``max_overtake``, requests placed by the router's default
  :class:`~loraplex.router.pick.PlacementPicker` (rendezvous homes, priced by the load seconds
  each simulated worker measures), and replicas set every operator
  interval by the operator's :class:`~loraplex.operator.scaling.ScalingPolicy`, fed the rate
  the operator measures (requests over the last interval) and the pending count (requests
  held for a pool with no ready replica). A new replica is ready after pod start +
  base load (cold for a pool's first replica, from the node cache after that).

Every replica runs the worker's :class:`~loraplex.worker.queue.GroupingQueue` (FIFO for the
seed's workers) bounded at ``max_queue_depth`` waiting requests; a full queue is the worker's
429, and the pool retries on replicas not yet tried, up to the router's ``attempts``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator

import simpy

from loraplex.operator.rates import CounterRates, RouterSample
from loraplex.operator.scaling import Observation, ScalingPolicy, ScalingSpec
from loraplex.router.pick import (
    LeastLoadedPicker,
    Picker,
    PlacementPicker,
    RoundRobinPicker,
    is_spill,
)
from loraplex.shared.errors import QueueFull
from loraplex.simulate.adapters import (
    AdapterModel,
    DedicatedAdapter,
    SingleAdapterSlot,
    worker_caches,
)
from loraplex.simulate.config import PoolSettings, SimConfig
from loraplex.simulate.fleet import Recorder, Replica
from loraplex.simulate.traffic import Request, Traffic
from loraplex.worker.queue import GroupingQueue

SCENARIOS = ("before", "after", "loraplex")
AFTER_PICKERS: dict[str, type[RoundRobinPicker | LeastLoadedPicker]] = {
    "round_robin": RoundRobinPicker,
    "least_loaded": LeastLoadedPicker,
}


class Pool:
    """The router's view of one base model's replicas: hold, pick, dispatch, scale."""

    def __init__(
        self,
        env: simpy.Environment,
        name: str,
        picker: Picker,
        recorder: Recorder,
        cfg: SimConfig,
        make_adapters: Callable[[], AdapterModel],
        inference_s: float,
        *,
        max_overtake: int,
    ) -> None:
        self.env, self.name, self.picker, self.recorder, self.cfg = env, name, picker, recorder, cfg
        self.replicas: list[Replica] = []
        self.pending: deque[Request] = deque()
        self._by_name: dict[str, Replica] = {}
        self._make_adapters = make_adapters
        self._inference_s = inference_s
        self._max_overtake = max_overtake
        self._started = 0
        self.weights_cached = False  # a replica has loaded the base: it is on the cache volume
        self._flush_scheduled = False

    def add_replica(self, warmup_s: float) -> Replica:
        self._started += 1
        replica = Replica(
            self.env,
            f"{self.name}/{self._started}",
            self._inference_s,
            self._make_adapters(),
            self.recorder,
            warmup_s,
            GroupingQueue(self.cfg.scenarios.max_queue_depth, self._max_overtake),
            on_ready=self._on_ready,
            pool=self.name,
        )
        self.replicas.append(replica)
        self._by_name[replica.name] = replica
        return replica

    def live(self) -> list[Replica]:
        return [r for r in self.replicas if not r.stopped and not r.draining]

    def ready(self) -> list[Replica]:
        return [r for r in self.replicas if r.ready and not r.draining]

    def submit(self, request: Request) -> None:
        ready = self.ready()
        if ready:
            self._dispatch(request, ready)
        else:
            self.pending.append(request)

    def _dispatch(self, request: Request, ready: list[Replica]) -> None:
        """Pick, and on a full queue (the worker's 429) pick again among the replicas not yet
        tried, up to the router's ``attempts``: the router's retry rule."""
        tried: set[str] = set()
        for _ in range(self.cfg.scenarios.router_attempts):
            views = [r.view() for r in ready if r.name not in tried]
            if not views:
                break
            chosen = self.picker.pick(views, request.adapter)
            replica = self._by_name[chosen.endpoint]
            try:
                replica.enqueue(
                    request, spill=is_spill(self.picker, views, request.adapter, chosen)
                )
            except QueueFull:
                tried.add(replica.name)
            else:
                return
        self.recorder.reject(request, "queue_full")

    def _on_ready(self, replica: Replica) -> None:
        self.weights_cached = True
        if self.pending and not self._flush_scheduled:
            # Flush after every replica that becomes ready at this same instant has done so,
            # so held requests spread over all of them instead of piling onto the first.
            self._flush_scheduled = True
            self.env.process(self._flush_pending())

    def _flush_pending(self) -> Iterator[simpy.Event]:
        yield self.env.timeout(0)
        self._flush_scheduled = False
        while self.pending and self.ready():
            self._dispatch(self.pending.popleft(), self.ready())

    def expire_pending(self) -> None:
        deadline = self.env.now - self.cfg.scenarios.request_timeout_s
        while self.pending and self.pending[0].time <= deadline:
            self.recorder.reject(self.pending.popleft(), "timeout")

    def scale_to(self, replicas: int, warmup_s: float) -> None:
        live = self.live()
        for _ in range(replicas - len(live)):
            self.add_replica(warmup_s)
        # Remove the cheapest first: still starting, then the shortest queue, newest first.
        by_cost = sorted(enumerate(live), key=lambda item: (item[1].ready, item[1].depth, -item[0]))
        for _, replica in by_cost[: max(0, len(live) - replicas)]:
            replica.drain()
        self.replicas = [r for r in self.replicas if not r.stopped]


def _arrivals(
    env: simpy.Environment, traffic: Traffic, submit: Callable[[Request], None]
) -> Iterator[simpy.Event]:
    for request in traffic.requests:
        if request.time > env.now:
            yield env.timeout(request.time - env.now)
        submit(request)


def _sampler(
    env: simpy.Environment, recorder: Recorder, count: Callable[[], int], every: float
) -> Iterator[simpy.Event]:
    while True:
        recorder.samples.append((env.now, count()))  # replicas alive (GPUs held)
        yield env.timeout(every)


def _run(
    env: simpy.Environment,
    traffic: Traffic,
    recorder: Recorder,
    submit: Callable[[Request], None],
    count: Callable[[], int],
    cfg: SimConfig,
) -> None:
    """Arrivals until the horizon, then run on until every request is resolved."""
    env.process(_arrivals(env, traffic, submit))
    env.process(_sampler(env, recorder, count, cfg.scenarios.sample_interval_s))
    if recorder.total == 0:
        recorder.done.succeed()
    env.run(until=traffic.horizon_s)
    # Safety net: whatever is still unresolved after the longest possible wait is rejected.
    hw = cfg.hardware
    grace = cfg.scenarios.request_timeout_s + hw.pod_start_s + hw.base_load_cold_s + 3600.0
    env.run(until=simpy.AnyOf(env, [recorder.done, env.timeout(grace)]))
    for request in traffic.requests:
        if request.index not in recorder.latencies and request.index not in recorder.rejected:
            recorder.reject(request, "unfinished")


def _new_recorder(env: simpy.Environment, traffic: Traffic) -> Recorder:
    return Recorder(total=len(traffic.requests), done=env.event())


def run_before(traffic: Traffic, cfg: SimConfig) -> Recorder:
    env = simpy.Environment()
    recorder = _new_recorder(env, traffic)
    hw, knobs = cfg.hardware, cfg.scenarios
    deployments: dict[str, Replica] = {}

    def idle_watch(key: str, deployment: Replica) -> Iterator[simpy.Event]:
        while not deployment.stopped:
            yield env.timeout(max(knobs.before_idle_stop_s - deployment.idle_for(), 0.5))
            if deployment.idle_for() >= knobs.before_idle_stop_s:
                deployment.stop()
        deployments.pop(key, None)

    def submit(request: Request) -> None:
        deployment = deployments.get(request.model_id)
        if deployment is None:
            warmup = hw.pod_start_s + hw.base_load_cold_s
            if request.adapter is not None:
                warmup += hw.hub_load_s(request.base)
                recorder.loaded.add(request.index)
            deployment = Replica(
                env,
                f"before/{request.model_id}",
                hw.inference_for(request.base),
                DedicatedAdapter(request.adapter),
                recorder,
                warmup,
                GroupingQueue(knobs.max_queue_depth, max_overtake=0),  # one adapter: FIFO
            )
            deployments[request.model_id] = deployment
            env.process(idle_watch(request.model_id, deployment))
        try:
            deployment.enqueue(request)
        except QueueFull:
            recorder.reject(request, "queue_full")

    def count() -> int:
        return len(deployments)

    _run(env, traffic, recorder, submit, count, cfg)
    return recorder


def after_pool_size(traffic: Traffic, base: str, cfg: SimConfig) -> int:
    """The seed's fixed pool: configured, or sized so worst-case switches keep utilisation
    at ``after_target_utilization``."""
    if base in cfg.scenarios.after_replicas:
        return max(1, cfg.scenarios.after_replicas[base])
    hw = cfg.hardware
    rate = sum(1 for r in traffic.requests if r.base == base) / traffic.horizon_s
    service = hw.inference_for(base) + hw.unload_s + hw.hub_load_s(base)
    return max(1, math.ceil(rate * service / cfg.scenarios.after_target_utilization))


def _pools_run(
    traffic: Traffic,
    cfg: SimConfig,
    build: Callable[[simpy.Environment, Recorder, str], Pool],
    operate: Callable[[simpy.Environment, Pool, str], None] | None,
) -> Recorder:
    env = simpy.Environment()
    recorder = _new_recorder(env, traffic)
    pools = {base: build(env, recorder, base) for base in traffic.bases}
    if operate is not None:
        for base, pool in pools.items():
            env.process(operate(env, pool, base))

    def count() -> int:
        return sum(len([r for r in p.replicas if not r.stopped]) for p in pools.values())

    _run(env, traffic, recorder, lambda r: pools[r.base].submit(r), count, cfg)
    return recorder


def run_after(traffic: Traffic, cfg: SimConfig) -> Recorder:
    hw = cfg.hardware

    def build(env: simpy.Environment, recorder: Recorder, base: str) -> Pool:
        picker = AFTER_PICKERS[cfg.scenarios.after_picker]()
        recorder.parts[base] = (picker, None)
        pool = Pool(
            env,
            f"after/{base}",
            picker,
            recorder,
            cfg,
            lambda: SingleAdapterSlot(hw.hub_load_s(base), hw.unload_s),
            hw.inference_for(base),
            max_overtake=0,  # the seed's workers run requests in arrival order
        )
        for _ in range(after_pool_size(traffic, base, cfg)):
            pool.add_replica(0.0)  # always warm: the pool exists before the first request
        return pool

    return _pools_run(traffic, cfg, build, None)


def scaling_spec(pool: PoolSettings) -> ScalingSpec:
    s = pool.scaling
    return ScalingSpec(
        min_replicas=s.min_replicas,
        max_replicas=s.max_replicas,
        target_requests_per_replica=s.target_requests_per_replica,
        scale_down_stabilization_s=s.scale_down_stabilization_s,
        scale_up_stabilization_s=s.scale_up_stabilization_s,
        idle_to_zero_s=s.idle_to_zero_s,
    )


def placement_picker(pool: PoolSettings) -> PlacementPicker:
    """The router's default picker with the pool's settings (the router's own defaults)."""
    return PlacementPicker(
        pool.max_queue_per_replica,
        max_homes=pool.max_homes,
        hot_window_requests=pool.hot_window_requests,
    )


def loraplex_pool(
    env: simpy.Environment, recorder: Recorder, cfg: SimConfig, base: str, name: str
) -> Pool:
    """A pool of loraplex workers (the worker's cache and queue) behind the default picker."""
    settings = cfg.pool_for(base)
    picker = placement_picker(settings)
    recorder.parts.setdefault(base, (picker, None))
    hw = cfg.hardware
    return Pool(
        env,
        name,
        picker,
        recorder,
        cfg,
        worker_caches(hw, settings, base),
        hw.inference_for(base),
        max_overtake=settings.max_overtake,
    )


def run_loraplex(traffic: Traffic, cfg: SimConfig) -> Recorder:
    hw = cfg.hardware
    interval = cfg.scenarios.operator_interval_s

    policies: dict[str, ScalingPolicy] = {}

    def build(env: simpy.Environment, recorder: Recorder, base: str) -> Pool:
        settings = cfg.pool_for(base)
        policies[base] = ScalingPolicy(scaling_spec(settings))
        pool = loraplex_pool(env, recorder, cfg, base, f"loraplex/{base}")
        recorder.parts[base] = (pool.picker, policies[base])
        for _ in range(settings.scaling.min_replicas):
            pool.add_replica(0.0)
        return pool

    def operate(env: simpy.Environment, pool: Pool, base: str) -> Iterator[simpy.Event]:
        policy = policies[base]
        rates = CounterRates(cfg.scenarios.rate_window_s)  # the operator's own rate estimator
        while True:
            yield env.timeout(interval)
            pool.expire_pending()
            scrape = RouterSample(
                requests={base: float(pool.recorder.answered[base])},
                pending={base: len(pool.pending)},
            )
            rates.observe(env.now, {"router": scrape})
            snapshot = rates.snapshot()
            observation = Observation(
                now=env.now,
                rate=snapshot.rates.get(base, 0.0),
                pending=snapshot.pending.get(base, 0),
                ready_replicas=len(pool.ready()),
                current_replicas=len(pool.live()),
            )
            decision = policy.decide(observation)
            base_load = hw.base_load_cached_s if pool.weights_cached else hw.base_load_cold_s
            pool.scale_to(decision.replicas, hw.pod_start_s + base_load)

    return _pools_run(traffic, cfg, build, operate)


RUNNERS: dict[str, Callable[[Traffic, SimConfig], Recorder]] = {
    "before": run_before,
    "after": run_after,
    "loraplex": run_loraplex,
}
