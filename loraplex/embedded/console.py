"""What ``loraplex up`` shows while its pools start: one line per pool, pure (clock and output
injected; ``up.py`` feeds it the workers' ``/readyz`` answers).

A pool's line is the least advanced state of its replicas: starting, downloading (a bar, bytes
of total, the rate and the time left), loading, warming up, ready; failed, with the reason,
when every replica failed. A failed replica beside others is named on the line while the
supervisor restarts it: one bad replica does not make the pool failed. On a terminal the
lines are redrawn in place while only bytes move, and printed anew when a state changes, so
the lines above keep the history and what other processes print between two states is not
drawn over. Elsewhere (CI logs, a file) a pool's line is printed
when its state changes, and while it downloads at most every ``interval_s``: a tiny model that
is ready in a second prints a few lines.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from loraplex.shared.contract import LoadState, Readiness
from loraplex.worker.progress import ORDER, human_bytes

WORDS = {
    LoadState.STARTING: "starting",
    LoadState.DOWNLOADING: "downloading",
    LoadState.LOADING: "loading",
    LoadState.WARMING_UP: "warming up",
    LoadState.READY: "ready",
    LoadState.FAILED: "failed",
}
BAR_WIDTH = 24
RATE_WINDOW_S = 10.0


@dataclass(frozen=True)
class PoolView:
    """One pool as the console shows it."""

    state: LoadState
    downloaded_bytes: int = 0
    total_bytes: int = 0
    reason: str | None = None
    ready: int = 0
    replicas: int = 1


def readiness_of(status_code: int | None, body: object) -> Readiness:
    """What a ``/readyz`` answer says: no answer yet, or a body without a state, is starting;
    a 200 is ready whatever its body."""
    try:
        found = Readiness.model_validate(body)
    except ValidationError:
        found = Readiness(state=LoadState.STARTING)
    if status_code == 200:
        return found.model_copy(update={"state": LoadState.READY})
    return found if status_code is not None else Readiness(state=LoadState.STARTING)


def pool_view(replicas: Sequence[Readiness]) -> PoolView:
    """One line's worth of a pool's replicas: the least advanced state of those that did not
    fail (failed when all did), with the reason of a failed one; the bytes of the furthest
    download (replicas share the HF cache: one downloads, the others wait for its files)."""
    ready = sum(r.state is LoadState.READY for r in replicas)
    done = max((r.downloaded_bytes for r in replicas), default=0)
    total = max((r.total_bytes for r in replicas), default=0)
    failed = [r for r in replicas if r.state is LoadState.FAILED]
    reason = (failed[0].reason or "no reason given") if failed else None
    alive = [r.state for r in replicas if r.state is not LoadState.FAILED]
    state = min(alive, key=ORDER.index) if alive else LoadState.FAILED
    return PoolView(state, done, total, reason, ready, len(replicas))


class RateMeter:
    """Bytes per second over the last ``window_s`` of samples."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, count: int) -> None:
        if self._samples and count < self._samples[-1][1]:
            self._samples.clear()  # a restarted worker counts from zero again
        self._samples.append((now, count))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()

    def rate(self) -> float | None:
        """None until a second of samples is in."""
        if len(self._samples) < 2:
            return None
        (t0, c0), (t1, c1) = self._samples[0], self._samples[-1]
        return (c1 - c0) / (t1 - t0) if t1 - t0 >= 1.0 else None


def format_line(name: str, view: PoolView, rate: float | None) -> str:
    """``NAME  STATE DETAILS`` (``name`` comes padded by the caller)."""
    words = WORDS[view.state]
    if view.state is LoadState.FAILED:
        return f"{name}  failed: {view.reason}"
    if view.state is LoadState.DOWNLOADING:
        words += " " + download_details(view.downloaded_bytes, view.total_bytes, rate)
    if view.replicas > 1 and view.ready == view.replicas:
        words += f" ({view.replicas} replicas)"
    elif view.replicas > 1:
        words += f" ({view.ready}/{view.replicas} ready)"
    if view.reason:
        words += f"; a replica failed, restarting it: {view.reason}"
    return f"{name}  {words}"


def download_details(done: int, total: int, rate: float | None) -> str:
    """``[#####.....]  41%  1.6 GiB / 4.0 GiB  42.0 MiB/s  0:58 left``; without a total,
    the bytes and the rate."""
    speed = f"  {human_bytes(rate)}/s" if rate else ""
    if total <= 0:
        return f"{human_bytes(done)}{speed}"
    share = min(done / total, 1.0)
    filled = round(share * BAR_WIDTH)
    bar = "[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]"
    left = f"  {clock_time((total - done) / rate)} left" if rate and done < total else ""
    return f"{bar} {share:4.0%}  {human_bytes(done)} / {human_bytes(total)}{speed}{left}"


def clock_time(seconds: float) -> str:
    """``75`` → ``1:15``; ``3700`` → ``1:01:40``."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ConsoleView:
    """Renders pools to ``write`` (stderr's write, say); see the module docstring."""

    def __init__(
        self,
        write: Callable[[str], object],
        *,
        tty: bool,
        clock: Callable[[], float] = time.monotonic,
        interval_s: float = 5.0,
    ) -> None:
        self._write = write
        self._tty = tty
        self._clock = clock
        self._interval_s = interval_s
        self._rates: dict[str, RateMeter] = {}
        self._states: dict[str, LoadState] = {}  # as last printed
        self._printed_at: dict[str, float] = {}
        self._block: list[str] = []  # the lines on screen (terminal only)

    def update(self, pools: Mapping[str, PoolView]) -> None:
        now = self._clock()
        width = max((len(name) for name in pools), default=0)
        lines = {name: self._line(name, view, now, width) for name, view in pools.items()}
        if self._tty:
            self._draw(pools, lines)
        else:
            self._print_due(pools, lines, now)
        self._states.update({name: view.state for name, view in pools.items()})

    def _line(self, name: str, view: PoolView, now: float, width: int) -> str:
        meter = self._rates.setdefault(name, RateMeter())
        if view.state is LoadState.DOWNLOADING:
            meter.add(now, view.downloaded_bytes)
        rate = meter.rate() if view.state is LoadState.DOWNLOADING else None
        return format_line(name.ljust(width), view, rate)

    def _draw(self, pools: Mapping[str, PoolView], lines: Mapping[str, str]) -> None:
        block = list(lines.values())
        changed = any(self._states.get(name) is not view.state for name, view in pools.items())
        if changed or len(block) != len(self._block):
            self._write("".join(f"{line}\n" for line in block))  # a new block below the last
        elif block != self._block:  # only bytes moved: redraw the block in place
            up = f"\x1b[{len(block)}A\r"
            self._write(up + "".join(f"\x1b[2K{line}\n" for line in block))
        self._block = block

    def _print_due(
        self, pools: Mapping[str, PoolView], lines: Mapping[str, str], now: float
    ) -> None:
        for name, view in pools.items():
            changed = self._states.get(name) is not view.state
            periodic = view.state is LoadState.DOWNLOADING and (
                now - self._printed_at.get(name, now) >= self._interval_s
            )
            if changed or periodic:
                self._write(lines[name] + "\n")
                self._printed_at[name] = now
