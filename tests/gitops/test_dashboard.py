"""The Grafana dashboard shipped in the chart: valid, and every query asks for metrics the operator exports.

Statically, every PromQL expression (panels and template variables) is tokenised: its metric names must
be samples the operator exposes (the collectors of :mod:`model_traffic.metrics`: ``_total`` of
counters, ``_bucket``/``_sum``/``_count`` of histograms), its label matchers labels of those metrics, its
grouping labels labels of a metric it reads. Then Prometheus's own ``promtool`` evaluates each
expression against series in the operator's own exposition format (the collectors re-registered on a
private registry and rendered by prometheus-client), and each must return data.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from model_traffic import metrics
from tests.support import prerequisites

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_PATH = ROOT / "charts" / "model-traffic-operator" / "files" / "dashboards" / "model-traffic-operator.json"
DASHBOARD: dict[str, Any] = json.loads(DASHBOARD_PATH.read_text())


@dataclass(frozen=True)
class Family:
    """One metric family the operator exports, from a labelled metric of prometheus_client or from a collector of
    its own (metrics.ObjectStates: one dict entry per object)."""

    name: str
    type: str
    documentation: str
    labelnames: tuple[str, ...]
    buckets: tuple[float, ...] = ()


def exported_families() -> list[Family]:
    out = []
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            out.append(Family(value._name, value._type, value._documentation, tuple(value._labelnames),
                              tuple(getattr(value, "_upper_bounds", ()))))
        elif isinstance(value, metrics.ObjectStates):
            out.extend(Family(family.name, family.type, family.documentation, tuple(family._labelnames))
                       for family in value.describe())
    return out


COLLECTORS = exported_families()
ROLLOUT_FAMILIES = {"model_traffic_rollout_phase", "model_traffic_rollout_canary_weight",
                    "model_traffic_analysis_value", "model_traffic_analysis_passed"}

FUNCTIONS = {"sum", "min", "max", "avg", "count", "topk", "bottomk", "rate", "irate", "increase", "delta",
             "histogram_quantile", "clamp_min", "clamp_max", "abs", "round", "absent", "vector", "label_replace",
             "sum_over_time", "max_over_time", "min_over_time", "avg_over_time", "time", "sort", "sort_desc"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
            "offset"}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}


def exposed_samples() -> dict[str, tuple[str, set[str]]]:
    """Sample name -> (family, label names) for everything the operator exposes."""
    out: dict[str, tuple[str, set[str]]] = {}
    for collector in COLLECTORS:
        name, labels = collector.name, set(collector.labelnames)
        if collector.type == "counter":
            out[f"{name}_total"] = (name, labels)
        elif collector.type == "histogram":
            out[f"{name}_bucket"] = (name, labels | {"le"})
            out[f"{name}_sum"] = (name, labels)
            out[f"{name}_count"] = (name, labels)
        else:
            out[name] = (name, labels)
    return out


SAMPLES = exposed_samples()


# --- the dashboard's queries ---------------------------------------------------------------------------------

def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for item in items:
        yield item
        yield from panels(item.get("panels") or [])


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, expr) of every target."""
    return [(p["title"], t["expr"]) for p in panels(DASHBOARD["panels"]) for t in p.get("targets") or []]


def variable_queries() -> list[tuple[str, str, str]]:
    """(variable, series expr, label) of every label_values() template variable."""
    out = []
    for var in DASHBOARD["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query.strip())
        assert match, f"variable {var['name']}: {query!r} is not label_values(series, label)"
        out.append((var["name"], match.group(1), match.group(2)))
    return out


def with_variables(expr: str) -> str:
    """The query as Grafana sends it with every variable at All (".*") and a 5m rate interval."""
    expr = expr.replace("$__rate_interval", "5m")
    return re.sub(r"\$\{?(\w+)\}?", ".*", expr)


TOKEN = re.compile(r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=,(){}])
  | (?P<space>\s+)
""", re.VERBOSE)


def tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        match = TOKEN.match(expr, pos)
        assert match, f"cannot tokenise {expr[pos:]!r} in {expr!r}"
        pos = match.end()
        if match.lastgroup != "space":
            out.append((str(match.lastgroup), match.group()))
    return out


def analyse(expr: str) -> tuple[list[str], list[tuple[str, str]], list[str], list[str]]:
    """(metric names, (metric, matcher label) pairs, grouping labels, functions) of a PromQL expression."""
    toks = tokens(with_variables(expr))
    names: list[str] = []
    matchers: list[tuple[str, str]] = []
    grouping: list[str] = []
    functions: list[str] = []
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        following = toks[i + 1][1] if i + 1 < len(toks) else ""
        if kind == "ident" and text in GROUPING and following == "(":
            j = i + 2
            while toks[j][1] != ")":
                if toks[j][0] == "ident":
                    grouping.append(toks[j][1])
                j += 1
            i = j + 1
            continue
        if kind == "ident" and text not in KEYWORDS and (following == "(" or following in ("by", "without")):
            functions.append(text)  # a function, or an aggregation with its grouping first: sum by (x) (...)
        elif kind == "ident" and text not in KEYWORDS:
            names.append(text)
            if following == "{":
                j = i + 2
                while toks[j][1] != "}":
                    if toks[j][0] == "ident" and toks[j + 1][1] in ("=", "!=", "=~", "!~"):
                        matchers.append((text, toks[j][1]))
                    j += 1
                i = j + 1
                continue
        elif text == "{":
            raise AssertionError(f"a selector without a metric name in {expr!r}")
        i += 1
    return names, matchers, grouping, functions


def all_exprs() -> list[tuple[str, str]]:
    return panel_queries() + [(f"variable {name}", series) for name, series, _ in variable_queries()]


# --- static checks ---------------------------------------------------------------------------------------

def test_the_dashboard_is_a_grafana_dashboard() -> None:
    assert DASHBOARD["uid"] == "model-traffic-operator" and DASHBOARD["title"]
    assert isinstance(DASHBOARD["schemaVersion"], int)
    ids = [p["id"] for p in panels(DASHBOARD["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in panels(DASHBOARD["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel.get("targets"), f"{panel['title']}: no query"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_every_query_reads_only_metrics_the_operator_exports() -> None:
    for where, expr in all_exprs():
        names, matchers, grouping, functions = analyse(expr)
        assert names, f"{where}: no metric in {expr!r}"
        unknown = [n for n in names if n not in SAMPLES]
        assert not unknown, f"{where}: {unknown} are not exported by model_traffic.metrics ({expr})"
        for metric, label in matchers:
            assert label in SAMPLES[metric][1], f"{where}: {metric} has no label {label!r}"
        readable = set().union(*(SAMPLES[n][1] for n in names))
        assert set(grouping) <= readable, f"{where}: grouping by {set(grouping) - readable}, not a label of {names}"
        assert set(functions) <= FUNCTIONS, f"{where}: unknown functions {set(functions) - FUNCTIONS}"


def test_every_variable_label_exists_on_its_series() -> None:
    for name, series, label in variable_queries():
        names, _, _, _ = analyse(series)
        assert all(label in SAMPLES[n][1] for n in names), f"variable {name}: {label} not on {names}"


def test_every_exported_metric_has_a_panel() -> None:
    used = {SAMPLES[n][0] for _, expr in panel_queries() for n in analyse(expr)[0] if n in SAMPLES}
    families = {c.name for c in COLLECTORS}
    assert families - used == set(), f"metrics without a panel: {families - used}"
    assert families >= ROLLOUT_FAMILIES  # the rollout gauges are exported (and so have panels)


def test_the_checker_rejects_what_it_should() -> None:
    names, matchers, grouping, functions = analyse(
        'histogram_quantile(0.95, sum by (kind, le) (rate(model_traffic_reconcile_duration_seconds_bucket'
        '{kind=~"$kind"}[$__rate_interval]))) / on (kind) group_left foo_total{x="a"}')
    assert names == ["model_traffic_reconcile_duration_seconds_bucket", "foo_total"]
    assert matchers == [("model_traffic_reconcile_duration_seconds_bucket", "kind"), ("foo_total", "x")]
    assert grouping == ["kind", "le", "kind"] and functions == ["histogram_quantile", "sum", "rate"]
    assert "foo_total" not in SAMPLES and "model_traffic_reconcile_total" in SAMPLES
    assert "model_traffic_reconcile" not in SAMPLES  # a counter is read as _total


# --- evaluated by promtool against the operator's own exposition -----------------------------------------

LABEL_VALUES = {
    "kind": ["ManagedAIServiceBackend", "VirtualModel", "TrafficConfig"], "namespace": ["llm"], "name": ["a", "b"],
    "result": ["updated", "unchanged"], "error": ["http403"],
    "phase": ["Initializing", "Progressing", "Paused", "WaitingPromotion", "Promoting", "Succeeded", "Failed"],
    "metric": ["ttft"], "version": ["candidate", "stable"],
}


def gauge_value(family: str, labels: dict[str, str]) -> float:
    """TrafficConfig a failed and is not Ready; b is mid-rollout at 10%, Ready, its checks passing."""
    first = labels.get("name") == "a"
    if family == "model_traffic_rollout_phase":
        return 1.0 if labels["phase"] == ("Failed" if first else "Progressing") else 0.0
    if family in ("model_traffic_object_ready", "model_traffic_analysis_passed"):
        return 0.0 if first else 1.0
    if family == "model_traffic_rollout_canary_weight":
        return 0.0 if first else 10.0
    if family == "model_traffic_analysis_value":
        return 0.9 if labels["version"] == "candidate" else 0.4
    return 1.0


def exposition() -> str:
    """The collectors of model_traffic.metrics, re-created on a private registry, with values: the text the
    operator's /metrics serves."""
    registry = CollectorRegistry()
    for collector in COLLECTORS:
        labelnames = list(collector.labelnames)
        if collector.type == "counter":
            counter = Counter(collector.name, collector.documentation, labelnames, registry=registry)
            for values in itertools.product(*(LABEL_VALUES[n] for n in labelnames)):
                (counter.labels(*values) if values else counter).inc(3)
        elif collector.type == "histogram":
            buckets = [b for b in collector.buckets if b != float("inf")]
            histogram = Histogram(collector.name, collector.documentation, labelnames, registry=registry,
                                  buckets=buckets)
            for values in itertools.product(*(LABEL_VALUES[n] for n in labelnames)):
                for seconds in (0.02, 0.2, 2.0):
                    (histogram.labels(*values) if values else histogram).observe(seconds)
        else:
            gauge = Gauge(collector.name, collector.documentation, labelnames, registry=registry)
            for values in itertools.product(*(LABEL_VALUES[n] for n in labelnames)):
                value = gauge_value(collector.name, dict(zip(labelnames, values, strict=True)))
                (gauge.labels(*values) if values else gauge).set(value)
    return generate_latest(registry).decode()


def input_series(text: str) -> list[dict[str, str]]:
    """Scraped every minute for 30 minutes: counters grow by their exposed value a scrape, gauges stay."""
    out = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            growing = family.type in ("counter", "histogram")
            values = f"0+{sample.value:g}x30" if growing else f"{sample.value:g}x30"
            out.append({"series": f"{sample.name}{{{labels}}}", "values": values})
    return out


@pytest.fixture(scope="module")
def promtool() -> str:
    return prerequisites.tool("promtool")


def test_every_query_returns_data_from_the_operators_metrics(promtool: str, tmp_path: Path) -> None:
    exprs = all_exprs()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"alert": f"Query{i}", "expr": f"count(({with_variables(expr)})) > 0"} for i, (_, expr) in enumerate(exprs)]}]}
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    series = input_series(exposition())
    assert {s["series"].split("{")[0] for s in series} == set(SAMPLES)
    tests = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series,
        "alert_rule_test": [{"eval_time": "20m", "alertname": f"Query{i}", "exp_alerts": [{"exp_labels": {}}]}
                            for i in range(len(exprs))],
    }]}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    result = subprocess.run([promtool, "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, check=False)
    if result.returncode != 0:
        failing = sorted({int(n) for n in re.findall(r"alertname: Query(\d+)", result.stdout + result.stderr)})
        named = "\n".join(f"  {exprs[n][0]}: {exprs[n][1]}" for n in failing)
        raise AssertionError(f"promtool: queries without data or invalid:\n{named}\n{result.stdout}{result.stderr}")
