"""Every watch event of the kinds a rollout touches, in one namespace, as the API server sent them.

One thread per kind runs a real watch (the client's ``Watch``, as a controller would) from an empty
resourceVersion, so the objects already there arrive first as ADDED. Each record keeps the object's
``resourceVersion``: a single etcd revision counter orders writes of every kind (the local stack runs one etcd
for all resources), so the records of different watches can be merged in the order the writes happened, which
receive times alone could not do to the millisecond.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from model_traffic import kube as k
from model_traffic.kube import Kube, ResourceType

EVENT = ResourceType("", "v1", "events", "Event")
RECORDED_TYPES = (k.VIRTUAL_MODEL, k.AI_GATEWAY_ROUTE, k.AI_SERVICE_BACKEND, k.MANAGED_AI_SERVICE_BACKEND,
                  k.INFERENCE_SERVICE, k.TRAFFIC_CONFIG, EVENT)


@dataclass(frozen=True)
class Record:
    revision: int  # the object's resourceVersion: the etcd revision of this write (or of the deletion)
    received: float  # time.time() when the watch delivered it
    kind: str
    type: str  # ADDED, MODIFIED, DELETED
    obj: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])


class WatchRecorder:
    """Records until stopped; ``records()`` is the merged history, ordered by revision."""

    def __init__(self, kube: Kube, namespace: str, types: tuple[ResourceType, ...] = RECORDED_TYPES) -> None:
        self.kube = kube
        self.namespace = namespace
        self.types = types
        self._records: list[Record] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watches: list[kubernetes.watch.Watch] = []
        self._threads: list[threading.Thread] = []
        self.errors: list[str] = []

    def __enter__(self) -> WatchRecorder:
        started = []
        for rtype in self.types:
            ready = threading.Event()
            thread = threading.Thread(target=self._watch, args=(rtype, ready), name=f"record-{rtype.plural}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
            started.append(ready)
        for ready in started:
            ready.wait(30)
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for watch in list(self._watches):
            watch.stop()  # type: ignore[no-untyped-call]
        for thread in self._threads:
            thread.join(timeout=10)

    def records(self) -> list[Record]:
        with self._lock:
            return sorted(self._records, key=lambda r: (r.revision, r.received))

    def _list_call(self, rtype: ResourceType) -> Any:
        if rtype == EVENT:
            return self.kube.core.list_namespaced_event, (self.namespace,)
        return self.kube.custom.list_namespaced_custom_object, (rtype.group, rtype.version, self.namespace,
                                                                 rtype.plural)

    def _watch(self, rtype: ResourceType, ready: threading.Event) -> None:
        call, args = self._list_call(rtype)
        resource_version = ""
        while not self._stop.is_set():
            watch = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
            self._watches.append(watch)
            try:
                ready.set()
                for event in watch.stream(  # type: ignore[no-untyped-call]
                        call, *args, resource_version=resource_version, timeout_seconds=300,
                        allow_watch_bookmarks=False):
                    obj = event.get("raw_object") or {}
                    if event["type"] == "ERROR":
                        raise ApiException(status=int(obj.get("code") or 0), reason=str(obj.get("message")))
                    meta = obj.get("metadata") or {}
                    resource_version = str(meta.get("resourceVersion") or resource_version)
                    with self._lock:
                        self._records.append(Record(int(meta.get("resourceVersion") or 0), time.time(),
                                                    rtype.kind, str(event["type"]), obj))
                    if self._stop.is_set():
                        break
            except ApiException as error:
                if error.status == 410:
                    # The history was compacted: a gap in the records the invariants would misread.
                    self.errors.append(f"watch of {rtype.plural} expired (410) at resourceVersion {resource_version}")
                    return
                if not self._stop.is_set():
                    time.sleep(0.2)
            except Exception:  # the connection dropped: resume from the last revision seen (nothing is lost)
                if not self._stop.is_set():
                    time.sleep(0.2)
            finally:
                self._watches.remove(watch)
