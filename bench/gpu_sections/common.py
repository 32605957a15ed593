"""What the sections of ``bench/gpu.py`` share: the ranks, units and the in-turns timing."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # gpu.py runs as __main__: importing it here at run time would load it twice
    from gpu import Run

RANK, B_RANK, MB = 32, 16, 1e6
BATCHES, TIMED_CYCLES = (1, 4), 5


def pct(value: float, base: float) -> float:
    return round((value - base) / base * 100, 2)


def in_turns(run: Run, setups: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Median generation ms per state, measured in turns so that drift hits all alike; each
    setup (untimed) puts the model in its state. The first turn is a warm-up."""
    times: dict[str, list[float]] = {name: [] for name in setups}
    for turn in range(run.args.gen_reps + 1):
        for name, setup in setups.items():
            setup()
            ms = run.timed(run.generate)
            if turn:
                times[name].append(ms)
    return {name: round(statistics.median(t), 3) for name, t in times.items()}
