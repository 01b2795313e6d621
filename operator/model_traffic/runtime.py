"""Running reconciles: one at a time per object, status written only when it changed.

Every trigger (the object's own watch events, events of the objects it references, the periodic resync)
ends in :meth:`Runtime.reconcile`, which reads the object fresh, so whichever trigger runs last sees the
latest world. Reconcilers are plain functions ``(kube, body) -> Result``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
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


@dataclass
class Result:
    """What a reconcile concluded: the status fields of the kind plus the verdict and details."""

    verdict: Verdict
    details: list[Detail] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)


Reconciler = Callable[[Kube, dict[str, Any]], Result]


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
        with contextlib.suppress(KeyError):
            metrics.READY.remove(kind, namespace, name)

    def reconcile(self, kind: str, namespace: str, name: str) -> None:
        """Reconcile one object now. Safe from any thread; serialised per object."""
        rtype, reconciler = self._reconcilers[kind]
        with self._lock((kind, namespace, name)):
            body = self.kube.get(rtype, namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return
            started = time.monotonic()
            try:
                outcome = self._reconcile_with_retries(rtype, reconciler, body)
                metrics.RECONCILES.labels(kind, outcome).inc()
            except ApiException as error:
                metrics.RECONCILE_ERRORS.labels(kind, f"http{error.status}").inc()
                log.warning("reconcile of %s %s/%s failed: %s %s", kind, namespace, name, error.status,
                            error.reason)
                raise
            except Exception as error:
                metrics.RECONCILE_ERRORS.labels(kind, type(error).__name__).inc()
                log.exception("reconcile of %s %s/%s failed", kind, namespace, name)
                raise
            finally:
                metrics.RECONCILE_SECONDS.labels(kind).observe(time.monotonic() - started)

    def _reconcile_with_retries(self, rtype: ResourceType, reconciler: Reconciler, body: dict[str, Any]) -> str:
        """Conflicts and transient server errors are retried at once, reading the object again."""
        for attempt in range(1, RETRY_ATTEMPTS + 1):
            try:
                return self._write_status(rtype, body, reconciler(self.kube, body))
            except ApiException as error:
                if error.status not in RETRIED_STATUSES or attempt == RETRY_ATTEMPTS:
                    raise
                log.info("retrying %s %s after HTTP %s", rtype.kind, body["metadata"]["name"], error.status)
                time.sleep(0.2 * 2**attempt)
                meta = body["metadata"]
                fresh = self.kube.get(rtype, meta["namespace"], meta["name"])
                if fresh is None:
                    return "gone"
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

