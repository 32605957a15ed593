"""``--scenario seed-blog``: the blog's setting reproduced within 20%, and what loraplex adds.

The blog reports ~35 s for an unpopular LoRA before pools (a dedicated deployment spawned on
demand: 25 s warm-up + adapter load + 8.5 s inference) and ~13 s after (shared warm pool:
unload + load + inference, plus queueing).
"""

from __future__ import annotations

import json

import pytest

from loraplex.simulate.cli import main

BLOG_BEFORE_S = 35.0
BLOG_AFTER_S = 13.0


def _run(capsys, *args: str) -> dict:
    assert main(["--scenario", "seed-blog", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_seed_blog_lands_within_20_percent_of_the_blog(capsys) -> None:
    figures = _run(capsys, "--no-sizing")
    assert figures["before"]["cold_p50_s"] == pytest.approx(BLOG_BEFORE_S, rel=0.2)
    assert figures["after"]["cold_p50_s"] == pytest.approx(BLOG_AFTER_S, rel=0.2)
    traffic = figures["traffic"]
    assert 7 <= traffic["distinct_models_per_2min"] <= 13  # "about 10 per 2 minutes"
    assert traffic["bases"]["sdxl"] / traffic["requests"] == pytest.approx(0.92, abs=0.04)
    for name in ("before", "after", "loraplex"):
        fig = figures[name]
        assert fig["completed"] + fig["rejected"] == fig["requests"] == traffic["requests"]
        assert fig["gpu_hours"] > 0 and fig["cold_p50_s"] is not None
    lora = figures["loraplex"]
    # What loraplex adds: no cold start, no unload on switch, cached adapters, affinity.
    assert lora["cold_p50_s"] < figures["after"]["cold_p50_s"]
    assert lora["p95_s"] < figures["after"]["p95_s"]
    assert lora["loads_per_request"] < figures["after"]["loads_per_request"]
    assert lora["gpu_hours"] < figures["before"]["gpu_hours"]


@pytest.mark.slow
def test_seed_blog_sizing_table_for_10x_and_100x(capsys) -> None:
    figures = _run(capsys)
    rows = figures["sizing"]
    assert [row["traffic_multiplier"] for row in rows] == [10.0, 100.0]
    assert rows[1]["rate_per_s"] == pytest.approx(10 * rows[0]["rate_per_s"], rel=0.1)
    for name in ("after", "loraplex"):
        assert rows[1][name]["gpus_per_hour"] > 5 * rows[0][name]["gpus_per_hour"]
