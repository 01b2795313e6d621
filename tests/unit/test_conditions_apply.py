"""Condition bookkeeping and the apply layer's pure parts."""

from __future__ import annotations

from model_traffic import apply, conditions
from model_traffic.conditions import Detail, Verdict

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
