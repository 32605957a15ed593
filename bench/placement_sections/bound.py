"""A lower bound on mean wait for any picker whose loads stay within ``x`` × the bound.

``partitioned_optimal`` keeps the fleet's ``N × H`` host slots full of *distinct* adapters (the
``N·H`` most popular) and never spills. A picker within ``x`` × its loads has an allowance of
``(x − 1) × partitioned_optimal`` loads per request to spend on balancing the load:

* **Extra copies.** An adapter on two replicas can go to either, but each extra copy held
  pushes one adapter out of the ``N·H`` slots: at best one of rank ``N·H``, ``N·H − 1``, …,
  whose requests then load. So at most ``d(x)`` extra copies fit in the allowance, and the
  requests they free are at most those of the ``d`` most popular adapters (one extra copy
  each: any other choice frees less traffic).
* **Spills.** A request sent past its adapter's only holder is a load: within the allowance
  at most ``(x − 1) × partitioned_optimal`` of the requests (0.09 % at ``x`` = 1.3) — left out.

Every other request — the *single-copy share* ``P₁ = 1 − share(top d)`` — waits at its one
holder. Generations are ``S`` seconds, not preempted, and arrivals Poisson, so at a replica
busy a fraction ``b`` of the time even a single-copy request served before everything else
waits ``R / (1 − ρ₁)`` (the M/G/1 non-preemptive priority queue's first class), where
``R = b·S/2`` is the mean residual of the job in service and ``ρ₁ = ρ·P₁`` the single-copy
load. Spread over all ``N`` replicas (equal single-copy rates) each is busy ``ρ`` on
average, so

    mean wait ≥ P₁ · (S/2) · ρ / (1 − ρ·P₁)

with every other request's wait (and every switch) counted as 0. A fleet could also keep ``k``
replicas for multi-copy adapters alone (busy all the time, no single-copy adapters) and the
rest for everything else; that gives ``P₁ · (S/2) · (Nρ − k) / (N − k − NρP₁)``, a hair less
(ignoring that ``N − k`` host tiers cannot hold the catalogue), so the bound takes the least
over ``k``.
"""

from __future__ import annotations

import numpy as np


def extra_copies_allowed(shares: np.ndarray, slots: int, over_optimal: float) -> int:
    """``d(x)``: extra copies whose displaced adapters (ranks ``slots``, ``slots − 1``, …)
    cost at most ``(x − 1) ×`` the bound's loads per request."""
    allowance = (over_optimal - 1.0) * float(shares[slots:].sum())
    displaced = np.cumsum(shares[:slots][::-1])
    return int(np.searchsorted(displaced, allowance + 1e-15, side="right"))


def wait_lower_bound(
    shares: np.ndarray,
    replicas: int,
    host_slots: int,
    over_optimal: float,
    *,
    utilisation: float,
    generate_s: float,
) -> dict[str, float]:
    """The bound above for loads within ``over_optimal`` × ``partitioned_optimal``."""
    copies = extra_copies_allowed(shares, replicas * host_slots, over_optimal)
    single = 1.0 - float(shares[:copies].sum())
    busy = replicas * utilisation  # replicas' worth of work
    apart = range(int(busy * (1.0 - single)) + 1)  # k: its single-copy load must still fit
    factor = min((busy - k) / (replicas - k - busy * single) for k in apart)
    wait = single * generate_s / 2 * factor
    return {
        "over_optimal": over_optimal,
        "extra_copies": copies,
        "single_copy_share": round(single, 4),
        "mean_wait_s": round(wait, 4),
    }
