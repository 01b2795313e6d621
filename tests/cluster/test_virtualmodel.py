"""VirtualModel end to end: the operator against a real API server with the upstream CRDs.

The first test needs no operator: every object the render function emits, for specs covering every
feature, is sent to the real API server as a server-side dry run, so the upstream OpenAPI schemas and CEL
rules have the last word. The others run the operator.
"""

from __future__ import annotations

import textwrap
import time
from typing import Any

import pytest

from model_traffic import kube as k
from model_traffic.kinds.common import GatewayRef
from model_traffic.kinds.virtualmodel.reconcile import MANAGED_AI_SERVICE_BACKEND, VIRTUAL_MODEL
from model_traffic.kinds.virtualmodel.render import ObservedBackend, VirtualModelWorld, render
from model_traffic.kinds.virtualmodel.spec import VirtualModelSpec
from model_traffic.kube import Kube
from model_traffic.pipeline import apply
from tests.cluster.conftest import AI_GATEWAY_MANAGER, ENVOY_GATEWAY_MANAGER, status_writers
from tests.conftest import POOL, Cluster, Operator, condition, our_yaml, wait_for
from tests.unit.test_render_virtualmodel import http_route_of

pytestmark = pytest.mark.cluster

GATEWAY = "ai-gateway"


def vm_yaml(name: str, spec: str) -> str:
    return our_yaml("VirtualModel", name, spec)


def backend_yaml(name: str, host: str = "api.example.com") -> str:
    return textwrap.dedent(f"""\
        apiVersion: modeltraffic.io/v1alpha1
        kind: ManagedAIServiceBackend
        metadata:
          name: {name}
        spec:
          schema: {{name: OpenAI}}
          endpoint: {{fqdn: {{hostname: {host}, port: 443}}}}
        """)



def wait_vm(kube: Kube, namespace: str, name: str, status: str = "True", reason: str | None = None,
            timeout: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = kube.get(VIRTUAL_MODEL, namespace, name)
        cond = condition(obj, "Ready")
        seen = obj is not None and (obj.get("status") or {}).get("observedGeneration") == obj["metadata"]["generation"]
        if seen and cond.get("status") == status and (reason is None or cond.get("reason") == reason):
            return obj
        return None

    return wait_for(check, timeout, f"VirtualModel {name} Ready={status} reason={reason}")


def make_backends(cluster: Cluster, kube: Kube, namespace: str, *names: str) -> None:
    for name in names:
        cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=backend_yaml(name))
    def ready(name: str) -> bool:
        return condition(kube.get(MANAGED_AI_SERVICE_BACKEND, namespace, name), "Ready").get("status") == "True"

    for name in names:
        wait_for(lambda: ready(name), 30, f"backend {name} Ready")  # noqa: B023 (called at once)


def route(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    return kube.get(k.AI_GATEWAY_ROUTE, namespace, name)


# --- the upstream schemas have the last word ---------------------------------------------------------------

EVERYTHING = {
    "modelName": "gpt-4",
    "gatewayRefs": [{"name": "ai-gateway", "namespace": "envoy-gateway-system", "sectionName": "http"}],
    "backends": [
        {"name": "openai", "modelNameOverride": "gpt-4o", "weight": 80},
        {"name": "azure", "modelNameOverride": "gpt-4o-eu", "weight": 20},
        {"name": "anthropic", "modelNameOverride": "claude-sonnet-4", "priority": 1},
        {"name": "raw-backend", "kind": "AIServiceBackend"},
        {"name": "vllm", "priority": 2},
        {"name": "pool", "kind": "InferencePool", "priority": 3, "modelNameOverride": "llama"},
    ],
    "retry": {"attempts": 3, "perTryTimeout": "30s",
              "retryOn": {"statusCodes": [500, 502, 503], "triggers": ["connect-failure", "5xx"]}},
    "timeouts": {"request": "120s"},
    "loadBalancer": {"type": "ConsistentHash", "hashHeader": "x-session"},
    "healthCheck": {"passive": {"consecutive5XxErrors": 5, "interval": "10s", "baseEjectionTime": "30s"}},
    "rateLimit": {"tenantHeader": "x-tenant-id", "tokens": {"limit": 100000, "unit": "Hour"},
                  "requests": {"limit": 600, "unit": "Minute"}},
    "llmRequestCosts": [{"metadataKey": "llm_total_token", "type": "TotalToken"},
                        {"metadataKey": "cost", "type": "CEL", "cel": "input_tokens + output_tokens"}],
}

CANARY = [{"headers": [{"name": "x-canary", "value": "true"}]}]
MATCHED = {  # header-matched backends: several alternatives, tiers, a pool, the upstream header limit
    "modelName": "gpt-4",
    "backends": [
        {"name": "openai", "weight": 80}, {"name": "azure", "weight": 20},
        {"name": "a", "modelNameOverride": "gpt-4o-canary", "weight": 3, "matches": [*CANARY,
            {"headers": [{"name": "x-team", "value": "ml"}, {"name": "x-env", "value": "prod with\tspaces"}]}]},
        {"name": "b", "priority": 1, "matches": [*CANARY,
            {"headers": [{"name": "x-env", "value": "prod with\tspaces"}, {"name": "x-team", "value": "ml"}]}]},
        {"name": "pool", "kind": "InferencePool", "matches": [
            {"headers": [{"name": f"x-h{i}", "value": "v"} for i in range(15)]}]},
    ],
    "timeouts": {"request": "120s"},
}

SPECS = [
    EVERYTHING,
    MATCHED,
    {"backends": [{"name": "openai"}, {"name": "anthropic", "priority": 1}]},  # the default fallback retry
    {"backends": [{"name": "pool", "kind": "InferencePool"}], "loadBalancer": {"type": "ConsistentHash"}},
    {"backends": [{"name": "openai"}], "rateLimit": {"requests": {"limit": 1, "unit": "Second"}},
     "loadBalancer": {"type": "Random"}, "retry": {"retryOn": {"statusCodes": [429]}}},
]


@pytest.mark.parametrize("version", ["v1beta1", "v1alpha1"])
@pytest.mark.parametrize("index", range(len(SPECS)))
def test_every_emitted_object_passes_the_upstream_schemas(kube: Kube, namespace: str, version: str,
                                                          index: int) -> None:
    spec = VirtualModelSpec.model_validate(SPECS[index])
    observed: dict[tuple[str, str], ObservedBackend | None] = {
        (b.kind, b.name): ObservedBackend(ready=True) for b in spec.backends}
    observed[("ManagedAIServiceBackend", "vllm")] = ObservedBackend(ready=True, routing="InferencePool",
                                                                    inference_pool="vllm-pool")
    world = VirtualModelWorld(namespace=namespace, name="gpt-4", ai_gateway_version=version,
                              default_gateway=GatewayRef(name=GATEWAY), backends=observed)
    plan = render(spec, world)
    assert plan.children
    owner = apply.Owner("modeltraffic.io/v1alpha1", "VirtualModel", namespace, "gpt-4", "0-0-0")
    for child in plan.children:
        body = apply.with_ownership(child.body, owner)
        kube.apply(body, dry_run=True)  # raises with the server's message when refused


def test_the_http_route_the_ai_gateway_makes_of_a_matched_route_is_accepted(kube: Kube, namespace: str) -> None:
    """The AI Gateway copies each rule's header matches into an HTTPRoute, whose schema is stricter (header
    values, matches per route): that HTTPRoute, as it would write it, passes the real schema too."""
    spec = VirtualModelSpec.model_validate(MATCHED)
    world = VirtualModelWorld(namespace=namespace, name="gpt-4", ai_gateway_version="v1beta1",
                              default_gateway=GatewayRef(name=GATEWAY),
                              backends={(b.kind, b.name): ObservedBackend(ready=True) for b in spec.backends})
    route_body = next(c.body for c in render(spec, world).children if c.rtype.kind == "AIGatewayRoute")
    assert len(route_body["spec"]["rules"]) == 3 and len(route_body["spec"]["rules"][1]["matches"][0]["headers"]) == 16
    http_route = http_route_of(route_body)
    http_route["metadata"] = {"name": "gpt-4", "namespace": namespace}
    kube.apply(http_route, dry_run=True)


# --- the operator -------------------------------------------------------------------------------------------

def test_weighted_tiers_with_default_fallback_retry(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    make_backends(cluster, kube, namespace, "openai", "azure", "anthropic")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=vm_yaml("gpt-4", f"""\
        gatewayRefs: [{{name: {GATEWAY}}}]
        backends:
        - {{name: openai, modelNameOverride: gpt-4o, weight: 80}}
        - {{name: azure, modelNameOverride: gpt-4o-eu, weight: 20}}
        - {{name: anthropic, modelNameOverride: claude-sonnet-4, priority: 1}}
        rateLimit: {{tenantHeader: x-tenant-id, tokens: {{limit: 100000, unit: Hour}}}}
    """))
    obj = wait_vm(kube, namespace, "gpt-4")
    status = obj["status"]
    assert status["modelName"] == "gpt-4"
    assert status["route"] == "gpt-4"
    assert status["backendSummary"] == "3/3"
    assert [(b["name"], b["tier"], b["sharePercent"], b["ready"]) for b in status["backends"]] == [
        ("openai", 0, 80.0, True), ("azure", 0, 20.0, True), ("anthropic", 1, 100.0, True)]
    assert condition(obj, "BackendsResolved")["status"] == "True"
    assert condition(obj, "RetryPolicy")["reason"] == "FallbackDefault"
    # Ready means the real controllers accepted every child: AI Gateway the route, Envoy Gateway the HTTPRoute
    # the AI Gateway generated from it, the BackendTrafficPolicy with its global rate limit, and the Backends.
    accepted = condition(obj, "ChildrenAccepted")
    assert (accepted["status"], accepted["reason"]) == ("True", "Accepted"), accepted

    live = route(kube, namespace, "gpt-4")
    assert live is not None and live["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    refs = live["spec"]["rules"][0]["backendRefs"]
    assert [(r["name"], r["weight"], r["priority"], r.get("modelNameOverride")) for r in refs] == [
        ("openai", 80, 0, "gpt-4o"), ("azure", 20, 0, "gpt-4o-eu"), ("anthropic", 1, 1, "claude-sonnet-4")]
    assert live["spec"]["llmRequestCosts"] == [{"metadataKey": "llm_total_token", "type": "TotalToken"}]
    policy = kube.get(k.BACKEND_TRAFFIC_POLICY, namespace, "gpt-4")
    assert policy is not None
    assert policy["spec"]["retry"]["numAttemptsPerPriority"] == 1
    assert policy["spec"]["targetRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute",
                                             "name": "gpt-4"}]
    assert policy["spec"]["rateLimit"]["global"]["rules"][0]["cost"]["response"]["metadata"] == {
        "namespace": "io.envoy.ai_gateway", "key": "llm_total_token"}

    # What a person sees.
    table = cluster.kubectl("get", "vmodel", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "MODEL", "BACKENDS", "READY", "AGE"]
    assert table[1].split()[:4] == ["gpt-4", "gpt-4", "3/3", "True"]
    cluster.kubectl("wait", "--for=condition=Ready", "vmodel/gpt-4", "-n", namespace, "--timeout=10s")

    # Those reports are the controllers' own: their field managers wrote the status, no test did.
    assert status_writers(kube.get(k.AI_GATEWAY_ROUTE, namespace, "gpt-4")) == {AI_GATEWAY_MANAGER}
    assert status_writers(kube.get(k.HTTP_ROUTE, namespace, "gpt-4")) == {ENVOY_GATEWAY_MANAGER}
    assert status_writers(kube.get(k.BACKEND_TRAFFIC_POLICY, namespace, "gpt-4")) == {ENVOY_GATEWAY_MANAGER}

    # Editing the spec (a backend removed, the fallback tier gone, no policy left) prunes the policy.
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=vm_yaml("gpt-4", f"""\
        gatewayRefs: [{{name: {GATEWAY}}}]
        backends: [{{name: openai}}]
    """))
    wait_for(lambda: kube.get(k.BACKEND_TRAFFIC_POLICY, namespace, "gpt-4") is None, 30, "policy pruned")
    obj = wait_vm(kube, namespace, "gpt-4")
    assert obj["status"]["backendSummary"] == "1/1"


def test_missing_backend_is_left_out_then_added_when_it_appears(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    make_backends(cluster, kube, namespace, "openai")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=vm_yaml("chat", f"""\
        gatewayRefs: [{{name: {GATEWAY}}}]
        backends: [{{name: openai}}, {{name: azure}}, {{name: raw, kind: AIServiceBackend}}]
    """))
    obj = wait_vm(kube, namespace, "chat", reason="BackendsLeftOut")
    resolved = condition(obj, "BackendsResolved")
    assert (resolved["status"], resolved["reason"]) == ("False", "BackendsNotFound")
    assert "ManagedAIServiceBackend azure not found" in resolved["message"]
    assert "AIServiceBackend raw not found" in resolved["message"]
    live = route(kube, namespace, "chat")
    assert live is not None and [r["name"] for r in live["spec"]["rules"][0]["backendRefs"]] == ["openai"]

    # Both appear: the VirtualModel follows within seconds, without any edit of its own.
    make_backends(cluster, kube, namespace, "azure")
    # The AIServiceBackend's own Envoy Gateway Backend too: without it Envoy Gateway refuses the route
    # (BackendNotFound), and the VirtualModel says so.
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=textwrap.dedent("""\
        apiVersion: gateway.envoyproxy.io/v1alpha1
        kind: Backend
        metadata: {name: raw}
        spec:
          endpoints: [{fqdn: {hostname: raw.example.com, port: 443}}]
        ---
        apiVersion: aigateway.envoyproxy.io/v1beta1
        kind: AIServiceBackend
        metadata: {name: raw}
        spec:
          schema: {name: OpenAI}
          backendRef: {group: gateway.envoyproxy.io, kind: Backend, name: raw}
        """))
    obj = wait_vm(kube, namespace, "chat", reason="Ready", timeout=60)
    assert condition(obj, "BackendsResolved")["status"] == "True"
    live = route(kube, namespace, "chat")
    assert live is not None
    assert [r["name"] for r in live["spec"]["rules"][0]["backendRefs"]] == ["openai", "azure", "raw"]


def test_no_backend_resolves_no_route_until_one_does(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=vm_yaml("solo", f"""\
        gatewayRefs: [{{name: {GATEWAY}}}]
        backends: [{{name: vllm-pool, kind: InferencePool}}]
    """))
    obj = wait_vm(kube, namespace, "solo", status="False", reason="BackendsNotFound")
    assert condition(obj, "Stalled")["status"] == "True"
    assert route(kube, namespace, "solo") is None
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=POOL)
    # The pool resolves and the route is written. Whether the VirtualModel is then Ready is Envoy Gateway's call:
    # the stack's Envoy Gateway runs without the Inference Extension and refuses an InferencePool backendRef
    # (InvalidKind), which the VirtualModel reports as ChildRefused; that is not what this test is about.
    wait_for(lambda: condition(kube.get(VIRTUAL_MODEL, namespace, "solo"), "BackendsResolved").get("status") == "True",
             60, "the pool to resolve")
    live = route(kube, namespace, "solo")
    assert live is not None
    [ref] = live["spec"]["rules"][0]["backendRefs"]
    assert (ref["group"], ref["kind"], ref["name"]) == ("inference.networking.k8s.io", "InferencePool", "vllm-pool")


def test_duplicate_model_name_is_refused_until_the_owner_goes(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    make_backends(cluster, kube, namespace, "openai")
    spec = f"""\
        modelName: shared-model
        gatewayRefs: [{{name: {GATEWAY}}}]
        backends: [{{name: openai}}]
    """
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=vm_yaml("first", spec))
    wait_vm(kube, namespace, "first")
    time.sleep(1.1)  # creationTimestamp has second precision
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=vm_yaml("second", spec))
    obj = wait_vm(kube, namespace, "second", status="False", reason="ModelNameConflict")
    assert f"VirtualModel {namespace}/first" in condition(obj, "Ready")["message"]
    assert route(kube, namespace, "second") is None
    assert condition(kube.get(VIRTUAL_MODEL, namespace, "first"), "Ready")["status"] == "True"

    cluster.kubectl("delete", "vmodel", "first", "-n", namespace)
    wait_vm(kube, namespace, "second", timeout=60)
    assert route(kube, namespace, "second") is not None


def test_drift_is_restored_and_deletion_collects_children(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    make_backends(cluster, kube, namespace, "openai", "anthropic")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=vm_yaml("drift", f"""\
        gatewayRefs: [{{name: {GATEWAY}}}]
        backends: [{{name: openai}}, {{name: anthropic, priority: 1}}]
        loadBalancer: {{type: LeastRequest}}
    """))
    wait_vm(kube, namespace, "drift")
    cluster.kubectl("patch", "aigatewayroute", "drift", "-n", namespace, "--type=json", "-p",
                    '[{"op": "replace", "path": "/spec/rules/0/backendRefs/0/weight", "value": 7}]')
    wait_for(lambda: (route(kube, namespace, "drift") or {}).get("spec", {}).get("rules", [{}])[0]
             .get("backendRefs", [{}])[0].get("weight") == 1, 15, "the weight restored")
    cluster.kubectl("delete", "backendtrafficpolicy", "drift", "-n", namespace)
    wait_for(lambda: kube.get(k.BACKEND_TRAFFIC_POLICY, namespace, "drift"), 15, "the policy recreated")

    # An unchanged resync writes nothing.
    time.sleep(1)
    before = (route(kube, namespace, "drift") or {})["metadata"]["resourceVersion"]
    cluster.kubectl("label", "vmodel", "drift", "-n", namespace, "touched=yes")
    time.sleep(2)
    assert (route(kube, namespace, "drift") or {})["metadata"]["resourceVersion"] == before

    cluster.kubectl("delete", "vmodel", "drift", "-n", namespace)
    wait_for(lambda: route(kube, namespace, "drift") is None
             and kube.get(k.BACKEND_TRAFFIC_POLICY, namespace, "drift") is None, 60, "children collected")


def test_a_route_of_the_same_name_not_ours_is_left_alone(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    make_backends(cluster, kube, namespace, "openai")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=textwrap.dedent("""\
        apiVersion: aigateway.envoyproxy.io/v1beta1
        kind: AIGatewayRoute
        metadata: {name: taken}
        spec:
          rules: [{backendRefs: [{name: someone-elses}]}]
        """))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=vm_yaml("taken", f"""\
        gatewayRefs: [{{name: {GATEWAY}}}]
        backends: [{{name: openai}}]
    """))
    obj = wait_vm(kube, namespace, "taken", status="False", reason="OwnershipConflict")
    assert condition(obj, "ChildrenOwned")["status"] == "False"
    live = route(kube, namespace, "taken")
    assert live is not None and live["spec"]["rules"][0]["backendRefs"][0]["name"] == "someone-elses"


def test_gateway_address_is_reported(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    make_backends(cluster, kube, namespace, "openai")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=vm_yaml("addr", f"""\
        gatewayRefs: [{{name: {GATEWAY}}}]
        backends: [{{name: openai}}]
    """))
    wait_vm(kube, namespace, "addr")

    # Envoy Gateway writes the address of the Service it made for the Gateway (a ClusterIP in the local stack).
    def address() -> str | None:
        addresses = ((kube.get(k.GATEWAY, namespace, GATEWAY) or {}).get("status") or {}).get("addresses") or []
        return str(addresses[0]["value"]) if addresses else None

    ip = wait_for(address, 30, "Envoy Gateway's address for the Gateway")
    # Port 80 is implied, as clients write it.
    wait_for(lambda: (kube.get(VIRTUAL_MODEL, namespace, "addr") or {}).get("status", {}).get("address")
             == ip, 15, "the Gateway's address")


# --- refusals by the real controllers -------------------------------------------------------------------------

def test_a_route_the_ai_gateway_refuses_is_not_ready_until_its_cause_goes(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    make_backends(cluster, kube, namespace, "openai")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=vm_yaml("lost", """\
        gatewayRefs: [{name: no-such-gateway}]
        backends: [{name: openai}]
    """))
    obj = wait_vm(kube, namespace, "lost", status="False", reason="ChildRefused")
    accepted = condition(obj, "ChildrenAccepted")
    assert accepted["status"] == "False"
    assert "AIGatewayRoute/lost" in accepted["message"] and "no-such-gateway not found" in accepted["message"]
    assert condition(obj, "Stalled")["status"] == "True"
    events = cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                             "involvedObject.kind=VirtualModel,involvedObject.name=lost", "-o", "json").stdout
    assert "no-such-gateway not found" in events

    # The Gateway appears: the AI Gateway accepts the route, and the VirtualModel follows by itself.
    gateway = kube.get(k.GATEWAY, namespace, GATEWAY)
    assert gateway is not None
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=textwrap.dedent(f"""\
        apiVersion: gateway.networking.k8s.io/v1
        kind: Gateway
        metadata: {{name: no-such-gateway}}
        spec:
          gatewayClassName: {gateway["spec"]["gatewayClassName"]}
          listeners: [{{name: http, protocol: HTTP, port: 80}}]
        """))
    obj = wait_vm(kube, namespace, "lost", timeout=60)
    assert condition(obj, "ChildrenAccepted")["status"] == "True"


def test_a_backend_envoy_gateway_refuses_is_not_ready_until_it_is_fixed(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    def loopback(address: str) -> str:
        return textwrap.dedent(f"""\
            apiVersion: modeltraffic.io/v1alpha1
            kind: ManagedAIServiceBackend
            metadata: {{name: local}}
            spec:
              schema: {{name: OpenAI}}
              endpoint: {{ip: {{address: {address}, port: 8000}}}}
            """)

    # Envoy Gateway refuses a loopback Backend in Kubernetes (internal/gatewayapi/backend.go), once a route uses it.
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=loopback("127.0.0.1"))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=vm_yaml("local", f"""\
        gatewayRefs: [{{name: {GATEWAY}}}]
        backends: [{{name: local}}]
    """))

    def refused() -> dict[str, Any] | None:
        obj = kube.get(MANAGED_AI_SERVICE_BACKEND, namespace, "local")
        return obj if condition(obj, "Ready").get("reason") == "ChildRefused" else None

    obj = wait_for(refused, 60, "the backend refused by Envoy Gateway")
    assert "Backend/local" in condition(obj, "ChildrenAccepted")["message"]
    assert "loopback" in condition(obj, "ChildrenAccepted")["message"]

    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=loopback("10.0.0.7"))
    wait_for(lambda: condition(kube.get(MANAGED_AI_SERVICE_BACKEND, namespace, "local"), "Ready").get("status")
             == "True", 60, "the fixed backend Ready")
    obj = wait_vm(kube, namespace, "local", timeout=60)
    assert obj["status"]["backendSummary"] == "1/1"
    assert status_writers(kube.get(k.BACKEND, namespace, "local")) == {ENVOY_GATEWAY_MANAGER}


def test_deleting_a_virtual_model_collects_every_child_despite_the_ai_gateway_finalizers(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    make_backends(cluster, kube, namespace, "openai")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=vm_yaml("gone", f"""\
        gatewayRefs: [{{name: {GATEWAY}}}]
        backends: [{{name: openai}}]
        rateLimit: {{tenantHeader: x-tenant-id, tokens: {{limit: 1000, unit: Hour}}}}
    """))
    wait_vm(kube, namespace, "gone", timeout=60)
    live = kube.get(k.AI_GATEWAY_ROUTE, namespace, "gone")
    assert live is not None and "aigateway.envoyproxy.io/finalizer" in live["metadata"].get("finalizers", [])
    cluster.kubectl("delete", "vmodel", "gone", "-n", namespace)
    for rtype in (k.AI_GATEWAY_ROUTE, k.HTTP_ROUTE, k.BACKEND_TRAFFIC_POLICY):
        wait_for(lambda: kube.get(rtype, namespace, "gone") is None, 60,  # noqa: B023 (called at once)
                 f"{rtype.kind} gone collected")


# --- header-matched backends ----------------------------------------------------------------------------------

def test_header_matched_backend_gets_a_rule_of_its_own_first(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    make_backends(cluster, kube, namespace, "llama-v1", "llama-v2")
    # The shape the TrafficConfig renderer writes for an ABTest.
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=vm_yaml("llama", f"""\
        modelName: llama-3
        gatewayRefs: [{{name: {GATEWAY}}}]
        backends:
        - {{name: llama-v1, modelNameOverride: llama-3-v1, weight: 100}}
        - name: llama-v2
          modelNameOverride: llama-3-v2
          weight: 1
          matches: [{{headers: [{{name: x-canary, value: "true"}}]}}]
    """))
    obj = wait_vm(kube, namespace, "llama")
    live = route(kube, namespace, "llama")
    assert live is not None
    model = {"type": "Exact", "name": "x-ai-eg-model", "value": "llama-3"}
    assert [(r["matches"], [(b["name"], b.get("modelNameOverride")) for b in r["backendRefs"]])
            for r in live["spec"]["rules"]] == [
        ([{"headers": [model, {"type": "Exact", "name": "x-canary", "value": "true"}]}], [("llama-v2", "llama-3-v2")]),
        ([{"headers": [model]}], [("llama-v1", "llama-3-v1")]),
    ]
    assert [(b["name"], b["sharePercent"], b.get("onlyMatching")) for b in obj["status"]["backends"]] == [
        ("llama-v1", 100.0, None), ("llama-v2", 100.0, "x-canary: true")]
    reach = condition(obj, "AllBackendsReachable")
    assert (reach["status"], reach["reason"]) == ("True", "Reachable")
    assert "header-matched requests" in reach["message"]

    # The candidate goes away: its requests fall back to the default rule, which the route keeps.
    cluster.kubectl("delete", "maisb", "llama-v2", "-n", namespace)
    obj = wait_vm(kube, namespace, "llama", reason="BackendsLeftOut")
    wait_for(lambda: len((route(kube, namespace, "llama") or {}).get("spec", {}).get("rules", [])) == 1, 15,
             "the matched rule removed")
    assert "requests with x-canary: true go to the backends without matches" in condition(
        obj, "AllBackendsReachable")["message"]


INVALID_MATCHES = [
    ("""\
        - {name: a}
        - {name: b, matches: [{headers: [{name: X-AI-EG-Model, value: other}]}]}
     """, "x-ai-eg-model cannot be a match header: every rule of the route already matches it"),
    ("""\
        - {name: a}
        - {name: b, matches: [{headers: [{name: x-canary, value: "true"}, {name: x-canary, value: "false"}]}]}
     """, 'spec.backends[1].matches[0].headers[1]: Duplicate value: {"name":"x-canary"}'),
    ("""\
        - {name: a, matches: [{headers: [{name: x-canary, value: "true"}]}]}
     """, "at least one backend must have no matches: it serves the requests that match none"),
    ("""\
        - {name: a, weight: 0}
        - {name: b, matches: [{headers: [{name: x-canary, value: "true"}]}]}
     """, "tier 0 (priority 0) needs at least one backend with a positive weight among the backends without matches"),
    ("- {name: a}\n- {name: b, matches: [{headers: [" + ", ".join(f"{{name: x-h{i}, value: v}}" for i in range(16))
     + "]}]}\n", "must have at most 15 items"),
    ("- {name: a}\n- {name: b, matches: ["
     + ", ".join(f"{{headers: [{{name: x-user, value: u{i}}}]}}" for i in range(9)) + "]}\n",
     "must have at most 8 items"),
    ("""\
        - {name: a}
        - {name: b, matches: []}
     """, "should have at least 1 items"),
    ("""\
        - {name: a}
        - {name: b, matches: [{headers: [{name: "bad header", value: "1"}]}]}
     """, "spec.backends[1].matches[0].headers[0].name: Invalid value"),
    ("""\
        - {name: a}
        - {name: b, matches: [{headers: [{name: x-canary, value: "two  spaces"}]}]}
     """, "spec.backends[1].matches[0].headers[0].value: Invalid value"),
]


@pytest.mark.parametrize(("backends", "message"), INVALID_MATCHES, ids=[m for _, m in INVALID_MATCHES])
def test_invalid_matches_are_refused_by_kubectl_apply(
    cluster: Cluster, kube: Kube, namespace: str, backends: str, message: str
) -> None:
    result = cluster.kubectl("apply", "-n", namespace, "-f", "-", check=False,
                             stdin=vm_yaml("bad", "backends:\n" + textwrap.dedent(backends)))
    assert result.returncode != 0, "the VirtualModel should have been refused"
    assert message in result.stderr, result.stderr
    assert kube.get(VIRTUAL_MODEL, namespace, "bad") is None


def test_a_matched_inference_pool_may_share_tier_zero_with_the_default_backends(
    cluster: Cluster, kube: Kube, namespace: str
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=vm_yaml("ok", """\
        backends:
        - {name: a}
        - {name: pool, kind: InferencePool, matches: [{headers: [{name: x-canary, value: "true"}]}]}
    """))
    assert kube.get(VIRTUAL_MODEL, namespace, "ok") is not None
