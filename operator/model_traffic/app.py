"""The operator's wiring: what it watches, and how each watch event becomes keys in the work queue.

Triggers are level-based: the object's own watch events (including the initial listing, so a restart
resumes everything), events of objects it references (found through the watch cache's indexes), events of
its children (drift is restored), and a periodic resync. Every handler only enqueues.

The watches are the operator's own informers (:mod:`model_traffic.pipeline.informer`), on threads of their own,
each feeding the watch cache (:mod:`model_traffic.pipeline.cache`) before its handlers run. kopf runs the
process: start-up and SIGTERM, the liveness endpoint and its probe; it watches none of these kinds, so it keeps
no state in annotations and adds no finalizer, and deleting an object never waits for kopf. The one finalizer is
the operator's own, on a TrafficConfig whose deletionPolicy is Retain (kinds/trafficconfig/deletion.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from model_traffic import health, kube
from model_traffic.kinds.backend import reconcile as backend_reconciler
from model_traffic.kinds.metrictemplate import resolve as metrictemplate
from model_traffic.kinds.trafficconfig import deletion as trafficconfig_deletion
from model_traffic.kinds.trafficconfig import measure as trafficconfig_measure
from model_traffic.kinds.trafficconfig import reconcile as trafficconfig_reconciler
from model_traffic.kinds.trafficconfig import render as trafficconfig_render
from model_traffic.kinds.virtualmodel import reconcile as virtualmodel_reconciler
from model_traffic.kube import Kube, ResourceType
from model_traffic.pipeline import apply
from model_traffic.pipeline.cache import CachedKube, Caches
from model_traffic.pipeline.informer import Informers
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
                     kube.REFERENCE_GRANT)
CACHED_BY_OUR_LABELS = (kube.BACKEND_SECURITY_POLICY, kube.QUOTA_POLICY, kube.AI_GATEWAY_ROUTE,
                        kube.BACKEND_TRAFFIC_POLICY, kube.SECURITY_POLICY, kube.HTTP_ROUTE)
CACHES = Caches()

# (event type: None for the initial listing, "ADDED", "MODIFIED", "DELETED"; the object as watched)
EventHandler = Callable[[str | None, dict[str, Any]], None]
SecondaryKeys = Callable[[Mapping[str, Any]], Iterable[Hashable]]


@dataclass
class Watch:
    """One watched kind: cached (whole, or only ours), and the handlers its events run, in order."""

    rtype: ResourceType
    cluster_scoped: bool = False
    handlers: list[EventHandler] = field(default_factory=list)


WATCHES: dict[ResourceType, Watch] = {}


def watch(rtype: ResourceType, *, complete: bool = True, secondary: SecondaryKeys | None = None,
          cluster_scoped: bool = False) -> Watch:
    """Watch and cache a kind (once). ``secondary``: further keys its objects are found by
    (:meth:`Caches.holders`): what an index of kopf's did before."""
    if rtype not in WATCHES:
        CACHES.register(rtype, complete=complete, secondary=secondary)
        WATCHES[rtype] = Watch(rtype, cluster_scoped)
    return WATCHES[rtype]


def on_event(*rtypes: ResourceType) -> Callable[[EventHandler], EventHandler]:
    """Run the decorated function for every event of these (watched) kinds, after the cache has the event."""
    def register(handler: EventHandler) -> EventHandler:
        for rtype in rtypes:
            WATCHES[rtype].handlers.append(handler)
        return handler
    return register


def _where(body: Mapping[str, Any]) -> tuple[str, str]:
    meta = body.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


# Secondary keys (the indexes): ("uses", namespace, kind, name) of an object a backend, VirtualModel or
# TrafficConfig reads in its own namespace; ("shared", namespace, kind, name) of a backend a VirtualModel uses in
# another namespace, with ("shared", namespace, "ReferenceGrant", ANY_GRANT) for the grants there; ("gateway",
# namespace, "Gateway", name) of each Gateway a VirtualModel attaches to; ("model", modelName) it claims.

def _backend_keys(body: Mapping[str, Any]) -> list[Hashable]:
    namespace, _ = _where(body)
    endpoint = (body.get("spec") or {}).get("endpoint") or {}
    return [("uses", namespace, kind, str(endpoint[field_]["name"]))
            for field_, kind in (("inferenceService", "InferenceService"), ("inferencePool", "InferencePool"),
                                 ("backendRef", "Backend"))
            if isinstance(endpoint.get(field_), Mapping) and endpoint[field_].get("name")]


def _virtual_model_keys(body: Mapping[str, Any]) -> list[Hashable]:
    namespace, name = _where(body)
    spec = body.get("spec") or {}
    keys: list[Hashable] = [("model", virtualmodel_reconciler.model_name_of(name, spec))]
    keys += [("uses", *key) for key in virtualmodel_reconciler.references(namespace, name, spec)]
    keys += [("shared", *key) for key in virtualmodel_reconciler.shared_references(namespace, name, spec)]
    keys += [("gateway", *key) for key in virtualmodel_reconciler.gateway_references(
        namespace, name, spec, STATE.settings.default_gateway)]
    return keys


def _traffic_config_keys(body: Mapping[str, Any]) -> list[Hashable]:
    namespace, name = _where(body)
    spec = dict(body.get("spec") or {})
    return [*(("uses", *key) for key in trafficconfig_reconciler.references(namespace, name, spec)),
            *(("template", *key) for key in metrictemplate.template_users(namespace, name, spec))]


for _rtype in COMPLETELY_CACHED:
    watch(_rtype, secondary={kube.MANAGED_AI_SERVICE_BACKEND: _backend_keys, kube.VIRTUAL_MODEL: _virtual_model_keys,
                             kube.TRAFFIC_CONFIG: _traffic_config_keys}.get(_rtype))
for _rtype in CACHED_BY_OUR_LABELS:
    watch(_rtype, complete=False)
# The metric templates TrafficConfigs reference: read from the cache, and a change reconciles their users.
watch(metrictemplate.METRIC_TEMPLATE)
watch(metrictemplate.CLUSTER_METRIC_TEMPLATE, cluster_scoped=True)


class State:
    """Process-wide wiring, built once at start-up."""

    runtime: Runtime
    settings: Settings
    informers: Informers
    # The namespaces watched (none: all), as given on the command line or by MTO_NAMESPACES (cli.run sets it).
    namespaces: list[str] | None = None


STATE = State()


@kopf.on.startup()
def start(settings: kopf.OperatorSettings, **_: Any) -> None:
    config = Settings.from_env()
    STATE.settings = config
    namespaces = STATE.namespaces if STATE.namespaces is not None else config.namespaces
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

    informers = Informers(kube.load_config(), CACHES)
    for watched in WATCHES.values():
        informers.watch(watched.rtype, [] if watched.cluster_scoped else namespaces, _dispatcher(watched))
    STATE.informers = informers
    informers.start()
    threading.Thread(target=_start_when_synced, args=(informers, rt, config), name="start", daemon=True).start()

    # kopf runs no resource handlers here (the informers above watch what the operator reads), so its own watch of
    # every CustomResourceDefinition (and of Namespaces, with watched namespaces) would serve nothing: it held
    # the cluster's CRDs (several MiB with KServe's) in memory at start and needed a cluster-wide permission.
    settings.scanning.disabled = True
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = 2
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60


def _dispatcher(watched: Watch) -> EventHandler:
    def dispatch(event_type: str | None, body: dict[str, Any]) -> None:
        for handler in watched.handlers:
            handler(event_type, body)
    return dispatch


def _start_when_synced(informers: Informers, rt: Runtime, config: Settings) -> None:
    """The workers start once every watch has listed (client-go's WaitForCacheSync): the keys of the initial
    listings are queued by then, and no reconcile reads a half-filled cache."""
    started = time.monotonic()
    informers.wait_synced()
    log.info("watch caches filled in %.1f s (%d objects); reconciling", time.monotonic() - started, CACHES.size())
    rt.start()
    _resync_forever(rt, config)


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
    STATE.informers.stop()
    if not STATE.runtime.shutdown():
        log.warning("reconciles still running after the shutdown grace period; exiting anyway")


def _virtual_models_claiming(model_name: str) -> list[dict[str, Any]]:
    return CACHES.find(kube.VIRTUAL_MODEL, ("model", model_name))


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


def _enqueue_holders(owner: ResourceType, key: Hashable) -> None:
    """Reconcile every object of ``owner`` whose secondary keys include ``key`` (that reads what changed)."""
    for namespace, name in CACHES.holders(owner, key):
        _enqueue(owner.kind, namespace, name)


def is_status_echo(event_type: str | None, body: Mapping[str, Any]) -> bool:
    """A modification that changed no spec: in practice our own status write coming back.

    Reconciling on it would redo every read only to find nothing to do. What else can change without a new
    generation (labels, annotations) does not affect what we render; referenced objects and children have
    watches of their own, and the resync covers the rest. The initial listing (type None) always counts.
    """
    if event_type != "MODIFIED":
        return False
    observed = (body.get("status") or {}).get("observedGeneration")
    return observed is not None and observed == (body.get("metadata") or {}).get("generation")


def _own_event(rtype: ResourceType, event_type: str | None, body: Mapping[str, Any], wanted: bool = False) -> None:
    """The object's own event: reconcile it first (urgent), unless it is our status write coming back."""
    namespace, name = _where(body)
    if event_type == "DELETED":
        STATE.runtime.forget(rtype.kind, namespace, name)
    elif wanted or not is_status_echo(event_type, body):
        STATE.runtime.enqueue(rtype.kind, namespace, name, urgent=True)


# --- children -------------------------------------------------------------------------------------

@on_event(*CHILD_TYPES)
def child_event(event_type: str | None, body: dict[str, Any]) -> None:
    # The owner by owner reference first, so a child whose labels were removed by hand is restored at once.
    owner = apply.owner_of(body)
    namespace, _ = _where(body)
    if owner is not None and owner[0] in STATE.runtime.kinds and namespace:
        _enqueue(owner[0], namespace, owner[1])


# --- ManagedAIServiceBackend ----------------------------------------------------------------------

@on_event(kube.MANAGED_AI_SERVICE_BACKEND)
def backend_event(event_type: str | None, body: dict[str, Any]) -> None:
    _own_event(kube.MANAGED_AI_SERVICE_BACKEND, event_type, body)
    namespace, name = _where(body)
    # The VirtualModels routing to it (in its namespace, or sharing it from another).
    _enqueue_holders(kube.VIRTUAL_MODEL, ("uses", namespace, kube.MANAGED_AI_SERVICE_BACKEND.kind, name))
    _enqueue_holders(kube.VIRTUAL_MODEL, ("shared", namespace, kube.MANAGED_AI_SERVICE_BACKEND.kind, name))


@on_event(kube.INFERENCE_SERVICE, kube.INFERENCE_POOL, kube.BACKEND)
def backend_endpoint_event(event_type: str | None, body: dict[str, Any]) -> None:
    """An object a backend's endpoint names (or a TrafficConfig's brownfield InferenceService) changed."""
    namespace, name = _where(body)
    key = ("uses", namespace, str(body.get("kind")), name)
    _enqueue_holders(kube.MANAGED_AI_SERVICE_BACKEND, key)
    if body.get("kind") == kube.INFERENCE_SERVICE.kind:
        _enqueue_holders(kube.TRAFFIC_CONFIG, key)
    if body.get("kind") == kube.INFERENCE_POOL.kind:
        _enqueue_holders(kube.VIRTUAL_MODEL, key)


@on_event(kube.AI_SERVICE_BACKEND)
def ai_service_backend_event(event_type: str | None, body: dict[str, Any]) -> None:
    namespace, name = _where(body)
    _enqueue_holders(kube.VIRTUAL_MODEL, ("uses", namespace, kube.AI_SERVICE_BACKEND.kind, name))
    _enqueue_holders(kube.VIRTUAL_MODEL, ("shared", namespace, kube.AI_SERVICE_BACKEND.kind, name))


# --- VirtualModel ---------------------------------------------------------------------------------

@on_event(kube.VIRTUAL_MODEL)
def virtual_model_event(event_type: str | None, body: dict[str, Any]) -> None:
    namespace, name = _where(body)
    if event_type != "DELETED" and is_status_echo(event_type, body):
        return
    _own_event(kube.VIRTUAL_MODEL, event_type, body)
    # The others claiming the same model name: a refused one may now own it (or must now be refused).
    model = virtualmodel_reconciler.model_name_of(name, body.get("spec") or {})
    for other in CACHES.holders(kube.VIRTUAL_MODEL, ("model", model)):
        if other != (namespace, name):
            _enqueue(kube.VIRTUAL_MODEL.kind, *other)


@on_event(kube.REFERENCE_GRANT)
def reference_grant_event(event_type: str | None, body: dict[str, Any]) -> None:
    namespace, _ = _where(body)
    _enqueue_holders(kube.VIRTUAL_MODEL, ("shared", namespace, "ReferenceGrant", virtualmodel_reconciler.ANY_GRANT))


# What VirtualModels read of each Gateway (kinds/virtualmodel/render.py gateway_address), as last seen. Envoy Gateway
# rewrites a Gateway's status for every route attached to it (attachedRoutes): reconciling all its VirtualModels
# each time made N route attachments cost N x N reconciles. Losing this in a restart loses nothing: the initial
# listing reconciles every VirtualModel anyway.
_GATEWAY_SEEN: dict[tuple[str, str], str] = {}


def _gateway_as_read(body: Mapping[str, Any]) -> str:
    listeners = [(x.get("name"), x.get("port")) for x in (body.get("spec") or {}).get("listeners") or []]
    return repr(((body.get("status") or {}).get("addresses"), listeners))


@on_event(kube.GATEWAY)
def gateway_event(event_type: str | None, body: dict[str, Any]) -> None:
    """A Gateway's address or listeners changed: reconcile the VirtualModels attached to it, in any namespace."""
    key, seen = _where(body), _gateway_as_read(body)
    if event_type == "DELETED":
        _GATEWAY_SEEN.pop(key, None)
    elif _GATEWAY_SEEN.get(key) == seen:
        return
    else:
        _GATEWAY_SEEN[key] = seen
    _enqueue_holders(kube.VIRTUAL_MODEL, ("gateway", key[0], "Gateway", key[1]))


# --- TrafficConfig --------------------------------------------------------------------------------

@on_event(kube.TRAFFIC_CONFIG)
def traffic_config_event(event_type: str | None, body: dict[str, Any]) -> None:
    _own_event(kube.TRAFFIC_CONFIG, event_type, body, wanted=has_pending_request(body))
    if event_type == "DELETED":
        trafficconfig_reconciler.forget_metrics(*_where(body))


def _on_template_event(rtype: ResourceType) -> None:
    @on_event(rtype)
    def template_event(event_type: str | None, body: dict[str, Any]) -> None:
        """A template appeared, changed or went: reconcile the TrafficConfigs that use it (a ClusterMetricTemplate's
        in every namespace)."""
        namespace, name = _where(body)
        _enqueue_holders(kube.TRAFFIC_CONFIG, ("template", *metrictemplate.template_key(rtype.kind, namespace, name)))


_on_template_event(metrictemplate.METRIC_TEMPLATE)
_on_template_event(metrictemplate.CLUSTER_METRIC_TEMPLATE)


def has_pending_request(body: Mapping[str, Any]) -> bool:
    """A rollout action (status.requests, written by people through the status subresource: no new generation)
    not yet acted on: not an echo of our own write."""
    status = body.get("status") or {}
    requests, handled = status.get("requests") or {}, status.get("handledRequests") or {}
    return bool(trafficconfig_render.pending_requests(requests, handled))
