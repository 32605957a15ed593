"""A small process supervisor for the embedded mode: start children, restart the ones that die.

Why hand-written rather than supervisord/honcho: we need three things those do not give as a
library — restart with backoff while the others keep serving, readiness by HTTP probe before we
print the URL, and children that die with us even on SIGKILL (``PR_SET_PDEATHSIG`` on Linux).

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

log = logging.getLogger("loraplex.supervise")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM this child when its parent dies (no orphans after a SIGKILL)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class ChildSpec:
    """One supervised process: argv, extra env, and the URL that answers 200 once it is ready."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    ready_url: str | None = None


@dataclass
class Child:
    spec: ChildSpec
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    ready: asyncio.Event = field(default_factory=asyncio.Event)


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
    ) -> None:
        self.children = {spec.name: Child(spec) for spec in specs}
        self._min_backoff_s = min_backoff_s
        self._max_backoff_s = max_backoff_s
        self._stable_after_s = stable_after_s
        self._stop_timeout_s = stop_timeout_s
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for child in self.children.values():
            self._tasks.append(asyncio.create_task(self._keep_running(child), name=child.spec.name))

    async def _spawn(self, child: Child) -> asyncio.subprocess.Process:
        env = {**os.environ, **child.spec.env}
        child.ready.clear()
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
                    if (await client.get(child.spec.ready_url)).status_code == 200:
                        child.ready.set()
                        log.info("%s is ready", child.spec.name)
                        return
                await asyncio.sleep(0.2)  # poll interval of the readiness probe

    async def wait_ready(self, timeout_s: float) -> None:
        """Wait until every child answered its readiness probe, or raise TimeoutError."""
        waits = [child.ready.wait() for child in self.children.values()]
        await asyncio.wait_for(asyncio.gather(*waits), timeout_s)

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
