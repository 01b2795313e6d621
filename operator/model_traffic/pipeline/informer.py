"""The operator's own watches: a LIST then a WATCH per kind (per watched namespace), on threads of their own.

Each event goes into the watch cache (:mod:`model_traffic.pipeline.cache`) and then to the kind's handlers,
which only enqueue keys (:mod:`model_traffic.app`). This replaces kopf's watches of the same kinds: kopf ran
several handlers and index functions per event on its one event loop (a task, a per-object memory, loggers and
a patch object each), which at 1,000 objects of each kind delivered the triggers minutes late and held
hundreds of MiB; here an event costs one JSON parse, one pickle and a few dictionary lookups, on a thread that
does nothing else.

- The initial LIST delivers each object with the event type ``None`` (a restart resumes every object);
  :meth:`Informer.synced` is set once it is complete, and the work queue starts only when every informer is
  synced (client-go's WaitForCacheSync), so a reconcile never reads a half-filled cache.
- The WATCH continues from the LIST's resourceVersion, with bookmarks, and again from the last one seen when
  the server ends it. A resourceVersion too old (HTTP 410) lists again; that relist delivers only what
  changed (by resourceVersion) and a DELETED for what is gone, so it does not reconcile everything again.
- A kind the API server does not serve (KServe not installed) counts as synced and empty, and is looked for
  again every :data:`MISSING_KIND_RECHECK_SECONDS`; a refused one (RBAC) is logged with the server's message
  and tried again.

Losing an informer's state in a restart loses nothing: the next LIST is the whole truth.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from model_traffic.kube import ResourceType
from model_traffic.pipeline.cache import Caches

log = logging.getLogger(__name__)

# Named in the API server's audit log (`make bench` counts the watches apart from the reconciles).
USER_AGENT = "model-traffic-operator-watch/python-kubernetes"
# Objects per page of a LIST: no one response holds them all. A LIST starts with FIRST_PAGE_SIZE objects and
# sizes each next page from the last one to hold about PAGE_BYTES of JSON, between MIN_PAGE_SIZE and PAGE_SIZE
# objects: objects of one kind differ a hundredfold. At 2,000 VirtualModels on one Gateway, each HTTPRoute AI
# Gateway generates carries 33 KB of status (Envoy Gateway's RouteRulesOverlap names every other route), so a page
# of 500 of them was 17 MB of JSON, and as much again parsed: the restarted operator peaked at 183 MiB.
PAGE_SIZE = 500
FIRST_PAGE_SIZE = 100
MIN_PAGE_SIZE = 10
PAGE_BYTES = 2 * 2**20
# One page of one LIST in hand at a time, across all the informers: a page with the objects' statuses is
# megabytes of JSON and some ten times that once parsed, and on a start every informer lists at once (some twenty
# of them). At 4,600 objects the operator reached 240 MiB while it started, against 158 MiB while it reconciled
# everything from nothing. A page is fetched and handled in a fraction of a second, so the informers take turns.
LIST_PAGES_IN_HAND = threading.BoundedSemaphore(1)
# The server ends a watch after this many seconds (spread, so the watches do not all restart at once); the
# client gives up on a silent connection a little later and watches again from the last resourceVersion.
WATCH_SECONDS = (240, 300)
READ_TIMEOUT_MARGIN_SECONDS = 30
CONNECT_TIMEOUT_SECONDS = 10
MISSING_KIND_RECHECK_SECONDS = 30.0
ERROR_BACKOFF_SECONDS = (1.0, 30.0)

# (event type: None for the initial listing, "ADDED", "MODIFIED" or "DELETED"; the object)
Handler = Callable[[str | None, dict[str, Any]], None]


class ResourceVersionTooOld(Exception):
    """HTTP 410 Gone: the watch cannot continue from the resourceVersion it had; list again."""


def api_client(config: kubernetes.client.Configuration, watches: int) -> kubernetes.client.ApiClient:
    """A client of its own for the watches: each holds a connection for minutes, which would starve the
    reconciles' pool."""
    config.connection_pool_maxsize = max(config.connection_pool_maxsize or 0, watches + 2)
    client = kubernetes.client.ApiClient(config)
    client.user_agent = USER_AGENT
    return client


class Informer:
    """One kind in one namespace (or all of them): keeps the cache filled and calls ``handle`` per event."""

    def __init__(self, client: kubernetes.client.ApiClient, caches: Caches, rtype: ResourceType,
                 namespace: str | None, handle: Handler, stopping: threading.Event) -> None:
        self.rtype = rtype
        self.namespace = namespace
        self.synced = threading.Event()
        self._custom = kubernetes.client.CustomObjectsApi(client)
        self._caches = caches
        self._handle = handle
        self._stopping = stopping
        self._listed_once = False
        # Learnt from the pages of the last LIST (next_page_size); lost in a restart, the next LIST's first page
        # learns it again.
        self._page_size = FIRST_PAGE_SIZE
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"watch-{rtype.plural}" + (f"-{namespace}" if namespace else ""))

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                resource_version = self._list()
                failures = 0
                while not self._stopping.is_set():
                    resource_version = self._watch(resource_version)
            except ResourceVersionTooOld:
                continue
            except ApiException as error:
                self.synced.set()  # what could be known is known: an absent or refused kind holds nothing
                if error.status == 404:
                    self._stopping.wait(MISSING_KIND_RECHECK_SECONDS)
                    continue
                failures += 1
                log.warning("cannot list or watch %s%s: HTTP %s %s; trying again", self.rtype.plural,
                            f" in {self.namespace}" if self.namespace else "", error.status, _message(error))
                self._stopping.wait(_backoff(failures))
            except Exception as error:  # a dropped connection, a malformed line: never end the thread
                failures += 1
                log.info("watch of %s ended (%s: %s); listing again", self.rtype.plural, type(error).__name__,
                         error)
                self._stopping.wait(_backoff(failures))

    # -- LIST ------------------------------------------------------------------------------------
    def _list(self) -> str:
        """Every object, page by page; the resourceVersion to watch from."""
        initial = not self._listed_once
        before = {} if initial else self._caches.versions(self.rtype, self.namespace)
        seen: set[tuple[str, str]] = set()
        token: str | None = None
        while True:
            with LIST_PAGES_IN_HAND:
                page, size = self._list_page(self._page_size, token)
                items = page.get("items") or []
                if items:
                    self._page_size = next_page_size(len(items), size)
                for item in items:
                    self._stamp(item)
                    meta = item["metadata"]
                    key = (str(meta.get("namespace") or ""), str(meta["name"]))
                    seen.add(key)
                    if initial:
                        self._deliver(None, item)
                    elif before.get(key) != meta.get("resourceVersion"):
                        self._deliver("MODIFIED" if key in before else "ADDED", item)
                token = (page.get("metadata") or {}).get("continue") or None
                resource_version = str((page.get("metadata") or {}).get("resourceVersion") or "")
                del page, items  # parsed objects now live in the cache only
            if token is None:
                break
        for key in before.keys() - seen:
            gone = self._caches.get_any(self.rtype, *key) or {"apiVersion": self.rtype.api_version,
                                                              "kind": self.rtype.kind,
                                                              "metadata": {"namespace": key[0], "name": key[1]}}
            gone["metadata"].pop("resourceVersion", None)  # a deletion seen late still removes the entry
            self._deliver("DELETED", gone)
        self._listed_once = True
        self.synced.set()
        return resource_version

    # -- WATCH -----------------------------------------------------------------------------------
    def _watch(self, resource_version: str) -> str:
        """Deliver events until the server ends the watch; the last resourceVersion seen."""
        seconds = random.randint(*WATCH_SECONDS)
        response = self._raw_call({
            "watch": True, "resource_version": resource_version, "allow_watch_bookmarks": True,
            "timeout_seconds": seconds, "_preload_content": False,
            "_request_timeout": (CONNECT_TIMEOUT_SECONDS, seconds + READ_TIMEOUT_MARGIN_SECONDS)})
        try:
            for line in _lines(response):
                if self._stopping.is_set():
                    break
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise ResourceVersionTooOld(obj.get("message"))
                    raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                resource_version = str((obj.get("metadata") or {}).get("resourceVersion") or resource_version)
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    self._stamp(obj)
                    self._deliver(kind, obj)
        except (HTTPError, OSError) as error:
            log.debug("watch of %s: %s", self.rtype.plural, error)  # a read timeout: watch again
        finally:
            # A stream left unread (stopping, an error) must not go back to the pool as if it were idle.
            response.close()
            response.release_conn()
        return resource_version

    def _list_page(self, limit: int, token: str | None) -> tuple[dict[str, Any], int]:
        """One page of the LIST, parsed, and its size in bytes."""
        response = self._raw_call({"watch": False, "limit": limit, "_continue": token, "_preload_content": False})
        try:
            data = response.data
            return json.loads(data), len(data)
        finally:
            response.release_conn()

    def _raw_call(self, params: dict[str, Any]) -> Any:
        rtype = self.rtype
        if self.namespace is None:
            return self._custom.list_cluster_custom_object(rtype.group, rtype.version, rtype.plural, **params)
        return self._custom.list_namespaced_custom_object(rtype.group, rtype.version, self.namespace, rtype.plural,
                                                          **params)

    def _stamp(self, obj: dict[str, Any]) -> None:
        obj.setdefault("apiVersion", self.rtype.api_version)
        obj.setdefault("kind", self.rtype.kind)

    def _deliver(self, event_type: str | None, obj: dict[str, Any]) -> None:
        if event_type == "DELETED":
            self._caches.drop(self.rtype, obj)
        else:
            self._caches.put(self.rtype, obj)
        try:
            self._handle(event_type, obj)
        except Exception:  # a handler's bug must not stop the watch
            log.exception("handling %s of %s %s failed", event_type, self.rtype.kind,
                          (obj.get("metadata") or {}).get("name"))


def next_page_size(objects: int, size: int) -> int:
    """Objects per page for about PAGE_BYTES of JSON, from a page of ``objects`` objects in ``size`` bytes."""
    fitting = int(PAGE_BYTES * objects / max(size, 1))
    return max(MIN_PAGE_SIZE, min(PAGE_SIZE, fitting))


def _lines(response: Any) -> Iterator[bytes]:
    """The newline-separated JSON documents of a watch response, as the chunks arrive."""
    pending = b""
    for chunk in response.stream(amt=None, decode_content=False):
        if not chunk:
            continue
        pending += chunk
        if b"\n" not in chunk:
            continue
        *complete, pending = pending.split(b"\n")
        for line in complete:
            if line.strip():
                yield line
    if pending.strip():
        yield pending


def _backoff(failures: int) -> float:
    low, cap = ERROR_BACKOFF_SECONDS
    return float(min(cap, low * 2 ** (failures - 1)))


def _message(error: ApiException) -> str:
    try:
        return str(json.loads(error.body or "{}").get("message") or error.reason)
    except (ValueError, AttributeError):
        return str(error.reason)


class Informers:
    """All the watches of the operator: started together, synced together, stopped together."""

    def __init__(self, config: kubernetes.client.Configuration, caches: Caches) -> None:
        self._config = config
        self._caches = caches
        self._stopping = threading.Event()
        self._wanted: list[tuple[ResourceType, str | None, Handler]] = []
        self.informers: list[Informer] = []

    def watch(self, rtype: ResourceType, namespaces: list[str], handle: Handler) -> None:
        """Watch the kind in each of ``namespaces`` (none: the whole cluster)."""
        scopes: list[str | None] = list(namespaces) if namespaces else [None]
        for namespace in scopes:
            self._wanted.append((rtype, namespace, handle))

    def start(self) -> None:
        client = api_client(self._config, len(self._wanted))
        self.informers = [Informer(client, self._caches, rtype, namespace, handle, self._stopping)
                          for rtype, namespace, handle in self._wanted]
        for informer in self.informers:
            informer.start()

    def wait_synced(self, timeout: float | None = None) -> bool:
        """Block until every informer has listed once (or found its kind absent)."""
        return all(informer.synced.wait(timeout) for informer in self.informers)

    def stop(self) -> None:
        """The threads end at their next event or timeout (they are daemons: exiting does not wait for them)."""
        self._stopping.set()
