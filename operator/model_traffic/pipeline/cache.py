"""Watch caches: what a reconcile reads, instead of a GET or LIST per reconcile.

The operator watches every kind it reads (its informers, :mod:`model_traffic.pipeline.informer`, declared in
:mod:`model_traffic.app`). Each watched event is put here before any handler sees it, and the work queue starts
only once every informer has listed, so a reconcile never starts on a half-filled cache, and the reconcile an
event triggers already sees that event. Our own writes are put here too (write-through), so the next reconcile
does not see the world from before them; an older watch event never replaces a newer entry (resourceVersions
are compared).

Cached: the three kinds we reconcile, and everything they read except Secrets (a backend's credentials Secret
is read by name when it reconciles: the operator may not list or watch Secrets): InferenceServices,
InferencePools, Gateways, Envoy Gateway Backends,
AIServiceBackends (all of them, so a miss means absent), and our children and the HTTPRoute the AI Gateway
generates from our AIGatewayRoute (only ours: those carrying our labels or, should someone have removed the
labels, a controller owner reference to one of our kinds, so a child whose labels were stripped is still found
and restored). Of the others of those kinds only the name and resourceVersion are kept, so a miss means absent
and a child is created without a GET first; a name held by someone else's object is read fresh, so that object
is reported, never overwritten.

Objects are kept pickled: a read unpickles a private copy (several times faster than ``copy.deepcopy``, which
was a fifth of the operator's CPU at 300 objects of each kind) and a pickle takes a fraction of the memory of
the dicts it stands for; compressed (zlib, fastest level), about 60 % of that again, for some 10 µs per read
(the operator at 2,000 objects of each kind waits on the API server, not on its CPU). Label keys are interned:
every object carries the same few. What no reconcile reads is not kept: managedFields and kubectl's
last-applied-configuration annotation (a second copy of the spec). The resourceVersion, labels, controller
owner's uid and secondary keys stay beside it, so comparisons, selectors, indexes and "the children of X"
never unpickle.

Still read fresh from the API server, and why:

- an object of a label-filtered kind whose name is held by an object that is not ours, right before a child of
  that name would be written: it is reported as a conflict, with what it is;
- ``/apis`` discovery, once per API group (a missing group again after ``MISSING_GROUP_RECHECK_SECONDS``),
  to pick the AI Gateway version and to know whether KServe and the Inference Extension are installed;
- the AIServiceBackend-accepts-an-InferencePool probe (a server-side dry run), once per 5 minutes, only for
  backends on an InferencePool: a property of the installed schema, which no watch shows;
- the object itself after a write that failed with 404, to tell "deleted meanwhile" from a real error.

Writes (server-side apply, status merge patches guarded by the resourceVersion the status was computed from,
deletes with a uid precondition, Events) go to the API server, as they must. Losing the cache in a restart
loses nothing: the initial listings fill it again before the first reconcile.
"""

from __future__ import annotations

import pickle
import sys
import threading
import zlib
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import kubernetes

from model_traffic import kube
from model_traffic.kube import Kube, ResourceType
from model_traffic.pipeline import apply

# (group, plural): what identifies a kind regardless of the version it is read at.
TypeKey = tuple[str, str]
SecondaryKeys = Callable[[Mapping[str, Any]], Iterable[Hashable]]


def type_key(rtype: ResourceType) -> TypeKey:
    return (rtype.group, rtype.plural)


# kubectl apply's copy of the whole object as last applied: as large as the spec, never read by a reconcile.
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


# The longest condition message of another controller's status that the cache keeps. Envoy Gateway's
# RouteRulesOverlap condition on an HTTPRoute names every other route whose matches overlap it (AI Gateway's
# generated routes all do), up to the schema's 32,768 characters (internal/gatewayapi/route.go): at 2,000
# VirtualModels on one Gateway those HTTPRoutes were 10.3 of the cache's 18.4 MiB. A reconcile quotes a refusal's
# message, never that much of it (an Event's message is cut at 1,024 too).
CONDITION_MESSAGE_KEPT = 1024


def project(rtype: ResourceType, body: Mapping[str, Any]) -> dict[str, Any]:
    """What the cache keeps of an object: all but managedFields and kubectl's last-applied annotation (large,
    never read); of a Secret, the names of its keys only; of a status another controller writes, condition
    messages up to CONDITION_MESSAGE_KEPT characters (ours are kept whole: a status write compares with them).
    Shares values with ``body``: the cache pickles it at once."""
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
    annotations = meta.get("annotations")
    if annotations and LAST_APPLIED in annotations:
        meta["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
    if rtype == kube.SECRET:
        keys = [*(body.get("data") or {}), *(body.get("stringData") or {})]
        return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "data": dict.fromkeys(keys, "")}
    projected = {**{k: v for k, v in body.items() if k != "metadata"}, "metadata": meta}
    status = body.get("status")
    if rtype.group != kube.GROUP and isinstance(status, dict):
        projected["status"] = _with_short_messages(status)
    return projected


def _with_short_messages(status: dict[str, Any]) -> dict[str, Any]:
    """``status`` with each condition's message cut to CONDITION_MESSAGE_KEPT: its own conditions, and those per
    parent (a route's Gateways) or per ancestor (a policy's targets), as Gateway API statuses nest them."""
    def cut(conditions: Any) -> Any:
        if not isinstance(conditions, list):
            return conditions
        return [{**c, "message": c["message"][:CONDITION_MESSAGE_KEPT]}
                if isinstance(c, dict) and isinstance(c.get("message"), str)
                and len(c["message"]) > CONDITION_MESSAGE_KEPT else c
                for c in conditions]

    out = {**status, "conditions": cut(status["conditions"])} if "conditions" in status else dict(status)
    for nested in ("parents", "ancestors"):
        if isinstance(out.get(nested), list):
            out[nested] = [{**entry, "conditions": cut(entry["conditions"])}
                           if isinstance(entry, dict) and "conditions" in entry else entry for entry in out[nested]]
    return out


def controller_uid(body: Mapping[str, Any]) -> str | None:
    """The uid of the object's controller (its controlling owner reference), whoever that is."""
    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("uid"):
            return str(ref["uid"])
    return None


def is_ours(body: Mapping[str, Any]) -> bool:
    """Whether an object is one of our children: it carries our managed-by label, or (its labels removed by
    hand) a controller owner reference to an object of our API group."""
    meta = body.get("metadata") or {}
    if (meta.get("labels") or {}).get(apply.LABEL_MANAGED_BY) == apply.MANAGED_BY:
        return True
    return apply.controller_owner(body) is not None


def newer_or_equal(candidate: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    """Whether ``candidate`` is at least as new as ``current``. resourceVersions are etcd revisions on every
    real API server; should one not be a number, the later arrival wins."""
    return _newer_or_equal(_resource_version(candidate), _resource_version(current))


def _resource_version(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("resourceVersion") or "")


def _newer_or_equal(candidate: str, current: str) -> bool:
    try:
        return int(candidate) >= int(current)
    except ValueError:
        return True


@dataclass(slots=True)
class _Entry:
    """One cached object: pickled, with what is compared and filtered on without unpickling it."""

    resource_version: str
    labels: dict[str, str]
    secondary_keys: tuple[Hashable, ...]
    controller: str | None  # the uid of its controller (see controlled_by)
    pickled: bytes

    def load(self) -> dict[str, Any]:
        loaded: dict[str, Any] = pickle.loads(zlib.decompress(self.pickled))
        return loaded


@dataclass
class _KindCache:
    rtype: ResourceType
    complete: bool  # every object of the kind (a miss means absent), or only ours (see is_ours)
    secondary: SecondaryKeys | None
    by_namespace: dict[str, dict[str, _Entry]]
    by_secondary: dict[Hashable, set[tuple[str, str]]]
    by_controller: dict[Hashable, set[tuple[str, str]]]  # controller uid -> its children
    # Of a kind cached only when ours: namespace -> name -> resourceVersion of each object that is not, so a
    # miss in both means absent.
    others: dict[str, dict[str, str]]


class Caches:
    """Projected objects by kind, namespace and name; thread-safe (fed on kopf's loop, read by the workers)."""

    def __init__(self) -> None:
        self._kinds: dict[TypeKey, _KindCache] = {}
        self._lock = threading.Lock()

    def register(self, rtype: ResourceType, *, complete: bool, secondary: SecondaryKeys | None = None) -> None:
        """Cache this kind. ``secondary``: further keys an object is found by (:meth:`find`)."""
        self._kinds[type_key(rtype)] = _KindCache(rtype, complete, secondary, {}, {}, {}, {})

    def covers(self, rtype: ResourceType) -> bool:
        return type_key(rtype) in self._kinds

    def is_complete(self, rtype: ResourceType) -> bool:
        cache = self._kinds.get(type_key(rtype))
        return cache is not None and cache.complete

    # -- feeding -------------------------------------------------------------------------------
    def put(self, rtype: ResourceType, body: Mapping[str, Any]) -> None:
        """A watch event's object, or what one of our writes returned; ignored when older than the entry. For
        a kind cached only when ours, an object that is not (any more) ours leaves the cache."""
        cache = self._kinds.get(type_key(rtype))
        meta = body.get("metadata") or {}
        if cache is None or not meta.get("name"):
            return
        namespace, name = str(meta.get("namespace") or ""), str(meta["name"])
        if not cache.complete and not is_ours(body):
            self._remove(cache, body)
            with self._lock:
                cache.others.setdefault(namespace, {})[name] = _resource_version(body)
            return
        projected = project(cache.rtype, body)
        labels = {sys.intern(str(key)): value for key, value in (meta.get("labels") or {}).items()}
        pickled = zlib.compress(pickle.dumps(projected, protocol=pickle.HIGHEST_PROTOCOL), 1)
        entry = _Entry(_resource_version(body), labels,
                       tuple(cache.secondary(projected)) if cache.secondary is not None else (),
                       controller_uid(body), pickled)
        with self._lock:
            objects = cache.by_namespace.setdefault(namespace, {})
            current = objects.get(name)
            if current is not None and not _newer_or_equal(entry.resource_version, current.resource_version):
                return
            objects[name] = entry
            self._forget_other(cache, namespace, name)
            self._reindex(cache, namespace, name, current, entry)

    def drop(self, rtype: ResourceType, body: Mapping[str, Any]) -> None:
        """A deletion seen by the watch (unless the entry is already a newer object of the same name)."""
        cache = self._kinds.get(type_key(rtype))
        if cache is not None:
            self._remove(cache, body)
            meta = body.get("metadata") or {}
            with self._lock:
                self._forget_other(cache, str(meta.get("namespace") or ""), str(meta.get("name") or ""))

    @staticmethod
    def _forget_other(cache: _KindCache, namespace: str, name: str) -> None:
        others = cache.others.get(namespace)
        if others is not None and others.pop(name, None) is not None and not others:
            del cache.others[namespace]

    def _remove(self, cache: _KindCache, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        with self._lock:
            objects = cache.by_namespace.get(namespace, {})
            current = objects.get(name)
            if current is None or not _newer_or_equal(_resource_version(body), current.resource_version):
                return
            del objects[name]
            if not objects:
                cache.by_namespace.pop(namespace, None)
            self._reindex(cache, namespace, name, current, None)

    @staticmethod
    def _reindex(cache: _KindCache, namespace: str, name: str, old: _Entry | None, new: _Entry | None) -> None:
        where = (namespace, name)
        for index, old_keys, new_keys in (
                (cache.by_secondary, old.secondary_keys if old else (), new.secondary_keys if new else ()),
                (cache.by_controller, (old.controller,) if old and old.controller else (),
                 (new.controller,) if new and new.controller else ())):
            if old_keys == new_keys:
                continue
            for key in old_keys:
                holders = index.get(key)
                if holders is not None:
                    holders.discard(where)
                    if not holders:
                        del index[key]
            for key in new_keys:
                index.setdefault(key, set()).add(where)

    # -- reading (copies: callers may change what they get) --------------------------------------
    def get(self, rtype: ResourceType, namespace: str, name: str) -> dict[str, Any] | None:
        cache = self._kinds[type_key(rtype)]
        with self._lock:
            found = cache.by_namespace.get(namespace, {}).get(name)
        return found.load() if found is not None else None

    def objects(self, rtype: ResourceType, namespace: str | None = None,
                label_selector: str | None = None) -> list[dict[str, Any]]:
        """The objects of the kind (in ``namespace``) whose labels match ``label_selector``: only those are
        unpickled."""
        cache = self._kinds[type_key(rtype)]
        with self._lock:
            buckets = [cache.by_namespace.get(namespace, {})] if namespace is not None \
                else list(cache.by_namespace.values())
            found = [entry for bucket in buckets for entry in bucket.values()
                     if selector_matches(label_selector, entry.labels)]
        return [entry.load() for entry in found]

    def keys(self, rtype: ResourceType) -> list[tuple[str, str]]:
        """(namespace, name) of every cached object of the kind: what the periodic resync enqueues."""
        cache = self._kinds[type_key(rtype)]
        with self._lock:
            return [(ns, name) for ns, bucket in cache.by_namespace.items() for name in bucket]

    def find(self, rtype: ResourceType, key: Hashable) -> list[dict[str, Any]]:
        """The objects whose secondary keys include ``key``."""
        cache = self._kinds[type_key(rtype)]
        with self._lock:
            holders = sorted(cache.by_secondary.get(key, ()))
            found = [cache.by_namespace.get(ns, {}).get(name) for ns, name in holders]
        return [entry.load() for entry in found if entry is not None]

    def holders(self, rtype: ResourceType, key: Hashable) -> list[tuple[str, str]]:
        """(namespace, name) of the objects whose secondary keys include ``key``, without reading them."""
        cache = self._kinds[type_key(rtype)]
        with self._lock:
            return sorted(cache.by_secondary.get(key, ()))

    def controlled_by(self, rtype: ResourceType, namespace: str, uid: str) -> list[dict[str, Any]]:
        """The objects of the kind in ``namespace`` whose controller has this uid: only those are unpickled."""
        cache = self._kinds[type_key(rtype)]
        with self._lock:
            bucket = cache.by_namespace.get(namespace, {})
            found = [bucket.get(name) for ns, name in sorted(cache.by_controller.get(uid, ())) if ns == namespace]
        return [entry.load() for entry in found if entry is not None]

    def held_by_another(self, rtype: ResourceType, namespace: str, name: str) -> bool:
        """Whether an object of a kind cached only when ours, not ours, holds this name."""
        cache = self._kinds[type_key(rtype)]
        with self._lock:
            return name in cache.others.get(namespace, {})

    def versions(self, rtype: ResourceType, namespace: str | None = None) -> dict[tuple[str, str], str]:
        """(namespace, name) -> resourceVersion of every object known of the kind (in ``namespace``), ours or not:
        what a relist compares with."""
        cache = self._kinds.get(type_key(rtype))
        if cache is None:
            return {}
        with self._lock:
            found = {(ns, name): entry.resource_version for ns, bucket in cache.by_namespace.items()
                     if namespace is None or ns == namespace for name, entry in bucket.items()}
            found.update({(ns, name): version for ns, bucket in cache.others.items()
                          if namespace is None or ns == namespace for name, version in bucket.items()})
        return found

    def get_any(self, rtype: ResourceType, namespace: str, name: str) -> dict[str, Any] | None:
        """Like :meth:`get`, None for a kind not cached."""
        return self.get(rtype, namespace, name) if self.covers(rtype) else None

    def size(self) -> int:
        with self._lock:
            return sum(len(b) for cache in self._kinds.values() for b in cache.by_namespace.values())


def selector_matches(selector: str | None, labels: Mapping[str, str]) -> bool:
    """An equality-based label selector (``a=b,c=d``), the only kind the operator uses."""
    for term in (selector or "").split(","):
        if not term.strip():
            continue
        key, _, value = term.partition("=")
        if labels.get(key.strip()) != value.strip().lstrip("="):
            return False
    return True


class CachedKube(Kube):
    """:class:`Kube` whose reads come from the watch caches where they cover the kind, and whose writes also
    update them."""

    def __init__(self, caches: Caches, config: kubernetes.client.Configuration | None = None) -> None:
        super().__init__(config)
        self.caches = caches

    def get(self, rtype: ResourceType, namespace: str, name: str) -> dict[str, Any] | None:
        if not self.caches.covers(rtype):
            return super().get(rtype, namespace, name)
        found = self.caches.get(rtype, namespace, name)
        if found is not None or self.caches.is_complete(rtype):
            return found
        # Only ours are cached whole: a same-named object of someone else's is read, to be reported.
        if self.caches.held_by_another(rtype, namespace, name):
            return super().get(rtype, namespace, name)
        return None

    def get_ours(self, rtype: ResourceType, namespace: str, name: str) -> dict[str, Any] | None:
        if self.caches.covers(rtype):
            return self.caches.get(rtype, namespace, name)
        return super().get_ours(rtype, namespace, name)

    def list_objects(self, rtype: ResourceType, namespace: str | None = None,
                     label_selector: str | None = None) -> list[dict[str, Any]]:
        if not self.caches.is_complete(rtype):
            return super().list_objects(rtype, namespace, label_selector)
        return self.caches.objects(rtype, namespace, label_selector)

    def list_controlled(self, rtype: ResourceType, namespace: str, uid: str) -> list[dict[str, Any]]:
        if not self.caches.covers(rtype):
            return super().list_controlled(rtype, namespace, uid)
        return self.caches.controlled_by(rtype, namespace, uid)

    def apply(self, obj: dict[str, Any], *, force: bool = True, dry_run: bool = False) -> dict[str, Any]:
        applied = super().apply(obj, force=force, dry_run=dry_run)
        if not dry_run:
            self._remember(applied)
        return applied

    def patch_status(self, rtype: ResourceType, namespace: str, name: str, status: dict[str, Any],
                     resource_version: str | None = None) -> dict[str, Any]:
        written = super().patch_status(rtype, namespace, name, status, resource_version)
        self.caches.put(rtype, written)
        return written

    def _remember(self, obj: dict[str, Any]) -> None:
        group = str(obj.get("apiVersion") or "").rpartition("/")[0]
        for rtype in kube.ALL_TYPES:
            if (rtype.group, rtype.kind) == (group, obj.get("kind")):
                self.caches.put(rtype, obj)
                return
