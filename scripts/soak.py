"""Soak: ``loraplex up`` at ~80 % of its capacity with random faults, then one JSON line.

What runs (all real, on loopback): a Hub-compatible server over the demo models in this process
(:mod:`loraplex.localhub.server`, with a soak-only delay knob in front: "Hub slow"), and
``loraplex up --hub --base-model loraplex-demo/tiny-sd --replicas R`` as a subprocess pointed at
it through ``HF_ENDPOINT`` — router and workers resolve and download through the real
huggingface_hub client, so Hub faults reach both.

Phases:

1. **capacity** — closed loop at concurrency ``4 × R`` for ``--warmup`` seconds: every adapter
   gets loaded, allocators reach steady state, and the 200s per second are the capacity;
2. **baseline** at idle: RSS, open fds and threads of the router and of each worker (/proc);
3. **soak** — open loop (Poisson arrivals) at ``--load`` × capacity for ``--duration`` s over the
   demo LoRAs and the base, while faults are drawn at random every ~``--fault-every`` s until
   85 % of the duration: ``kill`` (SIGKILL of worker replica #1 — #0 is never killed, so some
   worker lives from baseline to end and its RSS growth can be measured), ``stop`` (SIGSTOP of
   a random replica for 2-5 s, then SIGCONT: hung, not dead), ``hub_slow`` (every Hub answer
   4 s late for 6 s, over the router's 2 s Hub timeout);
4. **end** at idle: the same figures again.

A request is *lost* unless it answered 200, or 429/503 with Retry-After (no answer at all
counts as lost too). Figures: counts per status, lost, latency p50/p99, faults, RSS growth %
(router; worst surviving worker), fd and thread growth (router and worker #0). The router
exposes no asyncio task count (that needs a debug endpoint in router/app.py); its fds and
threads are the leak signal here. ``ok`` is true when lost == 0, RSS growth <= 5 % and fd
growth <= 5. Exit status 0 when ok.

Usage (``make soak``; duration ``SOAK_DURATION_S`` or ``--duration``, default 600 s)::

    cd /tmp && /work/main/.venv/bin/python /work/main/scripts/soak.py --duration 180
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil
import uvicorn

from loraplex.demo.models import TINY_SD, build_demo_models
from loraplex.localhub.server import HubState, create_hub_app
from loraplex.localhub.store import RepoStore

BANNER = "is serving on"
PARAMS = {"width": 64, "height": 64, "num_inference_steps": 2}
ROUTER_ENV = {  # lookups go to the Hub often enough for "Hub slow" to matter, and time out
    "LORAPLEX_ROUTER_RESOLVE_TTL_S": "5",
    "LORAPLEX_ROUTER_HUB_TIMEOUT_S": "2",
}
MAX_RSS_GROWTH_PCT, MAX_FD_GROWTH = 5.0, 5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Hub:
    """The local Hub in a thread, with ``delay_s`` (soak-only; off unless the soak sets it)."""

    def __init__(self, root: Path) -> None:
        store = RepoStore(root)
        app = create_hub_app(store, HubState.for_store(store, None))
        self.delay_s = 0.0

        @app.middleware("http")
        async def slow(request: Any, call_next: Any) -> Any:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            return await call_next(request)

        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None,
                                access_log=False, lifespan="off")  # fmt: skip
        self.server = uvicorn.Server(config)
        threading.Thread(target=self.server.run, name="soak-hub", daemon=True).start()
        while not self.server.started:
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Stack:
    """``loraplex up`` as a subprocess, and its children by role."""

    def __init__(
        self, hub_url: str, replicas: int, cache: Path, extra_env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "loraplex", "up", "--hub", "--base-model", TINY_SD]
        argv += ["--replicas", str(replicas), "--port", str(self.port), "--cache-dir", str(cache)]
        env = {**os.environ, **ROUTER_ENV, "HF_ENDPOINT": hub_url, "HF_TOKEN": "",
               "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1", "HF_HOME": str(cache / "home"),
               "LORAPLEX_WORKER_WIDTH": "64", "LORAPLEX_WORKER_HEIGHT": "64",
               **(extra_env or {})}  # fmt: skip
        self.output: list[str] = []
        self.process = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd="/"
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(BANNER in line for line in self.output):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("loraplex up did not start:\n" + "".join(self.output[-40:]))
            time.sleep(0.2)

    def children(self, role: str) -> list[psutil.Process]:
        found = []
        for child in psutil.Process(self.process.pid).children():
            try:
                if role in child.cmdline():
                    found.append(child)
            except psutil.NoSuchProcess:
                continue
        return found

    def worker(self, index: int) -> psutil.Process | None:
        """Worker replica ``index`` (ordered by API port, which a restart keeps)."""
        workers = sorted(self.children("worker"), key=_port_of)
        return workers[index] if index < len(workers) else None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _port_of(process: psutil.Process) -> int:
    argv = process.cmdline()
    return int(argv[argv.index("--port") + 1]) if "--port" in argv else 0


def proc_figures(process: psutil.Process | None) -> dict[str, Any] | None:
    if process is None:
        return None
    try:
        return {"pid": process.pid, "rss": process.memory_info().rss,
                "fds": process.num_fds(), "threads": process.num_threads()}  # fmt: skip
    except psutil.NoSuchProcess:
        return None


def figures_of(stack: Stack, replicas: int) -> dict[str, Any]:
    routers = stack.children("router")
    return {
        "router": proc_figures(routers[0] if routers else None),
        "workers": [proc_figures(stack.worker(i)) for i in range(replicas)],
    }


class Load:
    """Requests over the demo LoRAs and the base; every answer's status is kept."""

    def __init__(self, url: str, models: list[str], seed: int) -> None:
        self.client = httpx.AsyncClient(base_url=url, timeout=180,
                                        limits=httpx.Limits(max_connections=500))  # fmt: skip
        self.models, self.rng = models, random.Random(seed)
        self.codes: Counter[str] = Counter()
        self.lost: Counter[str] = Counter()
        self.latencies: list[float] = []

    async def one(self) -> None:
        model = self.rng.choice(self.models)
        started = time.monotonic()
        try:
            answer = await self.client.post(
                f"/models/{model}", json={"inputs": "a red fox", "parameters": PARAMS}
            )
        except httpx.HTTPError as exc:
            self.codes["error"] += 1
            self.lost[type(exc).__name__] += 1
            return
        code = answer.status_code
        self.codes[str(code)] += 1
        self.latencies.append(time.monotonic() - started)
        if not (code == 200 or (code in (429, 503) and answer.headers.get("retry-after"))):
            self.lost[f"{code}: {answer.text[:120]}"] += 1

    async def closed_loop(self, seconds: float, concurrency: int) -> float:
        """Run ``concurrency`` back-to-back clients; returns 200s per second."""
        before, end = self.codes["200"], time.monotonic() + seconds

        async def client() -> None:
            while time.monotonic() < end:
                await self.one()

        started = time.monotonic()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return (self.codes["200"] - before) / (time.monotonic() - started)

    async def open_loop(self, seconds: float, rate: float) -> None:
        tasks: set[asyncio.Task[None]] = set()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            task = asyncio.create_task(self.one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(self.rng.expovariate(rate))
        await asyncio.gather(*tasks)


async def inject_faults(stack: Stack, hub: Hub, until: float, every_s: float, seed: int) -> Counter:
    """Random faults, one at a time, until ``until`` (monotonic); returns how many of each."""
    rng, done = random.Random(seed + 1), Counter()
    while True:
        await asyncio.sleep(rng.expovariate(1 / every_s))
        if time.monotonic() >= until:
            return done
        kind = rng.choice(["kill", "stop", "hub_slow"])
        if kind == "kill" and (victim := stack.worker(1)) is not None:
            victim.send_signal(signal.SIGKILL)
        elif kind == "stop" and (victim := stack.worker(rng.randrange(2))) is not None:
            victim.send_signal(signal.SIGSTOP)
            await asyncio.sleep(rng.uniform(2, 5))
            victim.send_signal(signal.SIGCONT)
        elif kind == "hub_slow":
            hub.delay_s = 4.0
            await asyncio.sleep(6)
            hub.delay_s = 0.0
        else:
            continue
        done[kind] += 1


def growth_pct(before: dict | None, after: dict | None, key: str) -> float | None:
    if not before or not after or before["pid"] != after["pid"]:
        return None  # restarted in between: nothing to compare
    return round(100.0 * (after[key] - before[key]) / before[key], 2)


async def settled_figures(stack, replicas: int, base: dict, deadline_s: float = 20.0) -> dict:
    """The end figures once idle connections have closed: keep-alive connections of the last
    requests (httpx expires idle ones after 5 s) are not a leak, so poll until the fd counts
    are back within MAX_FD_GROWTH of the baseline, or the deadline passes (then a real leak
    shows in the figures)."""
    stop = time.monotonic() + deadline_s
    while True:
        end = figures_of(stack, replicas)
        fds = [
            growth(base["router"], end["router"], "fds"),
            growth(base["workers"][0], end["workers"][0], "fds"),
        ]
        if all(g is None or g <= MAX_FD_GROWTH for g in fds) or time.monotonic() > stop:
            return end
        await asyncio.sleep(0.5)  # poll interval while connections drain, not a race fix


def growth(before: dict | None, after: dict | None, key: str) -> int | None:
    if not before or not after or before["pid"] != after["pid"]:
        return None
    return int(after[key] - before[key])


async def soak(args: argparse.Namespace, models_dir: Path, cache: Path) -> dict[str, Any]:
    hub = Hub(models_dir)
    stack = Stack(hub.url, args.replicas, cache)
    launched = time.monotonic()
    try:
        stack.wait_ready()
        startup_s = time.monotonic() - launched
        demo = sorted(p.parent.name for p in models_dir.glob("loraplex-demo/lora-r*/README.md"))
        load = Load(stack.url, [TINY_SD] + [f"loraplex-demo/{d}" for d in demo], args.seed)
        capacity = await load.closed_loop(args.warmup, 4 * args.replicas)
        await asyncio.sleep(3)
        base = figures_of(stack, args.replicas)
        load.codes.clear(), load.lost.clear(), load.latencies.clear()
        rate = max(0.2, args.load * capacity)
        started = time.monotonic()
        faults, _ = await asyncio.gather(
            inject_faults(stack, hub, started + 0.85 * args.duration, args.fault_every, args.seed),
            load.open_loop(args.duration, rate),
        )
        hub.delay_s = 0.0
        end = await settled_figures(stack, args.replicas, base)
        alive = stack.process.poll() is None
        await load.client.aclose()
    finally:
        stack.stop()
        hub.server.should_exit = True
    worker_rss = [
        growth_pct(b, e, "rss") for b, e in zip(base["workers"], end["workers"], strict=True)
    ]
    lat = sorted(load.latencies)
    figures = {
        "duration_s": args.duration,
        "startup_s": round(startup_s, 1),
        "replicas": args.replicas,
        "capacity_rps": round(capacity, 2),
        "offered_rps": round(rate, 2),
        "requests": sum(load.codes.values()),
        "codes": dict(sorted(load.codes.items())),
        "lost": sum(load.lost.values()),
        "lost_detail": dict(load.lost.most_common(5)),
        "p50_s": round(statistics.median(lat), 3) if lat else None,
        "p99_s": round(lat[int(0.99 * (len(lat) - 1))], 3) if lat else None,
        "faults": dict(sorted(faults.items())),
        "router_rss_mb": round(end["router"]["rss"] / 2**20, 1) if end["router"] else None,
        "router_rss_growth_pct": growth_pct(base["router"], end["router"], "rss"),
        "worker_rss_growth_pct": max((g for g in worker_rss if g is not None), default=None),
        "router_fd_growth": growth(base["router"], end["router"], "fds"),
        "router_thread_growth": growth(base["router"], end["router"], "threads"),
        "worker0_fd_growth": growth(base["workers"][0], end["workers"][0], "fds"),
        "router_asyncio_tasks": None,  # not exposed by the router (see the module docstring)
        "stack_alive": alive,
    }
    figures["ok"] = bool(
        alive
        and figures["lost"] == 0
        and (figures["router_rss_growth_pct"] or 0) <= MAX_RSS_GROWTH_PCT
        and (figures["worker_rss_growth_pct"] or 0) <= MAX_RSS_GROWTH_PCT
        and (figures["router_fd_growth"] or 0) <= MAX_FD_GROWTH
        and (figures["worker0_fd_growth"] or 0) <= MAX_FD_GROWTH
    )
    return figures


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = float(os.environ.get("SOAK_DURATION_S", "600"))
    parser.add_argument("--duration", type=float, default=default, help="soak seconds (600)")
    parser.add_argument("--warmup", type=float, default=15.0, help="capacity phase seconds")
    parser.add_argument("--load", type=float, default=0.8, help="fraction of capacity (0.8)")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--fault-every", type=float, default=8.0, help="mean s between faults")
    parser.add_argument("--models", type=Path, help="demo models folder (default: built anew)")
    parser.add_argument("--seed", type=int, default=14)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="loraplex-soak-") as tmp:
        models = args.models
        if models is None:
            models = Path(tmp) / "models"
            build_demo_models(models)
        figures = asyncio.run(soak(args, models, Path(tmp) / "cache"))
    print(json.dumps(figures), flush=True)
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
