"""``loraplex router``: run the HTTP router with uvicorn.

Flags override the matching ``LORAPLEX_ROUTER_*`` environment variables (see
:class:`loraplex.router.settings.RouterSettings`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import uvicorn
from loraplex.router.app import create_app
from loraplex.router.settings import RouterSettings
from pydantic import ValidationError

from loraplex.shared.edge import uvicorn_edge_options
from loraplex.shared.logs import configure_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loraplex router",
        description="Route text-to-image requests for LoRAs and bases to warm worker pools.",
    )
    parser.add_argument("--host", help="listen address (env LORAPLEX_ROUTER_HOST)")
    parser.add_argument("--port", type=int, help="listen port (env LORAPLEX_ROUTER_PORT)")
    parser.add_argument(
        "--static-pools",
        metavar="JSON",
        help='base model → worker URLs, e.g. \'{"org/base": ["http://127.0.0.1:8001"]}\'',
    )
    parser.add_argument(
        "--models-dir",
        metavar="DIR",
        help="resolve model ids from README.md cards in DIR/<org>/<name>/ instead of the Hub",
    )
    parser.add_argument(
        "--pool-source", choices=["static", "kubernetes"], help="where pools come from"
    )
    parser.add_argument("--hub-endpoint", help="Hub-compatible endpoint URL")
    return parser


def settings_from_args(args: argparse.Namespace) -> RouterSettings:
    overrides: dict[str, object] = {}
    for name in ("host", "port", "models_dir", "pool_source", "hub_endpoint"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    if args.static_pools is not None:
        overrides["static_pools"] = json.loads(args.static_pools)
    return RouterSettings(**overrides)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except json.JSONDecodeError as exc:
        parser.error(f"--static-pools is not valid JSON: {exc}")
    except ValidationError as exc:
        parser.error(f"invalid router settings: {exc}")
    configure_logging(settings.log_level, json_lines=settings.log_json)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        **uvicorn_edge_options(settings),  # the request-head timeout (loraplex.shared.edge)
    )
    return 0
