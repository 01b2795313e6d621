"""The operator process itself: leader election, restart, metrics."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from model_traffic import kube as kube_types
from model_traffic.app import CHILD_TYPES
from model_traffic.kube import Kube, ResourceType
from model_traffic.pipeline import apply as apply_layer
from tests.cluster.test_backend import backend_yaml, wait_ready
from tests.conftest import ROOT, Cluster, Operator, our_yaml, start_operator, stop_operator, wait_for

pytestmark = pytest.mark.cluster

PLAIN = """\
    schema: {name: OpenAI}
    endpoint: {ip: {address: 10.0.0.9, port: 8000}}
"""


def lease_holder(kube: Kube, namespace: str) -> str | None:
    try:
        lease = kubernetes.client.CoordinationV1Api(kube.api_client).read_namespaced_lease(
            "model-traffic-operator", namespace)
    except ApiException:
        return None
    return str(lease.spec.holder_identity) if lease.spec and lease.spec.holder_identity else None


def test_only_the_leader_reconciles_and_a_standby_takes_over(
    cluster: Cluster, kube: Kube, namespace: str, tmp_path: Path, operator: Operator
) -> None:
    # The session operator watches every namespace; stop it for this test so the leaders are alone.
    stop_operator(operator)
    try:
        env = {"MTO_LEADER_ELECT": "true", "MTO_LEADER_ELECTION_NAMESPACE": namespace}
        leader = start_operator(cluster, tmp_path / "leader.log", **env)
        holder = wait_for(lambda: lease_holder(kube, namespace), 20, "a lease holder")
        standby_log = (tmp_path / "standby.log").open("wb")
        standby = subprocess.Popen(
            [sys.executable, "-m", "model_traffic", "run", "--liveness-port", "0"],
            env={**leader.env, "MTO_METRICS_PORT": "0"}, cwd=ROOT, stdout=standby_log, stderr=subprocess.STDOUT,
        )
        try:
            cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=backend_yaml("one", PLAIN))
            wait_ready(kube, namespace, "one")
            assert lease_holder(kube, namespace) == holder
            wait_for(lambda: "waiting for leadership" in (tmp_path / "standby.log").read_text(), 30,
                     "the standby to wait for the lease")
            assert "became leader" not in (tmp_path / "standby.log").read_text()

            leader.process.send_signal(signal.SIGKILL)
            leader.process.wait()
            wait_for(lambda: lease_holder(kube, namespace) not in (None, holder), 40, "the standby to take over")
            cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=backend_yaml("two", PLAIN))
            wait_ready(kube, namespace, "two", timeout=40)
            assert "became leader" in (tmp_path / "standby.log").read_text()
        finally:
            for process in (leader.process, standby):
                if process.poll() is None:
                    process.kill()
                    process.wait()
    finally:
        restarted = start_operator(cluster, operator.log_path, **{"MTO_METRICS_PORT": str(operator.metrics_port)})
        operator.process = restarted.process


def test_a_restarted_operator_resumes_from_status(
    cluster: Cluster, kube: Kube, namespace: str, operator: Operator
) -> None:
    stop_operator(operator)
    try:
        # Created while no operator runs: picked up from the initial listing after the restart.
        cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=backend_yaml("offline", PLAIN))
    finally:
        restarted = start_operator(cluster, operator.log_path, **{"MTO_METRICS_PORT": str(operator.metrics_port)})
        operator.process = restarted.process
    wait_ready(kube, namespace, "offline")


def test_metrics_endpoint_reports_reconciles(cluster: Cluster, kube: Kube, namespace: str, operator: Operator) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=backend_yaml("m", textwrap.dedent(PLAIN)))
    wait_ready(kube, namespace, "m")
    text = operator.metrics()
    assert 'model_traffic_reconcile_total{kind="ManagedAIServiceBackend"' in text
    assert "model_traffic_reconcile_duration_seconds_bucket" in text
    assert f'model_traffic_object_ready{{kind="ManagedAIServiceBackend",name="m",namespace="{namespace}"}} 1.0' in text


# --- a settled object reconciled again writes nothing ---------------------------------------------------------

def _children(kube: Kube, namespace: str, kind: str, name: str) -> dict[str, dict[str, Any]]:
    """Our children of an object, by "Kind/name"."""
    found: dict[str, dict[str, Any]] = {}
    selector = f"{apply_layer.LABEL_OWNER_KIND}={kind},{apply_layer.LABEL_OWNER_NAME}={name}"
    for rtype in CHILD_TYPES:
        for obj in kube.list_objects(rtype, namespace, selector):
            found[f"{rtype.kind}/{obj['metadata']['name']}"] = obj
    return found


def _events_about(kube: Kube, namespace: str, name: str) -> int:
    return len(kube.core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items)


def _versions(kube: Kube, rtype: ResourceType, namespace: str, name: str) -> dict[str, str]:
    """resourceVersion of the object and of each of its children."""
    owner = kube.get(rtype, namespace, name)
    assert owner is not None
    versions = {"self": str(owner["metadata"]["resourceVersion"])}
    versions.update({key: str(child["metadata"]["resourceVersion"])
                     for key, child in _children(kube, namespace, rtype.kind, name).items()})
    return versions


def assert_reconcile_writes_nothing(kube: Kube, operator: Operator, rtype: ResourceType, namespace: str, name: str,
                                    poke: str) -> None:
    """Once the object and its children stopped changing, a reconcile of it (triggered by a no-op annotation on
    its child ``poke``, "Kind/name") changes no resourceVersion of it or its other children and posts no Event."""
    def settled() -> dict[str, str] | None:
        first = _versions(kube, rtype, namespace, name)
        time.sleep(3)
        return first if _versions(kube, rtype, namespace, name) == first else None

    before = wait_for(settled, 60, f"{rtype.kind} {name} and its children to stop changing")
    assert poke in before, f"{poke} is not a child: {sorted(before)}"
    events = _events_about(kube, namespace, name)
    unchanged = operator.counter("model_traffic_reconcile_total", kind=rtype.kind, result="unchanged")
    child_kind, child_name = poke.split("/")
    child_type = next(t for t in CHILD_TYPES if t.kind == child_kind)
    kube.custom.patch_namespaced_custom_object(
        child_type.group, child_type.version, namespace, child_type.plural, child_name,
        {"metadata": {"annotations": {"test.modeltraffic.io/poke": str(time.time())}}},
        _content_type="application/merge-patch+json")
    wait_for(lambda: operator.counter("model_traffic_reconcile_total", kind=rtype.kind, result="unchanged")
             > unchanged, 30, f"a reconcile of {rtype.kind} {name} after the child event")
    time.sleep(2)  # anything it would write would be written by now
    after = _versions(kube, rtype, namespace, name)
    del before[poke], after[poke]
    assert after == before
    # The resourceVersions say that neither it nor a child was written (a status write would show on "self");
    # the operator's reconcile counters are per kind, and other tests' objects of the kind are reconciled meanwhile.
    assert _events_about(kube, namespace, name) == events


def test_a_settled_backend_reconciled_again_writes_nothing(
        cluster: Cluster, kube: Kube, namespace: str, operator: Operator) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=backend_yaml("quiet", PLAIN))
    wait_ready(kube, namespace, "quiet")
    assert_reconcile_writes_nothing(kube, operator, kube_types.MANAGED_AI_SERVICE_BACKEND, namespace, "quiet",
                                    poke="Backend/quiet")


def test_a_settled_virtual_model_reconciled_again_writes_nothing(
        cluster: Cluster, kube: Kube, namespace: str, operator: Operator) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=backend_yaml("quiet-backend", PLAIN))
    wait_ready(kube, namespace, "quiet-backend")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=our_yaml("VirtualModel", "quiet", """\
        gatewayRefs: [{name: ai-gateway}]
        backends: [{name: quiet-backend}]
        rateLimit: {tenantHeader: x-tenant-id, tokens: {limit: 1000, unit: Hour}}
    """))
    assert_reconcile_writes_nothing(kube, operator, kube_types.VIRTUAL_MODEL, namespace, "quiet",
                                    poke="AIGatewayRoute/quiet")


def test_a_settled_traffic_config_reconciled_again_writes_nothing(
        cluster: Cluster, kube: Kube, namespace: str, operator: Operator) -> None:
    """Its status.children is declared in the CRD: before, the API server pruned it, so every reconcile found
    the status changed and wrote it again."""
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=our_yaml("TrafficConfig", "quiet", """\
        inferenceService:
          template:
            predictor:
              model:
                modelFormat: {name: huggingface}
        stable: {version: v1}
    """))
    wait_for(lambda: kube.get(kube_types.VIRTUAL_MODEL, namespace, "quiet"), 60, "the TrafficConfig's VirtualModel")
    status = wait_for(lambda: (kube.get(kube_types.TRAFFIC_CONFIG, namespace, "quiet") or {}).get("status"), 60,
                      "the TrafficConfig's status")
    assert_reconcile_writes_nothing(kube, operator, kube_types.TRAFFIC_CONFIG, namespace, "quiet",
                                    poke="VirtualModel/quiet")
    written = (kube.get(kube_types.TRAFFIC_CONFIG, namespace, "quiet") or {}).get("status") or {}
    assert {c["kind"] for c in written.get("children") or []} >= {"VirtualModel"}, status


def test_a_route_of_someone_elses_with_our_models_name_is_left_alone_and_reported(
        cluster: Cluster, kube: Kube, namespace: str, operator: Operator) -> None:
    """AIGatewayRoutes are cached whole only when ours; of the others the watch keeps the names, so the operator
    creates its route without a GET first yet never writes over one it does not own (that one is read and
    reported). Fails if a miss of the cache were taken for absence while the name is held."""
    from tests.cluster.test_virtualmodel import wait_vm

    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=textwrap.dedent("""\
        apiVersion: aigateway.envoyproxy.io/v1beta1
        kind: AIGatewayRoute
        metadata: {name: held}
        spec:
          parentRefs: [{name: ai-gateway, kind: Gateway, group: gateway.networking.k8s.io}]
          rules: [{backendRefs: [{name: someone-elses}]}]
    """))
    before = kube.get(kube_types.AI_GATEWAY_ROUTE, namespace, "held")
    assert before is not None
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=backend_yaml("held-backend", PLAIN))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=our_yaml("VirtualModel", "held", """\
        gatewayRefs: [{name: ai-gateway}]
        backends: [{name: held-backend}]
    """))
    obj = wait_vm(kube, namespace, "held", "False", "OwnershipConflict")
    assert "AIGatewayRoute held exists and is not owned by this object" in str(obj["status"]["conditions"])
    after = kube.get(kube_types.AI_GATEWAY_ROUTE, namespace, "held")
    # Its status moves (Envoy AI Gateway reports on it), its spec and metadata are as they were, and we never wrote.
    assert after is not None and after["spec"] == before["spec"]
    assert after["metadata"].get("labels") == before["metadata"].get("labels")
    assert kube_types.FIELD_MANAGER not in {e["manager"] for e in after["metadata"].get("managedFields") or []}

    # Once the other party removes theirs, ours is created (its deletion reaches the owner through the watch).
    cluster.kubectl("delete", "aigatewayroutes.aigateway.envoyproxy.io", "held", "-n", namespace)
    def ours() -> dict[str, Any] | None:
        route = kube.get(kube_types.AI_GATEWAY_ROUTE, namespace, "held")
        return route if route is not None and apply_layer.owner_of(route) == ("VirtualModel", "held") else None

    route = wait_for(ours, 60, "our AIGatewayRoute created")
    assert "someone-elses" not in str(route["spec"]["rules"])
