"""The deletion policy's decision (kinds/trafficconfig/deletion.py): pure, from a world read off the cluster. What
it does against the real API server, the gateway and the garbage collector:
tests/cluster/test_trafficconfig_deletion.py."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from model_traffic import kube
from model_traffic.kinds.trafficconfig.deletion import (
    ANNOTATION_ORPHANED_FROM,
    DeletionWorld,
    Piece,
    Standing,
    decide,
    is_orphan_of,
    running_version,
    stable_only_virtual_model,
    stable_version,
    standing_of,
)
from model_traffic.pipeline import apply

OWNER = apply.Owner("modeltraffic.io/v1alpha1", "TrafficConfig", "llm", "llama", "uid-1")


def pieces(isvc: Standing = "ours", backend: Standing = "ours", vm: Standing = "ours") -> tuple[Piece, ...]:
    return (Piece(kube.INFERENCE_SERVICE, "llama-v1", isvc),
            Piece(kube.MANAGED_AI_SERVICE_BACKEND, "llama-v1", backend), Piece(kube.VIRTUAL_MODEL, "llama", vm))


def mid_rollout(**changes: Any) -> DeletionWorld:
    """v1 stable and Ready at 90, v2 the candidate at 10, both on the route."""
    keep = pieces()
    world = DeletionWorld(
        name="llama", model="llama-3", policy="Retain", stable="v1", virtual_model=keep[2], keep=keep,
        stable_ready=True, vm_backends=frozenset({("llama-v1", False), ("llama-v2", False)}), vm_current=True,
        others_serving=("v2",), other_versions=frozenset({"v2"}),
        route_references=frozenset({"llama-v1", "llama-v2"}), route_settled=True)
    return dataclasses.replace(world, **changes)


def routed_to_stable(**changes: Any) -> DeletionWorld:
    routed: dict[str, Any] = {"vm_backends": frozenset({("llama-v1", False)}),
                              "route_references": frozenset({"llama-v1"})}
    return mid_rollout(**{**routed, **changes})


def test_first_all_traffic_goes_to_the_stable_version() -> None:
    decision = decide(mid_rollout())
    assert decision.route and not decision.release and not decision.orphan
    assert decision.verdict is not None and decision.verdict.reason == "RoutingToStable"


def test_a_header_matched_candidate_is_traffic_too() -> None:
    decision = decide(mid_rollout(vm_backends=frozenset({("llama-v1", False), ("llama-v2", True)})))
    assert decision.route


def test_a_stable_that_is_not_ready_is_waited_for_while_another_version_serves() -> None:
    decision = decide(mid_rollout(stable_ready=False, stable_why="BackendNotReady: no endpoints"))
    assert not decision.route and not decision.release
    assert decision.verdict is not None and decision.verdict.reason == "StableNotReady"
    assert "v2 serves" in decision.verdict.message and "deletionPolicy: Delete" in decision.verdict.message


def test_when_nothing_serves_there_is_no_traffic_to_break() -> None:
    assert decide(mid_rollout(stable_ready=False, others_serving=())).route


@pytest.mark.parametrize("world, waiting_for", [
    (routed_to_stable(vm_current=False), "controller"),
    (routed_to_stable(route_references=frozenset({"llama-v1", "llama-v2"})), "drop llama-v2"),
    (routed_to_stable(route_settled=False), "Envoy Gateway"),
])
def test_nothing_is_orphaned_before_the_gateway_routes_to_the_stable_alone(world: DeletionWorld,
                                                                            waiting_for: str) -> None:
    decision = decide(world)
    assert not decision.route and not decision.release and not decision.orphan
    assert decision.verdict is not None and waiting_for in decision.verdict.message


def test_then_the_stables_objects_are_orphaned_and_the_finalizer_released() -> None:
    decision = decide(routed_to_stable())
    assert decision.release
    assert [p.describe() for p in decision.orphan] == [
        "InferenceService llama-v1", "ManagedAIServiceBackend llama-v1", "VirtualModel llama"]
    [notice] = decision.notices
    assert (notice.type, notice.reason) == ("Normal", "Retained")
    assert "keeps serving version v1" in notice.message


def test_a_resumed_deletion_orphans_only_what_is_still_owned() -> None:
    """A crash after the InferenceService was orphaned: the rest is orphaned, the first is not written again."""
    keep = pieces(isvc="orphaned")
    decision = decide(routed_to_stable(keep=keep))
    assert [p.describe() for p in decision.orphan] == ["ManagedAIServiceBackend llama-v1", "VirtualModel llama"]
    keep = pieces(isvc="orphaned", backend="orphaned", vm="orphaned")
    # Everything orphaned: the VirtualModel is not ours any more, so nothing waits on its route.
    decision = decide(routed_to_stable(keep=keep, virtual_model=keep[2], vm_backends=frozenset(),
                                       route_references=frozenset({"llama-v2"})))
    assert decision.release and decision.orphan == ()
    assert [n.reason for n in decision.notices] == ["Retained"]


def test_a_virtual_model_of_someone_else_is_neither_routed_nor_orphaned() -> None:
    keep = pieces(vm="foreign")
    keep = (*keep[:2], dataclasses.replace(keep[2], controller="VirtualModel other"))
    decision = decide(mid_rollout(keep=keep, virtual_model=keep[2], vm_backends=frozenset()))
    assert not decision.route and decision.release
    assert [p.describe() for p in decision.orphan] == ["InferenceService llama-v1", "ManagedAIServiceBackend llama-v1"]
    assert "left as they are, not owned by this TrafficConfig: VirtualModel llama (controlled by VirtualModel " \
        "other)" in decision.notices[0].message


def test_objects_already_being_deleted_cannot_be_kept_and_are_not_waited_for() -> None:
    keep = pieces(isvc="terminating", backend="terminating", vm="terminating")
    decision = decide(mid_rollout(keep=keep, virtual_model=keep[2], vm_backends=frozenset(), foreground=True))
    assert decision.release and decision.orphan == () and not decision.route
    [notice] = decision.notices
    assert (notice.type, notice.reason) == ("Warning", "NotRetained")
    assert "propagationPolicy Foreground" in notice.message


def test_a_foreground_deletion_tries_nothing_even_while_the_children_are_still_there() -> None:
    """The garbage collector is deleting them already: neither routing nor orphaning would hold."""
    decision = decide(mid_rollout(foreground=True))
    assert decision.release and decision.orphan == () and not decision.route
    [notice] = decision.notices
    assert (notice.type, notice.reason) == ("Warning", "NotRetained")
    assert "propagationPolicy Foreground" in notice.message and "PrunePropagationPolicy=background" in notice.message


def test_delete_releases_at_once_and_keeps_nothing() -> None:
    decision = decide(mid_rollout(policy="Delete"))
    assert decision.release and decision.orphan == () and decision.notices == () and not decision.route


def test_without_a_stable_version_nothing_is_kept_and_it_says_so() -> None:
    decision = decide(mid_rollout(stable=None))
    assert decision.release and decision.orphan == ()
    assert [n.reason for n in decision.notices] == ["NotRetained"]


# --- reading the cluster's objects ---------------------------------------------------------------------------

def obj(refs: list[dict[str, Any]] | None = None, annotations: dict[str, str] | None = None,
        deleting: bool = False, managed: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "llama-v1", "ownerReferences": refs or [], "annotations": annotations or {},
                            "labels": {apply.LABEL_MANAGED_BY: apply.MANAGED_BY} if managed else {}}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-30T06:00:00Z"
    return {"metadata": meta}


def test_standing_of_an_object_towards_the_traffic_config() -> None:
    note = {ANNOTATION_ORPHANED_FROM: "TrafficConfig/llama"}
    assert standing_of(None, OWNER) == ("absent", "")
    assert standing_of(obj([OWNER.reference()]), OWNER) == ("ours", "")
    assert standing_of(obj([OWNER.reference()], deleting=True), OWNER) == ("terminating", "")
    assert standing_of(obj(annotations=note), OWNER) == ("orphaned", "")
    other = {**OWNER.reference(), "uid": "uid-2", "name": "other", "kind": "VirtualModel"}
    assert standing_of(obj([other], annotations=note), OWNER) == ("foreign", "VirtualModel other")
    assert standing_of(obj(annotations=note, managed=False), OWNER) == ("foreign", "")
    # Left by a TrafficConfig of another name: not this one's to adopt.
    assert not is_orphan_of(obj(annotations={ANNOTATION_ORPHANED_FROM: "TrafficConfig/mistral"}), "llama")


def test_the_stable_version_is_the_statuss_then_the_specs() -> None:
    assert stable_version({"status": {"stableVersion": "v2"}, "spec": {"stable": {"version": "v1"}}}) == "v2"
    assert stable_version({"spec": {"stable": {"version": "v1"}}}) == "v1"
    assert stable_version({"spec": {"release": {"version": "v3"}}}) == "v3"
    assert stable_version({"spec": {}}) is None


def test_the_stable_only_virtual_model_keeps_everything_else_of_its_spec() -> None:
    live: dict[str, Any] = {"apiVersion": "modeltraffic.io/v1alpha1", "kind": "VirtualModel",
            "metadata": {"name": "llama", "labels": {"modeltraffic.io/traffic-config": "llama",
                                                     apply.LABEL_OWNER_NAME: "llama"}},
            "spec": {"modelName": "llama-3", "gatewayRefs": [{"name": "gw"}], "auth": {"apiKeys": {}},
                     "backends": [{"name": "llama-v1", "modelNameOverride": "llama-3-v1", "weight": 90},
                                  {"name": "llama-v2", "modelNameOverride": "llama-3-v2", "weight": 10},
                                  {"name": "llama-v2", "modelNameOverride": "llama-3-v2", "weight": 1,
                                   "matches": [{"headers": []}]}]}}
    desired = stable_only_virtual_model(live, "llama", "llama-3", "v1")
    assert desired["spec"]["backends"] == [{"name": "llama-v1", "modelNameOverride": "llama-3-v1", "weight": 100}]
    assert {k: v for k, v in desired["spec"].items() if k != "backends"} == {
        "modelName": "llama-3", "gatewayRefs": [{"name": "gw"}], "auth": {"apiKeys": {}}}
    assert desired["metadata"] == {"name": "llama", "labels": {"modeltraffic.io/traffic-config": "llama"}}
    # A stable the VirtualModel does not list (at weight 0): its entry is made as the render makes it.
    live["spec"]["backends"] = live["spec"]["backends"][1:2]
    assert stable_only_virtual_model(live, "llama", "llama-3", "v1")["spec"]["backends"] == [
        {"name": "llama-v1", "modelNameOverride": "llama-3-v1", "weight": 100}]


def test_an_adopted_stable_is_recorded_as_it_runs() -> None:
    isvc = {"spec": {"predictor": {"minReplicas": 2, "maxReplicas": 2,
                                   "model": {"storageUri": "hf://org/llama:rev1", "args": ["--model_name=x"]}}}}
    assert running_version(isvc) == {"storageUri": "hf://org/llama:rev1", "replicas": 2}
    isvc["spec"]["predictor"]["maxReplicas"] = 4  # the template's autoscaling range: not a fixed count
    assert running_version(isvc) == {"storageUri": "hf://org/llama:rev1"}
    assert running_version(None) == {}
