"""The kopf application: thin handlers that turn every trigger into one reconcile.

Triggers are level-based: the object's own watch events (including the initial listing, so a restart
resumes everything), events of objects it references (found through an index), events of its children
(drift is restored), and a periodic resync. Only ``on.event`` handlers are used: kopf then keeps no
state in annotations and adds no finalizer, so deleting an object never waits for the operator.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import kopf

from model_traffic import health, kube
from model_traffic.kinds.backend import reconcile as backend_reconciler
from model_traffic.kinds.backend import spec as backend
from model_traffic.kinds.common import GROUP, VERSION
from model_traffic.kinds.metrictemplate import resolve as metrictemplate
from model_traffic.kinds.trafficconfig import measure as trafficconfig_measure
from model_traffic.kinds.trafficconfig import deletion as trafficconfig_deletion
from model_traffic.kinds.trafficconfig import reconcile as trafficconfig_reconciler
from model_traffic.kinds.trafficconfig import render as trafficconfig_render
from model_traffic.kinds.trafficconfig import spec as trafficconfig
from model_traffic.kinds.virtualmodel import reconcile as virtualmodel_reconciler
from model_traffic.kinds.virtualmodel import spec as virtualmodel
from model_traffic.kube import Kube
from model_traffic.pipeline import apply
from model_traffic.pipeline.cache import CachedKube, Caches
from model_traffic.pipeline.runtime import Finalizer, Result, Runtime
from model_traffic.settings import Settings

log = logging.getLogger(__name__)

# Kinds we own as children: an event of one reconciles its owner (found by its controller owner reference, else by
# our labels), so hand edits and deletions are undone, also of a child whose labels were removed.
# The HTTPRoute is the AI Gateway's, generated from our AIGatewayRoute with its labels: watched for its status.
# TrafficConfig's children (InferenceServices, ManagedAIServiceBackends, its VirtualModel) too: their status
# (readiness, the live weights) moves the rollout on.
CHILD_TYPES = (kube.BACKEND, kube.AI_SERVICE_BACKEND, kube.BACKEND_SECURITY_POLICY, kube.QUOTA_POLICY,
               kube.AI_GATEWAY_ROUTE, kube.BACKEND_TRAFFIC_POLICY, kube.SECURITY_POLICY,
               virtualmodel_reconciler.HTTP_ROUTE,
               kube.INFERENCE_SERVICE, kube.MANAGED_AI_SERVICE_BACKEND, kube.VIRTUAL_MODEL)

# What reconciles read instead of the API server (see model_traffic.pipeline.cache): all objects of the kinds we
# reconcile or reference, our labelled objects of the kinds we only write. Not Secrets: a backend's credentials Secret
# is read by name when the backend reconciles (a GET, the only verb the chart grants on Secrets), so the operator never
# lists or watches the Secrets of the cluster; kinds/backend/reconcile.py looks again while one is missing.
COMPLETELY_CACHED = (kube.MANAGED_AI_SERVICE_BACKEND, kube.VIRTUAL_MODEL, kube.TRAFFIC_CONFIG,
                     kube.INFERENCE_SERVICE, kube.INFERENCE_POOL, kube.GATEWAY, kube.BACKEND, kube.AI_SERVICE_BACKEND,
                     kube.REFERENCE_GRANT, metrictemplate.METRIC_TEMPLATE, metrictemplate.CLUSTER_METRIC_TEMPLATE)
CACHED_BY_OUR_LABELS = (kube.BACKEND_SECURITY_POLICY, kube.QUOTA_POLICY, kube.AI_GATEWAY_ROUTE,
                        kube.BACKEND_TRAFFIC_POLICY, kube.SECURITY_POLICY, kube.HTTP_ROUTE)
CACHES = Caches()


def _claimed_model_names(obj: Any) -> list[str]:
    meta = obj.get("metadata") or {}
    return [virtualmodel_reconciler.model_name_of(str(meta.get("name") or ""), obj.get("spec") or {})]


def _register_cache(rtype: kube.ResourceType, complete: bool) -> None:
    """Feed the cache from kopf's watch of the kind: an index function sees every event but deletions before any
    handler does (and kopf fills indexes before the first handler runs); the deletion handler is registered
    before every other handler of the kind, and kopf runs them in order. No label filter even where only our
    children are kept: the cache itself tells ours (labels or owner reference) and forgets what stops being ours."""
    CACHES.register(rtype, complete=complete,
                    secondary=_claimed_model_names if rtype == kube.VIRTUAL_MODEL else None)
    cache_id = f"cache-{rtype.plural}.{rtype.group or 'core'}"

    async def cache_object(body: kopf.Body, **_: Any) -> dict[str, str]:
        CACHES.put(rtype, body)
        return {}  # the cache holds the object; kopf's index only provides the wait for the initial listing

    async def forget_deleted(type: str, body: kopf.Body, **_: Any) -> None:
        if type == "DELETED":
            CACHES.drop(rtype, body)

    kopf.index(rtype.group, rtype.version, rtype.plural, id=cache_id)(cache_object)
    kopf.on.event(rtype.group, rtype.version, rtype.plural, id=f"{cache_id}-deletions")(forget_deleted)


for _rtype in COMPLETELY_CACHED:
    _register_cache(_rtype, complete=True)
for _rtype in CACHED_BY_OUR_LABELS:
    _register_cache(_rtype, complete=False)


class State:
    """Process-wide wiring, built once at start-up."""

    runtime: Runtime
    settings: Settings


STATE = State()


@kopf.on.startup()
def start(settings: kopf.OperatorSettings, **_: Any) -> None:
    config = Settings.from_env()
    STATE.settings = config
    kube_ = CachedKube(CACHES)
    rt = Runtime(kube_)

    def reconcile_backend(k: Kube, body: dict[str, Any]) -> Result:
        return backend_reconciler.reconcile(k, body, config.ai_gateway_version, config.outbound)

    rt.register(kube.MANAGED_AI_SERVICE_BACKEND, reconcile_backend)

    def reconcile_virtual_model(k: Kube, body: dict[str, Any]) -> Result:
        return virtualmodel_reconciler.reconcile(k, body, config.ai_gateway_version, config.default_gateway,
                                                 config.namespaces, rivals=_virtual_models_claiming)

    rt.register(virtualmodel_reconciler.VIRTUAL_MODEL, reconcile_virtual_model)

    def reconcile_traffic_config(k: Kube, body: dict[str, Any]) -> Result:
        return trafficconfig_reconciler.reconcile(k, body, config.prometheus_address, outbound=config.outbound)

    # Deleting a TrafficConfig keeps its stable version serving unless its deletionPolicy says Delete.
    rt.register(kube.TRAFFIC_CONFIG, reconcile_traffic_config,
                Finalizer(trafficconfig_deletion.FINALIZER, trafficconfig_reconciler.finalize))
    STATE.runtime = rt
    # A webhook call that ends (on its own pool) wakes its TrafficConfig, whose next reconcile takes the answer.
    trafficconfig_measure.WEBHOOK_CALLS.wake = lambda namespace, name: rt.enqueue(kube.TRAFFIC_CONFIG.kind,
                                                                                  namespace, name)
    rt.start()

    settings.posting.level = logging.WARNING
    # Handlers only enqueue (they are async and return at once); kopf's threads run nothing of ours.
    settings.execution.max_workers = 2
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    threading.Thread(target=_resync_forever, args=(rt, config), name="resync", daemon=True).start()


@kopf.on.probe(id="apiServer", errors=kopf.ErrorsMode.PERMANENT)
async def api_server_reachable(**_: Any) -> str:
    """Part of kopf's /healthz: fails (HTTP 500) once the API server has not answered for longer than the bound,
    where kopf alone would keep answering 200 while its watches retry in vain (model_traffic.health)."""
    tracker = health.current()
    if tracker is None:
        return "not checked"
    verdict = tracker.health()
    if not verdict.healthy:
        raise kopf.PermanentError(verdict.message)
    return verdict.message


@kopf.on.cleanup()
def stop(**_: Any) -> None:
    """SIGTERM: take no more work, let the reconciles in progress finish (bounded), then let kopf exit."""
    if not STATE.runtime.shutdown():
        log.warning("reconciles still running after the shutdown grace period; exiting anyway")


def _virtual_models_claiming(model_name: str) -> list[dict[str, Any]]:
    return CACHES.find(kube.VIRTUAL_MODEL, model_name)


def _resync_forever(rt: Runtime, config: Settings) -> None:
    """Reconcile every object now and then: heals what no watch event announced. The keys come from the watch
    cache (a watch that missed an object would have missed it in a LIST's resourceVersion too)."""
    while True:
        time.sleep(config.resync_seconds)
        for kind, rtype in rt.kinds.items():
            for namespace, name in CACHES.keys(rtype):
                rt.enqueue(kind, namespace, name)


def _enqueue(kind: str, namespace: str, name: str) -> None:
    STATE.runtime.enqueue(kind, namespace, name)


# --- ManagedAIServiceBackend ----------------------------------------------------------------------

def is_status_echo(event_type: str | None, body: kopf.Body) -> bool:
    """A modification that changed no spec: in practice our own status write coming back.

    Reconciling on it would redo every read only to find nothing to do. What else can change without a new
    generation (labels, annotations) does not affect what we render; referenced objects and children have
    watches of their own, and the resync covers the rest. The initial listing (type None) always counts.
    """
    if event_type != "MODIFIED":
        return False
    observed = (body.get("status") or {}).get("observedGeneration")
    return observed is not None and observed == body.get("metadata", {}).get("generation")


@kopf.on.event(GROUP, VERSION, backend.PLURAL)
async def backend_event(type: str, body: kopf.Body, namespace: str | None, name: str, **_: Any) -> None:
    namespace = namespace or ""
    if type == "DELETED":
        STATE.runtime.forget(backend.KIND, namespace, name)
        return
    if not is_status_echo(type, body):
        STATE.runtime.enqueue(backend.KIND, namespace, name, urgent=True)


@kopf.index(GROUP, VERSION, backend.PLURAL)
async def backend_references(namespace: str | None, name: str, spec: kopf.Spec,
                             **_: Any) -> dict[tuple[str, str, str], str]:
    """(namespace, kind, name) of every watched object a backend reads -> the backend's name (its credentials
    Secret is not watched: see COMPLETELY_CACHED)."""
    namespace = namespace or ""
    refs: dict[tuple[str, str, str], str] = {}
    endpoint = spec.get("endpoint") or {}
    for field, kind in (("inferenceService", "InferenceService"), ("inferencePool", "InferencePool"),
                        ("backendRef", "Backend")):
        if endpoint.get(field, {}).get("name"):
            refs[(namespace, kind, endpoint[field]["name"])] = name
    return refs


def _reconcile_referencing(index: kopf.Index[Any, Any], owner_kind: str, namespace: str | None, kind: str,
                           name: str) -> None:
    """A referenced object changed: reconcile every object of owner_kind in its namespace that reads it."""
    if not namespace:
        return
    for owner in sorted(set(index.get((namespace, kind, name), []))):
        _enqueue(owner_kind, namespace, owner)


@kopf.on.event(kube.INFERENCE_SERVICE.group, kube.INFERENCE_SERVICE.version, kube.INFERENCE_SERVICE.plural)
async def inference_service_event(namespace: str | None, name: str, **kwargs: Any) -> None:
    _reconcile_referencing(kwargs["backend_references"], backend.KIND, namespace, "InferenceService", name)
    _reconcile_referencing(kwargs["traffic_config_references"], trafficconfig.KIND, namespace, "InferenceService",
                           name)


@kopf.on.event(kube.INFERENCE_POOL.group, kube.INFERENCE_POOL.version, kube.INFERENCE_POOL.plural)
async def inference_pool_event(namespace: str | None, name: str, **kwargs: Any) -> None:
    _reconcile_referencing(kwargs["backend_references"], backend.KIND, namespace, "InferencePool", name)


@kopf.on.event(kube.BACKEND.group, kube.BACKEND.version, kube.BACKEND.plural)
async def referenced_backend_event(namespace: str | None, name: str, **kwargs: Any) -> None:
    _reconcile_referencing(kwargs["backend_references"], backend.KIND, namespace, "Backend", name)


async def _on_child_event(body: kopf.Body, namespace: str | None, **_: Any) -> None:
    # The owner by owner reference first, so a child whose labels were removed by hand is restored at once.
    owner = apply.owner_of(body)
    if owner is not None and owner[0] in STATE.runtime.kinds and namespace:
        _enqueue(owner[0], namespace, owner[1])


for _child in CHILD_TYPES:
    kopf.on.event(_child.group, _child.version, _child.plural, id=f"child-{_child.plural}")(_on_child_event)


# --- VirtualModel ---------------------------------------------------------------------------------

@kopf.index(GROUP, VERSION, virtualmodel.PLURAL)
async def virtual_model_references(namespace: str | None, name: str, spec: kopf.Spec,
                             **_: Any) -> dict[tuple[str, str, str], str]:
    """(namespace, kind, name) of each backend a VirtualModel routes to -> the VirtualModel's name."""
    return virtualmodel_reconciler.references(namespace or "", name, spec)


@kopf.index(GROUP, VERSION, virtualmodel.PLURAL)
async def virtual_model_gateways(namespace: str | None, name: str, spec: kopf.Spec,
                           **_: Any) -> dict[tuple[str, str, str], tuple[str, str]]:
    """(namespace, "Gateway", name) -> (namespace, name) of each VirtualModel attached to it."""
    return virtualmodel_reconciler.gateway_references(namespace or "", name, spec, STATE.settings.default_gateway)


@kopf.index(GROUP, VERSION, virtualmodel.PLURAL)
async def virtual_model_names(namespace: str | None, name: str, spec: kopf.Spec,
                              **_: Any) -> dict[str, tuple[str, str]]:
    """modelName -> (namespace, name) of each VirtualModel claiming it."""
    return virtualmodel_reconciler.model_names(namespace or "", name, spec)


@kopf.on.event(GROUP, VERSION, virtualmodel.PLURAL)
async def virtual_model_event(type: str, body: kopf.Body, namespace: str | None, name: str, **kwargs: Any) -> None:
    namespace = namespace or ""
    if type == "DELETED":
        STATE.runtime.forget(virtualmodel.KIND, namespace, name)
    elif is_status_echo(type, body):
        return
    else:
        STATE.runtime.enqueue(virtualmodel.KIND, namespace, name, urgent=True)
    # The others claiming the same model name: a refused one may now own it (or must now be refused).
    model = (body.get("spec") or {}).get("modelName") or name
    for other in sorted(set(kwargs["virtual_model_names"].get(model, []))):
        if other != (namespace, name):
            _enqueue(virtualmodel.KIND, *other)


@kopf.on.event(GROUP, VERSION, backend.PLURAL, id="virtual-models-of-managed-backend")
async def managed_backend_event_for_virtual_models(namespace: str | None, name: str, **kwargs: Any) -> None:
    _reconcile_referencing(kwargs["virtual_model_references"], virtualmodel.KIND, namespace, backend.KIND, name)
    _reconcile_sharing(kwargs["virtual_model_shared_references"], namespace, backend.KIND, name)


@kopf.on.event(kube.AI_SERVICE_BACKEND.group, kube.AI_SERVICE_BACKEND.version, kube.AI_SERVICE_BACKEND.plural,
               id="virtual-models-of-aiservicebackend")
async def ai_service_backend_event_for_virtual_models(namespace: str | None, name: str, **kwargs: Any) -> None:
    _reconcile_referencing(kwargs["virtual_model_references"], virtualmodel.KIND, namespace, "AIServiceBackend", name)
    _reconcile_sharing(kwargs["virtual_model_shared_references"], namespace, "AIServiceBackend", name)


@kopf.index(GROUP, VERSION, virtualmodel.PLURAL)
async def virtual_model_shared_references(namespace: str | None, name: str, spec: kopf.Spec,
                                          **_: Any) -> dict[tuple[str, str, str], tuple[str, str]]:
    """(namespace, kind, name) of a backend in another namespace, and (namespace, "ReferenceGrant", "*") ->
    (namespace, name) of each VirtualModel using it."""
    return virtualmodel_reconciler.shared_references(namespace or "", name, spec)


def _reconcile_sharing(index: kopf.Index[Any, Any], namespace: str | None, kind: str, name: str) -> None:
    """Something a VirtualModel of another namespace uses changed: reconcile it."""
    for owner in sorted(set(index.get((namespace or "", kind, name), []))):
        _enqueue(virtualmodel.KIND, *owner)


@kopf.on.event(kube.REFERENCE_GRANT.group, kube.REFERENCE_GRANT.version, kube.REFERENCE_GRANT.plural,
               id="virtual-models-of-referencegrant")
async def reference_grant_event(namespace: str | None, **kwargs: Any) -> None:
    _reconcile_sharing(kwargs["virtual_model_shared_references"], namespace, "ReferenceGrant",
                       virtualmodel_reconciler.ANY_GRANT)


@kopf.on.event(kube.INFERENCE_POOL.group, kube.INFERENCE_POOL.version, kube.INFERENCE_POOL.plural,
               id="virtual-models-of-inferencepool")
async def inference_pool_event_for_virtual_models(namespace: str | None, name: str, **kwargs: Any) -> None:
    _reconcile_referencing(kwargs["virtual_model_references"], virtualmodel.KIND, namespace, "InferencePool", name)


# What VirtualModels read of each Gateway (kinds/virtualmodel/render.py gateway_address), as last seen. Envoy Gateway
# rewrites a Gateway's status for every route attached to it (attachedRoutes): reconciling all its VirtualModels
# each time made N route attachments cost N x N reconciles. Losing this in a restart loses nothing: the initial
# listing reconciles every VirtualModel anyway.
_GATEWAY_SEEN: dict[tuple[str, str], str] = {}


def _gateway_as_read(body: kopf.Body) -> str:
    listeners = [(x.get("name"), x.get("port")) for x in (body.get("spec") or {}).get("listeners") or []]
    return repr(((body.get("status") or {}).get("addresses"), listeners))


@kopf.on.event(kube.GATEWAY.group, kube.GATEWAY.version, kube.GATEWAY.plural)
async def gateway_event(type: str, body: kopf.Body, namespace: str | None, name: str, **kwargs: Any) -> None:
    """A Gateway's address or listeners changed: reconcile the VirtualModels attached to it, in any namespace."""
    key, seen = (namespace or "", name), _gateway_as_read(body)
    if type == "DELETED":
        _GATEWAY_SEEN.pop(key, None)
    elif _GATEWAY_SEEN.get(key) == seen:
        return
    else:
        _GATEWAY_SEEN[key] = seen
    for owner in sorted(set(kwargs["virtual_model_gateways"].get((namespace or "", "Gateway", name), []))):
        _enqueue(virtualmodel.KIND, *owner)


# --- TrafficConfig --------------------------------------------------------------------------------

@kopf.index(GROUP, VERSION, trafficconfig.PLURAL)
async def traffic_config_references(namespace: str | None, name: str, spec: kopf.Spec,
                              **_: Any) -> dict[tuple[str, str, str], str]:
    """(namespace, "InferenceService", name) of a brownfield ref -> the TrafficConfig's name."""
    return trafficconfig_reconciler.references(namespace or "", name, dict(spec))


@kopf.on.event(GROUP, VERSION, trafficconfig.PLURAL)
async def traffic_config_event(type: str, body: kopf.Body, namespace: str | None, name: str, **_: Any) -> None:
    namespace = namespace or ""
    if type == "DELETED":
        STATE.runtime.forget(trafficconfig.KIND, namespace, name)
        trafficconfig_reconciler.forget_metrics(namespace, name)
    elif not is_status_echo(type, body) or has_pending_request(body):
        STATE.runtime.enqueue(trafficconfig.KIND, namespace, name, urgent=True)


@kopf.index(GROUP, VERSION, trafficconfig.PLURAL)
async def traffic_config_templates(namespace: str | None, name: str, spec: kopf.Spec,
                                   **_: Any) -> dict[tuple[str, str, str], tuple[str, str]]:
    """(kind, namespace ("" cluster-wide), name) of each metric template a TrafficConfig uses -> the TrafficConfig."""
    return metrictemplate.template_users(namespace or "", name, dict(spec))


def _reconcile_template_users(index: kopf.Index[Any, Any], kind: str, namespace: str | None, name: str) -> None:
    for owner in sorted(set(index.get(metrictemplate.template_key(kind, namespace or "", name), []))):
        _enqueue(trafficconfig.KIND, *owner)


@kopf.on.event(GROUP, VERSION, metrictemplate.METRIC_TEMPLATE.plural, id="traffic-configs-of-metrictemplate")
async def metric_template_event(namespace: str | None, name: str, **kwargs: Any) -> None:
    """A template appeared, changed or went: reconcile the TrafficConfigs that use it."""
    _reconcile_template_users(kwargs["traffic_config_templates"], metrictemplate.METRIC_TEMPLATE.kind, namespace,
                              name)


@kopf.on.event(GROUP, VERSION, metrictemplate.CLUSTER_METRIC_TEMPLATE.plural,
               id="traffic-configs-of-clustermetrictemplate")
async def cluster_metric_template_event(name: str, **kwargs: Any) -> None:
    _reconcile_template_users(kwargs["traffic_config_templates"], metrictemplate.CLUSTER_METRIC_TEMPLATE.kind, "",
                              name)


def has_pending_request(body: kopf.Body) -> bool:
    """A rollout action (status.requests, written by people through the status subresource: no new generation)
    not yet acted on: not an echo of our own write."""
    status = body.get("status") or {}
    requests, handled = status.get("requests") or {}, status.get("handledRequests") or {}
    return bool(trafficconfig_render.pending_requests(requests, handled))
