"""Router counters → request rates (pure core), the router ↔ operator metric contract, and the
rate sources (:mod:`loraplex.operator.scrape`) against stub HTTP servers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web
from loraplex.operator.rates import CounterRates, RouterSample, parse_router_metrics
from loraplex.operator.scaling import Observation, ScalingPolicy, ScalingSpec
from loraplex.operator.scrape import PrometheusSource, ScrapeSource, urls_from_endpoint_slices
from loraplex.router.metrics import RouterMetrics
from prometheus_client import generate_latest

from loraplex.shared.metric_names import BASE_MODEL_LABEL, ROUTER_PENDING, ROUTER_REQUESTS_TOTAL

A, B = "org/base-a", "org/base-b"


def sample(total: float, pending: float = 0, base: str = A) -> RouterSample:
    return RouterSample({base: total}, {base: pending})


def rates_over(ticks: list[tuple[float, dict[str, RouterSample]]], window: float = 10.0):
    rates = CounterRates(window_s=window)
    out = []
    for now, samples in ticks:
        rates.observe(now, samples)
        out.append(rates.snapshot())
    return out


def test_first_scrape_gives_no_rate_then_deltas_count() -> None:
    snaps = rates_over([(0, {"r1": sample(100)}), (5, {"r1": sample(110)})])
    assert snaps[0].rate(A) == 0.0
    assert snaps[1].rate(A) == pytest.approx(2.0)


def test_counter_reset_is_not_a_negative_rate() -> None:
    # The router restarted between t=5 and t=10: 110 → 4 means 4 requests since the restart.
    snaps = rates_over(
        [(0, {"r1": sample(100)}), (5, {"r1": sample(110)}), (10, {"r1": sample(4)})], window=5
    )
    assert snaps[2].rate(A) == pytest.approx(4 / 5)


def test_rates_sum_over_routers_and_a_vanished_router_drops_out() -> None:
    ticks = [
        (0, {"r1": sample(0), "r2": sample(0)}),
        (5, {"r1": sample(10), "r2": sample(15)}),
        (10, {"r1": sample(20)}),  # r2 disappeared (pod gone)
        (15, {"r1": sample(30), "r2": sample(3)}),  # r2 is back, new baseline
        (20, {"r1": sample(40), "r2": sample(13)}),
    ]
    snaps = rates_over(ticks, window=5)
    assert [round(s.rate(A), 3) for s in snaps] == [0.0, 5.0, 2.0, 2.0, 4.0]
    assert [s.routers for s in snaps] == [2, 2, 1, 2, 2]


def test_pending_sums_over_routers_per_base() -> None:
    snaps = rates_over([(0, {"r1": sample(0, 2), "r2": sample(0, 1), "r3": sample(0, 5, B)})])
    assert snaps[0].pending_for(A) == 3 and snaps[0].pending_for(B) == 5


def test_window_averages_a_burst() -> None:
    ticks = [(t, {"r1": sample(total)}) for t, total in [(0, 0), (5, 0), (10, 30), (15, 30)]]
    snaps = rates_over(ticks, window=10)
    assert snaps[2].rate(A) == pytest.approx(3.0)  # 30 over the 10 s window
    assert snaps[3].rate(A) == pytest.approx(3.0)


def test_policy_on_scraped_rates_survives_reset_and_router_loss() -> None:
    """Counter reset and a router disappearing, end to end through the policy: no spurious
    scale-down from a reset, and a lost router lowers capacity only after the window."""
    spec = ScalingSpec(max_replicas=10, scale_down_stabilization_s=20.0, idle_to_zero_s=60.0)
    policy, rates, replicas = ScalingPolicy(spec), CounterRates(window_s=5), 0
    per_router = {"r1": 0.0, "r2": 0.0}
    history = []
    for t in range(0, 65, 5):
        if t == 20:
            per_router["r1"] = 0.0  # r1 restarts: its counter starts over
        if t >= 40:
            per_router.pop("r2", None)  # r2 goes away
        for name in per_router:
            per_router[name] += 15.0  # 3 req/s each
        rates.observe(t, {name: sample(total) for name, total in per_router.items()})
        snap = rates.snapshot()
        replicas = policy.decide(Observation(t, snap.rate(A), 0, replicas, replicas)).replicas
        history.append(replicas)
    # t=0: one sample, no rate yet. t=20: r1's reset reads as +15, not -45: no dip.
    # t=40: r2 gone → 3 req/s; the 20 s down-window holds 6 until t=60.
    assert history == [0] + [6] * 11 + [3]


def test_parse_router_metrics_sums_routes_and_codes() -> None:
    text = "\n".join(
        [
            "# TYPE loraplex_router_requests_total counter",
            f'loraplex_router_requests_total{{base_model="{A}",route="adapter",code="200"}} 7',
            f'loraplex_router_requests_total{{base_model="{A}",route="base",code="503"}} 3',
            f'loraplex_router_requests_total{{base_model="{B}",route="base",code="200"}} 1',
            "# TYPE loraplex_router_pending gauge",
            f'loraplex_router_pending{{base_model="{A}"}} 2',
            'other_metric{base_model="x"} 99',
        ]
    )
    parsed = parse_router_metrics(text + "\n")
    assert parsed.requests == {A: 10.0, B: 1.0} and parsed.pending == {A: 2.0}


def test_operator_parses_what_the_router_registry_exposes() -> None:
    """The contract end to end: the router's own registry, rendered as prometheus_client serves
    it (``_total`` appended to the counter, ``_created`` series beside it), read back by the
    operator's parser. A rename on either side that misses the other fails here."""
    metrics = RouterMetrics()
    metrics.requests.labels(base_model=A, route="adapter", code="200").inc(7)
    metrics.requests.labels(base_model=A, route="base", code="503").inc(3)
    metrics.requests.labels(base_model=B, route="base", code="200").inc()
    metrics.pending.labels(base_model=A).set(2)
    metrics.inflight.labels(base_model=B).set(5)  # same label, not part of the contract
    text = generate_latest(metrics.registry).decode()
    assert f'{ROUTER_REQUESTS_TOTAL}{{{BASE_MODEL_LABEL}="{A}"' in text
    assert f'{ROUTER_PENDING}{{{BASE_MODEL_LABEL}="{A}"}} 2.0' in text
    parsed = parse_router_metrics(text)
    assert parsed.requests == {A: 10.0, B: 1.0}
    assert parsed.pending == {A: 2.0}


async def test_prometheus_queries_name_the_exposed_series() -> None:
    # Spelled out, not built from the constants: these queries are what dashboards and
    # recording rules already use, so a change to the constants must fail here too.
    async with httpx.AsyncClient() as http:
        source = PrometheusSource("http://prometheus:9090/", http, window="2m")
    assert source.rate_query == "sum by (base_model) (rate(loraplex_router_requests_total[2m]))"
    assert source.pending_query == "sum by (base_model) (loraplex_router_pending)"


def test_urls_from_endpoint_slices_keep_ready_endpoints() -> None:
    slices = [
        {
            "ports": [{"name": "metrics", "port": 9000}, {"name": "http", "port": 8080}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": True}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},
                {"addresses": ["fd00::3"]},
            ],
        }
    ]
    assert urls_from_endpoint_slices(slices, "http", "/metrics") == [
        "http://10.0.0.1:8080/metrics",
        "http://[fd00::3]:8080/metrics",
    ]


@pytest.fixture()
async def stub_server() -> AsyncIterator[tuple[dict[str, str], str]]:
    app = web.Application()
    runner = web.AppRunner(app)
    state: dict[str, str] = {}
    routes = web.RouteTableDef()

    @routes.get("/metrics")
    async def metrics(_: web.Request) -> web.Response:
        total = state.get("total", "0")
        body = (
            "# TYPE loraplex_router_requests_total counter\n"
            f'loraplex_router_requests_total{{base_model="{A}",route="base",code="200"}} {total}\n'
        )
        return web.Response(text=body)

    @routes.get("/api/v1/query")
    async def query(request: web.Request) -> web.Response:
        q = request.query["query"]
        value = "2.5" if "rate(" in q else "4"
        result = [{"metric": {"base_model": A}, "value": [0, value]}]
        return web.json_response({"status": "success", "data": {"result": result}})

    app.add_routes(routes)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield state, f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_scrape_source_reads_routers_and_survives_a_dead_one(stub_server) -> None:
    state, base = stub_server

    async def urls() -> list[str]:
        return [f"{base}/metrics", "http://127.0.0.1:9/metrics"]  # the second refuses

    async with httpx.AsyncClient(timeout=2) as http:
        source = ScrapeSource(urls, http, window_s=10)
        state["total"] = "10"
        first = await source.read(0.0)
        state["total"] = "20"
        second = await source.read(5.0)
    assert first.rate(A) == 0.0 and first.routers == 1
    assert second.rate(A) == pytest.approx(2.0)


async def test_prometheus_source_queries_rate_and_pending(stub_server) -> None:
    _, base = stub_server
    async with httpx.AsyncClient(timeout=2) as http:
        snap = await PrometheusSource(base, http).read(0.0)
    assert snap.rate(A) == 2.5 and snap.pending_for(A) == 4
