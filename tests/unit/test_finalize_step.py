"""The pipeline's finalize hook: an object being deleted is handed to its kind's finalize step only while it carries
the kind's finalizer; otherwise it is left alone, as before (the garbage collector takes it)."""

from __future__ import annotations

from typing import Any

from model_traffic import kube
from model_traffic.pipeline.conditions import Verdict, find
from model_traffic.pipeline.runtime import Finalizer, Result, Runtime
from tests.support.statuskube import StatusKube

FINALIZER = "modeltraffic.io/test-finalizer"


def body(*, deleting: bool, finalizers: list[str]) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": "llm", "name": "llama", "uid": "u1", "generation": 4,
                            "resourceVersion": "9", "finalizers": finalizers}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-30T06:00:00Z"
    return {"apiVersion": "modeltraffic.io/v1alpha1", "kind": "TrafficConfig", "metadata": meta,
            "spec": {}, "status": {"phase": "Progressing", "canaryWeight": 10}}


class Calls:
    def __init__(self, finalize_result: Result | None) -> None:
        self.reconciled = 0
        self.finalized = 0
        self.finalize_result = finalize_result

    def reconcile(self, kube_: Any, obj: dict[str, Any]) -> Result:
        self.reconciled += 1
        return Result(Verdict("Ready", "Succeeded", "fine"))

    def finalize(self, kube_: Any, obj: dict[str, Any]) -> Result | None:
        self.finalized += 1
        return self.finalize_result


def run(obj: dict[str, Any], finalize_result: Result | None = None) -> tuple[Calls, StatusKube]:
    fake = StatusKube(obj)
    calls = Calls(finalize_result)
    runtime = Runtime(fake)  # type: ignore[arg-type]
    runtime.register(kube.TRAFFIC_CONFIG, calls.reconcile, Finalizer(FINALIZER, calls.finalize))
    runtime.reconcile("TrafficConfig", "llm", "llama")
    return calls, fake


def test_an_object_being_deleted_with_the_kinds_finalizer_gets_the_finalize_step_not_the_reconcile() -> None:
    waiting = Result(Verdict("Progressing", "RetainingStable", "waiting for the gateway"),
                     status={"phase": "Progressing", "canaryWeight": 10})
    calls, fake = run(body(deleting=True, finalizers=["other.io/keep", FINALIZER]), waiting)
    assert (calls.reconciled, calls.finalized) == (0, 1)
    [patch] = fake.patches  # what the step reports is written like any verdict
    reconciling = find(patch["conditions"], "Reconciling")
    assert reconciling is not None and reconciling["reason"] == "RetainingStable"
    assert patch["observedGeneration"] == 4


def test_a_finished_finalize_step_writes_nothing() -> None:
    calls, fake = run(body(deleting=True, finalizers=[FINALIZER]), None)
    assert (calls.reconciled, calls.finalized, fake.patches) == (0, 1, [])


def test_an_object_being_deleted_without_the_finalizer_is_left_alone() -> None:
    calls, fake = run(body(deleting=True, finalizers=["other.io/keep"]))
    assert (calls.reconciled, calls.finalized, fake.patches) == (0, 0, [])


def test_a_live_object_carrying_the_finalizer_is_reconciled_as_usual() -> None:
    calls, _ = run(body(deleting=False, finalizers=[FINALIZER]))
    assert (calls.reconciled, calls.finalized) == (1, 0)
