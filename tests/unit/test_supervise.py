"""The embedded mode's supervisor with real child processes (tiny Python one-liners)."""

from __future__ import annotations

import asyncio
import sys
import time

import httpx
import pytest

from loraplex.embedded.supervise import (
    Child,
    ChildFailed,
    ChildSpec,
    ProbeAnswer,
    Supervisor,
    give_up_reason,
)
from loraplex.embedded.up import free_port

SERVE_READY = (
    "import http.server, sys\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.end_headers()\n"
    "    def log_message(self, *a): pass\n"
    "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
)


def python(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


async def test_a_child_that_never_starts_is_given_up_with_its_exit_code() -> None:
    port = free_port("127.0.0.1")
    bad = ChildSpec(
        "bad setting",
        python("import sys; sys.exit(3)"),
        {},
        ready_url=f"http://127.0.0.1:{port}/readyz",
    )
    supervisor = Supervisor([bad], min_backoff_s=0.05, max_failed_starts=3)
    await supervisor.start()
    started = time.monotonic()
    try:
        with pytest.raises(
            ChildFailed,
            match=r"bad setting exited 3 times before it was ever ready.*exited with code 3",
        ):
            await supervisor.wait_ready(60)
        assert time.monotonic() - started < 30
    finally:
        await supervisor.stop()


async def test_ready_children_are_restarted_and_stopped() -> None:
    port = free_port("127.0.0.1")
    spec = ChildSpec(
        "server", python(SERVE_READY, str(port)), {}, ready_url=f"http://127.0.0.1:{port}/readyz"
    )
    supervisor = Supervisor([spec], min_backoff_s=0.05)
    await supervisor.start()
    try:
        await supervisor.wait_ready(30)
        child = supervisor.children["server"]
        assert child.probe == ProbeAnswer(200, None)  # the latest answer, kept for the console
        first = child.process
        assert first is not None
        first.kill()
        await first.wait()
        deadline = time.monotonic() + 30
        while child.process is first or not child.ready.is_set():
            assert time.monotonic() < deadline, "the killed child was not restarted"
            await asyncio.sleep(0.05)  # poll interval; the deadline above bounds the wait
        assert child.restarts == 1
    finally:
        await supervisor.stop()
    assert child.process is not None and child.process.returncode is not None


WARMING_FOREVER = "import time; time.sleep(120)"  # up, never ready: a worker still warming up
REPORTS_FAILED = (
    "import http.server, json, sys, threading\n"
    "answered = threading.Semaphore(0)\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        body = json.dumps({'state': 'failed', 'reason': 'NotServable: no UNet'}).encode()\n"
    "        self.send_response(503); self.end_headers(); self.wfile.write(body)\n"
    "        answered.release()\n"
    "    def log_message(self, *a): pass\n"
    "server = http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H)\n"
    "threading.Thread(target=server.serve_forever, daemon=True).start()\n"
    # Like a real worker it reports failed, then exits non-zero (unless terminated first). It
    # exits after its *second* answer: the probe asks again only once it has read the first,
    # so the supervisor has surely seen the report (a fixed report time raced a loaded CI).
    "answered.acquire(); answered.acquire()\n"
    "server.shutdown()\n"
    "sys.exit(3)\n"
)


def failed_reason(answer: ProbeAnswer) -> str | None:
    """What ``loraplex up`` reads from a worker's /readyz: the reason of a failed load."""
    body = answer.body
    if isinstance(body, dict) and body.get("state") == "failed":
        return str(body.get("reason"))
    return None


async def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)  # poll interval; the deadline bounds the wait


def fresh(child: Child, killed: set[int]) -> bool:
    """A process of ``child`` runs that was not killed yet."""
    process = child.process
    return process is not None and process.returncode is None and process.pid not in killed


async def test_a_replica_killed_while_warming_up_is_restarted_while_its_sibling_serves() -> None:
    """SIGKILL the warming-up replica more times than ``max_failed_starts``: it is restarted
    each time (with backoff), its sibling keeps serving, and nothing is given up."""
    port, never = free_port("127.0.0.1"), free_port("127.0.0.1")
    sibling = ChildSpec(
        "worker org/base #0",
        python(SERVE_READY, str(port)),
        {},
        ready_url=f"http://127.0.0.1:{port}/readyz",
        group="org/base",
    )
    victim = ChildSpec(
        "worker org/base #1",
        python(WARMING_FOREVER),
        {},
        ready_url=f"http://127.0.0.1:{never}/readyz",
        group="org/base",
    )
    supervisor = Supervisor(
        [sibling, victim], min_backoff_s=0.05, max_backoff_s=0.2, max_failed_starts=3
    )
    await supervisor.start()
    try:
        serving = supervisor.children[sibling.name]
        await wait_for(serving.ready.is_set, 30, "the sibling to be ready")
        sibling_pid = serving.process.pid if serving.process else None
        child = supervisor.children[victim.name]
        killed: set[int] = set()
        for _ in range(5):
            await wait_for(lambda: fresh(child, killed), 30, "a restarted victim")
            process = child.process
            assert process is not None
            killed.add(process.pid)
            process.kill()  # SIGKILL from outside, while it is still warming up
            await process.wait()
        await wait_for(lambda: child.restarts == 5, 30, "the last restart")
        assert child.gave_up is None and not supervisor.given_up.is_set()
        assert child.failed_starts == 5 and not child.ever_ready
        assert serving.process is not None and serving.process.pid == sibling_pid
        assert serving.process.returncode is None  # the sibling was never touched
        async with httpx.AsyncClient() as client:
            assert (await client.get(sibling.ready_url)).status_code == 200
        await supervisor.wait_ready(5)  # serving: one ready, the other restarting
    finally:
        await supervisor.stop()


async def test_a_base_whose_only_replica_fails_is_given_up_with_the_model_and_reason() -> None:
    port = free_port("127.0.0.1")
    bad = ChildSpec(
        "worker org/bad #0",
        python(REPORTS_FAILED, str(port)),
        {},
        ready_url=f"http://127.0.0.1:{port}/readyz",
        group="org/bad",
    )
    supervisor = Supervisor([bad], min_backoff_s=0.05, failure_of=failed_reason)
    await supervisor.start()
    started = time.monotonic()
    try:
        with pytest.raises(ChildFailed, match="org/bad cannot be served: NotServable: no UNet"):
            await supervisor.wait_ready(60)
        assert time.monotonic() - started < 30
        assert "org/bad" in await asyncio.wait_for(supervisor.wait_given_up(), 1)
        child = supervisor.children[bad.name]
        await wait_for(lambda: child.process.returncode is not None, 10, "the child stopped")
        assert child.restarts == 0  # given up at its failed report, not restarted
    finally:
        await supervisor.stop()


def child(name: str, **state: object) -> Child:
    found = Child(ChildSpec(name, ["true"], {}, group="org/base"))
    for field_name, value in state.items():
        setattr(found, field_name, value)
    return found


@pytest.mark.parametrize(
    ("children", "expected"),
    [
        ([child("a", failure="no UNet"), child("b")], None),  # b may still load
        ([child("a", failure="no UNet"), child("b", failed_starts=3)], "cannot be served: no"),
        ([child("a", failure="no UNet"), child("b", ever_ready=True)], None),  # b serves
        ([child("a", failed_starts=9), child("b", ever_ready=True, failed_starts=9)], None),
        (
            [child("a", failed_starts=3), child("b", failed_starts=3, last_exit="exited with 1")],
            "each of its 2 replicas exited 3 times before it was ever ready (the last: b exited",
        ),
        ([child("a", failed_starts=2)], None),
        ([], None),
    ],
)
def test_give_up_reason(children: list[Child], expected: str | None) -> None:
    reason = give_up_reason("org/base", children, max_failed_starts=3)
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and reason.startswith("org/base") and expected in reason
