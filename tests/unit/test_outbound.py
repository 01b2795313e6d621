"""The operator's outbound policy: what it refuses, in every spelling, and where a refusal shows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from model_traffic import kube
from model_traffic.kinds.backend.render import BackendWorld, render
from model_traffic.kinds.backend.spec import ManagedAIServiceBackendSpec
from model_traffic.kinds.trafficconfig.measure import template_refusals, with_templates
from model_traffic.kinds.trafficconfig.render import outbound_refusals
from model_traffic.kinds.trafficconfig.spec import TrafficConfigSpec
from model_traffic.outbound import DEFAULT_DENY, OutboundPolicy, PolicyError, Rules, host_of, literal_address
from model_traffic.settings import Settings

DEFAULT = OutboundPolicy()


@pytest.mark.parametrize("host", [
    "169.254.169.254", "169.254.170.23", "[fd00:ec2::254]", "fd00:ec2::254", "fe80::1", "100.100.100.200",
    "metadata.google.internal", "METADATA.google.internal.", "metadata", "2852039166", "0xa9fea9fe",
    "0251.0376.0251.0376", "169.254.43518", "::ffff:169.254.169.254", "[::ffff:a9fe:a9fe]",
])
def test_metadata_and_link_local_are_denied_by_default_in_every_spelling(host: str) -> None:
    refusal = DEFAULT.refusal(host)
    assert refusal is not None and "denied by the operator's outbound policy" in refusal


@pytest.mark.parametrize("host", ["api.openai.com", "10.0.0.7", "127.0.0.1", "llama-predictor.llm.svc.cluster.local",
                                  "2001:db8::1", "metadata.example.com"])
def test_everything_else_is_allowed_by_default(host: str) -> None:
    assert DEFAULT.refusal(host) is None


def test_an_allow_list_allows_only_what_it_names_and_deny_still_wins() -> None:
    policy = OutboundPolicy.parse(["169.254.0.0/16", "bad.example.com"], ["10.0.0.0/8", "*.example.com"])
    assert policy.refusal("10.1.2.3") is None
    assert policy.refusal("api.example.com") is None
    assert policy.refusal("bad.example.com") == "bad.example.com is denied by the operator's outbound policy " \
        "(bad.example.com)"
    assert policy.refusal("example.com") == "example.com is not in the operator's outbound allow list"
    assert policy.refusal("192.168.1.1") == "192.168.1.1 is not in the operator's outbound allow list"


def test_resolved_addresses_are_checked_against_the_deny_list() -> None:
    assert DEFAULT.check_resolved("evil.example.com", ["93.184.216.34"]) is None
    refusal = DEFAULT.check_resolved("evil.example.com", ["93.184.216.34", "169.254.169.254"])
    assert refusal is not None and "resolves to 169.254.169.254" in refusal


def test_literal_addresses_and_hosts() -> None:
    assert str(literal_address("0xa9fea9fe")) == "169.254.169.254"
    assert literal_address("deadbeef") is None and literal_address("api.openai.com") is None
    assert host_of("http://[fd00:ec2::254]:80/latest") == "fd00:ec2::254"
    assert host_of("http://user@Metadata.Google.Internal/x") == "metadata.google.internal"
    assert DEFAULT.url_refusal("http:///path") == "http:///path has no host"


def test_a_typo_in_the_policy_is_an_error_not_an_open_door() -> None:
    with pytest.raises(PolicyError, match="not a CIDR or host name"):
        Rules.parse(["169.254.0.0/16", "bad host"])


def test_settings_read_the_policy_and_replace_the_default_deny_list(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.from_env().outbound.refusal("169.254.169.254") is not None
    monkeypatch.setenv("MTO_OUTBOUND_DENY", "10.0.0.0/8")
    monkeypatch.setenv("MTO_OUTBOUND_ALLOW", "10.0.0.0/8,169.254.169.254/32")
    policy = Settings.from_env().outbound
    assert policy.refusal("169.254.169.254") is None  # widened deliberately
    assert policy.refusal("10.0.0.7") is not None


def backend(endpoint: dict[str, Any]) -> ManagedAIServiceBackendSpec:
    return ManagedAIServiceBackendSpec.model_validate({"schema": {"name": "OpenAI"}, "endpoint": endpoint})


@pytest.mark.parametrize("endpoint", [
    {"ip": {"address": "169.254.169.254", "port": 80}},
    {"fqdn": {"hostname": "metadata.google.internal", "port": 80}},
])
def test_a_backend_at_a_denied_address_is_stalled_and_nothing_is_written(endpoint: dict[str, Any]) -> None:
    plan = render(backend(endpoint), BackendWorld(namespace="llm", name="b", ai_gateway_version="v1beta1"))
    assert (plan.verdict.state, plan.verdict.reason) == ("Stalled", "AddressNotAllowed")
    assert "denied by the operator's outbound policy" in plan.verdict.message
    assert plan.children == []
    assert kube.BACKEND in plan.prune
    assert [(d.type, d.ok, d.reason) for d in plan.details] == [("EndpointResolved", False, "AddressNotAllowed")]


def test_an_inference_service_whose_address_is_denied_is_stalled() -> None:
    isvc = {"metadata": {"name": "llama"}, "status": {"address": {"url": "http://169.254.169.254/"}}}
    world = BackendWorld(namespace="llm", name="b", ai_gateway_version="v1beta1", inference_service=isvc,
                         inference_service_checked=True)
    plan = render(backend({"inferenceService": {"name": "llama"}}), world)
    assert plan.verdict.reason == "AddressNotAllowed"


def test_an_allowed_backend_is_written() -> None:
    plan = render(backend({"ip": {"address": "10.0.0.7", "port": 8000}}),
                  BackendWorld(namespace="llm", name="b", ai_gateway_version="v1beta1"))
    assert [c.rtype.kind for c in plan.children] == ["Backend", "AIServiceBackend"]


def test_traffic_config_refusals_name_each_address() -> None:
    spec = TrafficConfigSpec.model_validate({
        "inferenceService": {"ref": {"name": "llama"}}, "stable": {"version": "v1"},
        "analysis": {"metrics": [{"name": "e", "builtin": "ErrorRate", "max": 0.1}],
                     "webhooks": [{"name": "gate", "type": "Rollout", "url": "http://169.254.169.254/latest"},
                                  {"name": "ok", "type": "Rollout", "url": "http://127.0.0.1:8080/"}]},
    })
    refusals = outbound_refusals(spec, "http://[fd00:ec2::254]:9090", DEFAULT)
    assert refusals == [
        "the operator's Prometheus address: fd00:ec2::254 is denied by the operator's outbound policy "
        "(fd00:ec2::254/128)",
        "webhook gate: 169.254.169.254 is denied by the operator's outbound policy (169.254.0.0/16)",
    ]
    assert outbound_refusals(spec, "http://prometheus.monitoring:9090", DEFAULT) == [refusals[1]]


def test_a_templates_own_prometheus_is_checked_against_the_policy_too() -> None:
    spec = TrafficConfigSpec.model_validate({
        "inferenceService": {"ref": {"name": "llama"}}, "stable": {"version": "v1"},
        "analysis": {"metrics": [{"name": "ttft", "templateRef": {"name": "t", "kind": "ClusterMetricTemplate"}}]},
    })
    template = {"spec": {"builtin": "TimeToFirstTokenP95", "max": 1.0,
                         "prometheus": {"address": "http://metadata.google.internal/computeMetadata"}}}
    _, resolved = with_templates(spec, "llm", lambda kind, namespace, name: template)
    assert template_refusals(resolved, DEFAULT) == [
        "the Prometheus of metric ttft's template: metadata.google.internal is denied by the operator's outbound "
        "policy (metadata.google.internal)"]
    assert template_refusals(resolved, OutboundPolicy.parse(deny=[], allow=[])) == []


def test_the_charts_default_deny_list_is_the_operators() -> None:
    values = yaml.safe_load((Path(__file__).resolve().parents[2] / "charts" / "model-traffic-operator" /
                             "values.yaml").read_text())
    assert tuple(values["outbound"]["deny"]) == DEFAULT_DENY
    assert values["outbound"]["allow"] == []
