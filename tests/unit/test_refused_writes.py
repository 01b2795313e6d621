"""A write the API server refuses (400/422) becomes a Stalled condition with the server's message, never only a log
line and never a loop without status."""

from __future__ import annotations

import json
from typing import Any

from kubernetes.client.exceptions import ApiException

from model_traffic import kube
from model_traffic.pipeline import apply
from model_traffic.pipeline.conditions import Verdict, find
from model_traffic.pipeline.plan import Child, Plan
from model_traffic.pipeline.result import apply_plan, result_of
from model_traffic.pipeline.runtime import Result, Runtime, is_refused_write

OWNER_BODY: dict[str, Any] = {
    "apiVersion": "modeltraffic.io/v1alpha1", "kind": "TrafficConfig",
    "metadata": {"namespace": "llm", "name": "llama", "uid": "u1", "generation": 3, "resourceVersion": "7"},
    "spec": {}, "status": {"phase": "Progressing", "canaryWeight": 25, "observedGeneration": 2, "conditions": []},
}
MESSAGE = 'InferenceService.serving.kserve.io "llama-v2" is invalid: spec.predictor.args: field not declared in schema'


def refusal(status: int = 422) -> ApiException:
    error = ApiException(status=status, reason="Unprocessable Entity")
    error.body = json.dumps({"kind": "Status", "message": MESSAGE})
    return error


class RefusingKube:
    """Refuses every apply; remembers status patches and Events."""

    def __init__(self, body: dict[str, Any] | None = None) -> None:
        self.body = body
        self.patches: list[dict[str, Any]] = []
        self.events: list[Any] = []
        self.core = self

    def get(self, rtype: Any, namespace: str, name: str) -> dict[str, Any] | None:
        return self.body if self.body and name == self.body["metadata"]["name"] else None

    def apply(self, obj: dict[str, Any], force: bool = False, dry_run: bool = False) -> dict[str, Any]:
        raise refusal()

    def patch_status(self, rtype: Any, namespace: str, name: str, patch: dict[str, Any],
                     resource_version: str | None = None) -> dict[str, Any]:
        self.patches.append(patch)
        return {}

    def create_namespaced_event(self, namespace: str, event: Any) -> None:
        self.events.append(event)


def plan() -> Plan:
    isvc = Child(kube.INFERENCE_SERVICE, {"apiVersion": kube.INFERENCE_SERVICE.api_version,
                                          "kind": "InferenceService", "metadata": {"name": "llama-v2"}, "spec": {}})
    return Plan(Verdict("Ready", "Succeeded", "v1 serves all traffic"), [], [isvc])


def test_a_refused_child_is_a_stalled_condition_with_the_servers_message() -> None:
    fake = RefusingKube()
    applied = apply_plan(fake, apply.Owner.of(OWNER_BODY), plan())  # type: ignore[arg-type]
    assert applied.rejected == [f"InferenceService/llama-v2: {MESSAGE}"]
    result = result_of(plan(), applied)
    assert (result.verdict.state, result.verdict.reason) == ("Stalled", "ChildRejected")
    assert MESSAGE in result.verdict.message
    accepted = next(d for d in result.details if d.type == "ChildrenAccepted")
    assert (accepted.ok, accepted.reason) == (False, "ChildRejected")


def test_an_undeclared_field_is_a_refusal_though_the_server_answers_500() -> None:
    error = ApiException(status=500, reason="Internal Server Error")
    error.body = json.dumps({"message": "failed to create typed patch object (llm/llama-v2; serving.kserve.io/v1beta1, "
                                        "Kind=InferenceService): .spec.predictor.args: field not declared in schema"})
    assert is_refused_write(error) and is_refused_write(refusal(422)) and is_refused_write(refusal(400))
    transient = ApiException(status=500, reason="Internal Server Error")
    transient.body = json.dumps({"message": "etcdserver: request timed out"})
    assert not is_refused_write(transient)


def test_any_other_refused_write_still_ends_in_a_status_that_keeps_the_rollout() -> None:
    fake = RefusingKube(OWNER_BODY)
    runtime = Runtime(fake)  # type: ignore[arg-type]

    def reconciler(kube_: Any, body: dict[str, Any]) -> Result:
        raise refusal(400)

    runtime.register(kube.TRAFFIC_CONFIG, reconciler)
    runtime.reconcile("TrafficConfig", "llm", "llama")
    [patch] = fake.patches
    assert patch["observedGeneration"] == 3
    stalled = find(patch["conditions"], "Stalled")
    assert stalled is not None and stalled["status"] == "True" and stalled["reason"] == "ChildRejected"
    assert MESSAGE in stalled["message"]
    assert (patch["phase"], patch["canaryWeight"]) == ("Progressing", 25)  # progress is not wiped
    assert [event.reason for event in fake.events] == ["ChildRejected"]
