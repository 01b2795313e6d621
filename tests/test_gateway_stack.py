"""The real controllers of the local stack: Envoy Gateway, the Envoy AI Gateway controller, KServe, and pods.

What the operator relies on when it writes their resources: Envoy Gateway accepted the default Gateway,
the AI Gateway controller turns an AIGatewayRoute into an HTTPRoute, and Envoy Gateway accepts a global
rate limit (it refuses one when rate limiting is not configured). Pods are scheduled by kube-scheduler onto
kwok's fake nodes and run there without a container, so Envoy Gateway's proxy Deployment becomes available
(through the AI Gateway's pod webhook) and the Gateway Programmed; KServe's webhooks answer the API server.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
from typing import Any

import pytest

from model_traffic_dev.localcluster import kserve, nodes
from model_traffic_dev.localcluster.controlplane import PIDS_FILE, pid_alive
from model_traffic_dev.localcluster.stack import AI_GATEWAY_FIELD_MANAGER, ENVOY_GATEWAY_FIELD_MANAGER
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
    controllers = ("envoy-gateway", "ai-gateway-controller", "kserve-manager")
    namespaces = {name: os.readlink(f"/proc/{pids[name]}/ns/net") for name in controllers}
    assert len(set(namespaces.values())) == 3
    assert os.readlink("/proc/self/ns/net") not in namespaces.values()


def test_fake_nodes_run_envoy_gateways_proxy_and_the_gateway_is_programmed(cluster: Cluster) -> None:
    if not (cluster.workdir / PIDS_FILE).exists():
        pytest.skip("an existing cluster: its nodes are not ours")
    listing = get_json(cluster, "nodes")["items"]
    by_name = {node["metadata"]["name"]: node for node in listing}
    for fake in nodes.FAKE_NODES:
        node = by_name[fake.name]
        assert condition(node, "Ready").get("status") == "True"
        assert not node["spec"].get("taints"), node["spec"]  # the node lifecycle controller lifted not-ready
        assert node["status"]["allocatable"].get(nodes.GPU_RESOURCE) == (str(fake.gpus) if fake.gpus else None)
    namespace, name = gateway_ref(cluster)
    # Envoy Gateway's proxy for the Gateway: a Deployment whose pod kube-scheduler placed and kwok runs.
    proxy = wait_for(lambda: [p for p in get_json(cluster, "pods", "-n", namespace, "-l",
                                                  f"gateway.envoyproxy.io/owning-gateway-name={name}")["items"]
                              if p["status"].get("phase") == "Running"], 60, "the Envoy proxy pod Running")
    pod = proxy[0]
    assert pod["spec"]["nodeName"] in by_name and condition(pod, "Ready").get("status") == "True"
    # The pod passed the AI Gateway's pod webhook (failurePolicy Fail), reached in the controller's network
    # namespace; it adds its external processor only to the proxies of Gateways with AIGatewayRoutes
    # (internal/controller/gateway_mutator.go, listAIGatewayRoutesForGateway), which this one has none of yet.

    def programmed() -> dict[str, Any] | None:
        gateway = get_json(cluster, "gateway", name, "-n", namespace)
        return gateway if condition(gateway, "Programmed").get("status") == "True" else None

    assert wait_for(programmed, 60, "the Gateway Programmed")["status"]["addresses"]


def test_kserve_runs_with_its_webhooks_and_the_hugging_face_runtime(cluster: Cluster) -> None:
    if not (cluster.workdir / PIDS_FILE).exists():
        pytest.skip("an existing cluster: its KServe is not ours")
    config = get_json(cluster, "configmap", kserve.CONFIG_MAP, "-n", kserve.NAMESPACE)
    assert json.loads(config["data"]["deploy"]) == {"defaultDeploymentMode": "Standard"}
    for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
        webhook = get_json(cluster, kind, "inferenceservice.serving.kserve.io")
        assert webhook["webhooks"][0]["clientConfig"]["url"].endswith(f":{kserve.WEBHOOK_PORT}/" + (
            "mutate" if kind.startswith("mutating") else "validate") + "-serving-kserve-io-v1beta1-inferenceservice")
    runtime = get_json(cluster, "clusterservingruntime", kserve.HUGGINGFACE_RUNTIME)
    assert runtime["spec"]["containers"][0]["image"] == "kserve/huggingfaceserver:latest"
    # An InferenceService KServe's validating webhook refuses (inference_service_validation.go,
    # validateInferenceServiceAutoscaler): proof that the API server calls it.
    refused = cluster.kubectl("apply", "-n", "default", "-f", "-", check=False, stdin=textwrap.dedent("""\
        apiVersion: serving.kserve.io/v1beta1
        kind: InferenceService
        metadata: {name: refused, annotations: {serving.kserve.io/autoscalerClass: no-such-class}}
        spec: {predictor: {model: {modelFormat: {name: huggingface}, storageUri: "hf://org/model"}}}
        """))
    assert refused.returncode != 0, refused.stdout
    assert "[no-such-class] is not a supported autoscaler class type" in refused.stderr, refused.stderr


def test_a_controller_that_exits_is_restarted_as_its_pod_would_be(cluster: Cluster) -> None:
    """Envoy AI Gateway v1.0.0 can panic (see LocalStack._supervise); the stack restarts it, in a new network
    namespace linked to the host and to Envoy Gateway. The next test uses it through both links."""
    pids_file = cluster.workdir / PIDS_FILE
    if not pids_file.exists():
        pytest.skip("an existing cluster: its controllers are not ours")
    before = json.loads(pids_file.read_text())["ai-gateway-controller"]
    os.kill(before, signal.SIGKILL)

    def restarted() -> int | None:
        pid = int(json.loads(pids_file.read_text())["ai-gateway-controller"])
        return pid if pid != before and pid_alive(pid) else None

    after = wait_for(restarted, 30, "the AI Gateway controller to be restarted")
    wait_for(lambda: os.readlink(f"/proc/{after}/ns/net") != os.readlink("/proc/self/ns/net"), 10,
             "its own network namespace")
    log = (cluster.workdir / "logs" / "ai-gateway-controller.log").read_text()
    assert "ai-gateway-controller exited; restarting" in log


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
