"""TrafficConfig reconciler: observe the versions, take one step of the rollout, record it, then act.

Order matters for restart safety. The state machine (``render.trafficconfig.step``) decides from the
status alone; when it moved the rollout (a new weight, a failed check, a promotion), that progress is
written to the status first, guarded by the object's resourceVersion, and only then are the children
(InferenceServices, ManagedAIServiceBackends, the VirtualModel) changed. A crash between the two leaves a
status ahead of the children, which the next reconcile simply applies; it never re-takes or skips a step (the
step's interval starts only once the live VirtualModel carries it: ``status.trafficSince``). The Events of a
move are recorded with it (``status.pendingEvents``) and posted after it under deterministic names, so a crash
in between posts them at the next reconcile, once.
Two operators racing (a leader hand-over) cannot both record a step: the second write gets a conflict
and its reconcile starts again from the status the first one wrote.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from model_traffic import kube, metrics
from model_traffic.kinds.trafficconfig import deletion, measure
from model_traffic.kinds.trafficconfig.analysis import Target, served_model_name
from model_traffic.kinds.trafficconfig.analysis_spec import Prometheus
from model_traffic.kinds.trafficconfig.render import (
    LABEL_TRAFFIC_CONFIG,
    LABEL_VERSION,
    AnalysisRequest,
    ChildHealth,
    LiveVirtualModel,
    ObservedVersion,
    RolloutPlan,
    TrafficWorld,
    live_weights_from_virtual_model,
    model_name,
    outbound_refusals,
    step,
)
from model_traffic.kinds.trafficconfig.spec import PHASES, TrafficConfigSpec
from model_traffic.kube import Kube
from model_traffic.outbound import DEFAULT_POLICY, OutboundPolicy
from model_traffic.pipeline import apply, events
from model_traffic.pipeline.conditions import Verdict, status_patch
from model_traffic.pipeline.plan import Plan
from model_traffic.pipeline.result import apply_plan, result_of
from model_traffic.pipeline.runtime import Result, invalid_spec, kept_status

log = logging.getLogger(__name__)

TRAFFIC_CONFIG = kube.TRAFFIC_CONFIG
HTTP_ROUTE = kube.HTTP_ROUTE

# The status fields that carry the rollout's progress: written (guarded) before any child changes.
PROGRESS_FIELDS = ("phase", "stableVersion", "candidateVersion", "stable", "candidate", "canaryWeight", "currentStep",
                   "failedChecks", "iterations", "lastStepTime", "lastProgressTime", "trafficSince", "lastResults",
                   "pendingEvents", "handledRequests", "pausedByRequest")

Clock = Callable[[], datetime.datetime]
KSERVE_RECHECK_SECONDS = 15.0


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


# --- observe --------------------------------------------------------------------------------------------

def references(namespace: str, name: str, spec: dict[str, Any]) -> dict[tuple[str, str, str], str]:
    """(namespace, "InferenceService", name) of a brownfield ``ref`` -> the TrafficConfig: for a kopf index.
    The InferenceServices it creates carry its label and are watched as children."""
    ref = ((spec.get("inferenceService") or {}).get("ref") or {}).get("name")
    return {(namespace, "InferenceService", str(ref)): name} if ref else {}


def observe(kube_: Kube, spec: TrafficConfigSpec, body: dict[str, Any]) -> TrafficWorld:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    recorded = {v.get("inferenceService"): v.get("version")
                for v in (body.get("status") or {}).get("versions") or []}
    versions: dict[str, ObservedVersion] = {}
    ref_isvc = None
    if kube_.served_versions(kube.INFERENCE_SERVICE.group):
        for isvc in kube_.list_objects(kube.INFERENCE_SERVICE, namespace, f"{LABEL_TRAFFIC_CONFIG}={name}"):
            version = (isvc["metadata"].get("labels") or {}).get(LABEL_VERSION)
            if version and not isvc["metadata"].get("deletionTimestamp"):  # retired ones may linger (finalizers)
                versions[version] = ObservedVersion.from_inference_service(isvc)
        ref = spec.inference_service.ref
        if ref is not None:
            ref_isvc = kube_.get(kube.INFERENCE_SERVICE, namespace, ref.name)
            # The referenced InferenceService is the version the status recorded for it; before anything is
            # recorded, the stable one. Once retired, it is no version at all (only the source of clones).
            version = recorded.get(ref.name) or (spec.first_stable().version if not recorded else None)
            if ref_isvc is not None and version:
                versions[str(version)] = ObservedVersion.from_inference_service(ref_isvc)
    owner = apply.Owner.of(body)
    virtual_model = kube_.get(kube.VIRTUAL_MODEL, namespace, name)
    if virtual_model is not None and not apply.owned_by(virtual_model, owner):
        virtual_model = None  # someone else's: reported by the apply, never read as our traffic
    # Everything we own, by owner reference (a child that lost its labels is still ours): no crash forgets one.
    owned: set[str] = set()
    backends: dict[str, ChildHealth] = {}
    kinds = [kube.MANAGED_AI_SERVICE_BACKEND]
    if kube_.served_versions(kube.INFERENCE_SERVICE.group):
        kinds.append(kube.INFERENCE_SERVICE)
    for rtype in kinds:
        for child in kube_.list_controlled(rtype, namespace, owner.uid):
            version = _version_of(child, name)
            if version is None or not apply.owned_by(child, owner):
                continue
            owned.add(version)
            if rtype == kube.MANAGED_AI_SERVICE_BACKEND and not child["metadata"].get("deletionTimestamp"):
                backends[version] = ChildHealth.of(child)
    references, settled = _route_references(kube_, namespace, name)
    return TrafficWorld(namespace=namespace, name=name, versions=versions, ref_inference_service=ref_isvc,
                        live_weights=live_weights_from_virtual_model(virtual_model, name),
                        virtual_model=LiveVirtualModel.of(virtual_model) if virtual_model is not None else None,
                        backends=backends, owned_versions=frozenset(owned), route_references=references,
                        route_settled=settled, uid=meta["uid"], generation=int(meta.get("generation") or 0))


def _version_of(child: dict[str, Any], name: str) -> str | None:
    """The version a child of TrafficConfig ``name`` serves: its label, else its name ``<name>-<version>``."""
    meta = child["metadata"]
    version = (meta.get("labels") or {}).get(LABEL_VERSION)
    if version:
        return str(version)
    prefix = f"{name}-"
    return str(meta["name"])[len(prefix):] if str(meta["name"]).startswith(prefix) else None


def _route_references(kube_: Kube, namespace: str, name: str) -> tuple[frozenset[str], bool]:
    """What the gateway may still send to: the AIServiceBackends the live AIGatewayRoute ``<name>`` (our
    VirtualModel's) references, and the Envoy Gateway Backends of the HTTPRoute the AI Gateway generated from it
    (same name, internal/controller/ai_gateway_route.go newHTTPRoute: one backendRef per AIServiceBackend, its
    spec.backendRef); and whether Envoy Gateway reported on that HTTPRoute's current generation (each
    status.parents[].conditions[].observedGeneration, internal/gatewayapi/status/route.go). An HTTPRoute no
    Gateway reports on is served by none."""
    names: set[str] = set()
    settled = True
    route = kube_.get_ours(kube.AI_GATEWAY_ROUTE, namespace, name)
    if route is not None and not route["metadata"].get("deletionTimestamp"):
        for rule in (route.get("spec") or {}).get("rules") or []:
            names.update(str(ref.get("name")) for ref in rule.get("backendRefs") or [])
    http_route = kube_.get_ours(HTTP_ROUTE, namespace, name)
    if http_route is not None:
        for rule in (http_route.get("spec") or {}).get("rules") or []:
            names.update(str(ref.get("name")) for ref in rule.get("backendRefs") or [])
        generation = http_route["metadata"].get("generation")
        for parent in (http_route.get("status") or {}).get("parents") or []:
            for condition in parent.get("conditions") or []:
                observed = condition.get("observedGeneration")
                if isinstance(observed, int) and isinstance(generation, int) and observed < generation:
                    settled = False
    return frozenset(names), settled


# --- analysis -------------------------------------------------------------------------------------------
# The I/O of an analysis (credentials, Prometheus, webhooks on their own pool) is kinds/trafficconfig/measure.py.

def _check_id(status: dict[str, Any]) -> str:
    """Which check an analysis is for: the step the status records. A webhook call started for one check is never
    taken for another (the same status computed again, e.g. at the next reconcile, gives the same id)."""
    fields = ("stableVersion", "candidateVersion", "currentStep", "canaryWeight", "iterations", "failedChecks",
              "lastStepTime")
    return hashlib.sha256(json.dumps([status.get(f) for f in fields]).encode()).hexdigest()[:16]


def _measure(kube_: Kube, spec: TrafficConfigSpec, request: AnalysisRequest, plan: RolloutPlan,
             world: TrafficWorld, default_prometheus: str | None, outbound: OutboundPolicy,
             template_prometheus: dict[str, Prometheus], candidate: Target) -> measure.Measurement:
    prometheus = (spec.analysis.prometheus if spec.analysis and spec.analysis.prometheus else
                  Prometheus(address=default_prometheus) if default_prometheus else None)
    target = measure.AnalysisTarget(world.namespace, world.name, model_name(spec, world.name),
                                    _check_id(plan.status))
    return measure.run_analysis(request.metrics, request.webhooks, candidate=candidate, stable=request.stable,
                                interval=request.interval, prometheus=prometheus,
                                template_prometheus=template_prometheus, target=target,
                                read=measure.kube_values(kube_, world.namespace), outbound=outbound)


# --- reconcile ------------------------------------------------------------------------------------------

def _progress(status: dict[str, Any]) -> dict[str, Any]:
    return {k: status[k] for k in PROGRESS_FIELDS if k in status}


def record_progress(kube_: Kube, body: dict[str, Any], plan: RolloutPlan) -> bool:
    """Write the rollout's progress before acting on it; True when it moved. The plan's other status fields
    (the versions) go along, so the status is never seen half-updated. A conflict (someone wrote the object
    since we read it) propagates: the runtime reads it again and starts over."""
    old = body.get("status") or {}
    if status_patch(_progress(old), _progress(plan.status)) is None:
        return False
    patch = status_patch({k: v for k, v in old.items() if k in PROGRESS_FIELDS or k in plan.status}, plan.status)
    if patch is None:
        return False
    meta = body["metadata"]
    written = kube_.patch_status(TRAFFIC_CONFIG, meta["namespace"], meta["name"], patch,
                                 resource_version=meta["resourceVersion"])
    body["status"] = written.get("status") or {}
    meta["resourceVersion"] = written["metadata"]["resourceVersion"]
    return True


def _delete_retired(kube_: Kube, owner: apply.Owner, plan: RolloutPlan, body: dict[str, Any],
                    previous: dict[str, Any]) -> None:
    """Delete the children of retired versions; an Event names what went, once (when it went). ``previous``:
    the status before this reconcile, which still lists the retired versions."""
    deleted: list[str] = []
    for rtype, child in plan.delete:
        if rtype == kube.INFERENCE_SERVICE and not kube_.served_versions(rtype.group):
            continue
        if apply.prune(kube_, rtype, owner, child):
            deleted.append(f"{rtype.kind} {child}")
    if deleted:
        recorded = previous.get("versions") or []
        kept = [f"InferenceService {v.get('inferenceService')}" for v in recorded
                if v.get("version") in plan.retire and not any(v.get("inferenceService") in d for d in deleted)]
        note = f"; {', '.join(kept)} is not owned by this TrafficConfig and is left as it is" if kept else ""
        events.emit(kube_, body, "Normal", "Retired",
                    f"version {', '.join(plan.retire)} receives no traffic: deleted {', '.join(deleted)}{note}")


def _children_plan(plan: RolloutPlan, kserve_served: bool) -> Plan:
    children = [c for c in plan.children if kserve_served or c.rtype != kube.INFERENCE_SERVICE]
    return Plan(verdict=plan.verdict, details=plan.details, children=children, status=plan.status)


def _take_step(kube_: Kube, spec: TrafficConfigSpec, status: dict[str, Any], world: TrafficWorld,
               now: datetime.datetime, default_prometheus: str | None, outbound: OutboundPolicy,
               template_prometheus: dict[str, Prometheus]) -> tuple[RolloutPlan, measure.Measurement | None]:
    """One step of the state machine; when it asks for measurements, take them and step again. When they are not
    complete (a webhook still running, credentials missing), the plan as it is and what it waits for."""
    plan = step(spec, status, world, now)
    request = plan.analysis
    if request is None:
        return plan, None
    args = (kube_, spec, request, plan, world, default_prometheus, outbound, template_prometheus)
    if request.purpose == "Observe":
        measured = {target.version: _measure(*args, candidate=target) for target in request.variants}
        pending = next((m for m in measured.values() if not m.complete), None)
        if pending is not None:
            return plan, pending
        variant_results = {version: m.results or [] for version, m in measured.items()}
        return step(spec, status, dataclasses.replace(world, variant_results=variant_results), now), None
    measured_one = _measure(*args, candidate=request.candidate)
    if not measured_one.complete:
        return plan, measured_one
    return step(spec, status, dataclasses.replace(world, analysis=measured_one.results), now), None


def _awaiting(plan: RolloutPlan, pending: measure.Measurement, previous: dict[str, Any],
              now: datetime.datetime) -> None:
    """Record in the plan's status which webhook calls the check waits for (since when), and when to look again."""
    since = {(c.get("name"), c.get("type")): c.get("started") for c in previous.get("webhookCalls") or []}
    stamp = now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    calls = [{"name": h.name, "type": h.type, "started": since.get((h.name, h.type)) or stamp}
             for h in pending.waiting]
    if calls:
        plan.status["webhookCalls"] = calls
    if pending.recheck_after is not None:
        plan.requeue_after = min(plan.requeue_after or pending.recheck_after, pending.recheck_after)


def _post_rollout(kube_: Kube, plan: RolloutPlan, spec: TrafficConfigSpec, namespace: str, name: str,
                  previous: dict[str, Any], outbound: OutboundPolicy) -> None:
    """PostRollout webhooks, at most once: called after the progress that triggers them is recorded. The
    payload names the rollout that ended (the candidate and the stable it ran against); ``outcome`` says how."""
    model = model_name(spec, name)
    candidate = str(previous.get("candidateVersion") or "")
    stable = str(previous.get("stableVersion") or plan.status.get("stableVersion") or "")
    target = measure.AnalysisTarget(namespace, name, model, check="")
    read = measure.kube_values(kube_, namespace)
    for hook in plan.post_rollout:
        payload = {**measure.webhook_payload(Target(candidate, served_model_name(model, candidate)),
                                             Target(stable, served_model_name(model, stable)), hook, target),
                   "outcome": plan.status.get("phase")}
        try:
            call = measure.prepare_call(hook, payload, read)
        except measure.MissingValue as error:  # too late to act on: logged (names, never values)
            log.warning("PostRollout webhook %s of %s/%s not called: %s", hook.name, namespace, name, error)
            continue
        measure.WEBHOOK_CALLS.fire(call, outbound, f"{namespace}/{name}")  # its failure is logged there


def reconcile(kube_: Kube, body: dict[str, Any], default_prometheus: str | None = None,
              clock: Clock = _utcnow, outbound: OutboundPolicy = DEFAULT_POLICY) -> Result:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    try:
        spec = TrafficConfigSpec.model_validate(body.get("spec") or {})
    except ValidationError as error:
        return invalid_spec(error)
    # Deleting it keeps the stable version serving (spec.deletionPolicy Retain): that needs our finalizer on it.
    deletion.keep_finalizer(kube_, body, spec.deletion_policy)
    deletion.adopt_orphans(kube_, body)  # what the deletion of an earlier TrafficConfig of this name left serving
    spec, templates = measure.with_templates(spec, namespace, measure.template_lookup(kube_))
    if templates.problems:
        # Nothing is measured and no step is taken until the templates are there (their watch wakes us).
        problems = "; ".join(p.message for p in templates.problems)
        reason = ("TemplateNotFound" if any(p.reason == "TemplateNotFound" for p in templates.problems)
                  else "TemplateArgsInvalid")
        return Result(Verdict("Stalled", reason, problems),
                      status=kept_status(body.get("status") or {}))
    refusals = outbound_refusals(spec, default_prometheus, outbound) + measure.template_refusals(templates, outbound)
    if refusals:
        # Nothing is called and no step is taken; the rollout stays where it is (children and progress untouched)
        # until the address changes or the policy allows it.
        return Result(Verdict("Stalled", "AddressNotAllowed", "; ".join(refusals)),
                      status=kept_status(body.get("status") or {}))
    owner = apply.Owner.of(body)
    world = observe(kube_, spec, body)
    previous = dict(body.get("status") or {})
    # Events a crash kept from being posted (recorded with their progress, not yet cleared): post them now.
    leftover = list(previous.get("pendingEvents") or [])
    for pending in leftover:
        events.post(kube_, body, pending)
    now = clock()
    plan, incomplete = _take_step(kube_, spec, previous, world, now, default_prometheus, outbound,
                                  templates.prometheus)
    if incomplete is not None:
        _awaiting(plan, incomplete, previous, now)
    announced = bool(leftover)
    if record_progress(kube_, body, plan):
        for pending in plan.status.get("pendingEvents") or []:
            events.post(kube_, body, pending)
            announced = True
        _post_rollout(kube_, plan, spec, namespace, name, previous, outbound)
    plan.status.pop("pendingEvents", None)  # posted: the status write of this reconcile clears the outbox
    export_metrics(namespace, name, plan.status)

    kserve_served = bool(kube_.served_versions(kube.INFERENCE_SERVICE.group))
    children = _children_plan(plan, kserve_served)
    applied = apply_plan(kube_, owner, children)
    _delete_retired(kube_, owner, plan, body, previous)
    result = result_of(children, applied)
    if not kserve_served and not applied.conflicts:
        result.verdict = dataclasses.replace(result.verdict, state="Stalled", reason="KServeNotInstalled",
                                             message="the InferenceService API (serving.kserve.io) is not "
                                                     "installed")
    if incomplete is not None and incomplete.missing and not applied.conflicts:
        result.verdict = Verdict("Stalled", "CredentialsNotFound",
                                 "analysis not run: " + "; ".join(incomplete.missing))
    result.requeue_after = plan.requeue_after
    if not kserve_served:
        # Nothing we watch announces KServe's arrival (or the end of a discovery lag): look again.
        result.requeue_after = min(plan.requeue_after or KSERVE_RECHECK_SECONDS, KSERVE_RECHECK_SECONDS)
    result.announced = announced
    return result


def finalize(kube_: Kube, body: dict[str, Any]) -> Result | None:
    """A TrafficConfig being deleted that carries deletion.FINALIZER: one step of its deletion policy."""
    return deletion.finalize(kube_, body, _route_references)


# --- metrics --------------------------------------------------------------------------------------------


def export_metrics(namespace: str, name: str, status: dict[str, Any]) -> None:
    phase = status.get("phase")
    for candidate in PHASES:
        metrics.ROLLOUT_PHASE.labels(namespace, name, candidate).set(1 if candidate == phase else 0)
    metrics.ROLLOUT_CANARY_WEIGHT.labels(namespace, name).set(status.get("canaryWeight") or 0)
    for result in status.get("lastResults") or []:
        metric = str(result.get("name"))
        metrics.ANALYSIS_PASSED.labels(namespace, name, metric).set(1 if result.get("passed") else 0)
        for version, key in (("candidate", "value"), ("stable", "stableValue")):
            if result.get(key) is not None:
                metrics.ANALYSIS_VALUE.labels(namespace, name, metric, version).set(float(result[key]))


def forget_metrics(namespace: str, name: str) -> None:
    for gauge in (metrics.ROLLOUT_PHASE, metrics.ROLLOUT_CANARY_WEIGHT, metrics.ANALYSIS_PASSED,
                  metrics.ANALYSIS_VALUE):
        for labels in list(gauge._metrics):  # prometheus-client has no public listing
            if labels[:2] == (namespace, name):
                gauge.remove(*labels)
