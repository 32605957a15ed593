"""A small process supervisor for the embedded mode: start children, restart the ones that die.

Why hand-written rather than supervisord/honcho: we need three things those do not give as a
library — restart with backoff while the others keep serving, readiness by HTTP probe before we
print the URL, and children that die with us even on SIGKILL (``PR_SET_PDEATHSIG`` on Linux).

The readiness probe keeps each child's latest answer (:attr:`Child.probe`: status and JSON
body) so the caller can show what a child reports while it starts (``loraplex up`` renders
the workers' load states from it).

Giving up: children may form a *group* (``loraplex up``: the replicas of one base model). One
bad replica never takes the others down: a child that dies — killed from outside, even while
still warming up — is restarted with backoff while its siblings serve. The supervisor gives up
on a group only when none of its children can ever be ready: none ever was, and each one either
said it failed for good (``failure_of`` reads that from its probe answer: a worker's ``/readyz``
``failed`` state) or exited ``max_failed_starts`` times before it was ever ready
(:func:`give_up_reason`, pure). Then every child of the group is stopped, :attr:`Child.gave_up`
says why (the group — the model id — and the reason), and :meth:`Supervisor.wait_ready` and
:meth:`Supervisor.wait_given_up` raise/return it.

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
from collections.abc import Callable, Mapping, Sequence
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
    group: str | None = None  # children that stand in for each other (a base's replicas)


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
    last_exit: str | None = None  # how its last process ended ("exited with code 3", …)
    failure: str | None = None  # it said it failed for good (its probe), until it is ready
    gave_up: str | None = None  # why we stopped restarting it

    @property
    def group(self) -> str:
        return self.spec.group or self.spec.name


def exit_text(code: int) -> str:
    """``exited with code 3`` / ``was killed by SIGKILL`` for a process's return code."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def give_up_reason(group: str, children: Sequence[Child], max_failed_starts: int) -> str | None:
    """Why no child of ``group`` can ever be ready, or None while one may still be.

    One that was ever ready can be again: never give up then (a crash-looping replica is
    restarted with backoff while its siblings serve). Otherwise every child must be hopeless:
    it said it failed (its reason wins), or it exited ``max_failed_starts`` times before ever
    being ready."""
    if not children or any(c.ever_ready for c in children):
        return None
    if not all(c.failure or c.failed_starts >= max_failed_starts for c in children):
        return None
    reported = next((c.failure for c in children if c.failure), None)
    if reported is not None:
        return f"{group} cannot be served: {reported}"
    last = children[-1]
    if len(children) == 1:
        prefix = f"{group}: " if last.spec.group else ""
        return (
            f"{prefix}{last.spec.name} exited {max_failed_starts} times before it was ever "
            f"ready (the last time it {last.last_exit}); see its log above"
        )
    return (
        f"{group}: each of its {len(children)} replicas exited {max_failed_starts} times "
        f"before it was ever ready (the last: {last.spec.name} {last.last_exit}); see their "
        "logs above"
    )


class ChildFailed(RuntimeError):
    """A child exited again and again before it was ever ready (a bad setting, a busy port)."""


class Supervisor:
    """Runs children, restarts any that exit while we are running, stops them all on request.

    Restart backoff doubles from ``min_backoff_s`` up to ``max_backoff_s`` and resets once a
    child has stayed up for ``stable_after_s``: a crash loop does not spin the CPU, and a
    one-off crash comes back at once. Children of one group stand in for each other; see the
    module docstring for when a group is given up. ``failure_of`` reads from a probe answer
    that a child failed for good (and why), or None.
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
        failure_of: Callable[[ProbeAnswer], str | None] | None = None,
    ) -> None:
        self.children = {spec.name: Child(spec) for spec in specs}
        self._failure_of = failure_of
        self._min_backoff_s = min_backoff_s
        self._max_backoff_s = max_backoff_s
        self._stable_after_s = stable_after_s
        self._stop_timeout_s = stop_timeout_s
        self._max_failed_starts = max_failed_starts
        self._stopping = False
        self._changed = asyncio.Event()  # a child became ready or was given up
        self.given_up = asyncio.Event()  # some group was given up
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
        while not self._stopping and child.gave_up is None:
            process = await self._spawn(child)
            probe = asyncio.create_task(self._probe_ready(child))
            code = await process.wait()
            probe.cancel()
            if self._stopping or child.gave_up is not None:
                return
            uptime = time.monotonic() - child.started_at
            child.last_exit = exit_text(code)
            if not child.ever_ready:
                child.failed_starts += 1
                # None of its group came up: restarting forever would hide a bad setting.
                if self._check_group(child):
                    return
            if uptime >= self._stable_after_s:
                backoff = self._min_backoff_s
            child.restarts += 1
            self._changed.set()
            log.warning(
                "%s %s after %.1f s; restarting in %.1f s",
                child.spec.name,
                child.last_exit,
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
                    failure = self._failure_of(child.probe) if self._failure_of else None
                    if failure is not None and child.failure != failure:
                        child.failure = failure
                        log.error("%s failed: %s", child.spec.name, failure)
                        self._check_group(child)
                    if answer.status_code == 200 and alive:
                        child.ready.set()
                        child.ever_ready = True
                        child.failure = None
                        self._changed.set()
                        log.info("%s is ready", child.spec.name)
                        return
                await asyncio.sleep(0.2)  # poll interval of the readiness probe

    def _check_group(self, child: Child) -> bool:
        """Give up on ``child``'s group if none of it can ever be ready (stopping its other
        children); True when given up."""
        group = [c for c in self.children.values() if c.group == child.group]
        reason = give_up_reason(child.group, group, self._max_failed_starts)
        if reason is None:
            return False
        log.error("giving up on %s", reason)
        for member in group:
            member.gave_up = reason
            if member.process is not None and member.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    member.process.terminate()
        self.given_up.set()
        self._changed.set()
        return True

    def serving(self) -> bool:
        """Every group has a ready child, and every child is ready or has died at least once
        (it is being restarted with backoff: waiting for it would let one bad replica hold
        the others back)."""
        groups: dict[str, list[Child]] = {}
        for child in self.children.values():
            groups.setdefault(child.group, []).append(child)
        if not all(any(c.ready.is_set() for c in group) for group in groups.values()):
            return False
        return all(c.ready.is_set() or c.restarts or c.failure for c in self.children.values())

    async def wait_ready(self, timeout_s: float) -> None:
        """Wait until :meth:`serving`; TimeoutError after ``timeout_s``, ChildFailed as soon as
        a group was given up."""
        async with asyncio.timeout(timeout_s):
            while True:
                self._changed.clear()  # before the checks: no change can slip in between
                failed = dict.fromkeys(c.gave_up for c in self.children.values() if c.gave_up)
                if failed:
                    raise ChildFailed("; ".join(failed))
                if self.serving():
                    return
                await self._changed.wait()

    async def wait_given_up(self) -> str:
        """Wait until a group is given up; return why."""
        await self.given_up.wait()
        return "; ".join(dict.fromkeys(c.gave_up for c in self.children.values() if c.gave_up))

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
