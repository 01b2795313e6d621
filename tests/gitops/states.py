"""Objects of the three kinds in every state, with the status exactly as the operator writes it.

Nothing here is hand-written status: the conditions and ``observedGeneration`` come from
:meth:`model_traffic.pipeline.runtime.Runtime._write_status` (which calls
:func:`model_traffic.pipeline.conditions.build`) given a :class:`~model_traffic.pipeline.runtime.Result`, and a
TrafficConfig's status and verdict come from the rollout state machine
(:func:`model_traffic.kinds.trafficconfig.render.step`) driven to each phase, turned into a Result by the reconcilers'
:func:`~model_traffic.pipeline.result.result_of`. The API server is replaced by a recorder of the status patch, which is
then merge-patched into the object.

Each :class:`Case` says what Flux's kstatus and Argo CD's health should make of it; the GitOps tests
check those expectations against the real kstatus code and against our Lua scripts in a real Lua.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

from model_traffic import kube, metrics
from model_traffic.kinds.trafficconfig.reconcile import PROGRESS_FIELDS
from model_traffic.kinds.trafficconfig.render import RolloutPlan
from model_traffic.kinds.trafficconfig.spec import TrafficConfigSpec
from model_traffic.kube import ResourceType
from model_traffic.pipeline.conditions import Detail, Verdict
from model_traffic.pipeline.plan import Plan
from model_traffic.pipeline.result import Applied, result_of
from model_traffic.pipeline.runtime import Result, Runtime
from tests.unit.test_render_trafficconfig import T0, at, failing_ttft, reconcile, spec

KStatus = Literal["Current", "InProgress", "Failed"]
Health = Literal["Healthy", "Progressing", "Degraded", "Suspended"]
KINDS = {"ManagedAIServiceBackend": kube.MANAGED_AI_SERVICE_BACKEND, "VirtualModel": kube.VIRTUAL_MODEL,
         "TrafficConfig": kube.TRAFFIC_CONFIG}


@dataclass(frozen=True)
class Case:
    id: str
    obj: dict[str, Any]
    kstatus: KStatus
    health: Health
    message: str  # a piece of text the Argo CD health message must contain ("" for any)


# --- writing status the operator's way -------------------------------------------------------------------

class _Events:
    def create_namespaced_event(self, namespace: str, event: Any) -> None:
        pass


class _StatusRecorder:
    """Stands in for :class:`model_traffic.kube.Kube`: keeps the status patch the runtime sends."""

    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []
        self.core = _Events()

    def patch_status(self, rtype: ResourceType, namespace: str, name: str, status: dict[str, Any],
                     resource_version: str | None = None) -> dict[str, Any]:
        self.patches.append(copy.deepcopy(status))
        return {"status": status}


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386, as the API server applies ``application/merge-patch+json``."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_patch(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def new_object(kind: str, name: str = "demo", generation: int = 1, spec: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    """As the API server returns a just-created object: no status yet."""
    return {
        "apiVersion": "modeltraffic.io/v1alpha1", "kind": kind,
        "metadata": {"name": name, "namespace": "llm", "uid": f"uid-{kind}-{name}", "generation": generation,
                     "resourceVersion": "1", "creationTimestamp": "2025-01-01T12:00:00Z"},
        "spec": spec or {},
    }


def write_status(obj: dict[str, Any], result: Result) -> dict[str, Any]:
    """The object after the operator's status write for this result (the runtime's own code path)."""
    recorder = _StatusRecorder()
    runtime = Runtime(recorder)  # type: ignore[arg-type]  # only patch_status and core are used
    outcome = runtime._write_status(KINDS[obj["kind"]], obj, result)
    # the readiness series it set: not a real object of this process
    metrics.OBJECT_STATES.remove(obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
    out = copy.deepcopy(obj)
    if outcome == "updated":
        assert len(recorder.patches) == 1
        out["status"] = merge_patch(obj.get("status") or {}, recorder.patches[0])
    return out


def bump_generation(obj: dict[str, Any]) -> dict[str, Any]:
    """A spec edit the operator has not reconciled yet."""
    out = copy.deepcopy(obj)
    out["metadata"]["generation"] += 1
    return out


# --- ManagedAIServiceBackend and VirtualModel --------------------------------------------------------------

BACKEND_DETAILS = {
    "Ready": [Detail("EndpointResolved", True, "Resolved", "api.openai.com:443"),
              Detail("CredentialsResolved", True, "Resolved", "Secret openai-key, key apiKey")],
    "Progressing": [Detail("EndpointResolved", False, "InferenceServiceNotReady",
                           "InferenceService llama is not Ready")],
    "Stalled": [Detail("CredentialsResolved", False, "SecretNotFound", "Secret openai-key not found")],
}
VERDICTS = {
    "ManagedAIServiceBackend": {
        "Ready": Verdict("Ready", "Ready", "api.openai.com:443"),
        "Progressing": Verdict("Progressing", "InferenceServiceNotReady", "InferenceService llama is not Ready"),
        "Stalled": Verdict("Stalled", "SecretNotFound", "Secret openai-key not found"),
    },
    "VirtualModel": {
        "Ready": Verdict("Ready", "Ready", "3 of 3 backends"),
        "Progressing": Verdict("Progressing", "BackendsNotReady", "no backend is Ready yet: openai, azure"),
        "Stalled": Verdict("Stalled", "ModelNameConflict", "model gpt-4 on gateway ai-gateway is served by other"),
    },
}
EXPECTED: dict[str, tuple[KStatus, Health]] = {
    "Ready": ("Current", "Healthy"),
    "Progressing": ("InProgress", "Progressing"),
    "Stalled": ("Failed", "Degraded"),
}


def generic_cases() -> list[Case]:
    cases: list[Case] = []
    for kind in ("ManagedAIServiceBackend", "VirtualModel"):
        fresh = new_object(kind)
        # Before the operator's first write: kstatus has nothing to go on and calls it Current.
        cases.append(Case(f"{kind}-no-status-yet", fresh, "Current", "Progressing", "Waiting"))
        # The same with a CRD default `status: {observedGeneration: 0}` (the API server applies it when it
        # reads the object, so even the create response has it): then kstatus sees the generation unobserved.
        defaulted = {**fresh, "status": {"observedGeneration": 0}}
        cases.append(Case(f"{kind}-no-status-yet-with-status-default", defaulted, "InProgress", "Progressing",
                          "generation 1 is not observed yet"))
        for state, verdict in VERDICTS[kind].items():
            details = BACKEND_DETAILS[state] if kind == "ManagedAIServiceBackend" else []
            written = write_status(fresh, Result(verdict, details))
            kstatus, health = EXPECTED[state]
            cases.append(Case(f"{kind}-{state}", written, kstatus, health,
                              "" if state == "Ready" else verdict.message))
            # The spec changed and the operator has not caught up: whatever the conditions say, it is in progress.
            cases.append(Case(f"{kind}-{state}-stale-generation", bump_generation(written), "InProgress",
                              "Progressing", "generation 2"))
        # Reconciled again after the edit: the new generation is observed, conditions move (and only
        # then: lastTransitionTime of unchanged conditions stays).
        ready = write_status(fresh, Result(VERDICTS[kind]["Ready"]))
        edited = bump_generation(ready)
        stalled = write_status(edited, Result(VERDICTS[kind]["Stalled"]))
        cases.append(Case(f"{kind}-Ready-then-Stalled-after-edit", stalled, "Failed", "Degraded",
                          VERDICTS[kind]["Stalled"].message))
        # Ready by our own checks, then folded with what the AI Gateway controller reports on a child.
        for case, child_status, expected in (
            ("AwaitingControllers", None, ("InProgress", "Progressing")),
            ("ChildRefused", {"conditions": [{"type": "NotAccepted", "status": "False",
                                              "reason": "ReconciliationFailed", "message": "no such schema"}]},
             ("Failed", "Degraded")),
        ):
            child: dict[str, Any] = {"apiVersion": "aigateway.envoyproxy.io/v1beta1", "kind": "AIServiceBackend",
                                     "metadata": {"name": "demo", "namespace": "llm", "generation": 1}}
            if child_status:
                child["status"] = child_status
            folded = result_of(Plan(VERDICTS[kind]["Ready"], []), Applied(live={"AIServiceBackend": child}))
            assert folded.verdict.reason == case, folded.verdict
            cases.append(Case(f"{kind}-{case}", write_status(fresh, folded), *expected, folded.verdict.message))
    return cases


# --- TrafficConfig: the rollout driven to each phase ----------------------------------------------------

# The state machine's own unit-test helpers: a llama-3 config with v1 stable and v2 canary at 10 then 50 %,
# threshold 2, one TTFT metric; `reconcile` steps, runs the analysis it asks for, and steps again.
ANALYSIS = {"interval": "1m", "threshold": 2, "stepWeights": [10, 50],
            "metrics": [{"name": "ttft", "builtin": "TimeToFirstTokenP95", "max": 0.5}]}


def rollout_plans() -> dict[str, tuple[TrafficConfigSpec, RolloutPlan, RolloutPlan | None]]:
    """phase -> (spec, the plan that reached it, the plan before it)."""
    plans: dict[str, tuple[TrafficConfigSpec, RolloutPlan, RolloutPlan | None]] = {}
    stable_only = spec(canary=None)
    plans["Initializing"] = (stable_only, reconcile(stable_only, None, T0, ready=()), None)
    plans["Succeeded"] = (stable_only, reconcile(stable_only, None, T0, ready=("v1",)), None)

    canary = spec()
    started = reconcile(canary, None, T0)
    plans["Progressing"] = (canary, started, None)
    paused = spec(paused=True)
    plans["Paused"] = (paused, reconcile(paused, started.status, at(1)), started)

    manual = spec(analysis={**ANALYSIS, "promotion": "Manual"})
    m1 = reconcile(manual, None, T0)
    m2 = reconcile(manual, m1.status, at(1))
    plans["WaitingPromotion"] = (manual, reconcile(manual, m2.status, at(2)), m2)

    a2 = reconcile(canary, started.status, at(1))
    # Promoted automatically; the old stable still has traffic in the live VirtualModel: draining.
    plans["Promoting"] = (canary, reconcile(canary, a2.status, at(2), live={"v1": 50, "v2": 50}), a2)

    f2 = reconcile(canary, started.status, at(1), failing_ttft)
    plans["Failed"] = (canary, reconcile(canary, f2.status, at(2), failing_ttft), f2)
    for phase, (_, plan, _) in plans.items():
        assert plan.status.get("phase") == phase, (
            f"the scenario for {phase} now ends in {plan.status.get('phase')}: adapt tests/gitops/states.py")
    return plans


def _tc_result(plan: RolloutPlan, conflicts: list[str] | None = None) -> Result:
    """As ``reconcilers.trafficconfig.reconcile`` turns a plan into its Result (children applied)."""
    return result_of(Plan(verdict=plan.verdict, details=plan.details, children=plan.children, status=plan.status),
                     Applied(conflicts=conflicts or []))


TC_EXPECTED: dict[str, tuple[KStatus, Health]] = {
    "Initializing": ("InProgress", "Progressing"),
    "Progressing": ("InProgress", "Progressing"),
    "Paused": ("Current", "Suspended"),
    "WaitingPromotion": ("Current", "Healthy"),
    "Promoting": ("InProgress", "Progressing"),
    "Succeeded": ("Current", "Healthy"),
    "Failed": ("Failed", "Degraded"),
}


def trafficconfig_cases() -> list[Case]:
    cases: list[Case] = []
    plans = rollout_plans()
    for phase, (tc, plan, _) in plans.items():
        wire = tc.model_dump(mode="json", by_alias=True, exclude_none=True)
        fresh = new_object("TrafficConfig", name="llama", spec=wire)
        written = write_status(fresh, _tc_result(plan))
        kstatus, health = TC_EXPECTED[phase]
        cases.append(Case(f"TrafficConfig-{phase}", written, kstatus, health, plan.verdict.message))
        cases.append(Case(f"TrafficConfig-{phase}-stale-generation", bump_generation(written), "InProgress",
                          "Progressing", "generation 2"))

    _, paused, _ = plans["Paused"]
    conflict = "VirtualModel llama exists and is not owned by this TrafficConfig"
    blocked = write_status(new_object("TrafficConfig", name="llama"), _tc_result(paused, [conflict]))
    cases.append(Case("TrafficConfig-Paused-with-OwnershipConflict", blocked, "Failed", "Degraded", conflict))

    # The reconciler records the rollout's progress (phase, weights, results) before it applies children,
    # and the conditions after: in between, a rollback already shows phase Failed beside the old conditions.
    _, failed, before = plans["Failed"]
    assert before is not None
    previous = write_status(new_object("TrafficConfig", name="llama"), _tc_result(before))
    progress = {k: v for k, v in failed.status.items() if k in PROGRESS_FIELDS}
    midway = copy.deepcopy(previous)
    midway["status"] = merge_patch(previous["status"], progress)
    cases.append(Case("TrafficConfig-Failed-progress-recorded-conditions-not-yet", midway, "InProgress", "Degraded",
                      ""))

    # A brand-new TrafficConfig after the progress write and before the first conditions write.
    _, started, _ = plans["Progressing"]
    first = new_object("TrafficConfig", name="llama")
    first["status"] = {k: v for k, v in started.status.items() if k in PROGRESS_FIELDS}
    cases.append(Case("TrafficConfig-progress-recorded-no-conditions-yet", first, "Current", "Progressing", "Waiting"))
    return cases


def all_cases() -> list[Case]:
    return generic_cases() + trafficconfig_cases()
