"""Router overhead: the same stub worker reached directly and through the router, in one run.

Processes: two stub workers (aiohttp; ``slow`` answers a 200 KB body after 50 ms, ``fast``
answers a 1 KB body at once), one router (``loraplex router``, static pools
``bench/slow`` → slow stub, ``bench/fast`` → fast stub; base-model ids, so no Hub lookup) and
this load generator (aiohttp), all on this machine.

(a) Added latency — open loop, 200 req/s to each path for ``--seconds`` (default 20),
    direct and routed requests interleaved so both see the same machine load:
    ``added_p50_ms``, ``added_p99_ms`` (router minus direct), plus each side's percentiles.
(b) Capacity — closed loop at concurrency 64 against the fast stub, direct and routed phases
    alternated ``--rounds`` times (median): ``router_rps``, ``direct_rps``.

Goals (issue 4): added p50 ≤ 1 ms, p99 ≤ 5 ms, router ≥ 1,000 req/s. Last line: JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp
from aiohttp import web

from loraplex.shared.contract import GenerateRequest

CONCURRENCY = 64


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_stub(port: int, delay_s: float, size: int, base: str) -> None:
    """A stub worker process: the real /v1/state and /v1/generate shapes, no pipeline."""
    body = os.urandom(size)
    state = {
        "base_model": base,
        "ready": True,
        "queue_depth": 0,
        "queue_capacity": 1000,
        "free_slots": 8,
    }

    async def generate(request: web.Request) -> web.Response:
        GenerateRequest.model_validate_json(await request.read())
        if delay_s:
            await asyncio.sleep(delay_s)
        return web.Response(body=body, content_type="image/png")

    async def get_state(_: web.Request) -> web.Response:
        return web.json_response(state)

    app = web.Application()
    app.router.add_post("/v1/generate", generate)
    app.router.add_get("/v1/state", get_state)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


@contextmanager
def processes(slow_port: int, fast_port: int, router_port: int) -> Iterator[None]:
    me = os.path.abspath(__file__)
    pools = {
        "bench/slow": [f"http://127.0.0.1:{slow_port}"],
        "bench/fast": [f"http://127.0.0.1:{fast_port}"],
    }
    env = {
        **os.environ,
        "LORAPLEX_ROUTER_STATIC_POOLS": json.dumps(pools),
        "LORAPLEX_ROUTER_LOG_LEVEL": "WARNING",
    }
    procs = [
        subprocess.Popen([sys.executable, me, "--stub", str(slow_port), "0.05", str(200 * 1024)]),
        subprocess.Popen([sys.executable, me, "--stub", str(fast_port), "0", "1024"]),
        subprocess.Popen(
            [sys.executable, "-m", "loraplex", "router", "--port", str(router_port)], env=env
        ),
    ]
    try:
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


async def wait_up(session: aiohttp.ClientSession, urls: list[str], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    for url in urls:
        while True:
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up")
            await asyncio.sleep(0.1)


class Target:
    def __init__(self, url: str, body: bytes) -> None:
        self.url = url
        self.body = body

    async def hit(self, session: aiohttp.ClientSession) -> float:
        started = time.perf_counter()
        async with session.post(
            self.url, data=self.body, headers={"content-type": "application/json"}
        ) as resp:
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{self.url} answered {resp.status}")
        return time.perf_counter() - started


def targets(stub_port: int, router_port: int, base: str) -> tuple[Target, Target]:
    direct = GenerateRequest(prompt="bench").model_dump_json(exclude_none=True).encode()
    routed = json.dumps({"inputs": "bench"}).encode()
    return (
        Target(f"http://127.0.0.1:{stub_port}/v1/generate", direct),
        Target(f"http://127.0.0.1:{router_port}/models/{base}", routed),
    )


async def open_loop(
    session: aiohttp.ClientSession, pair: tuple[Target, Target], rate: float, seconds: float
) -> tuple[list[float], list[float]]:
    direct, routed = [], []
    tasks = []
    started = time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_record(pair[0], session, direct)))
        tasks.append(asyncio.create_task(_record(pair[1], session, routed)))
    await asyncio.gather(*tasks)
    return direct, routed


async def _record(target: Target, session: aiohttp.ClientSession, out: list[float]) -> None:
    out.append(await target.hit(session))


async def closed_loop(session: aiohttp.ClientSession, target: Target, seconds: float) -> float:
    done = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await target.hit(session)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return done / (time.perf_counter() - started)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def measure(args: argparse.Namespace) -> dict[str, object]:
    slow_port, fast_port, router_port = free_port(), free_port(), free_port()
    with processes(slow_port, fast_port, router_port):
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            await wait_up(
                session,
                [
                    f"http://127.0.0.1:{slow_port}/v1/state",
                    f"http://127.0.0.1:{fast_port}/v1/state",
                    f"http://127.0.0.1:{router_port}/readyz",
                ],
            )
            slow = targets(slow_port, router_port, "bench/slow")
            fast = targets(fast_port, router_port, "bench/fast")
            await open_loop(session, slow, 50, 1)  # warm-up: connections, imports
            direct, routed = await open_loop(session, slow, args.rate, args.seconds)
            direct_rps, router_rps = [], []
            for _ in range(args.rounds):
                direct_rps.append(await closed_loop(session, fast[0], args.closed_seconds))
                router_rps.append(await closed_loop(session, fast[1], args.closed_seconds))
    return {
        "added_p50_ms": round(pct(routed, 0.5) - pct(direct, 0.5), 2),
        "added_p99_ms": round(pct(routed, 0.99) - pct(direct, 0.99), 2),
        "direct_p50_ms": round(pct(direct, 0.5), 2),
        "direct_p99_ms": round(pct(direct, 0.99), 2),
        "router_p50_ms": round(pct(routed, 0.5), 2),
        "router_p99_ms": round(pct(routed, 0.99), 2),
        "open_loop_rate": args.rate,
        "open_loop_seconds": args.seconds,
        "router_rps": round(statistics.median(router_rps)),
        "direct_rps": round(statistics.median(direct_rps)),
        "concurrency": CONCURRENCY,
        "cpus": os.cpu_count(),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--stub":
        port, delay, size = int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
        run_stub(port, delay, size, "bench/slow" if delay else "bench/fast")
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="open-loop req/s per path")
    parser.add_argument("--seconds", type=float, default=20.0, help="open-loop duration")
    parser.add_argument("--rounds", type=int, default=3, help="closed-loop rounds per path")
    parser.add_argument("--closed-seconds", type=float, default=4.0)
    args = parser.parse_args()
    result = asyncio.run(measure(args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
