"""The blog's setting through the capacity planner: before pools, after pools, and loraplex.

Runs ``loraplex simulate --scenario seed-blog`` (no sizing table) and prints, side by side from
one run, how loraplex compares with the seed's two setups. Keys (last line, JSON): the six
figures the issue names (``before.cold_p50_s`` … ``loraplex.gpu_hours``), plus
``after_over_loraplex_p95`` (the seed pool's p95 ÷ loraplex's), ``before_over_loraplex_gpu_hours``
and ``after_over_loraplex_loads`` (adapter loads per request). The simulation is deterministic:
these are figures of the model, not timings of this machine.

Run: ``python bench/simulate_seed_blog.py`` (about a second).
"""

from __future__ import annotations

import json

from loraplex.simulate.config import SEED_BLOG
from loraplex.simulate.results import format_table, simulate


def main() -> None:
    cfg = SEED_BLOG.model_copy(update={"sizing_multipliers": ()})
    figures = simulate(cfg).figures
    print(format_table(figures))
    before, after, lora = figures["before"], figures["after"], figures["loraplex"]
    summary = {
        f"{name}.{key}": figures[name][key]
        for name in ("before", "after", "loraplex")
        for key in ("cold_p50_s", "gpu_hours")
    }
    summary["after_over_loraplex_p95"] = round(after["p95_s"] / lora["p95_s"], 2)
    summary["before_over_loraplex_gpu_hours"] = round(before["gpu_hours"] / lora["gpu_hours"], 2)
    summary["after_over_loraplex_loads"] = round(
        after["loads_per_request"] / lora["loads_per_request"], 2
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
