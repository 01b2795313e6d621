"""MetricTemplate (namespaced) and ClusterMetricTemplate (cluster-wide): one analysis check, defined once.

A platform team writes "TTFT p95 at most 1.2x the stable version's" once, as Flagger's MetricTemplate and Argo
Rollouts' AnalysisTemplate / ClusterAnalysisTemplate allow; a TrafficConfig's metric references it
(``templateRef``) with arguments (``args``). Two kinds sharing one spec rather than a ConfigMap: a CRD's schema and
CEL rules refuse a broken template at ``kubectl apply`` (an unknown variable, min above max), kubectl get lists
them, and RBAC can let a platform team alone write the cluster-wide ones (docs/progressive-delivery.md).

Templates have no status and no children: the operator only reads them (from its watch cache) when a TrafficConfig
that uses one reconciles, and a template's change reconciles its users.
"""

from __future__ import annotations

from pydantic import Field

from model_traffic.kinds.common import Model, cel, validations
from model_traffic.kinds.trafficconfig.analysis_spec import (
    ARG_NAME_PATTERN,
    DEFINITION_RULES,
    HAS_THRESHOLD,
    MetricDefinition,
    Prometheus,
    query_rule,
)

KIND = "MetricTemplate"
PLURAL = "metrictemplates"
CLUSTER_KIND = "ClusterMetricTemplate"
CLUSTER_PLURAL = "clustermetrictemplates"


class TemplateArg(Model):
    name: str = Field(min_length=1, max_length=63, pattern=ARG_NAME_PATTERN,
                      description="The argument's name: {{ .Args.<name> }} in the query.")
    default: str | None = Field(default=None, max_length=1024,
                                description="Its value when a metric does not give one; required when unset.")
    description: str | None = Field(default=None, max_length=1024, description="What it is for.")


class MetricTemplateSpec(MetricDefinition):
    model_config = Model.model_config | {
        "json_schema_extra": validations(
            cel("has(self.builtin) != has(self.query)", "a template needs exactly one of builtin or query"),
            cel(HAS_THRESHOLD, "a template needs a threshold: min, max, minRelativeToStable or maxRelativeToStable"),
            cel("!has(self.args) || self.args.all(a, self.args.exists_one(b, a.name == b.name))",
                "argument names must be unique"),
            *DEFINITION_RULES,
            query_rule(template=True),
        )
    }

    args: list[TemplateArg] | None = Field(
        default=None, max_length=20, description="Arguments a metric gives (args), each used as {{ .Args.<name> }}.")
    prometheus: Prometheus | None = Field(
        default=None,
        description="Where this check is queried, with its auth (Secrets and ConfigMaps are read in the namespace "
        "of the TrafficConfig that uses the template); the TrafficConfig's analysis.prometheus when unset.",
    )


class MetricTemplate(Model):
    """A reusable analysis check in one namespace, referenced from a TrafficConfig's spec.analysis.metrics."""

    spec: MetricTemplateSpec


class ClusterMetricTemplate(Model):
    """A reusable analysis check for every namespace, referenced with templateRef.kind ClusterMetricTemplate."""

    spec: MetricTemplateSpec
