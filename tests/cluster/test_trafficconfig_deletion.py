"""Deleting a TrafficConfig (spec.deletionPolicy), end to end on the local stack: the real API server and its
garbage collector, KServe's controller, Envoy AI Gateway and Envoy Gateway, the operator as the chart's
ServiceAccount. With Retain (the default) the model keeps serving its stable version, make-before-break; with
Delete everything goes; a crash in the middle resumes; a TrafficConfig created again adopts what was kept."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from model_traffic import kube as k
from model_traffic.kinds.trafficconfig import deletion
from model_traffic.kinds.trafficconfig import reconcile as tc_reconcile
from model_traffic.kube import Kube
from tests.cluster.test_trafficconfig import (
    TEMPLATE,
    WatchRecord,
    apply,
    events,
    is_ready,
    references_to_deleted_backends,
    route_backend_names,
    start_rollout,
    traffic_config,
    wait_phase,
    wait_served,
    wait_weights,
    weights,
)
from tests.conftest import Cluster, Operator, start_operator, stop_operator, wait_for

pytestmark = pytest.mark.cluster

NOTE = deletion.ANNOTATION_ORPHANED_FROM


def owner_uids(obj: dict[str, Any] | None) -> set[str]:
    return {str(ref.get("uid")) for ref in ((obj or {}).get("metadata") or {}).get("ownerReferences") or []}


def notes_of(obj: dict[str, Any] | None) -> dict[str, str]:
    return dict(((obj or {}).get("metadata") or {}).get("annotations") or {})


def finalizers(kube: Kube, namespace: str, name: str) -> list[str]:
    return list(((kube.get(k.TRAFFIC_CONFIG, namespace, name) or {}).get("metadata") or {}).get("finalizers") or [])


def gone(kube: Kube, rtype: k.ResourceType, namespace: str, name: str) -> bool:
    return kube.get(rtype, namespace, name) is None


def gone_check(kube: Kube, rtype: k.ResourceType, namespace: str, name: str) -> Callable[[], bool]:
    return lambda: gone(kube, rtype, namespace, name)


def ready_check(kube: Kube, rtype: k.ResourceType, namespace: str, name: str) -> Callable[[], bool]:
    return lambda: is_ready(kube.get(rtype, namespace, name))


def owned_check(kube: Kube, rtype: k.ResourceType, namespace: str, name: str,
                uid: str) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        obj = kube.get(rtype, namespace, name)
        return obj if obj and uid in owner_uids(obj) else None
    return check


def mid_rollout(cluster: Cluster, kube: Kube, namespace: str, *extra: str) -> str:
    """llama: stable v1 at 90, candidate v2 at 10 (held there: the next check is an hour away); its uid."""
    start_rollout(cluster, kube, namespace, "llama", "analysis: {interval: 1h, stepWeights: [10]}\n" + "".join(extra))
    wait_weights(kube, namespace, "llama", {"llama-v1": 90, "llama-v2": 10}, timeout=60)
    wait_for(lambda: deletion.FINALIZER in finalizers(kube, namespace, "llama"), 30, "the retain finalizer")
    return str((kube.get(k.TRAFFIC_CONFIG, namespace, "llama") or {})["metadata"]["uid"])


def assert_kept_serving_v1(cluster: Cluster, kube: Kube, namespace: str, uid: str) -> None:
    """The TrafficConfig is gone; v1 serves all traffic through objects no longer owned by it and annotated as
    kept; v2's objects are deleted, none of them orphaned."""
    wait_for(lambda: gone(kube, k.TRAFFIC_CONFIG, namespace, "llama"), 90, "the TrafficConfig gone")
    for rtype, name in ((k.VIRTUAL_MODEL, "llama"), (k.MANAGED_AI_SERVICE_BACKEND, "llama-v1"),
                        (k.INFERENCE_SERVICE, "llama-v1")):
        obj = kube.get(rtype, namespace, name)
        assert obj is not None, f"{rtype.kind} {name} was not kept"
        assert uid not in owner_uids(obj), f"{rtype.kind} {name} still names the deleted TrafficConfig"
        note = notes_of(obj)
        assert note.get(NOTE) == "TrafficConfig/llama" and note.get(deletion.ANNOTATION_ORPHANED_AT), note
        assert "deletionPolicy Retain" in note.get(deletion.ANNOTATION_ORPHANED_REASON, "")
    assert weights(kube, namespace, "llama") == {"llama-v1": 100}
    # Still Ready, reported by their own controllers: KServe, this operator's backend and VirtualModel reconciles.
    wait_served(kube, namespace, "llama-v1")
    for rtype, name in ((k.MANAGED_AI_SERVICE_BACKEND, "llama-v1"), (k.VIRTUAL_MODEL, "llama")):
        wait_for(ready_check(kube, rtype, namespace, name), 60, f"{rtype.kind} {name} Ready after the deletion")
    route = wait_for(lambda: kube.get(k.AI_GATEWAY_ROUTE, namespace, "llama"), 30, "the AIGatewayRoute")
    assert route_backend_names(route) == {"llama-v1"}
    for rtype in (k.MANAGED_AI_SERVICE_BACKEND, k.INFERENCE_SERVICE, k.AI_SERVICE_BACKEND):
        wait_for(gone_check(kube, rtype, namespace, "llama-v2"), 90, f"{rtype.kind} llama-v2 deleted")
    retained = [m for r, m in events(cluster, namespace, "llama") if r == "Retained"]
    assert len(retained) == 1 and "keeps serving version v1" in retained[0], retained
    assert [r for r, _ in events(cluster, namespace, "llama") if r == "NotRetained"] == []


def test_deleting_mid_rollout_keeps_the_stable_serving_and_a_new_traffic_config_adopts_it(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    uid = mid_rollout(cluster, kube, namespace)
    isvc_uid = (kube.get(k.INFERENCE_SERVICE, namespace, "llama-v1") or {})["metadata"]["uid"]
    record = WatchRecord(cluster, namespace, "aigatewayroutes", "httproutes", "aiservicebackends",
                         "backends.gateway.envoyproxy.io", "virtualmodels")
    try:
        cluster.kubectl("delete", "trafficconfig", "llama", "-n", namespace, "--wait=false")
        assert_kept_serving_v1(cluster, kube, namespace, uid)
    finally:
        changes = record.stop()
    # Make-before-break: v2 left the route before its backend went, and v1 never left the VirtualModel.
    violations, deleted = references_to_deleted_backends(changes)
    assert deleted >= 2 and violations == [], violations
    models = [obj for _, _, obj in changes if obj.get("kind") == "VirtualModel"]
    assert models and all("llama-v1" in {b["name"] for b in obj["spec"]["backends"]} for obj in models)

    # Created again (as Git now holds it: the release) with the same version: it adopts them; nothing is
    # re-created or restarted.
    apply(cluster, namespace, traffic_config("llama", f"""\
        gatewayRefs: [{{name: ai-gateway, namespace: {namespace}}}]
    """, TEMPLATE, "release: {version: v1}\n"))
    new_uid = str(wait_for(lambda: (kube.get(k.TRAFFIC_CONFIG, namespace, "llama") or {}).get("metadata", {})
                           .get("uid"), 30, "the new TrafficConfig"))
    for rtype, name in ((k.VIRTUAL_MODEL, "llama"), (k.MANAGED_AI_SERVICE_BACKEND, "llama-v1"),
                        (k.INFERENCE_SERVICE, "llama-v1")):
        obj = wait_for(owned_check(kube, rtype, namespace, name, new_uid), 30, f"{rtype.kind} {name} adopted")
        assert not {a for a in notes_of(obj) if a.startswith("modeltraffic.io/orphaned")}, notes_of(obj)
    # Server-side apply took the adopted VirtualModel over: the operator's Apply entry owns the new owner reference.
    vm = kube.get(k.VIRTUAL_MODEL, namespace, "llama") or {}

    def applied_owner_reference() -> bool:
        live = kube.get(k.VIRTUAL_MODEL, namespace, "llama") or {}
        return any(entry.get("manager") == k.FIELD_MANAGER and entry.get("operation") == "Apply"
                   and f'k:{{"uid":"{new_uid}"}}' in str(((entry.get("fieldsV1") or {}).get("f:metadata") or {})
                                                        .get("f:ownerReferences") or {})
                   for entry in live["metadata"].get("managedFields") or [])

    wait_for(applied_owner_reference, 30, f"the operator's server-side apply owning the owner reference {new_uid}")
    assert vm["spec"]["backends"][0]["name"] == "llama-v1"
    done = wait_phase(kube, namespace, "llama", "Succeeded", timeout=60)
    assert done["stableVersion"] == "v1"
    assert (kube.get(k.INFERENCE_SERVICE, namespace, "llama-v1") or {})["metadata"]["uid"] == isvc_uid
    cluster.kubectl("wait", "--for=condition=Ready", "trafficconfig/llama", "-n", namespace, "--timeout=60s")
    assert [r for r, _ in events(cluster, namespace, "llama")].count("Adopted") == 1


def test_delete_policy_takes_everything_and_switching_to_it_drops_the_finalizer(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    mid_rollout(cluster, kube, namespace)
    apply(cluster, namespace, traffic_config("llama", f"""\
        gatewayRefs: [{{name: ai-gateway, namespace: {namespace}}}]
        deletionPolicy: Delete
    """, TEMPLATE, """\
        stable: {version: v1}
        canary: {version: v2}
        analysis: {interval: 1h, stepWeights: [10]}
    """))
    wait_for(lambda: deletion.FINALIZER not in finalizers(kube, namespace, "llama"), 30, "the finalizer removed")
    cluster.kubectl("delete", "trafficconfig", "llama", "-n", namespace, "--wait=false")
    for rtype, name in ((k.TRAFFIC_CONFIG, "llama"), (k.VIRTUAL_MODEL, "llama"),
                        (k.MANAGED_AI_SERVICE_BACKEND, "llama-v1"), (k.MANAGED_AI_SERVICE_BACKEND, "llama-v2"),
                        (k.INFERENCE_SERVICE, "llama-v1"), (k.INFERENCE_SERVICE, "llama-v2")):
        wait_for(gone_check(kube, rtype, namespace, name), 90, f"{rtype.kind} {name} gone")


def test_a_crash_between_orphaning_steps_resumes_where_it_stopped(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    """The operator's first life is played by this test with the operator's own functions (so the crash point is
    exact): it routes all traffic to v1, orphans the InferenceService, and dies before the backend, the
    VirtualModel, the Event and the finalizer. The restarted operator finishes, without writing the
    InferenceService's note again."""
    uid = mid_rollout(cluster, kube, namespace)
    stop_operator(operator)
    try:
        cluster.kubectl("delete", "trafficconfig", "llama", "-n", namespace, "--wait=false")
        def deleting() -> dict[str, Any] | None:
            obj = kube.get(k.TRAFFIC_CONFIG, namespace, "llama")
            return obj if obj and obj["metadata"].get("deletionTimestamp") else None

        body = wait_for(deleting, 30, "the TrafficConfig being deleted")
        first = tc_reconcile.finalize(kube, body)  # step 1: the stable-only VirtualModel
        assert first is not None and first.verdict.reason == "RoutingToStable"
        assert weights(kube, namespace, "llama") == {"llama-v1": 100}
        deletion.orphan(kube, body, deletion.Piece(k.INFERENCE_SERVICE, "llama-v1", "ours"), "v1", "llama")
        orphaned = kube.get(k.INFERENCE_SERVICE, namespace, "llama-v1") or {}
        assert uid not in owner_uids(orphaned) and notes_of(orphaned)[NOTE] == "TrafficConfig/llama"
        # Dated well before the crash: a resumed run that wrote the note again would change it.
        stamp = "2000-01-01T00:00:00Z"
        cluster.kubectl("annotate", "--overwrite", "inferenceservice", "llama-v1", "-n", namespace,
                        f"{deletion.ANNOTATION_ORPHANED_AT}={stamp}")
        # What the crash left: the TrafficConfig held by its finalizer, the backend and VirtualModel still its own.
        assert deletion.FINALIZER in finalizers(kube, namespace, "llama")
        assert uid in owner_uids(kube.get(k.MANAGED_AI_SERVICE_BACKEND, namespace, "llama-v1"))
        assert uid in owner_uids(kube.get(k.VIRTUAL_MODEL, namespace, "llama"))
    finally:
        restarted = start_operator(cluster, operator.log_path, **{"MTO_METRICS_PORT": str(operator.metrics_port)})
        operator.process = restarted.process
    assert_kept_serving_v1(cluster, kube, namespace, uid)
    assert notes_of(kube.get(k.INFERENCE_SERVICE, namespace, "llama-v1"))[deletion.ANNOTATION_ORPHANED_AT] == stamp


def test_a_kill_right_after_the_delete_resumes_too(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    """A real SIGKILL, wherever it lands in the deletion (most often while the gateway takes the stable-only
    route): the restarted operator decides again from the cluster and ends where an uninterrupted deletion ends."""
    uid = mid_rollout(cluster, kube, namespace)
    cluster.kubectl("delete", "trafficconfig", "llama", "-n", namespace, "--wait=false")
    wait_for(lambda: weights(kube, namespace, "llama") == {"llama-v1": 100}, 30, "all traffic on v1")
    operator.process.kill()
    operator.process.wait()
    restarted = start_operator(cluster, operator.log_path, **{"MTO_METRICS_PORT": str(operator.metrics_port)})
    operator.process = restarted.process
    assert_kept_serving_v1(cluster, kube, namespace, uid)


def test_a_new_traffic_config_naming_another_release_rolls_out_from_the_adopted_stable(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    """Adopted with no stable of its own, the new TrafficConfig takes the kept version as its stable
    (status.stable, as it runs): its release v3 is a candidate rolled out from v1, and v1 serves until then."""
    apply(cluster, namespace, traffic_config("llama", f"""\
        gatewayRefs: [{{name: ai-gateway, namespace: {namespace}}}]
    """, TEMPLATE, 'release: {version: v1, storageUri: "hf://org/llama:rev1"}\n'))
    wait_served(kube, namespace, "llama-v1")
    wait_phase(kube, namespace, "llama", "Succeeded")
    wait_for(lambda: deletion.FINALIZER in finalizers(kube, namespace, "llama"), 30, "the retain finalizer")
    cluster.kubectl("delete", "trafficconfig", "llama", "-n", namespace, "--wait=false")
    wait_for(lambda: gone(kube, k.TRAFFIC_CONFIG, namespace, "llama"), 90, "the TrafficConfig gone")
    assert weights(kube, namespace, "llama") == {"llama-v1": 100}

    apply(cluster, namespace, traffic_config("llama", f"""\
        gatewayRefs: [{{name: ai-gateway, namespace: {namespace}}}]
        analysis: {{interval: 2s, stepWeights: [50]}}
    """, TEMPLATE, 'release: {version: v3, storageUri: "hf://org/llama:rev3"}\n'))
    recorded = wait_for(lambda: (kube.get(k.TRAFFIC_CONFIG, namespace, "llama") or {}).get("status", {})
                        .get("stable"), 30, "the adopted stable recorded")
    assert recorded == {"version": "v1", "storageUri": "hf://org/llama:rev1"}
    isvc = kube.get(k.INFERENCE_SERVICE, namespace, "llama-v1") or {}
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "hf://org/llama:rev1"  # not re-rendered from v3
    wait_served(kube, namespace, "llama-v3")
    wait_weights(kube, namespace, "llama", {"llama-v1": 50, "llama-v3": 50}, timeout=60)
    done = wait_phase(kube, namespace, "llama", "Succeeded", timeout=90)
    assert done["stableVersion"] == "v3"
    wait_weights(kube, namespace, "llama", {"llama-v3": 100})
    wait_for(gone_check(kube, k.INFERENCE_SERVICE, namespace, "llama-v1"), 60, "the adopted v1 retired")


def test_a_foreground_deletion_cannot_keep_anything_and_says_so(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    """propagationPolicy Foreground (Argo CD's default prune): the garbage collector deletes the children before
    the TrafficConfig, whatever its finalizer does (docs/gitops.md tells Argo CD users to prune in background).
    The deletion still ends, and a NotRetained Warning says why nothing was kept."""
    mid_rollout(cluster, kube, namespace)
    cluster.kubectl("delete", "trafficconfig", "llama", "-n", namespace, "--cascade=foreground", "--wait=false")
    for rtype, name in ((k.TRAFFIC_CONFIG, "llama"), (k.VIRTUAL_MODEL, "llama"),
                        (k.MANAGED_AI_SERVICE_BACKEND, "llama-v1"), (k.INFERENCE_SERVICE, "llama-v1"),
                        (k.MANAGED_AI_SERVICE_BACKEND, "llama-v2"), (k.INFERENCE_SERVICE, "llama-v2")):
        wait_for(gone_check(kube, rtype, namespace, name), 90, f"{rtype.kind} {name} gone")
    warnings = [m for r, m in events(cluster, namespace, "llama") if r == "NotRetained"]
    assert len(warnings) == 1 and "propagationPolicy Foreground" in warnings[0], warnings
    assert [r for r, _ in events(cluster, namespace, "llama") if r == "Retained"] == []
