"""Hostile and broken input, table-driven: each spec is refused by ``kubectl apply`` with a message a person reads,
or, where only the operator can tell, reaches a not-Ready condition with a clear reason within seconds. None is
accepted silently.

Refusals run as server-side dry runs (nothing is stored). The namespaces here need no Gateway: nothing in this file
depends on Envoy Gateway's or the AI Gateway's controllers.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from model_traffic import kube as kube_api
from model_traffic.kube import Kube, ResourceType
from tests.conftest import Cluster, Operator, condition, wait_for

pytestmark = pytest.mark.cluster

BACKEND = "ManagedAIServiceBackend"
VIRTUAL_MODEL = "VirtualModel"
TRAFFIC_CONFIG = "TrafficConfig"

GOOD: dict[str, dict[str, Any]] = {
    BACKEND: {"schema": {"name": "OpenAI"}, "endpoint": {"fqdn": {"hostname": "api.openai.com", "port": 443}}},
    VIRTUAL_MODEL: {"modelName": "gpt-4", "backends": [{"name": "openai"}]},
    TRAFFIC_CONFIG: {
        "modelName": "llama-3",
        "inferenceService": {"template": {"predictor": {"model": {"modelFormat": {"name": "huggingface"}}}}},
        "stable": {"version": "v1", "storageUri": "hf://org/llama:rev1"},
        "analysis": {"interval": "1m", "metrics": [{"name": "errors", "builtin": "ErrorRate", "max": 0.01}]},
    },
}

CONTROL = "no control characters"
PRINTABLE_WORD = "without spaces or control characters"
CREDENTIAL = "headerMutation must not set credential or session headers"
STORAGE = "storageUri must be <scheme>://<location>"
QUERY = "query may only use the template variables"
INTERVAL = "must be a duration between 1s and 24h"
REQUEST = "must be a duration between 1ms and 1h"
BASELINE = "Pod Security's baseline profile forbids it"


def document(kind: str, spec: dict[str, Any], name: str = "hostile") -> str:
    return json.dumps({"apiVersion": "modeltraffic.io/v1alpha1", "kind": kind, "metadata": {"name": name},
                       "spec": spec})


def changed(kind: str, path: str, value: Any) -> dict[str, Any]:
    """The good spec of ``kind`` with ``value`` at the dotted ``path`` (created as needed)."""
    spec = copy.deepcopy(GOOD[kind])
    *parents, leaf = path.split(".")
    node = spec
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return spec


def header(name: str, value: str = "x") -> dict[str, Any]:
    return changed(BACKEND, "headerMutation", {"set": [{"name": name, "value": value}]})


def predictor(**fields: Any) -> dict[str, Any]:
    return changed(TRAFFIC_CONFIG, "inferenceService.template.predictor",
                   {"model": {"modelFormat": {"name": "huggingface"}}, **fields})


def model(**fields: Any) -> dict[str, Any]:
    return changed(TRAFFIC_CONFIG, "inferenceService.template.predictor.model",
                   {"modelFormat": {"name": "huggingface"}, **fields})


def query(text: str) -> dict[str, Any]:
    return changed(TRAFFIC_CONFIG, "analysis.metrics", [{"name": "custom", "query": text, "max": 1}])


def webhook(**fields: Any) -> dict[str, Any]:
    return changed(TRAFFIC_CONFIG, "analysis.webhooks",
                   [{"name": "gate", "type": "Rollout", "url": "http://hooks.example.com/", **fields}])


# (what, kind, spec, metadata.name, the message kubectl prints)
REFUSED: list[tuple[str, str, dict[str, Any], str, str]] = [
    # --- ManagedAIServiceBackend ---
    ("header value CRLF", BACKEND, header("x-team", "ml\r\nX-Injected: 1"), "b", CONTROL),
    ("header value LF", BACKEND, header("x-team", "ml\nx"), "b", CONTROL),
    ("header value SOH", BACKEND, header("x-team", "ml\x01"), "b", CONTROL),
    ("header value DEL", BACKEND, header("x-team", "ml\x7f"), "b", CONTROL),
    ("header value double tab", BACKEND, header("x-team", "a\t\tb"), "b", CONTROL),
    ("header value leading space", BACKEND, header("x-team", " ml"), "b", CONTROL),
    ("schema.prefix CRLF", BACKEND, changed(BACKEND, "schema.prefix", "/v1\r\nHost: evil"), "b", PRINTABLE_WORD),
    ("schema.prefix space", BACKEND, changed(BACKEND, "schema.prefix", "/v1 x"), "b", PRINTABLE_WORD),
    ("schema.version LF", BACKEND, changed(BACKEND, "schema.version", "v1\n"), "b", PRINTABLE_WORD),
    ("authorization", BACKEND, header("Authorization", "Bearer sk-1"), "b", CREDENTIAL),
    ("proxy-authorization", BACKEND, header("proxy-authorization"), "b", CREDENTIAL),
    ("x-api-key", BACKEND, header("X-Api-Key"), "b", CREDENTIAL),
    ("api-key", BACKEND, header("api-key"), "b", CREDENTIAL),
    ("x-goog-api-key", BACKEND, header("x-goog-api-key"), "b", CREDENTIAL),
    ("x-amz-security-token", BACKEND, header("X-Amz-Security-Token"), "b", CREDENTIAL),
    ("cookie", BACKEND, header("Cookie", "session=1"), "b", CREDENTIAL),
    ("set-cookie", BACKEND, header("set-cookie", "session=1"), "b", CREDENTIAL),
    ("ocp-apim-subscription-key", BACKEND, header("Ocp-Apim-Subscription-Key"), "b", CREDENTIAL),
    ("header name with space", BACKEND, header("x team"), "b", "spec.headerMutation.set[0].name"),
    ("quota model name CRLF", BACKEND,
     changed(BACKEND, "quota", {"perModel": [{"modelName": "gpt\r\n", "limit": 1, "duration": "1h"}]}), "b",
     CONTROL),
    ("sni not a DNS name", BACKEND, changed(BACKEND, "tls", {"sni": "evil host"}), "b", "must be a DNS name"),
    ("hostname CRLF", BACKEND, changed(BACKEND, "endpoint.fqdn.hostname", "a.com\r\nx"), "b", "must be a DNS name"),
    ("hostname empty label", BACKEND, changed(BACKEND, "endpoint.fqdn.hostname", "a..com"), "b",
     "must be a DNS name"),
    ("ip not an IP", BACKEND, changed(BACKEND, "endpoint", {"ip": {"address": "169.254.169.254x", "port": 80}}),
     "b", "address must be an IPv4 or IPv6 address"),
    ("port 0", BACKEND, changed(BACKEND, "endpoint.fqdn.port", 0), "b", "should be greater than or equal to 1"),
    ("port 70000", BACKEND, changed(BACKEND, "endpoint.fqdn.port", 70000), "b",
     "should be less than or equal to 65535"),
    ("backend name 64 characters", BACKEND, GOOD[BACKEND], "b" * 64,
     "metadata.name must be at most 63 characters"),
    ("unknown endpoint field", BACKEND, changed(BACKEND, "endpoint.fqdn.scheme", "gopher"), "b",
     'unknown field "spec.endpoint.fqdn.scheme"'),
    ("unknown credential type", BACKEND,
     changed(BACKEND, "credentials", {"type": "Password", "secretRef": {"name": "s"}}), "b",
     'Unsupported value: "Password"'),
    # --- VirtualModel ---
    ("modelName CRLF", VIRTUAL_MODEL, changed(VIRTUAL_MODEL, "modelName", "gpt-4\r\nx-evil: 1"), "v", CONTROL),
    ("modelName SOH", VIRTUAL_MODEL, changed(VIRTUAL_MODEL, "modelName", "gpt\x01"), "v", CONTROL),
    ("modelNameOverride LF", VIRTUAL_MODEL,
     changed(VIRTUAL_MODEL, "backends", [{"name": "openai", "modelNameOverride": "gpt\n4"}]), "v", CONTROL),
    ("match value CRLF", VIRTUAL_MODEL, changed(VIRTUAL_MODEL, "backends", [
        {"name": "openai"},
        {"name": "canary", "matches": [{"headers": [{"name": "x-canary", "value": "1\r\nx: y"}]}]}]), "v",
     "spec.backends[1].matches[0].headers[0].value"),
    ("match on the model header", VIRTUAL_MODEL, changed(VIRTUAL_MODEL, "backends", [
        {"name": "openai"},
        {"name": "canary", "matches": [{"headers": [{"name": "X-AI-EG-Model", "value": "x"}]}]}]), "v",
     "x-ai-eg-model cannot be a match header"),
    ("timeouts.request 99999h", VIRTUAL_MODEL, changed(VIRTUAL_MODEL, "timeouts.request", "99999h"), "v", REQUEST),
    ("timeouts.request 0s", VIRTUAL_MODEL, changed(VIRTUAL_MODEL, "timeouts.request", "0s"), "v", REQUEST),
    ("timeouts.request 2h", VIRTUAL_MODEL, changed(VIRTUAL_MODEL, "timeouts.request", "2h"), "v", REQUEST),
    ("timeouts.request 1w", VIRTUAL_MODEL, changed(VIRTUAL_MODEL, "timeouts.request", "1w"), "v",
     "spec.timeouts.request"),
    ("perTryTimeout 99999h", VIRTUAL_MODEL, changed(VIRTUAL_MODEL, "retry.perTryTimeout", "99999h"), "v", REQUEST),
    ("health check interval 100h", VIRTUAL_MODEL,
     changed(VIRTUAL_MODEL, "healthCheck.passive", {"interval": "100h"}), "v", REQUEST),
    ("base ejection 0s", VIRTUAL_MODEL,
     changed(VIRTUAL_MODEL, "healthCheck.passive", {"baseEjectionTime": "0s"}), "v", REQUEST),
    ("virtual model name 64 characters", VIRTUAL_MODEL, GOOD[VIRTUAL_MODEL], "v" * 64,
     "metadata.name must be at most 63 characters"),
    ("tenant header CRLF", VIRTUAL_MODEL,
     changed(VIRTUAL_MODEL, "rateLimit", {"tenantHeader": "x\r\n", "requests": {"limit": 1, "unit": "Minute"}}),
     "v", "spec.rateLimit.tenantHeader"),
    ("retry attempts 11", VIRTUAL_MODEL, changed(VIRTUAL_MODEL, "retry.attempts", 11), "v",
     "should be less than or equal to 10"),
    ("negative weight", VIRTUAL_MODEL, changed(VIRTUAL_MODEL, "backends", [{"name": "openai", "weight": -1}]), "v",
     "should be greater than or equal to 0"),
    ("priority 17", VIRTUAL_MODEL, changed(VIRTUAL_MODEL, "backends", [{"name": "a"}, {"name": "b", "priority": 17}]),
     "v", "should be less than or equal to 16"),
    ("CEL cost without cel", VIRTUAL_MODEL,
     changed(VIRTUAL_MODEL, "llmRequestCosts", [{"metadataKey": "k", "type": "CEL"}]), "v",
     "cel is set exactly when type is CEL"),
    # --- TrafficConfig: storage ---
    ("storageUri ftp", TRAFFIC_CONFIG, changed(TRAFFIC_CONFIG, "stable.storageUri", "ftp://host/m"), "t", STORAGE),
    ("storageUri no scheme", TRAFFIC_CONFIG, changed(TRAFFIC_CONFIG, "stable.storageUri", "/mnt/models"), "t",
     STORAGE),
    ("storageUri semicolon", TRAFFIC_CONFIG, changed(TRAFFIC_CONFIG, "stable.storageUri", "hf://o/m; rm -rf /"),
     "t", STORAGE),
    ("storageUri $()", TRAFFIC_CONFIG, changed(TRAFFIC_CONFIG, "stable.storageUri", "hf://o/m$(id)"), "t", STORAGE),
    ("storageUri backtick", TRAFFIC_CONFIG, changed(TRAFFIC_CONFIG, "stable.storageUri", "hf://o/m`id`"), "t",
     STORAGE),
    ("storageUri &&", TRAFFIC_CONFIG, changed(TRAFFIC_CONFIG, "stable.storageUri", "s3://b/m&&curl"), "t", STORAGE),
    ("storageUri pipe", TRAFFIC_CONFIG, changed(TRAFFIC_CONFIG, "stable.storageUri", "s3://b/m|sh"), "t", STORAGE),
    ("storageUri LF", TRAFFIC_CONFIG, changed(TRAFFIC_CONFIG, "stable.storageUri", "hf://o/m\nx"), "t", STORAGE),
    ("storageUri space", TRAFFIC_CONFIG, changed(TRAFFIC_CONFIG, "stable.storageUri", "hf://o/ m"), "t", STORAGE),
    ("storageUri quote", TRAFFIC_CONFIG, changed(TRAFFIC_CONFIG, "stable.storageUri", "gs://b/'m'"), "t", STORAGE),
    ("storageUri redirect", TRAFFIC_CONFIG, changed(TRAFFIC_CONFIG, "stable.storageUri", "hf://o/m>out"), "t",
     STORAGE),
    ("canary storageUri", TRAFFIC_CONFIG,
     changed(TRAFFIC_CONFIG, "canary", {"version": "v2", "storageUri": "hf://o/m;id"}), "t", STORAGE),
    ("template storageUri", TRAFFIC_CONFIG, model(storageUri="hf://o/m$HOME"), "t", STORAGE),
    # --- TrafficConfig: analysis ---
    ("query unknown variable", TRAFFIC_CONFIG, query('up{pod="{{ .Pod }}"}'), "t", QUERY),
    ("query nested field", TRAFFIC_CONFIG, query("up{a=\"{{ .Values.secret }}\"}"), "t", QUERY),
    ("query pipeline", TRAFFIC_CONFIG, query('up{v="{{ .Version | printf }}"}'), "t", QUERY),
    ("query without dot", TRAFFIC_CONFIG, query('up{v="{{Version}}"}'), "t", QUERY),
    ("interval 500ms", TRAFFIC_CONFIG, changed(TRAFFIC_CONFIG, "analysis.interval", "500ms"), "t", INTERVAL),
    ("interval 0s", TRAFFIC_CONFIG, changed(TRAFFIC_CONFIG, "analysis.interval", "0s"), "t", INTERVAL),
    ("interval 25h", TRAFFIC_CONFIG, changed(TRAFFIC_CONFIG, "analysis.interval", "25h"), "t", INTERVAL),
    ("interval 99999h", TRAFFIC_CONFIG, changed(TRAFFIC_CONFIG, "analysis.interval", "99999h"), "t", INTERVAL),
    ("metric window 48h", TRAFFIC_CONFIG, changed(TRAFFIC_CONFIG, "analysis.metrics", [
        {"name": "errors", "builtin": "ErrorRate", "max": 0.01, "interval": "48h"}]), "t", INTERVAL),
    ("webhook timeout 11m", TRAFFIC_CONFIG, webhook(timeout="11m"), "t", "must be a duration between 1s and 10m"),
    ("webhook timeout 0s", TRAFFIC_CONFIG, webhook(timeout="0s"), "t", "must be a duration between 1s and 10m"),
    ("webhook not http", TRAFFIC_CONFIG, webhook(url="file:///etc/passwd"), "t", "spec.analysis.webhooks[0].url"),
    ("threshold 0", TRAFFIC_CONFIG, changed(TRAFFIC_CONFIG, "analysis.threshold", 0), "t",
     "should be greater than or equal to 1"),
    ("threshold 101", TRAFFIC_CONFIG, changed(TRAFFIC_CONFIG, "analysis.threshold", 101), "t",
     "should be less than or equal to 100"),
    ("iterations 0", TRAFFIC_CONFIG, changed(TRAFFIC_CONFIG, "analysis.iterations", 0), "t",
     "should be greater than or equal to 1"),
    ("iterations 1001", TRAFFIC_CONFIG, changed(TRAFFIC_CONFIG, "analysis.iterations", 1001), "t",
     "should be less than or equal to 1000"),
    ("modelName CRLF", TRAFFIC_CONFIG, changed(TRAFFIC_CONFIG, "modelName", "llama\r\nx: y"), "t", CONTROL),
    # --- TrafficConfig: names ---
    ("traffic config name 46 characters", TRAFFIC_CONFIG, GOOD[TRAFFIC_CONFIG], "t" * 46,
     "metadata.name must be at most 45 characters"),
    ("name and stable version too long", TRAFFIC_CONFIG, changed(TRAFFIC_CONFIG, "stable.version", "v" * 8),
     "t" * 40, "metadata.name and spec.stable.version are too long together"),
    ("name and canary version too long", TRAFFIC_CONFIG,
     changed(TRAFFIC_CONFIG, "canary", {"version": "v" * 8}), "t" * 40,
     "metadata.name and spec.canary.version are too long together"),
    # --- TrafficConfig: InferenceService template ---
    ("custom container predictor", TRAFFIC_CONFIG,
     changed(TRAFFIC_CONFIG, "inferenceService.template.predictor", {"minReplicas": 1}), "t",
     "predictor.model is required"),
    ("containers", TRAFFIC_CONFIG, predictor(containers=[{"name": "c", "image": "evil"}]), "t",
     'unknown field "spec.inferenceService.template.predictor.containers"'),
    ("model image", TRAFFIC_CONFIG, model(image="evil:latest"), "t",
     'unknown field "spec.inferenceService.template.predictor.model.image"'),
    ("model command", TRAFFIC_CONFIG, model(command=["sh", "-c", "id"]), "t",
     'unknown field "spec.inferenceService.template.predictor.model.command"'),
    ("privileged", TRAFFIC_CONFIG, model(securityContext={"privileged": True}), "t",
     "privileged containers are refused"),
    ("SYS_ADMIN", TRAFFIC_CONFIG, model(securityContext={"capabilities": {"add": ["SYS_ADMIN"]}}), "t",
     "capabilities.add may only name"),
    ("seccomp Unconfined", TRAFFIC_CONFIG, model(securityContext={"seccompProfile": {"type": "Unconfined"}}), "t",
     'Unsupported value: "Unconfined"'),
    ("hostPort", TRAFFIC_CONFIG, model(ports=[{"containerPort": 8080, "hostPort": 80}]), "t",
     "hostPort is refused"),
    ("hostNetwork", TRAFFIC_CONFIG, predictor(hostNetwork=True), "t", "hostNetwork, hostPID and hostIPC are refused"),
    ("hostPID", TRAFFIC_CONFIG, predictor(hostPID=True), "t", "hostNetwork, hostPID and hostIPC are refused"),
    ("hostIPC", TRAFFIC_CONFIG, predictor(hostIPC=True), "t", "hostNetwork, hostPID and hostIPC are refused"),
    ("hostPath volume", TRAFFIC_CONFIG, predictor(volumes=[{"name": "root", "hostPath": {"path": "/"}}]), "t",
     "hostPath volumes are refused"),
    ("min above max replicas", TRAFFIC_CONFIG, predictor(minReplicas=3, maxReplicas=1), "t",
     "minReplicas must not exceed maxReplicas"),
    ("initContainers", TRAFFIC_CONFIG, predictor(initContainers=[{"name": "x", "image": "evil"}]), "t",
     'unknown field "spec.inferenceService.template.predictor.initContainers"'),
    ("transformer", TRAFFIC_CONFIG,
     changed(TRAFFIC_CONFIG, "inferenceService.template.transformer", {"containers": []}), "t",
     'unknown field "spec.inferenceService.template.transformer"'),
]


def test_the_good_specs_are_accepted(cluster: Cluster, plain_namespace: str) -> None:
    for kind, spec in GOOD.items():
        result = cluster.kubectl("apply", "--dry-run=server", "-n", plain_namespace, "-f", "-",
                                 stdin=document(kind, spec), check=False)
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("kind", "spec", "name", "message"), [case[1:] for case in REFUSED],
                         ids=[case[0] for case in REFUSED])
def test_refused_at_apply(cluster: Cluster, plain_namespace: str, kind: str, spec: dict[str, Any], name: str,
                          message: str) -> None:
    result = cluster.kubectl("apply", "--dry-run=server", "-n", plain_namespace, "-f", "-",
                             stdin=document(kind, spec, name), check=False)
    assert result.returncode != 0, f"{kind} was accepted"
    assert message in result.stderr, result.stderr


def traffic_config_with(**analysis: Any) -> dict[str, Any]:
    spec = copy.deepcopy(GOOD[TRAFFIC_CONFIG])
    spec["analysis"] = {"interval": "1s", **analysis}
    spec["canary"] = {"version": "v2", "storageUri": "hf://org/llama:rev2"}
    return spec


# (what, kind, spec, the reason, words of the message): only the operator can tell.
STALLED: list[tuple[str, str, dict[str, Any], str, str]] = [
    ("metadata IPv4", BACKEND, changed(BACKEND, "endpoint", {"ip": {"address": "169.254.169.254", "port": 80}}),
     "AddressNotAllowed", "169.254.169.254 is denied"),
    ("metadata IPv6", BACKEND, changed(BACKEND, "endpoint", {"ip": {"address": "fd00:ec2::254", "port": 80}}),
     "AddressNotAllowed", "fd00:ec2::254 is denied"),
    ("link-local IPv6", BACKEND, changed(BACKEND, "endpoint", {"ip": {"address": "fe80::1", "port": 80}}),
     "AddressNotAllowed", "fe80::1 is denied"),
    ("Alibaba metadata", BACKEND, changed(BACKEND, "endpoint", {"ip": {"address": "100.100.100.200", "port": 80}}),
     "AddressNotAllowed", "100.100.100.200 is denied"),
    ("GCP metadata name", BACKEND,
     changed(BACKEND, "endpoint", {"fqdn": {"hostname": "metadata.google.internal", "port": 80}}),
     "AddressNotAllowed", "metadata.google.internal is denied"),
    ("link-local name", BACKEND,
     changed(BACKEND, "endpoint", {"fqdn": {"hostname": "instance-data.ec2.internal", "port": 80}}),
     "AddressNotAllowed", "instance-data.ec2.internal is denied"),
    ("webhook at metadata", TRAFFIC_CONFIG,
     traffic_config_with(webhooks=[{"name": "gate", "type": "Rollout", "url": "http://169.254.169.254/latest"}]),
     "AddressNotAllowed", "webhook gate: 169.254.169.254 is denied"),
    ("webhook at metadata in hex", TRAFFIC_CONFIG,
     traffic_config_with(webhooks=[{"name": "gate", "type": "PreRollout", "url": "http://0xa9fea9fe/"}]),
     "AddressNotAllowed", "0xa9fea9fe (169.254.169.254) is denied"),
    ("Prometheus at metadata", TRAFFIC_CONFIG,
     traffic_config_with(prometheus={"address": "http://[fd00:ec2::254]:9090"},
                         metrics=[{"name": "errors", "builtin": "ErrorRate", "max": 0.01}]),
     "AddressNotAllowed", "spec.analysis.prometheus.address: fd00:ec2::254 is denied"),
]


def stalled_with(kube: Kube, rtype: ResourceType, namespace: str, reason: str, timeout: float = 30) -> dict[str, Any]:
    """The object "hostile" once it is Stalled for ``reason``; on timeout, the conditions it has say why not."""
    def stalled() -> dict[str, Any] | None:
        obj = kube.get(rtype, namespace, "hostile")
        return obj if condition(obj, "Stalled").get("reason") == reason else None
    try:
        return wait_for(stalled, timeout, f"{rtype.kind} Stalled={reason}")
    except AssertionError as error:
        conditions = ((kube.get(rtype, namespace, "hostile") or {}).get("status") or {}).get("conditions")
        raise AssertionError(f"{error}; conditions: {conditions}") from None


@pytest.mark.parametrize(("kind", "spec", "reason", "words"), [case[1:] for case in STALLED],
                         ids=[case[0] for case in STALLED])
def test_stalled_by_the_operator(cluster: Cluster, kube: Kube, operator: Operator, plain_namespace: str, kind: str,
                                 spec: dict[str, Any], reason: str, words: str) -> None:
    cluster.kubectl("apply", "-n", plain_namespace, "-f", "-", stdin=document(kind, spec))
    rtype = kube_api.MANAGED_AI_SERVICE_BACKEND if kind == BACKEND else kube_api.TRAFFIC_CONFIG
    stalled = stalled_with(kube, rtype, plain_namespace, reason)
    assert stalled["status"]["observedGeneration"] == stalled["metadata"]["generation"]
    assert condition(stalled, "Ready")["status"] == "False"
    assert words in condition(stalled, "Stalled")["message"]
    if kind == BACKEND:
        assert kube.get(kube_api.BACKEND, plain_namespace, "hostile") is None  # nothing handed to the gateway


def test_a_clone_the_inference_service_schema_refuses_is_child_rejected(cluster: Cluster, kube: Kube,
                                                                      operator: Operator,
                                                                      plain_namespace: str) -> None:
    """A referenced custom-container InferenceService: its clone for a new version gets --model_name on
    predictor.args, which KServe's schema does not declare. Only the API server can tell; the operator says so."""
    cluster.kubectl("apply", "-n", plain_namespace, "-f", "-", stdin=json.dumps({
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": "custom"},
        "spec": {"predictor": {"containers": [{"name": "kserve-container", "image": "example/server:1"}]}},
    }))
    # KServe serves the stable version (its pod runs on a fake node); then the rollout writes the candidate's clone.
    wait_for(lambda: condition(kube.get(kube_api.INFERENCE_SERVICE, plain_namespace, "custom"), "Ready")
             .get("status") == "True", 90, "KServe's InferenceService custom Ready")
    spec = {"modelName": "custom", "inferenceService": {"ref": {"name": "custom"}}, "stable": {"version": "v1"},
            "canary": {"version": "v2"}}
    cluster.kubectl("apply", "-n", plain_namespace, "-f", "-", stdin=document(TRAFFIC_CONFIG, spec))
    stalled = stalled_with(kube, kube_api.TRAFFIC_CONFIG, plain_namespace, "ChildRejected")
    assert "InferenceService/hostile-v2" in condition(stalled, "Stalled")["message"]
    assert stalled["status"]["observedGeneration"] == stalled["metadata"]["generation"]


def test_the_table_is_hostile_enough() -> None:
    assert len(REFUSED) + len(STALLED) + 1 >= 80
    assert {case[1] for case in REFUSED} == {BACKEND, VIRTUAL_MODEL, TRAFFIC_CONFIG}
