"""TrafficConfig analysis: PromQL for the builtin LLM metrics, query templating, threshold evaluation.

Pure, except :class:`HTTPPrometheus` (a tiny urllib client), which nothing here calls by itself: the
reconciler passes any ``query(promql) -> float | None`` to :func:`run_metrics`, so the state machine in
``kinds/trafficconfig/render.py`` and the unit tests never need a Prometheus server.

Where the builtin metrics come from (checked against Envoy AI Gateway's source and docs):

- ``internal/metrics/genai.go`` (envoyproxy/ai-gateway) registers four OpenTelemetry histograms:
  ``gen_ai.client.token.usage`` (unit ``token``), ``gen_ai.server.request.duration``,
  ``gen_ai.server.time_to_first_token`` and ``gen_ai.server.time_per_output_token`` (unit ``s``),
  with the attributes ``gen_ai.request.model``, ``gen_ai.original.model``, ``gen_ai.token.type``
  (``input``/``output``/...) and ``error.type``.
- ``internal/metrics/metrics_impl.go``: ``RecordRequestCompletion`` records the request duration with
  ``error.type="_OTHER"`` on failure and without ``error.type`` on success (as the semantic
  conventions ask), so the error rate is the share of ``..._count`` series carrying ``error_type``.
- The processors set ``gen_ai.request.model`` to the backend's ``modelNameOverride`` when the route
  has one, else to the body's model (``cmp.Or(headers[ModelNameHeaderKeyDefault], body.Model)``), and
  ``gen_ai.original.model`` to the client's model. Each version serves under its own served-model name
  (``<modelName>-<version>``) and the VirtualModel sets it as ``modelNameOverride``, so
  ``gen_ai_request_model`` splits every metric by version.
- ``site/docs/capabilities/observability/metrics.md``: exported to Prometheus with dots turned into
  underscores and the unit suffix for seconds, e.g. ``gen_ai_client_token_usage_sum`` with the labels
  ``gen_ai_request_model`` and ``gen_ai_token_type``, and ``gen_ai_server_request_duration_seconds_*``.
  (Older exporters named the token histogram ``gen_ai_client_token_usage_token_*``; a custom ``query``
  covers such a setup.)
"""

from __future__ import annotations

import json
import math
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from model_traffic.kinds.trafficconfig.analysis_spec import KNOWN_TEMPLATE_VARIABLES, Inconclusive, Metric
from model_traffic.kinds.trafficconfig.analysis_spec import Builtin as Builtin  # re-exported: docgen lists it
from model_traffic.kinds.trafficconfig.spec import MetricResult

MODEL_LABEL = "gen_ai_request_model"
REQUEST_DURATION = "gen_ai_server_request_duration_seconds"
TIME_TO_FIRST_TOKEN = "gen_ai_server_time_to_first_token_seconds"
TIME_PER_OUTPUT_TOKEN = "gen_ai_server_time_per_output_token_seconds"
TOKEN_USAGE = "gen_ai_client_token_usage"
ERROR_LABEL = "error_type"  # error.type; set ("_OTHER") on failed requests only

NO_DATA = "no data"


class PrometheusClient(Protocol):
    """Anything that answers an instant query with one number, or None when there is no sample."""

    def query(self, promql: str) -> float | None: ...


QueryFunction = Callable[[str], float | None]


def served_model_name(model_name: str, version: str) -> str:
    """The model name a version serves under, which the route sends as modelNameOverride."""
    return f"{model_name}-{version}"


def _label_value(value: str) -> str:
    """A PromQL double-quoted string literal."""
    return '"' + _escaped(value, '"', "value") + '"'


def _quantile(q: float, histogram: str, selector: str, interval: str) -> str:
    return f"histogram_quantile({q}, sum by (le) (rate({histogram}_bucket{{{selector}}}[{interval}])))"


def builtin_query(builtin: Builtin, served_model: str, interval: str) -> str:
    """PromQL for a builtin metric of the version serving as ``served_model``, over ``interval``.

    Latencies are of successful requests (``error_type=""`` matches the series without the label), as
    the conventions define time to first token and time per output token. The error rate adds
    ``or vector(0)`` to its numerator so that a version without errors measures 0, while a version
    without any request still measures nothing (no data).
    """
    model = f"{MODEL_LABEL}={_label_value(served_model)}"
    ok = f'{model},{ERROR_LABEL}=""'
    if builtin == "ErrorRate":
        count = f"{REQUEST_DURATION}_count"
        return (f'(sum(rate({count}{{{model},{ERROR_LABEL}!=""}}[{interval}])) or vector(0))'
                f" / sum(rate({count}{{{model}}}[{interval}]))")
    if builtin == "RequestLatencyP95":
        return _quantile(0.95, REQUEST_DURATION, ok, interval)
    if builtin == "RequestLatencyP99":
        return _quantile(0.99, REQUEST_DURATION, ok, interval)
    if builtin == "TimeToFirstTokenP95":
        return _quantile(0.95, TIME_TO_FIRST_TOKEN, ok, interval)
    if builtin == "TimePerOutputTokenP95":
        return _quantile(0.95, TIME_PER_OUTPUT_TOKEN, ok, interval)
    if builtin == "OutputTokensPerRequest":
        output = f'{model},gen_ai_token_type="output"'
        return (f"sum(rate({TOKEN_USAGE}_sum{{{output}}}[{interval}]))"
                f" / sum(rate({TOKEN_USAGE}_count{{{output}}}[{interval}]))")
    raise ValueError(f"unknown builtin metric {builtin!r}")


# {{ .Version }}, and a template's arguments {{ .Args.name }} (looked up as "Args.name").
_TEMPLATE = re.compile(r"\{\{\s*\.([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)\s*\}\}")
ARGS_PREFIX = "Args."

# What a variable may be where no quotes surround it (a range like [{{ .Interval }}], a bare word): one token that
# cannot end the expression, open a selector or start another one.
_BARE_VALUE = re.compile(r"[A-Za-z0-9_:.-]+")


class TemplateError(ValueError):
    pass


def template_variables(template: str) -> set[str]:
    """The variables a query uses: ``Version``, ``Args.name``..."""
    return {m.group(1) for m in _TEMPLATE.finditer(template)}


def _escaped(value: str, quote: str, name: str) -> str:
    """``value`` as it may stand inside a PromQL string delimited by ``quote`` (None: outside any string).

    PromQL strings take Go escapes, and only the delimiting quote may be escaped; a raw (backtick) string has no
    escapes at all, so a value holding a backtick cannot stand in one."""
    if quote == "`":
        if "`" in value:
            raise TemplateError(f"{{{{ .{name} }}}} holds a backtick and cannot stand in a `raw` string")
        return value
    if quote in ('"', "'"):
        out = value.replace("\\", "\\\\").replace(quote, "\\" + quote)
        return out.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    if not _BARE_VALUE.fullmatch(value):
        raise TemplateError(f"{{{{ .{name} }}}} is {value!r}, which can only stand inside a quoted string: write "
                            f"\"{{{{ .{name} }}}}\"")
    return value


def render_query(template: str, variables: dict[str, str]) -> str:
    """Substitute ``{{ .Version }}``, ``{{ .ModelName }}``, ``{{ .ServedModel }}``, ``{{ .Interval }}`` and
    ``{{ .Namespace }}`` (Go-template spelling, as Flagger's templates). Anything else is refused.

    Every value is escaped for where it stands: inside a "double", 'single' or `raw` PromQL string it cannot close
    the string (a model name like ``x"} or vector(1) #`` stays one label value); outside any string it must be a
    single bare token (an interval like 5m) or the query is refused."""
    unknown = sorted({m.group(1) for m in _TEMPLATE.finditer(template)} - set(variables))
    if unknown:
        args = sorted(v[len(ARGS_PREFIX):] for v in variables if v.startswith(ARGS_PREFIX))
        known = KNOWN_TEMPLATE_VARIABLES + (f"; arguments: {', '.join(args)}" if args else "")
        raise TemplateError(f"unknown template variable(s) {', '.join(unknown)}; known: {known}")
    out: list[str] = []
    quote = ""  # the delimiter of the PromQL string we are in, "" outside one
    position = 0
    while position < len(template):
        variable = _TEMPLATE.match(template, position)
        if variable:
            name = variable.group(1)
            out.append(_escaped(variables[name], quote, name))
            position = variable.end()
            continue
        char = template[position]
        if quote and char == "\\" and quote != "`":
            out.append(template[position:position + 2])  # an escape of the template's own: kept as written
            position += 2
            continue
        if quote and char == quote:
            quote = ""
        elif not quote and char in "\"'`":
            quote = char
        out.append(char)
        position += 1
    return "".join(out)


@dataclass(frozen=True)
class Target:
    """One version a query is about."""

    version: str
    served_model: str


def metric_query(metric: Metric, target: Target, *, model_name: str, namespace: str, interval: str) -> str:
    """The PromQL of ``metric`` for ``target``; ``interval`` is the analysis interval (the metric's own
    ``interval`` wins)."""
    window = metric.interval or interval
    if metric.builtin is not None:
        return builtin_query(metric.builtin, target.served_model, window)
    if metric.query is None:
        raise ValueError(f"metric {metric.name} has neither builtin nor query")
    return render_query(metric.query, {
        "Version": target.version, "ModelName": model_name, "ServedModel": target.served_model,
        "Interval": window, "Namespace": namespace,
        **{ARGS_PREFIX + name: value for name, value in (metric.args or {}).items()},
    })


def needs_stable(metric: Metric) -> bool:
    bounds = metric.inconclusive
    return (metric.min_relative_to_stable is not None or metric.max_relative_to_stable is not None
            or (bounds is not None and (bounds.min_relative_to_stable is not None
                                        or bounds.max_relative_to_stable is not None)))


def has_data(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def _crossed(value: float, stable: float | None, lower: float | None, upper: float | None,
            lower_relative: float | None, upper_relative: float | None, what: str) -> list[str]:
    """Which of the bounds ``value`` crosses, each said in words; a relative bound without the stable's value
    is reported as such."""
    crossed: list[str] = []
    if lower is not None and value < lower:
        crossed.append(f"{_fmt(value)} < {what}min {_fmt(lower)}")
    if upper is not None and value > upper:
        crossed.append(f"{_fmt(value)} > {what}max {_fmt(upper)}")
    for factor, is_max in ((lower_relative, False), (upper_relative, True)):
        if factor is None:
            continue
        field = f"{what}{'maxRelativeToStable' if is_max else 'minRelativeToStable'}"
        if stable is None:
            crossed.append(f"{NO_DATA} for the stable version, so {field} {_fmt(factor)} cannot be checked")
            continue
        limit = stable * factor
        if (is_max and value > limit) or (not is_max and value < limit):
            sign = ">" if is_max else "<"
            crossed.append(f"{_fmt(value)} {sign} {_fmt(factor)} x stable {_fmt(stable)} = {_fmt(limit)} ({field})")
    return crossed


def _no_data_is_inconclusive(bounds: Inconclusive | None) -> bool:
    return bool(bounds is not None and bounds.no_data)


def evaluate(metric: Metric, candidate_value: float | None, stable_value: float | None) -> MetricResult:
    """Check the candidate's value against the metric's thresholds.

    No data (None or NaN) is a failed check with the message "no data", never a pass, unless the metric's
    ``inconclusive.noData`` makes it Inconclusive. A relative threshold needs the stable version's value of the
    same window; without it the check fails too (Inconclusive likewise with ``noData``). A value within the fail
    thresholds that crosses a bound of ``inconclusive`` is Inconclusive: neither passed nor failed.
    """
    stable = stable_value if has_data(stable_value) else None
    bounds = metric.inconclusive
    if not has_data(candidate_value) or candidate_value is None:
        if _no_data_is_inconclusive(bounds):
            return MetricResult(name=metric.name, stable_value=stable, passed=False, inconclusive=True,
                                message=f"{NO_DATA} (inconclusive)")
        return MetricResult(name=metric.name, value=None, stable_value=stable, passed=False, message=NO_DATA)
    value = candidate_value
    failures = _crossed(value, stable, metric.min, metric.max, metric.min_relative_to_stable,
                        metric.max_relative_to_stable, "")
    if failures:
        if stable is None and _no_data_is_inconclusive(bounds) and all(NO_DATA in f for f in failures):
            return MetricResult(name=metric.name, value=value, passed=False, inconclusive=True,
                                message="; ".join(failures) + " (inconclusive)")
        return MetricResult(name=metric.name, value=value, stable_value=stable, passed=False,
                            message="; ".join(failures))
    if bounds is not None:
        doubts = _crossed(value, stable, bounds.min, bounds.max, bounds.min_relative_to_stable,
                          bounds.max_relative_to_stable, "inconclusive.")
        if doubts:
            return MetricResult(name=metric.name, value=value, stable_value=stable, passed=False, inconclusive=True,
                                message="inconclusive: " + "; ".join(doubts))
    return MetricResult(name=metric.name, value=value, stable_value=stable, passed=True, message="within thresholds")


def run_metrics(
    metrics: list[Metric],
    query: QueryFunction,
    *,
    candidate: Target,
    stable: Target,
    model_name: str,
    namespace: str,
    interval: str,
) -> list[MetricResult]:
    """Query each metric for the candidate (and the stable version, for relative thresholds) and
    evaluate it. A query that raises is a failed check naming the error; nothing is retried here."""
    results: list[MetricResult] = []
    for metric in metrics:
        try:
            candidate_value = query(metric_query(metric, candidate, model_name=model_name, namespace=namespace,
                                                 interval=interval))
            stable_value = None
            if needs_stable(metric):
                stable_value = query(metric_query(metric, stable, model_name=model_name, namespace=namespace,
                                                  interval=interval))
        except Exception as error:  # a broken query or an unreachable Prometheus fails the check
            results.append(MetricResult(name=metric.name, passed=False, message=f"query failed: {error}"))
            continue
        results.append(evaluate(metric, candidate_value, stable_value))
    return results


class PrometheusError(RuntimeError):
    pass


class HTTPPrometheus:
    """Instant queries against ``<address>/api/v1/query``; the first sample's value, None when empty.

    ``headers`` go with every request (Authorization for bearer or basic auth, X-Scope-OrgID...); ``ca_pem``
    replaces the system's CA certificates for an https address. Neither is ever part of an error message."""

    def __init__(self, address: str, timeout: float = 10.0, headers: dict[str, str] | None = None,
                 ca_pem: str | None = None) -> None:
        self.address = address.rstrip("/")
        self.timeout = timeout
        self.headers = dict(headers or {})
        self.context = ssl.create_default_context(cadata=ca_pem) if ca_pem else None

    def query(self, promql: str) -> float | None:
        data = urllib.parse.urlencode({"query": promql}).encode()
        request = urllib.request.Request(f"{self.address}/api/v1/query", data=data, method="POST",
                                         headers={**self.headers,
                                                  "Content-Type": "application/x-www-form-urlencoded"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.context) as response:
                return parse_query_response(json.loads(response.read()))
        except urllib.error.HTTPError as error:
            # Prometheus answers a bad query with 400 (422 for an execution error, 503 on timeout) and
            # the reason in the JSON body; urllib raises before the body is read, so read it here.
            raise PrometheusError(_http_error_message(error)) from None

    __call__ = query


def _http_error_message(error: urllib.error.HTTPError) -> str:
    """Prometheus' own error text from an HTTP error's JSON body, else the status and the body's start."""
    try:
        raw = error.read()
    except OSError:
        raw = b""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("error"):
        return f"Prometheus answered with an error: {body['error']}"
    text = raw.decode(errors="replace").strip()[:200]
    return f"Prometheus answered HTTP {error.code}" + (f": {text}" if text else f" {error.reason}")


def parse_query_response(body: object) -> float | None:
    """The value of an instant query's answer: a vector's first sample or a scalar; None when empty."""
    if not isinstance(body, dict) or body.get("status") != "success":
        error = body.get("error") if isinstance(body, dict) else body
        raise PrometheusError(f"Prometheus answered with an error: {error}")
    data = body.get("data") or {}
    result_type, result = data.get("resultType"), data.get("result")
    sample: object = None
    if result_type == "vector" and isinstance(result, list) and result:
        sample = (result[0] or {}).get("value")
    elif result_type == "scalar":
        sample = result
    if not isinstance(sample, list) or len(sample) != 2:
        return None
    value = float(sample[1])
    return None if math.isnan(value) else value
