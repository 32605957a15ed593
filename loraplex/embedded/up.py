"""``loraplex up``: the embedded mode — router and workers on one machine, no cluster.

The same router and worker code as on Kubernetes, wired together by a process supervisor:

* ``--models DIR`` (default): every base-model repo in ``DIR/<org>/<name>/`` (one with a
  ``model_index.json``) gets ``--replicas`` worker processes. Workers download the base and
  adapters through huggingface_hub from a Hub-compatible server over ``DIR`` that runs inside
  this process on loopback (:mod:`loraplex.localhub.server`), so the worker's real download,
  cache and revision-pinning path runs unchanged. The router resolves ids with its local card source
  (README.md cards in ``DIR``), so LoRA repos resolve to their base exactly as on the Hub.
  ``--base-model ID`` (repeatable) serves only those bases of ``DIR``.
  Gated and private repos of ``DIR`` (``DIR/.hub-access.json``, ``gated: true`` cards) are
  refused exactly as the Hub refuses them (401/403, private 401/404) by both the router and
  the local Hub. They are closed to every caller unless ``LORAPLEX_LOCAL_HUB_TOKEN`` is set
  (an environment variable, not a flag, so it stays out of ``ps``): that one token, sent as
  ``Authorization: Bearer <token>``, opens them; the workers hold it too (their ``HF_TOKEN``,
  as a cluster worker holds one) so gated bases load. The start-up log lists them.
* ``--hub --base-model ID [--base-model ID …]``: workers and router use the real Hub
  (``HF_ENDPOINT``/``HF_TOKEN`` from the environment).

On a CPU-only machine every worker gets ``cores / workers`` torch threads
(``OMP_NUM_THREADS``, unless set), so N workers do not thrash each other's caches.

While the pools start, each pool's state is shown on stderr, one line per pool
(:mod:`loraplex.embedded.console`, from the workers' ``/readyz``: downloading with bytes and
rate, loading, warming up, ready, failed with the reason). Once every pool serves (each has a
ready replica; any other is ready or being restarted) the banner (stdout) gives the playground
URL and copy-paste requests.

Worker processes that die are restarted with backoff (:mod:`loraplex.embedded.supervise`), also
when killed while still warming up; meanwhile the router holds and retries on the other
replicas. One bad replica never takes the others down: ``loraplex up`` gives up only on a base
none of whose replicas can ever be ready — each reported ``failed`` on its ``/readyz`` (the
worker cannot load the base, and exits non-zero) or exited 3 times before ever being ready —
and then exits 1, naming the base and the reason (within seconds of the workers' failure).

SIGINT/SIGTERM stop every child; children also die with us on
SIGKILL (``PR_SET_PDEATHSIG``). Worker settings not given as flags come from the usual
``LORAPLEX_WORKER_*`` variables, which the children inherit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from loraplex.embedded.banner import banner_example, usage_lines, worker_metrics_urls
from loraplex.embedded.console import ConsoleView, pool_view, readiness_of
from loraplex.embedded.models_dir import LocalRepos, scan_models_dir
from loraplex.embedded.ports import check_port_free, free_port, url_host
from loraplex.embedded.supervise import Child, ChildFailed, ChildSpec, ProbeAnswer, Supervisor
from loraplex.localhub.server import HubState, create_hub_app
from loraplex.localhub.store import RepoStore
from loraplex.shared.contract import LoadState, Readiness
from loraplex.shared.edge_policy import embedded_allowed_hosts
from loraplex.shared.errors import BadRequest
from loraplex.shared.ids import validate_model_id
from loraplex.shared.logs import configure_logging

log = logging.getLogger("loraplex.up")

LOCAL_HUB_CACHE = Path.home() / ".cache" / "loraplex" / "local-hub"
LOCAL_HUB_TOKEN_ENV = "LORAPLEX_LOCAL_HUB_TOKEN"  # opens DIR's gated/private repos (see above)
READY_TIMEOUT_S = 600.0  # first start on a real Hub downloads gigabytes; the demo takes seconds
PROGRESS_INTERVAL_S = 0.5  # how often the pools' lines are refreshed while they start


def worker_specs(
    bases: Sequence[str], replicas: int, env: dict[str, str], extra_args: Sequence[str] = ()
) -> dict[str, list[ChildSpec]]:
    """``replicas`` worker processes per base on free loopback ports, by base model: each has
    its API port (``url``, for the router) and its health/metrics port (``ready_url``)."""
    threads = str(max(1, (os.cpu_count() or 1) // (len(bases) * replicas)))
    specs: dict[str, list[ChildSpec]] = {}
    for base in bases:
        for index in range(replicas):
            port, metrics_port = free_port("127.0.0.1"), free_port("127.0.0.1")
            argv = [sys.executable, "-m", "loraplex", "worker", "--base-model", base]
            argv += ["--host", "127.0.0.1", "--port", str(port)]
            argv += ["--metrics-port", str(metrics_port), *extra_args]
            spec = ChildSpec(
                name=f"worker {base} #{index}",
                argv=argv,
                env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads), **env},
                ready_url=f"http://127.0.0.1:{metrics_port}/readyz",
                url=f"http://127.0.0.1:{port}",
                group=base,
            )
            specs.setdefault(base, []).append(spec)
    return specs


def router_spec(
    args: argparse.Namespace, pools: dict[str, list[str]], env: dict[str, str]
) -> ChildSpec:
    argv = [
        sys.executable,
        "-m",
        "loraplex",
        "router",
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--static-pools",
        json.dumps(pools),
    ]
    if not args.hub:
        argv += ["--models-dir", str(args.models)]
    ready_url = f"http://{url_host(args.host)}:{args.port}/readyz"
    return ChildSpec(name="router", argv=argv, env=env, ready_url=ready_url)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loraplex up",
        description="Run a router and workers on this machine (no Kubernetes).",
    )
    parser.add_argument("--models", type=Path, help="folder of Hub-layout repos DIR/<org>/<name>/")
    parser.add_argument(
        "--hub",
        action="store_true",
        help="resolve and download through the real Hub instead of DIR",
    )
    parser.add_argument(
        "--base-model",
        action="append",
        default=[],
        help="with --hub: a base model to serve (repeatable)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="router listen address")
    parser.add_argument("--port", type=int, default=8080, help="router port (default 8080)")
    parser.add_argument("--replicas", type=int, default=1, help="workers per base (default 1)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="HF cache of the workers (default with --models: ~/.cache/loraplex/local-hub, "
        "kept across runs; with --hub: huggingface_hub's own cache)",
    )
    parser.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper
    )
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.replicas < 1:
        parser.error("--replicas must be at least 1")
    if args.hub:
        if not args.base_model:
            parser.error("--hub needs at least one --base-model ID")
        for base in args.base_model:
            try:
                validate_model_id(base)
            except BadRequest as exc:
                parser.error(f"--base-model: {exc.message}")
    elif args.models is None or not args.models.is_dir():
        parser.error(
            f"--models must be a folder of Hub-layout repos (got {args.models}); "
            "build demo models with: loraplex demo-models DIR"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    configure_logging(args.log_level, json_lines=args.log_json)
    return asyncio.run(run(args))


async def run(args: argparse.Namespace) -> int:
    busy = check_port_free(args.host, args.port)
    if busy is not None:
        log.error("%s", busy)
        return 2
    env = child_env(args)
    hub_server: uvicorn.Server | None = None
    if args.hub:
        bases = tuple(args.base_model)
        example: tuple[str, str | None] = (bases[0], None)
    else:
        repos = scan_models_dir(args.models)
        bases = tuple(args.base_model) or repos.bases
        unknown = sorted(set(bases) - set(repos.bases))
        if not bases or unknown:
            log.error(
                "no base model%s in %s (a base is a folder with model_index.json); bases there: %s",
                f" {', '.join(unknown)}" if unknown else "",
                args.models,
                ", ".join(repos.bases) or "none",
            )
            return 2
        example = banner_example(repos.loras, bases)
        token = local_hub_token(args.models, repos, env)
        hub_server, env["HF_ENDPOINT"] = await start_local_hub(args.models, token)
    try:
        return await serve(args, bases, example, env)
    finally:
        if hub_server is not None:
            hub_server.should_exit = True


def child_env(args: argparse.Namespace) -> dict[str, str]:
    """Environment every child gets on top of ours."""
    env = {
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "LORAPLEX_ROUTER_LOG_LEVEL": args.log_level,
        # Never "*" on a local server (DNS rebinding); the user's own list wins.
        "LORAPLEX_ROUTER_ALLOWED_HOSTS": os.environ.get("LORAPLEX_ROUTER_ALLOWED_HOSTS")
        or ",".join(embedded_allowed_hosts(args.host)),
    }
    # A cache of its own for the local Hub: its commits are content hashes of DIR, which must
    # not mix with real Hub repos of the same name in the user's HF cache.
    cache_dir = args.cache_dir or (None if args.hub else LOCAL_HUB_CACHE)
    if cache_dir is not None:
        env["HF_HUB_CACHE"] = str(cache_dir)
    if args.log_json:
        env["LORAPLEX_ROUTER_LOG_JSON"] = "true"
    # The worker secret, new for every run: only our router may call our workers, even on
    # loopback where any local user could connect. An environment variable, not a flag, so
    # it stays out of `ps`.
    secret = secrets.token_urlsafe(32)
    env["LORAPLEX_WORKER_SECRET"] = env["LORAPLEX_ROUTER_WORKER_SECRET"] = secret
    return env


def local_hub_token(root: Path, repos: LocalRepos, env: dict[str, str]) -> str | None:
    """The token that opens ``root``'s gated/private repos (``LORAPLEX_LOCAL_HUB_TOKEN``), or
    None: they stay closed. Put into the children's ``env``: the router checks callers' tokens
    against it, the workers hold it as ``HF_TOKEN``. Logs which repos are closed (never the
    token)."""
    token = os.environ.get(LOCAL_HUB_TOKEN_ENV) or None
    if token is not None:
        env["LORAPLEX_ROUTER_MODELS_DIR_TOKEN"] = token
        env["HF_TOKEN"] = token  # the workers' own token talks only to the loopback local Hub
    if repos.closed:
        how = (
            "callers open them with the token of " + LOCAL_HUB_TOKEN_ENV
            if token
            else f"closed to every caller; set {LOCAL_HUB_TOKEN_ENV} to open them with it"
        )
        log.info("gated/private repos in %s (%s): %s", root, how, ", ".join(repos.closed))
    return token


async def start_local_hub(root: Path, token: str | None = None) -> tuple[uvicorn.Server, str]:
    """Serve ``root`` as a Hub on loopback inside this process; return the server and its URL.

    ``token`` is the one token that opens gated and private repos; None: nothing opens them."""
    port = free_port("127.0.0.1")
    store = RepoStore(root)
    app = create_hub_app(store, HubState.for_store(store, token=token))
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="off"
        )
    )
    asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)  # uvicorn exposes no awaitable for "bound"
    return server, f"http://127.0.0.1:{port}"


async def serve(
    args: argparse.Namespace,
    bases: Sequence[str],
    example: tuple[str, str | None],
    env: dict[str, str],
) -> int:
    """Supervise the workers of ``bases`` and the router until stopped; ``example``: the base
    and LoRA (of that base) the banner's copy-paste requests use."""
    worker_args = ["--log-level", args.log_level.lower()]
    worker_args += ["--log-json"] if args.log_json else []
    workers = worker_specs(bases, args.replicas, env, worker_args)
    pools = {base: [str(spec.url) for spec in specs] for base, specs in workers.items()}
    all_workers = [spec for specs in workers.values() for spec in specs]
    supervisor = Supervisor([*all_workers, router_spec(args, pools, env)], failure_of=load_failure)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await supervisor.start()
    ready = asyncio.create_task(until_ready(supervisor, workers, console_view(args)))
    stopped = asyncio.create_task(stop.wait())
    given_up = asyncio.create_task(supervisor.wait_given_up())  # also after the banner
    try:
        await asyncio.wait({ready, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            return 0  # stopped while starting
        failure = ready.result()
        if failure is not None:
            log.error("%s; stopping", failure)
            return 1
        url = f"http://{url_host(args.host)}:{args.port}"
        for line in usage_lines(url, *example, worker_metrics_urls(workers)):
            print(line, flush=True)
        await asyncio.wait({stopped, given_up}, return_when=asyncio.FIRST_COMPLETED)
        if given_up.done():
            log.error("%s; stopping", given_up.result())
            return 1
        return 0
    finally:
        for task in (ready, stopped, given_up):
            task.cancel()
        await asyncio.gather(ready, stopped, given_up, return_exceptions=True)
        log.info("stopping %d processes", len(supervisor.children))
        await supervisor.stop()


def console_view(args: argparse.Namespace) -> ConsoleView:
    """The pools' lines on stderr: in place on a terminal; as log records with ``--log-json``
    (a JSON log stays one object per line)."""
    if args.log_json:
        return ConsoleView(_log_lines, tty=False)
    return ConsoleView(_to_stderr, tty=sys.stderr.isatty())


def _to_stderr(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


def _log_lines(text: str) -> None:
    for line in text.splitlines():
        log.info("%s", line)


def load_failure(answer: ProbeAnswer) -> str | None:
    """A worker's ``/readyz`` saying its load failed for good: why (else None)."""
    readiness = readiness_of(answer.status_code, answer.body)
    if readiness.state is not LoadState.FAILED:
        return None
    return readiness.reason or "its /readyz says failed, with no reason"


def child_readiness(child: Child) -> Readiness:
    """What ``child`` last said on its ``/readyz`` (given up: failed, with why)."""
    if child.gave_up:
        return Readiness(state=LoadState.FAILED, reason=child.gave_up)
    probe = child.probe
    if probe is None:
        return Readiness(state=LoadState.STARTING)
    return readiness_of(probe.status_code, probe.body)


async def show_progress(
    supervisor: Supervisor, workers: dict[str, list[ChildSpec]], view: ConsoleView
) -> str | None:
    """Render every pool until the supervisor serves (None) or gave up on a base (why)."""
    while True:
        pools = {
            base: pool_view([child_readiness(supervisor.children[s.name]) for s in specs])
            for base, specs in workers.items()
        }
        view.update(pools)
        if supervisor.given_up.is_set():
            return await supervisor.wait_given_up()
        if supervisor.serving():
            return None
        await asyncio.sleep(PROGRESS_INTERVAL_S)  # the console's refresh, not a race workaround


async def until_ready(
    supervisor: Supervisor, workers: dict[str, list[ChildSpec]], view: ConsoleView
) -> str | None:
    """Show the pools until the supervisor serves (router too): None; else why not (a base or
    the router was given up, :data:`READY_TIMEOUT_S` passed)."""
    watch = asyncio.create_task(show_progress(supervisor, workers, view))
    waiting = asyncio.create_task(supervisor.wait_ready(READY_TIMEOUT_S))
    try:
        done, _ = await asyncio.wait({watch, waiting}, return_when=asyncio.FIRST_COMPLETED)
        if watch in done and watch.result() is not None:
            return watch.result()
        try:
            await waiting
        except (ChildFailed, TimeoutError) as exc:
            return str(exc) or f"not ready after {READY_TIMEOUT_S:.0f} s"
        return await watch  # the pools' last lines (ready) come before the banner
    finally:
        for task in (watch, waiting):
            task.cancel()
        await asyncio.gather(watch, waiting, return_exceptions=True)
