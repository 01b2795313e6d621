"""Running reconciles: one at a time per object, status written only when it changed.

Every trigger (the object's own watch events, events of the objects it references, the periodic resync)
ends in :meth:`Runtime.reconcile`, which reads the object fresh, so whichever trigger runs last sees the
latest world. Reconcilers are plain functions ``(kube, body) -> Result``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from model_traffic import conditions, events, metrics
from model_traffic.conditions import Detail, Verdict
from model_traffic.kube import Kube, ResourceType

log = logging.getLogger(__name__)

RETRY_ATTEMPTS = 4
RETRIED_STATUSES = frozenset({409, 429, 500, 502, 503, 504})
# The API server (its schema, CEL rules or an admission webhook) refused a write: retrying the same write cannot help.
REFUSED_STATUSES = frozenset({400, 422})
# A server-side apply naming a field the schema does not declare is answered with HTTP 500 and this message
# (k8s.io/apiserver's fieldmanager), not 422: it is a refusal all the same, and retrying it loops forever.
UNDECLARED_FIELD_MESSAGE = "failed to create typed patch object"


def is_refused_write(error: ApiException) -> bool:
    """Whether the API server refused a write for what it contains (no retry makes it pass)."""
    return error.status in REFUSED_STATUSES or (error.status == 500 and UNDECLARED_FIELD_MESSAGE in api_message(error))
# After a reconcile that raised, try again after this many seconds, doubling per failure up to the cap.
ERROR_BACKOFF_SECONDS = 5.0
ERROR_BACKOFF_CAP_SECONDS = 300.0


@dataclass
class Result:
    """What a reconcile concluded: the status fields of the kind plus the verdict and details."""

    verdict: Verdict
    details: list[Detail] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    requeue_after: float | None = None  # seconds: reconcile again then (a rollout's next check)
    announced: bool = False  # the reconciler posted its own Events for this change: no readiness Event


Reconciler = Callable[[Kube, dict[str, Any]], Result]


def kept_status(old_status: dict[str, Any]) -> dict[str, Any]:
    """The kind's status fields as they were, for a reconcile that stops before recomputing them (a rollout's
    progress is not lost); conditions and observedGeneration are written anew from the Result."""
    return {k: v for k, v in old_status.items() if k not in ("conditions", "observedGeneration")}


def rejected_write(error: ApiException, old_status: dict[str, Any]) -> Result:
    """A write the API server refused, anywhere in a reconcile: Stalled with the server's message."""
    return Result(Verdict("Stalled", "ChildRejected", f"the API server refused a write: {api_message(error)}"),
                  status=kept_status(old_status))


def invalid_spec(error: ValidationError) -> Result:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return Result(Verdict("Stalled", "InvalidSpec", f"spec.{where}: {first.get('msg')}"))


class Runtime:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._locks: dict[tuple[str, str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._reconcilers: dict[str, tuple[ResourceType, Reconciler]] = {}
        self._failures: dict[tuple[str, str, str], int] = {}  # consecutive failures, for the error backoff
        self.scheduler = Scheduler(self.reconcile)

    def register(self, rtype: ResourceType, reconciler: Reconciler) -> None:
        self._reconcilers[rtype.kind] = (rtype, reconciler)

    @property
    def kinds(self) -> dict[str, ResourceType]:
        return {kind: rtype for kind, (rtype, _) in self._reconcilers.items()}

    def _lock(self, key: tuple[str, str, str]) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    def forget(self, kind: str, namespace: str, name: str) -> None:
        with self._locks_guard:
            self._locks.pop((kind, namespace, name), None)
            self._failures.pop((kind, namespace, name), None)
        self.scheduler.cancel((kind, namespace, name))
        with contextlib.suppress(KeyError):
            metrics.READY.remove(kind, namespace, name)

    def reconcile(self, kind: str, namespace: str, name: str) -> None:
        """Reconcile one object now. Safe from any thread; serialised per object."""
        rtype, reconciler = self._reconcilers[kind]
        key = (kind, namespace, name)
        with self._lock(key):
            body = self.kube.get(rtype, namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return
            started = time.monotonic()
            try:
                outcome, requeue_after = self._reconcile_with_retries(rtype, reconciler, body)
                metrics.RECONCILES.labels(kind, outcome).inc()
                self._failures.pop(key, None)
                if requeue_after is not None:
                    self.scheduler.schedule(key, requeue_after)
            except Exception as error:
                failures = self._failures[key] = self._failures.get(key, 0) + 1
                self.scheduler.schedule(key, min(ERROR_BACKOFF_CAP_SECONDS,
                                                 ERROR_BACKOFF_SECONDS * 2 ** (failures - 1)))
                if isinstance(error, ApiException):
                    metrics.RECONCILE_ERRORS.labels(kind, f"http{error.status}").inc()
                    log.warning("reconcile of %s %s/%s failed: %s %s: %s", kind, namespace, name, error.status,
                                error.reason, api_message(error))
                else:
                    metrics.RECONCILE_ERRORS.labels(kind, type(error).__name__).inc()
                    log.exception("reconcile of %s %s/%s failed", kind, namespace, name)
                raise
            finally:
                metrics.RECONCILE_SECONDS.labels(kind).observe(time.monotonic() - started)

    def _reconcile_with_retries(self, rtype: ResourceType, reconciler: Reconciler,
                                body: dict[str, Any]) -> tuple[str, float | None]:
        """Conflicts and transient server errors are retried at once, reading the object again."""
        for attempt in range(1, RETRY_ATTEMPTS + 1):
            try:
                try:
                    result = reconciler(self.kube, body)
                except ApiException as error:
                    if not is_refused_write(error):
                        raise
                    # Reconcilers report refused children themselves; this catches any other refused write, so an
                    # object is never left without status while the same write fails again and again.
                    log.warning("%s %s/%s: %s", rtype.kind, body["metadata"]["namespace"], body["metadata"]["name"],
                                api_message(error))
                    result = rejected_write(error, body.get("status") or {})
                return self._write_status(rtype, body, result), result.requeue_after
            except ApiException as error:
                if error.status == 404 and self.kube.get(rtype, body["metadata"]["namespace"],
                                                         body["metadata"]["name"]) is None:
                    return "gone", None  # deleted while we worked on it (e.g. a retired child): nothing to report
                if error.status not in RETRIED_STATUSES or attempt == RETRY_ATTEMPTS:
                    raise
                log.info("retrying %s %s after HTTP %s", rtype.kind, body["metadata"]["name"], error.status)
                time.sleep(0.2 * 2**attempt)
                meta = body["metadata"]
                fresh = self.kube.get(rtype, meta["namespace"], meta["name"])
                if fresh is None:
                    return "gone", None
                body = fresh
        raise AssertionError("unreachable")

    def _write_status(self, rtype: ResourceType, body: dict[str, Any], result: Result) -> str:
        meta = body["metadata"]
        old_status: dict[str, Any] = body.get("status") or {}
        old_conditions = old_status.get("conditions") or []
        new_conditions = conditions.build(old_conditions, result.verdict, result.details, meta["generation"])
        new_status = {**result.status, "observedGeneration": meta["generation"], "conditions": new_conditions}
        metrics.READY.labels(rtype.kind, meta["namespace"], meta["name"]).set(
            1 if result.verdict.state == "Ready" else 0
        )
        patch = conditions.status_patch(old_status, new_status)
        if patch is None:
            return "unchanged"
        self.kube.patch_status(rtype, meta["namespace"], meta["name"], patch)
        if not result.announced:
            self._announce(body, old_conditions, new_conditions)
        return "updated"

    def _announce(self, body: dict[str, Any], old: list[dict[str, Any]], new: list[dict[str, Any]]) -> None:
        """An Event for each change of readiness (and each new reason of not being ready)."""
        before = conditions.find(old, "Ready")
        after = conditions.find(new, "Ready")
        if after is None:
            return
        if before and (before.get("status"), before.get("reason")) == (after["status"], after["reason"]):
            return
        event_type = "Normal" if after["status"] == "True" else "Warning"
        events.emit(self.kube, body, event_type, after["reason"], after["message"])
        log.info("%s %s/%s: Ready=%s %s: %s", body["kind"], body["metadata"]["namespace"],
                 body["metadata"]["name"], after["status"], after["reason"], after["message"])



def api_message(error: ApiException) -> str:
    """The API server's own explanation (e.g. which permission is missing), from the error's Status body."""
    try:
        return str(json.loads(error.body or "{}").get("message", ""))[:500]
    except (ValueError, AttributeError):
        return ""


class Scheduler:
    """Delayed reconciles (a rollout's next check, a retry after an error): one pending entry per object, the
    earliest wins. Timing only: what to do is always decided by the reconcile from the object's status, so
    losing this queue in a restart loses nothing (the initial listing reconciles everything)."""

    def __init__(self, reconcile: Callable[[str, str, str], None], workers: int = 4) -> None:
        self._reconcile = reconcile
        self._due: dict[tuple[str, str, str], float] = {}
        self._wake = threading.Condition()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scheduled")
        self._thread: threading.Thread | None = None

    def schedule(self, key: tuple[str, str, str], delay: float) -> None:
        due = time.monotonic() + max(0.0, delay)
        with self._wake:
            if key in self._due and self._due[key] <= due:
                return
            self._due[key] = due
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
                self._thread.start()
            self._wake.notify()

    def cancel(self, key: tuple[str, str, str]) -> None:
        with self._wake:
            self._due.pop(key, None)

    def pending(self) -> dict[tuple[str, str, str], float]:
        """Seconds until each pending reconcile."""
        now = time.monotonic()
        with self._wake:
            return {key: max(0.0, due - now) for key, due in self._due.items()}

    def _loop(self) -> None:
        while True:
            with self._wake:
                now = time.monotonic()
                ready = [key for key, due in self._due.items() if due <= now]
                for key in ready:
                    del self._due[key]
                if not ready:
                    nearest = min(self._due.values(), default=now + 60.0)
                    self._wake.wait(timeout=max(0.01, nearest - now))
                    continue
            for key in ready:
                self._pool.submit(self._run, key)

    def _run(self, key: tuple[str, str, str]) -> None:
        with contextlib.suppress(Exception):  # logged, counted and rescheduled by the runtime
            self._reconcile(*key)
