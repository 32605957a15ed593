"""The running job's age in picking: least-loaded's tie-break, placement's work-based bound,
and how the router's pool state learns and ages it."""

from __future__ import annotations

from loraplex.router.homes import ranking
from loraplex.router.pick import (
    LeastLoadedPicker,
    LoadSeconds,
    PlacementPicker,
    ReplicaView,
    queue_seconds,
)
from loraplex.router.pools import ReplicaState

from loraplex.shared.contract import Headers, WorkerState

FIVE_S = LoadSeconds(generate=5.0)
COLD = "org/cold@" + "c" * 40


def view(endpoint: str, depth: int, running: float = 0.0) -> ReplicaView:
    return ReplicaView(endpoint, depth, None, load_seconds=FIVE_S, running_seconds=running)


def test_queue_seconds_counts_what_the_running_job_has_done() -> None:
    assert queue_seconds(view("http://a", 0, running=3.0)) == 0.0  # idle: nothing to wait for
    assert queue_seconds(view("http://a", 2)) == 10.0  # no running age known: depth × generation
    assert queue_seconds(view("http://a", 2, running=3.0)) == 7.0
    assert queue_seconds(view("http://a", 2, running=9.0)) == 5.0  # overran: at most one generation


def test_least_loaded_breaks_equal_queues_by_the_job_that_frees_first() -> None:
    picker = LeastLoadedPicker()
    replicas = [
        view("http://a", 1, running=0.5),
        view("http://b", 1, running=4.0),
        view("http://c", 2, running=4.9),
    ]
    assert {picker.pick(replicas, None).endpoint for _ in range(4)} == {"http://b"}
    tied = [view("http://a", 1), view("http://b", 1)]  # nothing known: rotate as before
    assert {picker.pick(tied, None).endpoint for _ in range(4)} == {"http://a", "http://b"}


def home_and_other(adapter: str) -> tuple[str, str]:
    first, second = ranking(adapter, ["http://x", "http://y"])
    return first, second


def test_a_home_a_whole_job_behind_a_nearly_free_replica_is_passed_over() -> None:
    """Depth alone would keep a cold adapter at its home one request deeper; counted in work,
    the home (10 s left) is more than a generation behind the other (0.5 s left)."""
    home, other = home_and_other(COLD)
    by_depth = [view(home, 2), view(other, 1)]
    assert PlacementPicker().pick(by_depth, COLD).endpoint == home
    by_work = [view(home, 2), view(other, 1, running=4.5)]
    assert PlacementPicker().pick(by_work, COLD).endpoint == other
    nearly_done_home = [view(home, 2, running=4.0), view(other, 1)]
    assert PlacementPicker().pick(nearly_done_home, COLD).endpoint == home  # 6 s vs 5 s


def state(in_flight: int, running: float) -> WorkerState:
    return WorkerState(
        base_model="org/base",
        ready=True,
        queue_depth=1,
        queue_capacity=8,
        in_flight=in_flight,
        running_seconds=running,
        free_slots=1,
    )


def test_the_pool_ages_the_running_seconds_it_polled_and_restarts_them_on_an_answer() -> None:
    replica = ReplicaState("http://w")
    replica.observe_state(state(in_flight=1, running=2.0), now=100.0)
    assert replica.view(now=101.5).running_seconds == 3.5
    replica.observe_answer({Headers.ACTIVE_ADAPTER: ""}, now=103.0)  # a run ended: next began
    assert replica.view(now=104.0).running_seconds == 1.0
    replica.observe_state(state(in_flight=0, running=0.0), now=105.0)  # idle at the poll
    replica.own_inflight = 1  # our request went there since
    assert replica.view(now=106.0).running_seconds == 0.0
    answered = ReplicaState("http://v")
    answered.observe_answer({Headers.ACTIVE_ADAPTER: ""}, now=1.0)
    assert answered.view(now=5.0).running_seconds == 0.0  # nothing queued there: idle
