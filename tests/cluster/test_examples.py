"""The walkthrough in examples/, applied with the real kubectl to the local control plane, the operator running.

Every file in ``examples/`` is applied, in the order ``kubectl apply -f examples/`` takes them, and every
object in them must have an entry in ``EXPECTED`` saying what the operator makes of it: a new example (or a
new object in one) without an entry fails ``test_every_example_object_has_an_expectation`` before any
cluster is started. The examples use the namespace ``llm`` and the Gateway ``envoy-gateway-system/ai-gateway``:
what they need is created here (and only what was missing is removed afterwards); ``llm`` is deleted at
the end, so the shared control plane is left as it was. Every status is written by its real controller: the
InferenceServices' by KServe (their Deployments' pods run on the stack's fake GPU nodes), the Gateway's by
Envoy Gateway.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from model_traffic import kube as k
from model_traffic.kube import Kube
from tests.cluster.test_trafficconfig import wait_served
from tests.conftest import ROOT, Cluster, Operator, condition, get_json, wait_for
from tests.support.aigateway import nudge_held_ai_service_backends

pytestmark = pytest.mark.cluster

EXAMPLES = ROOT / "examples"
NAMESPACE = "llm"
GATEWAY_NAMESPACE = "envoy-gateway-system"
GATEWAY = "ai-gateway"


def example_files() -> list[Path]:
    """The files kubectl apply -f examples/ reads, in its order."""
    return sorted(p for p in EXAMPLES.iterdir() if p.suffix in (".yaml", ".yml", ".json"))


def example_objects() -> dict[Path, list[dict[str, Any]]]:
    return {path: [doc for doc in yaml.safe_load_all(path.read_text()) if doc] for path in example_files()}


def key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


# --- what each example object must become -------------------------------------------------------------------

Check = Callable[["Walkthrough"], None]


class Walkthrough:
    def __init__(self, cluster: Cluster, kube: Kube) -> None:
        self.cluster, self.kube = cluster, kube

    def ready(self, rtype: k.ResourceType, name: str, reason: str | None = None, timeout: float = 60) -> dict[str, Any]:
        """The object once Ready=True (with this reason) for its current generation (what `kubectl wait` waits
        for)."""
        def check() -> dict[str, Any] | None:
            obj = self.kube.get(rtype, NAMESPACE, name)
            seen = obj is not None and (obj.get("status") or {}).get("observedGeneration") == obj["metadata"][
                "generation"]
            ready = condition(obj, "Ready")
            return obj if seen and ready.get("status") == "True" and reason in (None, ready.get("reason")) else None

        def describe() -> str:
            obj = self.kube.get(rtype, NAMESPACE, name) or {}
            return f"{rtype.kind} {name} Ready {reason or ''} (now {condition(obj, 'Ready')})"

        try:
            return wait_for(check, timeout, f"{rtype.kind} {name} Ready")
        except AssertionError:
            raise AssertionError(f"timed out waiting for {describe()}") from None


def namespace_active(w: Walkthrough) -> None:
    assert get_json(w.cluster, "namespace", NAMESPACE)["status"]["phase"] == "Active"


def secret_with_api_key(name: str) -> Check:
    def check(w: Walkthrough) -> None:
        secret = w.kube.core.read_namespaced_secret(name, NAMESPACE)
        assert "apiKey" in (secret.data or {}), f"Secret {name} has no apiKey"
    return check


def backend(name: str, children: set[str], summary: str) -> Check:
    def check(w: Walkthrough) -> None:
        obj = w.ready(k.MANAGED_AI_SERVICE_BACKEND, name, reason="Ready")
        status = obj["status"]
        assert status["endpointSummary"] == summary
        assert {c["kind"] for c in status["children"]} == children
        assert condition(obj, "ChildrenOwned")["status"] == "True"
        assert condition(obj, "ChildrenAccepted")["status"] == "True"
        assert condition(obj, "Stalled")["status"] == "False"
        for child in children:
            rtype = {"Backend": k.BACKEND, "AIServiceBackend": k.AI_SERVICE_BACKEND,
                     "BackendSecurityPolicy": k.BACKEND_SECURITY_POLICY, "QuotaPolicy": k.QUOTA_POLICY}[child]
            live = w.kube.get(rtype, NAMESPACE, name)
            assert live is not None, f"{child} {name}"
            assert live["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
        if "BackendSecurityPolicy" in children:
            assert condition(obj, "CredentialsResolved")["status"] == "True"
    return check


def virtual_model_gpt4(w: Walkthrough) -> None:
    obj = w.ready(k.VIRTUAL_MODEL, "gpt-4", reason="Ready")  # not BackendsLeftOut: all three are routed
    status = obj["status"]
    assert status["backendSummary"] == "3/3"
    assert status["modelName"] == "gpt-4"
    assert {(b["name"], b["tier"], b["sharePercent"]) for b in status["backends"]} == {
        ("openai", 0, 90.0), ("vllm", 0, 10.0), ("anthropic", 1, 100.0)}
    assert condition(obj, "RetryPolicy")["reason"] == "FallbackDefault"  # a fallback tier, no spec.retry
    route = w.kube.get(k.AI_GATEWAY_ROUTE, NAMESPACE, "gpt-4")
    assert route is not None
    assert route["spec"]["parentRefs"][0]["name"] == GATEWAY
    refs = route["spec"]["rules"][0]["backendRefs"]
    assert [(r["name"], r.get("modelNameOverride"), r["priority"]) for r in refs] == [
        ("openai", "gpt-4o", 0), ("vllm", "llama-3-70b", 0), ("anthropic", "claude-sonnet-4", 1)]
    policy = w.kube.get(k.BACKEND_TRAFFIC_POLICY, NAMESPACE, "gpt-4")
    assert policy is not None and "rateLimit" in policy["spec"] and "retry" in policy["spec"]
    # The address Envoy Gateway reports for the Gateway is what clients call.
    addresses = wait_for(lambda: ((w.kube.get(k.GATEWAY, GATEWAY_NAMESPACE, GATEWAY) or {}).get("status") or {})
                         .get("addresses"), 30, "Envoy Gateway's address for the stack's Gateway")
    wait_for(lambda: (w.kube.get(k.VIRTUAL_MODEL, NAMESPACE, "gpt-4") or {}).get("status", {}).get("address")
             == addresses[0]["value"], 30, "VirtualModel gpt-4 status.address from the Gateway (port 80 implied)")
    assert condition(obj, "ChildrenAccepted")["status"] == "True"


def api_key_secret(w: Walkthrough) -> None:
    secret = w.kube.core.read_namespaced_secret("model-traffic-api-keys", NAMESPACE)
    assert set(secret.data or {}) == {"acme", "trial"}  # one data key per client id: Envoy Gateway's format


def virtual_model_claude(w: Walkthrough) -> None:
    """Authenticated and budgeted per tenant: Envoy Gateway accepted the SecurityPolicy and the per-tenant limits."""
    obj = w.ready(k.VIRTUAL_MODEL, "claude", reason="Ready")
    accepted = condition(obj, "ChildrenAccepted")
    assert accepted["status"] == "True" and "SecurityPolicy/claude" in accepted["message"], accepted
    assert condition(obj, "TenantHeader")["reason"] == "SetByGateway"
    policy = w.kube.get(k.SECURITY_POLICY, NAMESPACE, "claude")
    assert policy is not None and policy["spec"]["apiKeyAuth"]["forwardClientIDHeader"] == "x-tenant-id"
    traffic = w.kube.get(k.BACKEND_TRAFFIC_POLICY, NAMESPACE, "claude")
    assert traffic is not None and len(traffic["spec"]["rateLimit"]["global"]["rules"]) == 5


def traffic_config_llama(w: Walkthrough) -> None:
    """The first release is stable at once; the next one the example names (a commit of spec.release, as its
    comment says) is the canary: one InferenceService and backend per version, then 10% to v2 once KServe reports
    both Ready."""
    stable = w.ready(k.TRAFFIC_CONFIG, "llama", reason="Succeeded", timeout=90)["status"]
    assert stable["stableVersion"] == "v1" and stable["stable"]["storageUri"].endswith(":e1945c4")
    w.cluster.kubectl("patch", "trafficconfig", "llama", "-n", NAMESPACE, "--type=merge", "-p", json.dumps(
        {"spec": {"release": {"version": "v2", "storageUri": "hf://meta-llama/Llama-3.1-8B-Instruct:0e9e39f"}}}))
    for version, storage in (("v1", "hf://meta-llama/Meta-Llama-3-8B-Instruct:e1945c4"),
                             ("v2", "hf://meta-llama/Llama-3.1-8B-Instruct:0e9e39f")):
        name = f"llama-{version}"
        # KServe's controller: a Deployment whose pod asks for the template's GPU and lands on a fake GPU node.
        isvc = wait_served(w.kube, NAMESPACE, name)
        model = isvc["spec"]["predictor"]["model"]
        assert model["storageUri"] == storage
        assert model["args"] == ["--max_model_len=8192", f"--model_name=llama-3-{version}"]
        assert w.kube.get(k.MANAGED_AI_SERVICE_BACKEND, NAMESPACE, name) is not None
        [pod] = get_json(w.cluster, "pods", "-n", NAMESPACE, "-l",
                         f"serving.kserve.io/inferenceservice={name}")["items"]
        assert pod["status"]["phase"] == "Running"
        node = get_json(w.cluster, "node", pod["spec"]["nodeName"])
        assert int(node["status"]["allocatable"].get("nvidia.com/gpu", 0)) > 0, pod["spec"]["nodeName"]

    def progressing() -> dict[str, Any] | None:
        current = (w.kube.get(k.TRAFFIC_CONFIG, NAMESPACE, "llama") or {}).get("status") or {}
        return current if current.get("phase") == "Progressing" else None

    try:
        status = wait_for(progressing, 30, "TrafficConfig llama Progressing")
    except AssertionError:
        raise AssertionError(f"TrafficConfig llama: {w.kube.get(k.TRAFFIC_CONFIG, NAMESPACE, 'llama')}") from None
    assert (status["stableVersion"], status["candidateVersion"], status["canaryWeight"]) == ("v1", "v2", 10)
    wait_for(lambda: {(b["name"], b["weight"], b["modelNameOverride"]) for b in (
        w.kube.get(k.VIRTUAL_MODEL, NAMESPACE, "llama") or {}).get("spec", {}).get("backends", [])} == {
        ("llama-v1", 90, "llama-3-v1"), ("llama-v2", 10, "llama-3-v2")}, 30, "VirtualModel llama at 90/10")
    row = w.cluster.kubectl("get", "trafficcfg", "llama", "-n", NAMESPACE, "--no-headers").stdout.split()
    assert row[:6] == ["llama", "Canary", "v1", "v2", "10", "Progressing"], row
    # The whole chain below it is real: the version backends and the VirtualModel become Ready.
    for version in ("v1", "v2"):
        w.ready(k.MANAGED_AI_SERVICE_BACKEND, f"llama-{version}")
    vm = w.ready(k.VIRTUAL_MODEL, "llama", reason="Ready")
    assert vm["status"]["modelName"] == "llama-3"
    # KServe's Hugging Face server serves the OpenAI API under /openai (kserve/protocol/rest/openai/endpoints.py).
    aisb = w.kube.get(k.AI_SERVICE_BACKEND, NAMESPACE, "llama-v1") or {}
    assert aisb["spec"]["schema"] == {"name": "OpenAI", "prefix": "/openai/v1"}
    # Git goes back to the file (release v1, the stable): the rollout ends and all traffic is v1's again, so
    # applying the examples once more below changes nothing.
    w.cluster.kubectl("patch", "trafficconfig", "llama", "-n", NAMESPACE, "--type=merge", "-p", json.dumps(
        {"spec": {"release": {"version": "v1", "storageUri": "hf://meta-llama/Meta-Llama-3-8B-Instruct:e1945c4"}}}))
    ended = w.ready(k.TRAFFIC_CONFIG, "llama", reason="Succeeded", timeout=90)["status"]
    assert ended["stableVersion"] == "v1" and "candidateVersion" not in ended


EXPECTED: dict[tuple[str, str], Check] = {
    ("Namespace", NAMESPACE): namespace_active,
    ("Secret", "openai-key"): secret_with_api_key("openai-key"),
    ("Secret", "anthropic-key"): secret_with_api_key("anthropic-key"),
    ("ManagedAIServiceBackend", "openai"): backend(
        "openai", {"Backend", "AIServiceBackend", "BackendSecurityPolicy", "QuotaPolicy"}, "api.openai.com:443"),
    ("ManagedAIServiceBackend", "anthropic"): backend(
        "anthropic", {"Backend", "AIServiceBackend", "BackendSecurityPolicy"}, "api.anthropic.com:443"),
    ("ManagedAIServiceBackend", "vllm"): backend("vllm", {"Backend", "AIServiceBackend"}, "10.0.0.7:8000"),
    ("VirtualModel", "gpt-4"): virtual_model_gpt4,
    ("Secret", "model-traffic-api-keys"): api_key_secret,
    ("VirtualModel", "claude"): virtual_model_claude,
    ("TrafficConfig", "llama"): traffic_config_llama,
}


def test_every_example_object_has_an_expectation() -> None:
    """Runs without a cluster: a new example must say here what it should become."""
    objects = example_objects()
    assert objects, "examples/ is empty"
    unchecked = [f"{path.name}: {kind} {name}" for path, docs in objects.items() for kind, name in map(key, docs)
                 if (kind, name) not in EXPECTED]
    assert unchecked == [], f"add an entry to EXPECTED in {Path(__file__).name} for: {unchecked}"
    for docs in objects.values():
        for doc in docs:
            if doc["kind"] != "Namespace":
                assert doc["metadata"].get("namespace") == NAMESPACE, key(doc)
    unused = set(EXPECTED) - {key(doc) for docs in objects.values() for doc in docs}
    assert unused == set(), f"EXPECTED names objects no example has: {unused}"


# --- the walkthrough ---------------------------------------------------------------------------------------

def _namespace_gone(kube: Kube, name: str, timeout: float = 90) -> None:
    def gone() -> bool:
        try:
            kube.core.read_namespace(name)
        except kubernetes.client.exceptions.ApiException as error:
            if error.status == 404:
                return True
            raise
        return False

    last_nudge = [time.monotonic()]

    def gone_or_nudged() -> bool:
        if gone():
            return True
        # AI Gateway v1.0.0 may leave an AIServiceBackend on its finalizer for ever (tests/support/aigateway.py):
        # one held 10 s is nudged, every 5 s at most.
        if time.monotonic() - last_nudge[0] >= 5:
            last_nudge[0] = time.monotonic()
            nudge_held_ai_service_backends(kube, name)
        return False

    try:
        wait_for(gone_or_nudged, timeout, f"namespace {name} to be deleted")
    except AssertionError as error:
        # What holds it (the namespace controller's NamespaceContentRemaining / NamespaceFinalizersRemaining), so a
        # failure names the object and the finalizer instead of only the time.
        held = kube.core.read_namespace(name).status
        conditions = [f"{c.type}: {c.message}" for c in (held.conditions or []) if c.status == "True"]
        raise AssertionError(f"{error}; {'; '.join(conditions) or 'no condition says why'}") from error


@pytest.fixture
def stage(cluster: Cluster, kube: Kube) -> Iterator[None]:
    """The namespace llm free, and the Gateway the examples attach to; afterwards, the control plane as it was."""
    existing = cluster.kubectl("get", "namespace", NAMESPACE, "-o", "json", check=False)
    if existing.returncode == 0:
        if os.environ.get("MODEL_TRAFFIC_USE_EXISTING_CLUSTER") == "1" and '"Terminating"' not in existing.stdout:
            pytest.skip(f"namespace {NAMESPACE} exists in this cluster; the examples would change it")
        cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false")  # left by an interrupted run
        _namespace_gone(kube, NAMESPACE)
    # The examples attach to the local stack's Gateway, which the real Envoy Gateway accepted.
    gateway = kube.get(k.GATEWAY, GATEWAY_NAMESPACE, GATEWAY)
    assert gateway is not None, f"the stack has no Gateway {GATEWAY_NAMESPACE}/{GATEWAY}"
    try:
        yield
    finally:
        cluster.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=false", check=False)
        _namespace_gone(kube, NAMESPACE)


def generation(cluster: Cluster, doc: dict[str, Any]) -> int | None:
    meta = doc["metadata"]
    args = [doc["kind"].lower(), meta["name"]] + (["-n", meta["namespace"]] if meta.get("namespace") else [])
    return get_json(cluster, *args)["metadata"].get("generation")


def test_the_walkthrough(cluster: Cluster, kube: Kube, operator: Operator, stage: None) -> None:
    objects = example_objects()
    for path in objects:
        result = cluster.kubectl("apply", "-f", str(path), check=False)
        assert result.returncode == 0, f"kubectl apply -f examples/{path.name}:\n{result.stderr}"

    walkthrough = Walkthrough(cluster, kube)
    for path, docs in objects.items():
        for doc in docs:
            started = time.monotonic()
            try:
                EXPECTED[key(doc)](walkthrough)
            except AssertionError as error:
                raise AssertionError(f"examples/{path.name}, {doc['kind']} {doc['metadata']['name']} "
                                     f"(after {time.monotonic() - started:.0f}s): {error}\n"
                                     f"operator log:\n{operator.log()[-3000:]}") from error

    # Applying the same files again changes nothing: a GitOps sync does not fight the operator. (Compared by
    # generation: kubectl prints "configured" for a VirtualModel every time, since the server's defaults in
    # its backends list differ from the file, though the spec it ends up with is the same.)
    generations = {key(doc): generation(cluster, doc) for docs in objects.values() for doc in docs}
    cluster.kubectl("apply", "-f", str(EXAMPLES))
    assert {key(doc): generation(cluster, doc) for docs in objects.values() for doc in docs} == generations
    # kubectl wait, as the docs use it.
    cluster.kubectl("wait", "--for=condition=Ready", "maisb/openai", "maisb/anthropic", "maisb/vllm",
                    "vmodel/gpt-4", "-n", NAMESPACE, "--timeout=20s")
