"""The Prefetcher's policy with a fake loader (no Hub, no pipeline): dedup, bounds, cancellation,
failure isolation, the device's settle. The loader is fake because these tests are about the
bookkeeping; the real loader runs in tests/component/worker/test_prefetch.py. Downloads block
on per-adapter events the test opens, so every interleaving here is forced, not timed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from loraplex.worker.adapters import AdapterKey
from loraplex.worker.prefetch import Plan, Prefetcher, Settled, State, Ticket

from loraplex.localhub.server import Pacer
from loraplex.shared.contract import AdapterRef
from loraplex.shared.errors import NotServable

DEADLINE_S = 5.0


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


def key_of(repo: str) -> AdapterKey:
    return AdapterKey(repo, "c" * 40)


class FakeLoader:
    """Plans every ref at commit c…c; downloads wait for ``open(repo)``; admits into a dict."""

    def __init__(self, sizes: dict[str, int | None] | None = None) -> None:
        self.sizes = sizes or {}
        self.gates: dict[str, threading.Event] = {}
        self.started: dict[str, threading.Event] = {}
        self.downloads: list[str] = []
        self.converted: list[str] = []
        self.cache: dict[AdapterKey, str] = {}
        self.fail_download: set[str] = set()
        self.fail_plan: set[str] = set()
        self.tokens: list[str | None] = []

    def _gate(self, table: dict[str, threading.Event], repo: str) -> threading.Event:
        return table.setdefault(repo, threading.Event())

    def open(self, repo: str) -> None:
        self._gate(self.gates, repo).set()

    def running(self, repo: str) -> bool:
        return self._gate(self.started, repo).is_set()

    def plan(self, ref: AdapterRef, token: str | None) -> Plan:
        if ref.repo_id in self.fail_plan:
            raise NotServable(f"{ref.repo_id} refused")
        key = key_of(ref.repo_id)
        return Plan(key, self.sizes.get(ref.repo_id, 10), needed=key not in self.cache)

    def download(self, key: AdapterKey, token: str | None) -> tuple[str, int, str]:
        self.downloads.append(key.repo_id)
        self.tokens.append(token)
        self._gate(self.started, key.repo_id).set()
        assert self._gate(self.gates, key.repo_id).wait(DEADLINE_S), "gate never opened"
        if key.repo_id in self.fail_download:
            raise NotServable(f"{key.repo_id} is not a LoRA")
        return key.repo_id, self.sizes.get(key.repo_id) or 10, "hub"

    def convert(self, file: str) -> tuple[str, int]:
        self.converted.append(file)
        return f"packed {file}", self.sizes.get(file) or 10

    def admit(self, key: AdapterKey, value: str, nbytes: int, keep: bool) -> None:
        self.cache[key] = value


@pytest.fixture
def make() -> Iterator[Callable[..., tuple[Prefetcher, FakeLoader]]]:
    made: list[Prefetcher] = []

    def build(sizes=None, concurrency=2, in_flight=100, host=100) -> tuple[Prefetcher, FakeLoader]:
        loader = FakeLoader(sizes)
        prefetcher = Prefetcher(
            loader, concurrency=concurrency, max_bytes_in_flight=in_flight, host_budget_bytes=host
        )
        made.append(prefetcher)
        return prefetcher, loader

    yield build
    for prefetcher, loader in ((p, p.loader) for p in made):
        for gate in loader.gates.values():
            gate.set()
        for repo in list(loader.started):
            loader.open(repo)
        prefetcher.stop()


def ref(repo: str) -> AdapterRef:
    return AdapterRef(repo_id=repo, revision="c" * 40)


def settle(prefetcher: Prefetcher, loader: FakeLoader, repo: str) -> str | None:
    key = key_of(repo)
    settled = prefetcher.settle(key, lambda: loader.cache.get(key))
    if prefetcher.events["wait"] == 0:
        assert settled.waited_from is None  # a hit or a miss: the switch's own tier counts
    return settled.found


def test_one_prefetch_per_commit_however_many_jobs_want_it(make) -> None:
    prefetcher, loader = make()
    tickets = [prefetcher.want(ref("o/a"), f"token-{i}") for i in range(3)]
    wait_until(lambda: all(t.prefetch is not None for t in tickets), "the jobs joined")
    loader.open("o/a")
    wait_until(lambda: prefetcher.state_of(key_of("o/a")) is State.DONE, "admission")
    assert loader.downloads == ["o/a"]
    assert len(loader.tokens) == 1 and loader.tokens[0] in {"token-0", "token-1", "token-2"}
    assert settle(prefetcher, loader, "o/a") == "packed o/a"
    assert prefetcher.events["hit"] == 1 and prefetcher.events["admitted"] == 1
    assert prefetcher.budget.unused_bytes == 0  # used: out of the books
    for ticket in tickets:
        prefetcher.release(ticket)
    assert prefetcher.budget == type(prefetcher.budget)(2, 100, 100)  # nothing left counted


def a_downloading_b_queued(make) -> tuple[Prefetcher, FakeLoader]:
    """One loader thread: o/a's download is running, o/b waits for the thread."""
    prefetcher, loader = make(concurrency=1)
    prefetcher.want(ref("o/a"), None)
    wait_until(lambda: loader.running("o/a"), "a's download")
    prefetcher.want(ref("o/b"), None)
    wait_until(lambda: prefetcher.state_of(key_of("o/b")) is State.PENDING, "b queued")
    return prefetcher, loader


def test_concurrency_bounds_the_downloads_in_flight(make) -> None:
    prefetcher, loader = a_downloading_b_queued(make)
    assert prefetcher.budget.running == 1 and prefetcher.downloading_bytes == 10
    loader.open("o/a")
    wait_until(lambda: loader.running("o/b"), "b started once a finished")
    assert loader.downloads == ["o/a", "o/b"]


def test_bytes_in_flight_are_bounded_by_the_listed_sizes(make) -> None:
    prefetcher, loader = make(sizes={"o/a": 60, "o/b": 60, "o/big": 101}, in_flight=100, host=1000)
    prefetcher.want(ref("o/a"), None)
    wait_until(lambda: loader.running("o/a"), "a's download")
    prefetcher.want(ref("o/b"), None)
    prefetcher.want(ref("o/big"), None)
    wait_until(lambda: prefetcher.events["skipped"] == 1, "the adapter over every bound skipped")
    assert prefetcher.state_of(key_of("o/b")) is State.PENDING  # 60 + 60 > 100
    assert prefetcher.downloading_bytes == 60
    loader.open("o/a")
    wait_until(lambda: loader.running("o/b"), "b started")
    assert "o/big" not in loader.downloads


def test_unused_prefetched_bytes_stay_under_the_host_budget(make) -> None:
    prefetcher, loader = make(sizes={"o/a": 60, "o/b": 60}, host=100)
    loader.open("o/a")
    loader.open("o/b")
    prefetcher.want(ref("o/a"), None)
    wait_until(lambda: prefetcher.state_of(key_of("o/a")) is State.DONE, "a admitted")
    prefetcher.want(ref("o/b"), None)
    wait_until(lambda: prefetcher.state_of(key_of("o/b")) is State.PENDING, "b queued")
    assert prefetcher.budget.unused_bytes == 60 and loader.downloads == ["o/a"]
    assert settle(prefetcher, loader, "o/a") == "packed o/a"  # the device used a
    wait_until(lambda: key_of("o/b") in loader.cache, "b prefetched once a was used")


def test_a_prefetch_nobody_wants_is_dropped_or_not_converted(make) -> None:
    prefetcher, loader = make(concurrency=1)
    running = prefetcher.want(ref("o/a"), None)
    wait_until(lambda: loader.running("o/a"), "a's download")
    waiting = prefetcher.want(ref("o/b"), None)
    wait_until(lambda: waiting.prefetch is not None, "b queued")
    prefetcher.release(waiting)
    assert prefetcher.state_of(key_of("o/b")) is None and prefetcher.events["dropped"] == 1
    prefetcher.release(running)  # while it downloads: the download finishes, nothing more
    loader.open("o/a")
    wait_until(lambda: prefetcher.events["unwanted"] == 1, "a finished unwanted")
    assert loader.downloads == ["o/a"] and loader.converted == [] and loader.cache == {}
    assert prefetcher.budget.running == 0 and prefetcher.downloading_bytes == 0


def test_a_failed_prefetch_fails_no_job_and_only_its_adapter(make) -> None:
    prefetcher, loader = make()
    loader.fail_download.add("o/bad")
    loader.fail_plan.add("o/refused")
    for repo in ("o/bad", "o/good"):
        loader.open(repo)
        prefetcher.want(ref(repo), None)
    prefetcher.want(ref("o/refused"), None)
    wait_until(lambda: prefetcher.events["failed"] == 2, "both failures")
    wait_until(lambda: key_of("o/good") in loader.cache, "the good one admitted")
    # The device finds nothing for the failed one: it loads it itself (and gets its own error).
    assert settle(prefetcher, loader, "o/bad") is None
    assert prefetcher.state_of(key_of("o/bad")) is None
    assert settle(prefetcher, loader, "o/good") == "packed o/good"
    assert (prefetcher.events["miss"], prefetcher.events["hit"]) == (1, 1)


def test_the_device_waits_for_a_prefetch_in_flight(make) -> None:
    prefetcher, loader = make()
    prefetcher.want(ref("o/a"), None)
    wait_until(lambda: loader.running("o/a"), "a's download")
    got: list[Settled[str]] = []
    key = key_of("o/a")
    device = threading.Thread(
        target=lambda: got.append(prefetcher.settle(key, lambda: loader.cache.get(key)))
    )
    device.start()
    device.join(0.05)
    assert device.is_alive() and got == []  # waiting, not downloading again
    loader.open("o/a")
    device.join(DEADLINE_S)
    assert got == [Settled("packed o/a", waited_from="hub")]  # reported as the load's tier
    assert prefetcher.events["wait"] == 1
    assert loader.downloads == ["o/a"]


def test_the_device_takes_over_a_prefetch_that_has_not_started(make) -> None:
    prefetcher, loader = a_downloading_b_queued(make)
    assert settle(prefetcher, loader, "o/b") is None  # the device loads b itself
    assert prefetcher.events["miss"] == 1 and prefetcher.state_of(key_of("o/b")) is None
    late = Ticket(ref("o/b"), None)
    prefetcher._plan(late)  # planned in this thread: a job for b arriving during that load
    assert late.prefetch is None  # not fetched a second time behind the device's back
    loader.open("o/a")
    wait_until(lambda: prefetcher.budget.running == 0, "a finished")
    assert loader.downloads == ["o/a"]  # b was never prefetched behind the device's back


def test_cached_adapters_are_not_prefetched_and_stop_joins_the_threads(make) -> None:
    prefetcher, loader = make()
    loader.cache[key_of("o/a")] = "resident"
    ticket = prefetcher.want(ref("o/a"), None)
    prefetcher.want(ref("o/b"), None)
    wait_until(lambda: loader.running("o/b"), "b's download")
    assert ticket.prefetch is None and "o/a" not in loader.downloads
    loader.open("o/b")
    prefetcher.stop()
    names = [t.name for t in threading.enumerate()]
    assert not any(n.startswith(("loraplex-plan", "loraplex-prefetch")) for n in names)
    assert prefetcher.want(ref("o/c"), None).prefetch is None  # stopped: inert


def test_the_local_hubs_pacer_shares_one_link_between_downloads() -> None:
    """The bench's 50 MB/s link (loraplex.localhub.server.Pacer), with an injected clock."""
    now = [100.0]
    pacer = Pacer(1000.0, clock=lambda: now[0])
    assert pacer.delay(500) == pytest.approx(0.5)
    assert pacer.delay(500) == pytest.approx(1.0)  # a second download queues behind the first
    now[0] += 5.0  # the link was idle meanwhile: no credit is saved up
    assert pacer.delay(1000) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        Pacer(0)
