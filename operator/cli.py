"""``loraplex operator [--namespace NS ... | --all-namespaces]``: run the BaseModelPool operator.

kopf logs in with the standard chain (in-cluster service account, else kubeconfig). Peering
keeps several operator replicas from all handling pools: with a name in
``LORAPLEX_OPERATOR_PEERING`` it is mandatory; set to the empty string (or ``--standalone``)
it is off; unset, kopf's auto mode peers through the ``default`` peering object when it exists
and runs standalone otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Sequence

from loraplex.shared.logs import configure_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loraplex operator",
        description="Run the kopf operator that turns BaseModelPools into autoscaled worker "
        "Deployments. Settings: LORAPLEX_OPERATOR_* environment variables (see docs/operator.md).",
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch pools in this namespace (repeatable; kopf globs allowed)",
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="watch pools in every namespace"
    )
    parser.add_argument(
        "--standalone", action="store_true", help="no peering, even if a peering name is set"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv or []))
    # Imported here so `loraplex --help` and the other components never import kopf.
    import kopf
    from kopf._core.intents.registries import SmartOperatorRegistry
    from loraplex.operator.handlers import register
    from loraplex.operator.settings import OperatorSettings

    settings = OperatorSettings()
    if not settings.router_namespace and len(args.namespace) == 1 and "*" not in args.namespace[0]:
        settings = settings.model_copy(update={"router_namespace": args.namespace[0]})
    configure_logging(settings.log_level)
    if not args.namespace and not args.all_namespaces:
        args.namespace = ["default"]
        logging.getLogger(__name__).info("no --namespace given: watching 'default'")
    # SmartOperatorRegistry is what kopf's default registry is (it carries kopf's login
    # handlers); a registry of our own keeps this process free of kopf's global one.
    registry = SmartOperatorRegistry()
    register(registry, settings)
    # A peering name makes peering mandatory; "" is standalone; None is kopf's auto mode.
    standalone = args.standalone or settings.peering == ""
    asyncio.run(
        kopf.operator(
            registry=registry,
            standalone=True if standalone else None,
            peering_name=None if standalone else settings.peering,
            clusterwide=args.all_namespaces,
            namespaces=args.namespace,
        )
    )
    return 0
