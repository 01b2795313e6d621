"""The TrafficConfig state machine, with plain data (no API server, no Prometheus, no clock)."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import pydantic
import pytest

from model_traffic.kinds.trafficconfig.analysis import evaluate
from model_traffic.kinds.trafficconfig.analysis_spec import Metric
from model_traffic.kinds.trafficconfig.render import (
    PHASES,
    TRANSITIONS,
    AnalysisRequest,
    ChildHealth,
    LiveVirtualModel,
    ObservedVersion,
    RolloutPlan,
    TrafficWorld,
    live_weights_from_virtual_model,
    recorded_traffic,
    step,
    step_weights,
)
from model_traffic.kinds.trafficconfig.spec import MetricResult, TrafficConfigSpec
from model_traffic.kinds.virtualmodel.spec import VirtualModelSpec

T0 = datetime.datetime(2025, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)
TEMPLATE = {"predictor": {"model": {"modelFormat": {"name": "huggingface"}, "args": ["--max_model_len=4096"]}}}


def at(minutes: float) -> datetime.datetime:
    return T0 + datetime.timedelta(minutes=minutes)


def spec(**fields: Any) -> TrafficConfigSpec:
    base: dict[str, Any] = {
        "modelName": "llama-3",
        "inferenceService": {"template": TEMPLATE},
        "stable": {"version": "v1", "storageUri": "hf://org/m@1"},
        "canary": {"version": "v2", "storageUri": "hf://org/m@2"},
        "analysis": {"interval": "1m", "threshold": 2, "stepWeights": [10, 50],
                     "metrics": [{"name": "ttft", "builtin": "TimeToFirstTokenP95", "max": 0.5}]},
    }
    base.update(fields)
    return TrafficConfigSpec.model_validate(base)


READY = ChildHealth(ready=True)
# A Ready VirtualModel that carries no step's traffic (yet): checks wait until one does (see `reconcile`).
IDLE_VM = LiveVirtualModel(frozenset(), READY)


def world(ready: tuple[str, ...] = ("v1", "v2"), live: dict[str, int] | None = None,
          analysis: list[MetricResult] | None = None, **fields: Any) -> TrafficWorld:
    versions = {v: ObservedVersion(ready=True, url=f"http://llama-{v}.llm") for v in ready}
    fields.setdefault("virtual_model", IDLE_VM)
    fields.setdefault("backends", {v: READY for v in ("v1", "v2", "v3")})
    return TrafficWorld(namespace="llm", name="llama", versions=versions, live_weights=live, analysis=analysis,
                        uid="uid-1", generation=1, **fields)


def settled_vm(backends: list[dict[str, Any]], observed_generation: int = 1) -> LiveVirtualModel:
    """A VirtualModel with these backends as its controller reports it once it acted on them (or not yet)."""
    return LiveVirtualModel.of({"metadata": {"generation": 1}, "spec": {"backends": backends}, "status": {
        "observedGeneration": observed_generation, "conditions": [{"type": "Ready", "status": "True"}]}})


def applied(s: TrafficConfigSpec, status: dict[str, Any] | None, **fields: Any) -> TrafficWorld:
    """The world once the children of ``status`` are applied and the VirtualModel's controller acted on them."""
    return world(virtual_model=settled_vm(recorded_traffic(s, status, world(**fields))), **fields)


def live_vm(plan: RolloutPlan, observed_generation: int = 1) -> LiveVirtualModel:
    vm = next(c for c in plan.children if c.rtype.kind == "VirtualModel")
    return settled_vm(vm.body["spec"]["backends"], observed_generation)


def passing(request: AnalysisRequest) -> list[MetricResult]:
    return [evaluate(m, 0.1, 0.1) for m in request.metrics]


def failing_ttft(request: AnalysisRequest) -> list[MetricResult]:
    return [evaluate(m, 2.5, 0.1) for m in request.metrics]


def no_data(request: AnalysisRequest) -> list[MetricResult]:
    return [evaluate(m, None, 0.1) for m in request.metrics]


Results = Callable[[AnalysisRequest], list[MetricResult]]


def reconcile(s: TrafficConfigSpec, status: dict[str, Any] | None, now: datetime.datetime,
              results: Results = passing, **world_fields: Any) -> RolloutPlan:
    """What the reconciler will do: step; when an analysis is asked for, run it and step again. Then, as in a
    cluster, the VirtualModel's controller acts on what was applied and the next reconcile (at the same time)
    sees it: the step's interval starts. The plan returned is that one, with the first one's events. Unless
    the test says otherwise, the live VirtualModel carries the step ``status`` records (its children applied)."""
    if status is not None and "virtual_model" not in world_fields:
        world_fields["virtual_model"] = settled_vm(recorded_traffic(s, status, world(**world_fields)))
    plan = step(s, status, world(**world_fields), now)
    if plan.analysis is not None:
        plan = step(s, status, world(analysis=results(plan.analysis), **world_fields), now)
    world_fields.pop("virtual_model", None)
    settled = step(s, plan.status, world(virtual_model=live_vm(plan), **world_fields), now)
    assert settled.analysis is None, "nothing is due at the instant a step reaches the traffic"
    settled.events = plan.events + settled.events
    settled.post_rollout = plan.post_rollout + settled.post_rollout
    settled.status.pop("pendingEvents", None)  # posted by the reconciler, which then clears them
    settled.previous_phase = plan.previous_phase
    return settled


def vm_weights(plan: RolloutPlan) -> dict[str, int]:
    vm = next(c for c in plan.children if c.rtype.kind == "VirtualModel")
    return {b["name"]: b["weight"] for b in vm.body["spec"]["backends"] if "matches" not in b}


def names(plan: RolloutPlan, kind: str) -> list[str]:
    return sorted(c.name for c in plan.children if c.rtype.kind == kind)


def reasons(plan: RolloutPlan) -> list[str]:
    return [e.reason for e in plan.events]


# --- steady state and children ----------------------------------------------------------------------------

def test_stable_only_waits_for_ready_then_succeeds() -> None:
    s = spec(canary=None)
    waiting = step(s, None, world(ready=()), T0)
    assert waiting.status["phase"] == "Initializing"
    assert waiting.verdict.state == "Progressing"
    done = step(s, waiting.status, world(ready=("v1",)), T0)
    assert done.status["phase"] == "Succeeded"
    assert done.verdict.state == "Ready"
    assert vm_weights(done) == {"llama-v1": 100}


def test_children_per_version() -> None:
    plan = step(spec(), None, world(), T0)
    assert names(plan, "InferenceService") == ["llama-v1", "llama-v2"]
    assert names(plan, "ManagedAIServiceBackend") == ["llama-v1", "llama-v2"]
    assert names(plan, "VirtualModel") == ["llama"]
    isvc = next(c.body for c in plan.children if c.name == "llama-v2" and c.rtype.kind == "InferenceService")
    model = isvc["spec"]["predictor"]["model"]
    assert model["storageUri"] == "hf://org/m@2"
    assert model["args"] == ["--max_model_len=4096", "--model_name=llama-3-v2"]
    assert isvc["metadata"]["labels"] == {"modeltraffic.io/traffic-config": "llama", "modeltraffic.io/version": "v2"}
    backend = next(c.body for c in plan.children if c.rtype.kind == "ManagedAIServiceBackend" and c.name == "llama-v2")
    assert backend["spec"] == {"schema": {"name": "OpenAI", "prefix": "/openai/v1"},
                               "endpoint": {"inferenceService": {"name": "llama-v2"}}}
    vm = next(c.body for c in plan.children if c.rtype.kind == "VirtualModel")
    assert vm["spec"]["modelName"] == "llama-3"
    assert vm["spec"]["backends"][0]["modelNameOverride"] == "llama-3-v1"
    assert plan.status["versions"][1] == {"version": "v2", "inferenceService": "llama-v2", "ready": True,
                                          "url": "http://llama-v2.llm", "weight": 10}


AUTH = {"tenantHeader": "x-tenant-id", "apiKey": {"secretRefs": ["llama-keys"], "headers": ["authorization"]}}
RATE_LIMIT = {"tokens": {"limit": 1000, "unit": "Hour"}, "withoutTenant": "Shared",
              "tenants": [{"tenant": "gold", "tokens": {"limit": 100000, "unit": "Month"},
                           "requests": {"limit": 50, "unit": "Second"}}]}


def test_auth_and_tenant_budgets_pass_unchanged_to_the_virtual_model_at_every_step() -> None:
    s = spec(auth=AUTH, rateLimit=RATE_LIMIT)
    first = reconcile(s, None, T0)
    later = reconcile(s, first.status, at(1))
    assert vm_weights(later) == {"llama-v1": 50, "llama-v2": 50}  # a later step, same auth and budgets
    for plan in (first, later):
        vm = next(c.body for c in plan.children if c.rtype.kind == "VirtualModel")
        assert vm["spec"]["auth"] == AUTH
        assert vm["spec"]["rateLimit"] == RATE_LIMIT
        # What the TrafficConfig accepted, its VirtualModel accepts: the same models check both.
        VirtualModelSpec.model_validate(vm["spec"])


def test_without_auth_the_virtual_model_has_none() -> None:
    vm = next(c.body for c in step(spec(), None, world(), T0).children if c.rtype.kind == "VirtualModel")
    assert "auth" not in vm["spec"] and "rateLimit" not in vm["spec"]


def test_step_weights_from_step_weight_and_max_weight() -> None:
    assert step_weights(spec(analysis={"stepWeight": 20, "maxWeight": 50})) == [20, 40, 50]
    assert step_weights(spec(analysis={"stepWeight": 25})) == [25, 50, 75, 100]
    assert step_weights(spec(analysis={"stepWeights": [5, 10, 25, 50]})) == [5, 10, 25, 50]
    assert step_weights(spec(analysis=None)) == [10, 20, 30, 40, 50]


# --- canary ---------------------------------------------------------------------------------------------

def test_canary_waits_for_candidate_ready() -> None:
    plan = step(spec(), None, world(ready=("v1",)), T0)
    assert plan.status["phase"] == "Initializing"
    assert vm_weights(plan) == {"llama-v1": 100}
    assert "llama-v2 not found" in plan.verdict.message


def test_healthy_candidate_is_promoted_through_all_steps() -> None:
    s = spec()
    plan = reconcile(s, None, T0)
    assert plan.status["phase"] == "Progressing"
    assert plan.status["canaryWeight"] == 10
    assert vm_weights(plan) == {"llama-v1": 90, "llama-v2": 10}
    assert "RolloutStarted" in reasons(plan)

    early = reconcile(s, plan.status, at(0.5))
    assert early.analysis is None and early.status == plan.status
    assert early.requeue_after == 30

    first = step(s, plan.status, applied(s, plan.status), at(1))
    assert first.analysis is not None
    assert first.analysis.candidate.served_model == "llama-3-v2"
    assert first.analysis.stable.served_model == "llama-3-v1"
    assert [m.name for m in first.analysis.metrics] == ["ttft"]
    assert first.status == plan.status  # nothing moves before the results are in

    plan = reconcile(s, plan.status, at(1))
    assert plan.status["canaryWeight"] == 50
    assert plan.status["currentStep"] == 1
    assert plan.status["iterations"] == 1
    assert plan.status["lastResults"][0]["passed"] is True

    plan = reconcile(s, plan.status, at(2), live={"v1": 50, "v2": 50})
    assert plan.status["phase"] == "Promoting"
    assert plan.status["stableVersion"] == "v2"
    assert "candidateVersion" not in plan.status
    assert vm_weights(plan) == {"llama-v2": 100}
    assert names(plan, "InferenceService") == ["llama-v1", "llama-v2"]  # v1 drains first
    assert plan.retire == []
    assert "Promoted" in reasons(plan)

    done = reconcile(s, plan.status, at(2.1), live={"v2": 100})
    assert done.status["phase"] == "Succeeded"
    assert done.retire == ["v1"]
    # The backend the gateway calls goes first, then what it called.
    assert [(t.kind, n) for t, n in done.delete] == [("ManagedAIServiceBackend", "llama-v1"),
                                                      ("InferenceService", "llama-v1")]
    assert names(done, "InferenceService") == ["llama-v2"]

    # The spec still says stable v1 / canary v2 until GitOps catches up: nothing changes.
    again = reconcile(s, done.status, at(10), live={"v2": 100})
    assert again.status == done.status
    assert again.events == []


def test_bad_ttft_is_rolled_back_after_threshold_failed_checks() -> None:
    s = spec()
    plan = reconcile(s, None, T0)
    plan = reconcile(s, plan.status, at(1), results=failing_ttft)
    assert plan.status["phase"] == "Progressing"
    assert plan.status["failedChecks"] == 1
    assert plan.status["canaryWeight"] == 10  # held, not advanced
    assert "CheckFailed" in reasons(plan)

    plan = reconcile(s, plan.status, at(2), results=failing_ttft, live={"v1": 90, "v2": 10})
    assert plan.status["phase"] == "Failed"
    assert plan.status["failedChecks"] == 2
    assert plan.status["candidateVersion"] == "v2"
    assert plan.verdict.state == "Stalled"
    assert vm_weights(plan) == {"llama-v1": 100}
    rollback = next(e for e in plan.events if e.reason == "RolledBack")
    assert rollback.type == "Warning"
    assert "ttft=2.5" in rollback.message and "> max 0.5" in rollback.message
    assert plan.retire == []  # still routed by the live VirtualModel

    after = reconcile(s, plan.status, at(3), live={"v1": 100})
    assert after.status["phase"] == "Failed"
    assert after.retire == ["v2"]
    assert after.analysis is None
    assert names(after, "InferenceService") == ["llama-v1"]


def test_no_data_is_a_failed_check() -> None:
    s = spec()
    plan = reconcile(s, None, T0)
    plan = reconcile(s, plan.status, at(1), results=no_data)
    assert plan.status["failedChecks"] == 1
    assert plan.status["lastResults"][0] == {"name": "ttft", "stableValue": 0.1, "passed": False,
                                             "message": "no data"}


def test_relative_to_stable_threshold_in_a_rollout() -> None:
    s = spec(analysis={"interval": "1m", "threshold": 1, "stepWeights": [10, 50],
                       "metrics": [{"name": "ttft", "builtin": "TimeToFirstTokenP95", "maxRelativeToStable": 1.2}]})

    def slower(request: AnalysisRequest) -> list[MetricResult]:
        return [evaluate(m, 0.15, 0.1) for m in request.metrics]

    plan = reconcile(s, None, T0)
    plan = reconcile(s, plan.status, at(1), results=slower)
    assert plan.status["phase"] == "Failed"
    assert "maxRelativeToStable" in plan.status["lastResults"][0]["message"]


def test_candidate_not_ready_during_analysis_fails_the_check() -> None:
    s = spec()
    plan = reconcile(s, None, T0)
    plan = reconcile(s, plan.status, at(1), ready=("v1",))
    assert plan.status["failedChecks"] == 1
    assert any(r["name"] == "candidate-ready" for r in plan.status["lastResults"])


# --- promotion, pause, abort ------------------------------------------------------------------------------

def test_manual_promotion_waits_for_the_stable_pointer() -> None:
    s = spec(analysis={"interval": "1m", "stepWeights": [10, 50], "promotion": "Manual"})
    plan = reconcile(s, None, T0)
    plan = reconcile(s, plan.status, at(1))
    plan = reconcile(s, plan.status, at(2))
    assert plan.status["phase"] == "WaitingPromotion"
    assert plan.status["canaryWeight"] == 50
    assert plan.verdict.reason == "WaitingPromotion"
    waiting = reconcile(s, plan.status, at(30))
    assert waiting.status == plan.status and waiting.analysis is None

    promoted_spec = spec(stable={"version": "v2", "storageUri": "hf://org/m@2"}, canary=None,
                         analysis={"interval": "1m", "stepWeights": [10, 50], "promotion": "Manual"})
    promoted = reconcile(promoted_spec, plan.status, at(31), live={"v1": 50, "v2": 50})
    assert promoted.status["phase"] == "Promoting"
    assert promoted.status["stableVersion"] == "v2"
    assert vm_weights(promoted) == {"llama-v2": 100}
    done = reconcile(promoted_spec, promoted.status, at(32), live={"v2": 100})
    assert done.status["phase"] == "Succeeded"
    assert done.retire == ["v1"]


def test_pause_freezes_and_resume_continues() -> None:
    s = spec()
    plan = reconcile(s, None, T0)
    paused = reconcile(spec(paused=True), plan.status, at(5))
    assert paused.status["phase"] == "Paused"
    assert paused.analysis is None
    assert paused.status["canaryWeight"] == 10
    assert vm_weights(paused) == {"llama-v1": 90, "llama-v2": 10}
    assert "Paused" in reasons(paused)
    still = reconcile(spec(paused=True), paused.status, at(6))
    assert still.status == paused.status and still.events == []

    resumed = step(s, paused.status, applied(s, paused.status), at(7))
    assert resumed.status["phase"] == "Progressing"
    assert resumed.analysis is not None
    resumed = reconcile(s, paused.status, at(7))
    assert resumed.status["canaryWeight"] == 50
    assert "Resumed" in reasons(resumed)


def test_abort_by_removing_the_canary() -> None:
    plan = reconcile(spec(), None, T0)
    aborted = reconcile(spec(canary=None), plan.status, at(0.5), live={"v1": 90, "v2": 10})
    assert aborted.status["phase"] == "Succeeded"
    assert "candidateVersion" not in aborted.status
    assert vm_weights(aborted) == {"llama-v1": 100}
    assert "Aborted" in reasons(aborted)
    gone = reconcile(spec(canary=None), aborted.status, at(1), live={"v1": 100})
    assert gone.retire == ["v2"]


def test_webhooks_pre_rollout_then_rollout_and_pre_promotion() -> None:
    hooks = [{"name": "evals", "type": "PreRollout", "url": "http://evals.llm/run"},
             {"name": "load", "type": "Rollout", "url": "http://load.llm/"},
             {"name": "gate", "type": "PrePromotion", "url": "http://gate.llm/"},
             {"name": "notify", "type": "PostRollout", "url": "http://chat.llm/"}]
    s = spec(analysis={"interval": "1m", "stepWeights": [10, 50], "webhooks": hooks})
    first = step(s, None, world(), T0)
    assert first.analysis is not None
    assert first.analysis.purpose == "PreRollout"
    assert [w.name for w in first.analysis.webhooks] == ["evals"]
    refused = step(s, None, world(analysis=[MetricResult(name="webhook/evals", passed=False, message="500")]), T0)
    assert refused.status["phase"] == "Initializing"
    assert refused.status["failedChecks"] == 1
    plan = reconcile(s, None, T0, results=lambda r: [])
    assert plan.status["phase"] == "Progressing"
    mid = step(s, plan.status, applied(s, plan.status), at(1))
    assert mid.analysis is not None and [w.name for w in mid.analysis.webhooks] == ["load"]
    plan = reconcile(s, plan.status, at(1), results=lambda r: [])
    last = step(s, plan.status, applied(s, plan.status), at(2))
    assert last.analysis is not None and [w.name for w in last.analysis.webhooks] == ["load", "gate"]
    done = reconcile(s, plan.status, at(2), results=lambda r: [])
    assert [w.name for w in done.post_rollout] == ["notify"]


def inference_service_spec(plan: RolloutPlan, name: str) -> dict[str, Any]:
    isvc = next(c.body for c in plan.children if c.name == name and c.rtype.kind == "InferenceService")
    return dict(isvc["spec"])


def test_a_canary_is_sized_by_its_own_overrides_and_the_stable_keeps_the_template() -> None:
    resources = {"requests": {"cpu": "2", "memory": "8Gi"},
                 "limits": {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": 1}}
    template = {"predictor": {"minReplicas": 2, "maxReplicas": 4,
                              "model": {"modelFormat": {"name": "huggingface"}, "resources": resources}}}
    s = spec(inferenceService={"template": template},
             canary={"version": "v2", "storageUri": "hf://org/m@2", "replicas": 1,
                     "resources": {"requests": {"cpu": "500m", "memory": "2Gi"}, "limits": {"memory": "2Gi"}}})
    plan = step(s, None, world(), T0)

    stable = inference_service_spec(plan, "llama-v1")["predictor"]
    assert (stable["minReplicas"], stable["maxReplicas"]) == (2, 4)
    assert stable["model"]["resources"] == resources

    canary = inference_service_spec(plan, "llama-v2")["predictor"]
    assert (canary["minReplicas"], canary["maxReplicas"]) == (1, 1)
    # Key by key over the template: the cpu limit and the GPU the canary does not name are the template's.
    assert canary["model"]["resources"] == {"requests": {"cpu": "500m", "memory": "2Gi"},
                                            "limits": {"cpu": "2", "memory": "2Gi", "nvidia.com/gpu": 1}}
    assert canary["model"]["storageUri"] == "hf://org/m@2"
    assert resources["limits"]["memory"] == "8Gi"  # the template itself is left as it is


def test_a_variant_is_sized_by_its_own_overrides() -> None:
    s = spec(strategy="Weighted", canary=None, analysis=None,
             variants=[{"version": "v1", "weight": 90},
                       {"version": "v2", "weight": 10, "replicas": 3, "resources": {"limits": {"cpu": "1"}}}])
    plan = step(s, None, world(), T0)
    assert "minReplicas" not in inference_service_spec(plan, "llama-v1")["predictor"]
    variant = inference_service_spec(plan, "llama-v2")["predictor"]
    assert (variant["minReplicas"], variant["maxReplicas"], variant["model"]["resources"]) == (
        3, 3, {"limits": {"cpu": "1"}})


def test_version_sizing_is_validated_like_the_template() -> None:
    for bad in ({"replicas": 0}, {"replicas": 1001}, {"resources": {"limits": {"cpu": "1"}, "other": {}}}):
        with pytest.raises(pydantic.ValidationError):
            spec(canary={"version": "v2", **bad})


# --- the other strategies ---------------------------------------------------------------------------------

def test_weighted_variants_apply_at_once() -> None:
    s = spec(strategy="Weighted", canary=None, analysis=None,
             variants=[{"version": "v1", "weight": 70}, {"version": "v2", "weight": 20, "storageUri": "hf://b"},
                       {"version": "v3", "weight": 10, "storageUri": "hf://c"}])
    plan = step(s, None, world(ready=("v1", "v2", "v3")), T0)
    weights = vm_weights(plan)
    assert weights == {"llama-v1": 70, "llama-v2": 20, "llama-v3": 10}
    assert sum(weights.values()) == 100
    assert plan.analysis is None
    assert plan.status["phase"] == "Succeeded"
    assert names(plan, "InferenceService") == ["llama-v1", "llama-v2", "llama-v3"]

    reweighted = spec(strategy="Weighted", canary=None, analysis=None,
                      variants=[{"version": "v1", "weight": 60}, {"version": "v2", "weight": 40}])
    again = step(reweighted, plan.status, world(ready=("v1", "v2", "v3"), live=weights_by_version(weights)), T0)
    assert vm_weights(again) == {"llama-v1": 60, "llama-v2": 40}
    assert again.retire == []  # v3 still routed by the live VirtualModel
    drained = step(reweighted, again.status, world(ready=("v1", "v2", "v3"), live={"v1": 60, "v2": 40}), T0)
    assert drained.retire == ["v3"]


def weights_by_version(weights: dict[str, int]) -> dict[str, int]:
    return {k.removeprefix("llama-"): v for k, v in weights.items()}


def test_blue_green_switches_atomically_after_iterations() -> None:
    s = spec(strategy="BlueGreen", analysis={"interval": "1m", "iterations": 2,
                                             "metrics": [{"name": "errors", "builtin": "ErrorRate", "max": 0.2}]})
    plan = reconcile(s, None, T0)
    assert plan.status["phase"] == "Progressing"
    assert vm_weights(plan) == {"llama-v1": 100}
    assert names(plan, "InferenceService") == ["llama-v1", "llama-v2"]  # candidate at full scale, no traffic
    plan = reconcile(s, plan.status, at(1))
    assert plan.status["iterations"] == 1
    assert vm_weights(plan) == {"llama-v1": 100}
    plan = reconcile(s, plan.status, at(2), live={"v1": 100})
    assert plan.status["stableVersion"] == "v2"
    assert vm_weights(plan) == {"llama-v2": 100}


def test_ab_test_routes_matching_requests_to_the_candidate() -> None:
    match = [{"headers": [{"name": "x-canary", "value": "true"}]}]
    s = spec(strategy="ABTest", analysis={"interval": "1m", "iterations": 3, "match": match})
    plan = reconcile(s, None, T0)
    vm = next(c.body for c in plan.children if c.rtype.kind == "VirtualModel")
    assert vm["spec"]["backends"] == [
        {"name": "llama-v1", "modelNameOverride": "llama-3-v1", "weight": 100},
        {"name": "llama-v2", "modelNameOverride": "llama-3-v2", "weight": 1, "matches": match},
    ]


def test_brownfield_ref_is_the_stable_and_is_cloned() -> None:
    existing = {"metadata": {"name": "llama-prod"},
                "spec": {"predictor": {"model": {"storageUri": "hf://org/m@1",
                                                 "args": ["--model_name=llama-prod"]}}}}
    s = spec(inferenceService={"ref": {"name": "llama-prod"}})
    w = TrafficWorld(namespace="llm", name="llama", ref_inference_service=existing,
                     versions={"v1": ObservedVersion(ready=True), "v2": ObservedVersion(ready=True)})
    plan = step(s, None, w, T0)
    assert names(plan, "InferenceService") == ["llama-v2"]  # the referenced one is never written
    clone = next(c.body for c in plan.children if c.rtype.kind == "InferenceService")
    assert clone["spec"]["predictor"]["model"] == {"storageUri": "hf://org/m@2", "args": ["--model_name=llama-3-v2"]}
    backend = next(c.body for c in plan.children if c.name == "llama-v1" and c.rtype.kind != "InferenceService")
    assert backend["spec"]["endpoint"] == {"inferenceService": {"name": "llama-prod"}}
    assert plan.status["versions"][0]["inferenceService"] == "llama-prod"
    vm = next(c.body for c in plan.children if c.rtype.kind == "VirtualModel")
    assert vm["spec"]["backends"][0]["modelNameOverride"] == "llama-prod"


def test_live_weights_from_virtual_model() -> None:
    vm = {"spec": {"backends": [{"name": "llama-v1", "weight": 90}, {"name": "llama-v2", "weight": 10},
                                {"name": "other"}]}}
    assert live_weights_from_virtual_model(vm, "llama") == {"v1": 90, "v2": 10}
    assert live_weights_from_virtual_model(None, "llama") is None


# --- determinism and restart safety -----------------------------------------------------------------------

def test_step_is_idempotent() -> None:
    s = spec()
    plan = reconcile(s, None, T0)
    results = passing(step(s, plan.status, applied(s, plan.status), at(1)).analysis or _missing())
    w = applied(s, plan.status, analysis=results)
    a = step(s, plan.status, w, at(1))
    b = step(s, plan.status, w, at(1))
    assert a == b
    assert a.status["canaryWeight"] == 50
    # The same call with the status it returned (e.g. after a restart): no second advance.
    c = step(s, a.status, w, at(1))
    assert c.status == {k: v for k, v in a.status.items() if k != "pendingEvents"}  # the outbox is not repeated
    assert c.analysis is None
    assert c.events == []
    # Status round-trips through the model.
    d = step(s, _as_model(a.status), w, at(1))
    assert d.status == c.status


def _missing() -> AnalysisRequest:
    raise AssertionError("an analysis was expected")


def _as_model(status: dict[str, Any]) -> Any:
    from model_traffic.kinds.trafficconfig.spec import TrafficConfigStatus
    return TrafficConfigStatus.model_validate(status)


def test_metric_spec_type_is_shared() -> None:
    # The request hands the reconciler the spec's own Metric objects.
    status = reconcile(spec(), None, T0).status
    plan = step(spec(), status, applied(spec(), status), at(1))
    assert plan.analysis is not None and isinstance(plan.analysis.metrics[0], Metric)


# --- a held canary weight (spec.canary.weight) ------------------------------------------------------------

def test_held_canary_weight_goes_to_the_weight_then_waits_for_a_person() -> None:
    held = spec(canary={"version": "v2", "storageUri": "hf://org/m@2", "weight": 20})
    assert step_weights(held) == [20]
    started = reconcile(held, None, at(0))
    assert started.status["canaryWeight"] == 20
    assert vm_weights(started) == {"llama-v1": 80, "llama-v2": 20}
    checked = reconcile(held, started.status, at(1))
    assert checked.status["phase"] == "WaitingPromotion"  # never promoted automatically
    assert vm_weights(checked) == {"llama-v1": 80, "llama-v2": 20}


def test_changing_the_held_weight_moves_traffic_at_once() -> None:
    held = spec(canary={"version": "v2", "storageUri": "hf://org/m@2", "weight": 20})
    waiting = reconcile(held, reconcile(held, None, at(0)).status, at(1))
    moved = spec(canary={"version": "v2", "storageUri": "hf://org/m@2", "weight": 60})
    plan = reconcile(moved, waiting.status, at(1.1))
    assert plan.status["canaryWeight"] == 60
    assert vm_weights(plan) == {"llama-v1": 40, "llama-v2": 60}
    assert [e.reason for e in plan.events] == ["WeightChanged"]


def test_a_failing_held_canary_still_rolls_back() -> None:
    held = spec(canary={"version": "v2", "storageUri": "hf://org/m@2", "weight": 20},
                analysis={"interval": "1m", "threshold": 1,
                          "metrics": [{"name": "ttft", "builtin": "TimeToFirstTokenP95", "max": 0.5}]})
    started = reconcile(held, None, at(0))
    failed = reconcile(held, started.status, at(1), results=failing_ttft)
    assert failed.status["phase"] == "Failed"
    assert vm_weights(failed) == {"llama-v1": 100}


# --- when to come back ------------------------------------------------------------------------------------

def test_requeue_after_is_the_time_to_the_next_check() -> None:
    started = reconcile(spec(), None, at(0))
    assert started.requeue_after == 60
    later = reconcile(spec(), started.status, at(0.5))
    assert later.requeue_after == 30
    waiting_for_readiness = reconcile(spec(), None, at(0), ready=("v1",))
    # The InferenceService's watch brings us back; the progress deadline (600s by default) at the latest.
    assert waiting_for_readiness.requeue_after == 600


# --- Git holds the desired release (spec.release); the status holds the stable (issue #14 item 1) -------------

V1 = {"version": "v1", "storageUri": "hf://org/m@1", "replicas": 4}
V2 = {"version": "v2", "storageUri": "hf://org/m@2", "replicas": 4}


def release(version: dict[str, Any], **fields: Any) -> TrafficConfigSpec:
    """The spec as Git holds it: the desired release only."""
    return spec(release=version, stable=None, canary=None, **fields)


def test_the_first_release_is_stable_at_once() -> None:
    waiting = step(release(V1), None, world(ready=()), T0)
    assert waiting.status["phase"] == "Initializing" and "candidateVersion" not in waiting.status
    done = reconcile(release(V1), waiting.status, at(0))
    assert done.status["phase"] == "Succeeded" and done.status["stableVersion"] == "v1"
    assert done.status["stable"] == V1  # in full: Git holds only the desired release
    assert vm_weights(done) == {"llama-v1": 100}
    assert inference_service_spec(done, "llama-v1")["predictor"]["minReplicas"] == 4


def promoted_release() -> RolloutPlan:
    """v1 stable, then a commit of release v2 that passes its analysis: the status says v2 is stable."""
    plan = reconcile(release(V1), None, T0)
    plan = reconcile(release(V2), plan.status, at(1), live={"v1": 100})
    assert plan.status["phase"] == "Progressing" and plan.status["candidateVersion"] == "v2"
    assert plan.status["stable"] == V1 and plan.status["candidate"] == V2
    assert vm_weights(plan) == {"llama-v1": 90, "llama-v2": 10}
    # Both run at the release's size: the stable from status.stable, the candidate from spec.release.
    assert inference_service_spec(plan, "llama-v1")["predictor"]["model"]["storageUri"] == "hf://org/m@1"
    plan = reconcile(release(V2), plan.status, at(2))
    plan = reconcile(release(V2), plan.status, at(3), live={"v1": 50, "v2": 50})
    assert plan.status["stableVersion"] == "v2" and "Promoted" in reasons(plan)
    return reconcile(release(V2), plan.status, at(3.1), live={"v2": 100})


def test_a_new_release_rolls_out_from_the_stable_in_status_and_stays_stable_without_a_commit() -> None:
    done = promoted_release()
    assert done.status["phase"] == "Succeeded"
    assert done.status["stable"] == V2 and "candidate" not in done.status
    assert done.retire == ["v1"]
    # Git says release v2, as it did all along: a sync changes nothing, and nothing goes back to v1.
    later = reconcile(release(V2), done.status, at(30), live={"v2": 100})
    assert later.status == done.status and later.events == [] and vm_weights(later) == {"llama-v2": 100}
    assert names(later, "InferenceService") == ["llama-v2"]
    # The same version with another size changes the stable in place (no rollout).
    resized = reconcile(release({**V2, "replicas": 6}), done.status, at(31), live={"v2": 100})
    assert resized.status["phase"] == "Succeeded" and resized.status["stable"]["replicas"] == 6
    assert inference_service_spec(resized, "llama-v2")["predictor"]["minReplicas"] == 6


def test_a_failed_release_stays_rolled_back_in_git_until_a_retry_or_a_new_release() -> None:
    plan = reconcile(release(V1), None, T0)
    plan = reconcile(release(V2), plan.status, at(1), live={"v1": 100})
    plan = reconcile(release(V2), plan.status, at(2), results=failing_ttft)
    failed = reconcile(release(V2), plan.status, at(3), results=failing_ttft, live={"v1": 90, "v2": 10})
    assert failed.status["phase"] == "Failed" and failed.verdict.reason == "RolledBack"
    assert failed.status["stableVersion"] == "v1" and failed.status["stable"] == V1
    assert vm_weights(failed) == {"llama-v1": 100}
    assert "change spec.release, or model-traffic retry" in failed.verdict.message
    # Git still names v2: a sync of it keeps the rollback.
    synced = reconcile(release(V2), failed.status, at(10), live={"v1": 100})
    assert synced.status["phase"] == "Failed" and vm_weights(synced) == {"llama-v1": 100}
    assert synced.retire == ["v2"]
    # A retry request starts it again from its first step.
    retried = reconcile(release(V2), {**synced.status, "requests": {"retry": "2025-01-01T12:11:00Z"}}, at(11),
                        live={"v1": 100})
    assert retried.status["phase"] == "Progressing" and vm_weights(retried) == {"llama-v1": 90, "llama-v2": 10}
    # Or Git goes back to the stable: the failed rollout ends, nothing moves.
    reverted = reconcile(release(V1), synced.status, at(12), live={"v1": 100})
    assert reverted.status["phase"] == "Succeeded" and "candidateVersion" not in reverted.status
    assert vm_weights(reverted) == {"llama-v1": 100} and "Aborted" not in reasons(reverted)
    # Or a new release rolls out from the stable.
    v3 = reconcile(release({**V2, "version": "v3"}), synced.status, at(13), live={"v1": 100}, ready=("v1", "v3"))
    assert v3.status["candidateVersion"] == "v3" and v3.status["stableVersion"] == "v1"


def test_manual_promotion_of_a_release_is_a_request_and_git_needs_no_change() -> None:
    manual = {"interval": "1m", "stepWeights": [10], "promotion": "Manual"}
    plan = reconcile(release(V1, analysis=manual), None, T0)
    plan = reconcile(release(V2, analysis=manual), plan.status, at(1), live={"v1": 100})
    plan = reconcile(release(V2, analysis=manual), plan.status, at(2))
    assert plan.status["phase"] == "WaitingPromotion"
    assert plan.verdict.message.endswith("model-traffic promote llama")  # no spec field to edit
    asked = {**plan.status, "requests": {"promote": "2025-01-01T12:03:00Z"}}
    promoted = reconcile(release(V2, analysis=manual), asked, at(3), live={"v1": 90, "v2": 10})
    assert promoted.status["stableVersion"] == "v2" and promoted.status["stable"] == V2
    done = reconcile(release(V2, analysis=manual), promoted.status, at(4), live={"v2": 100})
    assert done.status["phase"] == "Succeeded" and vm_weights(done) == {"llama-v2": 100}


def test_a_held_release_weight_holds_the_candidate() -> None:
    plan = reconcile(release(V1), None, T0)
    held = reconcile(release({**V2, "weight": 30}), plan.status, at(1), live={"v1": 100})
    assert held.status["canaryWeight"] == 30 and held.status["candidate"] == V2  # the weight is the candidate's
    moved = reconcile(release({**V2, "weight": 40}), held.status, at(1.5))
    assert moved.status["canaryWeight"] == 40 and "WeightChanged" in reasons(moved)
    assert "spec.release.weight" in next(e.message for e in moved.events if e.reason == "WeightChanged")


def test_the_stable_canary_form_moved_to_a_release_mid_rollout_continues_where_it_is() -> None:
    """docs/upgrade.md: an object in the deprecated form, mid-rollout, rewritten to spec.release (the candidate's
    entry), keeps its traffic and its step; it neither restarts nor reverts."""
    legacy = spec(stable=V1, canary=V2)
    plan = reconcile(legacy, None, T0)
    plan = reconcile(legacy, plan.status, at(1))
    assert plan.status["canaryWeight"] == 50 and plan.status["stable"] == V1 and plan.status["candidate"] == V2
    moved = reconcile(release(V2), plan.status, at(1.5))
    assert moved.status == plan.status and moved.events == []
    assert vm_weights(moved) == vm_weights(plan) == {"llama-v1": 50, "llama-v2": 50}
    assert [(c.name, c.body["spec"]) for c in moved.children] == [(c.name, c.body["spec"]) for c in plan.children]
    done = reconcile(release(V2), moved.status, at(2), live={"v1": 50, "v2": 50})
    assert done.status["stableVersion"] == "v2" and done.status["stable"] == V2
    assert reconcile(release(V2), done.status, at(3), live={"v2": 100}).status["phase"] == "Succeeded"


def test_a_status_without_the_stable_definition_keeps_the_version() -> None:
    """A status written before status.stable existed: the stable keeps its version (docs/upgrade.md has the move
    wait until the operator recorded the definition)."""
    plan = reconcile(spec(stable=V1, canary=None), None, T0)
    old = {k: v for k, v in plan.status.items() if k not in ("stable", "candidate")}
    moved = step(release(V2), old, applied(release(V2), old), at(1))
    assert moved.status["stableVersion"] == "v1" and moved.status["candidateVersion"] == "v2"


def test_weighted_with_a_release_names_the_stable_variant() -> None:
    s = release({"version": "v1"}, strategy="Weighted", variants=[{"version": "v1", "weight": 70},
                                                                   {"version": "v2", "weight": 30}],
                analysis=None)
    plan = reconcile(s, None, T0)
    assert plan.status["stableVersion"] == "v1" and plan.status["stable"] == {"version": "v1"}
    assert vm_weights(plan) == {"llama-v1": 70, "llama-v2": 30}


# --- the progress deadline (spec.progressDeadlineSeconds) -------------------------------------------------------

def test_a_candidate_never_ready_is_stalled_at_the_progress_deadline_naming_what_it_waits_for() -> None:
    s = spec(progressDeadlineSeconds=300)
    waiting = reconcile(s, None, at(0), ready=("v1",))
    assert waiting.status["phase"] == "Initializing"
    assert waiting.status["lastProgressTime"] == "2025-01-01T12:00:00Z"
    assert waiting.verdict.state == "Progressing"
    assert waiting.requeue_after == 300
    still = reconcile(s, waiting.status, at(4), ready=("v1",))
    assert still.verdict.state == "Progressing" and still.requeue_after == 60
    assert still.status == waiting.status  # no progress, nothing written
    late = reconcile(s, waiting.status, at(5), ready=("v1",))
    assert late.verdict.state == "Stalled" and late.verdict.reason == "ProgressDeadlineExceeded"
    assert "no progress in 300s" in late.verdict.message and "InferenceService llama-v2" in late.verdict.message
    assert late.status["phase"] == "Initializing"  # without the opt-in it keeps waiting
    assert vm_weights(late) == {"llama-v1": 100}
    # It heals by itself: the candidate gets Ready, the rollout starts and the clock starts again.
    healed = reconcile(s, late.status, at(6))
    assert healed.status["phase"] == "Progressing" and healed.verdict.state == "Progressing"
    assert healed.status["lastProgressTime"] == "2025-01-01T12:06:00Z"


def test_with_progress_deadline_abort_the_candidate_is_rolled_back_with_the_reason() -> None:
    s = spec(progressDeadlineSeconds=300, progressDeadlineAbort=True)
    waiting = reconcile(s, None, at(0), ready=("v1",))
    rolled = reconcile(s, waiting.status, at(5), ready=("v1",))
    assert rolled.status["phase"] == "Failed"
    assert rolled.verdict.state == "Stalled" and rolled.verdict.reason == "ProgressDeadlineExceeded"
    assert "rolled back" in rolled.verdict.message and "no progress in 300s" in rolled.verdict.message
    assert "InferenceService llama-v2 not found" in rolled.verdict.message
    assert "ProgressDeadlineExceeded" in reasons(rolled)
    assert vm_weights(rolled) == {"llama-v1": 100}
    # It stays rolled back (and says why) until a retry or a new candidate.
    later = reconcile(s, rolled.status, at(30), ready=("v1",))
    assert later.status["phase"] == "Failed" and later.verdict.reason == "ProgressDeadlineExceeded"
    retried = reconcile(s, {**later.status, "requests": {"retry": "2025-01-01T12:31:00Z"}}, at(31))
    assert retried.status["phase"] == "Progressing" and retried.verdict.reason == "Progressing"


def test_checks_without_data_hit_the_deadline_but_a_check_not_yet_due_does_not() -> None:
    # A long interval: waiting for the next check is waiting on the clock, not a lack of progress.
    slow = spec(progressDeadlineSeconds=60, analysis={"interval": "10m", "threshold": 100, "stepWeights": [10, 50],
                "metrics": [{"name": "ttft", "builtin": "TimeToFirstTokenP95", "max": 0.5}]})
    plan = reconcile(slow, None, at(0))
    assert reconcile(slow, plan.status, at(9)).verdict.reason == "Progressing"
    # Checks without data (below the threshold) are no progress: the deadline counts from the first one.
    failed = reconcile(slow, plan.status, at(10), results=no_data)
    assert failed.status["failedChecks"] == 1 and failed.verdict.reason == "Progressing"
    stuck = reconcile(slow, failed.status, at(11.5))
    assert stuck.verdict.reason == "ProgressDeadlineExceeded"
    assert "ttft=none (no data)" in stuck.verdict.message
    # A passed check is progress.
    passed = reconcile(slow, failed.status, at(20))
    assert passed.status["canaryWeight"] == 50 and passed.verdict.reason == "Progressing"


def test_paused_and_waiting_promotion_never_time_out() -> None:
    s = spec(progressDeadlineSeconds=60, paused=True)
    plan = reconcile(spec(progressDeadlineSeconds=60), None, at(0))
    paused = reconcile(s, plan.status, at(0.5))
    assert reconcile(s, paused.status, at(100)).verdict.reason == "Paused"
    manual = spec(progressDeadlineSeconds=60, analysis={"interval": "1m", "stepWeights": [10],
                                                         "promotion": "Manual"})
    waiting = reconcile(manual, reconcile(manual, None, at(0)).status, at(1))
    assert waiting.status["phase"] == "WaitingPromotion"
    later = reconcile(manual, waiting.status, at(100))
    assert later.verdict.reason == "WaitingPromotion" and later.requeue_after is None


def test_the_progress_deadline_has_bounds() -> None:
    for seconds in (29, 86401):
        with pytest.raises(pydantic.ValidationError):
            spec(progressDeadlineSeconds=seconds)
    assert spec().progress_deadline_seconds == 600 and not spec().progress_deadline_abort


# --- Weighted: each variant measured at each interval, compared with the stable -----------------------------

def test_weighted_measures_every_variant_at_each_interval_without_gating() -> None:
    mixed = spec(strategy="Weighted", canary=None, variants=[{"version": "v1", "weight": 70},
                                                             {"version": "v2", "weight": 30}],
                 analysis={"interval": "1m", "metrics": [{"name": "ttft", "builtin": "TimeToFirstTokenP95",
                                                          "maxRelativeToStable": 1.2}]})
    # The first measurement waits for the variants' weights to be live for an interval.
    assert step(mixed, None, world(), at(0)).analysis is None
    start = reconcile(mixed, None, at(0))
    assert start.status["trafficSince"] == "2025-01-01T12:00:00Z"
    assert step(mixed, start.status, applied(mixed, start.status), at(0.5)).analysis is None
    first = step(mixed, start.status, applied(mixed, start.status), at(1))
    assert first.analysis is not None and first.analysis.purpose == "Observe"
    assert [t.version for t in first.analysis.variants] == ["v1", "v2"]
    assert [t.served_model for t in first.analysis.variants] == ["llama-3-v1", "llama-3-v2"]
    measured = {"v1": [evaluate(first.analysis.metrics[0], 0.2, 0.2)],
                "v2": [evaluate(first.analysis.metrics[0], 0.5, 0.2)]}  # v2 is slower: reported, not acted on
    plan = reconcile(mixed, start.status, at(1), variant_results=measured)
    assert plan.analysis is None
    assert plan.status["phase"] == "Succeeded"
    by_version = {v["version"]: v for v in plan.status["versions"]}
    assert by_version["v2"]["metrics"] == [{"name": "ttft", "value": 0.5, "stableValue": 0.2, "passed": False,
                                            "message": by_version["v2"]["metrics"][0]["message"]}]
    assert by_version["v1"]["weight"] == 70 and by_version["v2"]["weight"] == 30
    assert vm_weights(plan) == {"llama-v1": 70, "llama-v2": 30}
    assert plan.requeue_after == 60
    # Not due again until the interval has passed; the measurements stay in status meanwhile.
    later = step(mixed, plan.status, applied(mixed, plan.status), at(1.5))
    assert later.analysis is None
    assert {v["version"]: v.get("metrics") for v in later.status["versions"]} == {
        v["version"]: v.get("metrics") for v in plan.status["versions"]}
    assert step(mixed, plan.status, applied(mixed, plan.status), at(2)).analysis is not None


# --- restart-safe stepping (issue #12, item 1) ----------------------------------------------------------

def test_a_status_ahead_of_the_virtual_model_applies_the_recorded_step_first() -> None:
    """A crash after step 2 (weight 50) was recorded and before the VirtualModel changed; the restart comes long
    after the interval: the next reconcile applies weight 50 and judges nothing, the interval starts once the
    VirtualModel carries 50, and only then is the check of weight 50 due."""
    s = spec(analysis={"interval": "1m", "stepWeights": [10, 50, 80],
                       "metrics": [{"name": "ttft", "builtin": "TimeToFirstTokenP95", "max": 0.5}]})
    started = reconcile(s, None, T0)
    ahead = step(s, started.status, applied(s, started.status, analysis=[]), at(1))
    assert ahead.status["canaryWeight"] == 50 and "trafficSince" not in ahead.status
    behind = settled_vm(recorded_traffic(s, started.status, world()))  # the live VirtualModel still at 10
    restarted = step(s, ahead.status, world(virtual_model=behind), at(30))
    assert restarted.analysis is None, "no check judges weight 50 before it carried traffic"
    assert restarted.status["canaryWeight"] == 50 and vm_weights(restarted) == {"llama-v1": 50, "llama-v2": 50}
    # The VirtualModel takes the weight but its controller has not acted on it yet: still not started.
    unsettled = step(s, restarted.status, world(virtual_model=live_vm(restarted, observed_generation=0)), at(30.5))
    assert "trafficSince" not in unsettled.status and unsettled.analysis is None
    live = step(s, restarted.status, world(virtual_model=live_vm(restarted)), at(31))
    assert live.status["trafficSince"] == "2025-01-01T12:31:00Z" and live.analysis is None
    assert step(s, live.status, world(virtual_model=live_vm(restarted)), at(31.9)).analysis is None
    check = step(s, live.status, world(virtual_model=live_vm(restarted)), at(32))
    assert check.analysis is not None and check.analysis.interval == "1m"


def test_live_traffic_that_differs_from_the_step_restarts_its_interval() -> None:
    s = spec()
    plan = reconcile(s, None, T0)
    edited = settled_vm([{"name": "llama-v1", "weight": 100, "modelNameOverride": "llama-3-v1"}])
    drifted = step(s, plan.status, world(virtual_model=edited), at(2))
    assert "trafficSince" not in drifted.status and drifted.analysis is None
    assert vm_weights(drifted) == {"llama-v1": 90, "llama-v2": 10}  # restored


def test_a_metric_window_longer_than_the_interval_waits_until_it_lies_within_the_step() -> None:
    s = spec(analysis={"interval": "1m", "stepWeights": [10, 50], "metrics": [
        {"name": "ttft", "builtin": "TimeToFirstTokenP95", "max": 0.5, "interval": "5m"}]})
    plan = reconcile(s, None, T0)
    assert step(s, plan.status, applied(s, plan.status), at(4)).analysis is None
    assert step(s, plan.status, applied(s, plan.status), at(5)).analysis is not None


@pytest.mark.parametrize("strategy", ["ABTest", "BlueGreen"])
def test_ab_and_blue_green_checks_wait_for_their_traffic(strategy: str) -> None:
    s = spec(strategy=strategy, analysis={"interval": "1m", "iterations": 2,
                                          "match": [{"headers": [{"name": "x-beta", "value": "1"}]}],
                                          "metrics": [{"name": "ttft", "builtin": "TimeToFirstTokenP95",
                                                       "max": 0.5}]})
    started = step(s, None, world(), T0)
    assert started.status["phase"] == "Progressing"
    # The candidate's match route is recorded, not yet live: nothing is judged, however late.
    assert step(s, started.status, world(), at(10)).analysis is None
    live = step(s, started.status, applied(s, started.status), at(10))
    assert live.status["trafficSince"] == "2025-01-01T12:10:00Z"
    assert step(s, live.status, applied(s, live.status), at(11)).analysis is not None


# --- make before break and no orphans (items 2 and 3) -----------------------------------------------------

def promoted(s: TrafficConfigSpec) -> RolloutPlan:
    plan = reconcile(s, None, T0)
    plan = reconcile(s, plan.status, at(1))
    return reconcile(s, plan.status, at(2), live={"v1": 50, "v2": 50})


def test_a_version_out_of_the_virtual_model_waits_for_the_route_to_drop_it() -> None:
    s = spec()
    plan = promoted(s)
    assert plan.status["phase"] == "Promoting"
    on_route = reconcile(s, plan.status, at(2.1), live={"v2": 100},
                         route_references=frozenset({"llama-v1", "llama-v2"}))
    assert on_route.retire == [] and on_route.status["phase"] == "Promoting"
    assert on_route.requeue_after == 1.0  # the route's changes wake the VirtualModel, not us
    unreported = reconcile(s, plan.status, at(2.1), live={"v2": 100}, route_references=frozenset({"llama-v2"}),
                           route_settled=False)
    assert unreported.retire == []
    gone = reconcile(s, plan.status, at(2.1), live={"v2": 100}, route_references=frozenset({"llama-v2"}))
    assert gone.retire == ["v1"] and gone.status["phase"] == "Succeeded"


def test_a_backend_whose_inference_service_is_gone_is_still_retired() -> None:
    """A crash between deleting a version's InferenceService and its backend (the old order): the version is in
    neither the status nor the InferenceServices, only in what the TrafficConfig owns."""
    s = spec(canary=None)
    plan = reconcile(s, None, T0, ready=("v1",), owned_versions=frozenset({"v1", "v0"}))
    assert plan.retire == ["v0"]
    assert ("ManagedAIServiceBackend", "llama-v0") in [(t.kind, n) for t, n in plan.delete]


# --- events from the status (item 4) ---------------------------------------------------------------------

def test_events_are_recorded_with_the_progress_under_deterministic_names() -> None:
    s = spec()
    plan = step(s, None, world(), T0)
    pending = plan.status["pendingEvents"]
    assert [e["reason"] for e in pending] == ["RolloutStarted"]
    assert pending[0]["name"].startswith("llama.") and pending[0]["time"] == "2025-01-01T12:00:00.000000Z"
    assert step(s, None, world(), T0).status["pendingEvents"] == pending  # the same decision, the same name
    failed1 = reconcile(s, reconcile(s, None, T0).status, at(1), failing_ttft)
    first = step(s, failed1.status, applied(s, failed1.status, analysis=failing_ttft_results()), at(2))
    names = {e["reason"]: e for e in first.status["pendingEvents"]}
    assert names["RolledBack"]["count"] == 1
    # Two failed checks of one rollout are one Event with a series.
    again = step(s, reconcile(s, None, T0).status, applied(s, reconcile(s, None, T0).status,
                                                           analysis=failing_ttft_results()), at(1))
    assert [(e["reason"], e["count"]) for e in again.status["pendingEvents"]] == [("CheckFailed", 1)]


def failing_ttft_results() -> list[MetricResult]:
    return [evaluate(Metric(name="ttft", builtin="TimeToFirstTokenP95", max=0.5), 2.5, 0.1)]


# --- readiness reads the children (item 7, second bullet) --------------------------------------------------

def test_never_ready_while_the_virtual_model_or_a_backend_is_not() -> None:
    s = spec(canary=None)
    refused = ChildHealth(ready=False, stalled=True, message="ModelNameConflict: llama-3 is claimed by other")
    plan = step(s, None, world(ready=("v1",), virtual_model=LiveVirtualModel(frozenset(), refused)), T0)
    assert plan.status["phase"] == "Succeeded"
    assert (plan.verdict.state, plan.verdict.reason) == ("Stalled", "ChildNotReady")
    assert "ModelNameConflict" in plan.verdict.message
    waiting = ChildHealth(ready=False, message="InferenceServiceNotReady: ...")
    plan = step(s, None, world(ready=("v1",), backends={"v1": waiting}), T0)
    assert (plan.verdict.state, plan.verdict.reason) == ("Progressing", "ChildNotReady")
    assert step(s, None, world(ready=("v1",)), T0).verdict.state == "Ready"


# --- sizing leftovers of issue #13 -----------------------------------------------------------------------

def isvc_spec(plan: RolloutPlan, name: str) -> dict[str, Any]:
    return next(c.body["spec"] for c in plan.children if c.rtype.kind == "InferenceService" and c.name == name)


def test_a_promoted_canary_takes_the_stable_size() -> None:
    s = spec(stable={"version": "v1", "storageUri": "hf://org/m@1", "replicas": 4},
             canary={"version": "v2", "storageUri": "hf://org/m@2", "replicas": 1})
    plan = reconcile(s, None, T0)
    assert isvc_spec(plan, "llama-v2")["predictor"]["minReplicas"] == 1
    plan = promoted(s)
    assert plan.status["stableVersion"] == "v2"
    predictor = isvc_spec(plan, "llama-v2")["predictor"]
    assert (predictor["minReplicas"], predictor["model"]["storageUri"]) == (4, "hf://org/m@2")


def test_a_draining_version_no_entry_names_is_left_as_it_runs() -> None:
    plan = reconcile(spec(), None, T0)
    aborted = reconcile(spec(canary=None), plan.status, at(0.5), live={"v1": 90, "v2": 10})
    assert [c.name for c in aborted.children if c.rtype.kind == "InferenceService"] == ["llama-v1"]
    assert "llama-v2" in [c.name for c in aborted.children if c.rtype.kind == "ManagedAIServiceBackend"]
    assert aborted.retire == []


# --- the state machine (issue #11) -----------------------------------------------------------------------

def test_every_phase_change_is_a_transition_of_the_table() -> None:
    """Drive each strategy through its scenarios (the tests above, recorded) and check every change."""
    seen: set[tuple[Any, Any]] = set()
    original = step

    def recording(*args: Any, **kwargs: Any) -> RolloutPlan:
        plan = original(*args, **kwargs)
        seen.add((plan.previous_phase, plan.status.get("phase")))
        return plan

    import tests.unit.test_render_trafficconfig as module
    module.step = recording  # type: ignore[assignment]
    try:
        for name, test in sorted(vars(module).items()):
            if name.startswith("test_") and name != "test_every_phase_change_is_a_transition_of_the_table" \
                    and callable(test) and not getattr(test, "pytestmark", None):
                test()
        for strategy in ("ABTest", "BlueGreen"):
            test_ab_and_blue_green_checks_wait_for_their_traffic(strategy)
    finally:
        module.step = original
    assert set(TRANSITIONS) == {None, *PHASES}
    wrong = sorted((str(a), str(b)) for a, b in seen if a != b and b not in TRANSITIONS[a])
    assert wrong == [], f"phase changes missing from TRANSITIONS: {wrong}"
    assert len({b for a, b in seen if a != b}) >= 6  # the scenarios reach most phases
