"""PNG figures for ``--plot DIR``: latency CDF per scenario, replicas and load over time."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FormatStrFormatter

from loraplex.simulate.results import Run

LOAD_BIN_S = 60.0


def latency_cdf(run: Run, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    measured = [r.index for r in run.traffic.measured]
    for name, recorder in run.recorders.items():
        latencies = [recorder.latencies[i] for i in measured if i in recorder.latencies]
        values = np.sort(np.array(latencies, dtype=float))
        if values.size:
            ax.plot(values, np.arange(1, values.size + 1) / values.size, label=name)
    ax.set_xscale("log")
    for axis_formatter in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
        axis_formatter(FormatStrFormatter("%g"))  # 3, 10, 30 rather than 3×10⁰
    ax.set_xlabel("latency (s, log scale)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("Latency CDF per scenario")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def replicas_and_load(run: Run, path: Path) -> None:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    horizon = run.traffic.horizon_s
    for name, recorder in run.recorders.items():
        samples = [s for s in recorder.samples if s[0] <= horizon]
        top.step([s[0] / 60 for s in samples], [s[1] for s in samples], where="post", label=name)
    for axis in (top, bottom):
        axis.axvline(run.traffic.measure_from_s / 60, color="grey", linestyle=":", linewidth=1)
    top.set_ylabel("replicas (GPUs)")
    top.set_title("Replicas over time (dotted: end of warm-up)")
    top.grid(True, alpha=0.3)
    top.legend()
    times = np.array([r.time for r in run.traffic.requests])
    edges = np.arange(0.0, horizon + LOAD_BIN_S, LOAD_BIN_S)
    counts, _ = np.histogram(times, bins=edges)
    bottom.step(edges[:-1] / 60, counts, where="post", color="black")
    bottom.set_ylabel("requests per minute")
    bottom.set_xlabel("time (min)")
    bottom.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(run: Run, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / "latency_cdf.png", directory / "replicas_over_time.png"]
    latency_cdf(run, paths[0])
    replicas_and_load(run, paths[1])
    return paths
