"""Drift that also removes our labels: the child is found by its owner reference and restored by its own event.

A hand edit may strip the labels a label-selected watch would find the child by. The operator's caches and
child handlers find a child by its controller owner reference as well, so the edit's own watch event brings
the owner's reconcile, which writes the child back, labels included. The operator here resyncs once an hour:
only the child's event can restore it within the test's wait.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from model_traffic import kube as k
from model_traffic.kube import Kube
from model_traffic.pipeline import apply
from tests.cluster.test_virtualmodel import GATEWAY, make_backends, vm_yaml, wait_vm
from tests.conftest import Cluster, Operator, start_operator, stop_operator, wait_for

OUR_LABELS = (apply.LABEL_MANAGED_BY, apply.LABEL_OWNER_KIND, apply.LABEL_OWNER_NAME)
# Well under the resync, long enough for a loaded 2-core machine.
RESTORED_WITHIN_SECONDS = 15


@pytest.fixture
def operator_without_resync(cluster: Cluster, operator: Operator, tmp_path: Path) -> Iterator[Operator]:
    """The session operator replaced, for one test, by one that resyncs only once an hour."""
    stop_operator(operator)
    drift_operator = None
    try:
        drift_operator = start_operator(cluster, tmp_path / "operator.log", MTO_RESYNC_SECONDS="3600")
        yield drift_operator
    finally:
        if drift_operator is not None:
            stop_operator(drift_operator)
        restarted = start_operator(cluster, operator.log_path, **{"MTO_METRICS_PORT": str(operator.metrics_port)})
        operator.process = restarted.process
        operator.identity = restarted.identity


def strip_our_labels(cluster: Cluster, resource: str, name: str, namespace: str) -> None:
    cluster.kubectl("label", resource, name, "-n", namespace, *(f"{label}-" for label in OUR_LABELS))


def has_our_labels(obj: dict[str, Any] | None) -> bool:
    labels = ((obj or {}).get("metadata") or {}).get("labels") or {}
    return all(label in labels for label in OUR_LABELS)


def test_a_child_stripped_of_our_labels_and_edited_is_restored_labels_too(
    cluster: Cluster, kube: Kube, namespace: str, operator_without_resync: Operator
) -> None:
    make_backends(cluster, kube, namespace, "openai")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=vm_yaml("drift", f"""\
        gatewayRefs: [{{name: {GATEWAY}}}]
        backends: [{{name: openai}}]
        loadBalancer: {{type: LeastRequest}}
    """))
    wait_vm(kube, namespace, "drift")

    # A Backend: labels removed and the endpoint changed in one edit (in two, the labels could be back before the
    # second, which would then be found by them).
    cluster.kubectl("patch", "backends.gateway.envoyproxy.io", "openai", "-n", namespace, "--type=merge", "-p",
                    json.dumps({"metadata": {"labels": dict.fromkeys(OUR_LABELS)},
                                "spec": {"endpoints": [{"fqdn": {"hostname": "evil.example.com", "port": 443}}]}}))

    def backend_restored() -> bool:
        backend = kube.get(k.BACKEND, namespace, "openai")
        return (backend is not None and has_our_labels(backend)
                and backend["spec"]["endpoints"][0]["fqdn"]["hostname"] == "api.example.com")

    wait_for(backend_restored, RESTORED_WITHIN_SECONDS, "the Backend's endpoint and our labels restored")

    # An AIGatewayRoute: labels removed and the weight changed in one edit.
    edit: list[dict[str, Any]] = [
        {"op": "remove", "path": "/metadata/labels/" + label.replace("/", "~1")} for label in OUR_LABELS]
    edit.append({"op": "replace", "path": "/spec/rules/0/backendRefs/0/weight", "value": 7})
    cluster.kubectl("patch", "aigatewayroutes.aigateway.envoyproxy.io", "drift", "-n", namespace, "--type=json",
                    "-p", json.dumps(edit))

    def route_restored() -> bool:
        route = kube.get(k.AI_GATEWAY_ROUTE, namespace, "drift")
        return (route is not None and has_our_labels(route)
                and route["spec"]["rules"][0]["backendRefs"][0].get("weight") == 1)

    wait_for(route_restored, RESTORED_WITHIN_SECONDS, "the route's weight and our labels restored")

    # Labels alone (kubectl label ... key-): the BackendTrafficPolicy gets them back too.
    strip_our_labels(cluster, "backendtrafficpolicies.gateway.envoyproxy.io", "drift", namespace)
    wait_for(lambda: has_our_labels(kube.get(k.BACKEND_TRAFFIC_POLICY, namespace, "drift")),
             RESTORED_WITHIN_SECONDS, "the policy's labels restored")
