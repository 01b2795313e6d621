"""Hostile and broken input the models refuse themselves (pydantic), and the CEL rules they hand the API server.

What only the API server evaluates (CEL) is run against a real one in tests/cluster/test_hostile_input.py; here the
rules are checked to be in the generated CRDs, and the pure checks are run."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from model_traffic.kinds.backend.spec import CREDENTIAL_HEADERS, ManagedAIServiceBackendSpec
from model_traffic.kinds.common import Matching
from model_traffic.kinds.trafficconfig.analysis_spec import TEMPLATE_VARIABLES
from model_traffic.kinds.trafficconfig.inferenceservice import (
    BASELINE_CAPABILITIES,
    STORAGE_URI_PATTERN,
    InferenceServiceTemplate,
)
from model_traffic.kinds.trafficconfig.spec import TrafficConfigSpec
from model_traffic.kinds.virtualmodel.spec import VirtualModelSpec
from model_traffic_dev import crdgen

TEMPLATE = {"predictor": {"model": {"modelFormat": {"name": "huggingface"}}}}


def traffic_config(**fields: Any) -> TrafficConfigSpec:
    return TrafficConfigSpec.model_validate({"inferenceService": {"template": TEMPLATE}, "stable": {"version": "v1"},
                                             **fields})


@pytest.mark.parametrize("uri", [
    "hf://meta-llama/Llama-3.1-8B-Instruct@0e9e39f", "s3://bucket/models/llama", "gs://bucket/m", "pvc://claim/m",
    "oci://registry.example.com/models/llama:v1", "https://account.blob.core.windows.net/models/llama",
    "http://models.internal/llama.tar.gz", "hdfs://nn/m", "webhdfs://nn/m", "file:///mnt/models",
])
def test_storage_uris_kserve_takes(uri: str) -> None:
    assert traffic_config(stable={"version": "v1", "storageUri": uri}).stable.storage_uri == uri


@pytest.mark.parametrize("uri", [
    "ftp://host/m", "hf:/org/m", "/mnt/models", "hf://org/m; rm -rf /", "hf://org/m$(id)", "hf://org/m`id`",
    "s3://b/m&&curl x", "s3://b/m|sh", "hf://org/m\nx", "hf://org/ m", "hf://org/m\x00", "gs://b/'m'", "gs://b/\"m\"",
    "hf://org/m>out", "hf://",
])
def test_storage_uris_refused(uri: str) -> None:
    with pytest.raises(ValidationError, match="storageUri must be <scheme>://<location>"):
        traffic_config(stable={"version": "v1", "storageUri": uri})


def test_storage_uri_pattern_is_one_re2_and_python_can_both_read() -> None:
    assert "'" not in STORAGE_URI_PATTERN and '"' not in STORAGE_URI_PATTERN  # it goes into a CEL literal
    assert re.fullmatch(STORAGE_URI_PATTERN, "hf://org/m@rev")


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\x00b", "a\x7fb", "tab\t\tdouble", " lead"])
def test_header_values_with_control_characters_are_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="no control characters"):
        ManagedAIServiceBackendSpec.model_validate({
            "schema": {"name": "OpenAI"}, "endpoint": {"fqdn": {"hostname": "a.example.com", "port": 443}},
            "headerMutation": {"set": [{"name": "x-team", "value": value}]},
        })
    with pytest.raises(ValidationError, match="no control characters"):
        VirtualModelSpec.model_validate({"modelName": value, "backends": [{"name": "a"}]})
    with pytest.raises(ValidationError, match="no control characters"):
        traffic_config(modelName=value)


@pytest.mark.parametrize("field", ["prefix", "version"])
def test_schema_prefix_and_version_are_one_printable_word(field: str) -> None:
    with pytest.raises(ValidationError, match="without spaces or control characters"):
        ManagedAIServiceBackendSpec.model_validate({
            "schema": {"name": "OpenAI", field: "/v1\r\nHost: evil"},
            "endpoint": {"fqdn": {"hostname": "a.example.com", "port": 443}},
        })


@pytest.mark.parametrize(("where", "value", "ok"), [
    ("interval", "1s", True), ("interval", "24h", True), ("interval", "500ms", False), ("interval", "0s", False),
    ("interval", "25h", False), ("interval", "99999h", False),
])
def test_analysis_interval_bounds(where: str, value: str, ok: bool) -> None:
    def build() -> TrafficConfigSpec:
        return traffic_config(analysis={where: value})
    if ok:
        build()
    else:
        with pytest.raises(ValidationError, match="must be a duration between 1s and 24h"):
            build()


@pytest.mark.parametrize(("timeouts", "ok"), [
    ({"request": "120s"}, True), ({"request": "1h"}, True), ({"request": "99999h"}, False), ({"request": "0s"}, False),
])
def test_request_timeout_bounds(timeouts: dict[str, str], ok: bool) -> None:
    spec = {"backends": [{"name": "a"}], "timeouts": timeouts}
    if ok:
        VirtualModelSpec.model_validate(spec)
    else:
        with pytest.raises(ValidationError, match="between 1ms and 1h"):
            VirtualModelSpec.model_validate(spec)


def test_webhook_timeout_bounds() -> None:
    hook = {"name": "h", "type": "Rollout", "url": "http://hooks.example.com/"}
    traffic_config(analysis={"webhooks": [{**hook, "timeout": "10m"}]})
    with pytest.raises(ValidationError, match="between 1s and 10m"):
        traffic_config(analysis={"webhooks": [{**hook, "timeout": "11m"}]})


def test_matching_refuses_quotes_in_a_pattern_meant_for_cel() -> None:
    with pytest.raises(ValueError, match="x22"):
        Matching("^[^']+$", "no quotes").__get_pydantic_json_schema__(
            {"type": "str"}, lambda schema: {"type": "string"})  # type: ignore[arg-type,return-value]


def test_template_takes_what_a_model_version_needs() -> None:
    template = InferenceServiceTemplate.model_validate({"predictor": {
        "minReplicas": 1, "maxReplicas": 3, "serviceAccountName": "models", "nodeSelector": {"gpu": "a100"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "volumes": [{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}}],
        "model": {
            "modelFormat": {"name": "huggingface"}, "runtime": "vllm", "args": ["--max_model_len=8192"],
            "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}],
            "resources": {"limits": {"nvidia.com/gpu": 1, "memory": "32Gi"}},
            "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}],
            "securityContext": {"runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
        },
    }})
    assert template.wire()["predictor"]["model"]["resources"]["limits"] == {"nvidia.com/gpu": 1, "memory": "32Gi"}


@pytest.mark.parametrize("predictor", [
    {"containers": [{"name": "kserve-container", "image": "evil"}]},
    {"model": {"modelFormat": {"name": "hf"}, "image": "evil"}},
    {"model": {"modelFormat": {"name": "hf"}, "command": ["sh", "-c", "curl x | sh"]}},
    {"model": {"modelFormat": {"name": "hf"}}, "initContainers": [{"name": "x"}]},
    {"model": {"modelFormat": {"name": "hf"}, "securityContext": {"seccompProfile": {"type": "Unconfined"}}}},
])
def test_template_refuses_what_it_does_not_declare(predictor: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        InferenceServiceTemplate.model_validate({"predictor": predictor})


def _rules(kind: str) -> list[dict[str, str]]:
    info = next(i for i in crdgen.KINDS if i.kind == kind)
    found: list[dict[str, str]] = []

    def walk(node: dict[str, Any]) -> None:
        found.extend(node.get("x-kubernetes-validations", []))
        for child in (node.get("properties") or {}).values():
            walk(child)
        if "items" in node:
            walk(node["items"])
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"])
    walk(crdgen.openapi_schema(info))
    return found


def _messages(kind: str) -> str:
    return "\n".join(rule["message"] for rule in _rules(kind))


def test_the_crds_carry_the_refusals() -> None:
    backend, traffic = _messages("ManagedAIServiceBackend"), _messages("TrafficConfig")
    for header in ("x-goog-api-key", "cookie", "set-cookie", "proxy-authorization", "x-amz-security-token",
                   "api-key", "x-api-key"):
        assert header in CREDENTIAL_HEADERS and header in backend
    for phrase in ("privileged containers are refused", "hostNetwork, hostPID and hostIPC are refused",
                   "hostPath volumes are refused", "hostPort is refused", "predictor.model is required",
                   "query may only use the template variables", "metadata.name must be at most 45 characters"):
        assert phrase in traffic, phrase
    assert all(capability in traffic for capability in BASELINE_CAPABILITIES)
    for kind in ("ManagedAIServiceBackend", "VirtualModel"):
        assert "metadata.name must be at most 63 characters" in _messages(kind)


def test_query_template_rule_names_every_variable_the_renderer_knows() -> None:
    rule = next(r["rule"] for r in _rules("TrafficConfig") if "findAll" in r["rule"])
    assert all(variable in rule for variable in TEMPLATE_VARIABLES)
