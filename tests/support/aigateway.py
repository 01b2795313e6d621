"""Envoy AI Gateway v1.0.0 now and then leaves a deleted AIServiceBackend terminating for ever; a test unsticks it as
a person would, by giving AI Gateway's controller a reason to look at it again.

Why it sticks: the controller removes its finalizer with one Update from a reconcile and only logs a conflict
("Failed to remove finalizer from object ... has been modified"), without retrying (internal/controller/
controller.go, handleFinalizer). A reconcile runs again only when the object's generation changes: every AI Gateway
controller is built with predicate.GenerationChangedPredicate (controller.go, TypedControllerBuilderForCRD), so a new
annotation does nothing (a nudge that way did not help in CI), and a spec change does. The spec change is made to an
object already being deleted, and its finalizer guards no deletion work of an AIServiceBackend
(ai_service_backend.go passes no onDeletionFn to handleFinalizer).
"""

from __future__ import annotations

import datetime
import time
from typing import Any

from kubernetes.client.exceptions import ApiException

from model_traffic import kube as k
from model_traffic.kube import Kube

AI_GATEWAY_FINALIZER = "aigateway.envoyproxy.io/finalizer"


def held_by_ai_gateway(obj: dict[str, Any] | None) -> bool:
    """Deleted, and held by AI Gateway's finalizer alone (never by anything of ours)."""
    if obj is None:
        return False
    meta = obj["metadata"]
    return bool(meta.get("deletionTimestamp")) and meta.get("finalizers") == [AI_GATEWAY_FINALIZER]


def terminating_for(obj: dict[str, Any]) -> float:
    """Seconds since the object's deletion was asked for."""
    since = datetime.datetime.fromisoformat(obj["metadata"]["deletionTimestamp"].replace("Z", "+00:00"))
    return (datetime.datetime.now(datetime.UTC) - since).total_seconds()


def nudge_ai_service_backend(kube: Kube, namespace: str, name: str) -> None:
    """A spec change (a header the backend removes, unique each time, so the generation moves on every nudge) that
    makes AI Gateway reconcile the AIServiceBackend, and so try its finalizer again. Gone meanwhile is fine."""
    patch = {"spec": {"headerMutation": {"remove": [f"x-model-traffic-test-nudge-{time.monotonic_ns()}"]}}}
    rtype = k.AI_SERVICE_BACKEND
    try:
        kube.custom.patch_namespaced_custom_object(rtype.group, rtype.version, namespace, rtype.plural, name, patch,
                                                   _content_type="application/merge-patch+json")
    except ApiException as error:
        if error.status != 404:
            raise


def nudge_held_ai_service_backends(kube: Kube, namespace: str, held_for: float = 10.0) -> list[str]:
    """Nudge every AIServiceBackend of the namespace held by AI Gateway's finalizer alone for ``held_for`` seconds
    or more; their names."""
    held = [obj for obj in kube.list_objects(k.AI_SERVICE_BACKEND, namespace)
            if held_by_ai_gateway(obj) and terminating_for(obj) >= held_for]
    for obj in held:
        nudge_ai_service_backend(kube, namespace, obj["metadata"]["name"])
    return [obj["metadata"]["name"] for obj in held]
