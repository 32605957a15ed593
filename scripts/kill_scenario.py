"""The kill scenario of issue 14: ``loraplex up`` under load while one worker is SIGKILLed.

Starts ``loraplex up --models DIR --base-model B --replicas R --port P`` (a subprocess; its
log goes to ``--log``; B: the tiny SD demo base by default), waits for its banner, then sends
``--requests`` requests (default 240) over B's LoRAs in the folder at concurrency
``--concurrency`` (12) while SIGKILLing the same worker replica
``--kills`` times (3), ``--kill-interval`` seconds apart (3): the victim is found by its
``--port`` argument each time, so a kill may land on the replica while it is still warming up
after the previous one. ``--runs N`` repeats it back to back on the same port (Ctrl-C, then
``loraplex up`` again at once).

A request is *lost* unless it answered 200, or 429/503 with Retry-After. One JSON line per run:
counts per status (``error`` = no HTTP answer), lost, p50/p99 latency, the kills, and whether
``loraplex up`` stayed up. Usage::

    .venv/bin/loraplex demo-models /tmp/demo-14
    cd /tmp && /work/main/.venv/bin/python /work/main/scripts/kill_scenario.py --models /tmp/demo-14
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import yaml

BANNER = "is serving on"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def children(pid: int) -> list[int]:
    """PIDs of ``pid``'s children (Linux /proc)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(child) for child in text.split()]


def argv_of(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except (FileNotFoundError, ProcessLookupError):
        return []


def worker_ports(up_pid: int) -> dict[str, int]:
    """The API port of each worker child of ``loraplex up`` → its pid."""
    found = {}
    for pid in children(up_pid):
        argv = argv_of(pid)
        if "worker" in argv and "--port" in argv:
            found[argv[argv.index("--port") + 1]] = pid
    return found


def lora_ids(models: Path, base: str) -> list[str]:
    """LoRA repos of ``base`` in ``models``: a card whose ``base_model`` is (or lists) ``base``,
    tagged ``lora``, and no model_index.json."""
    ids = []
    for card in sorted(models.glob("*/*/README.md")):
        repo = card.parent
        meta = yaml.safe_load(card.read_text().split("---")[1]) or {}
        bases = meta.get("base_model") or []
        bases = [bases] if isinstance(bases, str) else bases
        lora = "lora" in (meta.get("tags") or []) or meta.get("base_model_relation") == "adapter"
        if not (repo / "model_index.json").exists() and lora and base in bases:
            ids.append(f"{repo.parent.name}/{repo.name}")
    return ids


async def wait_for_banner(log: Path, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while BANNER not in log.read_text(errors="replace"):
        if process.poll() is not None:
            raise SystemExit(f"loraplex up exited with {process.returncode}; see {log}")
        if time.monotonic() > deadline:
            raise SystemExit(f"loraplex up not ready after {timeout_s:.0f} s; see {log}")
        await asyncio.sleep(0.2)


async def load(
    url: str, loras: list[str], total: int, concurrency: int, steps: int | None
) -> list[tuple]:
    """(status or 'error', seconds, has Retry-After) per request."""
    results: list[tuple] = []
    queue = list(range(total))
    extra = {"num_inference_steps": steps} if steps else {}

    async def user(client: httpx.AsyncClient) -> None:
        while queue:
            index = queue.pop()
            body = {"inputs": f"a red fox #{index}", "parameters": {"seed": index, **extra}}
            started = time.monotonic()
            try:
                resp = await client.post(f"/models/{loras[index % len(loras)]}", json=body)
                outcome = (resp.status_code, "retry-after" in resp.headers)
            except httpx.HTTPError as exc:
                outcome = (f"error:{type(exc).__name__}", False)
            results.append((outcome[0], time.monotonic() - started, outcome[1]))

    async with httpx.AsyncClient(base_url=url, timeout=180) as client:
        await asyncio.gather(*(user(client) for _ in range(concurrency)))
    return results


async def killer(up_pid: int, port: str, kills: int, interval_s: float, done: list) -> None:
    """SIGKILL the worker on ``port`` ``kills`` times, ``interval_s`` apart (waiting for it to
    be running again if it is being restarted)."""
    await asyncio.sleep(1.0)  # let the load get going
    for _ in range(kills):
        deadline = time.monotonic() + 60
        while (pid := worker_ports(up_pid).get(port)) is None or pid in done:
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        done.append(pid)
        await asyncio.sleep(interval_s)


async def one_run(args: argparse.Namespace, port: int, run: int) -> dict:
    log = Path(args.log).with_suffix(f".{run}.log")
    cmd = [sys.executable, "-m", "loraplex", "up", "--models", str(args.models)]
    cmd += ["--base-model", args.base_model]
    cmd += ["--replicas", str(args.replicas), "--port", str(port)]
    with log.open("wb") as sink:
        process = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
    started = time.monotonic()
    try:
        await wait_for_banner(log, process, args.startup_timeout)
        ready_s = time.monotonic() - started
        ports = sorted(worker_ports(process.pid))
        killed: list[int] = []
        url = f"http://127.0.0.1:{port}"
        kill = asyncio.create_task(
            killer(process.pid, ports[0], args.kills, args.kill_interval, killed)
        )
        began = time.monotonic()
        loras = lora_ids(args.models, args.base_model)
        results = await load(url, loras, args.requests, args.concurrency, args.steps)
        wall = time.monotonic() - began
        kill.cancel()
        up_alive = process.poll() is None
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        process.wait(60)
    return summary(results, killed, wall, ready_s, up_alive, process.returncode, run)


def summary(results, killed, wall, ready_s, up_alive, code, run) -> dict:
    statuses = Counter(str(status) for status, _, _ in results)
    kept = {200}
    lost = sum(
        1
        for status, _, retry_after in results
        if status not in kept and not (status in (429, 503) and retry_after)
    )
    latencies = sorted(seconds for _, seconds, _ in results)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    return {
        "run": run,
        "requests": len(results),
        "statuses": dict(statuses),
        "lost": lost,
        "p50_s": round(statistics.median(latencies), 3),
        "p99_s": round(p99, 3),
        "kills": len(killed),
        "wall_s": round(wall, 1),
        "ready_after_s": round(ready_s, 1),
        "up_stayed_up": up_alive,
        "up_exit_code": code,
    }


async def main_async(args: argparse.Namespace) -> int:
    port = args.port or free_port()
    lost = 0
    for run in range(1, args.runs + 1):
        figures = await one_run(args, port, run)
        lost += figures["lost"]
        print(json.dumps(figures), flush=True)
    return 1 if lost else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--base-model", default="loraplex-demo/tiny-sd")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--requests", type=int, default=240)
    parser.add_argument("--concurrency", type=int, default=12)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--kill-interval", type=float, default=3.0)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--steps", type=int, help="num_inference_steps per request (default: the worker's)"
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--log", default="/tmp/kill-scenario", help="log file prefix")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
