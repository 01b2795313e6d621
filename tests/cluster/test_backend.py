"""ManagedAIServiceBackend end to end: the operator against a real API server with the upstream CRDs."""

from __future__ import annotations

import json
import textwrap
import time
from typing import Any

import pytest

from model_traffic import kube as k
from model_traffic.kube import Kube
from model_traffic_dev.localcluster import nodes as fake_nodes
from tests.cluster.conftest import AI_GATEWAY_MANAGER, status_writers
from tests.cluster.test_trafficconfig import wait_served
from tests.conftest import POOL, Cluster, Operator, apply_yaml, condition, get_json, our_yaml, wait_for
from tests.support.aigateway import held_by_ai_gateway, nudge_ai_service_backend

pytestmark = pytest.mark.cluster

SECRET_VALUE = "sk-test-never-copied-3f9a"


def backend_yaml(name: str, spec: str) -> str:
    return our_yaml("ManagedAIServiceBackend", name, spec)


def secret_yaml(name: str, data: dict[str, str]) -> str:
    lines = "\n".join(f"  {key}: {value}" for key, value in data.items())
    return f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\nstringData:\n{lines}\n"



MAISB = k.MANAGED_AI_SERVICE_BACKEND


def wait_ready(kube: Kube, namespace: str, name: str, status: str = "True", reason: str | None = None,
               timeout: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = kube.get(MAISB, namespace, name)
        cond = condition(obj, "Ready")
        generation_seen = obj is not None and (obj.get("status") or {}).get("observedGeneration") == obj[
            "metadata"]["generation"]
        if generation_seen and cond.get("status") == status and (reason is None or cond.get("reason") == reason):
            return obj
        return None

    return wait_for(check, timeout, f"{name} Ready={status} reason={reason}")


OPENAI = """\
    schema: {name: OpenAI, version: v1}
    endpoint: {fqdn: {hostname: api.openai.com, port: 443}}
    tls: {sni: api.openai.com, wellKnownCACertificates: System}
    credentials: {type: APIKey, secretRef: {name: openai-key}}
"""


def test_openai_backend_becomes_ready_with_owned_children(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    apply_yaml(cluster, secret_yaml("openai-key", {"apiKey": SECRET_VALUE}).replace(
        "metadata:\n", f"metadata:\n  namespace: {namespace}\n"))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=backend_yaml("openai", OPENAI))
    obj = wait_ready(kube, namespace, "openai")

    status = obj["status"]
    assert status["endpointSummary"] == "api.openai.com:443"
    assert status["aiGatewayApiVersion"] == "v1beta1"
    assert status["routing"] == "Backend"
    assert {c["kind"] for c in status["children"]} == {"Backend", "AIServiceBackend", "BackendSecurityPolicy"}
    assert condition(obj, "CredentialsResolved")["status"] == "True"
    assert condition(obj, "Reconciling")["status"] == "False"
    assert condition(obj, "Stalled")["status"] == "False"
    # Ready only once the AI Gateway controller accepted the AIServiceBackend and BackendSecurityPolicy.
    assert condition(obj, "ChildrenAccepted")["status"] == "True"
    for rtype in (k.AI_SERVICE_BACKEND, k.BACKEND_SECURITY_POLICY):
        assert status_writers(kube.get(rtype, namespace, "openai")) == {AI_GATEWAY_MANAGER}, rtype.kind

    uid = obj["metadata"]["uid"]
    for rtype in (k.BACKEND, k.AI_SERVICE_BACKEND, k.BACKEND_SECURITY_POLICY):
        child = kube.get(rtype, namespace, "openai")
        assert child is not None, rtype.kind
        assert child["metadata"]["ownerReferences"][0]["uid"] == uid
        assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "model-traffic-operator"
    aisb = kube.get(k.AI_SERVICE_BACKEND, namespace, "openai")
    assert aisb is not None and aisb["spec"]["backendRef"]["kind"] == "Backend"

    # What a person sees.
    table = cluster.kubectl("get", "maisb", "-n", namespace).stdout
    assert table.split("\n")[0].split() == ["NAME", "SCHEMA", "ENDPOINT", "READY", "AGE"]
    assert table.split("\n")[1].split()[:4] == ["openai", "OpenAI", "api.openai.com:443", "True"]
    cluster.kubectl("wait", "--for=condition=Ready", "maisb/openai", "-n", namespace, "--timeout=10s")
    described = cluster.kubectl("describe", "maisb", "openai", "-n", namespace).stdout
    assert "Ready" in described and "Normal" in described

    # The credential's value is never copied into anything we write or say.
    for rtype in (k.BACKEND, k.AI_SERVICE_BACKEND, k.BACKEND_SECURITY_POLICY):
        assert SECRET_VALUE not in json.dumps(kube.get(rtype, namespace, "openai"))
    assert SECRET_VALUE not in json.dumps(kube.get(MAISB, namespace, "openai"))
    assert SECRET_VALUE not in cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    assert SECRET_VALUE not in operator.log()


def test_resync_of_an_unchanged_backend_writes_nothing(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=backend_yaml("plain", """\
        schema: {name: OpenAI}
        endpoint: {ip: {address: 10.0.0.7, port: 8000}}
    """))
    wait_ready(kube, namespace, "plain")
    time.sleep(1)  # let the reconcile triggered by our own status write settle

    def versions() -> dict[str, str]:
        out = {}
        for rtype in (MAISB, k.BACKEND, k.AI_SERVICE_BACKEND):
            obj = kube.get(rtype, namespace, "plain")
            assert obj is not None
            out[rtype.kind] = obj["metadata"]["resourceVersion"]
        return out

    before = versions()
    unchanged_before = operator.counter("model_traffic_reconcile_total", kind=MAISB.kind, result="unchanged")
    # A user labels a child: its event makes the operator reconcile, which finds nothing to do, writes
    # nothing, and leaves the user's label alone.
    cluster.kubectl("label", "backends.gateway.envoyproxy.io", "plain", "-n", namespace, "team=ml")
    wait_for(lambda: operator.counter("model_traffic_reconcile_total", kind=MAISB.kind, result="unchanged")
             > unchanged_before, 20, "a reconcile that found nothing to do")
    touched = versions()
    assert touched[MAISB.kind] == before[MAISB.kind]
    assert touched[k.AI_SERVICE_BACKEND.kind] == before[k.AI_SERVICE_BACKEND.kind]
    time.sleep(2)
    assert versions() == touched
    labelled = kube.get(k.BACKEND, namespace, "plain")
    assert labelled is not None and labelled["metadata"]["labels"]["team"] == "ml"


def test_missing_secret_stalls_then_heals_when_the_secret_appears(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=backend_yaml("openai", OPENAI))
    obj = wait_ready(kube, namespace, "openai", "False", "SecretNotFound")
    assert condition(obj, "Stalled")["status"] == "True"
    assert "Secret openai-key not found" in condition(obj, "Ready")["message"]
    events = get_json(cluster, "events", "-n", namespace, "--field-selector", "involvedObject.name=openai")
    assert any(e["reason"] == "SecretNotFound" and e["type"] == "Warning" for e in events["items"])

    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=secret_yaml("openai-key", {"token": "x"}))
    wait_ready(kube, namespace, "openai", "False", "SecretKeyMissing")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=secret_yaml("openai-key", {"apiKey": "x"}))
    wait_ready(kube, namespace, "openai")


# Credentials the AI Gateway controller exchanges for tokens at the cloud's identity service when it accepts the
# BackendSecurityPolicy (its rotators, internal/controller/rotators/): the local stack reaches no cloud, so the
# controller refuses them here, and the backend says so with the controller's own message.
EXCHANGED_AT_THE_CLOUD = {"AzureCredentials", "GCPCredentials"}


@pytest.mark.parametrize(("schema", "credentials", "key"), [
    ("Anthropic", "{type: AnthropicAPIKey, secretRef: {name: c}}", "apiKey"),
    ("AzureOpenAI", "{type: AzureAPIKey, secretRef: {name: c}}", "apiKey"),
    ("AWSBedrock", "{type: AWSCredentials, secretRef: {name: c}, region: us-east-1}", "credentials"),
    ("AzureOpenAI", "{type: AzureCredentials, secretRef: {name: c}, clientID: app, tenantID: tenant}",
     "client-secret"),
    ("GCPVertexAI", "{type: GCPCredentials, secretRef: {name: c}, projectName: p, region: us-central1}",
     "service_account.json"),
])
def test_each_credential_type_is_accepted_by_the_upstream_schema(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str, schema: str, credentials: str, key: str
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=secret_yaml("c", {key: "x"}))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=backend_yaml("b", f"""\
        schema: {{name: {schema}}}
        endpoint: {{fqdn: {{hostname: llm.example.com, port: 443}}}}
        credentials: {credentials}
    """))
    if any(kind in credentials for kind in EXCHANGED_AT_THE_CLOUD):
        obj = wait_ready(kube, namespace, "b", "False", "ChildRefused", timeout=60)
        message = condition(obj, "ChildrenAccepted")["message"]
        assert message.startswith("refused: BackendSecurityPolicy/b: ReconciliationFailed: "), message
    else:
        obj = wait_ready(kube, namespace, "b", timeout=60)
    assert condition(obj, "CredentialsResolved")["status"] == "True"
    policy = kube.get(k.BACKEND_SECURITY_POLICY, namespace, "b")
    assert policy is not None and policy["spec"]["type"] in credentials


def test_quota_becomes_a_quota_policy_and_is_removed_with_it(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    spec = """\
        schema: {name: OpenAI}
        endpoint: {fqdn: {hostname: api.openai.com, port: 443}}
        quota:
          service: {limit: 1000000, duration: 1h}
          perModel: [{modelName: gpt-4o, limit: 200000, duration: 1h}]
    """
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=backend_yaml("q", spec))
    wait_ready(kube, namespace, "q")
    quota = kube.get(k.QUOTA_POLICY, namespace, "q")
    assert quota is not None and quota["spec"]["serviceQuota"]["quota"]["limit"] == 1000000
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=backend_yaml("q", spec.split("    quota:")[0]))
    wait_for(lambda: kube.get(k.QUOTA_POLICY, namespace, "q") is None, 20, "QuotaPolicy removed")


def test_inference_service_endpoint_waits_for_ready_and_follows_the_address(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=backend_yaml("llama", """\
        schema: {name: OpenAI, prefix: /openai/v1}
        endpoint: {inferenceService: {name: llama}}
    """))
    wait_ready(kube, namespace, "llama", "False", "InferenceServiceNotFound")

    # More GPUs than any of the stack's nodes has: KServe's controller makes the Deployment, its pod stays
    # Unschedulable, and KServe reports the InferenceService not Ready. Nothing here writes its status.
    isvc = textwrap.dedent("""\
        apiVersion: serving.kserve.io/v1beta1
        kind: InferenceService
        metadata: {{name: llama}}
        spec:
          predictor:
            model:
              modelFormat: {{name: huggingface}}
              storageUri: hf://org/llama:rev1
              resources: {{limits: {{nvidia.com/gpu: "{gpus}"}}}}
    """)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=isvc.format(gpus=fake_nodes.MAX_GPUS_PER_NODE + 1))
    wait_for(lambda: condition(kube.get(k.INFERENCE_SERVICE, namespace, "llama"), "PredictorReady")
             .get("status") == "False", 60, "KServe to report the predictor not Ready")
    obj = wait_ready(kube, namespace, "llama", "False", "InferenceServiceNotReady")
    assert condition(obj, "Reconciling")["status"] == "True"
    backend = kube.get(k.BACKEND, namespace, "llama")
    assert backend is not None
    assert backend["spec"]["endpoints"][0]["fqdn"]["hostname"] == f"llama-predictor.{namespace}.svc.cluster.local"

    # One GPU: the pod is scheduled onto a fake GPU node and runs; KServe reports Ready and its address.
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=isvc.format(gpus=1))
    ready = wait_served(kube, namespace, "llama")
    # In Standard (raw) mode KServe gives the cluster-local address only in status.address.url; status.url and
    # components.predictor.url name the ingress domain (http://llama-<ns>.example.com), which nothing serves.
    url = ready["status"]["address"]["url"]
    assert url == f"http://llama-predictor.{namespace}.svc.cluster.local"
    assert "address" not in ready["status"]["components"]["predictor"]
    obj = wait_ready(kube, namespace, "llama")
    assert obj["status"]["endpoint"]["url"] == url
    backend = kube.get(k.BACKEND, namespace, "llama")
    assert backend is not None
    assert backend["spec"]["endpoints"][0]["fqdn"] == {
        "hostname": f"llama-predictor.{namespace}.svc.cluster.local", "port": 80}


def test_inference_pool_missing_then_routed_at_route_level(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=backend_yaml("pool", """\
        schema: {name: OpenAI}
        endpoint: {inferencePool: {name: vllm-pool}}
    """))
    wait_ready(kube, namespace, "pool", "False", "InferencePoolNotFound")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=POOL)
    obj = wait_ready(kube, namespace, "pool")
    # AI Gateway v1.1's AIServiceBackend refuses an InferencePool (the dry run says so): route level.
    assert obj["status"]["routing"] == "InferencePool"
    assert obj["status"]["inferencePool"] == "vllm-pool"
    assert kube.get(k.AI_SERVICE_BACKEND, namespace, "pool") is None
    assert kube.get(k.BACKEND, namespace, "pool") is None


def test_existing_backend_is_referenced_and_never_modified(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=backend_yaml("ref", """\
        schema: {name: OpenAI}
        endpoint: {backendRef: {name: shared}}
    """))
    wait_ready(kube, namespace, "ref", "False", "BackendNotFound")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=textwrap.dedent("""\
        apiVersion: gateway.envoyproxy.io/v1alpha1
        kind: Backend
        metadata: {name: shared}
        spec: {endpoints: [{fqdn: {hostname: shared.example.com, port: 443}}]}
    """))
    wait_ready(kube, namespace, "ref")
    shared = kube.get(k.BACKEND, namespace, "shared")
    assert shared is not None
    assert "ownerReferences" not in shared["metadata"]
    assert [m["manager"] for m in shared["metadata"]["managedFields"]] == ["kubectl-client-side-apply"]
    aisb = kube.get(k.AI_SERVICE_BACKEND, namespace, "ref")
    assert aisb is not None and aisb["spec"]["backendRef"]["name"] == "shared"


def test_drift_is_restored_and_deleted_children_come_back(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=backend_yaml("d", """\
        schema: {name: OpenAI}
        endpoint: {fqdn: {hostname: api.openai.com, port: 443}}
    """))
    wait_ready(kube, namespace, "d")
    cluster.kubectl("patch", "backends.gateway.envoyproxy.io", "d", "-n", namespace, "--type=merge",
                    "-p", '{"spec":{"endpoints":[{"fqdn":{"hostname":"evil.example.com","port":443}}]}}')

    def restored() -> bool:
        backend = kube.get(k.BACKEND, namespace, "d")
        return backend is not None and backend["spec"]["endpoints"][0]["fqdn"]["hostname"] == "api.openai.com"

    wait_for(restored, 20, "hand edit of the Backend undone")
    cluster.kubectl("delete", "aiservicebackends.aigateway.envoyproxy.io", "d", "-n", namespace)
    wait_for(lambda: kube.get(k.AI_SERVICE_BACKEND, namespace, "d"), 20, "deleted AIServiceBackend recreated")


def test_object_of_the_same_name_not_ours_is_left_alone_and_reported(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    foreign = textwrap.dedent("""\
        apiVersion: gateway.envoyproxy.io/v1alpha1
        kind: Backend
        metadata: {name: taken}
        spec: {endpoints: [{fqdn: {hostname: someone-else.example.com, port: 443}}]}
    """)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=foreign)
    before = kube.get(k.BACKEND, namespace, "taken")
    assert before is not None
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=backend_yaml("taken", """\
        schema: {name: OpenAI}
        endpoint: {fqdn: {hostname: api.openai.com, port: 443}}
    """))
    obj = wait_ready(kube, namespace, "taken", "False", "OwnershipConflict")
    assert "Backend taken exists and is not owned by this object" in condition(obj, "Ready")["message"]
    after = kube.get(k.BACKEND, namespace, "taken")
    assert after is not None and after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]

    # Once the other party removes theirs, ours is created and the backend heals.
    cluster.kubectl("delete", "backends.gateway.envoyproxy.io", "taken", "-n", namespace)
    wait_ready(kube, namespace, "taken")


def test_changing_endpoint_kind_removes_children_that_no_longer_apply(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=backend_yaml("switch", """\
        schema: {name: OpenAI}
        endpoint: {fqdn: {hostname: api.openai.com, port: 443}}
    """))
    wait_ready(kube, namespace, "switch")
    assert kube.get(k.BACKEND, namespace, "switch") is not None
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=POOL)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=backend_yaml("switch", """\
        schema: {name: OpenAI}
        endpoint: {inferencePool: {name: vllm-pool}}
    """))
    wait_ready(kube, namespace, "switch")
    wait_for(lambda: kube.get(k.BACKEND, namespace, "switch") is None, 20, "owned Backend pruned")
    wait_for(lambda: kube.get(k.AI_SERVICE_BACKEND, namespace, "switch") is None, 20, "AIServiceBackend pruned")


def test_deleting_the_backend_garbage_collects_its_children(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=backend_yaml("gone", OPENAI))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=secret_yaml("openai-key", {"apiKey": "x"}))
    wait_ready(kube, namespace, "gone")
    cluster.kubectl("delete", "maisb", "gone", "-n", namespace, "--wait=true", "--timeout=20s")
    for rtype in (k.BACKEND, k.AI_SERVICE_BACKEND, k.BACKEND_SECURITY_POLICY):
        # Deleted by the garbage collector (the owner references are right): gone, or held by AI Gateway's own
        # finalizer alone, never by anything of ours.
        wait_for(lambda rtype=rtype: (live := kube.get(rtype, namespace, "gone")) is None or held_by_ai_gateway(live),
                 30, f"{rtype.kind} collected")
        if rtype == k.AI_SERVICE_BACKEND and held_by_ai_gateway(kube.get(rtype, namespace, "gone")):
            # AI Gateway v1.0.0 may not retry its finalizer's removal (tests/support/aigateway.py says why and how
            # a person unsticks it).
            nudge_ai_service_backend(kube, namespace, "gone")
        wait_for(lambda rtype=rtype: kube.get(rtype, namespace, "gone") is None, 30, f"{rtype.kind} collected")
    # The user's Secret is not ours: it stays.
    assert kube.get(k.SECRET, namespace, "openai-key") is not None


def test_a_child_being_deleted_is_never_written_and_comes_back_once_gone(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    # A write to a terminating child makes Envoy AI Gateway's finalizer removal conflict, and it never retries
    # (internal/controller/controller.go, handleFinalizer): the child would stay terminating for ever. A
    # finalizer of the test's own holds the child in that state while the owner is reconciled.
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=backend_yaml("held", """\
        schema: {name: OpenAI}
        endpoint: {fqdn: {hostname: api.openai.com, port: 443}}
    """))
    wait_ready(kube, namespace, "held")
    cluster.kubectl("patch", "backends.gateway.envoyproxy.io", "held", "-n", namespace, "--type=merge",
                    "-p", '{"metadata":{"finalizers":["tests.modeltraffic.io/hold"]}}')
    cluster.kubectl("delete", "backends.gateway.envoyproxy.io", "held", "-n", namespace, "--wait=false")
    terminating = wait_for(lambda: (o := kube.get(k.BACKEND, namespace, "held")) and o["metadata"].get(
        "deletionTimestamp") and o, 20, "the Backend terminating")
    # A spec change makes the owner render the Backend anew: it must still not be written.
    cluster.kubectl("patch", "maisb", "held", "-n", namespace, "--type=merge",
                    "-p", '{"spec":{"endpoint":{"fqdn":{"port":8443}}}}')
    obj = wait_ready(kube, namespace, "held", status="False", reason="ChildTerminating")
    assert "Backend/held" in condition(obj, "Ready")["message"]
    live = kube.get(k.BACKEND, namespace, "held")
    assert live is not None and live["metadata"]["resourceVersion"] == terminating["metadata"]["resourceVersion"]

    cluster.kubectl("patch", "backends.gateway.envoyproxy.io", "held", "-n", namespace, "--type=merge",
                    "-p", '{"metadata":{"finalizers":null}}')
    wait_ready(kube, namespace, "held")
    back = kube.get(k.BACKEND, namespace, "held")
    assert back is not None and back["metadata"]["uid"] != terminating["metadata"]["uid"]
    assert back["spec"]["endpoints"][0]["fqdn"]["port"] == 8443


def test_kubectl_patch_updates_the_children(cluster: Cluster, kube: Kube, operator: Operator, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=backend_yaml("p", """\
        schema: {name: OpenAI}
        endpoint: {fqdn: {hostname: api.openai.com, port: 443}}
    """))
    wait_ready(kube, namespace, "p")
    cluster.kubectl("patch", "maisb", "p", "-n", namespace, "--type=merge",
                    "-p", '{"spec":{"endpoint":{"fqdn":{"port":8443}},"schema":{"version":"v1"}}}')

    def followed() -> bool:
        backend = kube.get(k.BACKEND, namespace, "p")
        aisb = kube.get(k.AI_SERVICE_BACKEND, namespace, "p")
        return bool(backend and aisb and backend["spec"]["endpoints"][0]["fqdn"]["port"] == 8443
                    and aisb["spec"]["schema"].get("version") == "v1")

    wait_for(followed, 20, "children following the patched spec")
    obj = wait_ready(kube, namespace, "p")
    assert obj["status"]["endpointSummary"] == "api.openai.com:8443"
    assert obj["status"]["observedGeneration"] == 2
