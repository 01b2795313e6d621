"""The real gateway controllers of the local stack: Envoy Gateway and the Envoy AI Gateway controller.

What the operator relies on when it writes their resources: Envoy Gateway accepted the default Gateway,
the AI Gateway controller turns an AIGatewayRoute into an HTTPRoute, and Envoy Gateway accepts a global
rate limit (it refuses one when rate limiting is not configured).
"""

from __future__ import annotations

import json
import os
import textwrap
from typing import Any

import pytest

from model_traffic.localcluster.controlplane import PIDS_FILE
from model_traffic.localcluster.stack import AI_GATEWAY_FIELD_MANAGER, ENVOY_GATEWAY_FIELD_MANAGER
from tests.conftest import Cluster, apply_yaml, condition, get_json, wait_for

pytestmark = pytest.mark.cluster

ENVOY_GATEWAY_CONTROLLER = "gateway.envoyproxy.io/gatewayclass-controller"


def gateway_ref(cluster: Cluster) -> tuple[str, str]:
    namespace, name = cluster.default_gateway.split("/")
    return namespace, name


def test_envoy_gateway_accepted_the_default_gateway(cluster: Cluster) -> None:
    namespace, name = gateway_ref(cluster)
    gateway = get_json(cluster, "gateway", name, "-n", namespace, "--show-managed-fields")
    assert condition(gateway, "Accepted").get("status") == "True", gateway.get("status")
    # Written by Envoy Gateway itself, not by whoever created the Gateway.
    status_writers = {entry["manager"] for entry in gateway["metadata"]["managedFields"]
                      if entry.get("subresource") == "status"}
    assert status_writers == {ENVOY_GATEWAY_FIELD_MANAGER}
    assert gateway["spec"]["listeners"][0]["allowedRoutes"]["namespaces"]["from"] == "All"


def test_controllers_run_in_network_namespaces_of_their_own(cluster: Cluster) -> None:
    pids_file = cluster.workdir / PIDS_FILE
    if not pids_file.exists():
        pytest.skip("an existing cluster: its controllers are not ours")
    pids: dict[str, int] = json.loads(pids_file.read_text())
    controllers = ("envoy-gateway", "ai-gateway-controller")
    namespaces = {name: os.readlink(f"/proc/{pids[name]}/ns/net") for name in controllers}
    assert len(set(namespaces.values())) == 2
    assert os.readlink("/proc/self/ns/net") not in namespaces.values()


def route_objects(namespace: str, gateway_namespace: str, gateway_name: str) -> str:
    return textwrap.dedent(f"""\
        apiVersion: gateway.envoyproxy.io/v1alpha1
        kind: Backend
        metadata: {{name: openai, namespace: {namespace}}}
        spec:
          endpoints: [{{fqdn: {{hostname: api.openai.com, port: 443}}}}]
        ---
        apiVersion: aigateway.envoyproxy.io/v1beta1
        kind: AIServiceBackend
        metadata: {{name: openai, namespace: {namespace}}}
        spec:
          schema: {{name: OpenAI}}
          backendRef: {{name: openai, kind: Backend, group: gateway.envoyproxy.io}}
        ---
        apiVersion: aigateway.envoyproxy.io/v1beta1
        kind: AIGatewayRoute
        metadata: {{name: gpt, namespace: {namespace}}}
        spec:
          parentRefs:
          - {{name: {gateway_name}, namespace: {gateway_namespace}, kind: Gateway, group: gateway.networking.k8s.io}}
          rules:
          - matches: [{{headers: [{{type: Exact, name: x-ai-eg-model, value: gpt-4}}]}}]
            backendRefs: [{{name: openai}}]
        """)


GLOBAL_RATE_LIMIT = """\
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {{name: gpt-budget, namespace: {namespace}}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: gpt}}]
  rateLimit:
    type: Global
    global:
      rules:
      - clientSelectors: [{{headers: [{{name: x-tenant-id, type: Distinct}}]}}]
        limit: {{requests: 100, unit: Hour}}
"""


def ancestor_condition(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    for ancestor in (obj.get("status") or {}).get("ancestors") or []:
        if ancestor.get("controllerName") == ENVOY_GATEWAY_CONTROLLER:
            for cond in ancestor.get("conditions") or []:
                if cond["type"] == ctype:
                    return dict(cond)
    return {}


def test_ai_gateway_generates_the_httproute_and_envoy_gateway_accepts_a_global_rate_limit(
    cluster: Cluster, namespace: str,
) -> None:
    gateway_namespace, gateway_name = gateway_ref(cluster)
    apply_yaml(cluster, route_objects(namespace, gateway_namespace, gateway_name))

    def generated_route() -> dict[str, Any] | None:
        found = cluster.kubectl("get", "httproute", "gpt", "-n", namespace, "--ignore-not-found",
                                "--show-managed-fields", "-o", "json").stdout
        return json.loads(found) if found.strip() else None

    route = wait_for(generated_route, timeout=30, what="the AI Gateway controller to generate HTTPRoute gpt")
    assert [owner["kind"] for owner in route["metadata"]["ownerReferences"]] == ["AIGatewayRoute"]
    assert {entry["manager"] for entry in route["metadata"]["managedFields"]} >= {AI_GATEWAY_FIELD_MANAGER}
    wait_for(lambda: condition(get_json(cluster, "aigatewayroute", "gpt", "-n", namespace), "Accepted")
             .get("status") == "True", timeout=30, what="AIGatewayRoute gpt to be Accepted")

    apply_yaml(cluster, GLOBAL_RATE_LIMIT.format(namespace=namespace))
    accepted = wait_for(
        lambda: ancestor_condition(get_json(cluster, "backendtrafficpolicy", "gpt-budget", "-n", namespace),
                                   "Accepted") or None,
        timeout=30, what="Envoy Gateway to judge BackendTrafficPolicy gpt-budget",
    )
    assert accepted["status"] == "True", accepted
