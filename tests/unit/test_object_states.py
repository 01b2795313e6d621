"""The per-object Ready and Stalled series, as a scrape shows them."""

from __future__ import annotations

from prometheus_client import generate_latest

from model_traffic import metrics


def scraped() -> str:
    return generate_latest().decode()


def test_each_object_has_one_ready_and_one_stalled_series_until_it_is_forgotten() -> None:
    states = metrics.OBJECT_STATES
    states.set("VirtualModel", "object-states", "m", "Progressing")
    states.set("ManagedAIServiceBackend", "object-states", "b", "Stalled")
    states.set("VirtualModel", "object-states", "m", "Ready")
    try:
        text = scraped()
        vm = '{kind="VirtualModel",name="m",namespace="object-states"}'
        backend = '{kind="ManagedAIServiceBackend",name="b",namespace="object-states"}'
        assert f"model_traffic_object_ready{vm} 1.0" in text
        assert f"model_traffic_object_stalled{vm} 0.0" in text
        assert f"model_traffic_object_ready{backend} 0.0" in text
        assert f"model_traffic_object_stalled{backend} 1.0" in text
        assert text.count('namespace="object-states"') == 4
    finally:
        states.remove("VirtualModel", "object-states", "m")
        states.remove("ManagedAIServiceBackend", "object-states", "b")
    assert 'namespace="object-states"' not in scraped()
    states.remove("VirtualModel", "object-states", "m")  # forgetting twice is harmless
