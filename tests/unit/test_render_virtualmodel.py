"""The VirtualModel render function and reconciler, with plain data (no API server).

Every emitted object is also checked against the real upstream CRD schemas (types, required fields,
enums, patterns, limits, unknown fields) and, by hand, against the upstream CEL rules that apply to it.
"""

from __future__ import annotations

import copy
import re
import shutil
from functools import cache
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from model_traffic.kinds.common import GatewayRef
from model_traffic.kinds.virtualmodel import reconcile as reconciler
from model_traffic.kinds.virtualmodel.render import (
    ObservedBackend,
    VirtualModelWorld,
    alternatives,
    backend_key,
    describe_alternatives,
    gateway_address,
    missing_grants,
    parse_gateway,
    render,
)
from model_traffic.kinds.virtualmodel.spec import VirtualModelSpec
from model_traffic.pipeline.plan import Child, Plan
from model_traffic_dev import crdgen
from model_traffic_dev.localcluster import upstream
from tests.support import prerequisites

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
        base["backends"] = {backend_key(b): READY for b in spec_.backends}
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

# Read out of the released Go modules the local stack installs (fetched once into the Go module cache).
CRD_FILES = {
    "AIGatewayRoute": (upstream.ENVOY_AI_GATEWAY,
                       "manifests/charts/ai-gateway-crds-helm/templates/aigateway.envoyproxy.io_aigatewayroutes.yaml"),
    "BackendTrafficPolicy": (upstream.ENVOY_GATEWAY, "charts/gateway-helm/charts/crds/crds/generated/"
                                                     "gateway.envoyproxy.io_backendtrafficpolicies.yaml"),
    "HTTPRoute": (upstream.ENVOY_GATEWAY, "charts/gateway-helm/charts/crds/crds/gatewayapi-crds.yaml"),
    "SecurityPolicy": (upstream.ENVOY_GATEWAY, "charts/gateway-helm/charts/crds/crds/generated/"
                                               "gateway.envoyproxy.io_securitypolicies.yaml"),
}


@cache
def upstream_schema(kind: str, version: str) -> dict[str, Any]:
    if shutil.which("go") is None:
        prerequisites.missing("go (the upstream CRDs are read from their Go modules)")
    path = upstream.crd_file(*CRD_FILES[kind])
    crd = next(d for d in yaml.safe_load_all(path.read_text()) if d and d["spec"]["names"]["kind"] == kind)
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


def http_route_of(route: dict[str, Any]) -> dict[str, Any]:
    """The HTTPRoute Envoy AI Gateway makes of an AIGatewayRoute (internal/controller/ai_gateway_route.go,
    newHTTPRoute, v1.1): one rule per rule in order, each match's headers with the root path prefix, the
    AIServiceBackends replaced by their Envoy Gateway Backends, and a catch-all route-not-found rule last."""
    prefix = {"type": "PathPrefix", "value": "/"}
    rules = []
    for rule in route["spec"]["rules"]:
        refs = [{"group": r["group"], "kind": r["kind"], "name": r["name"], "weight": r.get("weight", 1)}
                if "group" in r else
                {"group": "gateway.envoyproxy.io", "kind": "Backend", "name": r["name"], "weight": r.get("weight", 1)}
                for r in rule["backendRefs"]]
        rules.append({"matches": [{"headers": m["headers"], "path": prefix} for m in rule["matches"]],
                      "backendRefs": refs, "timeouts": rule.get("timeouts", {"request": "60s"})})
    rules.append({"name": "route-not-found", "matches": [{"path": prefix}]})
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "spec": {"parentRefs": route["spec"]["parentRefs"], "rules": rules}}


def http_route_cel_errors(http_route: dict[str, Any]) -> list[str]:
    """The HTTPRoute CEL rules our routes can touch, by hand."""
    rules = http_route["spec"]["rules"]
    errors = []
    if sum(len(r.get("matches", [])) for r in rules) > 128:
        errors.append("the total number of matches across all rules in a route must be less than 128")
    for i, rule in enumerate(rules):
        for match in rule.get("matches", []):
            names = [h["name"] for h in match.get("headers", [])]
            if len(names) != len(set(names)):
                errors.append(f"rule {i}: duplicate header name (list-map key)")
    return errors


def check_upstream(child_: Child) -> None:
    body = child_.body
    group, _, version = body["apiVersion"].rpartition("/")
    assert group == child_.rtype.group
    errors = upstream_errors(body, version)
    if body["kind"] == "AIGatewayRoute":
        errors += route_cel_errors(body)
        http_route = http_route_of(body)
        errors += [f"HTTPRoute: {e}" for e in upstream_errors(http_route, "v1") + http_route_cel_errors(http_route)]
    else:
        errors += policy_cel_errors(body)
    assert errors == [], f"{body['kind']} refused by the upstream schema: {errors}"


def upstream_errors(body: dict[str, Any], version: str) -> list[str]:
    schema = upstream_schema(body["kind"], version)
    return schema_errors({k: v for k, v in body.items() if k != "metadata"},
                         {**schema, "properties": {k: v for k, v in schema["properties"].items() if k != "metadata"}})


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
    # What the AIGatewayRoute schema lets through but the HTTPRoute the AI Gateway makes of it does not.
    loose = {"apiVersion": "aigateway.envoyproxy.io/v1beta1", "kind": "AIGatewayRoute", "metadata": {"name": "x"},
             "spec": {"parentRefs": [], "rules": [{"backendRefs": [{"name": "a"}], "matches": [
                 {"headers": [{"type": "Exact", "name": "x-ai-eg-model", "value": "m"},
                              {"type": "Exact", "name": "x-team", "value": "two  spaces"}]}] * 10}] * 13}}
    assert upstream_errors(loose, "v1beta1") == []
    http_route = http_route_of(loose)
    assert any("two  spaces" in e and "does not match" in e for e in upstream_errors(http_route, "v1"))
    assert any("less than 128" in e for e in http_route_cel_errors(http_route))


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
    assert [p.kind for p in plan.prune] == ["SecurityPolicy"]  # no spec.auth


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
    assert [p.kind for p in plan.prune] == ["SecurityPolicy", "BackendTrafficPolicy"]


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
    assert {p.kind for p in none.prune} == {"AIGatewayRoute", "BackendTrafficPolicy", "SecurityPolicy"}


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
    assert {p.kind for p in plan.prune} == {"AIGatewayRoute", "BackendTrafficPolicy", "SecurityPolicy"}
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


def test_a_backend_awaiting_its_controllers_reads_the_same_whichever_child_it_still_awaits() -> None:
    def awaiting(message: str) -> dict[str, Any]:
        return {"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "AwaitingControllers",
                                           "message": message}]}}

    first = ObservedBackend.from_managed_backend(awaiting("waiting for Envoy Gateway to report on Backend/b"))
    then = ObservedBackend.from_managed_backend(awaiting("waiting for AI Gateway to report on AIServiceBackend/b"))
    # So a VirtualModel's status, which quotes it, is not written again as each controller reports.
    assert first == then and first.ready is False and first.message.startswith("AwaitingControllers: ")


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
    absent = [{"headers": [{"name": "x-tenant-id", "type": "RegularExpression", "value": ".*", "invert": True}]}]
    assert policy["rateLimit"] == {"type": "Global", "global": {"rules": [
        {"clientSelectors": tenant, "limit": {"requests": 100000, "unit": "Hour"},
         "cost": {"request": {"from": "Number", "number": 0},
                  "response": {"from": "Metadata",
                               "metadata": {"namespace": "io.envoy.ai_gateway", "key": "llm_total_token"}}}},
        {"clientSelectors": tenant, "limit": {"requests": 600, "unit": "Minute"}},
        # Requests without the header share one budget (withoutTenant: Shared, the default).
        {"clientSelectors": absent, "limit": {"requests": 100000, "unit": "Hour"},
         "cost": {"request": {"from": "Number", "number": 0},
                  "response": {"from": "Metadata",
                               "metadata": {"namespace": "io.envoy.ai_gateway", "key": "llm_total_token"}}}},
        {"clientSelectors": absent, "limit": {"requests": 600, "unit": "Minute"}},
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

def test_render_leaves_upstream_acceptance_to_the_reconciler() -> None:
    """Read back from the AIGatewayRoute, BackendTrafficPolicy and HTTPRoute after the apply (test_acceptance.py)."""
    routed = plan_of(spec())
    assert routed.verdict.state == "Ready"
    assert "Accepted" not in [d.type for d in routed.details]
    unrouted = plan_of(spec(), backends={})
    assert "Accepted" not in [d.type for d in unrouted.details]


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
    assert {p.kind for p in plan.prune} == {"AIGatewayRoute", "BackendTrafficPolicy", "SecurityPolicy"}
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


# --- header-matched backends --------------------------------------------------------------------------

CANARY_MATCH = [{"headers": [{"name": "x-canary", "value": "true"}]}]
AB_TEST: dict[str, Any] = {  # what the TrafficConfig renderer writes for an ABTest (_virtual_model)
    "modelName": "llama-3",
    "backends": [
        {"name": "llama-v1", "modelNameOverride": "llama-3-v1", "weight": 100},
        {"name": "llama-v2", "modelNameOverride": "llama-3-v2", "weight": 1, "matches": CANARY_MATCH},
    ],
}


def model_match(model: str, *headers: tuple[str, str]) -> dict[str, Any]:
    return {"headers": [{"type": "Exact", "name": "x-ai-eg-model", "value": model},
                        *({"type": "Exact", "name": n, "value": v} for n, v in headers)]}


def test_a_header_matched_backend_gets_a_more_specific_rule_ahead_of_the_default_one() -> None:
    plan = plan_of(VirtualModelSpec.model_validate(AB_TEST))
    rules = child(plan, "AIGatewayRoute")["spec"]["rules"]
    assert rules == [
        {"matches": [model_match("llama-3", ("x-canary", "true"))],
         "backendRefs": [{"name": "llama-v2", "weight": 1, "priority": 0, "modelNameOverride": "llama-3-v2"}]},
        {"matches": [model_match("llama-3")],
         "backendRefs": [{"name": "llama-v1", "weight": 100, "priority": 0, "modelNameOverride": "llama-3-v1"}]},
    ]
    # Gateway API precedence: more header matches wins, whatever the order; the order wins on a tie.
    assert len(rules[0]["matches"][0]["headers"]) > len(rules[1]["matches"][0]["headers"])
    assert plan.status["backends"] == [
        {"name": "llama-v1", "kind": "ManagedAIServiceBackend", "tier": 0, "sharePercent": 100.0, "ready": True},
        {"name": "llama-v2", "kind": "ManagedAIServiceBackend", "tier": 0, "sharePercent": 100.0, "ready": True,
         "onlyMatching": "x-canary: true"},
    ]
    reach = detail(plan, "AllBackendsReachable")
    assert (reach.ok, reach.reason) == (True, "Reachable")
    assert "1 rule for header-matched requests, ahead of the rule for all others" in reach.message
    assert (plan.verdict.state, plan.verdict.reason) == ("Ready", "Ready")
    assert plan.status["backendSummary"] == "2/2"


def test_backends_with_the_same_matches_share_by_weight_and_tier() -> None:
    team_ml = {"headers": [{"name": "x-team", "value": "ml"}, {"name": "x-env", "value": "prod"}]}
    beta = {"headers": [{"name": "x-beta", "value": "1"}]}
    s = spec(backends=[
        {"name": "stable", "weight": 3}, {"name": "spare", "priority": 1},
        {"name": "a", "weight": 1, "matches": [team_ml, beta]},
        # the same matches in another order and another case: the same requests
        {"name": "b", "weight": 3, "matches": [beta, {"headers": [{"name": "X-Env", "value": "prod"},
                                                                  {"name": "X-Team", "value": "ml"}]}]},
        {"name": "c", "priority": 1, "matches": [team_ml, beta]},
        {"name": "other", "matches": CANARY_MATCH},
    ], timeouts={"request": "30s"})
    plan = plan_of(s)
    rules = child(plan, "AIGatewayRoute")["spec"]["rules"]
    assert [r["matches"] for r in rules] == [
        [model_match("gpt-4", ("x-team", "ml"), ("x-env", "prod")), model_match("gpt-4", ("x-beta", "1"))],
        [model_match("gpt-4", ("x-canary", "true"))],
        [model_match("gpt-4")],
    ]
    assert [[(r["name"], r["weight"], r["priority"]) for r in rule["backendRefs"]] for rule in rules] == [
        [("a", 1, 0), ("b", 3, 0), ("c", 1, 1)], [("other", 1, 0)], [("stable", 3, 0), ("spare", 1, 1)]]
    assert all(r["timeouts"] == {"request": "30s"} for r in rules)
    assert shares(plan) == {"stable": 100.0, "spare": 100.0, "a": 25.0, "b": 75.0, "c": 100.0, "other": 100.0}
    only = {b["name"]: b.get("onlyMatching") for b in plan.status["backends"]}
    assert only == {"stable": None, "spare": None, "a": "x-team: ml and x-env: prod; or x-beta: 1",
                    "b": "x-team: ml and x-env: prod; or x-beta: 1", "c": "x-team: ml and x-env: prod; or x-beta: 1",
                    "other": "x-canary: true"}
    assert detail(plan, "AllBackendsReachable").ok is True
    # Tiers in the matched rule are fallback tiers too: the retry policy on the route (all its rules) says so.
    assert child(plan, "BackendTrafficPolicy")["spec"]["retry"]["numAttemptsPerPriority"] == 1
    assert child(plan, "BackendTrafficPolicy")["spec"]["targetRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "gpt-4"}]


def test_a_fallback_tier_only_in_a_matched_rule_still_gets_the_default_retry() -> None:
    s = spec(backends=[{"name": "stable"}, {"name": "a", "matches": CANARY_MATCH},
                       {"name": "b", "priority": 1, "matches": CANARY_MATCH}])
    plan = plan_of(s)
    assert detail(plan, "RetryPolicy").reason == "FallbackDefault"
    without = plan_of(spec(backends=[{"name": "stable"}, {"name": "a", "matches": CANARY_MATCH}]))
    assert "BackendTrafficPolicy" not in kinds(without)


def test_a_match_an_earlier_backend_already_has_is_left_out_and_reported() -> None:
    beta = {"headers": [{"name": "x-beta", "value": "1"}]}
    s = spec(backends=[{"name": "stable"},
                       {"name": "a", "matches": CANARY_MATCH},
                       {"name": "b", "matches": [{"headers": [{"name": "X-Canary", "value": "true"}]}, beta]},
                       {"name": "c", "matches": [beta]}])
    plan = plan_of(s)
    rules = child(plan, "AIGatewayRoute")["spec"]["rules"]
    assert [r["matches"] for r in rules] == [
        [model_match("gpt-4", ("x-canary", "true"))],
        [model_match("gpt-4", ("x-beta", "1"))],  # b keeps the match nobody had before
        [model_match("gpt-4")],
    ]
    assert [[r["name"] for r in rule["backendRefs"]] for rule in rules] == [["a"], ["b"], ["stable"]]
    reach = detail(plan, "AllBackendsReachable")
    assert (reach.ok, reach.reason) == (False, "ShadowedMatches")
    assert "X-Canary: true of ManagedAIServiceBackend b is already a match of ManagedAIServiceBackend a" in (
        reach.message)
    assert "x-beta: 1 of ManagedAIServiceBackend c is already a match of ManagedAIServiceBackend b" in (
        reach.message)
    assert shares(plan) == {"stable": 100.0, "a": 100.0, "b": 100.0, "c": 0.0}
    assert {b["name"]: b.get("onlyMatching") for b in plan.status["backends"]}["b"] == "x-beta: 1"


def test_matched_backends_without_a_ready_one_leave_their_requests_to_the_default_path() -> None:
    s = VirtualModelSpec.model_validate(AB_TEST)
    missing = plan_of(s, backends={("ManagedAIServiceBackend", "llama-v1"): READY,
                                   ("ManagedAIServiceBackend", "llama-v2"): None})
    rules = child(missing, "AIGatewayRoute")["spec"]["rules"]
    assert [r["matches"] for r in rules] == [[model_match("llama-3")]]
    assert (missing.verdict.state, missing.verdict.reason) == ("Ready", "BackendsLeftOut")
    reach = detail(missing, "AllBackendsReachable")
    assert reach.ok is True
    assert "requests with x-canary: true go to the backends without matches: no backend of theirs is Ready" in (
        reach.message)
    assert shares(missing) == {"llama-v1": 100.0, "llama-v2": 0.0}

    drained = copy.deepcopy(AB_TEST)
    drained["backends"][1]["weight"] = 0
    plan = plan_of(VirtualModelSpec.model_validate(drained))
    assert len(child(plan, "AIGatewayRoute")["spec"]["rules"]) == 1
    assert "their backends all have weight 0" in detail(plan, "AllBackendsReachable").message
    assert shares(plan) == {"llama-v1": 100.0, "llama-v2": 0.0}


def test_no_route_when_only_matched_backends_resolve() -> None:
    s = VirtualModelSpec.model_validate(AB_TEST)
    plan = render(s, world(s, backends={("ManagedAIServiceBackend", "llama-v1"): ObservedBackend(ready=False),
                                         ("ManagedAIServiceBackend", "llama-v2"): READY}))
    assert plan.children == []
    assert {p.kind for p in plan.prune} == {"AIGatewayRoute", "BackendTrafficPolicy", "SecurityPolicy"}
    assert (plan.verdict.state, plan.verdict.reason) == ("Progressing", "BackendsNotReady")  # heals by itself
    assert "no backend without matches of model 'llama-3' resolves" in plan.verdict.message
    assert "ManagedAIServiceBackend llama-v1 not Ready" in plan.verdict.message
    assert shares(plan) == {"llama-v1": 0.0, "llama-v2": 0.0}
    gone = render(s, world(s, backends={("ManagedAIServiceBackend", "llama-v1"): None,
                                        ("ManagedAIServiceBackend", "llama-v2"): READY}))
    assert gone.verdict.reason == "BackendsNotFound"


def test_a_matched_inference_pool_gets_a_rule_of_its_own_with_the_matches() -> None:
    s = spec(backends=[{"name": "openai"},
                       {"name": "pool", "kind": "InferencePool", "matches": CANARY_MATCH},
                       {"name": "vllm", "matches": CANARY_MATCH}])  # routed on a pool too: shadowed
    backends = {("ManagedAIServiceBackend", "openai"): READY, ("InferencePool", "pool"): READY,
                ("ManagedAIServiceBackend", "vllm"): ObservedBackend(ready=True, routing="InferencePool",
                                                                     inference_pool="vllm-pool")}
    plan = plan_of(s, backends=backends)
    rules = child(plan, "AIGatewayRoute")["spec"]["rules"]
    assert [(r["matches"], [b["name"] for b in r["backendRefs"]]) for r in rules] == [
        ([model_match("gpt-4", ("x-canary", "true"))], ["pool"]),
        ([model_match("gpt-4", ("x-canary", "true"))], ["vllm-pool"]),
        ([model_match("gpt-4")], ["openai"]),
    ]
    reach = detail(plan, "AllBackendsReachable")
    assert (reach.ok, reach.reason) == (False, "ShadowedRules")
    assert "ManagedAIServiceBackend vllm" in reach.message and "InferencePool pool" not in reach.message
    assert shares(plan) == {"openai": 100.0, "pool": 100.0, "vllm": 0.0}


def test_rule_limits_keep_the_default_rule_and_the_matched_rules_first() -> None:
    backends: list[dict[str, Any]] = [{"name": "stable"}]
    backends += [{"name": f"m{i}", "matches": [{"headers": [{"name": "x-user", "value": str(i)}]}]}
                 for i in range(16)]
    plan = plan_of(spec(backends=backends))
    rules = child(plan, "AIGatewayRoute")["spec"]["rules"]
    assert len(rules) == 15
    assert rules[-1]["matches"] == [model_match("gpt-4")]
    assert [r["backendRefs"][0]["name"] for r in rules[:-1]] == [f"m{i}" for i in range(14)]
    reach = detail(plan, "AllBackendsReachable")
    assert (reach.ok, reach.reason) == (False, "ShadowedRules")
    assert "beyond the AIGatewayRoute limits" in reach.message and "m14, ManagedAIServiceBackend m15" in reach.message
    assert shares(plan)["m15"] == 0.0 and shares(plan)["m13"] == 100.0


def test_alternatives_read_matches_the_way_gateway_api_does() -> None:
    # Names differing in case only (the CRD's list map allows them), a repeated alternative, and what an
    # outdated CRD could let through: the model header.
    s = spec(backends=[{"name": "stable"}, {"name": "a", "matches": [
        {"headers": [{"name": "X-AI-EG-Model", "value": "other"}, {"name": "x-a", "value": "1"},
                     {"name": "X-A", "value": "2"}]},
        {"headers": [{"name": "x-a", "value": "1"}]},
        {"headers": [{"name": "x-ai-eg-model", "value": "other"}]},
    ]}])
    assert alternatives(s.backends[1]) == [(("x-a", "1"),)]
    assert alternatives(s.backends[0]) == []
    assert child(plan_of(s), "AIGatewayRoute")["spec"]["rules"][0]["matches"] == [model_match("gpt-4", ("x-a", "1"))]
    assert describe_alternatives([(("x-a", "1"), ("x-b", "2")), (("x-c", "3"),)]) == "x-a: 1 and x-b: 2; or x-c: 3"


def test_the_trafficconfig_wire_shape_parses_and_writes_back_unchanged() -> None:
    parsed = VirtualModelSpec.model_validate(AB_TEST)
    assert parsed.wire()["backends"][1] == {
        "name": "llama-v2", "kind": "ManagedAIServiceBackend", "modelNameOverride": "llama-3-v2", "weight": 1,
        "priority": 0, "matches": [{"headers": [{"name": "x-canary", "value": "true"}]}]}


@pytest.mark.parametrize(("matches", "error"), [
    ([], "at least 1 item"),
    ([{"headers": []}], "at least 1 item"),
    ([{"headers": [{"name": f"x-{i}", "value": "1"} for i in range(16)]}], "at most 15 items"),
    ([{"headers": [{"name": "x-a", "value": str(i)}]} for i in range(9)], "at most 8 items"),
    ([{"headers": [{"name": "bad header", "value": "1"}]}], "String should match pattern"),
    ([{"headers": [{"name": "x-a", "value": ""}]}], "at least 1 character"),
    ([{"headers": [{"name": "x-a", "value": "two  spaces"}]}], "String should match pattern"),
    ([{"headers": [{"name": "x-a", "value": "1", "type": "RegularExpression"}]}], "Extra inputs are not permitted"),
])
def test_malformed_matches_do_not_parse(matches: list[Any], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        spec(backends=[{"name": "stable"}, {"name": "a", "matches": matches}])


def test_match_limits_fit_the_upstream_route_and_the_http_route_made_of_it() -> None:
    info = next(i for i in crdgen.KINDS if i.kind == "VirtualModel")
    ours = crdgen.openapi_schema(info)["properties"]["spec"]["properties"]["backends"]["items"]["properties"]["matches"]
    headers = ours["items"]["properties"]["headers"]
    route_rule = upstream_schema("AIGatewayRoute", "v1beta1")["properties"]["spec"]["properties"]["rules"]
    http_rules = upstream_schema("HTTPRoute", "v1")["properties"]["spec"]["properties"]["rules"]
    for rules in (route_rule, http_rules):
        upstream = rules["items"]["properties"]["matches"]["items"]["properties"]["headers"]
        assert headers["maxItems"] + 1 == upstream["maxItems"]  # the model header takes one
        assert ours["maxItems"] <= rules["items"]["properties"]["matches"]["maxItems"]
    value = headers["items"]["properties"]["value"]
    http_value = http_rules["items"]["properties"]["matches"]["items"]["properties"]["headers"]["items"][
        "properties"]["value"]
    assert {k: value[k] for k in ("pattern", "minLength", "maxLength")} == {
        k: http_value[k] for k in ("pattern", "minLength", "maxLength")}
    # Every rule full of matches, plus the AI Gateway's catch-all: within the HTTPRoute's 128 matches.
    assert route_rule["maxItems"] * ours["maxItems"] + 1 <= 128


# --- tenants: authentication, budgets per tenant ------------------------------------------------------------

API_KEYS: dict[str, Any] = {"apiKey": {}}


def test_api_keys_become_a_security_policy_on_the_generated_route_written_before_it() -> None:
    plan = plan_of(spec(auth=API_KEYS))
    assert kinds(plan)[:2] == ["SecurityPolicy", "AIGatewayRoute"]  # in place when Envoy Gateway sees the route
    policy = child(plan, "SecurityPolicy")
    assert policy["metadata"]["name"] == "gpt-4"
    assert policy["spec"] == {
        # The AI Gateway names the HTTPRoute it generates after the AIGatewayRoute (ai_gateway_route.go).
        "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "gpt-4"}],
        "apiKeyAuth": {
            "credentialRefs": [{"group": "", "kind": "Secret", "name": "model-traffic-api-keys"}],
            "extractFrom": [{"headers": ["authorization"]}],
            "forwardClientIDHeader": "x-tenant-id",
            "sanitize": True,
        },
    }
    assert "SecurityPolicy" not in [p.kind for p in plan.prune]
    assert detail(plan, "Authenticated").reason == "APIKeys"
    assert (detail(plan, "TenantHeader").ok, detail(plan, "TenantHeader").reason) == (True, "SetByGateway")


def test_named_key_secrets_and_headers() -> None:
    s = spec(auth={"apiKey": {"secretRefs": ["mine", "theirs"], "headers": ["x-api-key"]}, "tenantHeader": "x-team"})
    auth = child(plan_of(s), "SecurityPolicy")["spec"]["apiKeyAuth"]
    assert [r["name"] for r in auth["credentialRefs"]] == ["mine", "theirs"]  # in order: the first one's key counts
    assert auth["extractFrom"] == [{"headers": ["x-api-key"]}] and auth["forwardClientIDHeader"] == "x-team"


def test_jwt_claim_becomes_the_tenant_header_and_the_detail_says_what_must_strip_a_client_one() -> None:
    jwt = {"issuer": "https://idp.example.com", "jwksUri": "https://idp.example.com/jwks.json",
           "audiences": ["models"], "tenantClaim": "org.id"}
    plan = plan_of(spec(auth={"jwt": jwt}))
    assert child(plan, "SecurityPolicy")["spec"]["jwt"] == {"providers": [{
        "name": "tenants", "issuer": "https://idp.example.com",
        "remoteJWKS": {"uri": "https://idp.example.com/jwks.json"},
        "claimToHeaders": [{"header": "x-tenant-id", "claim": "org.id"}], "audiences": ["models"]}]}
    assert (detail(plan, "TenantHeader").ok, detail(plan, "TenantHeader").reason) == (
        False, "ClientMayAddTenantHeader")


def test_without_auth_no_security_policy_and_an_existing_one_is_pruned() -> None:
    plan = plan_of(spec())
    assert "SecurityPolicy" not in kinds(plan)
    assert "SecurityPolicy" in [p.kind for p in plan.prune]
    assert detail(plan, "Authenticated").reason == "NotConfigured"


@pytest.mark.parametrize("bad", [
    {"rateLimit": {"requests": {"limit": 1, "unit": "Decade"}}},
    {"rateLimit": {"requests": {"limit": 4294967296, "unit": "Second"}}},  # Envoy Gateway's uint32
    {"rateLimit": {"tenants": [{"tenant": "Acme", "requests": {"limit": 1, "unit": "Day"}}]}},
    {"rateLimit": {"tenants": [{"tenant": "acme.k2", "requests": {"limit": 1, "unit": "Day"}}]}},
    {"rateLimit": {"requests": {"limit": 1, "unit": "Day"}, "withoutTenant": "Free"}},
    {"auth": {"jwt": {"issuer": "i", "jwksUri": "ftp://x/j", "tenantClaim": "t"}}},
    {"auth": {"apiKey": {"headers": []}}},
])
def test_tenant_specs_pydantic_refuses(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        spec(**bad)


def budget(limit: int, unit: str) -> dict[str, Any]:
    return {"limit": limit, "unit": unit}


TOKEN_COST = {"request": {"from": "Number", "number": 0},
              "response": {"from": "Metadata",
                           "metadata": {"namespace": "io.envoy.ai_gateway", "key": "llm_total_token"}}}


def test_tiers_give_each_listed_tenant_its_own_budget_instead_of_the_default_one() -> None:
    s = spec(auth=API_KEYS, rateLimit={
        "tokens": budget(100000, "Month"), "requests": budget(1000, "Day"),
        "tenants": [{"tenant": "acme", "tokens": budget(5000000, "Week")},
                    {"tenant": "beta", "requests": budget(10, "Year")}]})
    policy = child(plan_of(s), "BackendTrafficPolicy")["spec"]
    rules = policy["rateLimit"]["global"]["rules"]
    header = "x-tenant-id"  # auth.tenantHeader: what the API key filter sets
    acme = [{"headers": [{"name": header, "type": "RegularExpression", "value": r"(acme)(\.[-a-z0-9]+)?"}]}]
    beta = [{"headers": [{"name": header, "type": "RegularExpression", "value": r"(beta)(\.[-a-z0-9]+)?"}]}]
    others = [{"headers": [{"name": header, "type": "Distinct"},
                           {"name": header, "type": "RegularExpression", "value": r"(acme|beta)(\.[-a-z0-9]+)?",
                            "invert": True}]}]
    assert rules == [
        {"clientSelectors": acme, "limit": {"requests": 5000000, "unit": "Week"}, "cost": TOKEN_COST},
        {"clientSelectors": beta, "limit": {"requests": 10, "unit": "Year"}},
        {"clientSelectors": others, "limit": {"requests": 100000, "unit": "Month"}, "cost": TOKEN_COST},
        {"clientSelectors": others, "limit": {"requests": 1000, "unit": "Day"}},
    ]  # with auth no request lacks the header (401 first): no rule for callers without a tenant


def test_tier_regex_matches_a_tenant_and_its_rotated_keys_only() -> None:
    pattern = re.compile(r"(acme|beta)(\.[-a-z0-9]+)?")
    assert all(pattern.fullmatch(v) for v in ("acme", "acme.k2", "beta.r-1"))
    assert not any(pattern.fullmatch(v) for v in ("acme2", "xacme", "acme.", "acme.K2", "gamma"))


def test_callers_without_a_tenant_share_one_budget_or_are_refused() -> None:
    absent = [{"headers": [{"name": "x-team", "type": "RegularExpression", "value": ".*", "invert": True}]}]
    shared = spec(rateLimit={"tenantHeader": "x-team", "requests": budget(5, "Second")})
    rules = child(plan_of(shared), "BackendTrafficPolicy")["spec"]["rateLimit"]["global"]["rules"]
    assert rules[-1] == {"clientSelectors": absent, "limit": {"requests": 5, "unit": "Second"}}
    refused = spec(rateLimit={"tenantHeader": "x-team", "requests": budget(5, "Second"), "withoutTenant": "Refused"})
    rules = child(plan_of(refused), "BackendTrafficPolicy")["spec"]["rateLimit"]["global"]["rules"]
    assert rules[-1] == {"clientSelectors": absent, "limit": {"requests": 0, "unit": "Second"}}


@pytest.mark.parametrize("unit", ["Second", "Minute", "Hour", "Day", "Week", "Month", "Year"])
def test_every_unit_envoy_gateway_accepts(unit: str) -> None:
    enum = upstream_schema("BackendTrafficPolicy", "v1alpha1")["properties"]["spec"]["properties"]["rateLimit"][
        "properties"]["global"]["properties"]["rules"]["items"]["properties"]["limit"]["properties"]["unit"]["enum"]
    assert unit in enum
    rules = child(plan_of(spec(rateLimit={"requests": budget(1, unit)})), "BackendTrafficPolicy")["spec"][
        "rateLimit"]["global"]["rules"]
    assert rules == [{"limit": {"requests": 1, "unit": unit}}]


# --- backends shared across namespaces ---------------------------------------------------------------------

def grant(from_: list[tuple[str, str]], to: list[tuple[str, str, str | None]], namespace: str = "team-a"
          ) -> dict[str, Any]:
    return {"spec": {"from": [{"group": g, "kind": k, "namespace": namespace} for g, k in from_],
                     "to": [{"group": g, "kind": k, **({"name": n} if n else {})} for g, k, n in to]}}


BOTH = grant([("aigateway.envoyproxy.io", "AIGatewayRoute"), ("gateway.networking.k8s.io", "HTTPRoute")],
             [("aigateway.envoyproxy.io", "AIServiceBackend", None), ("gateway.envoyproxy.io", "Backend", None)])


def test_a_shared_backend_needs_a_grant_for_the_route_and_one_for_the_generated_http_route() -> None:
    assert missing_grants([BOTH], "team-a", "platform", "openai", "openai") == []
    assert missing_grants([BOTH], "team-b", "platform", "openai", "openai") == [
        "AIGatewayRoute of team-b to AIServiceBackend platform/openai",
        "HTTPRoute of team-b to Backend platform/openai"]
    only_route = grant([("aigateway.envoyproxy.io", "AIGatewayRoute")],
                       [("aigateway.envoyproxy.io", "AIServiceBackend", "openai")])
    assert missing_grants([only_route], "team-a", "platform", "openai", "openai") == [
        "HTTPRoute of team-a to Backend platform/openai"]
    assert missing_grants([only_route], "team-a", "platform", "other", None) == [
        "AIGatewayRoute of team-a to AIServiceBackend platform/other"]  # a named `to` allows that one only


def test_a_shared_backend_is_routed_with_its_namespace_and_reported_with_it() -> None:
    s = spec(backends=[{"name": "openai", "namespace": "platform", "weight": 3}, {"name": "local"}])
    plan = plan_of(s)
    refs = child(plan, "AIGatewayRoute")["spec"]["rules"][0]["backendRefs"]
    assert refs == [{"name": "openai", "namespace": "platform", "weight": 3, "priority": 0},
                    {"name": "local", "weight": 1, "priority": 0}]
    assert [(b["name"], b.get("namespace")) for b in plan.status["backends"]] == [("openai", "platform"),
                                                                                  ("local", None)]


def test_a_shared_backend_without_a_grant_is_left_out_with_ref_not_permitted() -> None:
    s = spec(backends=[{"name": "openai", "namespace": "platform"}, {"name": "local"}])
    refused = ObservedBackend(ready=True, not_permitted=True, message="no ReferenceGrant in namespace platform ...")
    plan = plan_of(s, backends={("ManagedAIServiceBackend", "platform/openai"): refused,
                                ("ManagedAIServiceBackend", "local"): READY})
    resolved = detail(plan, "BackendsResolved")
    assert (resolved.ok, resolved.reason) == (False, "RefNotPermitted")
    assert "ManagedAIServiceBackend platform/openai not permitted" in resolved.message
    assert [r["name"] for r in child(plan, "AIGatewayRoute")["spec"]["rules"][0]["backendRefs"]] == ["local"]
    alone = spec(backends=[{"name": "openai", "namespace": "platform"}])
    plan = plan_of(alone, backends={("ManagedAIServiceBackend", "platform/openai"): refused})
    assert (plan.verdict.state, plan.verdict.reason) == ("Stalled", "RefNotPermitted") and plan.children == []


def test_the_index_of_shared_backends_names_the_virtual_model_across_namespaces() -> None:
    raw = {"backends": [{"name": "openai", "namespace": "platform"}, {"name": "local"},
                        {"name": "raw", "kind": "AIServiceBackend", "namespace": "team-a"}]}
    assert reconciler.shared_references("team-a", "gpt-4", raw) == {
        ("platform", "ManagedAIServiceBackend", "openai"): ("team-a", "gpt-4"),
        ("platform", "ReferenceGrant", reconciler.ANY_GRANT): ("team-a", "gpt-4")}
    assert reconciler.references("team-a", "gpt-4", raw) == {
        ("team-a", "ManagedAIServiceBackend", "local"): "gpt-4", ("team-a", "AIServiceBackend", "raw"): "gpt-4"}
