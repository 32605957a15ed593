"""The embedded mode's supervisor with real child processes (tiny Python one-liners)."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from loraplex.embedded.supervise import ChildFailed, ChildSpec, ProbeAnswer, Supervisor
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
        with pytest.raises(ChildFailed, match="bad setting exited 3 times with code 3"):
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
