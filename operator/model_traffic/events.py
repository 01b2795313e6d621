"""Kubernetes Events on our objects (core/v1, so `kubectl describe` shows them)."""

from __future__ import annotations

import datetime
import logging
from typing import Any

import kubernetes

from model_traffic.kube import Kube

COMPONENT = "model-traffic-operator"
log = logging.getLogger(__name__)


def emit(kube: Kube, body: dict[str, Any], event_type: str, reason: str, message: str) -> None:
    meta = body["metadata"]
    stamp = datetime.datetime.now(datetime.UTC)
    event = kubernetes.client.CoreV1Event(
        metadata=kubernetes.client.V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=meta["namespace"]),
        involved_object=kubernetes.client.V1ObjectReference(
            api_version=body["apiVersion"], kind=body["kind"], name=meta["name"],
            namespace=meta["namespace"], uid=meta["uid"], resource_version=meta.get("resourceVersion"),
        ),
        type=event_type, reason=reason, message=message[:1024],
        source=kubernetes.client.V1EventSource(component=COMPONENT),
        reporting_component=COMPONENT, reporting_instance=COMPONENT,
        first_timestamp=stamp, last_timestamp=stamp, count=1,
    )
    try:
        kube.core.create_namespaced_event(meta["namespace"], event)
    except kubernetes.client.exceptions.ApiException as error:
        # An event is a courtesy: failing to post one must not fail the reconcile.
        log.warning("could not post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], error.reason)
