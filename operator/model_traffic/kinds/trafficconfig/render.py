"""TrafficConfig: the rollout as a pure state machine.

``step(spec, status, world, now) -> RolloutPlan``. No client, no clock: the reconciler gathers
:class:`TrafficWorld`, calls :func:`step`, and when the plan asks for an analysis
(``plan.analysis``), runs it (metrics through ``analysis.run_metrics``, webhooks by POSTing) and calls
:func:`step` again with the results in ``world.analysis``. Everything needed to continue lives in the
status the plan returns, so a restart at any moment resumes from the last written status:

- a step is taken only when an analysis is due (``analysis.interval`` elapsed since ``lastStepTime``)
  and its results are present; taking it stamps ``lastStepTime = now``, so the same call with the
  returned status is not due again and never advances twice; the same call with the old status yields
  the same plan (determinism);
- weights are read from the status (``canaryWeight``, ``currentStep``), never recomputed from scratch.

What it owns (names): InferenceService ``<name>-<version>`` per live version (or the referenced one
for the brownfield stable), ManagedAIServiceBackend ``<name>-<version>`` per live version, VirtualModel
``<name>``. Each version serves under ``<modelName>-<version>`` (``analysis.served_model_name``) and
the VirtualModel sends that as ``modelNameOverride``, which splits the gateway's ``gen_ai_*`` metrics
by version (label ``gen_ai_request_model``).

Restart-safe stepping: a step is recorded in the status before the VirtualModel changes, so after a
crash the status may be ahead of the traffic. The interval of a step therefore runs from ``trafficSince``:
when the live VirtualModel was first observed carrying exactly that step's backends, its controller having
acted on that spec (``observedGeneration``). Until then no check is due, and the first reconcile after a
restart applies the recorded step instead of judging it; a check waits until its longest query window lies
within the step's traffic, so it only measures the step it judges. Live traffic that differs from the
recorded step (a status ahead of the children, a hand edit) restarts the interval once it matches again.

Make-before-break: a version that leaves the plan (rolled back, promoted away, variant removed) is first
taken out of the VirtualModel; its ManagedAIServiceBackend and then its InferenceService are retired only
once the live VirtualModel, the live AIGatewayRoute and the HTTPRoute the AI Gateway generated from it
reference it no more, and Envoy Gateway has reported on that HTTPRoute's current generation
(``TrafficWorld.route_references`` / ``route_settled``). The versions to retire are found from the status
and from every child the TrafficConfig owns (``TrafficWorld.owned_versions``, by owner reference and
label), so a crash in the middle of a retirement leaves no orphan.

Events are decided here and recorded in the status with the progress (``pendingEvents``, named
deterministically), then posted: a crash in between posts them once at the next reconcile.

The phases and which may follow which: :data:`TRANSITIONS`, over the phase list of the API
(``api.trafficconfig.PHASES``).
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from model_traffic import kube
from model_traffic.kinds.backend import spec as backend_api
from model_traffic.kinds.common import API_VERSION, duration_seconds
from model_traffic.kinds.trafficconfig.analysis import Target, served_model_name
from model_traffic.kinds.trafficconfig.analysis_spec import Metric, Webhook
from model_traffic.kinds.trafficconfig.spec import (
    PHASES,
    REQUEST_ACTIONS,
    CanaryVersion,
    MetricResult,
    ModelVersion,
    Phase,
    RequestAction,
    TrafficConfigSpec,
    TrafficConfigStatus,
)
from model_traffic.kinds.virtualmodel import spec as vm_api
from model_traffic.kube import ResourceType
from model_traffic.outbound import OutboundPolicy
from model_traffic.pipeline.conditions import Detail, Verdict
from model_traffic.pipeline.plan import Child

MANAGED_AI_SERVICE_BACKEND = kube.MANAGED_AI_SERVICE_BACKEND
VIRTUAL_MODEL = kube.VIRTUAL_MODEL

LABEL_TRAFFIC_CONFIG = "modeltraffic.io/traffic-config"
LABEL_VERSION = "modeltraffic.io/version"

# Canary steps when analysis sets neither stepWeights nor stepWeight (Flagger's customary 10 up to 50).
DEFAULT_STEP_WEIGHT = 10
DEFAULT_MAX_WEIGHT = 50
DEFAULT_INTERVAL = "1m"
SERVED_NAME_ARGS = ("--model_name=", "--served-model-name=")

__all__ = ["PHASES", "TRANSITIONS", "Phase", "step"]

# The state machine: which phase may follow which (staying put is always allowed). None is a new object.
# A unit test drives every strategy through its scenarios and checks each change against this table.
TRANSITIONS: dict[Phase | None, frozenset[Phase]] = {
    None: frozenset({"Initializing", "Succeeded", "Progressing", "Promoting"}),
    # waiting for the versions or the PreRollout checks; a stable-only config turns Succeeded when Ready
    "Initializing": frozenset({"Progressing", "Paused", "Failed", "Succeeded", "Promoting"}),
    # checks run and steps are taken; ends in a promotion, a rollback or a wait for a person
    "Progressing": frozenset({"Paused", "WaitingPromotion", "Promoting", "Failed", "Succeeded", "Initializing"}),
    # spec.paused: back where it was when resumed (from the status), or aborted / reset / replaced
    # (and an abort request, status.requests.abort, rolls back from any started phase: Failed)
    "Paused": frozenset({"Initializing", "Progressing", "WaitingPromotion", "Succeeded", "Promoting", "Failed"}),
    "WaitingPromotion": frozenset({"Paused", "Promoting", "Succeeded", "Initializing", "Progressing", "Failed"}),
    # the old stable drains; a new candidate may already start
    "Promoting": frozenset({"Succeeded", "Initializing"}),
    "Succeeded": frozenset({"Initializing", "Promoting", "Progressing"}),
    # a rolled-back candidate stays rolled back until spec.release (or spec.canary/stable) changes, or a retry
    "Failed": frozenset({"Succeeded", "Initializing", "Promoting", "Progressing"}),
}
# Phases in which a candidate is deployed with its rollout started (its traffic, an A/B match, checks).
STARTED_PHASES: frozenset[Phase] = frozenset({"Progressing", "WaitingPromotion", "Paused"})
# The result recorded when the progress deadline rolled a candidate back (so the Failed phase says why).
DEADLINE_RESULT = "progress-deadline"


# --- inputs -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ObservedVersion:
    """A version's InferenceService as observed. Absence from ``TrafficWorld.versions`` = not found."""

    ready: bool
    url: str | None = None
    message: str = ""

    @classmethod
    def from_inference_service(cls, obj: dict[str, Any]) -> ObservedVersion:
        status = obj.get("status") or {}
        ready_cond = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
        ready = bool(ready_cond and ready_cond.get("status") == "True")
        # address.url is the predictor Service; in KServe's Standard mode status.url names the ingress domain
        # even with no ingress (pkg/controller/v1beta1/inferenceservice/reconcilers/ingress/kube_ingress_reconciler.go).
        url = (status.get("address") or {}).get("url") or status.get("url")
        message = "" if ready else (f"{ready_cond.get('reason')}: {ready_cond.get('message')}" if ready_cond
                                    else "no Ready condition yet")
        return cls(ready=ready, url=url, message=message)


@dataclass(frozen=True)
class ChildHealth:
    """How one of our own kinds (the VirtualModel, a version's ManagedAIServiceBackend) reports in its status."""

    ready: bool
    stalled: bool = False
    current: bool = True  # its status was computed from its current spec (observedGeneration)
    message: str = ""

    @classmethod
    def of(cls, obj: dict[str, Any]) -> ChildHealth:
        status = obj.get("status") or {}
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        ready = conditions.get("Ready") or {}
        current = status.get("observedGeneration") == (obj.get("metadata") or {}).get("generation")
        message = "" if ready.get("status") == "True" else (
            f"{ready.get('reason')}: {ready.get('message')}" if ready else "no Ready condition yet")
        return cls(ready=current and ready.get("status") == "True",
                   stalled=(conditions.get("Stalled") or {}).get("status") == "True", current=current,
                   message=message if current else "has not reported on its current spec yet")


# A VirtualModel backend as compared between what a step wants and what is live: the fields we write.
TrafficEntry = tuple[str, int, str, bool]  # (name, weight, modelNameOverride, header-matched)


@dataclass(frozen=True)
class LiveVirtualModel:
    """The live VirtualModel ``<name>`` (ours): what traffic it carries and how its controller reports."""

    backends: frozenset[TrafficEntry]
    health: ChildHealth

    @classmethod
    def of(cls, obj: dict[str, Any]) -> LiveVirtualModel:
        entries = frozenset(
            (str(b.get("name", "")), int(b.get("weight", 1)), str(b.get("modelNameOverride") or ""),
             bool(b.get("matches")))
            for b in (obj.get("spec") or {}).get("backends") or [])
        return cls(entries, ChildHealth.of(obj))


@dataclass(frozen=True)
class TrafficWorld:
    """What the reconciler observed; None means 'not there / not looked at'."""

    namespace: str
    name: str
    versions: dict[str, ObservedVersion] = field(default_factory=dict)  # by version label
    ref_inference_service: dict[str, Any] | None = None  # spec.inferenceService.ref, when set
    live_weights: dict[str, int] | None = None  # version -> weight in the live VirtualModel; None: none
    analysis: list[MetricResult] | None = None  # results of the analysis the previous plan asked for
    variant_results: dict[str, list[MetricResult]] | None = None  # Weighted: measurements by version
    virtual_model: LiveVirtualModel | None = None  # the live VirtualModel, when ours
    backends: dict[str, ChildHealth] = field(default_factory=dict)  # each version's ManagedAIServiceBackend
    # Versions of every InferenceService and ManagedAIServiceBackend this TrafficConfig owns (owner reference),
    # whatever the status says: nothing it ever created is forgotten by a crash.
    owned_versions: frozenset[str] = frozenset()
    # Names (AIServiceBackends, Envoy Gateway Backends) the live AIGatewayRoute and its generated HTTPRoute
    # reference; and whether Envoy Gateway has reported on that HTTPRoute's current generation.
    route_references: frozenset[str] = frozenset()
    route_settled: bool = True
    uid: str = ""  # of the TrafficConfig: Event names are unique to this object
    generation: int = 0


def live_weights_from_virtual_model(obj: dict[str, Any] | None, name: str) -> dict[str, int] | None:
    """``TrafficWorld.live_weights`` from the live VirtualModel ``<name>`` (backends ``<name>-<version>``)."""
    if obj is None:
        return None
    prefix = f"{name}-"
    out: dict[str, int] = {}
    for ref in (obj.get("spec") or {}).get("backends") or []:
        backend = str(ref.get("name", ""))
        if backend.startswith(prefix):
            out[backend[len(prefix):]] = int(ref.get("weight", 1))
    return out


# --- outputs ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AnalysisRequest:
    """What the reconciler must measure before calling :func:`step` again.

    ``metrics``: query each for ``candidate`` (and ``stable`` when relative) over ``interval`` with
    ``analysis.run_metrics``. ``webhooks``: POST each; report each as a MetricResult named
    ``webhook/<name>``. Put all results, in any order, into ``TrafficWorld.analysis``.
    """

    purpose: Literal["PreRollout", "Analysis", "Observe"]
    candidate: Target
    stable: Target
    interval: str
    metrics: list[Metric]
    webhooks: list[Webhook]
    prometheus: str | None
    # Observe (Weighted): measure ``metrics`` for each of these versions (relative to ``stable``) and put the
    # results into ``TrafficWorld.variant_results`` instead; nothing gates on them.
    variants: tuple[Target, ...] = ()


@dataclass(frozen=True)
class RolloutEvent:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass
class RolloutPlan:
    status: dict[str, Any]  # TrafficConfigStatus on the wire, without observedGeneration and conditions
    verdict: Verdict
    details: list[Detail] = field(default_factory=list)
    children: list[Child] = field(default_factory=list)
    retire: list[str] = field(default_factory=list)  # versions whose children go now
    delete: list[tuple[ResourceType, str]] = field(default_factory=list)  # the children of those versions
    analysis: AnalysisRequest | None = None  # run it, then call step again with world.analysis
    post_rollout: list[Webhook] = field(default_factory=list)  # fire once the status is written
    events: list[RolloutEvent] = field(default_factory=list)
    requeue_after: float | None = None  # seconds until the next analysis is due
    previous_phase: Phase | None = None  # the phase of the status this plan was computed from

    @property
    def analysis_due(self) -> bool:
        return self.analysis is not None


# --- helpers ------------------------------------------------------------------------------------------

def pending_requests(requests: Mapping[str, str], handled: Mapping[str, str]) -> list[RequestAction]:
    """Requests (status.requests) not acted on yet (status.handledRequests), oldest token first (the CLI's and
    Argo CD's tokens are RFC 3339 times). The rollout acts on them; the watch handler wakes the rollout for them."""
    pending = [a for a in REQUEST_ACTIONS if requests.get(a) and requests[a] != handled.get(a)]
    return sorted(pending, key=lambda a: requests[a])


def model_name(spec: TrafficConfigSpec, name: str) -> str:
    return spec.model_name or name


def step_weights(spec: TrafficConfigSpec) -> list[int]:
    """The canary weights, in order: the candidate's held weight alone (release.weight, or the deprecated
    canary.weight), else stepWeights, else stepWeight up to maxWeight (maxWeight included)."""
    held = spec.canary.weight if spec.canary is not None else spec.release.weight if spec.release else None
    if held is not None:
        return [held]
    analysis = spec.analysis
    if analysis and analysis.step_weights:
        return list(analysis.step_weights)
    step = (analysis.step_weight if analysis else None) or DEFAULT_STEP_WEIGHT
    top = (analysis.max_weight if analysis else None) or (100 if analysis and analysis.step_weight else
                                                          DEFAULT_MAX_WEIGHT)
    weights = list(range(step, top + 1, step))
    if not weights or weights[-1] != top:
        weights.append(top)
    return weights


def _interval(spec: TrafficConfigSpec) -> str:
    return spec.analysis.interval if spec.analysis else DEFAULT_INTERVAL


def _stamp(now: datetime.datetime) -> str:
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(datetime.UTC)


def _utc(now: datetime.datetime) -> datetime.datetime:
    now = now if now.tzinfo else now.replace(tzinfo=datetime.UTC)
    return now.astimezone(datetime.UTC).replace(microsecond=0)


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:.6g}"


def outbound_refusals(spec: TrafficConfigSpec, default_prometheus: str | None, policy: OutboundPolicy) -> list[str]:
    """Why the addresses this TrafficConfig would call may not be called: each webhook's URL and, when there are
    metrics, the Prometheus address (the spec's, else the operator's default). Empty when all may."""
    analysis = spec.analysis
    if analysis is None:
        return []
    refusals = []
    if analysis.metrics:
        prometheus = analysis.prometheus.address if analysis.prometheus else default_prometheus
        refused = policy.url_refusal(prometheus) if prometheus else None
        if refused:
            where = "spec.analysis.prometheus.address" if analysis.prometheus else "the operator's Prometheus address"
            refusals.append(f"{where}: {refused}")
    for hook in analysis.webhooks or []:
        refused = policy.url_refusal(hook.url)
        if refused:
            refusals.append(f"webhook {hook.name}: {refused}")
    return refusals


def _is_inconclusive(results: list[MetricResult]) -> bool:
    """Inconclusive checks and no failed one: what pauses a rollout."""
    return any(r.inconclusive for r in results) and all(r.passed or r.inconclusive for r in results)


def _inconclusive_message(candidate: str, weight: int | None, results: list[MetricResult]) -> str:
    return (f"paused at weight {weight or 0}: check of {candidate} inconclusive: {describe_failures(results)}; "
            "model-traffic resume to check again, abort to roll back")


def describe_failures(results: list[MetricResult]) -> str:
    failed = [r for r in results if not r.passed]
    return "; ".join(f"{r.name}={_fmt(r.value)} ({r.message})" for r in failed) or "all checks passed"


def _served_name_from_args(isvc: dict[str, Any]) -> str | None:
    predictor: dict[str, Any] = (isvc.get("spec") or {}).get("predictor") or {}
    model = predictor.get("model")
    target: dict[str, Any] = model if isinstance(model, dict) else predictor
    for arg in target.get("args") or []:
        for prefix in SERVED_NAME_ARGS:
            if isinstance(arg, str) and arg.startswith(prefix):
                return arg[len(prefix):]
    return None


def _with_version(isvc_spec: dict[str, Any], entry: ModelVersion | None, served: str) -> dict[str, Any]:
    """An InferenceService spec with the version's weights, served model name and sizing set. ``entry``: the
    version's entry in the spec (stable, canary or a variant); None for a draining version no entry names."""
    out = copy.deepcopy(isvc_spec)
    predictor = out.setdefault("predictor", {})
    target = predictor["model"] if isinstance(predictor.get("model"), dict) else predictor
    if entry is not None and entry.storage_uri:
        target["storageUri"] = entry.storage_uri
    args = [a for a in target.get("args") or [] if not (isinstance(a, str) and a.startswith(SERVED_NAME_ARGS))]
    target["args"] = [*args, f"--model_name={served}"]
    if entry is not None and entry.replicas is not None:
        # A fixed count: a canary sized at 1 must not be scaled up to the template's maxReplicas.
        predictor["minReplicas"] = predictor["maxReplicas"] = entry.replicas
    if entry is not None and entry.resources is not None:
        # The model's container (or, in a cloned custom-container predictor, its first container): resources of
        # the predictor itself are not a field KServe's PredictorSpec has.
        containers = predictor.get("containers")
        container = (predictor["model"] if isinstance(predictor.get("model"), dict)
                     else containers[0] if isinstance(containers, list) and containers
                     and isinstance(containers[0], dict) else None)
        if container is not None:
            container["resources"] = _merged_resources(container.get("resources"), entry.resources.wire())
    return out


def _merged_resources(base: Any, override: dict[str, Any]) -> dict[str, Any]:
    """Requests and limits key by key: a version that overrides only cpu keeps the template's memory and GPUs."""
    out: dict[str, Any] = copy.deepcopy(base) if isinstance(base, dict) else {}
    for kind, quantities in override.items():
        current = out.get(kind)
        out[kind] = {**(current if isinstance(current, dict) else {}), **quantities}
    return out


# --- the state ------------------------------------------------------------------------------------------

@dataclass
class _State:
    phase: Phase | None
    stable: str | None
    candidate: str | None
    weight: int | None
    step: int | None
    failed: int
    iterations: int
    last_step_time: str | None
    last_progress_time: str | None
    traffic_since: str | None
    last_results: list[MetricResult]
    versions: dict[str, str]  # version -> InferenceService name, as recorded
    version_metrics: dict[str, list[MetricResult]]  # Weighted: last measurements by version
    requests: dict[str, str]  # action -> token, as people wrote them (status.requests; never written here)
    handled: dict[str, str]  # action -> token of the request acted on (status.handledRequests)
    paused_by_request: bool
    stable_definition: ModelVersion | None  # status.stable, as recorded
    candidate_definition: ModelVersion | None  # status.candidate, as recorded

    @classmethod
    def read(cls, status: TrafficConfigStatus) -> _State:
        def tokens(requests: Any) -> dict[str, str]:
            return {k: v for k, v in (requests.model_dump() if requests else {}).items() if v}

        return cls(status.phase, status.stable_version, status.candidate_version, status.canary_weight,
                   status.current_step, status.failed_checks or 0, status.iterations or 0, status.last_step_time,
                   status.last_progress_time, status.traffic_since, list(status.last_results),
                   {v.version: v.inference_service for v in status.versions},
                   {v.version: list(v.metrics) for v in status.versions if v.metrics},
                   tokens(status.requests), tokens(status.handled_requests), bool(status.paused_by_request),
                   status.stable, status.candidate)

    def pending_requests(self) -> list[RequestAction]:
        return pending_requests(self.requests, self.handled)

    def progress_key(self) -> tuple[Any, ...]:
        """What moves when a rollout makes progress (a failed check does not: it is what a deadline catches)."""
        return (self.phase, self.stable, self.candidate, self.step, self.weight, self.iterations, self.traffic_since)

    def start_rollout(self, candidate: str) -> None:
        self.phase, self.candidate, self.weight, self.step = "Initializing", candidate, 0, None
        self.failed, self.iterations, self.last_step_time, self.last_results = 0, 0, None, []
        self.traffic_since = None

    def end_rollout(self, phase: Phase) -> None:
        self.phase, self.candidate, self.weight, self.step = phase, None, None, None
        self.failed, self.iterations, self.last_step_time, self.traffic_since = 0, 0, None, None

    def traffic_changes(self) -> None:
        """The recorded step now wants other traffic: its interval starts once the VirtualModel carries it."""
        self.traffic_since = None


class _Rollout:
    """One call of :func:`step`."""

    def __init__(self, spec: TrafficConfigSpec, state: _State, world: TrafficWorld, now: datetime.datetime,
                 precise_now: datetime.datetime | None = None):
        self.spec, self.s, self.world, self.now = spec, state, world, now
        self.legacy = spec.release is None  # the deprecated stable/canary form (its messages name those fields)
        self.stable_entry = spec.stable or spec.first_stable()  # desired_spec sets spec.stable
        self.precise_now = precise_now or now  # Event times: steps under a second apart stay ordered
        self.model = model_name(spec, world.name)
        self.events: list[RolloutEvent] = []
        self.details: list[Detail] = []
        self.post_rollout: list[Webhook] = []
        self.request: AnalysisRequest | None = None
        self.message = ""
        self.holding = False  # a stable switch waits for the new version
        self.initial_progress = state.progress_key()
        self.deadline_exceeded = ""  # why the progress deadline is exceeded (the rollout not rolled back)
        self.deadline_in: float | None = None  # seconds until the progress deadline, while it runs
        self.ref_name = spec.inference_service.ref.name if spec.inference_service.ref else None
        if self.ref_name and not state.versions and state.stable is None:
            # First reconcile of a brownfield config: the referenced InferenceService is the stable.
            state.versions[self.stable_entry.version] = self.ref_name

    # --- names ---------------------------------------------------------------------------------------
    def isvc_name(self, version: str) -> str:
        return self.s.versions.get(version) or f"{self.world.name}-{version}"

    def is_ref(self, version: str) -> bool:
        return self.ref_name is not None and self.isvc_name(version) == self.ref_name

    def served(self, version: str) -> str:
        if self.is_ref(version):
            isvc = self.world.ref_inference_service or {}
            return _served_name_from_args(isvc) or self.isvc_name(version)
        return served_model_name(self.model, version)

    def target(self, version: str) -> Target:
        return Target(version, self.served(version))

    def ready(self, version: str) -> bool:
        seen = self.world.versions.get(version)
        return bool(seen and seen.ready)

    def why_not_ready(self, version: str) -> str:
        seen = self.world.versions.get(version)
        name = self.isvc_name(version)
        if seen is None:
            return f"InferenceService {name} not found"
        return f"InferenceService {name} not Ready ({seen.message})" if seen.message else f"{name} not Ready"

    def event(self, kind: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.events.append(RolloutEvent(kind, reason, message))

    # --- analysis --------------------------------------------------------------------------------------
    def due(self) -> bool:
        """Initializing: whether the PreRollout checks may run (again), one interval after the last attempt."""
        last = _parse_time(self.s.last_step_time)
        return last is None or (self.now - last).total_seconds() >= duration_seconds(_interval(self.spec))

    def _window(self) -> float:
        """How long the current step's traffic must have flowed before a check: the interval, or the longest query
        window when a metric looks further back (so the window never reaches into the step before)."""
        windows = [duration_seconds(m.interval) for m in (self.spec.analysis.metrics or []) if m.interval] \
            if self.spec.analysis else []
        return max([duration_seconds(_interval(self.spec)), *windows])

    def _check_at(self) -> datetime.datetime | None:
        """When the next check of the current step is due; None while the step has not reached the traffic."""
        since = _parse_time(self.s.traffic_since)
        if since is None:
            return None
        at = since + datetime.timedelta(seconds=self._window())
        last = _parse_time(self.s.last_step_time)
        if last is not None:
            at = max(at, last + datetime.timedelta(seconds=duration_seconds(_interval(self.spec))))
        return at

    def check_due(self) -> bool:
        at = self._check_at()
        return at is not None and self.now >= at

    def next_due_in(self) -> float | None:
        if self.s.phase == "Initializing":
            last = _parse_time(self.s.last_step_time)
            if last is None:
                return None
            return max(0.0, duration_seconds(_interval(self.spec)) - (self.now - last).total_seconds())
        at = self._check_at()
        return None if at is None else max(0.0, (at - self.now).total_seconds())

    # --- the traffic of a step ----------------------------------------------------------------------------
    def traffic(self, stable: str, candidate: str | None) -> tuple[dict[str, int], str | None]:
        """The VirtualModel's weights and its header-matched candidate (ABTest, a BlueGreen preview) for the
        state as it is, with ``candidate`` the version in the rollout (None: none takes traffic)."""
        if self.spec.strategy == "Weighted":
            return {v.version: v.weight for v in self.spec.variants or [] if v.weight > 0}, None
        weights = self.weights(stable, candidate)
        matched = candidate if (self.spec.strategy in ("ABTest", "BlueGreen") and candidate is not None
                                and self.s.phase in STARTED_PHASES and self.spec.analysis
                                and self.spec.analysis.match) else None
        return weights, matched

    def observe_traffic(self) -> None:
        """Start the recorded step's interval when the live VirtualModel first carries it (and its controller has
        acted on it); forget the start when it does not (a status ahead of the children, a hand edit)."""
        s = self.s
        tracked = (s.phase in STARTED_PHASES if self.spec.strategy != "Weighted"
                   else bool(self.spec.analysis and self.spec.analysis.metrics))
        if not tracked:
            s.traffic_since = None
            return
        wanted = frozenset(_entry(b) for b in self.recorded_backends())
        live = self.world.virtual_model
        if live is not None and live.health.current and live.backends == wanted:
            if s.traffic_since is None:
                s.traffic_since = _stamp(self.now)
        else:
            s.traffic_since = None

    def recorded_backends(self) -> list[dict[str, Any]]:
        """The VirtualModel's backends for the step the status records (before this reconcile moves it)."""
        s = self.s
        stable = self.stable_entry.version if self.spec.strategy == "Weighted" else (s.stable or
                                                                                     self.stable_entry.version)
        weights, matched = self.traffic(stable, s.candidate if s.phase != "Failed" else None)
        return _vm_backends(self, weights, matched)

    def waiting_for_traffic(self, candidate: str) -> str:
        what = f"weight {self.s.weight or 0}" if self.spec.strategy == "Canary" else "its traffic"
        return f"{candidate} at {what}: waiting for the VirtualModel to carry it before the interval starts"

    def webhooks(self, *types: str) -> list[Webhook]:
        hooks = self.spec.analysis.webhooks if self.spec.analysis else None
        return [w for w in hooks or [] if w.type in types]

    def gather(self, purpose: Literal["PreRollout", "Analysis"], metrics: list[Metric],
               hooks: list[Webhook], stable: str, candidate: str) -> list[MetricResult] | None:
        """The results for this step when present (or nothing to measure); None: asked for them."""
        if not metrics and not hooks:
            return []
        if self.world.analysis is not None:
            return list(self.world.analysis)
        prometheus = self.spec.analysis.prometheus if self.spec.analysis else None
        self.request = AnalysisRequest(purpose, self.target(candidate), self.target(stable), _interval(self.spec),
                                       metrics, hooks, prometheus.address if prometheus else None)
        self.message = f"running the {purpose} analysis of {candidate}"
        return None

    def record(self, results: list[MetricResult]) -> bool:
        self.s.last_step_time = _stamp(self.now)
        self.s.last_results = results
        return all(r.passed for r in results)

    def count_failure(self, stable: str, candidate: str, results: list[MetricResult]) -> None:
        self.s.failed += 1
        threshold = self.spec.analysis.threshold if self.spec.analysis else 3
        detail = describe_failures(results)
        if self.s.failed >= threshold:
            self.message = (f"rolled back {candidate} after {self.s.failed} failed checks (threshold {threshold}): "
                            f"{detail}; all traffic to {stable}")
            self.event("Warning", "RolledBack", self.message)
            self.s.phase, self.s.weight, self.s.step = "Failed", 0, None
            self.s.traffic_changes()
            self.post_rollout = self.webhooks("PostRollout")
        else:
            self.message = f"check of {candidate} failed ({self.s.failed} of {threshold}): {detail}"
            self.event("Warning", "CheckFailed", self.message)

    def pause_when_inconclusive(self, candidate: str, results: list[MetricResult]) -> bool:
        """Checks that are Inconclusive, none failed: the rollout pauses (as a pause request does, so a resume
        request goes on), the check counts neither as passed nor toward rollback (Argo Rollouts' Inconclusive)."""
        if not any(r.inconclusive for r in results) or any(not r.passed and not r.inconclusive for r in results):
            return False
        s = self.s
        s.phase, s.paused_by_request = "Paused", True
        self.message = _inconclusive_message(candidate, s.weight, results)
        self.event("Warning", "Inconclusive", self.message)
        return True

    # --- the rollout of a candidate -------------------------------------------------------------------
    def advance(self, stable: str, candidate: str) -> None:
        s, spec = self.s, self.spec
        if s.phase == "Failed":
            self.message = (f"{candidate} was rolled back ({describe_failures(s.last_results)}); all traffic to "
                            f"{stable}; " + ("change or remove spec.canary to go on" if self.legacy else
                                             "change spec.release, or model-traffic retry, to go on"))
            return
        if spec.paused or s.paused_by_request:
            if s.phase != "Paused":
                self.event("Normal", "Paused", f"rollout of {candidate} paused at weight {s.weight or 0}")
            s.phase = "Paused"
            self.message = f"paused at weight {s.weight or 0}" + (
                " (spec.paused)" if spec.paused else " (model-traffic resume to continue)")
            if _is_inconclusive(s.last_results) and not spec.paused:
                self.message = _inconclusive_message(candidate, s.weight, s.last_results)
            return
        if s.phase == "Paused":
            s.phase = self._resumed_phase()
            self.event("Normal", "Resumed", f"rollout of {candidate} resumed")
        held = spec.canary.weight if spec.canary is not None else None
        if held is not None and s.phase in ("Progressing", "WaitingPromotion") and s.weight != held:
            self.event("Normal", "WeightChanged", f"{candidate} weight set to {held} "
                       f"({'spec.canary.weight' if self.legacy else 'spec.release.weight'})")
            s.weight = held
            s.traffic_changes()
        if s.phase in (None, "Initializing", "Succeeded", "Promoting"):
            s.phase = "Initializing"
            missing = [self.why_not_ready(v) for v in (stable, candidate) if not self.ready(v)]
            if missing:
                self.message = "waiting: " + "; ".join(missing)
                return
            if not self.due():
                self.message = f"retrying the PreRollout checks of {candidate} after the interval"
                return
            results = self.gather("PreRollout", [], self.webhooks("PreRollout"), stable, candidate)
            if results is None:
                return
            if not self.record(results):
                self.count_failure(stable, candidate, results)
                return
            self._start(candidate)
            return
        if s.phase == "WaitingPromotion":
            self.message = self._waiting_message(candidate)
            return
        # Progressing: a check is due one interval after the step's traffic was first seen live.
        if not self.check_due():
            due_in = self.next_due_in()
            self.message = (self.waiting_for_traffic(candidate) if due_in is None else
                            f"{candidate} at weight {s.weight or 0}, next check in {due_in:.0f}s"
                            if spec.strategy == "Canary" else f"{candidate}: next check in {due_in:.0f}s")
            return
        final = self._is_final_check()
        metrics = list(spec.analysis.metrics or []) if spec.analysis else []
        hooks = self.webhooks("Rollout", "PrePromotion") if final else self.webhooks("Rollout")
        results = self.gather("Analysis", metrics, hooks, stable, candidate)
        if results is None:
            return
        if not self.ready(candidate):
            results = [*results, MetricResult(name="candidate-ready", passed=False,
                                              message=self.why_not_ready(candidate))]
        if not self.record(results):
            if not self.pause_when_inconclusive(candidate, results):
                self.count_failure(stable, candidate, results)
            return
        s.iterations += 1
        if final:
            self._complete(stable, candidate)
        elif spec.strategy == "Canary":
            weights = step_weights(spec)
            s.step = (s.step or 0) + 1
            s.weight = weights[s.step]
            s.traffic_changes()
            self.event("Normal", "StepAdvanced", f"{candidate} at weight {s.weight} (step {s.step + 1} of "
                       f"{len(weights)})")
            self.message = f"{candidate} at weight {s.weight}"
        else:
            self.message = f"{candidate} passed {s.iterations} of {self._iterations()} checks"

    def _iterations(self) -> int:
        return (self.spec.analysis.iterations if self.spec.analysis else None) or 1

    def _is_final_check(self) -> bool:
        if self.spec.strategy == "Canary":
            return (self.s.step or 0) + 1 >= len(step_weights(self.spec))
        return self.s.iterations + 1 >= self._iterations()

    def _resumed_phase(self) -> Phase:
        s = self.s
        if s.last_step_time is None and s.step is None:
            return "Initializing"
        if self.spec.strategy == "Canary" and s.step is not None and s.step >= len(step_weights(self.spec)):
            return "WaitingPromotion"
        if self.spec.strategy != "Canary" and s.iterations >= self._iterations():
            return "WaitingPromotion"
        return "Progressing"

    def _start(self, candidate: str) -> None:
        s = self.s
        s.phase = "Progressing"
        s.traffic_changes()
        if self.spec.strategy == "Canary":
            s.step, s.weight = 0, step_weights(self.spec)[0]
            self.message = f"{candidate} at weight {s.weight}"
        else:
            s.step, s.weight = None, 0
            self.message = f"{candidate} deployed, {self.spec.strategy} checks running"
        self.event("Normal", "RolloutStarted", f"{self.spec.strategy} rollout of {candidate}: {self.message}")

    # --- the progress deadline (spec.progressDeadlineSeconds) ---------------------------------------------------
    def enforce_deadline(self, stable: str, candidate: str) -> None:
        """A rollout waiting on the world (Initializing, Progressing) that made no progress for the deadline is
        Stalled, or with progressDeadlineAbort rolled back. Counted from status.lastProgressTime, or from when the
        step's first check was due (until then it waits on the clock, not on the world); a person's wait (Paused,
        WaitingPromotion) never times out. Progress in this very call resets it (stamped in :func:`_finish`)."""
        s, spec = self.s, self.spec
        if (s.phase not in ("Initializing", "Progressing") or s.candidate is None or spec.paused
                or s.paused_by_request or s.progress_key() != self.initial_progress):
            return
        since = _parse_time(s.last_progress_time)
        if since is None:
            return  # a rollout of an older status: its clock starts now
        traffic_since = _parse_time(s.traffic_since)
        if s.phase == "Progressing" and traffic_since is not None:
            # Until the step's first check is due, it waits on the clock; from then on a failed check is no progress.
            since = max(since, traffic_since + datetime.timedelta(seconds=self._window()))
        deadline = spec.progress_deadline_seconds
        elapsed = (self.now - since).total_seconds()
        if elapsed < deadline:
            self.deadline_in = deadline - elapsed
            return
        waited = self.message or s.phase
        failures = [x for x in s.last_results if not x.passed]
        if failures and describe_failures(failures) not in waited:
            waited += f"; last checks: {describe_failures(failures)}"
        if not spec.progress_deadline_abort:
            self.deadline_exceeded = (f"no progress in {deadline}s (spec.progressDeadlineSeconds) on the rollout of "
                                      f"{candidate}: {waited}")
            return
        self.request = None  # rolled back: nothing left to measure
        self.message = (f"rolled back {candidate}: no progress in {deadline}s (spec.progressDeadlineSeconds, "
                        f"progressDeadlineAbort): {waited}; all traffic to {stable}")
        s.last_results = [*s.last_results, MetricResult(name=DEADLINE_RESULT, passed=False,
                                                        message=f"no progress in {deadline}s: {waited}")]
        self.event("Warning", "ProgressDeadlineExceeded", self.message)
        s.phase, s.weight, s.step = "Failed", 0, None
        s.traffic_changes()
        self.post_rollout = self.webhooks("PostRollout")

    # --- requests (status.requests): acted on once, recorded in status.handledRequests with their effect ----------
    def act_on_requests(self, stable: str, in_rollout: bool) -> str:
        """Act on the pending requests through the same moves as the rollout itself; returns the stable after them.
        ``in_rollout``: the spec has a candidate beside the stable, the one the status records."""
        s = self.s
        for action in s.pending_requests():
            s.handled[action] = s.requests[action]
            candidate = s.candidate if in_rollout else None
            started = candidate is not None and s.phase in ("Initializing", *STARTED_PHASES)
            if action == "pause":
                s.paused_by_request = True
                if candidate is None:
                    self.event("Normal", "PauseRequested", "paused: a rollout that starts holds until resumed")
            elif action == "resume":
                s.paused_by_request = False
                if self.spec.paused:
                    self.event("Warning", "ResumeRefused", "spec.paused is true: desired state, Git's to change")
                elif candidate is None:
                    self.event("Normal", "ResumeRequested", "resumed: nothing was paused")
            elif action == "abort" and started and candidate is not None:
                s.last_results = [*s.last_results, MetricResult(name="aborted", passed=False,
                                                                message="aborted by request")]
                self.message = f"rollout of {candidate} aborted by request; all traffic to {stable}"
                self.event("Normal", "Aborted", self.message)
                s.phase, s.weight, s.step, s.paused_by_request = "Failed", 0, None, False
                s.traffic_changes()
                self.post_rollout = self.webhooks("PostRollout")
            elif action == "retry" and candidate is not None and s.phase == "Failed":
                s.start_rollout(candidate)
                self.event("Normal", "Retried", f"rollout of {candidate} started again from its first step")
            elif action == "promote" and started and candidate is not None and self.ready(candidate):
                self.promote(stable, candidate, "promoted by request, remaining steps skipped")
                stable = candidate
            else:
                why = ("it is not Ready: " + self.why_not_ready(candidate) if action == "promote" and started and
                       candidate is not None else f"the phase is {s.phase}" if candidate is not None else
                       "no rollout is in progress")
                self.event("Warning", "RequestRefused", f"{action} request not acted on: {why}")
        return stable

    def _complete(self, stable: str, candidate: str) -> None:
        promotion = self.spec.analysis.promotion if self.spec.analysis else "Automatic"
        if self.spec.canary is not None and self.spec.canary.weight is not None:
            promotion = "Manual"  # a held weight is promoted by a person
        if promotion == "Automatic":
            self.promote(stable, candidate, "passed its analysis")
        else:
            s = self.s
            s.phase = "WaitingPromotion"
            if self.spec.strategy == "Canary":
                s.step = len(step_weights(self.spec))  # past the last step: all passed
            self.message = self._waiting_message(candidate)
            self.event("Normal", "WaitingPromotion", self.message)

    def _waiting_message(self, candidate: str) -> str:
        return (f"{candidate} passed its analysis; promote it with model-traffic promote {self.world.name}" +
                (f" (or set spec.stable.version to {candidate})" if self.legacy else ""))

    def promote(self, old: str, new: str, why: str) -> None:
        self.s.end_rollout("Promoting")
        self.s.stable = new
        self.event("Normal", "Promoted", f"{new} promoted to stable ({why}); {old} retires once drained")
        self.post_rollout = self.webhooks("PostRollout")
        self.message = f"{new} is stable; draining {old}"

    # --- desired traffic --------------------------------------------------------------------------------
    def weights(self, stable: str, candidate: str | None) -> dict[str, int]:
        s = self.s
        if candidate is None or s.phase in ("Failed", "Initializing") or self.spec.strategy != "Canary":
            return {stable: 100}
        weight = max(0, min(100, s.weight or 0))
        out = {stable: 100 - weight}
        if weight:
            out[candidate] = weight
        return out


def as_version(entry: ModelVersion) -> ModelVersion:
    """A version's definition alone (without a candidate's held weight or a variant's weight)."""
    return ModelVersion.model_validate({k: v for k, v in entry.model_dump().items() if k in ModelVersion.model_fields})


def desired_spec(spec: TrafficConfigSpec, status: TrafficConfigStatus) -> TrafficConfigSpec:
    """The spec in the stable/candidate form the state machine runs on. For ``spec.release`` (Git holds only the
    desired version) the stable is the one the status records in full (``status.stable``): the release is the
    candidate when it names another version, else the stable itself (changed in place). The first release, with
    nothing recorded, is the stable at once (Flagger's initialization). The deprecated ``stable``/``canary`` form
    is that shape already and runs as it always did."""
    release = spec.release
    if release is None:
        return spec
    stable = release.as_version()
    canary: CanaryVersion | None = None
    recorded = status.stable_version
    if spec.strategy != "Weighted" and recorded is not None and recorded != release.version:
        # A status written before status.stable existed has the version only: docs/upgrade.md has the move wait
        # for the operator to record it.
        stable = status.stable if status.stable is not None and status.stable.version == recorded else \
            ModelVersion(version=recorded)
        canary = CanaryVersion.model_validate(release.model_dump())
    return spec.model_copy(update={"stable": stable, "canary": canary})


def _status_model(status: dict[str, Any] | TrafficConfigStatus | None) -> TrafficConfigStatus:
    if isinstance(status, TrafficConfigStatus):
        return status
    raw = {k: v for k, v in (status or {}).items() if k not in ("conditions", "observedGeneration")}
    return TrafficConfigStatus.model_validate(raw)


def recorded_traffic(spec: TrafficConfigSpec, status: dict[str, Any] | TrafficConfigStatus | None,
                     world: TrafficWorld) -> list[dict[str, Any]]:
    """The VirtualModel backends that carry the step ``status`` records: what the live VirtualModel has once the
    children of that status are applied."""
    model = _status_model(status)
    return _Rollout(desired_spec(spec, model), _State.read(model), world, datetime.datetime.now(datetime.UTC)) \
        .recorded_backends()


def step(
    spec: TrafficConfigSpec,
    status: dict[str, Any] | TrafficConfigStatus | None,
    world: TrafficWorld,
    now: datetime.datetime,
) -> RolloutPlan:
    """The next status, the desired children and what to do now. Pure and deterministic."""
    model = _status_model(status)
    spec = desired_spec(spec, model)
    state = _State.read(model)
    previous_phase = state.phase
    r = _Rollout(spec, state, world, _utc(now), now)
    r.observe_traffic()
    if spec.strategy == "Weighted":
        return _weighted(r, previous_phase)

    assert spec.stable is not None  # desired_spec: the stable/canary form
    target = spec.stable.version
    stable = state.stable or target
    canary = spec.canary.version if spec.canary else None
    candidate: str | None = None  # a version deployed beside the stable

    if target != stable and target == state.candidate and state.phase != "Failed":
        # Manual promotion (or a GitOps promotion ahead of the analysis): the candidate already runs.
        if r.ready(target):
            r.promote(stable, target, "spec.stable.version set to the candidate")
            stable = target
        else:
            candidate, r.holding = target, True
            r.message = f"promotion of {target} waits for it: {r.why_not_ready(target)}"
    elif target != stable and canary != stable:
        # spec.stable changed to a version that is not the candidate: replace the stable once it is Ready.
        # (After an automatic promotion spec.canary names the new stable until the spec catches up.)
        if state.candidate:
            r.event("Normal", "RolloutReset", f"rollout of {state.candidate} reset: spec.stable changed to {target}")
            state.end_rollout("Promoting")
        if r.ready(target):
            r.promote(stable, target, "spec.stable.version changed")
            stable = target
        else:
            state.phase = "Promoting"
            candidate, r.holding = target, True  # deployed, no traffic until Ready
            r.message = f"switching the stable to {target} once Ready: {r.why_not_ready(target)}"
    elif canary is None or canary == stable:
        # No rollout.
        if state.candidate is not None:
            if state.phase != "Failed":
                why = "spec.canary removed" if r.legacy else f"spec.release set back to {stable}"
                r.event("Normal", "Aborted", f"rollout of {state.candidate} aborted: {why}; all traffic to {stable}")
                r.post_rollout = r.webhooks("PostRollout")
            state.end_rollout("Succeeded")
    else:
        if state.candidate != canary:
            if state.candidate is not None:
                r.event("Normal", "RolloutReset", f"candidate changed from {state.candidate} to {canary}")
            state.start_rollout(canary)
        stable = r.act_on_requests(stable, in_rollout=True)
        if state.candidate is not None:
            r.advance(stable, canary)
            r.enforce_deadline(stable, canary)
        stable = state.stable or stable
        if state.candidate is not None and state.phase != "Failed":
            candidate = canary  # a failed candidate drains; a promoted one is the stable

    if state.pending_requests():  # not in a rollout: pause/resume recorded, the others refused with a reason
        stable = r.act_on_requests(stable, in_rollout=False)
    state.stable = stable
    keep = [stable] + ([candidate] if candidate and candidate != stable else [])
    weights, matched = r.traffic(stable, state.candidate if state.candidate and state.candidate == candidate
                                 else None)
    return _finish(r, keep, weights, matched, previous_phase)


def _weighted(r: _Rollout, previous_phase: Phase | None) -> RolloutPlan:
    spec, s = r.spec, r.s
    variants = spec.variants or []
    assert spec.stable is not None  # desired_spec: the stable/canary form
    r.act_on_requests(spec.stable.version, in_rollout=False)  # no rollout: weights are desired state (spec)
    s.stable = spec.stable.version
    s.candidate, s.step, s.iterations, s.failed = None, None, 0, 0
    weights = {v.version: v.weight for v in variants if v.weight > 0}
    metrics = list(spec.analysis.metrics or []) if spec.analysis else []
    if not metrics:
        s.last_step_time = None
    elif r.check_due():
        if r.world.variant_results is None:
            prometheus = spec.analysis.prometheus if spec.analysis else None
            r.request = AnalysisRequest("Observe", r.target(s.stable), r.target(s.stable), _interval(spec),
                                        metrics, [], prometheus.address if prometheus else None,
                                        tuple(r.target(v.version) for v in variants))
        else:
            s.last_step_time = _stamp(r.now)
            s.version_metrics = dict(r.world.variant_results)
    s.weight = 100 - weights.get(s.stable, 0)
    waiting = [r.why_not_ready(v.version) for v in variants if not r.ready(v.version)]
    s.phase = "Progressing" if waiting else "Succeeded"
    r.message = ("waiting: " + "; ".join(waiting)) if waiting else (
        "weights " + ", ".join(f"{v.version}={v.weight}" for v in variants))
    return _finish(r, [v.version for v in variants], weights, None, previous_phase)


def _finish(r: _Rollout, keep: list[str], weights: dict[str, int], matched: str | None,
            previous_phase: Phase | None) -> RolloutPlan:
    spec, s, world = r.spec, r.s, r.world
    # Each version's entry (storage and sizing); a variant's entry first, as the Weighted strategy lists them all.
    assert spec.stable is not None  # desired_spec: the stable/canary form
    entries: dict[str, ModelVersion] = {v.version: v for v in spec.variants or []}
    entries.setdefault(spec.stable.version, spec.stable)
    if spec.canary:
        entries.setdefault(spec.canary.version, spec.canary)
        if r.legacy and s.stable == spec.canary.version != spec.stable.version and spec.strategy != "Weighted":
            # Promoted automatically, before spec.stable names it: the new stable takes the stable role's size
            # (as Argo Rollouts scales the promoted ReplicaSet to spec.replicas), with the candidate's weights.
            entries[spec.canary.version] = ModelVersion(
                version=spec.canary.version, storage_uri=spec.canary.storage_uri,
                replicas=spec.stable.replicas, resources=spec.stable.resources)

    # Make before break: a version no longer wanted keeps its children while the live VirtualModel, the live
    # AIGatewayRoute or the HTTPRoute the gateway serves still references it (or Envoy Gateway has not yet
    # reported on that HTTPRoute's current generation). Known from the status and from what we own.
    live = world.live_weights or {}
    known = set(s.versions) | set(world.versions) | set(world.owned_versions)

    def referenced(version: str) -> bool:
        return (live.get(version, 0) > 0 or f"{world.name}-{version}" in world.route_references
                or not world.route_settled)

    draining = sorted(v for v in known if v not in keep and referenced(v))
    retire = sorted(v for v in known if v not in keep and v not in draining)
    children: list[Child] = []
    details: list[Detail] = []
    for version in keep + draining:
        # A draining version no entry names any more (a removed canary or variant) is left as it runs: rendered
        # from the bare template it would lose its weights and size while it still serves.
        if version in keep or version in entries:
            isvc = _inference_service(r, version, entries.get(version))
            if isvc is not None:
                children.append(isvc)
        children.append(_backend(r, version))
    children.append(_virtual_model(r, weights, matched))

    current = s.stable or spec.stable.version
    if s.phase == "Promoting" and not draining and not r.holding and s.candidate is None:
        s.phase = "Succeeded"
        r.message = ""
    if s.candidate is None and s.phase in (None, "Initializing", "Succeeded") and spec.strategy != "Weighted":
        s.phase = "Succeeded" if r.ready(current) else "Initializing"
        if s.phase == "Initializing":
            r.message = "waiting: " + r.why_not_ready(current)
    if s.phase == "Succeeded" and not r.message:
        r.message = f"{current} serves all traffic"

    delete: list[tuple[ResourceType, str]] = []
    for version in retire:
        # The backend first: it is what the gateway calls, and it reads the InferenceService (gone first, the
        # backend would report InferenceServiceNotFound until its own deletion).
        delete.append((MANAGED_AI_SERVICE_BACKEND, f"{world.name}-{version}"))
        if not r.is_ref(version):  # the referenced InferenceService is not ours: it is left as it is
            delete.append((kube.INFERENCE_SERVICE, r.isvc_name(version)))

    versions = []
    for version in keep + draining:
        seen = world.versions.get(version)
        entry: dict[str, Any] = {"version": version, "inferenceService": r.isvc_name(version),
                                 "ready": bool(seen and seen.ready), "weight": weights.get(version, 0)}
        if seen and seen.url:
            entry["url"] = seen.url
        if spec.strategy == "Weighted" and s.version_metrics.get(version):
            entry["metrics"] = [m.wire() for m in s.version_metrics[version]]
        versions.append(entry)

    if s.candidate is None:
        s.last_progress_time = None
    elif s.progress_key() != r.initial_progress or s.last_progress_time is None:
        s.last_progress_time = _stamp(r.now)
    pending = [_pending_event(r, event) for event in r.events]
    status: dict[str, Any] = {
        "phase": s.phase, "stableVersion": s.stable, "candidateVersion": s.candidate,
        # In full: with spec.release, Git no longer holds the stable's definition.
        "stable": _definition(s.stable, entries, s.stable_definition),
        "candidate": _definition(s.candidate, entries, s.candidate_definition),
        "canaryWeight": s.weight, "currentStep": s.step, "failedChecks": s.failed, "iterations": s.iterations,
        "lastStepTime": s.last_step_time, "lastProgressTime": s.last_progress_time,
        "trafficSince": s.traffic_since,
        "lastResults": [m.wire() for m in s.last_results], "versions": versions,
        "pendingEvents": pending or None,
        # people's requests go through unchanged (the status write would otherwise remove them)
        "requests": dict(s.requests) or None, "handledRequests": dict(s.handled) or None,
        "pausedByRequest": s.paused_by_request or None,
    }
    status = {k: v for k, v in status.items() if v is not None}
    details.append(Detail("AnalysisPassed", None if not s.last_results else all(x.passed for x in s.last_results),
                          "NoAnalysis" if not s.last_results else
                          ("Passed" if all(x.passed for x in s.last_results) else
                           "Inconclusive" if _is_inconclusive(s.last_results) else "Failed"),
                          describe_failures(s.last_results) if s.last_results else "no analysis yet"))
    message = r.message or str(s.phase)
    verdict = {
        "Succeeded": Verdict("Ready", "Succeeded", message),
        "WaitingPromotion": Verdict("Ready", "WaitingPromotion", message),
        "Paused": Verdict("Ready", "Inconclusive" if _is_inconclusive(s.last_results) and not spec.paused
                          else "Paused", message),
        "Failed": Verdict("Stalled", "RolledBack", message),
    }.get(str(s.phase), Verdict("Progressing", str(s.phase), message))
    if s.phase == "Failed" and any(x.name == DEADLINE_RESULT for x in s.last_results):
        verdict = Verdict("Stalled", "ProgressDeadlineExceeded", message)
    elif r.deadline_exceeded:
        verdict = Verdict("Stalled", "ProgressDeadlineExceeded", r.deadline_exceeded)
    if verdict.state == "Ready":
        verdict = _children_ready(r, keep) or verdict
    requeue = _requeue_after(r)
    if draining and not any(live.get(v, 0) > 0 for v in draining):
        # Out of the VirtualModel, still on the route: the route's changes wake the VirtualModel, not us.
        requeue = min(requeue or ROUTE_RECHECK_SECONDS, ROUTE_RECHECK_SECONDS)
    return RolloutPlan(status, verdict, details, children, retire, delete, r.request, r.post_rollout, r.events,
                       requeue, previous_phase)


ROUTE_RECHECK_SECONDS = 1.0


def _definition(version: str | None, entries: dict[str, ModelVersion],
                recorded: ModelVersion | None) -> dict[str, Any] | None:
    """A version's definition for the status: its entry in the spec, else the one recorded (the stable of a
    release no longer in the spec), else the version alone."""
    if version is None:
        return None
    entry = entries.get(version) or (recorded if recorded is not None and recorded.version == version else
                                     ModelVersion(version=version))
    return as_version(entry).wire()


def _children_ready(r: _Rollout, keep: list[str]) -> Verdict | None:
    """Not Ready while the VirtualModel or a serving version's backend is not: the TrafficConfig reads their
    status (a VirtualModel refused for its model name, a backend the gateway cannot use). None: all Ready."""
    vm = r.world.virtual_model
    problems: list[tuple[bool, str]] = []
    if vm is None:
        problems.append((False, f"VirtualModel {r.world.name} not observed yet"))
    elif not vm.health.ready:
        problems.append((vm.health.stalled, f"VirtualModel {r.world.name}: {vm.health.message}"))
    for version in keep:
        backend = r.world.backends.get(version)
        name = f"ManagedAIServiceBackend {r.world.name}-{version}"
        if backend is None:
            problems.append((False, f"{name} not observed yet"))
        elif not backend.ready:
            problems.append((backend.stalled, f"{name}: {backend.message}"))
    if not problems:
        return None
    message = "; ".join(text for _, text in problems)
    if any(stalled for stalled, _ in problems):
        return Verdict("Stalled", "ChildNotReady", message)
    return Verdict("Progressing", "ChildNotReady", message)


def _pending_event(r: _Rollout, event: RolloutEvent) -> dict[str, Any]:
    """An Event for the outbox: named from this object's uid and what makes the occurrence unique (its time), or,
    for a failed check, from the rollout (one Event with a growing series per candidate and spec generation)."""
    time = r.precise_now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    count = 1
    if event.reason == "CheckFailed":
        key = [r.world.uid, r.world.generation, r.s.candidate, event.reason]
        count = max(1, r.s.failed)
    else:
        key = [r.world.uid, time, len(r.events), r.events.index(event), event.reason]
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]
    return {"name": f"{r.world.name}.{digest}", "type": event.type, "reason": event.reason,
            "message": event.message[:1024], "time": time, "count": count}


def _requeue_after(r: _Rollout) -> float | None:
    """Seconds until a check (or a Weighted measurement) is due, when waiting on the clock (not on a watch)."""
    observing = r.spec.strategy == "Weighted" and bool(r.spec.analysis and r.spec.analysis.metrics)
    if (r.s.phase not in ("Progressing", "Initializing") and not observing) or r.spec.paused or r.s.paused_by_request:
        return None
    due_in = r.next_due_in()
    if r.deadline_in is not None:  # wake up when the deadline passes, whatever else happens
        due_in = min(due_in, r.deadline_in) if due_in else r.deadline_in
    return due_in if due_in else None


def _inference_service(r: _Rollout, version: str, entry: ModelVersion | None) -> Child | None:
    if r.is_ref(version):
        return None  # the referenced InferenceService is read, never written
    source = r.spec.inference_service
    if source.template is not None:
        base = source.template.wire()
    elif r.world.ref_inference_service is not None:
        base = r.world.ref_inference_service.get("spec") or {}
    else:
        r.message = r.message or f"InferenceService {r.ref_name} (spec.inferenceService.ref) not found"
        return None
    name = r.isvc_name(version)
    return Child(kube.INFERENCE_SERVICE, {
        "apiVersion": kube.INFERENCE_SERVICE.api_version, "kind": "InferenceService",
        "metadata": {"name": name, "labels": {LABEL_TRAFFIC_CONFIG: r.world.name, LABEL_VERSION: version}},
        "spec": _with_version(base, entry, r.served(version)),
    })


def _backend(r: _Rollout, version: str) -> Child:
    return Child(MANAGED_AI_SERVICE_BACKEND, {
        "apiVersion": API_VERSION, "kind": backend_api.KIND,
        "metadata": {"name": f"{r.world.name}-{version}",
                     "labels": {LABEL_TRAFFIC_CONFIG: r.world.name, LABEL_VERSION: version}},
        "spec": {"schema": r.spec.schema_.wire(),
                 "endpoint": {"inferenceService": {"name": r.isvc_name(version)}}},
    })


def _vm_backends(r: _Rollout, weights: dict[str, int], matched: str | None) -> list[dict[str, Any]]:
    """Weights as percentages; versions at 0 are left out. ``matched``: the candidate of an ABTest (or a
    BlueGreen preview) reached only by requests matching ``analysis.match``: a header-matched backend of the
    VirtualModel (``matches``), which gets a route rule of its own ahead of the default one.
    """
    backends: list[dict[str, Any]] = [
        {"name": f"{r.world.name}-{version}", "modelNameOverride": r.served(version), "weight": weight}
        for version, weight in sorted(weights.items()) if weight > 0
    ]
    if matched is not None and r.spec.analysis and r.spec.analysis.match:
        backends.append({"name": f"{r.world.name}-{matched}", "modelNameOverride": r.served(matched), "weight": 1,
                         "matches": [m.wire() for m in r.spec.analysis.match]})
    return backends


def _entry(backend: dict[str, Any]) -> TrafficEntry:
    return (str(backend["name"]), int(backend["weight"]), str(backend.get("modelNameOverride") or ""),
            bool(backend.get("matches")))


def _virtual_model(r: _Rollout, weights: dict[str, int], matched: str | None) -> Child:
    """The VirtualModel of these weights (see :func:`_vm_backends`)."""
    spec: dict[str, Any] = {"modelName": r.model, "backends": _vm_backends(r, weights, matched)}
    if r.spec.gateway_refs:
        spec["gatewayRefs"] = [g.wire() for g in r.spec.gateway_refs]
    if r.spec.auth is not None:
        spec["auth"] = r.spec.auth.wire()
    if r.spec.rate_limit is not None:
        spec["rateLimit"] = r.spec.rate_limit.wire()
    return Child(VIRTUAL_MODEL, {
        "apiVersion": API_VERSION, "kind": vm_api.KIND,
        "metadata": {"name": r.world.name, "labels": {LABEL_TRAFFIC_CONFIG: r.world.name}},
        "spec": spec,
    })
