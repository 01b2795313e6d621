"""Command line: ``model-traffic-operator run`` starts the operator; ``model-traffic promote NAME`` and friends
drive a TrafficConfig: promote, abort, retry, pause and resume are requests in its status, set-weight(s) edit its
spec (see :mod:`model_traffic.commands.ctl`)."""

from __future__ import annotations

import argparse
import contextlib
import http.server
import logging
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

from model_traffic import malloc
from model_traffic.settings import Settings


@contextlib.contextmanager
def standby_health_endpoint(port: int) -> Iterator[None]:
    """``GET /healthz`` while the block runs: a replica waiting for the Lease is alive and ready (200) as long as
    it reaches the API server (see model_traffic.health), 503 otherwise."""
    from model_traffic import health

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path.split("?")[0] == "/healthz"
            tracker = health.current()
            verdict = tracker.health() if tracker else health.Health(True, "")
            body = (f"standby: waiting for leadership; {verdict.message}\n" if found else "not found\n").encode()
            self.send_response(404 if not found else 200 if verdict.healthy else 503)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), Health)
    thread = threading.Thread(target=server.serve_forever, name="standby-health", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def configure_operator_logging(log_format: str, *, verbose: bool) -> None:
    """One handler on the root logger, kopf's, in the format asked for.

    main() has already given the root logger basicConfig's plain handler (for the other subcommands); kopf.configure
    adds its own beside any handler it did not make, so without this every line came out twice, once plain and
    once as JSON, which breaks a log pipeline that parses JSON lines.
    """
    import kopf

    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    # "plain" is kopf's FULL text format: a time, the logger and the level before each message (its PLAIN has none).
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON if log_format == "json" else kopf.LogFormat.FULL)
    if not verbose:
        # kopf logs every handler of every watch event at INFO: thousands of lines a second at scale, for nothing
        # the operator's own log (a reconcile's outcome, a readiness change) does not say better.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)


def run(args: argparse.Namespace) -> int:
    malloc.limit_arenas()  # before any thread starts
    malloc.trim_periodically()
    import kopf
    from prometheus_client import start_http_server

    from model_traffic import app, health, metrics  # app registers the handlers
    from model_traffic.kube import Kube
    from model_traffic.leader import LeaderElector

    settings = Settings.from_env()
    namespaces: list[str] = list(args.namespace or settings.namespaces)
    app.STATE.namespaces = namespaces  # the operator's own watches follow the same namespaces
    configure_operator_logging(args.log_format, verbose=args.verbose)
    liveness_port = args.liveness_port if args.liveness_port is not None else settings.liveness_port
    if settings.metrics_port:
        start_http_server(settings.metrics_port)  # a standby's metrics too (model_traffic_* stay empty there)
    # The probes (the standby's endpoint below, then kopf's with app.api_server_reachable) fail once the API
    # server has not answered for longer than the bound.
    health.install(health.ApiServerReachability(Kube().api_client, settings.api_server_unreachable_seconds))
    if settings.leader_elect:
        elector = LeaderElector(Kube().api_client, settings.leader_election_namespace)
        # A standby is healthy while it waits: it answers the probes until kopf's own endpoint takes the port.
        with standby_health_endpoint(liveness_port):
            elector.acquire()
        elector.keep_renewing()
    # From here this replica runs the handlers; a leader that loses the Lease exits, so it never goes back to 0.
    metrics.LEADER.set(1)
    kopf.run(
        standalone=True,  # leadership is decided by the Lease above, not by kopf peering
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=f"http://0.0.0.0:{liveness_port}/healthz",
    )
    # kopf has stopped cleanly: app.stop let the reconciles in progress finish and their Events be posted. The
    # watch threads are still blocked in TLS reads (daemons, ended by the exit), and interpreter finalization with
    # them alive can abort the process (SIGABRT, seen once in the install test), turning a clean stop into a
    # crash in the pod's status. Nothing is left to run: flush the log and leave without finalization.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _current_namespace() -> str:
    import kubernetes

    try:
        _, context = kubernetes.config.list_kube_config_contexts()  # type: ignore[no-untyped-call]
        return str((context or {}).get("context", {}).get("namespace") or "default")
    except Exception:
        return "default"


def rollout(args: argparse.Namespace) -> int:
    """Ask a rollout for an action (status.requests), or edit a TrafficConfig's spec the way a person would."""
    from kubernetes.client.exceptions import ApiException

    from model_traffic import kube
    from model_traffic.commands import ctl

    namespace = args.namespace or _current_namespace()
    kube_ = kube.Kube()
    if args.command in ctl.REQUESTS and getattr(args, "version", None) is None:
        try:
            token = ctl.ask(kube_, namespace, args.name, args.command)
        except ApiException as error:
            what = "not found" if error.status == 404 else f"HTTP {error.status} {error.reason}"
            print(f"error: trafficconfig {namespace}/{args.name}: {what}", file=sys.stderr)
            return 1
        print(f"trafficconfig.modeltraffic.io/{args.name} {args.command} requested "
              f"(status.requests.{args.command}={token}): {ctl.REQUESTS[args.command]}; "
              "status.handledRequests and the Events say when it was acted on")
        return 0
    # The edit is guarded by the resourceVersion it was computed from. The operator writes the status often
    # (which moves the resourceVersion too): on a conflict, read again and recompute.
    for attempt in range(1, EDIT_ATTEMPTS + 1):
        obj = kube_.get(kube.TRAFFIC_CONFIG, namespace, args.name)
        if obj is None:
            print(f"error: trafficconfig {namespace}/{args.name} not found", file=sys.stderr)
            return 1
        try:
            change, summary = _rollout_edit(args, obj.get("spec") or {})
        except ctl.EditError as error:
            print(f"error: trafficconfig {namespace}/{args.name}: {error}", file=sys.stderr)
            return 1
        try:
            ctl.edit(kube_, namespace, args.name,
                     {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]}, "spec": change})
        except ApiException as error:
            if error.status == 409 and attempt < EDIT_ATTEMPTS:
                continue
            print(f"error: trafficconfig {namespace}/{args.name}: HTTP {error.status} {error.reason}",
                  file=sys.stderr)
            return 1
        print(f"trafficconfig.modeltraffic.io/{args.name} {args.command}: {summary}")
        return 0
    return 1


EDIT_ATTEMPTS = 5


def _rollout_edit(args: argparse.Namespace, spec: dict[str, Any]) -> tuple[dict[str, Any], str]:
    from model_traffic.commands import ctl

    if args.command == "promote":  # promote --version: a Weighted variant takes all traffic (desired state)
        if spec.get("strategy") != "Weighted":
            raise ctl.EditError(f"--version applies to the Weighted strategy; to promote the candidate of this "
                                f"{spec.get('strategy') or 'Canary'} rollout: model-traffic promote {args.name}")
        return ctl.promote(spec, args.version)
    if args.command == "set-weight":
        return ctl.set_weight(spec, args.weight)
    return ctl.set_weights(spec, ctl.parse_weights(args.weights))


def get(args: argparse.Namespace) -> int:
    """``model-traffic get NAME [--watch]``: one screen of a rollout (see :mod:`model_traffic.commands.rolloutview`)."""
    import datetime
    import time

    from kubernetes.client.exceptions import ApiException

    from model_traffic import kube
    from model_traffic.commands import rolloutview

    namespace = args.namespace or _current_namespace()
    kube_ = kube.Kube()
    while True:
        try:
            obj, events = rolloutview.fetch(kube_, namespace, args.name)
        except ApiException as error:
            print(f"error: trafficconfig {namespace}/{args.name}: HTTP {error.status} {error.reason}", file=sys.stderr)
            return 1
        if obj is None:
            print(f"error: trafficconfig {namespace}/{args.name} not found", file=sys.stderr)
            return 1
        view = rolloutview.render(obj, events, datetime.datetime.now(datetime.UTC))
        if not args.watch:
            sys.stdout.write(view)
            return 0
        sys.stdout.write("\x1b[H\x1b[2J" + view)  # home and clear, as `watch` does
        sys.stdout.flush()
        try:
            time.sleep(args.interval)
        except KeyboardInterrupt:
            return 0


def keys(args: argparse.Namespace) -> int:
    """``model-traffic keys``: the API keys of tenants (see :mod:`model_traffic.commands.keys`)."""
    from model_traffic.commands import keys as keys_

    return keys_.run(args.keys_command, args.namespace or _current_namespace(), args.tenant, secret_name=args.secret,
                     client_id=getattr(args, "client_id", None), every=getattr(args, "all", False))


def usage(args: argparse.Namespace) -> int:
    """``model-traffic usage``: tokens, requests, errors, latency and cost by model, tenant or day (see
    :mod:`model_traffic.commands.usage`)."""
    from datetime import UTC, datetime
    from pathlib import Path

    from model_traffic import kube
    from model_traffic.commands import usage as usage_
    from model_traffic.kinds.virtualmodel.reconcile import model_name_of

    address = args.prometheus or Settings.from_env().prometheus_address
    try:
        if not address:
            raise usage_.UsageError("no Prometheus: pass --prometheus URL or set MTO_PROMETHEUS_ADDRESS")
        seconds = usage_.window_seconds(args.since)
        until = datetime.fromisoformat(args.until.replace("Z", "+00:00")) if args.until else datetime.now(UTC)
        until = until if until.tzinfo else until.replace(tzinfo=UTC)  # a time without a zone is UTC
        prices = usage_.load_prices(Path(args.prices).read_text()) if args.prices else None
        models = None
        if args.namespace:  # the model names the VirtualModels of that namespace serve
            models = sorted(model_name_of(vm["metadata"]["name"], vm.get("spec") or {})
                            for vm in kube.Kube().list_objects(kube.VIRTUAL_MODEL, args.namespace))
        rows = usage_.collect(args.by, seconds, until, usage_.PrometheusVectors(address), prices, models)
    except (usage_.UsageError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    sys.stdout.write(usage_.table(rows, args.by, prices is not None))
    return 0


def _add_keys_parser(sub: Any) -> None:
    from model_traffic.kinds.virtualmodel.spec import DEFAULT_API_KEY_SECRET

    keys_parser = sub.add_parser("keys", help="API keys of tenants, in the Secret spec.auth.apiKey reads")
    keys_sub = keys_parser.add_subparsers(dest="keys_command", required=True)
    for command, help_text in (("create", "a tenant's first key, printed once"),
                               ("list", "client ids and creation times (never a key)"),
                               ("rotate", "a second key for a tenant; the old one stays valid until revoked"),
                               ("revoke", "remove a tenant's key (--client-id to pick one of two, or --all)")):
        parser = keys_sub.add_parser(command, help=help_text)
        parser.add_argument("tenant", nargs="?" if command == "list" else None, help="the tenant")
        parser.add_argument("-n", "--namespace", help="default: the kubeconfig context's namespace")
        parser.add_argument("--secret", default=DEFAULT_API_KEY_SECRET, help="the Secret (default: %(default)s)")
        if command == "revoke":
            parser.add_argument("--client-id", help="the key to revoke, e.g. the old one after a rotation")
            parser.add_argument("--all", action="store_true", help="revoke every key of the tenant")
        parser.set_defaults(func=keys)


def main(argv: list[str] | None = None) -> int:
    invoked = os.path.basename(sys.argv[0])
    prog = invoked if invoked in ("model-traffic", "model-traffic-operator") else "model-traffic-operator"
    parser = argparse.ArgumentParser(prog=prog, description="model-traffic-operator: LLM traffic on Kubernetes")
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="run the operator against $KUBECONFIG or in-cluster")
    run_parser.add_argument("-n", "--namespace", action="append", help="watch only this namespace (repeatable)")
    run_parser.add_argument("--liveness-port", type=int, default=None)
    run_parser.add_argument("--log-format", choices=["plain", "json"], default="plain")
    run_parser.add_argument("-v", "--verbose", action="store_true")
    run_parser.set_defaults(func=run)
    for command, help_text in (("promote", "request: promote the candidate now (status; Weighted: --version edits "
                                           "the spec)"),
                               ("abort", "request: roll back, all traffic to the stable version (status)"),
                               ("retry", "request: roll the rolled-back candidate out again (status)"),
                               ("pause", "request: freeze the rollout where it is (status)"),
                               ("resume", "request: continue a rollout paused by request (status)"),
                               ("set-weight", "hold the canary at a weight (Canary)"),
                               ("set-weights", "re-weight variants at once, e.g. v1=70 v2=30 (Weighted)")):
        command_parser = sub.add_parser(command, help=help_text)
        command_parser.add_argument("name", help="the TrafficConfig")
        command_parser.add_argument("-n", "--namespace", help="default: the kubeconfig context's namespace")
        if command == "promote":
            command_parser.add_argument("--version", help="Weighted: the variant that takes all traffic (a spec "
                                        "edit: weights are desired state)")
        elif command == "set-weight":
            command_parser.add_argument("weight", type=int)
        elif command == "set-weights":
            command_parser.add_argument("weights", nargs="+", metavar="VERSION=WEIGHT")
        command_parser.set_defaults(func=rollout)
    get_parser = sub.add_parser("get", help="one screen of a TrafficConfig's rollout (--watch to follow it)")
    get_parser.add_argument("name", help="the TrafficConfig")
    get_parser.add_argument("-n", "--namespace", help="default: the kubeconfig context's namespace")
    get_parser.add_argument("-w", "--watch", action="store_true", help="redraw until Ctrl-C")
    get_parser.add_argument("--interval", type=float, default=2.0, help="seconds between redraws (--watch)")
    get_parser.set_defaults(func=get)
    _add_keys_parser(sub)
    usage_parser = sub.add_parser("usage", help="tokens, requests, errors, latency and cost from Prometheus")
    usage_parser.add_argument("--by", choices=["model", "tenant", "day"], default="model")
    usage_parser.add_argument("--since", default="7d", help="the period: 30m, 12h, 7d, 2w (default: %(default)s)")
    usage_parser.add_argument("--until", help="end of the period, RFC 3339 (default: now)")
    usage_parser.add_argument("-n", "--namespace", help="only the models of this namespace's VirtualModels")
    usage_parser.add_argument("--prometheus", help="its URL (default: $MTO_PROMETHEUS_ADDRESS)")
    usage_parser.add_argument("--prices", help="YAML/JSON: backend model -> {input, output} in microdollars a token")
    usage_parser.set_defaults(func=usage)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
