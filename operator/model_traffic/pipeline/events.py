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


def post(kube: Kube, body: dict[str, Any], pending: dict[str, Any]) -> None:
    """Post an Event recorded in a status outbox (a TrafficConfig's ``pendingEvents``) under its deterministic
    name, with ``eventTime`` (microseconds: steps under a second apart stay ordered) and, from its second
    occurrence, a ``series``. Posting it again finds it posted (409) and only brings its count up to date, so
    a crash between the post and the outbox being cleared never doubles it."""
    meta = body["metadata"]
    stamp = datetime.datetime.fromisoformat(str(pending["time"]).replace("Z", "+00:00"))
    # A MicroTime must carry exactly six fractional digits (metav1.RFC3339Micro): the client's models format a
    # datetime with isoformat, which drops them when they are zero (a 400), so the Event is sent as plain JSON.
    micro, seconds = _micro_time(stamp), _time(stamp)
    count = int(pending.get("count") or 1)
    event: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": pending["name"], "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": body["apiVersion"], "kind": body["kind"], "name": meta["name"],
                           "namespace": meta["namespace"], "uid": meta["uid"],
                           "resourceVersion": meta.get("resourceVersion")},
        "type": pending["type"], "reason": pending["reason"], "message": str(pending["message"])[:1024],
        "action": pending["reason"], "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT, "reportingInstance": COMPONENT,
        "eventTime": micro, "firstTimestamp": seconds, "lastTimestamp": seconds, "count": count,
    }
    if count > 1:
        event["series"] = {"count": count, "lastObservedTime": micro}
    try:
        _create(kube, meta["namespace"], event)
    except kubernetes.client.exceptions.ApiException as error:
        if error.status == 409:
            if count > 1:  # the same series again: its count and last time, as posted (absolute, so idempotent)
                _update_series(kube, meta["namespace"], pending["name"], count, stamp, str(pending["message"]))
            return
        log.warning("could not post event %s on %s/%s: %s %s", pending["reason"], meta["namespace"], meta["name"],
                    error.reason, str(error.body or "")[:500])


def _create(kube: Kube, namespace: str, event: dict[str, Any]) -> None:
    """POST the Event as this JSON: ``create_namespaced_event`` validates its argument into a CoreV1Event (the
    client's pydantic models), turning the MicroTime text back into a datetime that it then formats wrongly."""
    api = kube.api_client
    method, url, headers, body, post = api.param_serialize(
        method="POST", resource_path="/api/v1/namespaces/{namespace}/events", path_params={"namespace": namespace},
        header_params={"Content-Type": "application/json", "Accept": "application/json"}, body=event,
        auth_settings=["BearerToken"])
    response = api.call_api(method, url, header_params=headers, body=body, post_params=post)
    data: bytes = response.read()  # type: ignore[no-untyped-call]
    if not 200 <= response.status <= 299:
        raise kubernetes.client.exceptions.ApiException.from_response(
            http_resp=response, body=data.decode(errors="replace"), data=None)


def _update_series(kube: Kube, namespace: str, name: str, count: int, stamp: datetime.datetime,
                   message: str) -> None:
    micro, seconds = _micro_time(stamp), _time(stamp)
    patch = {"count": count, "message": message[:1024], "lastTimestamp": seconds,
             "series": {"count": count, "lastObservedTime": micro}}
    try:
        kube.core.patch_namespaced_event(name, namespace, patch, _content_type="application/merge-patch+json")
    except kubernetes.client.exceptions.ApiException as error:
        log.warning("could not update event %s/%s: %s", namespace, name, error.reason)


def _micro_time(stamp: datetime.datetime) -> str:
    return stamp.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _time(stamp: datetime.datetime) -> str:
    return stamp.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
