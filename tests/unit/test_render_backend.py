"""The ManagedAIServiceBackend render function, with plain data (no API server)."""

from __future__ import annotations

from typing import Any

import pytest

from model_traffic.kinds.backend.render import BackendWorld, predictor_address, render
from model_traffic.kinds.backend.spec import ManagedAIServiceBackendSpec


def spec(**fields: Any) -> ManagedAIServiceBackendSpec:
    base: dict[str, Any] = {"schema": {"name": "OpenAI", "version": "v1"},
                            "endpoint": {"fqdn": {"hostname": "api.openai.com", "port": 443}}}
    base.update(fields)
    return ManagedAIServiceBackendSpec.model_validate(base)


def world(**fields: Any) -> BackendWorld:
    base: dict[str, Any] = {"namespace": "llm", "name": "openai", "ai_gateway_version": "v1beta1"}
    base.update(fields)
    return BackendWorld(**base)


def kinds(plan: Any) -> list[str]:
    return [c.rtype.kind for c in plan.children]


def test_fqdn_backend_with_api_key_writes_three_children() -> None:
    plan = render(spec(tls={"sni": "api.openai.com", "wellKnownCACertificates": "System"},
                       credentials={"type": "APIKey", "secretRef": {"name": "openai-key"}}),
                  world(secret_keys=frozenset({"apiKey"})))
    assert kinds(plan) == ["Backend", "AIServiceBackend", "BackendSecurityPolicy"]
    backend, aisb, bsp = (c.body for c in plan.children)
    assert backend["spec"] == {
        "endpoints": [{"fqdn": {"hostname": "api.openai.com", "port": 443}}],
        "tls": {"sni": "api.openai.com", "wellKnownCACertificates": "System"},
    }
    assert aisb["apiVersion"] == "aigateway.envoyproxy.io/v1beta1"
    assert aisb["spec"]["backendRef"] == {"group": "gateway.envoyproxy.io", "kind": "Backend", "name": "openai"}
    assert aisb["spec"]["schema"] == {"name": "OpenAI", "version": "v1"}
    assert bsp["spec"] == {
        "type": "APIKey",
        "targetRefs": [{"group": "aigateway.envoyproxy.io", "kind": "AIServiceBackend", "name": "openai"}],
        "apiKey": {"secretRef": {"name": "openai-key"}},
    }
    assert plan.verdict.state == "Ready"
    assert plan.status["endpointSummary"] == "api.openai.com:443"
    assert [p.kind for p in plan.prune] == ["QuotaPolicy"]


def test_writes_the_discovered_ai_gateway_version() -> None:
    plan = render(spec(), world(ai_gateway_version="v1alpha1"))
    assert plan.children[1].body["apiVersion"] == "aigateway.envoyproxy.io/v1alpha1"
    assert plan.status["aiGatewayApiVersion"] == "v1alpha1"


def test_no_ai_gateway_installed_is_stalled_and_writes_nothing() -> None:
    plan = render(spec(), world(ai_gateway_version=None))
    assert plan.verdict.state == "Stalled"
    assert plan.verdict.reason == "AIGatewayNotInstalled"
    assert plan.children == []


@pytest.mark.parametrize(
    ("credentials", "field", "expected"),
    [
        ({"type": "AnthropicAPIKey", "secretRef": {"name": "s"}}, "anthropicAPIKey", {"secretRef": {"name": "s"}}),
        ({"type": "AzureAPIKey", "secretRef": {"name": "s"}}, "azureAPIKey", {"secretRef": {"name": "s"}}),
        ({"type": "AWSCredentials", "secretRef": {"name": "s"}, "region": "us-east-1", "profile": "p"},
         "awsCredentials", {"region": "us-east-1", "credentialsFile": {"secretRef": {"name": "s"}, "profile": "p"}}),
        ({"type": "AzureCredentials", "secretRef": {"name": "s"}, "clientID": "c", "tenantID": "t"},
         "azureCredentials", {"clientID": "c", "tenantID": "t", "clientSecretRef": {"name": "s"}}),
        ({"type": "GCPCredentials", "secretRef": {"name": "s"}, "projectName": "p", "region": "r"},
         "gcpCredentials", {"projectName": "p", "region": "r", "credentialsFile": {"secretRef": {"name": "s"}}}),
    ],
)
def test_each_credential_type(credentials: dict[str, Any], field: str, expected: dict[str, Any]) -> None:
    key = {"AWSCredentials": "credentials", "AzureCredentials": "client-secret",
           "GCPCredentials": "service_account.json"}.get(credentials["type"], "apiKey")
    plan = render(spec(credentials=credentials), world(secret_keys=frozenset({key})))
    bsp = plan.children[-1].body["spec"]
    assert bsp["type"] == credentials["type"]
    assert bsp[field] == expected
    assert plan.verdict.state == "Ready"


def test_missing_secret_and_missing_key_stall_with_clear_messages() -> None:
    creds = {"type": "APIKey", "secretRef": {"name": "openai-key"}}
    missing = render(spec(credentials=creds), world(secret_keys=None))
    assert (missing.verdict.state, missing.verdict.reason) == ("Stalled", "SecretNotFound")
    assert "Secret openai-key not found in namespace llm" in missing.verdict.message
    # The children are still written: the route works as soon as the Secret appears.
    assert "BackendSecurityPolicy" in kinds(missing)
    wrong_key = render(spec(credentials=creds), world(secret_keys=frozenset({"token"})))
    assert wrong_key.verdict.reason == "SecretKeyMissing"
    assert "'apiKey'" in wrong_key.verdict.message


def test_quota_becomes_a_quota_policy() -> None:
    plan = render(spec(quota={"service": {"limit": 1000000, "duration": "1h"},
                              "perModel": [{"modelName": "gpt-4o", "limit": 200000, "duration": "1h"}]}), world())
    quota = plan.children[-1].body
    assert quota["kind"] == "QuotaPolicy"
    assert quota["apiVersion"] == "aigateway.envoyproxy.io/v1alpha1"
    assert quota["spec"] == {
        "targetRefs": [{"group": "aigateway.envoyproxy.io", "kind": "AIServiceBackend", "name": "openai"}],
        "serviceQuota": {"quota": {"limit": 1000000, "duration": "1h"}},
        "perModelQuotas": [{"modelName": "gpt-4o", "quota": {"defaultBucket": {"limit": 200000, "duration": "1h"}}}],
    }


def test_inference_service_address_comes_from_status() -> None:
    isvc = {"metadata": {"name": "llama"},
            "status": {"components": {"predictor": {"address": {"url": "http://llama-predictor.llm.svc.cluster.local"}}},
                       "conditions": [{"type": "Ready", "status": "True"}]}}
    plan = render(spec(endpoint={"inferenceService": {"name": "llama"}}), world(inference_service=isvc))
    assert plan.children[0].body["spec"]["endpoints"] == [
        {"fqdn": {"hostname": "llama-predictor.llm.svc.cluster.local", "port": 80}}
    ]
    assert plan.verdict.state == "Ready"


def test_inference_service_falls_back_to_convention_and_waits_until_ready() -> None:
    isvc = {"metadata": {"name": "llama"}, "status": {"conditions": [{"type": "Ready", "status": "False"}]}}
    plan = render(spec(endpoint={"inferenceService": {"name": "llama", "port": 8080}}), world(inference_service=isvc))
    assert plan.children[0].body["spec"]["endpoints"] == [
        {"fqdn": {"hostname": "llama-predictor.llm.svc.cluster.local", "port": 8080}}
    ]
    assert (plan.verdict.state, plan.verdict.reason) == ("Progressing", "InferenceServiceNotReady")


def test_predictor_address_prefers_explicit_port_and_https() -> None:
    isvc = {"metadata": {"name": "x"}, "status": {"address": {"url": "https://x.example.com"}}}
    assert predictor_address(isvc, "ns", 80) == ("x.example.com", 443, "https://x.example.com")
    # status.url names KServe's ingress domain in Standard mode, where nothing answers: the convention instead.
    isvc = {"metadata": {"name": "x"}, "status": {"url": "http://x-ns.example.com"}}
    assert predictor_address(isvc, "ns", 80)[:2] == ("x-predictor.ns.svc.cluster.local", 80)
    isvc = {"metadata": {"name": "x"}, "status": {"address": {"url": "http://x.ns.svc:8080/v1"}}}
    assert predictor_address(isvc, "ns", 80)[:2] == ("x.ns.svc", 8080)


def test_missing_inference_service_stalls_and_writes_no_backend() -> None:
    plan = render(spec(endpoint={"inferenceService": {"name": "llama"}}), world(inference_service=None))
    assert plan.verdict.reason == "InferenceServiceNotFound"
    assert plan.children == []
    assert {p.kind for p in plan.prune} >= {"Backend", "AIServiceBackend"}


def test_inference_pool_is_routed_at_route_level() -> None:
    plan = render(spec(endpoint={"inferencePool": {"name": "vllm-pool"}},
                       credentials={"type": "APIKey", "secretRef": {"name": "k"}}),
                  world(inference_pool_exists=True, secret_keys=frozenset({"apiKey"})))
    assert plan.status["routing"] == "InferencePool"
    assert plan.status["inferencePool"] == "vllm-pool"
    assert kinds(plan) == ["BackendSecurityPolicy"]
    assert plan.children[0].body["spec"]["targetRefs"] == [
        {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "vllm-pool"}
    ]
    assert plan.verdict.state == "Ready"


def test_inference_pool_at_backend_level_when_the_cluster_accepts_it() -> None:
    plan = render(spec(endpoint={"inferencePool": {"name": "vllm-pool"}}),
                  world(inference_pool_exists=True, pool_at_backend_level=True))
    assert plan.status["routing"] == "Backend"
    assert kinds(plan) == ["AIServiceBackend"]
    assert plan.children[0].body["spec"]["backendRef"]["kind"] == "InferencePool"


def test_missing_inference_pool_stalls() -> None:
    plan = render(spec(endpoint={"inferencePool": {"name": "vllm-pool"}}), world(inference_pool_exists=False))
    assert plan.verdict.reason == "InferencePoolNotFound"


def test_existing_backend_is_referenced_never_written() -> None:
    plan = render(spec(endpoint={"backendRef": {"name": "shared"}}), world(referenced_backend_exists=True))
    assert kinds(plan) == ["AIServiceBackend"]
    assert plan.children[0].body["spec"]["backendRef"]["name"] == "shared"
    assert "Backend" in [p.kind for p in plan.prune]
    missing = render(spec(endpoint={"backendRef": {"name": "shared"}}), world(referenced_backend_exists=False))
    assert missing.verdict.reason == "BackendNotFound"


def test_render_leaves_upstream_acceptance_to_the_reconciler() -> None:
    """Whether AI Gateway and Envoy Gateway accept the children is read back from them after the apply
    (pipeline/result.py, tested in test_acceptance.py); the plan carries no detail of it."""
    plan = render(spec(), world())
    assert plan.verdict.state == "Ready"
    assert "Accepted" not in [d.type for d in plan.details]


def test_header_and_body_mutations_pass_through() -> None:
    plan = render(spec(headerMutation={"set": [{"name": "x-team", "value": "ml"}], "remove": ["x-internal"]},
                       bodyMutation={"set": [{"path": "service_tier", "value": '"default"'}]}), world())
    aisb = plan.children[1].body["spec"]
    assert aisb["headerMutation"] == {"set": [{"name": "x-team", "value": "ml"}], "remove": ["x-internal"]}
    assert aisb["bodyMutation"] == {"set": [{"path": "service_tier", "value": '"default"'}]}
