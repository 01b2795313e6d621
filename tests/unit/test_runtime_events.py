"""Readiness Events: which changes of Ready get one, and what a waiting Event holds of its object."""

from __future__ import annotations

from typing import Any

from model_traffic import kube
from model_traffic.pipeline.acceptance import AWAITING_CONTROLLERS
from model_traffic.pipeline.conditions import Verdict, find
from model_traffic.pipeline.runtime import EventPoster, Result, Runtime, involved_object
from tests.support.statuskube import StatusKube


def test_an_event_waiting_to_be_posted_holds_only_what_it_names_of_its_object() -> None:
    body: dict[str, Any] = {"apiVersion": "modeltraffic.io/v1alpha1", "kind": "VirtualModel",
                            "metadata": {"name": "m", "namespace": "llm", "uid": "u", "resourceVersion": "7",
                                         "labels": {"a": "b"}, "annotations": {"x": "y" * 1000}},
                            "spec": {"backends": [{"name": "b"}] * 100}, "status": {"conditions": []}}
    assert involved_object(body) == {"apiVersion": "modeltraffic.io/v1alpha1", "kind": "VirtualModel",
                                     "metadata": {"name": "m", "namespace": "llm", "uid": "u", "resourceVersion": "7"}}

    poster = EventPoster(kube=None)  # type: ignore[arg-type]  # never started, never emits here
    poster._threads = [object()]  # type: ignore[list-item]  # as if started: the Event waits in the backlog
    poster.post(body, "Normal", "Ready", "ready")
    waiting = poster._backlog.get_nowait()
    assert waiting == (involved_object(body), "Normal", "Ready", "ready")


def test_waits_on_the_way_to_ready_post_no_event_but_ready_its_loss_and_a_refusal_do() -> None:
    fake = StatusKube({
        "apiVersion": "modeltraffic.io/v1alpha1", "kind": "VirtualModel",
        "metadata": {"namespace": "llm", "name": "m", "uid": "u", "generation": 1, "resourceVersion": "1"},
        "spec": {}, "status": {}})
    runtime = Runtime(fake)  # type: ignore[arg-type]
    verdicts = iter([
        Verdict("Progressing", AWAITING_CONTROLLERS, "waiting for AI Gateway to report on AIGatewayRoute/m"),
        Verdict("Ready", "Routed", "routed to 1 backends"),
        Verdict("Progressing", AWAITING_CONTROLLERS, "waiting for Envoy Gateway to report on HTTPRoute/m"),
        Verdict("Stalled", "ChildRefused", "refused: HTTPRoute/m: NotAccepted: gateway not found"),
        Verdict("Progressing", AWAITING_CONTROLLERS, "waiting for Envoy Gateway to report on HTTPRoute/m"),
        Verdict("Progressing", "BackendsNotReady", "backend b is not Ready"),
        Verdict("Ready", "Routed", "routed to 1 backends"),
        Verdict("Progressing", "BackendsNotReady", "backend b is not Ready"),
        Verdict("Stalled", "BackendsNotFound", "backend b does not exist"),
    ])
    runtime.register(kube.VIRTUAL_MODEL, lambda kube_, body: Result(next(verdicts)))
    for _ in range(9):
        runtime.reconcile("VirtualModel", "llm", "m")
    # The wait for the backend on the way to Ready is not announced; the same wait after Ready is (Ready was lost).
    assert fake.events == [("Normal", "Routed"), ("Warning", "ChildRefused"), ("Normal", "Routed"),
                           ("Warning", "BackendsNotReady"), ("Warning", "BackendsNotFound")]
    assert condition_reason(fake.obj) == "BackendsNotFound"


def condition_reason(body: dict[str, Any]) -> str:
    ready = find(body["status"]["conditions"], "Ready")
    assert ready is not None
    return str(ready["reason"])
