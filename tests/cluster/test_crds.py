"""Our CRDs on a real API server: what kubectl apply accepts, what it refuses and with which message."""

from __future__ import annotations

import pytest

from tests.conftest import Cluster, our_yaml

pytestmark = pytest.mark.cluster


def doc(kind: str, name: str, spec: str) -> str:
    return our_yaml(kind, name, spec)


def dry_run(cluster: Cluster, namespace: str, text: str) -> tuple[bool, str]:
    result = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", stdin=text, check=False)
    return result.returncode == 0, result.stderr


GOOD_BACKEND = """\
    schema: {name: OpenAI, version: v1}
    endpoint: {fqdn: {hostname: api.openai.com, port: 443}}
    tls: {sni: api.openai.com, wellKnownCACertificates: System}
    credentials: {type: APIKey, secretRef: {name: openai-key}}
    headerMutation: {set: [{name: x-team, value: ml}], remove: [x-internal]}
    bodyMutation: {set: [{path: service_tier, value: '"default"'}], remove: [internal_flag]}
    quota:
      service: {limit: 1000000, duration: 1h}
      perModel: [{modelName: gpt-4o, limit: 200000, duration: 1h}]
"""

GOOD_VIRTUAL_MODEL = """\
    modelName: gpt-4
    backends:
    - {name: openai, modelNameOverride: gpt-4o, weight: 80}
    - {name: azure, modelNameOverride: gpt-4o-eu, weight: 20}
    - {name: anthropic, modelNameOverride: claude-sonnet-4, priority: 1}
    - {name: raw-backend, kind: AIServiceBackend}
    retry: {attempts: 3, perTryTimeout: 30s, retryOn: {statusCodes: [500, 502, 503], triggers: [connect-failure]}}
    timeouts: {request: 120s}
    loadBalancer: {type: LeastRequest}
    healthCheck: {passive: {consecutive5XxErrors: 5, interval: 10s, baseEjectionTime: 30s}}
    rateLimit: {tenantHeader: x-tenant-id, tokens: {limit: 100000, unit: Hour}, requests: {limit: 600, unit: Minute}}
    llmRequestCosts: [{metadataKey: llm_total_token, type: TotalToken}]
"""

GOOD_TRAFFIC_CONFIG = """\
    modelName: llama-3
    schema: {name: OpenAI}
    inferenceService: {template: {predictor: {model: {modelFormat: {name: huggingface}}}}}
    strategy: Canary
    stable: {version: v1, storageUri: "hf://org/model:rev1"}
    canary: {version: v2, storageUri: "hf://org/model:rev2"}
    analysis:
      interval: 1m
      threshold: 3
      stepWeights: [5, 10, 25, 50]
      prometheus: {address: "http://prometheus.monitoring:9090"}
      metrics:
      - {name: error-rate, builtin: ErrorRate, max: 0.01}
      - {name: ttft-p95, builtin: TimeToFirstTokenP95, maxRelativeToStable: 1.2}
"""


@pytest.mark.parametrize(("kind", "spec"), [
    ("ManagedAIServiceBackend", GOOD_BACKEND),
    ("VirtualModel", GOOD_VIRTUAL_MODEL),
    ("TrafficConfig", GOOD_TRAFFIC_CONFIG),
])
def test_valid_objects_are_accepted(cluster: Cluster, namespace: str, kind: str, spec: str) -> None:
    ok, err = dry_run(cluster, namespace, doc(kind, "good", spec))
    assert ok, err


INVALID = [
    ("ManagedAIServiceBackend", """\
        schema: {name: OpenAI}
        endpoint: {fqdn: {hostname: a.example.com, port: 443}, ip: {address: 10.0.0.7, port: 8000}}
     """, "endpoint must set exactly one of fqdn, ip, inferenceService, inferencePool or backendRef"),
    ("ManagedAIServiceBackend", """\
        schema: {name: OpenAI}
        endpoint: {}
     """, "endpoint must set exactly one of"),
    ("ManagedAIServiceBackend", """\
        schema: {name: GoogleAI}
        endpoint: {fqdn: {hostname: a.example.com, port: 443}}
     """, 'Unsupported value: "GoogleAI"'),
    ("ManagedAIServiceBackend", """\
        schema: {name: OpenAI}
        endpoint: {fqdn: {hostname: a.example.com, port: 443}}
        headerMutation: {set: [{name: Authorization, value: Bearer sk-123}]}
     """, "headerMutation must not set credential or session headers"),
    ("ManagedAIServiceBackend", """\
        schema: {name: AWSBedrock}
        endpoint: {fqdn: {hostname: bedrock-runtime.us-east-1.amazonaws.com, port: 443}}
        credentials: {type: AWSCredentials, secretRef: {name: aws}}
     """, "credentials of type AWSCredentials need region"),
    ("ManagedAIServiceBackend", """\
        schema: {name: OpenAI}
        endpoint: {inferencePool: {name: pool}}
        tls: {sni: x}
     """, "tls applies to fqdn, ip and inferenceService endpoints"),
    ("ManagedAIServiceBackend", """\
        schema: {name: OpenAI}
        endpoint: {ip: {address: not-an-ip, port: 80}}
     """, "address must be an IPv4 or IPv6 address"),
    ("ManagedAIServiceBackend", """\
        schema: {name: OpenAI}
        endpoint: {fqdn: {hostname: a.example.com, port: 443}}
        quota: {service: {limit: 10, duration: 1w}}
     """, 'Unsupported value: "1w"'),
    ("VirtualModel", """\
        backends: []
     """, "should have at least 1 items"),
    ("VirtualModel", """\
        backends: [{name: a, weight: 1}, {name: a, weight: 2}]
     """, "backend names must be unique"),
    ("VirtualModel", """\
        backends: [{name: a, weight: 0}, {name: b, priority: 1}]
     """, "tier 0 (priority 0) needs at least one backend with a positive weight"),
    ("VirtualModel", """\
        backends: [{name: a}, {name: pool, kind: InferencePool}]
     """, "an InferencePool must be alone in its priority tier"),
    ("VirtualModel", """\
        backends: [{name: a}]
        rateLimit: {tenantHeader: "bad header", requests: {limit: 1, unit: Minute}}
     """, "spec.rateLimit.tenantHeader"),
    ("VirtualModel", """\
        backends: [{name: a}]
        rateLimit: {requests: {limit: 1, unit: Fortnight}}
     """, 'Unsupported value: "Fortnight"'),
    ("TrafficConfig", """\
        inferenceService: {ref: {name: llama}}
        stable: {version: v1}
        canary: {version: v1}
     """, "canary.version must differ from stable.version"),
    ("TrafficConfig", """\
        inferenceService: {ref: {name: llama}}
        strategy: Weighted
        stable: {version: v1}
        variants: [{version: v1, weight: 70}, {version: v2, weight: 20}]
     """, "variant weights must sum to 100"),
    ("TrafficConfig", """\
        inferenceService: {ref: {name: llama}, template: {predictor: {}}}
        stable: {version: v1}
     """, "inferenceService needs exactly one of template or ref"),
    ("TrafficConfig", """\
        inferenceService: {ref: {name: llama}}
        stable: {version: v1}
        analysis: {stepWeights: [10, 5]}
     """, "stepWeights must be strictly increasing"),
]


@pytest.mark.parametrize(("kind", "spec", "message"), INVALID, ids=[m for _, _, m in INVALID])
def test_invalid_objects_are_refused_with_a_clear_message(
    cluster: Cluster, namespace: str, kind: str, spec: str, message: str
) -> None:
    ok, err = dry_run(cluster, namespace, doc(kind, "bad", spec))
    assert not ok, f"{kind} should have been refused"
    assert message in err, err


def test_kubectl_explain_shows_our_descriptions(cluster: Cluster) -> None:
    out = cluster.kubectl("explain", "managedaiservicebackend.spec.endpoint").stdout
    assert "exactly one" in out
    assert "inferenceService" in out
    out = cluster.kubectl("explain", "vmodel.spec.backends.priority").stdout
    assert "Fallback tier" in out


def test_short_names_and_category(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=doc("VirtualModel", "gpt-4", GOOD_VIRTUAL_MODEL))
    assert "gpt-4" in cluster.kubectl("get", "vmodel", "-n", namespace).stdout
    assert "virtualmodel.modeltraffic.io/gpt-4" in cluster.kubectl("get", "modeltraffic", "-n", namespace).stdout
    header = cluster.kubectl("get", "trafficcfg", "-n", namespace).stderr + cluster.kubectl(
        "get", "maisb", "-n", namespace).stderr
    assert "No resources found" in header
