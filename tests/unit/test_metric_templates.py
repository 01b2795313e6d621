"""MetricTemplate / ClusterMetricTemplate: how a templateRef metric becomes an inline one, and what is refused."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from model_traffic.kinds.metrictemplate.resolve import resolve_analysis, template_key, template_users
from model_traffic.kinds.metrictemplate.spec import MetricTemplateSpec
from model_traffic.kinds.trafficconfig.analysis import Target, metric_query
from model_traffic.kinds.trafficconfig.analysis_spec import Metric
from model_traffic.kinds.trafficconfig.measure import with_templates
from model_traffic.kinds.trafficconfig.spec import TrafficConfigSpec

TTFT = {"builtin": "TimeToFirstTokenP95", "maxRelativeToStable": 1.2}
ERRORS_BY_ROUTE = {
    "query": 'sum(rate(errors{model="{{ .ServedModel }}",route="{{ .Args.route }}"}[{{ .Interval }}]))',
    "max": 0.05,
    "args": [{"name": "route"}, {"name": "unused", "default": "x"}],
    "prometheus": {"address": "https://mimir.example.com/prometheus", "headers": [
        {"name": "X-Scope-OrgID", "value": "team-a"}]},
}


def templates(found: dict[tuple[str, str, str], dict[str, Any]]) -> Any:
    """A lookup over {(kind, namespace ("" cluster-wide), name): spec}."""
    def lookup(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        spec = found.get((kind, namespace, name))
        return {"spec": spec} if spec is not None else None
    return lookup


def metric(**fields: Any) -> Metric:
    return Metric.model_validate({"name": "m", **fields})


def test_a_template_gives_its_definition_and_thresholds() -> None:
    lookup = templates({("ClusterMetricTemplate", "", "ttft"): TTFT})
    resolved = resolve_analysis([metric(templateRef={"name": "ttft", "kind": "ClusterMetricTemplate"})], "llm", lookup)
    assert resolved.problems == []
    [inline] = resolved.metrics
    assert (inline.builtin, inline.max_relative_to_stable, inline.template_ref) == ("TimeToFirstTokenP95", 1.2, None)


def test_the_metrics_own_thresholds_replace_the_templates() -> None:
    lookup = templates({("ClusterMetricTemplate", "", "ttft"): TTFT})
    resolved = resolve_analysis([metric(templateRef={"name": "ttft", "kind": "ClusterMetricTemplate"}, max=2.0)],
                                "llm", lookup)
    [inline] = resolved.metrics
    assert (inline.max, inline.max_relative_to_stable) == (2.0, None)


def test_args_are_substituted_escaped_and_defaults_fill_in() -> None:
    lookup = templates({("MetricTemplate", "llm", "errors"): ERRORS_BY_ROUTE})
    resolved = resolve_analysis([metric(templateRef={"name": "errors"}, args={"route": 'a"} or vector(1) #'})],
                                "llm", lookup)
    [inline] = resolved.metrics
    assert inline.args == {"route": 'a"} or vector(1) #', "unused": "x"}
    assert resolved.prometheus["m"].address == "https://mimir.example.com/prometheus"
    query = metric_query(inline, Target("v2", "llama-v2"), model_name="llama", namespace="llm", interval="1m")
    assert query == 'sum(rate(errors{model="llama-v2",route="a\\"} or vector(1) #"}[1m]))'


def test_unknown_and_missing_args_are_problems_named_in_words() -> None:
    lookup = templates({("MetricTemplate", "llm", "errors"): ERRORS_BY_ROUTE})
    unknown = resolve_analysis([metric(templateRef={"name": "errors"}, args={"route": "a", "rout": "b"})], "llm",
                               lookup)
    assert [p.reason for p in unknown.problems] == ["TemplateArgsInvalid"]
    assert "declares no argument rout" in unknown.problems[0].message
    missing = resolve_analysis([metric(templateRef={"name": "errors"})], "llm", lookup)
    assert "needs the argument(s) route" in missing.problems[0].message


def test_a_missing_template_is_a_problem_and_a_namespaced_one_is_looked_up_in_the_configs_namespace() -> None:
    lookup = templates({("MetricTemplate", "other", "errors"): ERRORS_BY_ROUTE})
    resolved = resolve_analysis([metric(templateRef={"name": "errors"}, args={"route": "a"})], "llm", lookup)
    assert [(p.reason, p.message) for p in resolved.problems] == [
        ("TemplateNotFound", "metric m: MetricTemplate errors (namespace llm) not found")]


def test_a_template_query_using_an_undeclared_arg_is_refused_when_it_reaches_the_operator() -> None:
    spec = {**ERRORS_BY_ROUTE, "args": [{"name": "unused", "default": "x"}]}
    with pytest.raises(ValidationError):  # pydantic does not run CEL: build it without validation
        MetricTemplateSpec.model_validate({**spec, "args": [{"name": "1bad"}]})
    lookup = templates({("MetricTemplate", "llm", "errors"): spec})
    resolved = resolve_analysis([metric(templateRef={"name": "errors"})], "llm", lookup)
    assert "uses undeclared argument(s) route" in resolved.problems[0].message


def test_the_index_keys_templates_by_kind_and_a_cluster_template_by_no_namespace() -> None:
    spec = {"analysis": {"metrics": [
        {"name": "a", "templateRef": {"name": "ttft", "kind": "ClusterMetricTemplate"}},
        {"name": "b", "templateRef": {"name": "errors"}},
        {"name": "c", "builtin": "ErrorRate", "max": 0.1},
    ]}}
    assert template_users("llm", "chat", spec) == {
        ("ClusterMetricTemplate", "", "ttft"): ("llm", "chat"), ("MetricTemplate", "llm", "errors"): ("llm", "chat")}
    assert template_key("ClusterMetricTemplate", "llm", "ttft") == ("ClusterMetricTemplate", "", "ttft")


def test_the_state_machine_sees_a_spec_whose_metrics_are_all_inline() -> None:
    spec = TrafficConfigSpec.model_validate({
        "inferenceService": {"ref": {"name": "chat"}}, "stable": {"version": "v1"},
        "analysis": {"metrics": [{"name": "ttft", "templateRef": {"name": "ttft", "kind": "ClusterMetricTemplate"},
                                  "interval": "2m"}]}})
    resolved_spec, resolved = with_templates(spec, "llm", templates({("ClusterMetricTemplate", "", "ttft"): TTFT}))
    assert resolved.problems == []
    assert resolved_spec.analysis is not None and resolved_spec.analysis.metrics is not None
    [inline] = resolved_spec.analysis.metrics
    assert (inline.builtin, inline.interval, inline.template_ref) == ("TimeToFirstTokenP95", "2m", None)
    assert spec.analysis is not None and spec.analysis.metrics is not None
    assert spec.analysis.metrics[0].template_ref is not None  # the spec itself is untouched
