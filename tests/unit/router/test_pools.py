"""Pool state: endpoints, readiness, the router's queue-depth estimate, waiting for a replica,
the recent-adapter list."""

from __future__ import annotations

import asyncio

from loraplex.router.pools import Pool, PoolRegistry, ReplicaState

from loraplex.shared.contract import Headers, WorkerState


def state(depth: int = 0, in_flight: int = 0, active: str | None = None, ready: bool = True):
    return WorkerState(
        base_model="org/base",
        ready=ready,
        queue_depth=depth,
        queue_capacity=16,
        in_flight=in_flight,
        active_adapter=active,
        resident_adapters=[active] if active else [],
        free_slots=3,
    )


def test_queue_depth_is_own_inflight_plus_other_routers_load() -> None:
    replica = ReplicaState("http://w")
    replica.own_inflight = 2
    replica.observe_state(state(depth=4, in_flight=1))  # 5 on the worker, 2 of them ours
    assert replica.view().queue_depth == 5
    replica.own_inflight = 0  # ours finished since the poll
    assert replica.view().queue_depth == 3
    replica.own_inflight = 4
    assert replica.view().queue_depth == 7


def test_answer_headers_update_active_and_resident() -> None:
    replica = ReplicaState("http://w")
    replica.observe_answer({Headers.ACTIVE_ADAPTER: "u/a@1"})
    view = replica.view()
    assert view.active_adapter == "u/a@1" and "u/a@1" in view.resident_adapters
    replica.observe_answer({Headers.ACTIVE_ADAPTER: ""})
    assert replica.view().active_adapter is None and replica.ready


def test_endpoints_readiness_and_exclusion() -> None:
    registry = PoolRegistry()
    registry.set_pool("org/base", ["http://a", "http://b", "http://a"])
    pool = registry.get("org/base")
    assert pool is not None and list(pool.replicas) == ["http://a", "http://b"]
    assert pool.ready_views() == [] and not pool.ready_event.is_set()
    pool.replicas["http://a"].observe_state(state())
    pool.replicas["http://b"].observe_state(state())
    pool.refresh()
    assert [v.endpoint for v in pool.ready_views(exclude=["http://a"])] == ["http://b"]
    pool.mark_failed("http://a")
    pool.mark_failed("http://b")
    assert not pool.ready_event.is_set()
    registry.set_pool("org/base", ["http://c"])
    assert list(pool.replicas) == ["http://c"]
    registry.remove_pool("org/base")
    assert registry.served() == frozenset()


async def test_wait_ready_wakes_when_a_replica_turns_ready() -> None:
    pool = Pool("org/base")
    pool.set_endpoints(["http://a"])
    assert not await pool.wait_ready(0.01)
    waiter = asyncio.create_task(pool.wait_ready(5))
    await asyncio.sleep(0)
    pool.replicas["http://a"].observe_state(state())
    pool.refresh()
    assert await waiter


def test_recent_adapters_newest_first_bounded_and_deduplicated() -> None:
    pool = Pool("org/base")
    for repo in ("u/a", "u/b", "u/c", "u/a"):
        pool.note_adapter(repo, keep=3)
    assert pool.recent_adapters() == ["u/a", "u/c", "u/b"]
    pool.note_adapter("u/d", keep=3)
    assert pool.recent_adapters() == ["u/d", "u/a", "u/c"]
    pool.note_adapter("u/e", keep=0)
    assert pool.recent_adapters() == []
