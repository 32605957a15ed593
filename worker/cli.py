"""``loraplex worker``: run one worker (one base model on one device) under uvicorn.

Flags override the ``LORAPLEX_WORKER_*`` environment (see :mod:`loraplex.worker.settings`).
One process, one event loop, two uvicorn servers: the router-only API on ``port`` and health
and metrics on ``metrics_port`` (:mod:`loraplex.worker.app`). On SIGTERM the API server stops
accepting connections and waits up to ``LORAPLEX_WORKER_SHUTDOWN_GRACE_SECONDS`` for requests
in progress to finish before the lifespan stops the device executor; the metrics server keeps
answering until then (liveness stays green through the drain) and stops last.

Fail loudly: a base that cannot be loaded or served (no such repo, corrupt files, a pipeline
this worker cannot serve) is logged at ERROR with the model id and the reason; ``/readyz``
says ``failed`` with it for :data:`FAILED_REPORT_S`, then the process exits with
:data:`EXIT_LOAD_FAILED` — Kubernetes restarts it with backoff (CrashLoopBackOff, the reason in
the pod log) and ``loraplex up`` reads the reason and stops, instead of a worker unready forever.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import uvicorn
from fastapi import FastAPI
from loraplex.worker.app import create_app, create_ops_app
from loraplex.worker.memory import pin_malloc_thresholds
from loraplex.worker.settings import WorkerSettings
from pydantic import ValidationError

from loraplex.shared.edge import uvicorn_edge_options
from loraplex.shared.logs import configure_logging

log = logging.getLogger("loraplex.worker")
EXIT_LOAD_FAILED = 3  # the exit status of a worker whose base cannot be loaded or served
# Seconds a worker whose load failed keeps answering /readyz "failed" (and /healthz 503) before
# it exits, so a supervisor polling readiness (loraplex up: every 0.2 s) reads the reason.
FAILED_REPORT_S = 2.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loraplex worker",
        description="Serve one diffusers base model and its LoRA adapters on this device.",
    )
    parser.add_argument("--base-model", help="Hub repo id of the base pipeline")
    parser.add_argument("--revision", help="branch, tag or commit of the base (default main)")
    parser.add_argument("--host", help="listen address (default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="API port, router only (default 8000)")
    parser.add_argument(
        "--metrics-port", type=int, help="port of /healthz, /readyz, /metrics (default 9100)"
    )
    parser.add_argument("--log-level", default="info", help="debug, info, warning (default info)")
    parser.add_argument(
        "--log-json",
        "--json-logs",
        dest="json_logs",
        action="store_true",
        help="one JSON object per log line",
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> WorkerSettings:
    overrides = {
        "base_model": args.base_model,
        "base_revision": args.revision,
        "host": args.host,
        "port": args.port,
        "metrics_port": args.metrics_port,
    }
    return WorkerSettings(**{k: v for k, v in overrides.items() if v is not None})


class _MetricsPortServer(uvicorn.Server):
    """The metrics-port server: it installs no signal handlers (the API server owns SIGTERM
    and SIGINT) and is stopped once the API server has drained."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _config(
    app: FastAPI,
    host: str,
    port: int,
    log_level: str,
    *,
    lifespan: str,
    grace_s: int,
    **options: Any,
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan=lifespan,
        timeout_graceful_shutdown=grace_s,
        log_config=None,  # keep configure_logging's handlers
        access_log=False,  # a line per /v1/state poll (every second per router) is noise
        **options,
    )


def serve(settings: WorkerSettings, log_level: str) -> int:
    """Serve both ports until SIGTERM/SIGINT (0), or until the base failed to load
    (:data:`EXIT_LOAD_FAILED`); see the module docstring."""
    failures: list[str] = []

    def load_failed(reason: str) -> None:
        failures.append(reason)
        log.error(
            "worker for %s cannot serve: %s; exiting with code %d in %.0f s",
            settings.base_model,
            reason,
            EXIT_LOAD_FAILED,
            FAILED_REPORT_S,
        )
        stop = partial(setattr, api, "should_exit", True)
        asyncio.get_running_loop().call_later(FAILED_REPORT_S, stop)

    api_app = create_app(settings, on_load_failed=load_failed)
    grace_s = int(settings.shutdown_grace_seconds)
    edge = uvicorn_edge_options(settings)  # the request-head timeout (loraplex.shared.edge)
    api_config = _config(
        api_app, settings.host, settings.port, log_level, lifespan="auto", grace_s=grace_s, **edge
    )
    api = uvicorn.Server(api_config)
    ops_app = create_ops_app(api_app)
    ops = _MetricsPortServer(
        _config(
            ops_app,
            settings.host,
            settings.metrics_port,
            log_level,
            lifespan="off",
            grace_s=1,
            **edge,
        )
    )

    async def both() -> None:
        metrics_port = asyncio.create_task(ops.serve(), name="worker-metrics-port")
        try:
            await api.serve()
        finally:
            ops.should_exit = True
            await metrics_port

    with asyncio.Runner(loop_factory=api_config.get_loop_factory()) as runner:
        runner.run(both())
    return EXIT_LOAD_FAILED if failures else 0


def quiet_progress_bars() -> None:
    """A server's log is read line by line: no tqdm bars from loading the pipeline."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        parser.error(
            "invalid worker settings (flags or LORAPLEX_WORKER_* variables): "
            + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        )
    problem = settings.exposure_problem()
    if problem is not None:
        parser.error(problem)
    configure_logging(args.log_level, json_lines=args.json_logs)
    quiet_progress_bars()
    pin_malloc_thresholds()
    return serve(settings, args.log_level.lower())
