"""Running reconciles: every trigger enqueues a key, a pool of workers reconciles, status written only when
it changed.

Every trigger (the object's own watch events, events of the objects it references or of its children, the
periodic resync, a rollout's next check) ends in :meth:`Runtime.enqueue`, which returns at once: the key
(kind, namespace, name) goes into one deduplicating :class:`~model_traffic.pipeline.workqueue.WorkQueue`, so a burst
of triggers is one reconcile and an object is never reconciled twice at once. A worker reads the object
(from the watch cache when one is wired in, see :mod:`model_traffic.pipeline.cache`), so whichever run comes last
sees the latest world. Reconcilers are plain functions ``(kube, body) -> Result``. Conflicts and server
errors are not retried in place: the key goes back into the queue with a delay (:func:`retry_delay`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from model_traffic import metrics
from model_traffic.kube import Kube, ResourceType
from model_traffic.pipeline import conditions, events
from model_traffic.pipeline.acceptance import AWAITING_CONTROLLERS
from model_traffic.pipeline.conditions import Detail, Verdict
from model_traffic.pipeline.workqueue import WorkQueue

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class Finalizer:
    """A kind's last step before its object goes. ``name`` is the finalizer the kind's reconciler puts on the
    objects that need it; for such an object being deleted, the pipeline calls ``step`` instead of the
    reconciler (decided from the cluster each time, like a reconcile) until ``step`` removes ``name`` and
    returns None: nothing to report on an object about to go. An object being deleted without it is left alone."""

    name: str
    step: Callable[[Kube, dict[str, Any]], Result | None]


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


ObjectKey = tuple[str, str, str]  # (kind, namespace, name)

# Conflicts (our view was stale) and transient server errors: tried again soon, this many times, before the
# slow error backoff takes over.
FAST_RETRIES = 4
FAST_RETRY_SECONDS = 0.2
# Workers reconciling at once. Reconciles mostly wait on the API server (reads come from the caches), so a
# worker mostly holds no GIL: 16 keep a busy API server's queue full where 8 left it idle between round trips.
DEFAULT_WORKERS = 16
# How long SIGTERM waits for the reconciles in progress before the process exits anyway.
SHUTDOWN_GRACE_SECONDS = 10.0


def retry_delay(failures: int, error: BaseException) -> float:
    """Seconds before a failed reconcile is tried again, after ``failures`` consecutive failures.

    A conflict or a transient server error is tried again soon (0.4 s doubling, FAST_RETRIES times): the run
    reads the object again, which is all a conflict needs. Anything else, or a transient error that persists:
    ERROR_BACKOFF_SECONDS doubling up to ERROR_BACKOFF_CAP_SECONDS.
    """
    transient = isinstance(error, ApiException) and error.status in RETRIED_STATUSES
    if transient and failures <= FAST_RETRIES:
        return float(FAST_RETRY_SECONDS * 2 ** failures)
    slow_failures = failures - FAST_RETRIES if transient else failures
    return float(min(ERROR_BACKOFF_CAP_SECONDS, ERROR_BACKOFF_SECONDS * 2 ** (slow_failures - 1)))


# Not-ready reasons that never get an Event, not even when Ready is lost to them: a controller has not yet reported
# on what was just written. Every object passes through it after each change (for seconds, or minutes while Envoy
# Gateway works through thousands of routes), so it was a Warning Event per object and per change, with nothing
# for a person to do. The condition says it; a refusal that follows (ChildRefused) gets its Event.
UNANNOUNCED_REASONS = frozenset({AWAITING_CONTROLLERS})

# Readiness Events waiting to be posted; beyond this many, new ones are dropped (and logged): an Event is a courtesy.
EVENT_BACKLOG = 10_000
# Threads posting them: enough that the backlog stays short while thousands of objects converge on a slow API
# server (an Event is stamped when it is posted).
EVENT_POSTERS = 4


class EventPoster:
    """Posts the readiness Events of status changes on a thread of its own, so a reconcile worker does not wait a
    round trip for each (a quarter of the operator's requests while objects converge). Until :meth:`start`
    (a test that calls :meth:`Runtime.reconcile` directly), Events are posted at once, on the caller's thread.

    Losing the backlog in a crash loses at most those Events, as a crash between a status write and an Event
    posted inline would: the status, which is what anything decides on, is written before.
    """

    def __init__(self, kube: Kube) -> None:
        self._kube = kube
        self._backlog: queue.Queue[tuple[dict[str, Any], str, str, str] | None] = queue.Queue(EVENT_BACKLOG)
        self._threads: list[threading.Thread] = []

    def post(self, body: dict[str, Any], event_type: str, reason: str, message: str) -> None:
        # Only what an Event names of its object waits in the backlog, not the whole object: thousands of them
        # wait while many objects converge at once.
        event = (involved_object(body), event_type, reason, message)
        if not self._threads:
            self._emit(event)
            return
        try:
            self._backlog.put_nowait(event)
        except queue.Full:
            log.warning("dropped Event %s on %s/%s: %d Events waiting", reason, body["metadata"]["namespace"],
                        body["metadata"]["name"], EVENT_BACKLOG)

    def start(self) -> None:
        if not self._threads:
            self._threads = [threading.Thread(target=self._run, name=f"events-{i}", daemon=True)
                             for i in range(EVENT_POSTERS)]
            for thread in self._threads:
                thread.start()

    def stop(self, timeout: float) -> bool:
        """Post what is waiting, for up to ``timeout`` seconds. True when all were posted."""
        deadline = time.monotonic() + timeout
        for _ in self._threads:
            with contextlib.suppress(queue.Full):
                self._backlog.put_nowait(None)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def _run(self) -> None:
        while (event := self._backlog.get()) is not None:
            try:
                self._emit(event)
            except Exception:  # emit logs API errors itself; anything else must not end the thread
                log.exception("posting an Event failed")

    def _emit(self, event: tuple[dict[str, Any], str, str, str]) -> None:
        events.emit(self._kube, *event)


def involved_object(body: dict[str, Any]) -> dict[str, Any]:
    """What :func:`events.emit` reads of an object."""
    meta = body["metadata"]
    return {"apiVersion": body["apiVersion"], "kind": body["kind"],
            "metadata": {key: meta[key] for key in ("name", "namespace", "uid", "resourceVersion") if key in meta}}


class Runtime:
    """The reconcilers by kind, the work queue that runs them, and the status write they share."""

    def __init__(self, kube: Kube, workers: int = DEFAULT_WORKERS) -> None:
        self.kube = kube
        self._reconcilers: dict[str, tuple[ResourceType, Reconciler]] = {}
        self._finalizers: dict[str, Finalizer] = {}
        self.queue: WorkQueue[ObjectKey] = WorkQueue(self._run, self._after_failure, workers=workers)
        self.events = EventPoster(kube)

    def register(self, rtype: ResourceType, reconciler: Reconciler, finalizer: Finalizer | None = None) -> None:
        self._reconcilers[rtype.kind] = (rtype, reconciler)
        if finalizer is not None:
            self._finalizers[rtype.kind] = finalizer

    @property
    def kinds(self) -> dict[str, ResourceType]:
        return {kind: rtype for kind, (rtype, _) in self._reconcilers.items()}

    def start(self) -> None:
        self.events.start()
        self.queue.start()

    def shutdown(self, grace: float = SHUTDOWN_GRACE_SECONDS) -> bool:
        """Take no more work; let the reconciles in progress finish and their Events be posted, all within
        ``grace`` seconds."""
        deadline = time.monotonic() + grace
        drained = self.queue.shutdown(grace)
        return self.events.stop(deadline - time.monotonic()) and drained

    def enqueue(self, kind: str, namespace: str, name: str, delay: float = 0.0, urgent: bool = False) -> None:
        """Reconcile the object soon (or in ``delay`` seconds). ``urgent``: its own spec changed (or it is new),
        so before the objects queued for their children's or references' sake. Returns at once; safe from any
        thread."""
        if kind not in self._reconcilers:
            return
        if urgent:
            self.queue.add((kind, namespace, name), urgent=True)
        else:
            self.queue.add_after((kind, namespace, name), delay)

    def forget(self, kind: str, namespace: str, name: str) -> None:
        self.queue.forget((kind, namespace, name))
        metrics.OBJECT_STATES.remove(kind, namespace, name)

    def _run(self, key: ObjectKey) -> float | None:
        return self.reconcile(*key)

    def _after_failure(self, failures: int, error: BaseException) -> float:
        delay = retry_delay(failures, error)
        if isinstance(error, ApiException) and error.status in RETRIED_STATUSES and failures <= FAST_RETRIES:
            log.info("reconcile got HTTP %s; trying again in %.1f s", error.status, delay)
        return delay

    def reconcile(self, kind: str, namespace: str, name: str) -> float | None:
        """Reconcile one object now, on the calling thread; the seconds after which to look again, if any.

        The queue calls this (never two at once for one object); tests call it directly. Errors propagate
        (after being counted and logged) for the queue to retry with a backoff.
        """
        rtype, reconciler = self._reconcilers[kind]
        body = self.kube.get(rtype, namespace, name)
        if body is None:
            return None
        step: Callable[[Kube, dict[str, Any]], Result | None] = reconciler
        if body["metadata"].get("deletionTimestamp"):
            finalizer = self._finalizers.get(kind)
            if finalizer is None or finalizer.name not in (body["metadata"].get("finalizers") or []):
                return None  # nothing of ours holds it: it goes
            step = finalizer.step
        started = time.monotonic()
        try:
            outcome, requeue_after = self._reconcile_once(rtype, step, body)
            metrics.RECONCILES.labels(kind, outcome).inc()
            return requeue_after
        except Exception as error:
            if isinstance(error, ApiException):
                if error.status in RETRIED_STATUSES:
                    log.info("reconcile of %s %s/%s: HTTP %s %s", kind, namespace, name, error.status, error.reason)
                else:
                    log.warning("reconcile of %s %s/%s failed: %s %s: %s", kind, namespace, name, error.status,
                                error.reason, api_message(error))
                metrics.RECONCILE_ERRORS.labels(kind, f"http{error.status}").inc()
            else:
                metrics.RECONCILE_ERRORS.labels(kind, type(error).__name__).inc()
                log.exception("reconcile of %s %s/%s failed", kind, namespace, name)
            raise
        finally:
            metrics.RECONCILE_SECONDS.labels(kind).observe(time.monotonic() - started)

    def _reconcile_once(self, rtype: ResourceType, reconciler: Callable[[Kube, dict[str, Any]], Result | None],
                        body: dict[str, Any]) -> tuple[str, float | None]:
        meta = body["metadata"]
        try:
            try:
                result = reconciler(self.kube, body)
                if result is None:
                    return "finalized", None  # a finalize step released the object: no status to write
            except ApiException as error:
                if not is_refused_write(error):
                    raise
                # Reconcilers report refused children themselves; this catches any other refused write, so an
                # object is never left without status while the same write fails again and again.
                log.warning("%s %s/%s: %s", rtype.kind, meta["namespace"], meta["name"], api_message(error))
                result = rejected_write(error, body.get("status") or {})
            return self._write_status(rtype, body, result), result.requeue_after
        except ApiException as error:
            if error.status == 404 and self.kube.get(rtype, meta["namespace"], meta["name"]) is None:
                return "gone", None  # deleted while we worked on it (e.g. a retired child): nothing to report
            raise

    def _write_status(self, rtype: ResourceType, body: dict[str, Any], result: Result) -> str:
        meta = body["metadata"]
        old_status: dict[str, Any] = body.get("status") or {}
        old_conditions = old_status.get("conditions") or []
        new_conditions = conditions.build(old_conditions, result.verdict, result.details, meta["generation"])
        new_status = {**result.status, "observedGeneration": meta["generation"], "conditions": new_conditions}
        metrics.OBJECT_STATES.set(rtype.kind, meta["namespace"], meta["name"], result.verdict.state)
        patch = conditions.status_patch(old_status, new_status)
        if patch is None:
            return "unchanged"
        # Guarded by the resourceVersion the status was computed from: when the object changed since (a spec
        # edit, or the body came from a cache a step behind), the write fails with a conflict and the queue
        # runs the reconcile again soon on the newer object, instead of writing a status for an old one.
        self.kube.patch_status(rtype, meta["namespace"], meta["name"], patch,
                               resource_version=meta.get("resourceVersion"))
        if not result.announced:
            self._announce(body, old_conditions, new_conditions, result.verdict.state)
        return "updated"

    def _announce(self, body: dict[str, Any], old: list[dict[str, Any]], new: list[dict[str, Any]],
                  state: conditions.State) -> None:
        event = readiness_event(old, new, state)
        if event is None:
            return
        event_type, reason, message = event
        self.events.post(body, event_type, reason, message)
        log.info("%s %s/%s: Ready %s %s: %s", body["kind"], body["metadata"]["namespace"],
                 body["metadata"]["name"], "True" if event_type == "Normal" else "False", reason, message)


def readiness_event(old: list[dict[str, Any]], new: list[dict[str, Any]],
                    state: conditions.State) -> tuple[str, str, str] | None:
    """The Event (type, reason, message) a status change gets: one when Ready becomes True, when it is lost, and
    for each new reason of being Stalled.

    A wait on the way to Ready (Progressing after anything but Ready: a new object waiting for its backends, a
    backend for its InferenceService) gets none: it ends by itself, and at 2,000 objects of each kind those
    Warnings were one in six of the operator's requests while it converged. A wait on the controllers' reports
    (:data:`UNANNOUNCED_REASONS`) never gets one.
    """
    before = conditions.find(old, "Ready")
    after = conditions.find(new, "Ready")
    if after is None:
        return None
    if after["status"] != "True" and after["reason"] in UNANNOUNCED_REASONS:
        return None
    if before and (before.get("status"), before.get("reason")) == (after["status"], after["reason"]):
        return None
    was_ready = before is not None and before.get("status") == "True"
    if state == "Progressing" and not was_ready:
        return None
    return ("Normal" if after["status"] == "True" else "Warning"), after["reason"], after["message"]


def api_message(error: ApiException) -> str:
    """The API server's own explanation (e.g. which permission is missing), from the error's Status body."""
    try:
        return str(json.loads(error.body or "{}").get("message", ""))[:500]
    except (ValueError, AttributeError):
        return ""
