"""The VirtualModel render function and reconciler, with plain data (no API server).

Every emitted object is also checked against the real upstream CRD schemas (types, required fields,
enums, patterns, limits, unknown fields) and, by hand, against the upstream CEL rules that apply to it.
"""

from __future__ import annotations

import copy
import os
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from model_traffic.api.common import GatewayRef
from model_traffic.api.virtualmodel import VirtualModelSpec
from model_traffic.reconcilers import virtualmodel as reconciler
from model_traffic.render.common import Child, Plan
from model_traffic.render.virtualmodel import (
    ObservedBackend,
    VirtualModelWorld,
    gateway_address,
    parse_gateway,
    render,
)

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM_CRDS = Path(os.environ.get("MODEL_TRAFFIC_UPSTREAM_CRDS", ROOT.parent / "shared" / "upstream-crds"))

READY = ObservedBackend(ready=True)
GATEWAY = GatewayRef(name="ai-gateway", namespace="envoy-gateway-system")


def spec(**fields: Any) -> VirtualModelSpec:
    base: dict[str, Any] = {"backends": [{"name": "openai"}]}
    base.update(fields)
    return VirtualModelSpec.model_validate(base)


def world(spec_: VirtualModelSpec | None = None, **fields: Any) -> VirtualModelWorld:
    """Every backend of spec_ Ready (as an AIServiceBackend-routed backend) unless fields say otherwise."""
    base: dict[str, Any] = {"namespace": "llm", "name": "gpt-4", "ai_gateway_version": "v1beta1",
                            "default_gateway": GATEWAY}
    if spec_ is not None:
        base["backends"] = {(b.kind, b.name): READY for b in spec_.backends}
    base.update(fields)
    return VirtualModelWorld(**base)


def plan_of(spec_: VirtualModelSpec, **fields: Any) -> Plan:
    plan = render(spec_, world(spec_, **fields))
    for child in plan.children:
        check_upstream(child)
    return plan


def child(plan: Plan, kind: str) -> dict[str, Any]:
    return next(c.body for c in plan.children if c.rtype.kind == kind)


def kinds(plan: Plan) -> list[str]:
    return [c.rtype.kind for c in plan.children]


def detail(plan: Plan, ctype: str) -> Any:
    return next(d for d in plan.details if d.type == ctype)


def shares(plan: Plan) -> dict[str, float]:
    return {b["name"]: b["sharePercent"] for b in plan.status["backends"]}


# --- a small checker of the upstream OpenAPI schemas --------------------------------------------------

CRD_FILES = {
    "AIGatewayRoute": "envoy-ai-gateway/aigateway.envoyproxy.io_aigatewayroutes.yaml",
    "BackendTrafficPolicy": "envoy-gateway/gateway.envoyproxy.io_backendtrafficpolicies.yaml",
}


@cache
def upstream_schema(kind: str, version: str) -> dict[str, Any]:
    path = UPSTREAM_CRDS / CRD_FILES[kind]
    if not path.is_file():
        pytest.skip(f"upstream CRDs not found at {UPSTREAM_CRDS}: set MODEL_TRAFFIC_UPSTREAM_CRDS")
    crd = yaml.safe_load(path.read_text())
    served = {v["name"]: v for v in crd["spec"]["versions"]}
    schema: dict[str, Any] = served[version]["schema"]["openAPIV3Schema"]
    return schema


def schema_errors(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """What the API server's structural schema validation would refuse (or silently prune)."""
    errors: list[str] = []
    kind = schema.get("type")
    types = {"object": dict, "array": list, "string": str, "boolean": bool}
    if kind in types and not isinstance(value, types[kind]):
        return [f"{path}: {value!r} is not {kind}"]
    if kind == "integer" and (not isinstance(value, int) or isinstance(value, bool)):
        return [f"{path}: {value!r} is not an integer"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", 1 << 30):
            errors.append(f"{path}: length of {value!r} out of bounds")
    out_of_range = isinstance(value, int) and not (schema.get("minimum", -(1 << 63)) <= value
                                                   <= schema.get("maximum", 1 << 63))
    if out_of_range:
        errors.append(f"{path}: {value} out of bounds")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", 1 << 30):
            errors.append(f"{path}: {len(value)} items out of bounds")
        for i, item in enumerate(value):
            errors += schema_errors(item, schema.get("items", {}), f"{path}[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties")
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{path}: missing required {name}")
        for name, item in value.items():
            if props is not None and name in props:
                errors += schema_errors(item, props[name], f"{path}.{name}")
            elif "additionalProperties" in schema and isinstance(schema["additionalProperties"], dict):
                errors += schema_errors(item, schema["additionalProperties"], f"{path}.{name}")
            elif props is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
                errors.append(f"{path}: unknown field {name}")
    return errors


def route_cel_errors(route: dict[str, Any]) -> list[str]:
    """The AIGatewayRoute CEL rules, by hand."""
    errors = []
    for ref in route["spec"].get("parentRefs", []):
        if ref.get("kind", "Gateway") != "Gateway":
            errors.append("only Gateway is supported")
    for i, rule in enumerate(route["spec"]["rules"]):
        refs = rule.get("backendRefs") or []
        typed = [("group" in r, "kind" in r) for r in refs]
        if any(g != k for g, k in typed):
            errors.append(f"rule {i}: group and kind must be specified together")
        if any(r.get("group") not in (None, "inference.networking.k8s.io") or
               ("group" in r and r.get("kind") != "InferencePool") for r in refs):
            errors.append(f"rule {i}: only InferencePool from inference.networking.k8s.io group is supported")
        if refs and not (all(not g for g, _ in typed) or all(g for g, _ in typed)):
            errors.append(f"rule {i}: cannot mix InferencePool and AIServiceBackend references in the same rule")
        if any(g for g, _ in typed) and len(refs) != 1:
            errors.append(f"rule {i}: only one InferencePool backend is allowed per rule")
        if rule.get("name") == "route-not-found":
            errors.append(f"rule {i}: reserved name")
    return errors


def policy_cel_errors(policy: dict[str, Any]) -> list[str]:
    """The BackendTrafficPolicy CEL rules that our output can touch, by hand."""
    spec_ = policy["spec"]
    errors = []
    if ("targetRef" in spec_) == ("targetRefs" in spec_):
        errors.append("either targetRef or targetRefs must be used")
    for ref in spec_.get("targetRefs", []):
        if ref["group"] != "gateway.networking.k8s.io" or ref["kind"] not in ("Gateway", "HTTPRoute", "GRPCRoute"):
            errors.append("bad targetRef")
    lb = spec_.get("loadBalancer")
    if lb and (lb["type"] == "ConsistentHash") != ("consistentHash" in lb):
        errors.append("If LoadBalancer type is consistentHash, consistentHash field needs to be set.")
    hashing = (lb or {}).get("consistentHash")
    if hashing and (hashing["type"] == "Header") != ("header" in hashing):
        errors.append("If consistent hash type is header, the header field must be set.")
    for rule in (spec_.get("rateLimit") or {}).get("global", {}).get("rules", []):
        for selector in rule.get("clientSelectors", []):
            if not any(k in selector for k in ("headers", "methods", "path", "sourceCIDR", "queryParams")):
                errors.append("at least one of headers, ... must be specified")
            for header in selector.get("headers", []):
                if header.get("type") == "Distinct" and "value" in header:
                    errors.append("Distinct headers carry no value")
        for side in (rule.get("cost") or {}).values():
            if "number" in side and "metadata" in side:
                errors.append("only one of number or metadata can be specified")
    return errors


def check_upstream(child_: Child) -> None:
    body = child_.body
    group, _, version = body["apiVersion"].rpartition("/")
    assert group == child_.rtype.group
    schema = upstream_schema(body["kind"], version)
    errors = schema_errors({k: v for k, v in body.items() if k != "metadata"},
                           {**schema, "properties": {k: v for k, v in schema["properties"].items() if k != "metadata"}})
    errors += route_cel_errors(body) if body["kind"] == "AIGatewayRoute" else policy_cel_errors(body)
    assert errors == [], f"{body['kind']} refused by the upstream schema: {errors}"


def test_the_checker_catches_what_the_api_server_refuses() -> None:
    bad_route = {"apiVersion": "aigateway.envoyproxy.io/v1beta1", "kind": "AIGatewayRoute",
                 "metadata": {"name": "x"},
                 "spec": {"rules": [{"backendRefs": [
                     {"name": "a", "weight": -1},
                     {"name": "p", "group": "inference.networking.k8s.io", "kind": "InferencePool"}],
                     "matches": [{"headers": [{"name": "x-ai-eg-model", "value": "m", "type": "Prefix"}]}],
                     "unknown": 1}]}}
    schema = upstream_schema("AIGatewayRoute", "v1beta1")
    errors = schema_errors(bad_route["spec"], schema["properties"]["spec"])
    assert any("weight" in e for e in errors)
    assert any("Prefix" in e for e in errors)
    assert any("unknown field unknown" in e for e in errors)
    assert any("cannot mix" in e for e in route_cel_errors(bad_route))


# --- the route ---------------------------------------------------------------------------------------

ISSUE_EXAMPLE: dict[str, Any] = {
    "modelName": "gpt-4",
    "gatewayRefs": [{"name": "ai-gateway", "namespace": "envoy-gateway-system"}],
    "backends": [
        {"name": "openai", "modelNameOverride": "gpt-4o", "weight": 80},
        {"name": "azure", "modelNameOverride": "gpt-4o-eu", "weight": 20},
        {"name": "anthropic", "modelNameOverride": "claude-sonnet-4", "priority": 1},
        {"name": "raw-backend", "kind": "AIServiceBackend"},
    ],
    "retry": {"attempts": 3, "perTryTimeout": "30s",
              "retryOn": {"statusCodes": [500, 502, 503], "triggers": ["connect-failure", "retriable-status-codes"]}},
    "timeouts": {"request": "120s"},
    "loadBalancer": {"type": "LeastRequest"},
    "healthCheck": {"passive": {"consecutive5XxErrors": 5, "interval": "10s", "baseEjectionTime": "30s"}},
    "rateLimit": {"tenantHeader": "x-tenant-id", "tokens": {"limit": 100000, "unit": "Hour"},
                  "requests": {"limit": 600, "unit": "Minute"}},
    "llmRequestCosts": [{"metadataKey": "llm_total_token", "type": "TotalToken"}],
}


def test_the_issue_example_becomes_a_route_and_a_traffic_policy() -> None:
    s = VirtualModelSpec.model_validate(ISSUE_EXAMPLE)
    plan = plan_of(s)
    assert kinds(plan) == ["AIGatewayRoute", "BackendTrafficPolicy"]
    route = child(plan, "AIGatewayRoute")
    assert route["apiVersion"] == "aigateway.envoyproxy.io/v1beta1"
    assert route["metadata"] == {"name": "gpt-4"}
    assert route["spec"]["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "ai-gateway",
         "namespace": "envoy-gateway-system"}]
    assert route["spec"]["rules"] == [{
        "matches": [{"headers": [{"type": "Exact", "name": "x-ai-eg-model", "value": "gpt-4"}]}],
        "backendRefs": [
            {"name": "openai", "weight": 80, "priority": 0, "modelNameOverride": "gpt-4o"},
            {"name": "azure", "weight": 20, "priority": 0, "modelNameOverride": "gpt-4o-eu"},
            {"name": "anthropic", "weight": 1, "priority": 1, "modelNameOverride": "claude-sonnet-4"},
            {"name": "raw-backend", "weight": 1, "priority": 0},
        ],
        "timeouts": {"request": "120s"},
    }]
    assert route["spec"]["llmRequestCosts"] == [{"metadataKey": "llm_total_token", "type": "TotalToken"}]
    assert plan.verdict.state == "Ready"
    assert plan.status["route"] == "gpt-4"
    assert plan.status["modelName"] == "gpt-4"
    assert plan.status["backendSummary"] == "4/4"
    assert plan.prune == []


def test_weighted_split_and_share_percent_within_each_tier() -> None:
    s = spec(backends=[{"name": "openai", "weight": 80}, {"name": "azure", "weight": 20},
                       {"name": "anthropic", "priority": 1}, {"name": "bedrock", "priority": 1, "weight": 3}])
    plan = plan_of(s)
    assert shares(plan) == {"openai": 80.0, "azure": 20.0, "anthropic": 25.0, "bedrock": 75.0}
    assert [(b["tier"], b["ready"]) for b in plan.status["backends"]] == [(0, True), (0, True), (1, True), (1, True)]
    uneven = plan_of(spec(backends=[{"name": "a", "weight": 1}, {"name": "b", "weight": 2}]))
    assert shares(uneven) == {"a": 33.33, "b": 66.67}


def test_model_name_defaults_to_the_object_name_and_costs_to_total_tokens() -> None:
    plan = plan_of(spec())
    route = child(plan, "AIGatewayRoute")
    assert route["spec"]["rules"][0]["matches"][0]["headers"][0]["value"] == "gpt-4"
    assert route["spec"]["llmRequestCosts"] == [{"metadataKey": "llm_total_token", "type": "TotalToken"}]
    assert "timeouts" not in route["spec"]["rules"][0]
    assert plan.status["modelName"] == "gpt-4"
    # Nothing calls for a traffic policy: none is written, a stale one is pruned.
    assert kinds(plan) == ["AIGatewayRoute"]
    assert [p.kind for p in plan.prune] == ["BackendTrafficPolicy"]


def test_custom_llm_request_costs_pass_through() -> None:
    costs = [{"metadataKey": "in", "type": "InputToken"},
             {"metadataKey": "weighted", "type": "CEL", "cel": "input_tokens + output_tokens * 4"}]
    route = child(plan_of(spec(llmRequestCosts=costs)), "AIGatewayRoute")
    assert route["spec"]["llmRequestCosts"] == costs


def test_writes_the_discovered_ai_gateway_version() -> None:
    s = VirtualModelSpec.model_validate(ISSUE_EXAMPLE)
    plan = plan_of(s, ai_gateway_version="v1alpha1")
    assert child(plan, "AIGatewayRoute")["apiVersion"] == "aigateway.envoyproxy.io/v1alpha1"
    assert plan.children[0].rtype.version == "v1alpha1"


def test_no_ai_gateway_installed_is_stalled_and_writes_nothing() -> None:
    plan = render(spec(), world(spec(), ai_gateway_version=None))
    assert (plan.verdict.state, plan.verdict.reason) == ("Stalled", "AIGatewayNotInstalled")
    assert plan.children == []


def test_parent_refs_come_from_spec_or_the_default_gateway() -> None:
    s = spec(gatewayRefs=[{"name": "gw", "sectionName": "http"}, {"name": "other", "namespace": "infra"}])
    assert child(plan_of(s), "AIGatewayRoute")["spec"]["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw", "sectionName": "http"},
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "other", "namespace": "infra"},
    ]
    assert child(plan_of(spec()), "AIGatewayRoute")["spec"]["parentRefs"][0]["name"] == "ai-gateway"
    none = render(spec(), world(spec(), default_gateway=None))
    assert (none.verdict.state, none.verdict.reason) == ("Stalled", "NoGateway")
    assert none.children == []
    assert {p.kind for p in none.prune} == {"AIGatewayRoute", "BackendTrafficPolicy"}


def test_parse_gateway_setting() -> None:
    assert parse_gateway("envoy-gateway-system/ai-gateway") == GatewayRef(name="ai-gateway",
                                                                            namespace="envoy-gateway-system")
    assert parse_gateway("ai-gateway") == GatewayRef(name="ai-gateway")
    assert parse_gateway("") is None
    assert parse_gateway(None) is None
    assert parse_gateway("Not A Name/x") is None


# --- every kind of backend reference ----------------------------------------------------------------

def test_every_kind_of_backend_reference() -> None:
    s = spec(backends=[
        {"name": "openai"},                                          # ManagedAIServiceBackend, backend level
        {"name": "raw", "kind": "AIServiceBackend", "weight": 3},    # unmanaged AIServiceBackend
        {"name": "vllm", "priority": 1},                             # ManagedAIServiceBackend on a pool
        {"name": "pool", "kind": "InferencePool", "priority": 2},    # an InferencePool itself
    ])
    backends = {
        ("ManagedAIServiceBackend", "openai"): READY,
        ("AIServiceBackend", "raw"): READY,
        ("ManagedAIServiceBackend", "vllm"): ObservedBackend(ready=True, routing="InferencePool",
                                                             inference_pool="vllm-pool"),
        ("InferencePool", "pool"): ObservedBackend(ready=True, routing="InferencePool", inference_pool="pool"),
    }
    plan = plan_of(s, backends=backends)
    rules = child(plan, "AIGatewayRoute")["spec"]["rules"]
    assert [r["backendRefs"] for r in rules] == [
        [{"name": "openai", "weight": 1, "priority": 0}, {"name": "raw", "weight": 3, "priority": 0}],
        [{"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "vllm-pool"}],
        [{"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "pool"}],
    ]
    assert all(r["matches"] == rules[0]["matches"] for r in rules)
    # Only the first rule of equal matches gets traffic: the status says so instead of promising fallback.
    reach = detail(plan, "AllBackendsReachable")
    assert (reach.ok, reach.reason) == (False, "ShadowedRules")
    assert "ManagedAIServiceBackend vllm" in reach.message and "InferencePool pool" in reach.message
    assert shares(plan) == {"openai": 25.0, "raw": 75.0, "vllm": 0.0, "pool": 0.0}
    assert plan.status["backendSummary"] == "4/4"
    assert plan.verdict.state == "Ready"


def test_an_inference_pool_in_tier_zero_gets_the_first_rule_with_its_model_name_override() -> None:
    s = spec(backends=[{"name": "pool", "kind": "InferencePool", "modelNameOverride": "llama-3-8b"},
                       {"name": "openai", "priority": 1}])
    plan = plan_of(s)
    rules = child(plan, "AIGatewayRoute")["spec"]["rules"]
    assert rules[0]["backendRefs"] == [{"group": "inference.networking.k8s.io", "kind": "InferencePool",
                                        "name": "pool", "modelNameOverride": "llama-3-8b"}]
    assert rules[1]["backendRefs"] == [{"name": "openai", "weight": 1, "priority": 1}]
    assert shares(plan) == {"pool": 100.0, "openai": 0.0}
    # The AIServiceBackends' rule is not the live one, so there is no fallback tier to retry into.
    assert "BackendTrafficPolicy" not in kinds(plan)


def test_an_inference_pool_alone_is_one_reachable_rule() -> None:
    plan = plan_of(spec(backends=[{"name": "pool", "kind": "InferencePool"}]))
    assert len(child(plan, "AIGatewayRoute")["spec"]["rules"]) == 1
    assert detail(plan, "AllBackendsReachable").ok is True
    assert shares(plan) == {"pool": 100.0}


def test_upstream_rule_limits_are_respected() -> None:
    backends: list[dict[str, Any]] = [{"name": f"m{i}"} for i in range(3)]
    observed: dict[tuple[str, str], ObservedBackend | None] = {
        ("ManagedAIServiceBackend", f"m{i}"): READY for i in range(3)}
    for i in range(20):
        backends.append({"name": f"p{i}", "kind": "ManagedAIServiceBackend", "priority": 1})
        observed[("ManagedAIServiceBackend", f"p{i}")] = ObservedBackend(
            ready=True, routing="InferencePool", inference_pool=f"pool-{i}")
    plan = plan_of(spec(backends=backends), backends=observed)
    assert len(child(plan, "AIGatewayRoute")["spec"]["rules"]) == 15
    reach = detail(plan, "AllBackendsReachable")
    assert "beyond the AIGatewayRoute limits" in reach.message and "p19" in reach.message


# --- missing and unready backends -----------------------------------------------------------------------

def test_missing_and_unready_backends_are_left_out_and_named() -> None:
    s = spec(backends=[{"name": "openai", "weight": 80}, {"name": "azure", "weight": 20},
                       {"name": "raw", "kind": "AIServiceBackend"}])
    backends = {
        ("ManagedAIServiceBackend", "openai"): READY,
        ("ManagedAIServiceBackend", "azure"): ObservedBackend(ready=False, message="SecretNotFound: no Secret"),
        ("AIServiceBackend", "raw"): None,
    }
    plan = plan_of(s, backends=backends)
    refs = child(plan, "AIGatewayRoute")["spec"]["rules"][0]["backendRefs"]
    assert [r["name"] for r in refs] == ["openai"]
    resolved = detail(plan, "BackendsResolved")
    assert (resolved.ok, resolved.reason) == (False, "BackendsNotFound")
    assert "AIServiceBackend raw not found" in resolved.message
    assert "ManagedAIServiceBackend azure not Ready (SecretNotFound: no Secret)" in resolved.message
    assert plan.status["backendSummary"] == "1/3"
    assert shares(plan) == {"openai": 100.0, "azure": 0.0, "raw": 0.0}
    assert [b["ready"] for b in plan.status["backends"]] == [True, False, False]
    assert (plan.verdict.state, plan.verdict.reason) == ("Ready", "BackendsLeftOut")
    assert "azure" in plan.verdict.message and "raw" in plan.verdict.message

    only_unready = plan_of(s, backends={**backends, ("AIServiceBackend", "raw"): READY})
    assert detail(only_unready, "BackendsResolved").reason == "BackendsNotReady"


def test_no_backend_resolves_writes_no_route_and_stalls() -> None:
    s = spec(backends=[{"name": "openai"}, {"name": "azure"}], retry={"attempts": 2})
    plan = render(s, world(s, backends={("ManagedAIServiceBackend", "openai"): None,
                                        ("ManagedAIServiceBackend", "azure"): ObservedBackend(ready=False)}))
    assert plan.children == []
    assert {p.kind for p in plan.prune} == {"AIGatewayRoute", "BackendTrafficPolicy"}
    assert (plan.verdict.state, plan.verdict.reason) == ("Stalled", "BackendsNotFound")
    assert "openai not found" in plan.verdict.message and "azure not Ready" in plan.verdict.message
    assert plan.status["backendSummary"] == "0/2"
    assert "route" not in plan.status


def test_recovery_when_the_missing_backend_appears() -> None:
    s = spec(backends=[{"name": "openai"}, {"name": "azure"}])
    before = plan_of(s, backends={("ManagedAIServiceBackend", "openai"): READY,
                                  ("ManagedAIServiceBackend", "azure"): None})
    after = plan_of(s)
    assert len(child(before, "AIGatewayRoute")["spec"]["rules"][0]["backendRefs"]) == 1
    assert len(child(after, "AIGatewayRoute")["spec"]["rules"][0]["backendRefs"]) == 2
    assert detail(after, "BackendsResolved").ok is True
    assert (after.verdict.state, after.verdict.reason) == ("Ready", "Ready")


def test_observed_managed_backend_from_its_status() -> None:
    ready: dict[str, Any] = {"metadata": {"generation": 2},
             "status": {"observedGeneration": 2, "routing": "Backend",
                        "conditions": [{"type": "Ready", "status": "True", "reason": "Ready"}]}}
    assert ObservedBackend.from_managed_backend(ready) == ObservedBackend(ready=True)
    pool = copy.deepcopy(ready)
    pool["status"].update(routing="InferencePool", inferencePool="vllm-pool")
    assert ObservedBackend.from_managed_backend(pool) == ObservedBackend(
        ready=True, routing="InferencePool", inference_pool="vllm-pool")
    stale = copy.deepcopy(ready)
    stale["metadata"]["generation"] = 3
    assert ObservedBackend.from_managed_backend(stale).ready is False
    failing = {"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "SecretNotFound",
                                          "message": "Secret k not found"}]}}
    assert ObservedBackend.from_managed_backend(failing) == ObservedBackend(
        ready=False, message="SecretNotFound: Secret k not found")
    assert ObservedBackend.from_managed_backend({}).message == "it has no Ready condition yet"


# --- the traffic policy --------------------------------------------------------------------------------

def test_fallback_without_retry_gets_the_documented_default_and_says_so() -> None:
    s = spec(backends=[{"name": "openai"}, {"name": "anthropic", "priority": 1}])
    plan = plan_of(s)
    policy = child(plan, "BackendTrafficPolicy")
    assert policy["apiVersion"] == "gateway.envoyproxy.io/v1alpha1"
    assert policy["metadata"] == {"name": "gpt-4"}
    assert policy["spec"] == {
        "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "gpt-4"}],
        "retry": {"numAttemptsPerPriority": 1, "numRetries": 5,
                  "perRetry": {"backOff": {"baseInterval": "100ms", "maxInterval": "10s"}},
                  "retryOn": {"triggers": ["5xx", "connect-failure"]}},
    }
    retry = detail(plan, "RetryPolicy")
    assert (retry.ok, retry.reason) == (True, "FallbackDefault")
    assert "numAttemptsPerPriority 1" in retry.message


def test_fallback_tier_left_out_needs_no_retry() -> None:
    s = spec(backends=[{"name": "openai"}, {"name": "anthropic", "priority": 1}])
    plan = plan_of(s, backends={("ManagedAIServiceBackend", "openai"): READY,
                                ("ManagedAIServiceBackend", "anthropic"): None})
    assert kinds(plan) == ["AIGatewayRoute"]
    assert detail(plan, "RetryPolicy").reason == "NotConfigured"


def test_retry_from_spec_with_fallback_moves_to_the_next_tier() -> None:
    s = spec(backends=[{"name": "openai"}, {"name": "anthropic", "priority": 1}],
             retry={"attempts": 3, "perTryTimeout": "30s", "retryOn": {"statusCodes": [500, 503],
                                                                      "triggers": ["connect-failure"]}})
    plan = plan_of(s)
    assert child(plan, "BackendTrafficPolicy")["spec"]["retry"] == {
        "numRetries": 3, "numAttemptsPerPriority": 1, "perRetry": {"timeout": "30s"},
        "retryOn": {"httpStatusCodes": [500, 503], "triggers": ["connect-failure", "retriable-status-codes"]},
    }
    assert detail(plan, "RetryPolicy").reason == "Configured"
    no_retries = plan_of(spec(backends=[{"name": "openai"}, {"name": "anthropic", "priority": 1}],
                              retry={"attempts": 0}))
    assert (detail(no_retries, "RetryPolicy").ok, detail(no_retries, "RetryPolicy").reason) == (
        False, "NoRetriesForFallback")


def test_retry_without_fallback() -> None:
    plan = plan_of(spec(retry={"retryOn": {"statusCodes": [429]}}))
    assert child(plan, "BackendTrafficPolicy")["spec"]["retry"] == {
        "numRetries": 2, "retryOn": {"httpStatusCodes": [429], "triggers": ["retriable-status-codes"]}}


def test_rate_limits_per_tenant_tokens_and_requests() -> None:
    s = VirtualModelSpec.model_validate(ISSUE_EXAMPLE)
    policy = child(plan_of(s), "BackendTrafficPolicy")["spec"]
    tenant = [{"headers": [{"name": "x-tenant-id", "type": "Distinct"}]}]
    assert policy["rateLimit"] == {"type": "Global", "global": {"rules": [
        {"clientSelectors": tenant, "limit": {"requests": 100000, "unit": "Hour"},
         "cost": {"request": {"from": "Number", "number": 0},
                  "response": {"from": "Metadata",
                               "metadata": {"namespace": "io.envoy.ai_gateway", "key": "llm_total_token"}}}},
        {"clientSelectors": tenant, "limit": {"requests": 600, "unit": "Minute"}},
    ]}}
    assert policy["targetRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "gpt-4"}]


def test_rate_limit_without_tenant_is_one_shared_budget_charged_from_the_route_costs() -> None:
    costs = [{"metadataKey": "in", "type": "InputToken"}, {"metadataKey": "total", "type": "TotalToken"}]
    policy = child(plan_of(spec(rateLimit={"tokens": {"limit": 5000, "unit": "Day"}}, llmRequestCosts=costs)),
                   "BackendTrafficPolicy")["spec"]
    [rule] = policy["rateLimit"]["global"]["rules"]
    assert "clientSelectors" not in rule
    assert rule["cost"]["response"]["metadata"]["key"] == "total"
    only_requests = child(plan_of(spec(rateLimit={"requests": {"limit": 10, "unit": "Second"}})),
                          "BackendTrafficPolicy")["spec"]
    assert only_requests["rateLimit"]["global"]["rules"] == [{"limit": {"requests": 10, "unit": "Second"}}]


@pytest.mark.parametrize(("load_balancer", "expected"), [
    ({"type": "RoundRobin"}, {"type": "RoundRobin"}),
    ({"type": "LeastRequest"}, {"type": "LeastRequest"}),
    ({"type": "Random"}, {"type": "Random"}),
    ({"type": "ConsistentHash"}, {"type": "ConsistentHash", "consistentHash": {"type": "SourceIP"}}),
    ({"type": "ConsistentHash", "hashHeader": "x-session"},
     {"type": "ConsistentHash", "consistentHash": {"type": "Header", "header": {"name": "x-session"}}}),
])
def test_load_balancer(load_balancer: dict[str, Any], expected: dict[str, Any]) -> None:
    policy = child(plan_of(spec(loadBalancer=load_balancer)), "BackendTrafficPolicy")["spec"]
    assert policy["loadBalancer"] == expected
    assert "retry" not in policy


def test_passive_health_check() -> None:
    plan = plan_of(spec(healthCheck={"passive": {"consecutive5XxErrors": 5, "interval": "10s",
                                                 "baseEjectionTime": "30s"}}))
    assert child(plan, "BackendTrafficPolicy")["spec"]["healthCheck"] == {
        "passive": {"consecutive5XxErrors": 5, "interval": "10s", "baseEjectionTime": "30s"}}
    assert kinds(plan_of(spec(healthCheck={}))) == ["AIGatewayRoute"]


# --- status: acceptance, address, conflicts --------------------------------------------------------------

def test_upstream_acceptance_is_mirrored() -> None:
    s = spec()
    accepted = plan_of(s, route_status={"conditions": [{"type": "Accepted", "status": "True", "message": "ok"}]})
    assert (detail(accepted, "Accepted").ok, detail(accepted, "Accepted").message) == (True, "ok")
    refused = plan_of(s, route_status={"conditions": [{"type": "NotAccepted", "status": "True",
                                                       "message": "AIServiceBackend openai not found"}]})
    assert (refused.verdict.state, refused.verdict.reason) == ("Stalled", "NotAccepted")
    assert "openai not found" in refused.verdict.message
    by_gateway = plan_of(s, http_route_status={"parents": [{"parentRef": {"name": "ai-gateway"}, "conditions": [
        {"type": "Accepted", "status": "True"},
        {"type": "ResolvedRefs", "status": "False", "reason": "BackendNotFound", "message": "no Backend"}]}]})
    assert by_gateway.verdict.reason == "NotAccepted"
    assert "Gateway ai-gateway: ResolvedRefs=False (BackendNotFound): no Backend" in by_gateway.verdict.message
    silent = plan_of(s)
    assert (detail(silent, "Accepted").ok, silent.verdict.state) == (None, "Ready")


def test_gateway_address() -> None:
    gateway = {"spec": {"listeners": [{"name": "http", "port": 80}, {"name": "alt", "port": 8080}]},
               "status": {"addresses": [{"type": "IPAddress", "value": "10.0.0.9"}]}}
    assert gateway_address(gateway) == "10.0.0.9"
    assert gateway_address(gateway, "alt") == "10.0.0.9:8080"
    assert gateway_address({"status": {}}) is None
    assert gateway_address(None) is None
    assert plan_of(spec(), gateway_address="10.0.0.9").status["address"] == "10.0.0.9"


def test_duplicate_model_name_is_refused_and_writes_no_route() -> None:
    plan = render(spec(), world(spec(), claimed_elsewhere="team-a/gpt-4"))
    assert (plan.verdict.state, plan.verdict.reason) == ("Stalled", "ModelNameConflict")
    assert "VirtualModel team-a/gpt-4" in plan.verdict.message and "'gpt-4'" in plan.verdict.message
    assert plan.children == []
    assert {p.kind for p in plan.prune} == {"AIGatewayRoute", "BackendTrafficPolicy"}
    assert shares(plan) == {"openai": 0.0}


def vm(namespace: str, name: str, created: str, **spec_: Any) -> dict[str, Any]:
    return {"apiVersion": "modeltraffic.io/v1alpha1", "kind": "VirtualModel",
            "metadata": {"namespace": namespace, "name": name, "creationTimestamp": created, "uid": f"{name}-uid",
                         "generation": 1},
            "spec": {"backends": [{"name": "openai"}], **spec_}}


def test_the_oldest_virtual_model_owns_a_model_name_on_a_gateway() -> None:
    gw = "envoy-gateway-system/ai-gateway"
    old = vm("a", "gpt-4", "2025-01-01T00:00:00Z")
    new = vm("b", "chat", "2025-02-01T00:00:00Z", modelName="gpt-4")
    elsewhere = vm("c", "gpt-4", "2024-01-01T00:00:00Z", gatewayRefs=[{"name": "internal"}])
    everyone = [old, new, elsewhere]
    assert reconciler.claimant(new, everyone, gw) == "a/gpt-4"
    assert reconciler.claimant(old, everyone, gw) is None
    assert reconciler.claimant(elsewhere, everyone, gw) is None  # another gateway: no conflict
    twin = vm("a", "gpt-3", "2025-01-01T00:00:00Z", modelName="gpt-4")  # same second: by namespace, name
    assert reconciler.claimant(old, [old, twin], gw) == "a/gpt-3"
    assert reconciler.claimant(twin, [old, twin], gw) is None
    leaving = copy.deepcopy(old)
    leaving["metadata"]["deletionTimestamp"] = "2025-03-01T00:00:00Z"
    assert reconciler.claimant(new, [leaving, new], gw) is None
    assert reconciler.claimant(new, everyone, None) is None  # no gateway at all: nothing is served


def test_references_index_every_backend_and_the_gateway() -> None:
    s = {"backends": [{"name": "openai"}, {"name": "raw", "kind": "AIServiceBackend"},
                      {"name": "pool", "kind": "InferencePool"}]}
    assert reconciler.references("llm", "gpt-4", s) == {
        ("llm", "ManagedAIServiceBackend", "openai"): "gpt-4",
        ("llm", "AIServiceBackend", "raw"): "gpt-4",
        ("llm", "InferencePool", "pool"): "gpt-4",
    }
    assert reconciler.gateway_references("llm", "gpt-4", s, "envoy-gateway-system/ai-gateway") == {
        ("envoy-gateway-system", "Gateway", "ai-gateway"): ("llm", "gpt-4")}
    assert reconciler.gateway_references("llm", "gpt-4", {**s, "gatewayRefs": [{"name": "gw"}]}, None) == {
        ("llm", "Gateway", "gw"): ("llm", "gpt-4")}
    assert reconciler.gateway_references("llm", "gpt-4", s, None) == {}
    assert reconciler.model_names("llm", "gpt-4", {"modelName": "chat"}) == {"chat": ("llm", "gpt-4")}
    assert reconciler.model_names("llm", "gpt-4", {}) == {"gpt-4": ("llm", "gpt-4")}
