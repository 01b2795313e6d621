"""Prometheus metrics of the operator (prometheus-client, served on settings.metrics_port)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter(
    "model_traffic_reconcile_total", "Reconciles by kind and result.", ["kind", "result"]
)
RECONCILE_ERRORS = Counter(
    "model_traffic_reconcile_errors_total", "Reconciles that raised, by kind and error.", ["kind", "error"]
)
RECONCILE_SECONDS = Histogram(
    "model_traffic_reconcile_duration_seconds", "Time of one reconcile, by kind.", ["kind"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
READY = Gauge(
    "model_traffic_object_ready", "1 when the object's Ready condition is True.", ["kind", "namespace", "name"]
)
