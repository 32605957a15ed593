"""The worker's load state behind /readyz, the download log policy and the byte-counting bars."""

from __future__ import annotations

import threading

import pytest
from loraplex.worker.hub_bars import counting_bars
from loraplex.worker.progress import DownloadLog, LoadProgress, LogPolicy, human_bytes

from loraplex.shared.contract import LoadState, Readiness

MIB = 2**20


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_states_go_forward_with_the_base_downloads_bytes() -> None:
    progress = LoadProgress()
    assert progress.snapshot() == Readiness(state=LoadState.STARTING)
    progress.downloading(total_bytes=100, cached_bytes=30)
    progress.report("written", 20, 70)
    progress.report("transfer", 15, 80)  # the same bytes seen by a second bar: the largest wins
    assert progress.snapshot() == Readiness(
        state=LoadState.DOWNLOADING, downloaded_bytes=50, total_bytes=100
    )
    progress.loading()
    assert progress.snapshot().downloaded_bytes == 100  # every file is in the cache now
    progress.report("written", 90, 70)  # a late report changes nothing once downloaded
    assert progress.snapshot().downloaded_bytes == 100
    progress.warming_up()
    progress.ready()
    assert progress.snapshot() == Readiness(
        state=LoadState.READY, downloaded_bytes=100, total_bytes=100
    )


def test_without_sizes_from_the_listing_the_total_is_what_the_bars_learn() -> None:
    progress = LoadProgress()
    progress.downloading(total_bytes=0, cached_bytes=0)
    progress.report("bar", 10, None)
    assert progress.snapshot().total_bytes == 0
    progress.report("bar", 10, 40)
    assert (progress.snapshot().downloaded_bytes, progress.snapshot().total_bytes) == (10, 40)


def test_states_may_be_skipped_but_never_go_back() -> None:
    progress = LoadProgress()
    progress.warming_up()  # an engine factory that reports nothing: starting → warming_up
    with pytest.raises(ValueError, match="from warming_up to downloading"):
        progress.downloading()
    progress.ready()
    with pytest.raises(ValueError, match="cannot fail"):
        progress.failed("late")


def test_failed_keeps_the_reason_and_ends_the_load() -> None:
    progress = LoadProgress()
    progress.downloading(10)
    progress.failed("loading base org/x failed: NotFound('no such repo')")
    snap = progress.snapshot()
    assert snap.state is LoadState.FAILED and "NotFound" in (snap.reason or "")
    with pytest.raises(ValueError):
        progress.loading()


def test_download_log_speaks_per_decile_but_not_more_often_than_the_interval() -> None:
    clock = Clock()
    size = 1000 * MIB
    lines = []
    download = DownloadLog("adapter org/a@c", size, clock, LogPolicy(0.1, 5.0, 30.0))
    for step in range(1, 101):  # 1 % per second
        clock.now = float(step)
        lines.append(download.report("bar", step * size // 100, size))
    spoken = [line for line in lines if line]
    assert 9 <= len(spoken) <= 11
    assert spoken[0] == "downloading adapter org/a@c: 100.0 MiB of 1000.0 MiB (10%) at 10.0 MiB/s"
    clock.now = 101.0
    assert download.finished() == "downloaded adapter org/a@c: 1000.0 MiB in 101.0 s"


def test_download_log_bursts_stay_quiet_and_a_stall_still_speaks() -> None:
    clock = Clock()
    download = DownloadLog("base org/b", 100 * MIB, clock, LogPolicy(0.1, 5.0, 30.0))
    clock.now = 1.0
    assert download.report("bar", 90 * MIB, None) is None  # 90 % within a second: too soon
    clock.now = 6.0
    assert "90.0 MiB of 100.0 MiB (90%)" in (download.report("bar", 90 * MIB, None) or "")
    clock.now = 30.0
    assert download.report("bar", 91 * MIB, None) is None  # no new decile, not silent long
    clock.now = 36.5
    assert "at 2.5 MiB/s" in (download.report("bar", 91 * MIB, None) or "")  # 30 s of silence


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (5 * MIB, "5.0 MiB"), (3 * 2**40, "3.0 TiB")],
)
def test_human_bytes(count: int, text: str) -> None:
    assert human_bytes(count) == text


def test_counting_bars_report_bytes_and_ignore_other_bars() -> None:
    """As huggingface_hub drives a ``tqdm_class``: byte bars whose total grows as files begin,
    and a bar of files done that is not bytes."""
    seen: dict[object, tuple[int, int | None]] = {}
    bars = counting_bars(lambda bar, done, total: seen.__setitem__(bar, (done, total)))
    files = bars(total=3, desc="Fetching 3 files")
    written = bars(desc="Downloading", total=0, initial=0, unit="B", unit_scale=True, name="x")
    written.total = 300  # what snapshot_download does as each file starts
    written.refresh()
    written.update(120)
    files.update(1)
    assert seen == {id(written): (120, 300)}
    assert written.format_dict["n"] == 120  # read by huggingface_hub's rate postfix
    written.set_postfix_str("1 MB/s")
    written.set_description("done")
    written.close()


def test_counting_bars_count_every_byte_from_parallel_threads() -> None:
    seen: list[int] = []
    bars = counting_bars(lambda bar, done, total: seen.append(done))
    bar = bars(total=0, unit="B")

    def feed() -> None:
        for _ in range(1000):
            bar.update(1)

    threads = [threading.Thread(target=feed) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert bar.n == 8000 and max(seen) == 8000
