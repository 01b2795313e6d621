"""TrafficConfig analysis against a real Prometheus scraping Envoy AI Gateway-shaped gen_ai_* metrics.

The builtin PromQL of ``model_traffic.kinds.trafficconfig.analysis`` is run by Debian's ``prometheus`` over series
served by ``tests.support.prometheus.GenAIExporter`` with values chosen here, through the same ``HTTPPrometheus``
and ``run_metrics`` the reconciler uses. One Prometheus for the session; the profiles are set once.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from model_traffic.kinds.trafficconfig.analysis import (
    NO_DATA,
    Builtin,
    HTTPPrometheus,
    Target,
    builtin_query,
    run_metrics,
)
from model_traffic.kinds.trafficconfig.analysis_spec import Metric
from tests.support.prometheus import (
    SECONDS_BUCKETS,
    TOKEN_BUCKETS,
    GenAIExporter,
    Profile,
    PrometheusServer,
    place,
)
from tests.support.webhooks import WebhookServer

WINDOW = "5s"
MODEL = "ptest-llama"
STABLE = Target("v1", f"{MODEL}-v1")
CANDIDATE = Target("v2", f"{MODEL}-v2")
SLOW = Target("v3", f"{MODEL}-v3")  # time to first token 3x the stable version's
UNKNOWN = Target("v9", f"{MODEL}-v9")  # never served
CHANGING = f"{MODEL}-changing"
GOING = f"{MODEL}-going"

PROFILES: dict[str, dict[str, float]] = {
    STABLE.served_model: dict(requests_per_second=5, error_ratio=0.0, request_seconds=1.0, ttft_seconds=0.2,
                              tpot_seconds=0.02, output_tokens_per_request=100),
    CANDIDATE.served_model: dict(requests_per_second=4, error_ratio=0.02, request_seconds=1.37, ttft_seconds=0.23,
                                 tpot_seconds=0.017, output_tokens_per_request=123),
    SLOW.served_model: dict(requests_per_second=5, error_ratio=0.0, request_seconds=1.0, ttft_seconds=0.6,
                            tpot_seconds=0.02, output_tokens_per_request=100),
    CHANGING: dict(ttft_seconds=0.2),
    GOING: dict(),
}
BUILTINS: tuple[Builtin, ...] = ("ErrorRate", "RequestLatencyP95", "RequestLatencyP99", "TimeToFirstTokenP95",
            "TimePerOutputTokenP95", "OutputTokensPerRequest")


def metric(**fields: Any) -> Metric:
    return Metric.model_validate(fields)


def run(metrics: list[Metric], prometheus: PrometheusServer, candidate: Target = CANDIDATE,
        stable: Target = STABLE) -> list[Any]:
    return run_metrics(metrics, HTTPPrometheus(prometheus.address), candidate=candidate, stable=stable,
                       model_name=MODEL, namespace="llm", interval=WINDOW)


@pytest.fixture(scope="module")
def served(genai_exporter: GenAIExporter, prometheus: PrometheusServer) -> Iterator[PrometheusServer]:
    """Every profile set at once, then one wait until the window is full of each: ratios (error rate,
    quantiles, tokens per request) are right from the second scrape on, but absolute rates only once the
    series are older than the window (``rate`` does not extrapolate a new counter to before its zero)."""
    for name, profile in PROFILES.items():
        genai_exporter.set_profile(name, **profile)
    for name, profile in PROFILES.items():
        rps = profile.get("requests_per_second", Profile.requests_per_second)
        prometheus.wait_for_samples(
            f'sum(rate(gen_ai_server_request_duration_seconds_count{{gen_ai_request_model="{name}"}}[{WINDOW}]))',
            timeout=30, until=_near(rps))
    yield prometheus
    for name in PROFILES:
        genai_exporter.remove(name)


def _near(expected: float) -> Callable[[float], bool]:
    return lambda value: abs(value - expected) < 0.02 * expected


# -- every builtin measures what the exporter was told


@pytest.mark.parametrize("builtin", BUILTINS)
def test_builtin_measures_the_chosen_value(served: PrometheusServer, builtin: Builtin) -> None:
    value = served.query(builtin_query(builtin, CANDIDATE.served_model, WINDOW))
    assert value is not None, builtin
    profile_field = {
        "ErrorRate": "error_ratio", "RequestLatencyP95": "request_seconds", "RequestLatencyP99": "request_seconds",
        "TimeToFirstTokenP95": "ttft_seconds", "TimePerOutputTokenP95": "tpot_seconds",
        "OutputTokensPerRequest": "output_tokens_per_request",
    }[builtin]
    expected = PROFILES[CANDIDATE.served_model][profile_field]
    if builtin == "RequestLatencyP99":  # between the value and the next bucket bound (1.37 -> (1.3, 1.4])
        assert expected <= value <= 1.4
    else:
        assert value == pytest.approx(expected, rel=1e-6)


def test_error_rate_of_a_version_without_errors_is_zero_not_no_data(served: PrometheusServer) -> None:
    # There is no error_type series at all (as in Envoy AI Gateway before a first failure) ...
    assert served.query(f'count(gen_ai_server_request_duration_seconds_count{{gen_ai_request_model='
                        f'"{STABLE.served_model}",error_type!=""}})') is None
    # ... and still the error rate is a measured 0, which passes `max: 0`.
    assert served.query(builtin_query("ErrorRate", STABLE.served_model, WINDOW)) == 0.0
    [result] = run([metric(name="errors", builtin="ErrorRate", max=0)], served, candidate=STABLE)
    assert result.passed and result.value == 0.0


def test_healthy_candidate_passes_every_builtin(served: PrometheusServer) -> None:
    results = run([
        metric(name="errors", builtin="ErrorRate", max=0.05),
        metric(name="p95", builtin="RequestLatencyP95", max=2),
        metric(name="p99", builtin="RequestLatencyP99", max=2),
        metric(name="ttft", builtin="TimeToFirstTokenP95", maxRelativeToStable=1.2),
        metric(name="tpot", builtin="TimePerOutputTokenP95", maxRelativeToStable=1.0),
        metric(name="tokens", builtin="OutputTokensPerRequest", minRelativeToStable=0.8),
    ], served)
    assert [(r.name, r.passed) for r in results] == [
        ("errors", True), ("p95", True), ("p99", True), ("ttft", True), ("tpot", True), ("tokens", True)
    ], results
    ttft = results[3]
    assert ttft.value == pytest.approx(0.23) and ttft.stable_value == pytest.approx(0.2)


def test_candidate_slower_than_stable_fails_naming_both_values(served: PrometheusServer) -> None:
    [result] = run([metric(name="ttft", builtin="TimeToFirstTokenP95", maxRelativeToStable=1.5)], served,
                   candidate=SLOW)
    assert not result.passed
    assert result.value == pytest.approx(0.6) and result.stable_value == pytest.approx(0.2)
    assert result.message == "0.6 > 1.5 x stable 0.2 = 0.3 (maxRelativeToStable)"


def test_unknown_served_model_is_no_data_for_every_builtin(served: PrometheusServer) -> None:
    metrics = [metric(name=b, builtin=b, max=1e9) for b in BUILTINS]
    results = run(metrics, served, candidate=UNKNOWN)
    assert [(r.passed, r.message, r.value) for r in results] == [(False, NO_DATA, None)] * len(BUILTINS)


def test_relative_threshold_without_stable_data_fails(served: PrometheusServer) -> None:
    [result] = run([metric(name="ttft", builtin="TimeToFirstTokenP95", maxRelativeToStable=1.5)], served,
                   stable=UNKNOWN)
    assert not result.passed
    assert result.value == pytest.approx(0.23)
    assert result.message == "no data for the stable version, so maxRelativeToStable 1.5 cannot be checked"


def test_custom_query_with_served_model_template(served: PrometheusServer) -> None:
    query = ('sum(rate(gen_ai_server_request_duration_seconds_count{gen_ai_request_model="{{ .ServedModel }}"}'
             '[{{ .Interval }}]))')
    [ok, low] = run([metric(name="rps", query=query, min=3), metric(name="rps-high", query=query, min=10)], served)
    assert ok.passed, ok
    assert ok.value == pytest.approx(4, rel=0.05)  # requests per second, errors included
    assert not low.passed and "< min 10" in low.message
    by_model = ('sum(rate(gen_ai_client_token_usage_sum{gen_ai_original_model="{{ .ModelName }}",'
                'gen_ai_request_model="{{ .ServedModel }}",gen_ai_token_type="output"}[{{ .Interval }}]))')
    [tokens] = run([metric(name="tokens-per-second", query=by_model, min=1)], served)
    assert tokens.value == pytest.approx(4 * 0.98 * 123, rel=0.05)


def test_invalid_promql_is_a_failed_check_with_prometheus_reason(served: PrometheusServer) -> None:
    [result] = run([metric(name="broken", query="sum(rate(x[{{ .Interval }}]", max=1)], served)
    assert not result.passed
    assert result.message.startswith("query failed: Prometheus answered with an error: "), result.message
    assert "parse error" in result.message


def test_unreachable_prometheus_is_a_failed_check() -> None:
    closed = WebhookServer()  # a free port, then closed: nothing listens there
    address = closed.address
    closed.close()
    [result] = run_metrics([metric(name="errors", builtin="ErrorRate", max=0.1)], HTTPPrometheus(address, 2.0),
                           candidate=CANDIDATE, stable=STABLE, model_name=MODEL, namespace="llm", interval=WINDOW)
    assert not result.passed and result.message.startswith("query failed: ")
    assert "refused" in result.message.lower()


def test_profile_change_and_removal_reach_a_window_within_its_length(
    served: PrometheusServer, genai_exporter: GenAIExporter
) -> None:
    """What rollout tests rely on: a [5s] window shows a change within ~5 s, a vanished version as no data."""
    genai_exporter.set_profile(CHANGING, ttft_seconds=0.6)
    genai_exporter.remove(GOING)
    start = time.monotonic()
    changed_after = gone_after = None
    while (changed_after is None or gone_after is None) and time.monotonic() - start < 15:
        if changed_after is None:
            ttft = served.query(builtin_query("TimeToFirstTokenP95", CHANGING, WINDOW))
            if ttft is not None and ttft == pytest.approx(0.6, rel=0.01):
                changed_after = time.monotonic() - start
        if gone_after is None and served.query(builtin_query("ErrorRate", GOING, WINDOW)) is None:
            gone_after = time.monotonic() - start
        time.sleep(0.1)
    assert changed_after is not None and changed_after < 5 + 2, changed_after
    assert gone_after is not None and gone_after < 5 + 2, gone_after
    # The mean over the window follows only once the window is past the change.
    served.wait_for_samples(f'sum(rate(gen_ai_server_time_to_first_token_seconds_sum{{gen_ai_request_model='
                            f'"{CHANGING}"}}[{WINDOW}])) / sum(rate(gen_ai_server_time_to_first_token_seconds_count'
                            f'{{gen_ai_request_model="{CHANGING}"}}[{WINDOW}]))', timeout=15,
                            until=lambda mean: abs(mean - 0.6) < 0.006)
    assert time.monotonic() - start < 5 + 2


# -- the helpers themselves (no Prometheus needed)


def _bucket_quantile(q: float, bounds: tuple[float, ...], counts: list[float]) -> float:
    """Prometheus' bucketQuantile (promql/quantile.go), for non-cumulative counts."""
    cumulative: list[float] = []
    for count in counts:
        cumulative.append((cumulative[-1] if cumulative else 0.0) + count)
    rank = q * cumulative[-1]
    b = next(i for i, c in enumerate(cumulative) if c >= rank)
    if b == len(bounds):
        return bounds[-1]
    start, below = (0.0, 0.0) if b == 0 else (bounds[b - 1], cumulative[b - 1])
    return start + (bounds[b] - start) * (rank - below) / (cumulative[b] - below)


@pytest.mark.parametrize("bounds", [SECONDS_BUCKETS, TOKEN_BUCKETS], ids=["seconds", "tokens"])
def test_placement_makes_p95_exact_and_p99_close(bounds: tuple[float, ...]) -> None:
    values = [*bounds, *(a + (b - a) * f for a, b in itertools.pairwise(bounds)
                         for f in (0.01, 0.5, 0.94, 0.951, 0.99))]
    for value in values:
        counts = [0.0] * (len(bounds) + 1)
        for index, share in place(bounds, value):
            counts[index] += share
        assert sum(counts) == pytest.approx(1.0)
        assert _bucket_quantile(0.95, bounds, counts) == pytest.approx(value, rel=1e-9), value
        assert value * (1 - 1e-9) <= _bucket_quantile(0.99, bounds, counts) <= value * 1.1 + 1e-12, value


def test_exporter_counters_only_grow_across_changes_and_removal() -> None:
    now = [0.0]
    exporter = GenAIExporter(clock=lambda: now[0])
    try:
        exporter.set_profile("m-v1", requests_per_second=10, error_ratio=0.5)
        assert exporter.render().strip() == ""  # nothing observed yet: no series
        now[0] = 2.0
        first = _samples(exporter.render())
        assert first['gen_ai_server_request_duration_seconds_count{gen_ai_operation_name="chat",'
                     'gen_ai_original_model="m",gen_ai_provider_name="openai",gen_ai_request_model="m-v1",'
                     'gen_ai_response_model="m-v1",error_type="_OTHER"}'] == pytest.approx(10)
        exporter.set_profile("m-v1", error_ratio=0.0, ttft_seconds=5.0)
        now[0] = 4.0
        exporter.remove("m-v1")
        assert exporter.render().strip() == ""
        now[0] = 100.0  # removed: does not count
        exporter.set_profile("m-v1")
        now[0] = 101.0
        last = _samples(exporter.render())
        assert set(first) <= set(last)
        assert all(last[key] >= value for key, value in first.items())
        ok_count = [v for k, v in last.items() if k.startswith("gen_ai_server_time_to_first_token_seconds_count")]
        assert ok_count == [pytest.approx(10 + 20 + 10)]
        with pytest.raises(TypeError, match="ttft"):
            exporter.set_profile("m-v1", ttft=1)
    finally:
        exporter.close()


def _samples(text: str) -> dict[str, float]:
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_webhook_server_records_posts_and_answers_as_told() -> None:
    with WebhookServer() as server:
        server.respond("/fail", status=500, body={"reason": "eval failed"})
        server.respond("/slow", delay=2.0)

        def post(path: str, payload: Any, timeout: float = 5.0) -> tuple[int, Any]:
            request = urllib.request.Request(server.url(path), data=json.dumps(payload).encode(), method="POST",
                                             headers={"Content-Type": "application/json", "X-Test": "1"})
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as error:
                return error.code, json.loads(error.read())

        assert post("/ok?x=1", {"phase": "PreRollout"}) == (200, {})
        assert post("/fail", {"phase": "Rollout"}) == (500, {"reason": "eval failed"})
        with pytest.raises(OSError, match="timed out"):
            post("/slow", {}, timeout=0.5)
        [ok] = server.calls("/ok")
        assert ok.json == {"phase": "PreRollout"} and ok.query == "x=1"
        assert ok.headers["x-test"] == "1" and ok.headers["content-type"] == "application/json"
        assert [c.path for c in server.calls()] == ["/ok", "/fail", "/slow"]
        threading.Timer(0.2, post, args=("/later", {"n": 1})).start()
        [later] = server.wait_for_calls("/later", timeout=5)
        assert later.json == {"n": 1}
