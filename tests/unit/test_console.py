"""``loraplex up``'s console while pools start: parsing /readyz, one line per pool, and the two
ways of showing them (a terminal redrawn in place, plain lines for logs)."""

from __future__ import annotations

import pytest

from loraplex.embedded.console import (
    ConsoleView,
    PoolView,
    RateMeter,
    clock_time,
    format_line,
    pool_view,
    readiness_of,
)
from loraplex.shared.contract import LoadState, Readiness

MIB = 2**20
DOWNLOADING = LoadState.DOWNLOADING


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def screen() -> tuple[list[str], ConsoleView, Clock]:
    out: list[str] = []
    clock = Clock()
    return out, ConsoleView(out.append, tty=False, clock=clock, interval_s=5.0), clock


def test_readiness_of_a_readyz_answer() -> None:
    body = {"state": "downloading", "downloaded_bytes": 5, "total_bytes": 9, "error": "x"}
    assert readiness_of(503, body) == Readiness(
        state=DOWNLOADING, downloaded_bytes=5, total_bytes=9
    )
    ready = readiness_of(200, {"status": "ready"})  # a 200 is ready, whatever its body
    assert ready.state is LoadState.READY
    assert readiness_of(503, {"error": "warming up"}).state is LoadState.STARTING
    assert readiness_of(503, None).state is LoadState.STARTING
    assert readiness_of(None, None).state is LoadState.STARTING


def test_a_pool_shows_its_least_advanced_replica_and_the_furthest_download() -> None:
    view = pool_view(
        [
            Readiness(state=LoadState.READY, downloaded_bytes=10, total_bytes=10),
            Readiness(state=DOWNLOADING, downloaded_bytes=3, total_bytes=10),
        ]
    )
    assert view == PoolView(DOWNLOADING, 10, 10, None, ready=1, replicas=2)
    # One bad replica beside a ready one: the pool serves (the supervisor restarts the other).
    serving = pool_view(
        [Readiness(state=LoadState.READY), Readiness(state=LoadState.FAILED, reason="no GPU")]
    )
    assert serving == PoolView(LoadState.READY, reason="no GPU", ready=1, replicas=2)
    assert format_line("p", serving, None) == (
        "p  ready (1/2 ready); a replica failed, restarting it: no GPU"
    )
    loading = [Readiness(state=LoadState.LOADING), Readiness(state=LoadState.FAILED, reason="x")]
    assert pool_view(loading).state is LoadState.LOADING  # the other may still come up
    failed = pool_view([Readiness(state=LoadState.FAILED, reason="no GPU")] * 2)
    assert failed.state is LoadState.FAILED and failed.reason == "no GPU"


def test_rate_is_over_the_last_seconds_and_restarts_with_the_count() -> None:
    meter = RateMeter(window_s=10.0)
    meter.add(0.0, 0)
    assert meter.rate() is None
    meter.add(0.5, 50)
    assert meter.rate() is None  # under a second of samples
    for second in range(1, 31):
        meter.add(float(second), second * 100 if second < 20 else 1900 + (second - 19) * 10)
    assert meter.rate() == pytest.approx(10.0, rel=0.02)  # the recent rate, not the mean
    meter.add(31.0, 0)  # the worker restarted
    assert meter.rate() is None


def test_download_line_has_a_bar_bytes_rate_and_time_left() -> None:
    view = PoolView(DOWNLOADING, 1 * 2**30, 4 * 2**30, replicas=2, ready=0)
    line = format_line("org/sd", view, 32 * MIB)
    assert line == (
        "org/sd  downloading [######..................]  25%  1.0 GiB / 4.0 GiB  32.0 MiB/s"
        "  1:36 left (0/2 ready)"
    )
    assert format_line("org/sd", PoolView(DOWNLOADING, 5 * MIB), None) == (
        "org/sd  downloading 5.0 MiB"
    )
    failed = PoolView(LoadState.FAILED, reason="loading base org/sd failed: NotFound()")
    assert (
        format_line("org/sd", failed, None)
        == "org/sd  failed: loading base org/sd failed: NotFound()"
    )
    assert format_line("x", PoolView(LoadState.WARMING_UP), None) == "x  warming up"
    assert format_line("x", PoolView(LoadState.READY, ready=2, replicas=2), None) == (
        "x  ready (2 replicas)"
    )
    assert clock_time(3700) == "1:01:40"


def test_plain_lines_print_state_changes_only_for_a_quick_pool() -> None:
    out, view, clock = screen()
    for state in ["starting", "starting", "loading", "warming_up", "warming_up", "ready"]:
        view.update({"demo/tiny": PoolView(LoadState(state))})
        clock.now += 0.5
    assert out == [
        "demo/tiny  starting\n",
        "demo/tiny  loading\n",
        "demo/tiny  warming up\n",
        "demo/tiny  ready\n",
    ]


def test_plain_lines_repeat_a_download_every_interval_with_its_rate() -> None:
    out, view, clock = screen()
    for second in range(13):
        view.update(
            {
                "org/big": PoolView(DOWNLOADING, second * 10 * MIB, 200 * MIB),
                "o/x": PoolView(LoadState.STARTING),
            }
        )
        clock.now += 1.0
    big = [line for line in out if line.startswith("org/big")]
    assert len(big) == 3  # at 0 s (the change), 5 s and 10 s
    assert big[1] == (
        "org/big  downloading [######..................]  25%  50.0 MiB / 200.0 MiB"
        "  10.0 MiB/s  0:15 left\n"
    )
    assert [line for line in out if line.startswith("o/x")] == ["o/x      starting\n"]


def test_a_terminal_redraws_bytes_in_place_and_prints_state_changes_anew() -> None:
    out: list[str] = []
    clock = Clock()
    view = ConsoleView(out.append, tty=True, clock=clock)
    pools = {"a/one": PoolView(DOWNLOADING, 0, 100 * MIB), "b/two": PoolView(LoadState.STARTING)}
    view.update(pools)
    assert out[-1] == (
        "a/one  downloading [........................]   0%  0 B / 100.0 MiB\nb/two  starting\n"
    )
    clock.now += 2.0
    view.update({**pools, "a/one": PoolView(DOWNLOADING, 20 * MIB, 100 * MIB)})
    assert out[-1].startswith("\x1b[2A\r\x1b[2Ka/one  downloading [#####")  # two lines up
    assert out[-1].endswith("\x1b[2Kb/two  starting\n")
    count = len(out)
    view.update({**pools, "a/one": PoolView(DOWNLOADING, 20 * MIB, 100 * MIB)})
    assert len(out) == count  # nothing moved: nothing drawn
    clock.now += 2.0
    view.update({**pools, "a/one": PoolView(DOWNLOADING, 20 * MIB, 100 * MIB)})
    assert len(out) == count + 1 and "  5.0 MiB/s" in out[-1]  # a stall shows in the rate
    view.update({"a/one": PoolView(LoadState.LOADING), "b/two": PoolView(LoadState.STARTING)})
    assert out[-1] == "a/one  loading\nb/two  starting\n"  # a new block: history stays above
    view.update({"a/one": PoolView(LoadState.LOADING), "b/two": PoolView(LoadState.STARTING)})
    assert out[-1] == "a/one  loading\nb/two  starting\n" and len(out) == count + 2  # unchanged
