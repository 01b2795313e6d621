"""TrafficConfig end to end: the local control plane, the operator, KServe's real controller making a Deployment
per version whose pods kube-scheduler places on kwok's fake nodes (Running and Ready, no container), webhooks on
a local HTTP server, and (in test_trafficconfig_analysis.py) a real Prometheus. No test writes an
InferenceService's status: KServe does, and the tests check that its field manager wrote it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from model_traffic import kube as k
from model_traffic.kube import Kube
from model_traffic_dev.localcluster import kserve as local_kserve
from model_traffic_dev.localcluster import nodes as fake_nodes
from tests.cluster.conftest import status_writers
from tests.conftest import Cluster, Operator, condition, get_json, our_yaml, start_operator, stop_operator, wait_for
from tests.support.webhooks import WebhookServer

pytestmark = pytest.mark.cluster

TEMPLATE = """\
    inferenceService:
      template:
        predictor:
          model:
            modelFormat: {name: huggingface}
            args: ["--max_model_len=4096"]
"""


def traffic_config(name: str, *parts: str) -> str:
    """A TrafficConfig; the spec given in parts, each an indented YAML block (dedented on its own)."""
    return our_yaml("TrafficConfig", name, "".join(textwrap.dedent(part) for part in parts))


def canary_with_analysis(namespace: str, model: str, analysis: str) -> str:
    """The TrafficConfig ``llama`` serving ``model`` through the namespace's own Gateway: v1 stable, v2 its canary,
    checked by ``analysis`` (the body of ``spec.analysis``, a YAML block dedented on its own)."""
    return traffic_config("llama", f"""\
        modelName: {model}
        gatewayRefs: [{{name: ai-gateway, namespace: {namespace}}}]
    """, TEMPLATE, "stable: {version: v1}\ncanary: {version: v2}\nanalysis:\n"
        + textwrap.indent(textwrap.dedent(analysis), "  "))


def apply(cluster: Cluster, namespace: str, text: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=text)


def is_ready(obj: dict[str, Any] | None) -> bool:
    return condition(obj, "Ready").get("status") == "True"


def wait_served(kube: Kube, namespace: str, name: str, timeout: float = 90) -> dict[str, Any]:
    """The InferenceService once KServe's controller reports it Ready (its Deployment's pods run on fake nodes)."""
    def ready() -> dict[str, Any] | None:
        obj = kube.get(k.INFERENCE_SERVICE, namespace, name)
        return obj if is_ready(obj) else None

    isvc = wait_for(ready, timeout, f"InferenceService {name} Ready (KServe's controller)")
    assert status_writers(isvc) == {local_kserve.FIELD_MANAGER}, "only KServe writes an InferenceService's status"
    return isvc


@contextlib.contextmanager
def nodes_cordoned(cluster: Cluster) -> Iterator[None]:
    """No new pod can be scheduled meanwhile (the cluster is full, as far as the scheduler is concerned)."""
    names = [node.name for node in fake_nodes.FAKE_NODES]
    cluster.kubectl("cordon", *names)
    try:
        yield
    finally:
        cluster.kubectl("uncordon", *names)


def start_rollout(cluster: Cluster, kube: Kube, namespace: str, name: str, analysis: str, *,
                  canary: str = "{version: v2}", strategy: str = "Canary") -> None:
    """A TrafficConfig with stable v1, candidate ``canary`` and this ``analysis:`` block; returns once KServe
    reports both versions' InferenceServices Ready."""
    apply(cluster, namespace, traffic_config(name, f"""\
        strategy: {strategy}
        gatewayRefs: [{{name: ai-gateway, namespace: {namespace}}}]
    """, TEMPLATE, f"""\
        stable: {{version: v1}}
        canary: {canary}
    """, analysis))
    wait_served(kube, namespace, f"{name}-v1")
    wait_served(kube, namespace, f"{name}-v2")


def status(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return dict((kube.get(k.TRAFFIC_CONFIG, namespace, name) or {}).get("status") or {})


def wait_phase(kube: Kube, namespace: str, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        current = status(kube, namespace, name)
        return current if current.get("phase") == phase else None

    return wait_for(check, timeout, f"TrafficConfig {name} phase {phase} (now {status(kube, namespace, name)})")


def weights(kube: Kube, namespace: str, name: str) -> dict[str, int]:
    """The VirtualModel's default-path weights, as written by the TrafficConfig."""
    vm = kube.get(k.VIRTUAL_MODEL, namespace, name) or {}
    return {b["name"]: b.get("weight", 1) for b in (vm.get("spec") or {}).get("backends") or []
            if not b.get("matches")}


def wait_weights(kube: Kube, namespace: str, name: str, expected: dict[str, int], timeout: float = 60) -> None:
    wait_for(lambda: weights(kube, namespace, name) == expected, timeout,
             f"weights {expected} (now {weights(kube, namespace, name)})")


def events(cluster: Cluster, namespace: str, name: str) -> list[tuple[str, str]]:
    listing = get_json(cluster, "events", "-n", namespace, "--field-selector",
                       f"involvedObject.kind=TrafficConfig,involvedObject.name={name}")
    # eventTime (microseconds) orders the rollout's own Events; the Ready Events have firstTimestamp only.
    items = sorted(listing["items"], key=lambda e: (e.get("eventTime") or e.get("firstTimestamp") or "",
                                                    e["metadata"]["name"]))
    return [(e["reason"], e["message"]) for e in items]


@pytest.fixture
def hooks() -> Iterator[WebhookServer]:
    with WebhookServer() as server:
        yield server


# --- stable only, then a canary driven by webhooks ----------------------------------------------------------

def test_stable_version_owns_an_inference_service_a_backend_and_the_virtual_model(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    apply(cluster, namespace, traffic_config("llama", f"""\
        modelName: llama-3
        gatewayRefs: [{{name: ai-gateway, namespace: {namespace}}}]
    """, TEMPLATE, """\
        stable: {version: v1, storageUri: "hf://org/llama:rev1"}
    """))
    isvc = wait_served(kube, namespace, "llama-v1")
    model = isvc["spec"]["predictor"]["model"]
    assert model["storageUri"] == "hf://org/llama:rev1"
    assert model["args"] == ["--max_model_len=4096", "--model_name=llama-3-v1"]  # the served name splits metrics
    assert isvc["metadata"]["labels"]["modeltraffic.io/traffic-config"] == "llama"

    done = wait_phase(kube, namespace, "llama", "Succeeded")
    assert done["stableVersion"] == "v1"
    [version] = done["versions"]
    assert {key: version[key] for key in ("version", "inferenceService", "ready", "weight")} == {
        "version": "v1", "inferenceService": "llama-v1", "ready": True, "weight": 100}
    assert version["url"]  # which of KServe's URLs: test_a_version_url_is_its_cluster_local_address
    backend = kube.get(k.MANAGED_AI_SERVICE_BACKEND, namespace, "llama-v1")
    assert backend is not None
    assert backend["spec"]["endpoint"]["inferenceService"]["name"] == "llama-v1"
    vm = kube.get(k.VIRTUAL_MODEL, namespace, "llama")
    assert vm is not None
    assert vm["spec"]["modelName"] == "llama-3"
    [entry] = vm["spec"]["backends"]
    assert (entry["name"], entry["modelNameOverride"], entry["weight"]) == ("llama-v1", "llama-3-v1", 100)
    # The whole chain is real: the backend and the VirtualModel are reconciled like hand-written ones.
    wait_for(lambda: condition(kube.get(k.MANAGED_AI_SERVICE_BACKEND, namespace, "llama-v1"), "Ready")
             .get("status") == "True", 30, "backend llama-v1 Ready")
    route = wait_for(lambda: kube.get(k.AI_GATEWAY_ROUTE, namespace, "llama"), 30, "the AIGatewayRoute")
    assert route["spec"]["rules"][0]["backendRefs"][0]["modelNameOverride"] == "llama-3-v1"

    cluster.kubectl("wait", "--for=condition=Ready", "trafficconfig/llama", "-n", namespace, "--timeout=20s")
    table = cluster.kubectl("get", "trafficcfg", "llama", "-n", namespace).stdout
    assert table.split("\n")[0].split() == ["NAME", "STRATEGY", "STABLE", "CANDIDATE", "WEIGHT", "PHASE", "AGE"]
    row = table.split("\n")[1].split()  # an empty column (no candidate, no weight) prints nothing
    assert (row[0], row[1], row[2], row[3]) == ("llama", "Canary", "v1", "Succeeded")


def test_a_version_url_is_its_cluster_local_address(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    apply(cluster, namespace, traffic_config("llama", f"""\
        gatewayRefs: [{{name: ai-gateway, namespace: {namespace}}}]
    """, TEMPLATE, """\
        stable: {version: v1, storageUri: "hf://org/llama:rev1"}
    """))
    isvc = wait_served(kube, namespace, "llama-v1")
    # KServe in Standard (raw) mode (reconcilers/ingress/kube_ingress_reconciler.go): status.address.url is the
    # predictor Service; status.url is built from the ingress domain template (http://llama-v1-<ns>.example.com)
    # even with ingress creation off, so nothing answers there.
    address = f"http://llama-v1-predictor.{namespace}.svc.cluster.local"
    assert isvc["status"]["address"]["url"] == address
    assert isvc["status"]["url"] == f"http://llama-v1-{namespace}.example.com"
    done = wait_phase(kube, namespace, "llama", "Succeeded")
    assert done["versions"][0]["url"] == address


def test_canary_steps_through_its_weights_runs_webhooks_and_promotes(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str, hooks: WebhookServer
) -> None:
    base = f"""\
        modelName: llama-3
        gatewayRefs: [{{name: ai-gateway, namespace: {namespace}}}]
    """, TEMPLATE, """\
        stable: {version: v1, storageUri: "hf://org/llama:rev1"}
    """
    analysis = f"""\
        analysis:
          interval: 2s
          stepWeights: [20, 60]
          webhooks:
          - {{name: evals, type: PreRollout, url: "{hooks.url('/pre')}"}}
          - {{name: load, type: Rollout, url: "{hooks.url('/rollout')}"}}
          - {{name: notify, type: PostRollout, url: "{hooks.url('/post')}"}}
    """
    apply(cluster, namespace, traffic_config("llama", *base))
    wait_served(kube, namespace, "llama-v1")
    wait_phase(kube, namespace, "llama", "Succeeded")

    canary = 'canary: {version: v2, storageUri: "hf://org/llama:rev2"}\n'
    with nodes_cordoned(cluster):  # v2's pod cannot be scheduled: KServe reports it not Ready, for real
        apply(cluster, namespace, traffic_config("llama", *base, canary, analysis))
        starting = wait_phase(kube, namespace, "llama", "Initializing")
        assert starting["candidateVersion"] == "v2"
        wait_for(lambda: kube.get(k.INFERENCE_SERVICE, namespace, "llama-v2"), 30, "InferenceService llama-v2")
        wait_for(lambda: pending_unschedulable(cluster, namespace, "llama-v2"), 60, "llama-v2's pod Unschedulable")
        assert not is_ready(kube.get(k.INFERENCE_SERVICE, namespace, "llama-v2"))
        assert status(kube, namespace, "llama")["phase"] == "Initializing"
        assert weights(kube, namespace, "llama") == {"llama-v1": 100}  # nothing moves before v2 is Ready
        assert hooks.calls("/pre") == []
    wait_served(kube, namespace, "llama-v2")

    wait_weights(kube, namespace, "llama", {"llama-v1": 80, "llama-v2": 20})
    pre = hooks.calls("/pre")
    assert len(pre) == 1
    assert pre[0].json == {"name": "llama", "namespace": namespace, "phase": "PreRollout", "modelName": "llama-3",
                           "candidate": {"version": "v2", "servedModel": "llama-3-v2"},
                           "stable": {"version": "v1", "servedModel": "llama-3-v1"}}
    wait_weights(kube, namespace, "llama", {"llama-v1": 40, "llama-v2": 60}, timeout=20)

    done = wait_phase(kube, namespace, "llama", "Succeeded", timeout=30)
    assert done["stableVersion"] == "v2"
    assert "candidateVersion" not in done
    wait_weights(kube, namespace, "llama", {"llama-v2": 100})
    # v1 retires once no traffic points at it: its InferenceService and backend are deleted.
    wait_for(lambda: kube.get(k.INFERENCE_SERVICE, namespace, "llama-v1") is None, 30, "llama-v1 retired")
    wait_for(lambda: kube.get(k.MANAGED_AI_SERVICE_BACKEND, namespace, "llama-v1") is None, 30, "backend retired")
    assert len(hooks.calls("/rollout")) == 2  # one per check
    post = wait_for(lambda: hooks.calls("/post"), 10, "the PostRollout webhook")
    assert len(post) == 1 and post[0].json["outcome"] in ("Promoting", "Succeeded")
    assert (post[0].json["candidate"]["version"], post[0].json["stable"]["version"]) == ("v2", "v1")

    reasons = [reason for reason, _ in events(cluster, namespace, "llama")]
    assert reasons.count("RolloutStarted") == 1
    assert reasons.count("StepAdvanced") == 1
    assert reasons.count("Promoted") == 1


def test_failing_checks_roll_back_after_the_threshold(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str, hooks: WebhookServer
) -> None:
    hooks.respond("/load", 500, body={"error": "p95 too high"})
    start_rollout(cluster, kube, namespace, "llama", f"""\
        analysis:
          interval: 1s
          threshold: 3
          stepWeights: [10, 50]
          webhooks: [{{name: load, type: Rollout, url: "{hooks.url('/load')}"}}]
    """)
    failed = wait_phase(kube, namespace, "llama", "Failed", timeout=30)
    assert failed["failedChecks"] == 3
    assert failed["canaryWeight"] == 0
    assert failed["lastResults"] == [
        {"name": "webhook/load", "passed": False, "message": 'HTTP 500: {"error": "p95 too high"}'}]
    wait_weights(kube, namespace, "llama", {"llama-v1": 100})
    wait_for(lambda: kube.get(k.INFERENCE_SERVICE, namespace, "llama-v2") is None, 30, "the candidate scaled away")
    obj = kube.get(k.TRAFFIC_CONFIG, namespace, "llama")
    assert condition(obj, "Stalled")["status"] == "True"
    assert condition(obj, "Stalled")["reason"] == "RolledBack"
    rolled = [m for r, m in events(cluster, namespace, "llama") if r == "RolledBack" and "rolled back v2" in m]
    assert len(rolled) == 1 and "webhook/load" in rolled[0] and "HTTP 500" in rolled[0], rolled
    # The two failed checks before it: one Event with a series, in order by eventTime.
    failed_checks = [e for e in get_json(cluster, "events", "-n", namespace)["items"]
                     if e["reason"] == "CheckFailed" and e["involvedObject"]["name"] == "llama"]
    assert len(failed_checks) == 1 and failed_checks[0]["series"]["count"] == 2, failed_checks
    assert "(2 of 3)" in failed_checks[0]["message"] and failed_checks[0]["eventTime"]
    # Failed stays failed (no retry loop) until the spec changes.
    calls = len(hooks.calls("/load"))
    cluster.kubectl("wait", "--for=condition=Stalled", "trafficconfig/llama", "-n", namespace, "--timeout=5s")
    assert len(hooks.calls("/load")) == calls


def test_a_candidate_that_never_gets_ready_is_stalled_at_the_progress_deadline_then_rolled_back(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    """Issue #14 item 3: the candidate's pod cannot be scheduled (KServe reports it not Ready, for real); after
    progressDeadlineSeconds the object is Stalled naming what it waits for; with progressDeadlineAbort it rolls
    back (Failed, the deadline as its reason) instead of waiting forever."""
    base = f"""\
        gatewayRefs: [{{name: ai-gateway, namespace: {namespace}}}]
        progressDeadlineSeconds: 30
    """, TEMPLATE, """\
        stable: {version: v1}
    """
    apply(cluster, namespace, traffic_config("llama", *base))
    wait_served(kube, namespace, "llama-v1")
    wait_phase(kube, namespace, "llama", "Succeeded")
    with nodes_cordoned(cluster):
        apply(cluster, namespace, traffic_config("llama", *base, "canary: {version: v2}\n"))
        started = wait_phase(kube, namespace, "llama", "Initializing")
        assert started["candidateVersion"] == "v2" and started["lastProgressTime"]

        def stalled() -> dict[str, Any] | None:
            obj = kube.get(k.TRAFFIC_CONFIG, namespace, "llama")
            return obj if condition(obj, "Stalled").get("reason") == "ProgressDeadlineExceeded" else None

        obj = wait_for(stalled, 90, "Stalled=True, ProgressDeadlineExceeded")
        assert condition(obj, "Stalled")["status"] == "True"
        message = condition(obj, "Stalled")["message"]
        assert "no progress in 30s" in message and "InferenceService llama-v2 not Ready" in message, message
        assert obj["status"]["phase"] == "Initializing"  # without the opt-in it keeps waiting
        assert weights(kube, namespace, "llama") == {"llama-v1": 100}

        # The opt-in: the next reconcile rolls the candidate back, the deadline being long past.
        cluster.kubectl("patch", "trafficconfig", "llama", "-n", namespace, "--type=merge",
                        "-p", '{"spec": {"progressDeadlineAbort": true}}')
        failed = wait_phase(kube, namespace, "llama", "Failed", timeout=30)
        assert failed["stableVersion"] == "v1" and failed["candidateVersion"] == "v2"
        def rolled_back() -> dict[str, Any] | None:
            # The progress is written first, the conditions after the children: wait for them too.
            obj = kube.get(k.TRAFFIC_CONFIG, namespace, "llama")
            return obj if "rolled back" in condition(obj, "Stalled").get("message", "") else None

        obj = wait_for(rolled_back, 30, "Stalled: rolled back")
        assert condition(obj, "Stalled")["reason"] == "ProgressDeadlineExceeded"
        wait_for(lambda: kube.get(k.INFERENCE_SERVICE, namespace, "llama-v2") is None, 60, "the candidate retired")
    # One rollback Event (beside the Ready condition's own Events, which carry the same reason).
    rolled = [m for r, m in events(cluster, namespace, "llama") if r == "ProgressDeadlineExceeded" and
              m.startswith("rolled back v2")]
    assert len(rolled) == 1 and "not Ready" in rolled[0], rolled


def pending_unschedulable(cluster: Cluster, namespace: str, isvc: str) -> bool:
    """Whether the InferenceService's pods are all Pending because the scheduler found no node for them."""
    pods = get_json(cluster, "pods", "-n", namespace, "-l", f"serving.kserve.io/inferenceservice={isvc}")["items"]
    return bool(pods) and all(
        pod["status"].get("phase") == "Pending" and condition(pod, "PodScheduled").get("reason") == "Unschedulable"
        for pod in pods)


def predictor_deployments(cluster: Cluster, namespace: str) -> dict[str, dict[str, Any]]:
    """KServe's Deployments in the namespace (Standard mode: one `<isvc>-predictor` per InferenceService)."""
    listing = get_json(cluster, "deployments", "-n", namespace, "-l", "component=predictor")
    return {d["metadata"]["name"]: d for d in listing["items"]}


def test_kserve_runs_a_deployment_per_version_through_a_rollout(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str, record_property: Any
) -> None:
    base = f"""\
        modelName: llama-3
        gatewayRefs: [{{name: ai-gateway, namespace: {namespace}}}]
    """, TEMPLATE, """\
        stable: {version: v1, storageUri: "hf://org/llama:rev1"}
    """
    apply(cluster, namespace, traffic_config("llama", *base))
    wait_served(kube, namespace, "llama-v1")
    applied = time.monotonic()
    apply(cluster, namespace, traffic_config("llama", *base, """\
        canary: {version: v2, storageUri: "hf://org/llama:rev2"}
        analysis: {interval: 1s, stepWeights: [50], promotion: Manual}
    """))
    # From the new version in the spec to KServe reporting its InferenceService Ready.
    seconds = local_kserve.seconds_until_ready(cluster.kubectl_path, cluster.kubeconfig, namespace, "llama-v2",
                                               applied)
    record_property("version_ready_seconds", round(seconds, 1))
    assert seconds < 60
    wait_phase(kube, namespace, "llama", "WaitingPromotion")

    deployments = predictor_deployments(cluster, namespace)
    assert set(deployments) == {"llama-v1-predictor", "llama-v2-predictor"}
    for version, revision in (("v1", "rev1"), ("v2", "rev2")):
        deployment = deployments[f"llama-{version}-predictor"]
        assert deployment["metadata"]["ownerReferences"][0]["name"] == f"llama-{version}"
        assert (deployment["spec"]["replicas"], deployment["status"].get("availableReplicas")) == (1, 1)
        template = deployment["spec"]["template"]
        # The storage initializer (injected into the pod by KServe's pod webhook) downloads this URI.
        annotations = template["metadata"]["annotations"]
        assert annotations["internal.serving.kserve.io/storage-initializer-sourceuri"] == f"hf://org/llama:{revision}"
        assert annotations["serving.kserve.io/deploymentMode"] == local_kserve.DEPLOYMENT_MODE
        [container] = template["spec"]["containers"]
        assert container["image"] == "kserve/huggingfaceserver:latest"  # the runtime's image, no GPU asked for
        # The runtime's `--model_name={{.Name}}` comes first and the served name the operator adds last: the
        # server's argument parser keeps the last, so each version serves as <modelName>-<version>.
        assert container["args"] == [f"--model_name=llama-{version}", "--max_model_len=4096",
                                     f"--model_name=llama-3-{version}"]
        # The version's resources: the template has none, so KServe's defaults (inferenceService.resource).
        assert container["resources"] == {"limits": {"cpu": "1", "memory": "2Gi"},
                                          "requests": {"cpu": "1", "memory": "2Gi"}}
        [pod] = get_json(cluster, "pods", "-n", namespace, "-l",
                         f"serving.kserve.io/inferenceservice=llama-{version}")["items"]
        assert pod["status"]["phase"] == "Running" and pod["spec"]["nodeName"].startswith("kwok-")
        [init] = pod["spec"]["initContainers"]
        assert (init["name"], init["args"]) == ("storage-initializer", [f"hf://org/llama:{revision}", "/mnt/models"])

    model_traffic(cluster, "promote", "llama", "-n", namespace)
    wait_phase(kube, namespace, "llama", "Succeeded")
    # v1 retires: its InferenceService is deleted, and with it (garbage collector) its Deployment and pods.
    wait_for(lambda: set(predictor_deployments(cluster, namespace)) == {"llama-v2-predictor"}, 60,
             "llama-v1's Deployment collected")


def sized_llama(namespace: str, *analysis: str) -> str:
    """llama with production-sized template (2 CPU, 4Gi), a stable of 2 replicas and a small canary of 1."""
    return traffic_config("llama", f"""\
        gatewayRefs: [{{name: ai-gateway, namespace: {namespace}}}]
        inferenceService:
          template:
            predictor:
              model:
                modelFormat: {{name: huggingface}}
                resources:
                  requests: {{cpu: "2", memory: 4Gi}}
                  limits: {{cpu: "2", memory: 4Gi}}
        stable: {{version: v1, replicas: 2}}
        canary:
          version: v2
          replicas: 1
          resources:
            requests: {{cpu: 500m, memory: 1Gi}}
            limits: {{cpu: 500m, memory: 1Gi}}
        analysis: {{{", ".join(["interval: 1s", "stepWeights: [50]", *analysis])}}}
    """)


def test_each_version_runs_at_its_own_size(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    # The template sizes production; the stable scales out and the canary runs small, on the Deployments KServe makes.
    apply(cluster, namespace, sized_llama(namespace, "promotion: Manual"))
    wait_served(kube, namespace, "llama-v1")
    wait_served(kube, namespace, "llama-v2")
    expected = {
        "v1": (2, {"limits": {"cpu": "2", "memory": "4Gi"}, "requests": {"cpu": "2", "memory": "4Gi"}}),
        "v2": (1, {"limits": {"cpu": "500m", "memory": "1Gi"}, "requests": {"cpu": "500m", "memory": "1Gi"}}),
    }
    deployments = predictor_deployments(cluster, namespace)
    assert set(deployments) == {"llama-v1-predictor", "llama-v2-predictor"}
    for version, (replicas, resources) in expected.items():
        [container] = deployments[f"llama-{version}-predictor"]["spec"]["template"]["spec"]["containers"]
        assert container["resources"] == resources
        [pod] = get_json(cluster, "pods", "-n", namespace, "-l",
                         f"serving.kserve.io/inferenceservice=llama-{version}")["items"]
        assert pod["spec"]["containers"][0]["resources"] == resources
        # KServe's Standard mode leaves the replica count to the HorizontalPodAutoscaler it makes beside the
        # Deployment (same name), bounded by the predictor's minReplicas/maxReplicas; the local control plane runs
        # no HPA controller, so the bounds are what is checked here, not the Deployment's replicas.
        hpa = get_json(cluster, "hpa", "-n", namespace, f"llama-{version}-predictor")
        assert hpa["spec"]["scaleTargetRef"]["name"] == f"llama-{version}-predictor"
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (replicas, replicas)


def test_a_promoted_canary_takes_the_stable_size(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    """Issue #13: promoted automatically (spec.stable still names v1), v2 serves all traffic at the stable role's
    size, as Argo Rollouts scales a promoted ReplicaSet to spec.replicas; checked on what KServe made."""
    apply(cluster, namespace, sized_llama(namespace))
    wait_served(kube, namespace, "llama-v2")
    done = wait_phase(kube, namespace, "llama", "Succeeded", timeout=90)
    assert done["stableVersion"] == "v2"

    def at_stable_size() -> dict[str, Any] | None:
        hpa = get_json(cluster, "hpa", "-n", namespace, "llama-v2-predictor")
        return hpa if (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 2) else None

    wait_for(at_stable_size, 60, "llama-v2's HorizontalPodAutoscaler bounds at the stable size (2, 2)")
    [container] = predictor_deployments(cluster, namespace)["llama-v2-predictor"]["spec"]["template"]["spec"][
        "containers"]
    assert container["resources"] == {"limits": {"cpu": "2", "memory": "4Gi"},
                                      "requests": {"cpu": "2", "memory": "4Gi"}}


# --- manual promotion, pause, abort, the CLI ----------------------------------------------------------------

def model_traffic(cluster: Cluster, *args: str) -> str:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "model_traffic", *args], capture_output=True, text=True,
                            env={"KUBECONFIG": str(cluster.kubeconfig), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_manual_promotion_waits_for_a_person_then_the_cli_promotes(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    start_rollout(cluster, kube, namespace, "llama", """\
        analysis: {interval: 1s, stepWeights: [30], promotion: Manual}
    """)
    waiting = wait_phase(kube, namespace, "llama", "WaitingPromotion")
    assert waiting["canaryWeight"] == 30
    assert weights(kube, namespace, "llama") == {"llama-v1": 70, "llama-v2": 30}
    wait_for(lambda: "model-traffic promote llama" in condition(kube.get(k.TRAFFIC_CONFIG, namespace, "llama"),
                                                                 "Ready").get("message", ""),
             10, "the Ready message to say how to promote")

    out = model_traffic(cluster, "promote", "llama", "-n", namespace)
    assert "promote requested (status.requests.promote=" in out
    done = wait_phase(kube, namespace, "llama", "Succeeded")
    assert done["stableVersion"] == "v2" and done["handledRequests"]["promote"] == done["requests"]["promote"]
    spec = (kube.get(k.TRAFFIC_CONFIG, namespace, "llama") or {})["spec"]
    assert spec["stable"]["version"] == "v1" and spec["canary"]["version"] == "v2"  # a request, not a spec edit
    wait_weights(kube, namespace, "llama", {"llama-v2": 100})
    wait_for(lambda: kube.get(k.INFERENCE_SERVICE, namespace, "llama-v1") is None, 30, "llama-v1 retired")


def test_pause_holds_the_weight_resume_continues_abort_returns_all_traffic(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    start_rollout(cluster, kube, namespace, "llama", """\
        analysis: {interval: 2s, stepWeights: [10, 20, 30, 40, 50, 60, 70, 80]}
    """)
    wait_weights(kube, namespace, "llama", {"llama-v1": 90, "llama-v2": 10})

    model_traffic(cluster, "pause", "llama", "-n", namespace)
    paused = wait_phase(kube, namespace, "llama", "Paused")
    held = paused["canaryWeight"]
    cluster.kubectl("wait", "--for=condition=Ready", "trafficconfig/llama", "-n", namespace, "--timeout=5s")
    time.sleep(5)  # more than two intervals: a running rollout would have moved on
    assert status(kube, namespace, "llama")["canaryWeight"] == held
    assert weights(kube, namespace, "llama")["llama-v2"] == held

    model_traffic(cluster, "resume", "llama", "-n", namespace)
    wait_for(lambda: (status(kube, namespace, "llama").get("canaryWeight") or 0) > held, 20, "the rollout to go on")

    model_traffic(cluster, "abort", "llama", "-n", namespace)
    done = wait_phase(kube, namespace, "llama", "Failed")  # rolled back by request until a retry or a new canary
    assert done["stableVersion"] == "v1"
    wait_weights(kube, namespace, "llama", {"llama-v1": 100})
    wait_for(lambda: kube.get(k.INFERENCE_SERVICE, namespace, "llama-v2") is None, 30, "the candidate retired")
    assert "Aborted" in [reason for reason, _ in events(cluster, namespace, "llama")]


def test_a_held_canary_weight_is_set_and_changed_by_the_cli(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    start_rollout(cluster, kube, namespace, "llama", """\
        analysis: {interval: 1s}
    """, canary="{version: v2, weight: 5}")
    wait_weights(kube, namespace, "llama", {"llama-v1": 95, "llama-v2": 5})
    wait_phase(kube, namespace, "llama", "WaitingPromotion")
    model_traffic(cluster, "set-weight", "llama", "40", "-n", namespace)
    wait_weights(kube, namespace, "llama", {"llama-v1": 60, "llama-v2": 40})
    assert status(kube, namespace, "llama")["canaryWeight"] == 40


# --- the other strategies ---------------------------------------------------------------------------------

def test_weighted_variants_are_added_reweighted_promoted_and_retired(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    head = f"""\
        strategy: Weighted
        gatewayRefs: [{{name: ai-gateway, namespace: {namespace}}}]
    """, TEMPLATE, """\
        stable: {version: v1}
    """
    apply(cluster, namespace, traffic_config("mix", *head, "variants: [{version: v1, weight: 100}]\n"))
    wait_served(kube, namespace, "mix-v1")
    wait_phase(kube, namespace, "mix", "Succeeded")

    apply(cluster, namespace, traffic_config("mix", *head, textwrap.dedent("""\
        variants:
        - {version: v1, weight: 70}
        - {version: v2, storageUri: "hf://org/m:2", weight: 20}
        - {version: v3, storageUri: "hf://org/m:3", weight: 10}
    """)))
    for name in ("mix-v2", "mix-v3"):
        wait_served(kube, namespace, name)
    wait_weights(kube, namespace, "mix", {"mix-v1": 70, "mix-v2": 20, "mix-v3": 10})
    done = wait_phase(kube, namespace, "mix", "Succeeded")
    assert [v["version"] for v in done["versions"]] == ["v1", "v2", "v3"]

    model_traffic(cluster, "set-weights", "mix", "v1=40", "v2=40", "v3=20", "-n", namespace)
    wait_weights(kube, namespace, "mix", {"mix-v1": 40, "mix-v2": 40, "mix-v3": 20})

    # Deleting a variant from the spec takes its traffic away, then retires it.
    apply(cluster, namespace, traffic_config("mix", *head, textwrap.dedent("""\
        variants:
        - {version: v1, weight: 50}
        - {version: v2, storageUri: "hf://org/m:2", weight: 50}
    """)))
    wait_weights(kube, namespace, "mix", {"mix-v1": 50, "mix-v2": 50})
    wait_for(lambda: kube.get(k.INFERENCE_SERVICE, namespace, "mix-v3") is None, 30, "mix-v3 retired")
    wait_for(lambda: kube.get(k.MANAGED_AI_SERVICE_BACKEND, namespace, "mix-v3") is None, 10,
             "backend mix-v3 retired (deleted right after its InferenceService)")

    # The stable variant cannot be deleted (refused at apply time) ...
    refused = cluster.kubectl("apply", "-n", namespace, "-f", "-", check=False, stdin=traffic_config(
        "mix", *head, "variants: [{version: v2, weight: 100}]\n"))
    assert refused.returncode != 0
    assert "the stable version must be one of the variants" in refused.stderr
    # ... but promoting a variant makes it the stable and retires the others.
    model_traffic(cluster, "promote", "mix", "--version", "v2", "-n", namespace)
    wait_weights(kube, namespace, "mix", {"mix-v2": 100})
    wait_for(lambda: kube.get(k.INFERENCE_SERVICE, namespace, "mix-v1") is None, 30, "mix-v1 retired")
    assert status(kube, namespace, "mix")["stableVersion"] == "v2"


def test_blue_green_deploys_the_candidate_without_traffic_then_switches_at_once(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str, hooks: WebhookServer
) -> None:
    start_rollout(cluster, kube, namespace, "bg", f"""\
        analysis:
          interval: 2s
          iterations: 2
          webhooks: [{{name: smoke, type: Rollout, url: "{hooks.url('/smoke')}"}}]
    """, strategy="BlueGreen")
    progressing = wait_phase(kube, namespace, "bg", "Progressing")
    assert progressing["canaryWeight"] == 0
    assert weights(kube, namespace, "bg") == {"bg-v1": 100}  # full scale, no traffic
    wait_for(lambda: len(hooks.calls("/smoke")) >= 1, 20, "the first check against the candidate")
    assert weights(kube, namespace, "bg") == {"bg-v1": 100}
    wait_phase(kube, namespace, "bg", "Succeeded", timeout=30)
    assert len(hooks.calls("/smoke")) == 2
    wait_weights(kube, namespace, "bg", {"bg-v2": 100})  # one switch, no intermediate weights


def test_ab_test_sends_only_matching_requests_to_the_candidate(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    start_rollout(cluster, kube, namespace, "ab", """\
        analysis:
          interval: 30s
          iterations: 3
          match: [{headers: [{name: x-canary, value: "true"}]}]
    """, strategy="ABTest")

    def matched() -> list[dict[str, Any]]:
        vm = kube.get(k.VIRTUAL_MODEL, namespace, "ab") or {}
        return [b for b in vm.get("spec", {}).get("backends", []) if b.get("matches")]

    entries = wait_for(matched, 30, "the candidate on the matched path")
    [entry] = entries
    assert (entry["name"], entry["modelNameOverride"]) == ("ab-v2", "ab-v2")
    assert entry["matches"] == [{"headers": [{"name": "x-canary", "value": "true"}]}]
    assert weights(kube, namespace, "ab") == {"ab-v1": 100}

    def candidate_rule() -> dict[str, Any] | None:
        route = kube.get(k.AI_GATEWAY_ROUTE, namespace, "ab") or {}
        rules = route.get("spec", {}).get("rules", [])
        return rules[0] if rules and any(r.get("name") == "ab-v2" for r in rules[0].get("backendRefs", [])) else None

    rule = wait_for(candidate_rule, 30, "the AIGatewayRoute rule of the candidate, ahead of the default")
    headers = {h["name"]: h["value"] for h in rule["matches"][0]["headers"]}
    assert headers == {"x-ai-eg-model": "ab", "x-canary": "true"}


def test_brownfield_ref_is_the_stable_and_is_never_modified(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    apply(cluster, namespace, textwrap.dedent("""\
        apiVersion: serving.kserve.io/v1beta1
        kind: InferenceService
        metadata: {name: llama-prod}
        spec:
          predictor:
            model:
              modelFormat: {name: huggingface}
              storageUri: hf://org/llama:prod
              args: ["--model_name=llama-prod"]
    """))
    before = wait_served(kube, namespace, "llama-prod")
    apply(cluster, namespace, traffic_config("llama", f"""\
        gatewayRefs: [{{name: ai-gateway, namespace: {namespace}}}]
        inferenceService: {{ref: {{name: llama-prod}}}}
        stable: {{version: v1}}
        canary: {{version: v2, storageUri: "hf://org/llama:rev2"}}
        analysis: {{interval: 1s, stepWeights: [50], promotion: Manual}}
    """))
    clone = wait_served(kube, namespace, "llama-v2")
    # New versions are cloned from the referenced spec, with their own weights and served name.
    assert clone["spec"]["predictor"]["model"]["storageUri"] == "hf://org/llama:rev2"
    assert clone["spec"]["predictor"]["model"]["args"] == ["--model_name=llama-v2"]
    wait_phase(kube, namespace, "llama", "WaitingPromotion")
    vm = kube.get(k.VIRTUAL_MODEL, namespace, "llama") or {}
    assert {b["name"]: b["modelNameOverride"] for b in vm["spec"]["backends"]} == {
        "llama-v1": "llama-prod", "llama-v2": "llama-v2"}
    backend = kube.get(k.MANAGED_AI_SERVICE_BACKEND, namespace, "llama-v1") or {}
    assert backend["spec"]["endpoint"]["inferenceService"]["name"] == "llama-prod"

    model_traffic(cluster, "promote", "llama", "-n", namespace)
    wait_phase(kube, namespace, "llama", "Succeeded")
    wait_weights(kube, namespace, "llama", {"llama-v2": 100})
    wait_for(lambda: any(r == "Retired" and "llama-prod is not owned" in m
                         for r, m in events(cluster, namespace, "llama")),
             30, "the note that the referenced InferenceService is left as it is")
    after = kube.get(k.INFERENCE_SERVICE, namespace, "llama-prod")
    assert after is not None, "the referenced InferenceService is not ours: never deleted"
    assert after["spec"] == before["spec"]
    assert not after["metadata"].get("ownerReferences")


def test_invalid_specs_are_refused_at_apply_time(cluster: Cluster, namespace: str) -> None:
    cases = {
        "canary.version must differ from stable.version": "stable: {version: v1}\ncanary: {version: v1}\n",
        "variant weights must sum to 100": "strategy: Weighted\nstable: {version: v1}\n"
                                           "variants: [{version: v1, weight: 60}, {version: v2, weight: 30}]\n",
        "canary.weight applies to the Canary strategy only": "strategy: BlueGreen\nstable: {version: v1}\n"
                                                             "canary: {version: v2, weight: 10}\n",
        # spec.release replaces the deprecated pair: never both (docs/upgrade.md), and one of them is needed.
        "spec.stable and spec.canary are its deprecated form": "release: {version: v2}\nstable: {version: v1}\n",
        "set spec.release, the version you want to run": "paused: false\n",
        "release.weight applies to the Canary strategy only":
            'strategy: ABTest\nrelease: {version: v2, weight: 5}\n'
            'analysis: {match: [{headers: [{name: x-b, value: "1"}]}]}\n',
        "the stable version must be one of the variants (spec.release": "strategy: Weighted\nrelease: {version: v3}\n"
                                                                         "variants: [{version: v1, weight: 100}]\n",
    }
    for message, spec in cases.items():
        refused = cluster.kubectl("apply", "-n", namespace, "-f", "-", check=False,
                                  stdin=traffic_config("bad", TEMPLATE, spec))
        assert refused.returncode != 0 and message in refused.stderr, (message, refused.stderr)


# --- restart safety ------------------------------------------------------------------------------------------

def test_killing_the_operator_mid_rollout_neither_repeats_nor_skips_a_step(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    start_rollout(cluster, kube, namespace, "llama", """\
        analysis: {interval: 3s, stepWeights: [10, 30, 60]}
    """)
    wait_weights(kube, namespace, "llama", {"llama-v1": 70, "llama-v2": 30}, timeout=30)

    operator.process.kill()  # no goodbye: mid-rollout, between two checks
    operator.process.wait()
    try:
        frozen = status(kube, namespace, "llama")
        assert frozen["phase"] == "Progressing" and frozen["canaryWeight"] in (30, 60)
    finally:
        restarted = start_operator(cluster, operator.log_path, **{"MTO_METRICS_PORT": str(operator.metrics_port)})
        operator.process = restarted.process
    done = wait_phase(kube, namespace, "llama", "Succeeded", timeout=40)
    assert done["stableVersion"] == "v2"
    advanced = [m for r, m in events(cluster, namespace, "llama") if r == "StepAdvanced"]
    assert [m.split(" at weight ")[1].split(" ")[0] for m in advanced] == ["30", "60"], advanced
    assert [r for r, _ in events(cluster, namespace, "llama")].count("RolloutStarted") == 1


def test_a_rollback_survives_a_restart(cluster: Cluster, kube: Kube, operator: Operator, namespace: str,
                                       hooks: WebhookServer) -> None:
    hooks.respond("/bad", 503)
    start_rollout(cluster, kube, namespace, "llama", f"""\
        analysis:
          interval: 1s
          threshold: 1
          webhooks: [{{name: bad, type: Rollout, url: "{hooks.url('/bad')}"}}]
    """)
    wait_phase(kube, namespace, "llama", "Failed")
    stop_operator(operator)
    try:
        calls = len(hooks.calls("/bad"))
    finally:
        restarted = start_operator(cluster, operator.log_path, **{"MTO_METRICS_PORT": str(operator.metrics_port)})
        operator.process = restarted.process
    cluster.kubectl("wait", "--for=condition=Stalled", "trafficconfig/llama", "-n", namespace, "--timeout=10s")
    wait_weights(kube, namespace, "llama", {"llama-v1": 100})
    assert status(kube, namespace, "llama")["phase"] == "Failed"
    assert len(hooks.calls("/bad")) == calls  # the rollback is not forgotten, the checks do not start over
    time.sleep(3)  # a restart that announced it again would have done so by now
    assert [r for r, _ in events(cluster, namespace, "llama")].count("RolledBack") == 1
    assert json.dumps(status(kube, namespace, "llama")).count("v2") >= 1


def test_an_ab_match_on_the_model_header_is_refused_at_apply_time(cluster: Cluster, namespace: str) -> None:
    spec = traffic_config("bad", TEMPLATE, """\
        strategy: ABTest
        stable: {version: v1}
        canary: {version: v2}
        analysis: {match: [{headers: [{name: x-ai-eg-model, value: other}]}]}
    """)
    refused = cluster.kubectl("apply", "-n", namespace, "-f", "-", check=False, stdin=spec)
    assert refused.returncode != 0
    assert "x-ai-eg-model cannot be a match header" in refused.stderr


def test_a_cli_edit_racing_another_write_is_retried(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from model_traffic import cli
    from model_traffic.commands import ctl

    start_rollout(cluster, kube, namespace, "llama", """\
        analysis: {interval: 1h, stepWeights: [10, 50]}
    """)
    wait_phase(kube, namespace, "llama", "Progressing")
    real_edit, raced = ctl.edit, []

    def edit_after_another_write(kube_: Kube, ns: str, name: str, change: dict[str, Any]) -> None:
        if not raced:  # someone (the operator's status write, a GitOps sync) writes first
            raced.append(name)
            kube.custom.patch_namespaced_custom_object(
                "modeltraffic.io", "v1alpha1", ns, "trafficconfigs", name,
                {"metadata": {"annotations": {"example.com/touched": "yes"}}},
                _content_type="application/merge-patch+json")
        real_edit(kube_, ns, name, change)

    monkeypatch.setattr(ctl, "edit", edit_after_another_write)
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    assert cli.main(["set-weight", "llama", "30", "-n", namespace]) == 0  # a spec edit (pause is a request)
    assert raced == ["llama"]
    assert (kube.get(k.TRAFFIC_CONFIG, namespace, "llama") or {})["spec"]["canary"]["weight"] == 30


# --- crash consistency (issue #12) ------------------------------------------------------------------------

class WatchRecord:
    """Every change of some kinds in a namespace, as `kubectl get --watch --output-watch-events` streams it (the
    API server's own watch), kept with the resourceVersion: one etcd revision orders changes across kinds."""

    def __init__(self, cluster: Cluster, namespace: str, *resources: str) -> None:
        self.changes: list[tuple[int, str, dict[str, Any]]] = []  # (resourceVersion, event type, object)
        self._lock = threading.Lock()
        self._processes = [subprocess.Popen(
            [str(cluster.kubectl_path), "get", resource, "-n", namespace, "--watch", "--output-watch-events",
             "-o", "json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}) for resource in resources]
        self._threads = [threading.Thread(target=self._read, args=(p,), daemon=True) for p in self._processes]
        for thread in self._threads:
            thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        decoder, buffer = json.JSONDecoder(), ""
        assert process.stdout is not None
        for line in process.stdout:
            buffer += line
            try:
                event, end = decoder.raw_decode(buffer.strip())
            except ValueError:
                continue
            buffer = buffer.strip()[end:]
            obj = event.get("object") or {}
            with self._lock:
                self.changes.append((int(obj["metadata"]["resourceVersion"]), event.get("type", ""), obj))

    def stop(self) -> list[tuple[int, str, dict[str, Any]]]:
        time.sleep(1)  # the last changes reach the streams
        for process in self._processes:
            process.terminate()
            process.wait(10)
        with self._lock:
            return sorted(self.changes, key=lambda change: change[0])


def route_backend_names(obj: dict[str, Any]) -> set[str]:
    return {str(ref.get("name")) for rule in (obj.get("spec") or {}).get("rules") or []
            for ref in rule.get("backendRefs") or []}


def references_to_deleted_backends(changes: list[tuple[int, str, dict[str, Any]]]) -> tuple[list[str], int]:
    """Each moment an AIServiceBackend (or the Envoy Gateway Backend the generated HTTPRoute calls) started to go
    (deletionTimestamp set, or deleted outright) while the AIGatewayRoute or the HTTPRoute, as of that revision,
    still referenced it; and how many backends went."""
    routes: dict[str, set[str]] = {}  # kind -> names referenced as of the current revision
    going: set[tuple[str, str]] = set()
    violations: list[str] = []
    for revision, kind_event, obj in changes:
        kind, name = obj.get("kind"), obj["metadata"]["name"]
        if kind in ("AIGatewayRoute", "HTTPRoute"):
            routes[str(kind)] = set() if kind_event == "DELETED" else route_backend_names(obj)
            continue
        if (kind, name) in going or not (kind_event == "DELETED" or obj["metadata"].get("deletionTimestamp")):
            continue
        going.add((str(kind), name))
        holders = [route for route, names in routes.items() if name in names]
        if holders:
            violations.append(f"{kind} {name} deleted at revision {revision} while {holders} referenced it")
    return violations, len(going)


def test_retirement_is_make_before_break_on_the_real_gateway(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str, hooks: WebhookServer
) -> None:
    """A promotion and a rollback, watched: no AIServiceBackend or Backend starts to go while the AIGatewayRoute
    or the HTTPRoute the gateway serves (as Envoy AI Gateway generated it) still references it."""
    # The check itself can fail: a backend deleted while a route names it is reported.
    broken = [(1, "ADDED", {"kind": "AIGatewayRoute", "metadata": {"name": "llama"},
                            "spec": {"rules": [{"backendRefs": [{"name": "llama-v1"}]}]}}),
              (2, "DELETED", {"kind": "AIServiceBackend", "metadata": {"name": "llama-v1"}})]
    assert references_to_deleted_backends(broken) == (
        ["AIServiceBackend llama-v1 deleted at revision 2 while ['AIGatewayRoute'] referenced it"], 1)
    record = WatchRecord(cluster, namespace, "aigatewayroutes", "httproutes", "aiservicebackends",
                         "backends.gateway.envoyproxy.io")
    try:
        start_rollout(cluster, kube, namespace, "llama", """\
            analysis: {interval: 1s, stepWeights: [50]}
        """)
        wait_phase(kube, namespace, "llama", "Succeeded", timeout=60)
        assert status(kube, namespace, "llama")["stableVersion"] == "v2"
        wait_for(lambda: kube.get(k.AI_SERVICE_BACKEND, namespace, "llama-v1") is None, 60, "v1 retired")

        hooks.respond("/bad", 503)
        apply(cluster, namespace, traffic_config("llama", f"""\
            strategy: Canary
            gatewayRefs: [{{name: ai-gateway, namespace: {namespace}}}]
        """, TEMPLATE, f"""\
            stable: {{version: v2}}
            canary: {{version: v3}}
            analysis:
              interval: 1s
              threshold: 1
              stepWeights: [50]
              webhooks: [{{name: bad, type: Rollout, url: "{hooks.url('/bad')}"}}]
        """))
        wait_served(kube, namespace, "llama-v3")
        wait_phase(kube, namespace, "llama", "Failed", timeout=60)
        wait_for(lambda: kube.get(k.AI_SERVICE_BACKEND, namespace, "llama-v3") is None, 60, "v3 retired")
    finally:
        changes = record.stop()
    violations, deleted = references_to_deleted_backends(changes)
    print(f"make-before-break: 1 promotion, 1 rollback, {deleted} backends retired, {len(changes)} changes "
          f"watched, {len(violations)} route references to a deleted backend")
    assert deleted >= 4  # the AIServiceBackend and Backend of v1, then of v3
    assert violations == []


def test_aborts_and_ab_promotions_are_make_before_break_too(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    """An aborted canary (spec.canary removed mid-rollout) and an ABTest promotion (the candidate on a
    header-matched rule of its own), watched as above."""
    record = WatchRecord(cluster, namespace, "aigatewayroutes", "httproutes", "aiservicebackends",
                         "backends.gateway.envoyproxy.io")
    stable_only = (f"""\
        gatewayRefs: [{{name: ai-gateway, namespace: {namespace}}}]
    """, TEMPLATE)
    try:
        start_rollout(cluster, kube, namespace, "llama", """\
            analysis: {interval: 1h, stepWeights: [30]}
        """)
        wait_weights(kube, namespace, "llama", {"llama-v1": 70, "llama-v2": 30}, timeout=30)
        apply(cluster, namespace, traffic_config("llama", *stable_only, "stable: {version: v1}\n"))
        wait_for(lambda: kube.get(k.AI_SERVICE_BACKEND, namespace, "llama-v2") is None, 60, "aborted v2 retired")

        apply(cluster, namespace, traffic_config("llama", "strategy: ABTest\n", *stable_only, """\
            stable: {version: v1}
            canary: {version: v3}
            analysis:
              interval: 1s
              iterations: 2
              match: [{headers: [{name: x-canary, value: "true"}]}]
        """))
        wait_served(kube, namespace, "llama-v3")
        wait_phase(kube, namespace, "llama", "Succeeded", timeout=60)
        assert status(kube, namespace, "llama")["stableVersion"] == "v3"
        wait_for(lambda: kube.get(k.AI_SERVICE_BACKEND, namespace, "llama-v1") is None, 60, "v1 retired")
    finally:
        changes = record.stop()
    violations, deleted = references_to_deleted_backends(changes)
    print(f"make-before-break: 1 abort, 1 ABTest promotion, {deleted} backends retired, {len(changes)} changes "
          f"watched, {len(violations)} route references to a deleted backend")
    assert deleted >= 4  # the AIServiceBackend and Backend of v2, then of v1
    assert violations == []


def stack_process(cluster: Cluster, component: str) -> int:
    """The pid of a controller this test session's local stack started (its binary sits in the session's
    workdir, so this finds that one process and no other)."""
    binary = str(cluster.workdir / component / "app")
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                if cmdline.read().split(b"\0")[0].decode(errors="replace") == binary:
                    return int(entry)
    raise AssertionError(f"no process runs {binary}")


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    """The process stopped (SIGSTOP) meanwhile: it sees and writes nothing, as a controller that lags."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_backend_outlives_its_route_reference_when_the_ai_gateway_lags(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    """Make before break with a lagging gateway controller: while Envoy AI Gateway's controller is frozen, the
    HTTPRoute it generated still sends to v1's Backend after the promotion took v1 out of the VirtualModel and the
    AIGatewayRoute. v1's AIServiceBackend and Backend stay until the HTTPRoute drops them and Envoy Gateway
    reported on it."""
    start_rollout(cluster, kube, namespace, "llama", """\
        analysis: {interval: 4s, stepWeights: [50]}
    """)
    wait_weights(kube, namespace, "llama", {"llama-v1": 50, "llama-v2": 50}, timeout=30)
    with frozen(stack_process(cluster, "ai-gateway-controller")):
        wait_weights(kube, namespace, "llama", {"llama-v2": 100}, timeout=30)
        wait_for(lambda: "llama-v1" not in route_backend_names(kube.get(k.AI_GATEWAY_ROUTE, namespace, "llama")
                                                               or {}), 30, "the AIGatewayRoute without v1")
        time.sleep(5)  # what the operator would have done by now
        http_route = kube.get(k.HTTP_ROUTE, namespace, "llama") or {}
        assert "llama-v1" in route_backend_names(http_route), "the frozen controller kept the old HTTPRoute"
        for rtype in (k.AI_SERVICE_BACKEND, k.BACKEND, k.MANAGED_AI_SERVICE_BACKEND):
            live = kube.get(rtype, namespace, "llama-v1")
            assert live is not None and not live["metadata"].get("deletionTimestamp"), f"{rtype.kind} llama-v1"
        assert status(kube, namespace, "llama")["phase"] == "Promoting"
    wait_for(lambda: kube.get(k.AI_SERVICE_BACKEND, namespace, "llama-v1") is None, 60, "v1 retired once served")
    wait_phase(kube, namespace, "llama", "Succeeded", timeout=30)


def test_a_status_ahead_of_the_children_applies_the_recorded_step_after_a_restart(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    """The crash of issue #12 item 1, made deterministic: the operator dies after recording step 2 (weight 50) and
    before the VirtualModel changed, with its Event not yet posted, and comes back after the interval. The next
    reconcile applies weight 50 (not 80), posts the Event once, and the check of weight 50 waits one interval
    after the VirtualModel carries it."""
    start_rollout(cluster, kube, namespace, "llama", """\
        analysis: {interval: 15s, stepWeights: [10, 50, 80]}
    """)
    wait_weights(kube, namespace, "llama", {"llama-v1": 90, "llama-v2": 10}, timeout=30)
    wait_for(lambda: status(kube, namespace, "llama").get("trafficSince"), 30, "step 1 live")
    operator.process.kill()
    operator.process.wait()
    try:
        long_ago = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 120))
        obj = kube.get(k.TRAFFIC_CONFIG, namespace, "llama") or {}
        event_name = "llama.recorded-step-2"
        ahead = {"status": {"canaryWeight": 50, "currentStep": 1, "lastStepTime": long_ago,
                            "trafficSince": long_ago, "iterations": 1,
                            "pendingEvents": [{"name": event_name, "type": "Normal", "reason": "StepAdvanced",
                                               "message": "v2 at weight 50 (step 2 of 3)",
                                               "time": long_ago.replace("Z", ".000000Z"), "count": 1}]}}
        cluster.kubectl("patch", "trafficconfig", "llama", "-n", namespace, "--subresource=status", "--type=merge",
                        "-p", json.dumps(ahead))
        assert obj and weights(kube, namespace, "llama") == {"llama-v1": 90, "llama-v2": 10}
    finally:
        restarted = start_operator(cluster, operator.log_path, **{"MTO_METRICS_PORT": str(operator.metrics_port)})
        operator.process = restarted.process
    seen: list[tuple[float, dict[str, int]]] = []

    def at_weight(expected: dict[str, int]) -> bool:
        current = weights(kube, namespace, "llama")
        if not seen or seen[-1][1] != current:
            seen.append((time.monotonic(), current))
        return current == expected

    wait_for(lambda: at_weight({"llama-v1": 50, "llama-v2": 50}), 60, "the recorded step applied")
    wait_for(lambda: at_weight({"llama-v1": 20, "llama-v2": 80}), 60, "the next step, an interval later")
    history = [w for _, w in seen]
    assert {"llama-v1": 50, "llama-v2": 50} in history, history
    assert history.index({"llama-v1": 50, "llama-v2": 50}) < history.index({"llama-v1": 20, "llama-v2": 80})
    at_50 = next(t for t, w in seen if w == {"llama-v1": 50, "llama-v2": 50})
    at_80 = next(t for t, w in seen if w == {"llama-v1": 20, "llama-v2": 80})
    assert at_80 - at_50 >= 13, f"weight 50 held {at_80 - at_50:.1f}s, less than its interval (15s)"
    posted = [e for e in get_json(cluster, "events", "-n", namespace)["items"]
              if e["metadata"]["name"] == event_name]
    assert len(posted) == 1 and posted[0]["reason"] == "StepAdvanced" and posted[0].get("eventTime")
    assert "pendingEvents" not in status(kube, namespace, "llama")
    advanced = [m for r, m in events(cluster, namespace, "llama") if r == "StepAdvanced"]
    assert sum("weight 50" in m for m in advanced) == 1 and sum("weight 80" in m for m in advanced) == 1


def test_a_backend_left_by_a_crash_inside_a_retirement_is_found_and_retired(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    """Issue #12 item 3: a kill between deleting a version's InferenceService and its backend. The version is in
    neither the status nor an InferenceService; the backend the TrafficConfig owns is found again and retired."""
    start_rollout(cluster, kube, namespace, "llama", """\
        analysis: {interval: 1h, stepWeights: [10]}
    """)
    wait_weights(kube, namespace, "llama", {"llama-v1": 90, "llama-v2": 10}, timeout=30)
    stop_operator(operator)
    try:
        apply(cluster, namespace, traffic_config("llama", f"""\
            gatewayRefs: [{{name: ai-gateway, namespace: {namespace}}}]
        """, TEMPLATE, """\
            stable: {version: v1}
        """))
        cluster.kubectl("delete", "inferenceservice", "llama-v2", "-n", namespace, "--wait=true")
        recorded = status(kube, namespace, "llama")
        forgotten = {"status": {"phase": "Succeeded", "candidateVersion": None, "canaryWeight": None,
                                "currentStep": None, "trafficSince": None,
                                "versions": [v for v in recorded["versions"] if v["version"] == "v1"]}}
        cluster.kubectl("patch", "trafficconfig", "llama", "-n", namespace, "--subresource=status", "--type=merge",
                        "-p", json.dumps(forgotten))
        assert kube.get(k.MANAGED_AI_SERVICE_BACKEND, namespace, "llama-v2") is not None
    finally:
        restarted = start_operator(cluster, operator.log_path, **{"MTO_METRICS_PORT": str(operator.metrics_port)})
        operator.process = restarted.process
    wait_weights(kube, namespace, "llama", {"llama-v1": 100})
    wait_for(lambda: kube.get(k.MANAGED_AI_SERVICE_BACKEND, namespace, "llama-v2") is None, 60,
             "the orphaned backend retired")
    cluster.kubectl("wait", "--for=condition=Ready", "trafficconfig/llama", "-n", namespace, "--timeout=60s")
    retired = [m for r, m in events(cluster, namespace, "llama") if r == "Retired"]
    assert any("ManagedAIServiceBackend llama-v2" in m for m in retired), retired


def test_never_ready_while_its_virtual_model_is_refused(cluster: Cluster, kube: Kube, operator: Operator,
                                                        namespace: str) -> None:
    """Issue #12 item 7: a TrafficConfig whose VirtualModel is refused (another one claims its model name on the
    same Gateway) is not Ready, and says why in the VirtualModel's words."""
    apply(cluster, namespace, our_yaml("VirtualModel", "first", textwrap.dedent(f"""\
        modelName: shared-model
        gatewayRefs: [{{name: ai-gateway, namespace: {namespace}}}]
        backends: [{{name: nothing-here}}]
    """)))
    time.sleep(2)  # the older claim wins
    apply(cluster, namespace, traffic_config("llama", f"""\
        modelName: shared-model
        gatewayRefs: [{{name: ai-gateway, namespace: {namespace}}}]
    """, TEMPLATE, """\
        stable: {version: v1}
    """))
    wait_served(kube, namespace, "llama-v1")

    def refused() -> dict[str, Any] | None:
        obj = kube.get(k.TRAFFIC_CONFIG, namespace, "llama")
        ready = condition(obj, "Ready")
        return obj if ready.get("reason") == "ChildNotReady" and obj and \
            (obj.get("status") or {}).get("phase") == "Succeeded" else None

    obj = wait_for(refused, 60, "TrafficConfig not Ready because of its VirtualModel")
    assert condition(obj, "Ready")["status"] == "False"
    assert "VirtualModel llama" in condition(obj, "Ready")["message"]
    assert "ModelNameConflict" in condition(obj, "Ready")["message"]
    cluster.kubectl("delete", "virtualmodel", "first", "-n", namespace)
    cluster.kubectl("wait", "--for=condition=Ready", "trafficconfig/llama", "-n", namespace, "--timeout=60s")
