"""``loraplex worker``: run one worker (one base model on one device) under uvicorn.

Flags override the ``LORAPLEX_WORKER_*`` environment (see :mod:`loraplex.worker.settings`).
On SIGTERM uvicorn stops accepting connections and waits up to
``LORAPLEX_WORKER_SHUTDOWN_GRACE_SECONDS`` for requests in progress to finish before the
lifespan stops the device executor.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import uvicorn
from loraplex.worker.app import create_app
from loraplex.worker.memory import pin_malloc_thresholds
from loraplex.worker.settings import WorkerSettings
from pydantic import ValidationError

from loraplex.shared.logs import configure_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loraplex worker",
        description="Serve one diffusers base model and its LoRA adapters on this device.",
    )
    parser.add_argument("--base-model", help="Hub repo id of the base pipeline")
    parser.add_argument("--revision", help="branch, tag or commit of the base (default main)")
    parser.add_argument("--host", help="listen address (default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="listen port (default 8000)")
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
    }
    return WorkerSettings(**{k: v for k, v in overrides.items() if v is not None})


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
    configure_logging(args.log_level, json_lines=args.json_logs)
    quiet_progress_bars()
    pin_malloc_thresholds()
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=args.log_level.lower(),
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
        log_config=None,  # keep configure_logging's handlers
        access_log=False,  # a line per /v1/state poll (every second per router) is noise
    )
    return 0
