"""Usage by model, tenant or day, from the gateway's ``gen_ai_*`` metrics in Prometheus: ``model-traffic usage``.

Envoy AI Gateway's metrics (``internal/metrics/genai.go`` of v1.0.0, as its Prometheus exporter writes them):
``gen_ai_client_token_usage`` (token histogram, ``gen_ai_token_type`` input/output),
``gen_ai_server_request_duration_seconds`` (every request; a failed one with ``error_type``) and
``gen_ai_server_time_to_first_token_seconds`` (streaming), labelled ``gen_ai_original_model`` (the model the client
asked for: the VirtualModel's), ``gen_ai_request_model`` (the model sent to the backend, after
``modelNameOverride``), and ``tenant_id`` when the AI Gateway controller runs with
``--metricsRequestHeaderAttributes=x-tenant-id:tenant.id`` (docs/tenants.md).

Grouping: ``model`` by ``gen_ai_original_model``; ``tenant`` by the tenant of ``tenant_id`` (a rotated key's client
id ``acme.1a2b3c4d`` counts as ``acme``, see model_traffic.commands.keys); ``day`` by UTC day, each day an instant query
at its end (or at ``until``) over that day. Counts are ``increase()`` over the window; quantiles are
``histogram_quantile`` of the window's increase (successful requests only, for the latency). Cost, with a price
table (microdollars per token, by ``gen_ai_request_model``: what the backend charges for), is
input tokens x input price + output tokens x output price, summed over the backend models of the group.

The pure part builds the queries and folds the answers (:func:`queries`, :func:`fold`); :class:`PrometheusVectors`
is the only I/O.
"""

from __future__ import annotations

import json
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

TOKENS = "gen_ai_client_token_usage"
DURATION = "gen_ai_server_request_duration_seconds"
TTFT = "gen_ai_server_time_to_first_token_seconds"
MODEL_LABEL = "gen_ai_original_model"
BACKEND_MODEL_LABEL = "gen_ai_request_model"
TENANT_ID_LABEL = "tenant_id"
TENANT_LABEL = "tenant"
NONE = "(none)"

By = Literal["model", "tenant", "day"]
Sample = tuple[dict[str, str], float]
# An instant query at a time (seconds since the epoch): the samples of the answer.
Query = Callable[[str, float], list[Sample]]

_DURATION = re.compile(r"^([0-9]+)(m|h|d|w)$")
_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 604800}


class UsageError(Exception):
    """A request the command cannot answer; the message says why."""


def window_seconds(text: str) -> int:
    """``7d``, ``12h``, ``30m``, ``2w``."""
    match = _DURATION.fullmatch(text.strip())
    if not match or int(match.group(1)) == 0:
        raise UsageError(f"--since {text!r}: a positive number with m, h, d or w, e.g. 7d")
    return int(match.group(1)) * _SECONDS[match.group(2)]


def _selector(metric: str, models: list[str] | None, extra: str = "") -> str:
    matchers = [extra] if extra else []
    if models is not None:
        alternatives = "|".join(re.escape(m).replace("\\", "\\\\").replace('"', '\\"') for m in models)
        matchers.append(f'{MODEL_LABEL}=~"{alternatives}"')
    return f"{metric}{{{','.join(matchers)}}}"


def _fold_tenant(expr: str) -> str:
    return f'label_replace({expr}, "{TENANT_LABEL}", "$1", "{TENANT_ID_LABEL}", "([^.]*).*")'


@dataclass(frozen=True)
class Queries:
    tokens: str  # by group, backend model, token type
    requests: str
    errors: str
    latency: dict[float, str]  # quantile -> query
    ttft: dict[float, str]


QUANTILES = (0.5, 0.95)
FAILED = 'error_type!=""'  # a failed request's duration carries error.type (RecordRequestCompletion)
SUCCEEDED = 'error_type=""'


def queries(by: By, seconds: int, models: list[str] | None = None) -> Queries:
    """The PromQL of one window ending at the query's time. ``models``: only these client model names."""
    group = {"model": MODEL_LABEL, "tenant": TENANT_LABEL, "day": ""}[by]
    window = f"[{seconds}s]"

    def increase(metric: str, extra: str = "") -> str:
        expr = f"increase({_selector(metric, models, extra)}{window})"
        return _fold_tenant(expr) if by == "tenant" else expr

    def by_(*labels: str) -> str:
        return ", ".join(label for label in (group, *labels) if label)

    def quantiles(metric: str, extra: str = "") -> dict[float, str]:
        return {q: f"histogram_quantile({q}, sum by ({by_('le')}) ({increase(metric + '_bucket', extra)}))"
                for q in QUANTILES}

    return Queries(
        tokens=f"sum by ({by_(BACKEND_MODEL_LABEL, 'gen_ai_token_type')}) ({increase(TOKENS + '_sum')})",
        requests=f"sum by ({by_()}) ({increase(DURATION + '_count')})",
        errors=f"sum by ({by_()}) ({increase(DURATION + '_count', FAILED)})",
        latency=quantiles(DURATION, SUCCEEDED),
        ttft=quantiles(TTFT),
    )


@dataclass
class Row:
    group: str
    requests: float = 0.0
    errors: float = 0.0
    input_tokens: float = 0.0
    output_tokens: float = 0.0
    latency: dict[float, float] = field(default_factory=dict)
    ttft: dict[float, float] = field(default_factory=dict)
    cost_microdollars: float | None = None
    unpriced: set[str] = field(default_factory=set)  # backend models with tokens and no price

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests > 0 else 0.0


Prices = dict[str, dict[str, float]]  # backend model -> {"input": µ$/token, "output": µ$/token}


def _group_of(labels: dict[str, str], by: By, day: str | None) -> str:
    if by == "day":
        return day or ""
    return labels.get(MODEL_LABEL if by == "model" else TENANT_LABEL) or NONE


def fold(by: By, q: Queries, query: Query, at: float, prices: Prices | None, rows: dict[str, Row],
         day: str | None = None) -> None:
    """Run the queries of one window ending at ``at`` and add their answers to ``rows`` (by group)."""
    def row(labels: dict[str, str]) -> Row:
        group = _group_of(labels, by, day)
        return rows.setdefault(group, Row(group))

    for labels, value in query(q.tokens, at):
        target = row(labels)
        kind = labels.get("gen_ai_token_type")
        if kind == "input":
            target.input_tokens += value
        elif kind == "output":
            target.output_tokens += value
        if prices is not None and kind in ("input", "output"):
            price = prices.get(labels.get(BACKEND_MODEL_LABEL, ""), {}).get(kind)
            if price is None:
                target.unpriced.add(labels.get(BACKEND_MODEL_LABEL, NONE))
            else:
                target.cost_microdollars = (target.cost_microdollars or 0.0) + value * price
    for labels, value in query(q.requests, at):
        row(labels).requests += value
    for labels, value in query(q.errors, at):
        row(labels).errors += value
    for quantile, promql in q.latency.items():
        for labels, value in query(promql, at):
            if not math.isnan(value):
                row(labels).latency[quantile] = value
    for quantile, promql in q.ttft.items():
        for labels, value in query(promql, at):
            if not math.isnan(value):
                row(labels).ttft[quantile] = value


def days(until: datetime, seconds: int) -> list[tuple[str, float, int]]:
    """(UTC date, end of the window as epoch seconds, window seconds) for each day the period touches, oldest
    first; the first and last may be partial."""
    start = until - timedelta(seconds=seconds)
    out = []
    day = datetime(start.year, start.month, start.day, tzinfo=UTC)
    while day < until:
        begin, end = max(day, start), min(day + timedelta(days=1), until)
        if end > begin:
            out.append((day.date().isoformat(), end.timestamp(), int((end - begin).total_seconds())))
        day += timedelta(days=1)
    return out


def collect(by: By, seconds: int, until: datetime, query: Query, prices: Prices | None = None,
            models: list[str] | None = None) -> list[Row]:
    rows: dict[str, Row] = {}
    if by == "day":
        for date, end, length in days(until, seconds):
            fold(by, queries(by, length, models), query, end, prices, rows, day=date)
            rows.setdefault(date, Row(date))  # a day without traffic is a row of zeros
        return [rows[d] for d in sorted(rows)]
    fold(by, queries(by, seconds, models), query, until.timestamp(), prices, rows)
    return sorted(rows.values(), key=lambda r: (-r.input_tokens - r.output_tokens, r.group))


def _seconds_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def table(rows: Iterable[Row], by: By, priced: bool) -> str:
    header = [by.upper(), "REQUESTS", "ERRORS", "INPUT TOKENS", "OUTPUT TOKENS", "P50 LATENCY", "P95 LATENCY",
              "P50 TTFT", "P95 TTFT"] + (["COST (µ$)"] if priced else [])
    lines = [header]
    for r in rows:
        line = [r.group, f"{r.requests:.0f}", f"{100 * r.error_rate:.2f}%", f"{r.input_tokens:.0f}",
                f"{r.output_tokens:.0f}", _seconds_text(r.latency.get(0.5)), _seconds_text(r.latency.get(0.95)),
                _seconds_text(r.ttft.get(0.5)), _seconds_text(r.ttft.get(0.95))]
        if priced:
            cost = "-" if r.cost_microdollars is None else f"{r.cost_microdollars:.0f}"
            line.append(cost + (f" (no price: {', '.join(sorted(r.unpriced))})" if r.unpriced else ""))
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines) + "\n"


def load_prices(text: str) -> Prices:
    """A JSON (or YAML) map: backend model -> {input: µ$ per token, output: µ$ per token}."""
    import yaml

    raw = yaml.safe_load(text)
    if not isinstance(raw, dict):
        raise UsageError("the price table is a map of model -> {input, output} (microdollars per token)")
    prices: Prices = {}
    for model, entry in raw.items():
        if not isinstance(entry, dict) or not set(entry) <= {"input", "output"}:
            raise UsageError(f"price of {model}: {{input: µ$/token, output: µ$/token}}")
        try:
            prices[str(model)] = {k: float(v) for k, v in entry.items()}
        except (TypeError, ValueError):
            raise UsageError(f"price of {model}: numbers, in microdollars per token") from None
        if any(v < 0 or math.isnan(v) for v in prices[str(model)].values()):
            raise UsageError(f"price of {model}: not negative")
    return prices


class PrometheusVectors:
    """Instant queries against ``<address>/api/v1/query`` answering vectors (labels and value per sample)."""

    def __init__(self, address: str, timeout: float = 30.0) -> None:
        self.address = address.rstrip("/")
        self.timeout = timeout

    def __call__(self, promql: str, at: float) -> list[Sample]:
        data = urllib.parse.urlencode({"query": promql, "time": f"{at:.3f}"}).encode()
        request = urllib.request.Request(f"{self.address}/api/v1/query", data=data, method="POST",
                                         headers={"Content-Type": "application/x-www-form-urlencoded"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body: Any = json.loads(response.read())
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:300]
            raise UsageError(f"Prometheus answered HTTP {error.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as error:
            raise UsageError(f"Prometheus at {self.address}: {error}") from None
        result = (body.get("data") or {}).get("result") or []
        return [(dict(item.get("metric") or {}), float(item["value"][1])) for item in result]
