"""bench/placement_sections/bound.py: the lower bound on wait that settles issue 15's last goal.

Checked against what is known exactly: with no allowance (loads = the bound's) every request
has one holder, so the bound is the M/D/1 queue at the fleet's utilisation, and more allowance
can only lower it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

BOUND = Path(__file__).resolve().parents[2] / "bench" / "placement_sections" / "bound.py"
_spec = importlib.util.spec_from_file_location("placement_bound", BOUND)
assert _spec is not None and _spec.loader is not None
bound_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bound_module)
extra_copies_allowed = bound_module.extra_copies_allowed
wait_lower_bound = bound_module.wait_lower_bound

N, HOST, RHO, GENERATE_S = 8, 300, 0.7, 5.0


@pytest.fixture(scope="module")
def shares() -> np.ndarray:
    weights = np.arange(1, 2501, dtype=float) ** -1.1
    return weights / weights.sum()


def bound(shares: np.ndarray, x: float) -> dict[str, float]:
    return wait_lower_bound(shares, N, HOST, x, utilisation=RHO, generate_s=GENERATE_S)


def test_without_allowance_every_request_waits_an_m_d_1_queue(shares: np.ndarray) -> None:
    exact = bound(shares, 1.0)
    assert exact["extra_copies"] == 0 and exact["single_copy_share"] == 1.0
    md1 = RHO * GENERATE_S / (2 * (1 - RHO))
    assert exact["mean_wait_s"] == pytest.approx(md1, rel=1e-3)


def test_an_extra_copy_costs_the_least_popular_held_adapter(shares: np.ndarray) -> None:
    optimal = float(shares[N * HOST :].sum())
    last_held = float(shares[N * HOST - 1])
    allowance = 3.5 * last_held  # room for three displaced adapters, not four
    assert extra_copies_allowed(shares, N * HOST, 1 + allowance / optimal) == 3


def test_more_allowance_never_raises_the_bound(shares: np.ndarray) -> None:
    waits = [bound(shares, x)["mean_wait_s"] for x in (1.0, 1.1, 1.3, 1.5, 2.0, 3.0, 10.0)]
    assert waits == sorted(waits, reverse=True) and waits[-1] > 0
    at_goal = bound(shares, 1.3)
    assert at_goal["extra_copies"] == 29 and at_goal["single_copy_share"] == pytest.approx(
        0.425, abs=1e-3
    )
