"""The chaos suite's invariants catch what they are meant to catch (synthetic watch records, no cluster)."""

from __future__ import annotations

from typing import Any

from tests.chaos import invariants
from tests.chaos.invariants import state
from tests.chaos.recorder import Record


def vm(revision: int, weights: dict[str, int], matched: tuple[str, ...] = ()) -> Record:
    backends: list[dict[str, Any]] = [{"name": n, "weight": w} for n, w in weights.items()]
    backends += [{"name": n, "weight": 1, "matches": [{"headers": [{"name": "x", "value": "1"}]}]} for n in matched]
    return Record(revision, 0.0, "VirtualModel", "MODIFIED",
                  {"metadata": {"name": "m"}, "spec": {"backends": backends}})


def route(revision: int, weights: dict[str, int]) -> Record:
    rule = {"matches": [{"headers": [{"type": "Exact", "name": "x-ai-eg-model", "value": "m"}]}],
            "backendRefs": [{"name": n, "weight": w, "priority": 0} for n, w in weights.items()]}
    return Record(revision, 0.0, "AIGatewayRoute", "MODIFIED", {"metadata": {"name": "m"}, "spec": {"rules": [rule]}})


def backend(revision: int, name: str, type_: str = "ADDED") -> Record:
    return Record(revision, 0.0, "AIServiceBackend", type_, {"metadata": {"name": name}})


STEPS = [state({"v1": 100}), state({"v1": 90, "v2": 10}), state({"v1": 50, "v2": 50}), state({"v2": 100})]


def test_steps_in_order_hold_and_a_skipped_or_repeated_step_is_named() -> None:
    good = [vm(1, {"v1": 100}), vm(2, {"v1": 90, "v2": 10}), vm(3, {"v1": 90, "v2": 10}),
            vm(4, {"v1": 50, "v2": 50}), vm(5, {"v2": 100, "v1": 0})]
    assert invariants.check_steps(good, "VirtualModel", "m", STEPS) == []
    skipped = [vm(1, {"v1": 100}), vm(2, {"v1": 50, "v2": 50}), vm(3, {"v2": 100})]
    [message] = invariants.check_steps(skipped, "VirtualModel", "m", STEPS)
    assert "skipped {v1=90%, v2=10%}" in message
    repeated = [vm(1, {"v1": 100}), vm(2, {"v1": 90, "v2": 10}), vm(3, {"v1": 50, "v2": 50}),
                vm(4, {"v1": 90, "v2": 10}), vm(5, {"v1": 50, "v2": 50}), vm(6, {"v2": 100})]
    [message] = invariants.check_steps(repeated, "VirtualModel", "m", STEPS)
    assert "repeated" in message and "v2=10%" in message
    matched = [vm(1, {"v1": 100}), vm(2, {"v1": 100}, ("v2",)), vm(3, {"v2": 100})]
    assert invariants.check_steps(matched, "VirtualModel", "m",
                                  [state({"v1": 100}), state({"v1": 100}, ["v2"]), state({"v2": 100})]) == []


def terminating(revision: int, name: str) -> Record:
    return Record(revision, 0.0, "AIServiceBackend", "MODIFIED",
                  {"metadata": {"name": name, "deletionTimestamp": "2026-01-01T00:00:00Z"}})


def test_a_route_naming_a_deleted_backend_is_caught_in_revision_order() -> None:
    make_before_break = [backend(1, "v1"), backend(2, "v2"), route(3, {"v1": 50, "v2": 50}), route(4, {"v2": 100}),
                         backend(5, "v1", "DELETED")]
    assert invariants.check_no_reference_to_deleted_backend(make_before_break, "m") == []
    break_before_make = [backend(1, "v1"), backend(2, "v2"), route(3, {"v1": 50, "v2": 50}),
                         backend(4, "v1", "DELETED"), route(5, {"v2": 100})]
    [message] = invariants.check_no_reference_to_deleted_backend(break_before_make, "m")
    assert message == "AIServiceBackend v1 deleted at revision 4 while AIGatewayRoute m still referenced it"
    # A finalizer keeps the object a while: the deletion starts with the deletionTimestamp.
    held_by_a_finalizer = [backend(1, "v1"), backend(2, "v2"), route(3, {"v1": 50, "v2": 50}), terminating(4, "v1"),
                           route(5, {"v2": 100}), backend(6, "v1", "DELETED")]
    [message] = invariants.check_no_reference_to_deleted_backend(held_by_a_finalizer, "m")
    assert message == "AIServiceBackend v1 deleted at revision 4 while AIGatewayRoute m still referenced it"
    owner_first = [backend(1, "v1"), route(3, {"v1": 50, "v2": 50}),
                   Record(4, 0.0, "ManagedAIServiceBackend", "DELETED", {"metadata": {"name": "v1"}}),
                   route(5, {"v2": 100})]
    [message] = invariants.check_no_reference_to_deleted_backend(owner_first, "m")
    assert message == "ManagedAIServiceBackend v1 deleted at revision 4 while AIGatewayRoute m still referenced it"


def event(revision: int, name: str, reason: str, count: int = 1) -> Record:
    return Record(revision, 0.0, "Event", "ADDED", {
        "metadata": {"name": name}, "reason": reason, "message": reason, "count": count,
        "involvedObject": {"kind": "TrafficConfig", "name": "m"}})


def test_one_event_per_step_counts_lost_and_doubled_events() -> None:
    expected = {"RolloutStarted": 1, "StepAdvanced": 2, "Promoted": 1}
    exact = [event(1, "a", "RolloutStarted"), event(2, "b", "StepAdvanced"), event(3, "c", "StepAdvanced"),
             event(4, "d", "Promoted"), event(5, "e", "CheckFailed")]
    assert invariants.check_events(exact, "m", expected) == []
    wrong = [event(1, "a", "RolloutStarted", count=2), event(2, "b", "StepAdvanced"), event(4, "d", "Promoted")]
    problems = invariants.check_events(wrong, "m", expected)
    assert any("2 RolloutStarted Event(s), expected 1" in p for p in problems)
    assert any("1 StepAdvanced Event(s), expected 2" in p for p in problems)


def test_orphans_are_children_of_a_missing_owner_or_an_unwanted_version() -> None:
    def child(kind: str, name: str, labels: dict[str, str]) -> dict[str, Any]:
        return {"kind": kind, "metadata": {"name": name, "labels": labels}}

    owned_by = {"modeltraffic.io/owner-kind": "TrafficConfig", "modeltraffic.io/owner-name": "m",
                "modeltraffic.io/traffic-config": "m"}
    children = [child("InferenceService", "m-v2", {**owned_by, "modeltraffic.io/version": "v2"}),
                child("InferenceService", "m-v1", {**owned_by, "modeltraffic.io/version": "v1"}),
                child("AIServiceBackend", "m-v0", {"modeltraffic.io/owner-kind": "ManagedAIServiceBackend",
                                                   "modeltraffic.io/owner-name": "m-v0"})]
    terminating = child("AIServiceBackend", "m-v1", {"modeltraffic.io/owner-kind": "ManagedAIServiceBackend",
                                                     "modeltraffic.io/owner-name": "m-v1"})
    terminating["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    children.append(terminating)
    problems = invariants.check_no_orphans(children, {("TrafficConfig", "m")}, {"m": {"v2"}})
    assert problems == [
        "orphan: InferenceService m-v1 is version v1 of TrafficConfig m, which runs ['v2']",
        "orphan: AIServiceBackend m-v0 belongs to ManagedAIServiceBackend m-v0, which no longer exists"]
