"""Condition bookkeeping and the apply layer's pure parts."""

from __future__ import annotations

from model_traffic.pipeline import apply, conditions
from model_traffic.pipeline.conditions import Detail, Verdict

OWNER = apply.Owner("modeltraffic.io/v1alpha1", "ManagedAIServiceBackend", "llm", "openai", "uid-1")


def test_ready_reconciling_stalled_never_contradict() -> None:
    for state in ("Ready", "Progressing", "Stalled"):
        conds = conditions.build([], Verdict(state, "Why", "because"), [], 3, "t0")  # type: ignore[arg-type]
        statuses = {c["type"]: c["status"] for c in conds}
        assert list(statuses.values()).count("True") == 1
        assert all(c["observedGeneration"] == 3 for c in conds)


def test_transition_time_moves_only_when_status_changes() -> None:
    first = conditions.build([], Verdict("Progressing", "Waiting", "w"), [Detail("X", False, "No", "")], 1, "t0")
    same = conditions.build(
        first, Verdict("Progressing", "StillWaiting", "w2"), [Detail("X", False, "No", "")], 2, "t1")
    assert {c["type"]: c["lastTransitionTime"] for c in same} == {
        "Ready": "t0", "Reconciling": "t0", "Stalled": "t0", "X": "t0"}
    ready = conditions.build(same, Verdict("Ready", "Ready", ""), [Detail("X", True, "Yes", "")], 2, "t2")
    times = {c["type"]: c["lastTransitionTime"] for c in ready}
    assert times == {"Ready": "t2", "Reconciling": "t2", "Stalled": "t0", "X": "t2"}


def test_status_patch_nulls_removed_keys_and_is_none_when_equal() -> None:
    assert conditions.status_patch({"a": 1}, {"a": 1}) is None
    assert conditions.status_patch({"a": 1, "b": 2}, {"a": 1}) == {"a": 1, "b": None}


def test_ownership_labels_and_hash() -> None:
    obj = apply.with_ownership({"apiVersion": "v", "kind": "K", "metadata": {"name": "n"}, "spec": {"a": 1}}, OWNER)
    meta = obj["metadata"]
    assert meta["namespace"] == "llm"
    assert meta["labels"][apply.LABEL_MANAGED_BY] == "model-traffic-operator"
    assert meta["ownerReferences"][0]["uid"] == "uid-1" and meta["ownerReferences"][0]["controller"] is True
    other = apply.with_ownership({"apiVersion": "v", "kind": "K", "metadata": {"name": "n"}, "spec": {"a": 2}}, OWNER)
    assert meta["annotations"][apply.ANNOTATION_APPLIED_HASH] != other["metadata"]["annotations"][
        apply.ANNOTATION_APPLIED_HASH]


def test_up_to_date_tolerates_server_defaults_but_not_edits() -> None:
    desired = apply.with_ownership({"apiVersion": "v", "kind": "K", "metadata": {"name": "n"},
                                    "spec": {"rules": [{"weight": 1}]}}, OWNER)
    live = {**desired, "spec": {"rules": [{"weight": 1, "priority": 0}]}, "status": {}}
    assert apply.up_to_date(desired, live)
    edited = {**desired, "spec": {"rules": [{"weight": 5, "priority": 0}]}}
    assert not apply.up_to_date(desired, edited)
    assert not apply.owned_by({"metadata": {"ownerReferences": [{"uid": "other", "controller": True}]}}, OWNER)


def test_a_child_leads_to_its_owner_by_owner_reference_even_without_our_labels() -> None:
    child = apply.with_ownership({"apiVersion": "gateway.envoyproxy.io/v1alpha1", "kind": "Backend",
                                  "metadata": {"name": "openai"}, "spec": {}}, OWNER)
    assert apply.owner_of(child) == ("ManagedAIServiceBackend", "openai")
    child["metadata"]["labels"] = {}  # removed by hand: the owner reference still says whose it is
    assert apply.controller_owner(child) == ("ManagedAIServiceBackend", "openai")
    assert apply.owner_of(child) == ("ManagedAIServiceBackend", "openai")


def test_an_object_generated_from_our_child_leads_to_our_owner_by_labels_and_foreign_ones_to_nobody() -> None:
    route = apply.with_ownership({"apiVersion": "aigateway.envoyproxy.io/v1beta1", "kind": "AIGatewayRoute",
                                  "metadata": {"name": "m"}, "spec": {}}, OWNER)
    http_route = {"metadata": {"name": "m", "labels": route["metadata"]["labels"], "ownerReferences": [
        {"apiVersion": "aigateway.envoyproxy.io/v1beta1", "kind": "AIGatewayRoute", "name": "m", "controller": True}]}}
    assert apply.controller_owner(http_route) is None  # the AI Gateway's, not ours
    assert apply.owner_of(http_route) == ("ManagedAIServiceBackend", "openai")  # the labels it copied from ours
    foreign = {"metadata": {"name": "x", "ownerReferences": [
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "controller": True}]}}
    assert apply.owner_of(foreign) is None
    not_controller = {"metadata": {"name": "x", "ownerReferences": [
        {"apiVersion": "modeltraffic.io/v1alpha1", "kind": "VirtualModel", "name": "m", "controller": False}]}}
    assert apply.owner_of(not_controller) is None
