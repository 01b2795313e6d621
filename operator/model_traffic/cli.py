"""Command line: ``model-traffic-operator run`` starts the operator."""

from __future__ import annotations

import argparse
import logging
import sys

from model_traffic.settings import Settings


def run(args: argparse.Namespace) -> int:
    import kopf

    from model_traffic import app  # noqa: F401  (registers the handlers)
    from model_traffic.kube import Kube
    from model_traffic.leader import LeaderElector

    settings = Settings.from_env()
    namespaces: list[str] = list(args.namespace or settings.namespaces)
    kopf.configure(
        verbose=args.verbose,
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    if settings.leader_elect:
        elector = LeaderElector(Kube().api_client, settings.leader_election_namespace)
        elector.acquire()
        elector.keep_renewing()
    kopf.run(
        standalone=True,  # leadership is decided by the Lease above, not by kopf peering
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=f"http://0.0.0.0:{args.liveness_port or settings.liveness_port}/healthz",
    )
    return 0


def crds(args: argparse.Namespace) -> int:
    from model_traffic import crdgen

    return crdgen.main(["--check"] if args.check else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="model-traffic-operator", description="model-traffic-operator")
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="run the operator against $KUBECONFIG or in-cluster")
    run_parser.add_argument("-n", "--namespace", action="append", help="watch only this namespace (repeatable)")
    run_parser.add_argument("--liveness-port", type=int, default=None)
    run_parser.add_argument("--log-format", choices=["plain", "json"], default="plain")
    run_parser.add_argument("-v", "--verbose", action="store_true")
    run_parser.set_defaults(func=run)
    crds_parser = sub.add_parser("crds", help="write crds/ from the API models (or --check them)")
    crds_parser.add_argument("--check", action="store_true")
    crds_parser.set_defaults(func=crds)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
