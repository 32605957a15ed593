"""Request streams: a synthetic generator (Zipf over adapters, diurnal, bursts) or a trace file.

A trace is CSV (header ``time,model_id[,base_model]``) or JSONL (objects with the same keys);
``time`` is seconds from the start of the trace. A row without ``base_model`` belongs to
``TrafficConfig.default_base``; a ``model_id`` equal to its base is a base-model request.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loraplex.simulate.config import SyntheticTraffic, TrafficConfig


@dataclass(frozen=True)
class Request:
    index: int
    time: float
    model_id: str
    base: str
    adapter: str | None  # None: a request for the base model itself


@dataclass(frozen=True)
class Traffic:
    """Requests over ``[0, horizon_s)``; figures count only those from ``measure_from_s`` on
    (the warm-up before it fills caches, deployments and pools, as a running fleet has them)."""

    requests: tuple[Request, ...]
    horizon_s: float
    measure_from_s: float = 0.0

    @property
    def bases(self) -> list[str]:
        return sorted({r.base for r in self.requests})

    @property
    def measured(self) -> tuple[Request, ...]:
        return tuple(r for r in self.requests if r.time >= self.measure_from_s)

    @property
    def measured_s(self) -> float:
        return self.horizon_s - self.measure_from_s

    def with_warmup(self, warmup_s: float) -> Traffic:
        if warmup_s >= self.horizon_s:
            raise TraceError(
                f"the trace lasts {self.horizon_s:g} s, not longer than the warm-up of "
                f"{warmup_s:g} s; pass a shorter --warmup (0 measures from the first request)"
            )
        return Traffic(self.requests, self.horizon_s, warmup_s)

    def scaled(self, multiplier: float, horizon_s: float) -> Traffic:
        """Replay ``multiplier``× faster (a trace's sizing): same order, time divided."""
        out = [
            Request(i, r.time / multiplier, r.model_id, r.base, r.adapter)
            for i, r in enumerate(self.requests)
            if r.time / multiplier < horizon_s
        ]
        return Traffic(tuple(out), min(horizon_s, self.horizon_s / multiplier))


class TraceError(ValueError):
    """A trace file that cannot be used; the message names the file, row and field."""


def load_traffic(cfg: TrafficConfig, rate_multiplier: float = 1.0) -> Traffic:
    """The run's requests: ``warmup_s`` unmeasured, then ``horizon_s`` measured (synthetic);
    a trace is replayed whole and measured after its first ``warmup_s``."""
    if cfg.trace is not None:
        traffic = load_trace(cfg.trace, cfg.default_base)
        if rate_multiplier != 1.0:
            traffic = traffic.scaled(rate_multiplier, cfg.warmup_s + cfg.horizon_s)
        # A trace replayed k× faster is k× shorter: its warm-up shrinks with it.
        return traffic.with_warmup(cfg.warmup_s / rate_multiplier)
    rate = cfg.synthetic.rate_per_s * rate_multiplier
    spec = cfg.synthetic.model_copy(update={"rate_per_s": rate})
    end = cfg.warmup_s + cfg.horizon_s
    return Traffic(synthesize(spec, end, cfg.seed).requests, end, cfg.warmup_s)


def _rate_at(spec: SyntheticTraffic, times: np.ndarray) -> np.ndarray:
    phase = 2 * math.pi * (times - spec.diurnal_peak_s) / spec.diurnal_period_s
    rate = spec.rate_per_s * (1 + spec.diurnal_amplitude * np.cos(phase))
    for burst in spec.bursts:
        inside = (times >= burst.start_s) & (times < burst.start_s + burst.duration_s)
        rate = np.where(inside, rate * burst.multiplier, rate)
    return rate


def _assign_bases(shares: np.ndarray, adapters: int) -> np.ndarray:
    """Base of each adapter by popularity rank, interleaved so that every prefix of the ranking
    (hence the traffic as well as the catalogue) splits by ``shares``: rank k goes to the base
    furthest below its share of the first k."""
    counts = np.zeros(len(shares))
    out = np.empty(adapters, dtype=int)
    for rank in range(adapters):
        base = int(np.argmax(shares * (rank + 1) - counts))
        counts[base] += 1
        out[rank] = base
    return out


def synthesize(spec: SyntheticTraffic, horizon_s: float, seed: int) -> Traffic:
    """Non-homogeneous Poisson arrivals by thinning, each drawn from the Zipf catalogue."""
    rng = np.random.default_rng(seed)
    bases = sorted(spec.base_share)
    shares = np.array([spec.base_share[b] for b in bases], dtype=float)
    shares /= shares.sum()
    adapter_base = _assign_bases(shares, spec.adapters)
    ranks = np.arange(1, spec.adapters + 1, dtype=float)
    popularity = ranks ** (-spec.zipf_exponent)
    popularity /= popularity.sum()

    peak = spec.rate_per_s * (1 + spec.diurnal_amplitude)
    peak *= math.prod(max(1.0, b.multiplier) for b in spec.bursts)
    candidates = np.sort(rng.uniform(0, horizon_s, size=rng.poisson(peak * horizon_s)))
    keep = rng.uniform(0, 1, size=candidates.size) < _rate_at(spec, candidates) / peak
    times = candidates[keep]
    is_base = rng.uniform(0, 1, size=times.size) < spec.base_request_share
    picks = rng.choice(spec.adapters, size=times.size, p=popularity)
    base_picks = rng.choice(len(bases), size=times.size, p=shares)

    requests = []
    for i, t in enumerate(times.tolist()):
        if is_base[i]:
            base = bases[int(base_picks[i])]
            requests.append(Request(i, t, base, base, None))
        else:
            rank = int(picks[i])
            base = bases[int(adapter_base[rank])]
            adapter = f"lora/{base}-{rank + 1:05d}"
            requests.append(Request(i, t, adapter, base, adapter))
    return Traffic(tuple(requests), horizon_s)


def _rows(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TraceError(f"cannot read trace {path}: {exc}") from exc
    if path.suffix.lower() in {".jsonl", ".ndjson"}:
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise TraceError(f"{path}:{n}: not a JSON object ({exc})") from exc
        return rows
    return list(csv.DictReader(text.splitlines()))


def load_trace(path: Path, default_base: str | None) -> Traffic:
    """Read a CSV/JSONL trace; rows are sorted by time."""
    parsed: list[tuple[float, str, str]] = []
    for n, row in enumerate(_rows(path), start=1):
        if not isinstance(row, dict) or "time" not in row or "model_id" not in row:
            raise TraceError(f"{path} row {n}: needs the fields 'time' and 'model_id'")
        try:
            time = float(row["time"])
        except (TypeError, ValueError) as exc:
            raise TraceError(f"{path} row {n}: time {row['time']!r} is not a number") from exc
        if not math.isfinite(time) or time < 0:
            raise TraceError(f"{path} row {n}: time must be seconds ≥ 0, got {time}")
        base = row.get("base_model") or default_base
        if not base:
            raise TraceError(
                f"{path} row {n}: no base_model; add a base_model column or pass --default-base"
            )
        parsed.append((time, str(row["model_id"]), str(base)))
    if not parsed:
        raise TraceError(f"trace {path} has no requests")
    parsed.sort(key=lambda item: item[0])
    requests = tuple(
        Request(i, t, model, base, None if model == base else model)
        for i, (t, model, base) in enumerate(parsed)
    )
    return Traffic(requests, max(parsed[-1][0], 1.0))


def cold_adapters(traffic: Traffic, max_per_hour: float) -> frozenset[str]:
    """The long tail: adapters requested at most ``max_per_hour`` on average over the horizon,
    and always those requested only once (a short run cannot tell a rare adapter apart)."""
    counts = Counter(r.adapter for r in traffic.measured if r.adapter is not None)
    limit = max(1.0, max_per_hour * traffic.measured_s / 3600.0)
    return frozenset(a for a, c in counts.items() if c <= limit)


def distinct_per_window(traffic: Traffic, window_s: float = 120.0) -> float:
    """Mean number of distinct model ids per measured window (the blog: ~10 per 2 minutes)."""
    windows = max(1, int(traffic.measured_s // window_s))
    seen: list[set[str]] = [set() for _ in range(windows)]
    for r in traffic.measured:
        slot = int((r.time - traffic.measure_from_s) // window_s)
        if slot < windows:
            seen[slot].add(r.model_id)
    return sum(len(s) for s in seen) / windows
