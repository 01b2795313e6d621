"""Deleting a TrafficConfig without taking its model offline (``spec.deletionPolicy``).

Everything a TrafficConfig writes carries its owner reference, so deleting it once deleted the VirtualModel,
the backends and the InferenceServices with it: the model name went offline. Flagger, by default
(``revertOnDeletion: false``), leaves the workload it promoted serving when its Canary is deleted; ``Retain``, the
default here, does the same for the stable version:

1. **route**: the VirtualModel, if still ours, is written with the stable version's backend alone, once that
   backend is Ready (make-before-break: the stable takes all traffic before anything of another version goes);
2. **drain**: wait until the VirtualModel's controller has acted on that spec (its ``observedGeneration``) and
   neither the live AIGatewayRoute nor the HTTPRoute the AI Gateway generated from it names another version's
   backend, Envoy Gateway having reported on that HTTPRoute's current generation (as a retirement waits,
   ``render.py``);
3. **orphan**: the stable's InferenceService, its ManagedAIServiceBackend and the VirtualModel lose this
   TrafficConfig's owner reference (the garbage collector then keeps them) and get a note:
   ``modeltraffic.io/orphaned-from: TrafficConfig/<name>``, ``modeltraffic.io/orphaned-at`` and
   ``modeltraffic.io/orphaned-reason``; an Event on the TrafficConfig says what was kept;
4. **release**: the finalizer ``modeltraffic.io/retain-on-delete`` is removed; the garbage collector deletes what
   still carries the owner reference: the other versions' backends and InferenceServices.

Each step is decided from the cluster alone (:func:`decide` over a :class:`DeletionWorld` read by
:func:`observe`), so a crash anywhere resumes at the first step not done; a step already done is seen done
(an orphaned object keeps its first note). The orphaned VirtualModel and backend remain ordinary objects of
this operator (their own reconciles keep running); only the TrafficConfig no longer writes them. A TrafficConfig
of the same name, created later, adopts them again (:func:`adopt_orphans`). ``Delete`` releases at once:
everything goes as the garbage collector deletes owned objects.

The finalizer is put on the TrafficConfig by its reconcile while the policy is Retain, and taken off when the
policy becomes Delete (:func:`keep_finalizer`). An object this TrafficConfig does not own (a VirtualModel of
someone else's, a referenced brownfield InferenceService) is never written: the Event says it was left as it
is. An object already being deleted (a foreground cascade, a namespace being deleted) cannot be kept: the
Event says so, and nothing waits on it.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from model_traffic import kube
from model_traffic.kinds.trafficconfig.analysis import served_model_name
from model_traffic.kinds.trafficconfig.render import LABEL_TRAFFIC_CONFIG, LABEL_VERSION, ChildHealth
from model_traffic.kinds.trafficconfig.spec import DeletionPolicy
from model_traffic.kube import Kube, ResourceType
from model_traffic.pipeline import apply, events
from model_traffic.pipeline.cache import CachedKube
from model_traffic.pipeline.conditions import Verdict
from model_traffic.pipeline.runtime import Result, kept_status

FINALIZER = "modeltraffic.io/retain-on-delete"
ANNOTATION_ORPHANED_FROM = "modeltraffic.io/orphaned-from"
ANNOTATION_ORPHANED_AT = "modeltraffic.io/orphaned-at"
ANNOTATION_ORPHANED_REASON = "modeltraffic.io/orphaned-reason"
ORPHAN_NOTE = (ANNOTATION_ORPHANED_FROM, ANNOTATION_ORPHANED_AT, ANNOTATION_ORPHANED_REASON)
# The finalizer the garbage collector puts on an owner deleted with propagationPolicy Foreground: it deletes the
# dependents first, whatever our finalizer does (k8s.io/kubernetes pkg/controller/garbagecollector/graph_builder.go,
# startsWaitingForDependentsDeleted; garbagecollector.go attemptToDeleteItem deletes a dependent whose owner waits).
FOREGROUND_DELETION = "foregroundDeletion"
# While the gateway takes the stable-only route: the route's changes wake the VirtualModel, not the TrafficConfig.
DRAIN_RECHECK_SECONDS = 1.0
# While the stable version is not Ready and another version serves.
STABLE_RECHECK_SECONDS = 5.0

Standing = Literal["ours", "orphaned", "foreign", "terminating", "absent"]
RouteReader = Callable[[Kube, str, str], tuple[frozenset[str], bool]]


def orphan_source(name: str) -> str:
    return f"TrafficConfig/{name}"


# --- the world ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Piece:
    """One of the stable version's objects (or the VirtualModel) as it stands towards this TrafficConfig."""

    rtype: ResourceType
    name: str
    standing: Standing
    # for a foreign object: who controls it ("" when no one does: not written by the operator, or no owner)
    controller: str = ""

    def describe(self) -> str:
        return f"{self.rtype.kind} {self.name}"


@dataclass(frozen=True)
class DeletionWorld:
    """What :func:`decide` needs, read from the cluster by :func:`observe`."""

    name: str
    model: str
    policy: DeletionPolicy
    stable: str | None  # the version serving production (status.stableVersion), None when none was recorded
    virtual_model: Piece
    keep: tuple[Piece, ...] = ()  # the stable's InferenceService and backend, then the VirtualModel
    stable_ready: bool = False  # the stable's ManagedAIServiceBackend is Ready on its current spec
    stable_why: str = ""  # why not, when not
    # The live VirtualModel's backends (name, header-matched), when it is ours; and whether its controller has
    # acted on its current spec.
    vm_backends: frozenset[tuple[str, bool]] = frozenset()
    vm_current: bool = True
    others_serving: tuple[str, ...] = ()  # other versions with a Ready backend that the VirtualModel lists
    other_versions: frozenset[str] = frozenset()  # every other version known: the VirtualModel's and our children's
    route_references: frozenset[str] = frozenset()
    route_settled: bool = True
    foreground: bool = False  # deleted with propagationPolicy Foreground

    @property
    def stable_backend(self) -> str:
        return f"{self.name}-{self.stable}"

    def stable_only(self) -> bool:
        return self.vm_backends == frozenset({(self.stable_backend, False)})

    def route_clear(self) -> bool:
        others = {f"{self.name}-{v}" for v in self.other_versions}
        return self.route_settled and not (others & self.route_references)


# --- the decision ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Notice:
    """An Event to post on the TrafficConfig before it goes (under a name unique to it and the reason: once)."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


def event(type_: Literal["Normal", "Warning"], reason: str, message: str) -> Notice:
    return Notice(type_, reason, message)


@dataclass(frozen=True)
class Decision:
    """What to do now. ``route``: write the stable-only VirtualModel, then look again. ``verdict`` set (and not
    ``release``): wait, reporting it. ``release``: orphan ``orphan`` (in order), post ``notices``, remove the
    finalizer."""

    verdict: Verdict | None = None
    route: bool = False
    release: bool = False
    orphan: tuple[Piece, ...] = ()
    notices: tuple[Notice, ...] = ()
    requeue_after: float | None = None


def decide(w: DeletionWorld) -> Decision:
    """The next step of a TrafficConfig's deletion. Pure: the same world gives the same decision."""
    if w.policy == "Delete":
        return Decision(release=True)
    if w.stable is None:
        return Decision(release=True, notices=(event(
            "Warning", "NotRetained", "deletionPolicy Retain: no stable version was ever recorded "
            "(status.stableVersion), so nothing is kept; every object this TrafficConfig owns is deleted with it"),))
    if w.foreground:
        # The garbage collector deletes the children first and is already at it: routing and orphaning would race
        # it, keep some of the stable's objects and lose others, and a Retained Event would name objects it then
        # deletes anyway (seen in CI). Nothing is tried; one Warning says why.
        return Decision(release=True, notices=(event(
            "Warning", "NotRetained", f"deletionPolicy Retain: nothing of version {w.stable} is kept: this "
            "TrafficConfig was deleted with propagationPolicy Foreground, which has the garbage collector delete "
            "its children first (Argo CD prunes so by default: set PrunePropagationPolicy=background, "
            "docs/gitops.md)"),))
    vm = w.virtual_model
    if vm.standing == "ours" and not w.stable_only():
        if w.stable_ready or not w.others_serving:
            # Make-before-break: the stable serves. (Or nothing serves at all: there is no traffic to break.)
            return Decision(verdict=Verdict(
                "Progressing", "RoutingToStable",
                f"being deleted with deletionPolicy Retain: all traffic of model {w.model!r} goes to the stable "
                f"version {w.stable} first"), route=True, requeue_after=DRAIN_RECHECK_SECONDS)
        return Decision(verdict=Verdict(
            "Progressing", "StableNotReady",
            f"being deleted with deletionPolicy Retain: the stable version {w.stable} is not Ready ({w.stable_why}) "
            f"while {', '.join(w.others_serving)} serve{'s' if len(w.others_serving) == 1 else ''}; waiting for it "
            "so that the model stays online (set spec.deletionPolicy: Delete to delete everything now)"),
            requeue_after=STABLE_RECHECK_SECONDS)
    if vm.standing == "ours" and not (w.vm_current and w.route_clear()):
        waiting = ("the VirtualModel's controller to act on the stable-only spec" if not w.vm_current else
                   "Envoy Gateway to report on the route" if not w.route_settled else
                   "the gateway's route to drop " + ", ".join(
                       sorted(r for r in w.route_references if r in {f"{w.name}-{v}" for v in w.other_versions})))
        return Decision(verdict=Verdict(
            "Progressing", "RoutingToStable",
            f"being deleted with deletionPolicy Retain: waiting for {waiting} before the stable version {w.stable} "
            "is kept and the other versions go"), requeue_after=DRAIN_RECHECK_SECONDS)
    return Decision(release=True, orphan=tuple(p for p in w.keep if p.standing == "ours"),
                    notices=_notices(w))


def _notices(w: DeletionWorld) -> tuple[Notice, ...]:
    kept = [p.describe() for p in w.keep if p.standing in ("ours", "orphaned")]
    left = [p.describe() + (f" (controlled by {p.controller})" if p.controller else "")
            for p in w.keep if p.standing == "foreign"]
    lost = [p.describe() for p in w.keep if p.standing == "terminating"]
    missing = [p.describe() for p in w.keep if p.standing == "absent"]
    notices: list[Notice] = []
    if kept:
        text = (f"deletionPolicy Retain: model {w.model!r} keeps serving version {w.stable}: kept {', '.join(kept)} "
                f"(annotation {ANNOTATION_ORPHANED_FROM}: {orphan_source(w.name)}; a TrafficConfig {w.name} created "
                "again adopts them)")
        if left:
            text += f"; left as they are, not owned by this TrafficConfig: {', '.join(left)}"
        notices.append(event("Normal", "Retained", text + "; the other versions' objects are deleted with it"))
    if lost or missing or not kept:
        why = []
        if lost or missing:
            cause = ("this TrafficConfig was deleted with propagationPolicy Foreground, which has the garbage "
                     "collector delete the children first" if w.foreground else
                     "deleted by something else: a deletion with propagationPolicy Foreground (Argo CD prunes so by "
                     "default), the namespace's deletion, or a person")
            why.append(f"{', '.join(lost + missing)} already deleted or being deleted ({cause})")
        if left and not kept:
            why.append(f"{', '.join(left)} not owned by this TrafficConfig (left as it is)")
        notices.append(event("Warning", "NotRetained",
                             f"deletionPolicy Retain: could not keep all of version {w.stable}: {'; '.join(why)}"))
    return tuple(notices)


# --- reading the world -------------------------------------------------------------------------------------

def standing_of(obj: dict[str, Any] | None, owner: apply.Owner) -> tuple[Standing, str]:
    if obj is None:
        return "absent", ""
    meta = obj["metadata"]
    if meta.get("deletionTimestamp"):
        return "terminating", ""
    if apply.owned_by(obj, owner):
        return "ours", ""
    if is_orphan_of(obj, owner.name):
        return "orphaned", ""
    controller = next((f"{ref.get('kind')} {ref.get('name')}" for ref in meta.get("ownerReferences") or []
                       if ref.get("controller")), "")
    return "foreign", controller


def is_orphan_of(obj: dict[str, Any], name: str) -> bool:
    """Left by the deletion of TrafficConfig ``name`` (our note on it), written by this operator, and controlled by
    no one since."""
    meta = obj.get("metadata") or {}
    return ((meta.get("annotations") or {}).get(ANNOTATION_ORPHANED_FROM) == orphan_source(name)
            and (meta.get("labels") or {}).get(apply.LABEL_MANAGED_BY) == apply.MANAGED_BY
            and not any(ref.get("controller") for ref in meta.get("ownerReferences") or []))


def stable_version(body: dict[str, Any]) -> str | None:
    """The version serving production: the status's (what the rollout last made stable), else, for an object never
    reconciled, the one its spec names."""
    recorded = (body.get("status") or {}).get("stableVersion")
    if recorded:
        return str(recorded)
    spec = body.get("spec") or {}
    named = (spec.get("release") or spec.get("stable") or {}).get("version")
    return str(named) if named else None


def _version_of(obj: dict[str, Any], name: str) -> str | None:
    meta = obj["metadata"]
    version = (meta.get("labels") or {}).get(LABEL_VERSION)
    if version:
        return str(version)
    prefix = f"{name}-"
    return str(meta["name"])[len(prefix):] if str(meta["name"]).startswith(prefix) else None


def observe(kube_: Kube, body: dict[str, Any], route_references: RouteReader) -> DeletionWorld:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    spec = body.get("spec") or {}
    owner = apply.Owner.of(body)
    policy = cast(DeletionPolicy, spec.get("deletionPolicy") or "Retain")
    model = str(spec.get("modelName") or name)
    vm_obj = kube_.get(kube.VIRTUAL_MODEL, namespace, name)
    vm_standing, vm_controller = standing_of(vm_obj, owner)
    virtual_model = Piece(kube.VIRTUAL_MODEL, name, vm_standing, vm_controller)
    stable = stable_version(body)
    foreground = FOREGROUND_DELETION in (meta.get("finalizers") or [])
    if policy == "Delete" or stable is None:
        return DeletionWorld(name, model, policy, stable, virtual_model, foreground=foreground)

    kserve = bool(kube_.served_versions(kube.INFERENCE_SERVICE.group))
    recorded = {str(v.get("version")): str(v.get("inferenceService"))
                for v in (body.get("status") or {}).get("versions") or []}
    keep: list[Piece] = []
    if kserve:
        isvc_name = recorded.get(stable) or f"{name}-{stable}"
        standing, controller = standing_of(kube_.get(kube.INFERENCE_SERVICE, namespace, isvc_name), owner)
        keep.append(Piece(kube.INFERENCE_SERVICE, isvc_name, standing, controller))
    backend_obj = kube_.get(kube.MANAGED_AI_SERVICE_BACKEND, namespace, f"{name}-{stable}")
    standing, controller = standing_of(backend_obj, owner)
    keep.append(Piece(kube.MANAGED_AI_SERVICE_BACKEND, f"{name}-{stable}", standing, controller))
    keep.append(virtual_model)
    health = ChildHealth.of(backend_obj) if backend_obj is not None and standing in ("ours", "orphaned") else None

    vm_backends: frozenset[tuple[str, bool]] = frozenset()
    vm_current = True
    listed: set[str] = set()
    if vm_obj is not None and vm_standing == "ours":
        entries = (vm_obj.get("spec") or {}).get("backends") or []
        vm_backends = frozenset((str(b.get("name", "")), bool(b.get("matches"))) for b in entries)
        listed = {str(b.get("name", "")) for b in entries if int(b.get("weight", 1)) > 0 or b.get("matches")}
        vm_current = ChildHealth.of(vm_obj).current
    others: set[str] = {n[len(name) + 1:] for n, _ in vm_backends if n.startswith(f"{name}-")}
    serving: list[str] = []
    for rtype in ([kube.MANAGED_AI_SERVICE_BACKEND] + ([kube.INFERENCE_SERVICE] if kserve else [])):
        for child in kube_.list_objects(rtype, namespace):
            version = _version_of(child, name)
            if version is None or not apply.owned_by(child, owner):
                continue
            others.add(version)
            if (rtype == kube.MANAGED_AI_SERVICE_BACKEND and version != stable and child["metadata"]["name"] in listed
                    and not child["metadata"].get("deletionTimestamp") and ChildHealth.of(child).ready):
                serving.append(version)
    others.discard(stable)
    references, settled = route_references(kube_, namespace, name)
    return DeletionWorld(
        name, model, policy, stable, virtual_model, tuple(keep),
        stable_ready=bool(health and health.ready),
        stable_why=(health.message if health else f"ManagedAIServiceBackend {name}-{stable} {standing}"),
        vm_backends=vm_backends, vm_current=vm_current, others_serving=tuple(sorted(serving)),
        other_versions=frozenset(others), route_references=references, route_settled=settled, foreground=foreground)


# --- acting ------------------------------------------------------------------------------------------------

def patch_metadata(kube_: Kube, rtype: ResourceType, namespace: str, name: str, metadata: dict[str, Any],
                   resource_version: str) -> dict[str, Any]:
    """Merge-patch an object's metadata (finalizers, owner references, annotations), only if nobody wrote the
    object since ``resource_version`` (else HTTP 409: the run starts over from a fresh read). A merge patch
    replaces a list whole, hence the guard."""
    written = cast(dict[str, Any], kube_.custom.patch_namespaced_custom_object(
        rtype.group, rtype.version, namespace, rtype.plural, name,
        {"metadata": {**metadata, "resourceVersion": resource_version}},
        field_manager=kube.FIELD_MANAGER, _content_type="application/merge-patch+json"))
    if isinstance(kube_, CachedKube):
        kube_.caches.put(rtype, written)  # the next read sees our write, not the object before it
    return written


def keep_finalizer(kube_: Kube, body: dict[str, Any], policy: DeletionPolicy) -> None:
    """Put the finalizer on while the policy needs it (Retain), take it off when it does not (Delete). Writes only
    on a change; ``body`` follows the write (its resourceVersion guards the status write after it)."""
    meta = body["metadata"]
    finalizers = [str(f) for f in meta.get("finalizers") or []]
    wanted = policy == "Retain"
    if (FINALIZER in finalizers) == wanted:
        return
    changed = [*finalizers, FINALIZER] if wanted else [f for f in finalizers if f != FINALIZER]
    written = patch_metadata(kube_, kube.TRAFFIC_CONFIG, meta["namespace"], meta["name"],
                             {"finalizers": changed or None}, meta["resourceVersion"])
    meta["resourceVersion"] = written["metadata"]["resourceVersion"]
    meta["finalizers"] = changed


def stable_only_virtual_model(live: dict[str, Any], name: str, model: str, stable: str) -> dict[str, Any]:
    """The live VirtualModel with the stable version's backend alone, at full weight; everything else of its spec
    as it is (so nothing this operator wrote is dropped from it)."""
    spec = copy.deepcopy(live.get("spec") or {})
    backend = f"{name}-{stable}"
    current = next((b for b in spec.get("backends") or [] if b.get("name") == backend and not b.get("matches")),
                   None)
    entry = {k: v for k, v in (current or {}).items() if k != "weight"} or {
        "name": backend, "modelNameOverride": served_model_name(model, stable)}
    spec["backends"] = [{**entry, "weight": 100}]
    labels = {k: v for k, v in (live["metadata"].get("labels") or {}).items() if k == LABEL_TRAFFIC_CONFIG}
    return {"apiVersion": live["apiVersion"], "kind": live["kind"],
            "metadata": {"name": name, "labels": labels or {LABEL_TRAFFIC_CONFIG: name}}, "spec": spec}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def orphan(kube_: Kube, body: dict[str, Any], piece: Piece, stable: str, model: str) -> None:
    """Remove this TrafficConfig's owner reference from ``piece`` and leave the note; guarded by the
    resourceVersion read, so it never overwrites a change made meanwhile (a conflict starts the run over)."""
    meta = body["metadata"]
    live = kube_.get(piece.rtype, meta["namespace"], piece.name)
    if live is None:
        return
    refs = [r for r in live["metadata"].get("ownerReferences") or [] if r.get("uid") != meta["uid"]]
    note = {
        ANNOTATION_ORPHANED_FROM: orphan_source(meta["name"]),
        ANNOTATION_ORPHANED_AT: _now(),
        ANNOTATION_ORPHANED_REASON: (
            f"TrafficConfig {meta['name']} (uid {meta['uid']}) was deleted with deletionPolicy Retain; version "
            f"{stable} keeps serving model {model!r}. A TrafficConfig {meta['name']} created again adopts this "
            "object; otherwise delete it when it is no longer wanted"),
    }
    patch_metadata(kube_, piece.rtype, meta["namespace"], piece.name,
                   {"ownerReferences": refs or None, "annotations": note}, live["metadata"]["resourceVersion"])


def _post(kube_: Kube, body: dict[str, Any], notice: Notice) -> None:
    """Under a name made of this TrafficConfig's uid and the reason: a run that posts it again (a crash before the
    finalizer went) finds it posted."""
    meta = body["metadata"]
    digest = hashlib.sha256(json.dumps([meta["uid"], "deletion", notice.reason]).encode()).hexdigest()[:16]
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    events.post(kube_, body, {"name": f"{meta['name']}.{digest}", "type": notice.type, "reason": notice.reason,
                              "message": notice.message, "time": stamp, "count": 1})


def release(kube_: Kube, body: dict[str, Any]) -> None:
    meta = body["metadata"]
    finalizers = [f for f in meta.get("finalizers") or [] if f != FINALIZER]
    patch_metadata(kube_, kube.TRAFFIC_CONFIG, meta["namespace"], meta["name"], {"finalizers": finalizers or None},
                   meta["resourceVersion"])


def finalize(kube_: Kube, body: dict[str, Any], route_references: RouteReader) -> Result | None:
    """One step of the deletion of a TrafficConfig that carries :data:`FINALIZER` (the pipeline calls it instead of
    the reconcile). None once the finalizer is removed."""
    world = observe(kube_, body, route_references)
    decision = decide(world)
    meta = body["metadata"]
    if decision.route and world.stable is not None:
        live = kube_.get(kube.VIRTUAL_MODEL, meta["namespace"], meta["name"])
        if live is not None:
            apply.ensure(kube_, kube.VIRTUAL_MODEL, apply.Owner.of(body),
                         stable_only_virtual_model(live, meta["name"], world.model, world.stable))
    if not decision.release:
        verdict = decision.verdict or Verdict("Progressing", "RoutingToStable", "being deleted")
        return Result(verdict, status=kept_status(body.get("status") or {}),
                      requeue_after=decision.requeue_after)
    for piece in decision.orphan:
        orphan(kube_, body, piece, str(world.stable), world.model)
    for notice in decision.notices:
        _post(kube_, body, notice)
    release(kube_, body)
    return None


# --- adoption ----------------------------------------------------------------------------------------------

def _orphans(kube_: Kube, namespace: str, name: str) -> Iterable[tuple[ResourceType, dict[str, Any]]]:
    vm = kube_.get(kube.VIRTUAL_MODEL, namespace, name)
    if vm is not None and is_orphan_of(vm, name) and not vm["metadata"].get("deletionTimestamp"):
        yield kube.VIRTUAL_MODEL, vm
    kinds = [kube.MANAGED_AI_SERVICE_BACKEND]
    if kube_.served_versions(kube.INFERENCE_SERVICE.group):
        kinds.append(kube.INFERENCE_SERVICE)
    for rtype in kinds:
        for obj in kube_.list_objects(rtype, namespace, f"{LABEL_TRAFFIC_CONFIG}={name}"):
            if is_orphan_of(obj, name) and not obj["metadata"].get("deletionTimestamp"):
                yield rtype, obj


def running_version(isvc: dict[str, Any] | None) -> dict[str, Any]:
    """What the stable's entry (status.stable) needs so that a release naming another version renders the adopted
    stable as it runs: its storageUri, and its replica count when fixed (minReplicas = maxReplicas, as a version's
    replicas are written). Its resources come from the template then (a resized stable would be resized back)."""
    predictor = ((isvc or {}).get("spec") or {}).get("predictor") or {}
    model: dict[str, Any] = predictor["model"] if isinstance(predictor.get("model"), dict) else predictor
    out: dict[str, Any] = {}
    if model.get("storageUri"):
        out["storageUri"] = str(model["storageUri"])
    if isinstance(predictor.get("minReplicas"), int) and predictor.get("minReplicas") == predictor.get("maxReplicas"):
        out["replicas"] = predictor["minReplicas"]
    return out


@dataclass
class Adopted:
    names: list[str] = field(default_factory=list)
    stable: str | None = None  # the version the adopted VirtualModel routes to alone


def adopt_orphans(kube_: Kube, body: dict[str, Any]) -> Adopted:
    """Take back what the deletion of an earlier TrafficConfig of this name left (our note, no controller): its
    owner reference becomes this TrafficConfig's and the note goes, so the reconcile writes them as its own
    children (server-side apply then finds them owned). When this TrafficConfig has recorded no stable version
    yet, the version the adopted VirtualModel routes to becomes its stable (status.stableVersion and status.stable,
    as it runs), so a release naming another version rolls out from it, as any new release does. Nothing to
    adopt: no write."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    owner = apply.Owner.of(body)
    adopted = Adopted()
    orphans = list(_orphans(kube_, namespace, name))
    if not orphans:
        return adopted
    for rtype, obj in orphans:
        if rtype == kube.VIRTUAL_MODEL:
            routed = [str(b.get("name", "")) for b in (obj.get("spec") or {}).get("backends") or []]
            if len(routed) == 1 and routed[0].startswith(f"{name}-"):
                adopted.stable = routed[0][len(name) + 1:]
    status = body.get("status") or {}
    if adopted.stable and not status.get("stableVersion"):
        # The seed is written before any note goes: the notes are the only record that this version was stable,
        # so were the children adopted first, a status write that failed (a conflict, a crash) would leave a
        # TrafficConfig with no stable and no orphans, and its release would replace the version serving at once.
        backend = kube_.get(kube.MANAGED_AI_SERVICE_BACKEND, namespace, f"{name}-{adopted.stable}") or {}
        isvc = (((backend.get("spec") or {}).get("endpoint") or {}).get("inferenceService") or {}).get("name")
        seed: dict[str, Any] = {"stableVersion": adopted.stable, "stable": {"version": adopted.stable}}
        if isvc:
            seed["versions"] = [{"version": adopted.stable, "inferenceService": isvc, "ready": False}]
            live = kube_.get(kube.INFERENCE_SERVICE, namespace, str(isvc)) \
                if kube_.served_versions(kube.INFERENCE_SERVICE.group) else None
            seed["stable"].update(running_version(live))
        written = kube_.patch_status(kube.TRAFFIC_CONFIG, namespace, name, seed,
                                     resource_version=meta["resourceVersion"])
        body["status"] = written.get("status") or {}
        meta["resourceVersion"] = written["metadata"]["resourceVersion"]
    for rtype, obj in orphans:
        refs = [*(obj["metadata"].get("ownerReferences") or []), owner.reference()]
        patch_metadata(kube_, rtype, namespace, obj["metadata"]["name"],
                       {"ownerReferences": refs, "annotations": dict.fromkeys(ORPHAN_NOTE)},
                       obj["metadata"]["resourceVersion"])
        adopted.names.append(f"{rtype.kind} {obj['metadata']['name']}")
    events.emit(kube_, body, "Normal", "Adopted",
                f"adopted {', '.join(adopted.names)}, left serving by the deletion of an earlier TrafficConfig "
                f"{name} (annotation {ANNOTATION_ORPHANED_FROM})"
                + (f"; version {adopted.stable} is the stable version" if adopted.stable else ""))
    return adopted
