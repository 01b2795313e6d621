"""Readiness Events wait for their poster threads holding only what an Event names of its object."""

from __future__ import annotations

from typing import Any

from model_traffic.pipeline.runtime import EventPoster, involved_object


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
