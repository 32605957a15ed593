"""End to end: ``loraplex up`` as a subprocess over the fixture models, driven by real clients.

Nothing is mocked: the router, two worker processes and the in-process local Hub are the
product's own code; the clients are the unchanged ``huggingface_hub.InferenceClient``, the
``openai`` SDK and the ``curl`` binary. One stack serves the whole module (starting it is the
expensive part); the test that kills a worker runs last.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from fixtures.hub import HubServer, hub_env_vars
from fixtures.models import DemoModels
from huggingface_hub import InferenceClient
from openai import OpenAI
from PIL import Image

from loraplex.demo.models import TINY_SD
from loraplex.embedded.up import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

START_TIMEOUT_S = 240.0
PARAMS = {"width": 64, "height": 64, "num_inference_steps": 2, "seed": 7}


@dataclass
class Stack:
    url: str
    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)

    def child_pids(self, kind: str) -> list[int]:
        """PIDs of our children whose command line is ``loraplex <kind>`` (Linux /proc)."""
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        found = []
        for child in map(int, children):
            try:
                argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except FileNotFoundError:
                continue
            if kind.encode() in argv:
                found.append(child)
        return found


def _pump(stream: io.TextIOBase, sink: list[str]) -> None:
    for line in stream:
        sink.append(line)


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


@contextmanager
def running_stack(args: list[str], env: dict[str, str]) -> Iterator[Stack]:
    """``loraplex up ARGS`` until it prints its banner; on exit Ctrl-C it and check that no
    child process survives."""
    port = free_port("127.0.0.1")
    cmd = [sys.executable, "-m", "loraplex", "up", *args, "--port", str(port)]
    process = subprocess.Popen(
        cmd,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    running = Stack(url=f"http://127.0.0.1:{port}", process=process)
    threading.Thread(target=_pump, args=(process.stdout, running.output), daemon=True).start()
    try:
        wait_until(
            lambda: (
                any("is serving on" in line for line in running.output)
                or process.poll() is not None
            ),
            START_TIMEOUT_S,
            "loraplex up to be ready",
        )
        assert process.poll() is None, "".join(running.output[-50:])
        yield running
    finally:
        pids = (
            running.child_pids("worker") + running.child_pids("router")
            if process.poll() is None
            else []
        )
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        for pid in pids:  # Ctrl-C leaves no process behind
            assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid), f"pid {pid} survived"


@pytest.fixture(scope="module")
def stack(demo_models: DemoModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    args = ["--models", str(demo_models.root), "--base-model", TINY_SD, "--replicas", "2"]
    args += ["--cache-dir", str(tmp_path_factory.mktemp("hf-cache"))]
    # A small queue so the 429 test can fill it; the rest of the suite stays sequential.
    env = {"LORAPLEX_WORKER_QUEUE_CAPACITY": "2"}
    with running_stack(args, env) as running:
        yield running


def _is_zombie(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"


def pixels(image: Image.Image | bytes) -> np.ndarray:
    if isinstance(image, bytes):
        image = Image.open(io.BytesIO(image))
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def hf_image(stack: Stack, model_id: str, **overrides: object) -> np.ndarray:
    client = InferenceClient(base_url=f"{stack.url}/models/{model_id}", timeout=120)
    return pixels(client.text_to_image("a red fox", **{**PARAMS, **overrides}))


def test_ready_banner_prints_copy_paste_requests(stack: Stack) -> None:
    output = "".join(stack.output)
    banner = output[output.index("loraplex is serving on") :]
    assert banner.startswith(f"loraplex is serving on {stack.url}/ ")  # the playground first
    assert f"curl -s {stack.url}/models/{TINY_SD}" in banner
    assert "-H 'lora: " in banner
    assert f'InferenceClient(base_url="{stack.url}/models/' in banner


def test_the_pools_state_lines_come_before_the_banner(stack: Stack) -> None:
    """Not a terminal: one plain line per state change of the pool (both replicas), ending
    with ready."""
    before = "".join(stack.output).split("loraplex is serving on")[0]
    states = [line for line in before.splitlines() if line.startswith(f"{TINY_SD}  ")]
    assert states, before[-2000:]
    assert states[-1] == f"{TINY_SD}  ready (2 replicas)", states
    assert len(states) <= 8, states  # a tiny model: a few lines, not a progress stream


def test_inference_client_base_and_every_lora(stack: Stack, demo_models: DemoModels) -> None:
    base_first = hf_image(stack, TINY_SD)
    assert base_first.shape == (64, 64, 3)
    for adapter in demo_models.demo.adapters:
        lora = hf_image(stack, adapter.repo_id)
        assert np.abs(lora - base_first).max() > 0, f"{adapter.repo_id} did not change the image"
        again = hf_image(stack, adapter.repo_id)
        assert np.array_equal(lora, again), f"{adapter.repo_id}: same seed, different image"
    base_after = hf_image(stack, TINY_SD)
    assert np.array_equal(base_first, base_after), "base not bit-exact after LoRA requests"


def test_seed_lora_header_with_curl(stack: Stack, demo_models: DemoModels) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("the curl binary is not installed")
    adapter = demo_models.demo.adapters[0].repo_id
    body = json.dumps({"inputs": "a red fox", "parameters": PARAMS})
    out = subprocess.run(
        [curl, "-sf", "-H", f"lora: {adapter}", f"{stack.url}/models/{TINY_SD}", "-d", body],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    assert np.array_equal(pixels(out), hf_image(stack, adapter))


def test_openai_sdk_images_generate(stack: Stack, demo_models: DemoModels) -> None:
    adapter = demo_models.demo.adapters[1].repo_id
    client = OpenAI(base_url=f"{stack.url}/v1", api_key="not-needed-locally", timeout=120)
    result = client.images.generate(
        model=adapter, prompt="a red fox", size="64x64", response_format="b64_json"
    )
    image = pixels(base64.b64decode(result.data[0].b64_json))
    assert image.shape == (64, 64, 3)
    assert np.abs(image - hf_image(stack, TINY_SD)).max() > 0


def test_error_answers(stack: Stack, demo_models: DemoModels) -> None:
    body = {"inputs": "a red fox", "parameters": PARAMS}
    with httpx.Client(base_url=stack.url, timeout=60) as client:
        unknown = client.post("/models/loraplex-demo/no-such-model", json=body)
        assert unknown.status_code == 404 and "error" in unknown.json()
        malformed = client.post("/models/bad..id", json=body)
        assert malformed.status_code == 400 and "error" in malformed.json()
        unserved = client.post(f"/models/{demo_models.test_repos.unserved_base}", json=body)
        assert unserved.status_code == 422
        assert TINY_SD in unserved.json()["error"], "422 must name the served bases"


def test_full_queue_answers_429_with_retry_after(stack: Stack) -> None:
    """Two workers × queue capacity 2: a burst of slow requests must overflow somewhere."""
    body = {
        "inputs": "a red fox",
        "parameters": {**PARAMS, "num_inference_steps": 40},
        "options": {"wait_for_model": False},
    }

    def post(_: int) -> httpx.Response:
        return httpx.post(f"{stack.url}/models/{TINY_SD}", json=body, timeout=120)

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(post, range(16)))
    codes = sorted(a.status_code for a in answers)
    assert 429 in codes, codes
    assert set(codes) <= {200, 429}, codes
    rejected = next(a for a in answers if a.status_code == 429)
    assert int(rejected.headers["retry-after"]) >= 1
    assert "error" in rejected.json()


def worker_ports(stack: Stack) -> list[tuple[int, int]]:
    """(API port, metrics port) of each worker child, from its command line."""
    ports = []
    for pid in stack.child_pids("worker"):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        ports.append(
            (int(argv[argv.index("--port") + 1]), int(argv[argv.index("--metrics-port") + 1]))
        )
    return ports


def test_workers_answer_only_the_router(stack: Stack) -> None:
    """Even on loopback, another local process gets no image and no state from a worker: the
    per-run secret is the router's; health and metrics are on the other port."""
    ports = worker_ports(stack)
    assert len(ports) == 2
    for api, metrics in ports:
        base = f"http://127.0.0.1:{api}"
        generate = httpx.post(f"{base}/v1/generate", json={"prompt": "a fox"}, timeout=30)
        assert generate.status_code == 401 and "router only" in generate.json()["error"]
        assert httpx.get(f"{base}/v1/state", timeout=30).status_code == 401
        assert httpx.get(f"http://127.0.0.1:{metrics}/readyz", timeout=30).status_code == 200
        assert "loraplex_worker_" in httpx.get(f"http://127.0.0.1:{metrics}/metrics").text
    # The secret is in the children's environment, never in the log.
    (worker, *_) = stack.child_pids("worker")
    environ = Path(f"/proc/{worker}/environ").read_bytes().decode().split("\0")
    secret = next(e.partition("=")[2] for e in environ if e.startswith("LORAPLEX_WORKER_SECRET="))
    assert len(secret) >= 32 and secret not in "".join(stack.output)


def test_killed_worker_loses_no_request_and_is_restarted(
    stack: Stack, demo_models: DemoModels
) -> None:
    workers = stack.child_pids("worker")
    assert len(workers) == 2, workers
    adapters = [a.repo_id for a in demo_models.demo.adapters]
    results: list[int] = []

    def stream() -> None:
        with httpx.Client(base_url=stack.url, timeout=120) as client:
            for i in range(16):
                answer = client.post(
                    f"/models/{adapters[i % len(adapters)]}",
                    json={"inputs": "a red fox", "parameters": PARAMS},
                )
                results.append(answer.status_code)

    runner = threading.Thread(target=stream)
    runner.start()
    wait_until(lambda: len(results) >= 3, 120, "the first answers of the stream")
    os.kill(workers[0], signal.SIGKILL)
    runner.join(timeout=300)
    assert results == [200] * 16, results
    wait_until(
        lambda: (
            len(stack.child_pids("worker")) == 2 and workers[0] not in stack.child_pids("worker")
        ),
        60,
        "the killed worker to be restarted",
    )


def test_hub_mode_resolves_and_downloads_through_a_hub(
    demo_models: DemoModels, tmp_path: Path
) -> None:
    """``--hub``: router and workers use huggingface_hub's endpoint (here the fixture Hub
    server, through HF_ENDPOINT as a user would point at a mirror); gated repos need a token."""
    server = HubServer(demo_models.root).start()
    try:
        env = hub_env_vars(server.url, tmp_path)
        with running_stack(["--hub", "--base-model", TINY_SD], env) as hub_stack:
            adapter = demo_models.demo.adapters[0].repo_id
            assert hf_image(hub_stack, adapter).shape == (64, 64, 3)
            gated = demo_models.test_repos.gated
            body = {"inputs": "a red fox", "parameters": PARAMS}
            refused = httpx.post(f"{hub_stack.url}/models/{gated}", json=body, timeout=60)
            assert refused.status_code == 401, refused.text
            assert server.count(f"/api/models/{adapter}") >= 1, "the router did not ask the Hub"
    finally:
        server.stop()
