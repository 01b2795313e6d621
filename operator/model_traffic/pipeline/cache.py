"""Watch caches: what a reconcile reads, instead of a GET or LIST per reconcile.

The operator already watches every kind it reads (kopf's watches, declared in :mod:`model_traffic.app`). Each
watched event of a cached kind is also put here, by a kopf index function, before any handler sees the event:
kopf fills every index from its initial listings before it calls the first handler, so a reconcile (which
only a handler can trigger) never starts on a half-filled cache, and the reconcile an event triggers already
sees that event. Our own writes are put here too (write-through), so the next reconcile does not see the
world from before them; an older watch event never replaces a newer entry (resourceVersions are compared).

Cached: the three kinds we reconcile, and everything they read except Secrets (a backend's credentials Secret
is read by name when it reconciles: the operator may not list or watch Secrets): InferenceServices,
InferencePools, Gateways, Envoy Gateway Backends,
AIServiceBackends (all of them, so a miss means absent), and our children and the HTTPRoute the AI Gateway
generates from our AIGatewayRoute (only ours: those carrying our labels or, should someone have removed the
labels, a controller owner reference to one of our kinds, so a child whose labels were stripped is still found
and restored; a miss there means "not ours", which for a child about to be created is checked once with a GET
so that a same-named object of someone else's is reported, never overwritten).

Objects are kept pickled: a read unpickles a private copy (several times faster than ``copy.deepcopy``, which
was a fifth of the operator's CPU at 300 objects of each kind) and a pickle takes a fraction of the memory of
the dicts it stands for. The resourceVersion, labels and secondary keys stay beside it, so comparisons,
selectors and indexes never unpickle.

Still read fresh from the API server, and why:

- a child of a label-filtered kind that the cache does not have, right before creating it: an object of the
  same name without our labels is invisible to the cache and must not be taken over;
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
import threading
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


def project(rtype: ResourceType, body: Mapping[str, Any]) -> dict[str, Any]:
    """What the cache keeps of an object: all but managedFields (large, never read); of a Secret, the names of
    its keys only. Shares values with ``body``: the cache pickles it at once."""
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
    if rtype == kube.SECRET:
        keys = [*(body.get("data") or {}), *(body.get("stringData") or {})]
        return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "data": dict.fromkeys(keys, "")}
    return {**{k: v for k, v in body.items() if k != "metadata"}, "metadata": meta}


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
    pickled: bytes

    def load(self) -> dict[str, Any]:
        loaded: dict[str, Any] = pickle.loads(self.pickled)
        return loaded


@dataclass
class _KindCache:
    rtype: ResourceType
    complete: bool  # every object of the kind (a miss means absent), or only ours (see is_ours)
    secondary: SecondaryKeys | None
    by_namespace: dict[str, dict[str, _Entry]]
    by_secondary: dict[Hashable, set[tuple[str, str]]]


class Caches:
    """Projected objects by kind, namespace and name; thread-safe (fed on kopf's loop, read by the workers)."""

    def __init__(self) -> None:
        self._kinds: dict[TypeKey, _KindCache] = {}
        self._lock = threading.Lock()

    def register(self, rtype: ResourceType, *, complete: bool, secondary: SecondaryKeys | None = None) -> None:
        """Cache this kind. ``secondary``: further keys an object is found by (:meth:`find`)."""
        self._kinds[type_key(rtype)] = _KindCache(rtype, complete, secondary, {}, {})

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
        if not cache.complete and not is_ours(body):
            self._remove(cache, body)
            return
        namespace, name = str(meta.get("namespace") or ""), str(meta["name"])
        projected = project(cache.rtype, body)
        entry = _Entry(_resource_version(body), dict(meta.get("labels") or {}),
                       tuple(cache.secondary(projected)) if cache.secondary is not None else (),
                       pickle.dumps(projected, protocol=pickle.HIGHEST_PROTOCOL))
        with self._lock:
            objects = cache.by_namespace.setdefault(namespace, {})
            current = objects.get(name)
            if current is not None and not _newer_or_equal(entry.resource_version, current.resource_version):
                return
            objects[name] = entry
            if cache.secondary is not None:
                self._reindex(cache, namespace, name, current, entry)

    def drop(self, rtype: ResourceType, body: Mapping[str, Any]) -> None:
        """A deletion seen by the watch (unless the entry is already a newer object of the same name)."""
        cache = self._kinds.get(type_key(rtype))
        if cache is not None:
            self._remove(cache, body)

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
            if cache.secondary is not None:
                self._reindex(cache, namespace, name, current, None)

    @staticmethod
    def _reindex(cache: _KindCache, namespace: str, name: str, old: _Entry | None, new: _Entry | None) -> None:
        for key in old.secondary_keys if old is not None else ():
            holders = cache.by_secondary.get(key)
            if holders is not None:
                holders.discard((namespace, name))
                if not holders:
                    del cache.by_secondary[key]
        for key in new.secondary_keys if new is not None else ():
            cache.by_secondary.setdefault(key, set()).add((namespace, name))

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
        # Only our labelled objects are cached: a same-named object of someone else's may exist.
        live = super().get(rtype, namespace, name)
        return live

    def get_ours(self, rtype: ResourceType, namespace: str, name: str) -> dict[str, Any] | None:
        if self.caches.covers(rtype):
            return self.caches.get(rtype, namespace, name)
        return super().get_ours(rtype, namespace, name)

    def list_objects(self, rtype: ResourceType, namespace: str | None = None,
                     label_selector: str | None = None) -> list[dict[str, Any]]:
        if not self.caches.is_complete(rtype):
            return super().list_objects(rtype, namespace, label_selector)
        return self.caches.objects(rtype, namespace, label_selector)

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
