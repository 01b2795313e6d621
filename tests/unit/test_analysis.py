"""TrafficConfig analysis: builtin PromQL, templating, thresholds (no Prometheus server)."""

from __future__ import annotations

import io
import math
import urllib.error
import urllib.request
from email.message import Message
from typing import Any

import pytest

from model_traffic.kinds.trafficconfig.analysis import (
    NO_DATA,
    HTTPPrometheus,
    PrometheusError,
    Target,
    TemplateError,
    builtin_query,
    evaluate,
    metric_query,
    parse_query_response,
    render_query,
    run_metrics,
    served_model_name,
)
from model_traffic.kinds.trafficconfig.analysis_spec import Metric


def metric(**fields: Any) -> Metric:
    base: dict[str, Any] = {"name": "m", "builtin": "ErrorRate", "max": 0.01}
    base.update(fields)
    return Metric.model_validate(base)


def test_builtin_queries_split_by_served_model() -> None:
    assert builtin_query("TimeToFirstTokenP95", "llama-3-v2", "1m") == (
        'histogram_quantile(0.95, sum by (le) (rate(gen_ai_server_time_to_first_token_seconds_bucket'
        '{gen_ai_request_model="llama-3-v2",error_type=""}[1m])))')
    assert builtin_query("RequestLatencyP99", "m", "5m").startswith(
        "histogram_quantile(0.99, sum by (le) (rate(gen_ai_server_request_duration_seconds_bucket")
    assert "gen_ai_server_time_per_output_token_seconds_bucket" in builtin_query("TimePerOutputTokenP95", "m", "1m")
    tokens = builtin_query("OutputTokensPerRequest", "m", "1m")
    assert tokens == ('sum(rate(gen_ai_client_token_usage_sum{gen_ai_request_model="m",gen_ai_token_type="output"}'
                      '[1m])) / sum(rate(gen_ai_client_token_usage_count{gen_ai_request_model="m",'
                      'gen_ai_token_type="output"}[1m]))')


def test_error_rate_counts_error_type_and_is_zero_without_errors() -> None:
    q = builtin_query("ErrorRate", "m", "1m")
    assert q == ('(sum(rate(gen_ai_server_request_duration_seconds_count{gen_ai_request_model="m",error_type!=""}'
                 '[1m])) or vector(0)) / sum(rate(gen_ai_server_request_duration_seconds_count'
                 '{gen_ai_request_model="m"}[1m]))')


def test_label_values_are_escaped() -> None:
    assert 'gen_ai_request_model="a\\"b"' in builtin_query("ErrorRate", 'a"b', "1m")


def test_custom_query_template() -> None:
    m = metric(builtin=None, query='sum(rate(x{model="{{ .ServedModel }}",v="{{.Version}}",ns="{{ .Namespace }}",'
                                   'n="{{ .ModelName }}"}[{{ .Interval }}]))')
    q = metric_query(m, Target("v2", "llama-v2"), model_name="llama", namespace="llm", interval="2m")
    assert q == 'sum(rate(x{model="llama-v2",v="v2",ns="llm",n="llama"}[2m]))'


def test_metric_interval_wins() -> None:
    q = metric_query(metric(interval="5m"), Target("v2", "s"), model_name="x", namespace="n", interval="1m")
    assert "[5m]" in q and "[1m]" not in q


def test_unknown_template_variable_is_refused() -> None:
    with pytest.raises(TemplateError, match="Pod"):
        render_query("{{ .Pod }}", {"Version": "v"})


INJECTION = 'x"} or vector(1) or up{a="'


@pytest.mark.parametrize(("template", "expected"), [
    ('m{model="{{ .ModelName }}"}', 'm{model="x\\"} or vector(1) or up{a=\\""}'),
    ("m{model='{{ .ModelName }}'}", "m{model='x\"} or vector(1) or up{a=\"'}"),
    ('m{a="\\"", model="{{ .ModelName }}"}', 'm{a="\\"", model="x\\"} or vector(1) or up{a=\\""}'),
])
def test_an_injection_through_a_variable_stays_one_label_value(template: str, expected: str) -> None:
    assert render_query(template, {"ModelName": INJECTION}) == expected


def test_a_single_quote_cannot_close_a_single_quoted_string() -> None:
    value = "x'} or vector(1) or up{a='"
    assert render_query("m{model='{{ .ModelName }}'}", {"ModelName": value}) == \
        "m{model='x\\'} or vector(1) or up{a=\\''}"


def test_a_variable_outside_quotes_must_be_one_bare_token() -> None:
    assert render_query("rate(m[{{ .Interval }}])", {"Interval": "5m"}) == "rate(m[5m])"
    with pytest.raises(TemplateError, match="only stand inside a quoted string"):
        render_query("m{model={{ .ModelName }}}", {"ModelName": INJECTION})


def test_a_backtick_cannot_stand_in_a_raw_string() -> None:
    assert render_query("m{model=`{{ .ModelName }}`}", {"ModelName": 'a"b'}) == 'm{model=`a"b`}'
    with pytest.raises(TemplateError, match="backtick"):
        render_query("m{model=`{{ .ModelName }}`}", {"ModelName": "a`b"})


def test_builtin_queries_escape_the_served_model() -> None:
    assert 'gen_ai_request_model="x\\"} or vector(1) or up{a=\\""' in builtin_query("ErrorRate", INJECTION, "1m")


def test_served_model_name() -> None:
    assert served_model_name("llama-3", "v2") == "llama-3-v2"


@pytest.mark.parametrize("value", [None, math.nan])
def test_no_data_is_a_failed_check(value: float | None) -> None:
    result = evaluate(metric(), value, 0.0)
    assert not result.passed
    assert result.message == NO_DATA


def test_absolute_thresholds() -> None:
    assert evaluate(metric(max=0.01), 0.005, None).passed
    failed = evaluate(metric(max=0.01), 0.02, None)
    assert not failed.passed and "0.02 > max 0.01" in failed.message
    assert not evaluate(metric(min=1.0, max=None), 0.5, None).passed
    assert evaluate(metric(min=1.0, max=None), 1.0, None).passed


def test_relative_to_stable() -> None:
    m = metric(builtin="TimeToFirstTokenP95", max=None, maxRelativeToStable=1.2)
    assert evaluate(m, 0.11, 0.1).passed
    worse = evaluate(m, 0.2, 0.1)
    assert not worse.passed
    assert worse.stable_value == 0.1
    assert "maxRelativeToStable" in worse.message
    low = metric(builtin="OutputTokensPerRequest", max=None, minRelativeToStable=0.8)
    assert not evaluate(low, 70.0, 100.0).passed
    assert evaluate(low, 90.0, 100.0).passed


def test_relative_without_stable_data_fails_clearly() -> None:
    m = metric(max=None, maxRelativeToStable=1.2)
    result = evaluate(m, 0.1, None)
    assert not result.passed
    assert "no data for the stable version" in result.message


def test_run_metrics_queries_stable_only_for_relative_thresholds() -> None:
    asked: list[str] = []
    values = {"cand": 0.2, "stable": 0.1}

    def query(promql: str) -> float | None:
        asked.append(promql)
        return values["cand"] if "-v2" in promql else values["stable"]

    results = run_metrics(
        [metric(name="errors", max=0.5), metric(name="ttft", builtin="TimeToFirstTokenP95", max=None,
                                                maxRelativeToStable=1.5)],
        query, candidate=Target("v2", "llama-v2"), stable=Target("v1", "llama-v1"),
        model_name="llama", namespace="llm", interval="1m")
    assert [r.passed for r in results] == [True, False]
    assert len(asked) == 3


def test_run_metrics_turns_a_failing_query_into_a_failed_check() -> None:
    def query(promql: str) -> float | None:
        raise OSError("connection refused")

    [result] = run_metrics([metric()], query, candidate=Target("v2", "a"), stable=Target("v1", "b"),
                           model_name="x", namespace="n", interval="1m")
    assert not result.passed
    assert "connection refused" in result.message


def test_parse_query_response() -> None:
    vector = {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "0.25"]}]}}
    assert parse_query_response(vector) == 0.25
    assert parse_query_response({"status": "success", "data": {"resultType": "vector", "result": []}}) is None
    nan = {"status": "success", "data": {"resultType": "vector", "result": [{"value": [1, "NaN"]}]}}
    assert parse_query_response(nan) is None
    assert parse_query_response({"status": "success", "data": {"resultType": "scalar", "result": [1, "3"]}}) == 3.0
    with pytest.raises(PrometheusError):
        parse_query_response({"status": "error", "error": "bad query"})


@pytest.mark.parametrize(("status", "body", "message"), [
    (400, b'{"status":"error","errorType":"bad_data","error":"1:17: parse error: unclosed left parenthesis"}',
     "Prometheus answered with an error: 1:17: parse error: unclosed left parenthesis"),
    (502, b"<html>bad gateway</html>", "Prometheus answered HTTP 502: <html>bad gateway</html>"),
    (503, b"", "Prometheus answered HTTP 503 Service Unavailable"),
])
def test_http_prometheus_reports_the_error_of_a_refused_query(
    monkeypatch: pytest.MonkeyPatch, status: int, body: bytes, message: str
) -> None:
    """Prometheus refuses a bad query with HTTP 400 and its reason in the JSON body (seen against the
    real server in tests/prometheus); the reason must reach the check's message, not just the status."""
    def urlopen(request: urllib.request.Request, timeout: float, context: object = None) -> None:
        reason = {400: "Bad Request", 502: "Bad Gateway", 503: "Service Unavailable"}[status]
        raise urllib.error.HTTPError(request.full_url, status, reason, Message(), io.BytesIO(body))

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    with pytest.raises(PrometheusError) as raised:
        HTTPPrometheus("http://prometheus:9090/").query("sum(rate(x[1m]")
    assert str(raised.value) == message
    [result] = run_metrics([metric(builtin=None, query="sum(rate(x[1m]")], HTTPPrometheus("http://p:9090"),
                           candidate=Target("v2", "a"), stable=Target("v1", "b"), model_name="x", namespace="n",
                           interval="1m")
    assert result.message == f"query failed: {message}"
