"""A small process supervisor for the embedded mode: start children, restart the ones that die.

Why hand-written rather than supervisord/honcho: we need three things those do not give as a
library — restart with backoff while the others keep serving, readiness by HTTP probe before we
print the URL, and children that die with us even on SIGKILL (``PR_SET_PDEATHSIG`` on Linux).

The readiness probe keeps each child's latest answer (:attr:`Child.probe`: status and JSON
body) so the caller can show what a child reports while it starts (``loraplex up`` renders
the workers' load states from it).

Children run in our process group and get ``PR_SET_PDEATHSIG=SIGTERM``; :meth:`Supervisor.stop`
sends SIGTERM to each, waits ``stop_timeout_s``, then SIGKILLs what is left, so Ctrl-C leaves
no process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import httpx

log = logging.getLogger("loraplex.embedded.supervise")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM this child when its parent dies (no orphans after a SIGKILL)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class ChildSpec:
    """One supervised process: argv, extra env, the URL that answers 200 once it is ready, and
    the base URL others reach it at (informational; a worker's differs from its ready_url)."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    ready_url: str | None = None
    url: str | None = None


@dataclass(frozen=True)
class ProbeAnswer:
    """One answer of a child's readiness URL: its status and its body if it was JSON."""

    status_code: int
    body: object = None


@dataclass
class Child:
    spec: ChildSpec
    process: asyncio.subprocess.Process | None = None
    probe: ProbeAnswer | None = None  # the latest answer of this process; None: none yet
    restarts: int = 0
    started_at: float = 0.0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    ever_ready: bool = False
    failed_starts: int = 0  # exits before it was ever ready
    gave_up: str | None = None  # why we stopped restarting it


class ChildFailed(RuntimeError):
    """A child exited again and again before it was ever ready (a bad setting, a busy port)."""


class Supervisor:
    """Runs children, restarts any that exit while we are running, stops them all on request.

    Restart backoff doubles from ``min_backoff_s`` up to ``max_backoff_s`` and resets once a
    child has stayed up for ``stable_after_s``: a crash loop does not spin the CPU, and a
    one-off crash comes back at once.
    """

    def __init__(
        self,
        specs: Sequence[ChildSpec],
        *,
        min_backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        stable_after_s: float = 30.0,
        stop_timeout_s: float = 20.0,
        max_failed_starts: int = 3,
    ) -> None:
        self.children = {spec.name: Child(spec) for spec in specs}
        self._min_backoff_s = min_backoff_s
        self._max_backoff_s = max_backoff_s
        self._stable_after_s = stable_after_s
        self._stop_timeout_s = stop_timeout_s
        self._max_failed_starts = max_failed_starts
        self._stopping = False
        self._changed = asyncio.Event()  # a child became ready or was given up
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for child in self.children.values():
            self._tasks.append(asyncio.create_task(self._keep_running(child), name=child.spec.name))

    async def _spawn(self, child: Child) -> asyncio.subprocess.Process:
        env = {**os.environ, **child.spec.env}
        child.ready.clear()
        child.probe = None
        child.started_at = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            *child.spec.argv, env=env, preexec_fn=_die_with_parent
        )
        child.process = process
        log.info("started %s (pid %d)", child.spec.name, process.pid)
        return process

    async def _keep_running(self, child: Child) -> None:
        backoff = self._min_backoff_s
        while not self._stopping:
            process = await self._spawn(child)
            probe = asyncio.create_task(self._probe_ready(child))
            code = await process.wait()
            probe.cancel()
            if self._stopping:
                return
            uptime = time.monotonic() - child.started_at
            if not child.ever_ready:
                child.failed_starts += 1
                if child.failed_starts >= self._max_failed_starts:
                    # It never came up: restarting forever would hide a bad setting.
                    child.gave_up = f"{child.spec.name} exited {child.failed_starts} times with "
                    child.gave_up += f"code {code} before it was ever ready; see its log above"
                    log.error("%s", child.gave_up)
                    self._changed.set()
                    return
            if uptime >= self._stable_after_s:
                backoff = self._min_backoff_s
            child.restarts += 1
            log.warning(
                "%s exited with code %s after %.1f s; restarting in %.1f s",
                child.spec.name,
                code,
                uptime,
                backoff,
            )
            await asyncio.sleep(backoff)  # restart backoff, not a race workaround
            backoff = min(backoff * 2, self._max_backoff_s)

    async def _probe_ready(self, child: Child) -> None:
        if child.spec.ready_url is None:
            child.ready.set()
            return
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                with contextlib.suppress(httpx.TransportError):
                    answer = await client.get(child.spec.ready_url)
                    child.probe = ProbeAnswer(answer.status_code, _json_or_none(answer))
                    alive = child.process is not None and child.process.returncode is None
                    if answer.status_code == 200 and alive:
                        child.ready.set()
                        child.ever_ready = True
                        self._changed.set()
                        log.info("%s is ready", child.spec.name)
                        return
                await asyncio.sleep(0.2)  # poll interval of the readiness probe

    async def wait_ready(self, timeout_s: float) -> None:
        """Wait until every child answered its readiness probe; TimeoutError after
        ``timeout_s``, ChildFailed as soon as one was given up."""
        async with asyncio.timeout(timeout_s):
            while True:
                self._changed.clear()  # before the checks: no change can slip in between
                failed = [c.gave_up for c in self.children.values() if c.gave_up]
                if failed:
                    raise ChildFailed("; ".join(failed))
                if all(c.ready.is_set() for c in self.children.values()):
                    return
                await self._changed.wait()

    async def stop(self) -> None:
        """SIGTERM every child, wait for them, SIGKILL the ones that outstay the timeout."""
        self._stopping = True
        live = [
            c.process
            for c in self.children.values()
            if c.process is not None and c.process.returncode is None
        ]
        for process in live:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        for process in live:
            try:
                await asyncio.wait_for(process.wait(), self._stop_timeout_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _json_or_none(answer: httpx.Response) -> object:
    try:
        return answer.json()
    except ValueError:  # not JSON (json.JSONDecodeError and UnicodeDecodeError are ValueErrors)
        return None
