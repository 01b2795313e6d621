"""How a TrafficConfig's metric that references a template becomes an inline metric. Pure.

The reconciler looks the templates up (from the watch cache) and calls :func:`resolve_analysis`, which hands the
state machine a spec whose metrics are all inline: it never needs to know that templates exist. A template that
is missing, or arguments it does not declare (or lacks), are problems named in words; the reconciler reports them
as a not-Ready condition (reason TemplateNotFound / TemplateArgsInvalid) and takes no step until they are fixed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from model_traffic.kinds.common import GROUP
from model_traffic.kinds.metrictemplate.spec import CLUSTER_KIND, CLUSTER_PLURAL, KIND, PLURAL, MetricTemplateSpec
from model_traffic.kinds.trafficconfig.analysis import ARGS_PREFIX, template_variables
from model_traffic.kinds.trafficconfig.analysis_spec import Metric, Prometheus
from model_traffic.kube import ResourceType

METRIC_TEMPLATE = ResourceType(GROUP, "v1alpha1", PLURAL, KIND)
CLUSTER_METRIC_TEMPLATE = ResourceType(GROUP, "v1alpha1", CLUSTER_PLURAL, CLUSTER_KIND)
TEMPLATE_TYPES = {KIND: METRIC_TEMPLATE, CLUSTER_KIND: CLUSTER_METRIC_TEMPLATE}

TemplateKind = Literal["MetricTemplate", "ClusterMetricTemplate"]
# (kind, namespace ("" for a ClusterMetricTemplate), name) -> the template's object, None when there is none.
TemplateLookup = Callable[[TemplateKind, str, str], dict[str, Any] | None]

_THRESHOLDS = ("min", "max", "min_relative_to_stable", "max_relative_to_stable")


def template_key(kind: str, namespace: str, name: str) -> tuple[str, str, str]:
    """How the index of template users keys a template: a ClusterMetricTemplate has no namespace."""
    return (kind, "" if kind == CLUSTER_KIND else namespace, name)


def template_users(namespace: str, name: str, spec: dict[str, Any]) -> dict[tuple[str, str, str], tuple[str, str]]:
    """template_key of each template a TrafficConfig's metrics reference -> (namespace, name) of the TrafficConfig:
    for a kopf index, so a template's change reconciles exactly its users."""
    out: dict[tuple[str, str, str], tuple[str, str]] = {}
    for metric in ((spec.get("analysis") or {}).get("metrics")) or []:
        ref = (metric or {}).get("templateRef") or {}
        if ref.get("name"):
            out[template_key(str(ref.get("kind") or KIND), namespace, str(ref["name"]))] = (namespace, name)
    return out


@dataclass(frozen=True)
class Problem:
    reason: Literal["TemplateNotFound", "TemplateArgsInvalid"]
    message: str


@dataclass
class ResolvedAnalysis:
    metrics: list[Metric]  # all inline, in the spec's order
    prometheus: dict[str, Prometheus] = field(default_factory=dict)  # a template's own provider, by metric name
    problems: list[Problem] = field(default_factory=list)


def resolve_metric(metric: Metric, template: MetricTemplateSpec, where: str) -> Metric | Problem:
    """``metric`` with the template's definition: the metric's thresholds replace the template's when it sets any,
    its inconclusive and interval replace the template's too; the arguments are the template's defaults with the
    metric's values over them."""
    declared = {a.name: a for a in template.args or []}
    given = dict(metric.args or {})
    unknown = sorted(set(given) - set(declared))
    if unknown:
        return Problem("TemplateArgsInvalid", f"metric {metric.name}: {where} declares no argument "
                       f"{', '.join(unknown)} (it declares: {', '.join(sorted(declared)) or 'none'})")
    missing = sorted(n for n, a in declared.items() if a.default is None and n not in given)
    if missing:
        return Problem("TemplateArgsInvalid", f"metric {metric.name}: {where} needs the argument(s) "
                       f"{', '.join(missing)} in args")
    used = sorted({v[len(ARGS_PREFIX):] for v in template_variables(template.query or "")
                   if v.startswith(ARGS_PREFIX)} - set(declared))
    if used:  # refused at apply time by the template's CEL rule; a template from before that rule lands here
        return Problem("TemplateArgsInvalid", f"metric {metric.name}: the query of {where} uses undeclared "
                       f"argument(s) {', '.join(used)}")
    values = {n: a.default for n, a in declared.items() if a.default is not None} | given
    own_thresholds = any(getattr(metric, t) is not None for t in _THRESHOLDS)
    source = metric if own_thresholds else template
    return Metric(
        name=metric.name, builtin=template.builtin, query=template.query,
        **{t: getattr(source, t) for t in _THRESHOLDS},
        inconclusive=metric.inconclusive or template.inconclusive,
        interval=metric.interval or template.interval,
        args=values or None,
    )


def resolve_analysis(metrics: list[Metric], namespace: str, lookup: TemplateLookup) -> ResolvedAnalysis:
    resolved = ResolvedAnalysis(metrics=[])
    for metric in metrics:
        ref = metric.template_ref
        if ref is None:
            resolved.metrics.append(metric)
            continue
        where = f"{ref.kind} {ref.name}" + ("" if ref.kind == CLUSTER_KIND else f" (namespace {namespace})")
        found = lookup(ref.kind, "" if ref.kind == CLUSTER_KIND else namespace, ref.name)
        if found is None:
            resolved.problems.append(Problem("TemplateNotFound", f"metric {metric.name}: {where} not found"))
            continue
        try:
            template = MetricTemplateSpec.model_validate(found.get("spec") or {})
        except ValidationError as error:  # written before a stricter CRD: named, not guessed at
            first = error.errors()[0]
            loc = ".".join(str(p) for p in first.get("loc", ()))
            resolved.problems.append(Problem("TemplateArgsInvalid", f"metric {metric.name}: {where} is invalid: "
                                             f"spec.{loc}: {first.get('msg')}"))
            continue
        outcome = resolve_metric(metric, template, where)
        if isinstance(outcome, Problem):
            resolved.problems.append(outcome)
            continue
        resolved.metrics.append(outcome)
        if template.prometheus is not None:
            resolved.prometheus[metric.name] = template.prometheus
    return resolved
