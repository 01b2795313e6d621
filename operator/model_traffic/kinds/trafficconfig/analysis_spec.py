"""What a TrafficConfig's analysis checks, and where: its metrics, webhooks, Prometheus and steps.

Kept apart from spec.py so that the analysis (kinds/trafficconfig/analysis.py) and the rollout's own fields
each have their own file; spec.py re-exports these names, so TrafficConfigSpec reads as one model.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from model_traffic.kinds.common import DurationBetween, Model, cel, validations
from model_traffic.kinds.virtualmodel.spec import MAX_MATCHES, BackendMatch

# The variables a custom query may use (analysis.render_query substitutes them); refused at apply time otherwise.
TEMPLATE_VARIABLES = ("Version", "ModelName", "ServedModel", "Interval", "Namespace")
KNOWN_TEMPLATE_VARIABLES = ", ".join(f"{{{{ .{v} }}}}" for v in TEMPLATE_VARIABLES)

# Time between checks: at least a second (the reconcile loop's granularity; the tests' fast rollouts use 1s), at most
# a day (a rollout that checks less often than daily is not one). A query window likewise.
AnalysisDuration = Annotated[str, DurationBetween("1s", "24h")]
# A webhook is called from the reconcile, which waits for it: a minute at most (the default).
WebhookTimeout = Annotated[str, DurationBetween("1s", "60s")]


class Metric(Model):
    model_config = Model.model_config | {
        "json_schema_extra": validations(
            cel("has(self.builtin) != has(self.query)", "a metric needs exactly one of builtin or query"),
            cel("has(self.min) || has(self.max) || has(self.maxRelativeToStable) || has(self.minRelativeToStable)",
                "a metric needs a threshold: min, max, minRelativeToStable or maxRelativeToStable"),
            cel("!has(self.min) || !has(self.max) || self.min <= self.max", "min must not exceed max"),
            cel("!has(self.query) || self.query.findAll(r'\\{\\{[^}]*\\}\\}').all(v, v.matches("
                f"r'^\\{{\\{{\\s*\\.({'|'.join(TEMPLATE_VARIABLES)})\\s*\\}}\\}}$'))",
                f"query may only use the template variables {KNOWN_TEMPLATE_VARIABLES}"),
        )
    }

    name: str = Field(min_length=1, max_length=63, description="Name of the check, shown in status.")
    builtin: (
        Literal[
            "ErrorRate", "RequestLatencyP95", "RequestLatencyP99", "TimeToFirstTokenP95",
            "TimePerOutputTokenP95", "OutputTokensPerRequest",
        ]
        | None
    ) = Field(default=None, description="A builtin LLM metric on the AI Gateway's gen_ai_* metrics.")
    query: str | None = Field(
        default=None, max_length=4096,  # the CEL rule on its template variables must fit the API server's budget
        description=f"A PromQL query; {KNOWN_TEMPLATE_VARIABLES} are substituted, escaped for where they stand.",
    )
    min: float | None = Field(default=None, description="Fail below this value.")
    max: float | None = Field(default=None, description="Fail above this value.")
    min_relative_to_stable: float | None = Field(
        default=None, ge=0, description="Fail below this multiple of the stable version's value, same window."
    )
    max_relative_to_stable: float | None = Field(
        default=None, ge=0, description="Fail above this multiple of the stable version's value, same window."
    )
    interval: AnalysisDuration | None = Field(
        default=None, description="Query window (1s to 24h); the analysis interval when unset."
    )


class Webhook(Model):
    name: str = Field(min_length=1, max_length=63, description="Name of the webhook.")
    type: Literal["PreRollout", "Rollout", "PrePromotion", "PostRollout"] = Field(description="When it runs.")
    url: str = Field(min_length=1, max_length=2048, pattern=r"^https?://", description="URL POSTed to.")
    timeout: WebhookTimeout = Field(default="60s", description="How long it may take (1s to 60s).")


class Prometheus(Model):
    address: str = Field(min_length=1, max_length=2048, pattern=r"^https?://", description="Prometheus URL.")


class Analysis(Model):
    model_config = Model.model_config | {
        "json_schema_extra": validations(
            cel("!has(self.stepWeights) || self.stepWeights.all(w, w > 0 && w <= 100)",
                "stepWeights must be in (0, 100]"),
            cel("!has(self.stepWeights) || size(self.stepWeights) < 2 || "
                "self.stepWeights.all(i, self.stepWeights.filter(j, j == i).size() == 1) && "
                "self.stepWeights.all(i, self.stepWeights.all(j, "
                "self.stepWeights.indexOf(i) < self.stepWeights.indexOf(j) ? i < j : true))",
                "stepWeights must be strictly increasing"),
            cel("!(has(self.stepWeights) && has(self.stepWeight))", "set stepWeights or stepWeight, not both"),
            cel("!has(self.maxWeight) || !has(self.stepWeight) || self.stepWeight <= self.maxWeight",
                "stepWeight must not exceed maxWeight"),
            cel("!has(self.metrics) || self.metrics.all(a, self.metrics.exists_one(b, a.name == b.name))",
                "metric names must be unique"),
        )
    }

    interval: AnalysisDuration = Field(default="1m", description="Time between checks (1s to 24h).")
    threshold: int = Field(default=3, ge=1, le=100, description="Failed checks before rollback.")
    step_weights: list[int] | None = Field(default=None, max_length=20, description="Canary weights, in order.")
    step_weight: int | None = Field(default=None, ge=1, le=100, description="Canary weight increment.")
    max_weight: int | None = Field(default=None, ge=1, le=100, description="Last canary weight with stepWeight.")
    iterations: int | None = Field(
        default=None, ge=1, le=1000, description="ABTest / BlueGreen: checks before promotion."
    )
    match: list[BackendMatch] | None = Field(
        default=None, max_length=MAX_MATCHES,
        description="ABTest: who sees the candidate (any of these; all headers of one). The candidate becomes a "
        "header-matched backend of the VirtualModel.",
    )
    prometheus: Prometheus | None = Field(default=None, description="Where metrics are queried.")
    metrics: list[Metric] | None = Field(default=None, max_length=20, description="Checks at each interval.")
    webhooks: list[Webhook] | None = Field(default=None, max_length=10, description="Webhooks at rollout phases.")
    promotion: Literal["Automatic", "Manual"] = Field(default="Automatic", description="How promotion happens.")
