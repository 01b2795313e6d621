"""VirtualModel reconciler: observe, render, apply, report."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from model_traffic import kube
from model_traffic.kinds.backend.reconcile import ai_gateway_version
from model_traffic.kinds.virtualmodel.render import (
    BackendKey,
    ObservedBackend,
    VirtualModelWorld,
    backend_key,
    gateway_address,
    gateway_keys,
    gateway_refs,
    missing_grants,
    parse_gateway,
    render,
)
from model_traffic.kinds.virtualmodel.spec import BackendReference, VirtualModelSpec
from model_traffic.kube import Kube
from model_traffic.pipeline import apply
from model_traffic.pipeline.acceptance import Acceptance, judge, not_generated
from model_traffic.pipeline.result import Applied, apply_plan, result_of
from model_traffic.pipeline.runtime import Result, invalid_spec

MANAGED_AI_SERVICE_BACKEND = kube.MANAGED_AI_SERVICE_BACKEND
VIRTUAL_MODEL = kube.VIRTUAL_MODEL
HTTP_ROUTE = kube.HTTP_ROUTE

# The kinds a VirtualModel routes to, as they appear in the index keys of :func:`references`.
REFERENCED_KINDS = ("ManagedAIServiceBackend", "AIServiceBackend", "InferencePool")


# --- pure helpers (kopf indexes and the duplicate modelName check) ----------------------------------

def _raw_model_name(name: str, spec: Mapping[str, Any]) -> str:
    return str(spec.get("modelName") or name)


def model_name_of(name: str, spec: Mapping[str, Any]) -> str:
    """The model name a VirtualModel claims, from its raw spec (so an invalid spec still counts)."""
    return _raw_model_name(name, spec)


# The VirtualModels claiming a model name (a watch cache's answer); without one, they are listed.
Rivals = Callable[[str], list[dict[str, Any]]]


def _raw_gateways(namespace: str, spec: Mapping[str, Any], default_gateway: str | None) -> set[tuple[str, str]]:
    refs = [r for r in spec.get("gatewayRefs") or [] if isinstance(r, Mapping) and r.get("name")]
    if refs:
        return {(str(r.get("namespace") or namespace), str(r["name"])) for r in refs}
    default = parse_gateway(default_gateway)
    return gateway_keys([default], namespace) if default else set()


def references(namespace: str, name: str, spec: Mapping[str, Any]) -> dict[tuple[str, str, str], str]:
    """(namespace, kind, name) of every backend a VirtualModel routes to -> the VirtualModel's name.

    For a kopf index: an event of a ManagedAIServiceBackend, AIServiceBackend or InferencePool reconciles
    the VirtualModels that use it (they are in its namespace). Read from the raw spec, so an invalid spec
    still indexes.
    """
    refs: dict[tuple[str, str, str], str] = {}
    for entry in spec.get("backends") or []:
        if isinstance(entry, Mapping) and entry.get("name") and entry.get("namespace") in (None, "", namespace):
            kind = str(entry.get("kind") or "ManagedAIServiceBackend")
            refs[(namespace, kind, str(entry["name"]))] = name
    return refs


ANY_GRANT = "*"  # the index name under which a VirtualModel waits for every ReferenceGrant of a namespace


def shared_references(namespace: str, name: str,
                      spec: Mapping[str, Any]) -> dict[tuple[str, str, str], tuple[str, str]]:
    """(backend namespace, kind, name) of each backend a VirtualModel uses in another namespace, and (that
    namespace, "ReferenceGrant", ANY_GRANT) -> (namespace, name) of the VirtualModel: for a kopf index, so a
    shared backend's change and a ReferenceGrant given or taken back reconcile it at once. Read from the raw spec."""
    refs: dict[tuple[str, str, str], tuple[str, str]] = {}
    for entry in spec.get("backends") or []:
        if isinstance(entry, Mapping) and entry.get("name") and entry.get("namespace") not in (None, "", namespace):
            other = str(entry["namespace"])
            refs[(other, str(entry.get("kind") or "ManagedAIServiceBackend"), str(entry["name"]))] = (namespace, name)
            refs[(other, "ReferenceGrant", ANY_GRANT)] = (namespace, name)
    return refs


def gateway_references(namespace: str, name: str, spec: Mapping[str, Any],
                       default_gateway: str | None = None) -> dict[tuple[str, str, str], tuple[str, str]]:
    """(namespace, "Gateway", name) of each Gateway a VirtualModel attaches to -> (namespace, name) of the
    VirtualModel, which may be in another namespace: for a kopf index, so a Gateway's new address is
    reported at once."""
    return {(gw_ns, "Gateway", gw_name): (namespace, name)
            for gw_ns, gw_name in _raw_gateways(namespace, spec, default_gateway)}


def model_names(namespace: str, name: str, spec: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """modelName -> (namespace, name): for a kopf index, so that when a VirtualModel goes away or changes
    its model name, the others claiming the same name are reconciled at once (a refused one takes over)."""
    return {_raw_model_name(name, spec): (namespace, name)}


def claims(obj: Mapping[str, Any], default_gateway: str | None) -> set[tuple[str, str, str]]:
    """(modelName, gateway namespace, gateway name) a VirtualModel serves."""
    meta = obj.get("metadata") or {}
    namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    spec = obj.get("spec") or {}
    model = _raw_model_name(name, spec)
    return {(model, gw_ns, gw_name) for gw_ns, gw_name in _raw_gateways(namespace, spec, default_gateway)}


def _age_key(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = obj.get("metadata") or {}
    # RFC 3339 timestamps of one server, all in UTC with second precision: they sort as strings.
    return (str(meta.get("creationTimestamp") or ""), str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def claimant(body: Mapping[str, Any], others: Iterable[Mapping[str, Any]], default_gateway: str | None) -> str | None:
    """``namespace/name`` of the oldest other VirtualModel serving one of this one's model name and
    Gateway pairs, when it is older than this one (ties: by namespace, then name); None when this one owns
    all its pairs."""
    mine = claims(body, default_gateway)
    if not mine:
        return None
    me = _age_key(body)
    rivals = [
        o for o in others
        if _age_key(o)[1:] != me[1:] and not (o.get("metadata") or {}).get("deletionTimestamp")
        and claims(o, default_gateway) & mine and _age_key(o) < me
    ]
    if not rivals:
        return None
    oldest = min(rivals, key=_age_key)
    return f"{_age_key(oldest)[1]}/{_age_key(oldest)[2]}"


# --- observe, reconcile -------------------------------------------------------------------------------

def _observe_backend(kube_: Kube, namespace: str, kind: str, name: str, version: str) -> ObservedBackend | None:
    if kind == "ManagedAIServiceBackend":
        obj = kube_.get(MANAGED_AI_SERVICE_BACKEND, namespace, name)
        return None if obj is None else ObservedBackend.from_managed_backend(obj)
    if kind == "AIServiceBackend":
        obj = kube_.get(kube.AI_SERVICE_BACKEND.at(version), namespace, name)
        return None if obj is None else ObservedBackend(ready=True)
    if kind == "InferencePool":
        if not kube_.served_versions(kube.INFERENCE_POOL.group):
            return None
        obj = kube_.get(kube.INFERENCE_POOL, namespace, name)
        return None if obj is None else ObservedBackend(ready=True, routing="InferencePool", inference_pool=name)
    raise ValueError(f"unknown backend kind {kind!r}")


def _observe_shared_backend(kube_: Kube, namespace: str, ref: BackendReference,
                            version: str) -> ObservedBackend | None:
    """A backend of another namespace: as observed there, unless that namespace's ReferenceGrants do not allow
    this namespace's routes to reach it."""
    other = str(ref.namespace)
    envoy_backend: str | None = None
    if ref.kind == "ManagedAIServiceBackend":
        managed = kube_.get(MANAGED_AI_SERVICE_BACKEND, other, ref.name)
        if managed is None:
            return None
        seen = ObservedBackend.from_managed_backend(managed)
        if seen.routing == "InferencePool":
            return dataclasses.replace(seen, not_permitted=True, message="it is routed through an InferencePool, "
                                       "which AI Gateway routes in its own namespace only")
        envoy_backend = ref.name  # its Envoy Gateway Backend has its name (kinds/backend/render.py)
    else:
        raw = kube_.get(kube.AI_SERVICE_BACKEND.at(version), other, ref.name)
        if raw is None:
            return None
        seen = ObservedBackend(ready=True)
        backend_ref = (raw.get("spec") or {}).get("backendRef") or {}
        envoy_backend = str(backend_ref.get("name") or "") or None
    missing = missing_grants(kube_.list_objects(kube.REFERENCE_GRANT, other), namespace, other, ref.name,
                             envoy_backend)
    if missing:
        return dataclasses.replace(seen, not_permitted=True,
                                   message=f"no ReferenceGrant in namespace {other} allows {'; nor '.join(missing)}")
    return seen


def observe(kube_: Kube, spec: VirtualModelSpec, body: dict[str, Any], version_override: str | None,
            default_gateway: str | None, namespaces: list[str] | None = None,
            rivals: Rivals | None = None) -> VirtualModelWorld:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    version = ai_gateway_version(kube_, version_override)
    default = parse_gateway(default_gateway)
    world = VirtualModelWorld(namespace=namespace, name=name, ai_gateway_version=version, default_gateway=default)
    if version is None:
        return world
    backends: dict[BackendKey, ObservedBackend | None] = {
        backend_key(ref): _observe_shared_backend(kube_, namespace, ref, version)
        if ref.namespace not in (None, namespace) else _observe_backend(kube_, namespace, ref.kind, ref.name, version)
        for ref in spec.backends
    }
    # Rivals for the model name: everywhere, or only where the operator watches (and has permissions).
    if rivals is not None:
        others = rivals(_raw_model_name(name, body.get("spec") or {}))
    elif namespaces:
        others = [o for ns in namespaces for o in kube_.list_objects(VIRTUAL_MODEL, ns)]
    else:
        others = kube_.list_objects(VIRTUAL_MODEL)
    taken = claimant(body, others, default_gateway)
    address = None
    parents = gateway_refs(spec, default)
    if parents:
        first = parents[0]
        gateway = kube_.get(kube.GATEWAY, first.namespace or namespace, first.name)
        address = gateway_address(gateway, first.section_name)
    return dataclasses.replace(world, backends=backends, claimed_elsewhere=taken, gateway_address=address)


def reconcile(kube_: Kube, body: dict[str, Any], ai_gateway_version_override: str | None = None,
              default_gateway: str | None = None, namespaces: list[str] | None = None,
              rivals: Rivals | None = None) -> Result:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    try:
        spec = VirtualModelSpec.model_validate(body.get("spec") or {})
    except ValidationError as error:
        return invalid_spec(error)
    owner = apply.Owner.of(body)
    world = observe(kube_, spec, body, ai_gateway_version_override, default_gateway, namespaces, rivals)
    plan = render(spec, world)
    applied = apply_plan(kube_, owner, plan)
    return result_of(plan, applied, generated_route(kube_, applied, namespace, name))


def generated_route(kube_: Kube, applied: Applied, namespace: str, name: str) -> list[Acceptance]:
    """How Envoy Gateway judged the HTTPRoute the AI Gateway generates from our AIGatewayRoute (same name,
    internal/controller/ai_gateway_route.go), when we wrote one: the route's Gateways report there. Its
    status events reach us through the AIGatewayRoute's labels, which the AI Gateway copies onto it."""
    if "AIGatewayRoute" not in applied.live:
        return []
    http_route = kube_.get_ours(HTTP_ROUTE, namespace, name)  # it carries our labels, copied from the route
    if http_route is None:
        return [not_generated(HTTP_ROUTE.kind, name)]
    judged = judge(http_route)
    return [judged] if judged is not None else []
