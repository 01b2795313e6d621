"""What a TrafficConfig's analysis checks, and where: its metrics, webhooks, Prometheus and steps.

Kept apart from spec.py so that the analysis (kinds/trafficconfig/analysis.py) and the rollout's own fields
each have their own file; spec.py re-exports these names, so TrafficConfigSpec reads as one model. The metric
templates (kinds/metrictemplate) share :class:`MetricDefinition` with an inline metric.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from model_traffic.kinds.common import (
    DurationBetween,
    HeaderName,
    HeaderValueText,
    LocalObjectReference,
    Model,
    ObjectName,
    cel,
    validations,
)
from model_traffic.kinds.virtualmodel.spec import MAX_MATCHES, BackendMatch

# The variables a custom query may use (analysis.render_query substitutes them); refused at apply time otherwise.
TEMPLATE_VARIABLES = ("Version", "ModelName", "ServedModel", "Interval", "Namespace")
KNOWN_TEMPLATE_VARIABLES = ", ".join(f"{{{{ .{v} }}}}" for v in TEMPLATE_VARIABLES)
# A metric template's own arguments are {{ .Args.<name> }}; their names are Go-template field names.
ARG_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
_BUILTIN_VARIABLE = f"r'^\\{{\\{{\\s*\\.({'|'.join(TEMPLATE_VARIABLES)})\\s*\\}}\\}}$'"
# A template's query may also use its arguments. Whether each is declared is the operator's check
# (TemplateArgsInvalid): a CEL rule comparing every variable with every declared name exceeds the API server's cost
# budget several times over for a 4096-character query.
_TEMPLATE_VARIABLE = f"r'^\\{{\\{{\\s*\\.({'|'.join(TEMPLATE_VARIABLES)}|Args\\.[A-Za-z_][A-Za-z0-9_]*)\\s*\\}}\\}}$'"

# Time between checks: at least a second (the reconcile loop's granularity; the tests' fast rollouts use 1s), at most
# a day (a rollout that checks less often than daily is not one). A query window likewise.
AnalysisDuration = Annotated[str, DurationBetween("1s", "24h")]
# How long a webhook may take: it runs beside the reconcile (never holding a worker), which looks for its answer
# and fails the check once this has passed.
WebhookTimeout = Annotated[str, DurationBetween("1s", "10m")]

Builtin = Literal[
    "ErrorRate", "RequestLatencyP95", "RequestLatencyP99", "TimeToFirstTokenP95",
    "TimePerOutputTokenP95", "OutputTokensPerRequest",
]


# --- values kept in Secrets and ConfigMaps (read by name with a GET, in the TrafficConfig's namespace) -------------

class KeyReference(Model):
    name: ObjectName = Field(description="Name of the object, in the TrafficConfig's namespace.")
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="Key in its data.")


class SecretValue(Model):
    secret_key_ref: KeyReference = Field(description="A key of a Secret in the TrafficConfig's namespace.")


class CABundle(Model):
    model_config = Model.model_config | {
        "json_schema_extra": validations(
            cel("has(self.secretKeyRef) != has(self.configMapKeyRef)",
                "ca needs exactly one of secretKeyRef or configMapKeyRef"),
        )
    }

    secret_key_ref: KeyReference | None = Field(default=None, description="PEM certificates in a Secret key.")
    config_map_key_ref: KeyReference | None = Field(
        default=None, description="PEM certificates in a ConfigMap key (e.g. a trust-manager bundle).")


class Header(Model):
    model_config = Model.model_config | {
        "json_schema_extra": validations(
            cel("has(self.value) != has(self.valueFrom)", "a header needs exactly one of value or valueFrom"),
        )
    }

    name: HeaderName = Field(description="Header name, e.g. X-Scope-OrgID.")
    value: HeaderValueText | None = Field(default=None, description="The value, as written.")
    value_from: SecretValue | None = Field(
        default=None, description="The value from a Secret: never shown in status, Events or logs.")


_UNIQUE_HEADERS = cel("self.all(a, self.exists_one(b, a.name.lowerAscii() == b.name.lowerAscii()))",
                      "header names must be unique")
# What the operator sets itself. Prometheus' Authorization comes from secretRef; a webhook's may be a header (from a
# Secret), as a webhook receiver's auth is whatever it asks for.
Headers = Annotated[list[Header], Field(max_length=16, json_schema_extra=validations(
    _UNIQUE_HEADERS,
    cel("self.all(h, !(h.name.lowerAscii() in ['authorization', 'content-type', 'content-length', 'host']))",
        "headers may not set Authorization (use secretRef), Content-Type, Content-Length or Host"),
))]
WebhookHeaders = Annotated[list[Header], Field(max_length=16, json_schema_extra=validations(
    _UNIQUE_HEADERS,
    cel("self.all(h, !(h.name.lowerAscii() in ['content-type', 'content-length', 'host', "
        "'x-model-traffic-signature']))",
        "headers may not set Content-Type, Content-Length, Host or X-Model-Traffic-Signature (use signature)"),
))]


class Prometheus(Model):
    address: str = Field(min_length=1, max_length=2048, pattern=r"^https?://", description="Prometheus URL.")
    secret_ref: LocalObjectReference | None = Field(
        default=None,
        description="A Secret in the TrafficConfig's namespace with the key token (bearer auth) or the keys "
        "username and password (basic auth), as Flagger's provider.secretRef. Read with a GET at each check.",
    )
    ca: CABundle | None = Field(
        default=None, description="CA certificates to verify an https address by, instead of the system's.")
    headers: Headers | None = Field(
        default=None, description="Extra request headers, e.g. X-Scope-OrgID for Mimir, Cortex or Thanos.")


# --- metrics ----------------------------------------------------------------------------------------------------

class Inconclusive(Model):
    """Where a value that passes the fail thresholds is still not good enough to go on: Inconclusive."""

    model_config = Model.model_config | {
        "json_schema_extra": validations(
            cel("has(self.min) || has(self.max) || has(self.minRelativeToStable) || has(self.maxRelativeToStable) "
                "|| (has(self.noData) && self.noData)",
                "inconclusive needs a bound (min, max, minRelativeToStable, maxRelativeToStable) or noData: true"),
        )
    }

    min: float | None = Field(default=None, description="Inconclusive below this value.")
    max: float | None = Field(default=None, description="Inconclusive above this value.")
    min_relative_to_stable: float | None = Field(
        default=None, ge=0, description="Inconclusive below this multiple of the stable version's value.")
    max_relative_to_stable: float | None = Field(
        default=None, ge=0, description="Inconclusive above this multiple of the stable version's value.")
    no_data: bool | None = Field(
        default=None, description="No data (for the candidate, or the stable a relative bound needs) is "
        "Inconclusive instead of a failed check.")


def query_rule(template: bool = False) -> dict[str, str]:
    allowed = f"v.matches({_TEMPLATE_VARIABLE if template else _BUILTIN_VARIABLE})"
    known = KNOWN_TEMPLATE_VARIABLES + (" and {{ .Args.<name> }}" if template else "")
    return cel(f"!has(self.query) || self.query.findAll(r'\\{{\\{{[^}}]*\\}}\\}}').all(v, {allowed})",
               f"query may only use the template variables {known}")


DEFINITION_RULES = (
    cel("!has(self.min) || !has(self.max) || self.min <= self.max", "min must not exceed max"),
    cel("!has(self.inconclusive) || !has(self.inconclusive.max) || !has(self.max) || self.inconclusive.max <= "
        "self.max", "inconclusive.max must not exceed max (above max the check fails)"),
    cel("!has(self.inconclusive) || !has(self.inconclusive.min) || !has(self.min) || self.inconclusive.min >= "
        "self.min", "inconclusive.min must not be below min (below min the check fails)"),
    cel("!has(self.inconclusive) || !has(self.inconclusive.maxRelativeToStable) || !has(self.maxRelativeToStable) "
        "|| self.inconclusive.maxRelativeToStable <= self.maxRelativeToStable",
        "inconclusive.maxRelativeToStable must not exceed maxRelativeToStable"),
    cel("!has(self.inconclusive) || !has(self.inconclusive.minRelativeToStable) || !has(self.minRelativeToStable) "
        "|| self.inconclusive.minRelativeToStable >= self.minRelativeToStable",
        "inconclusive.minRelativeToStable must not be below minRelativeToStable"),
)
HAS_THRESHOLD = "has(self.min) || has(self.max) || has(self.maxRelativeToStable) || has(self.minRelativeToStable)"


class MetricDefinition(Model):
    """What a check measures and its thresholds: a metric of spec.analysis.metrics, or a metric template."""

    builtin: Builtin | None = Field(
        default=None, description="A builtin LLM metric on the AI Gateway's gen_ai_* metrics.")
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
    inconclusive: Inconclusive | None = Field(
        default=None,
        description="An Inconclusive range inside the fail thresholds (or no data): such a check neither passes "
        "nor counts toward rollback; it pauses the rollout (reason Inconclusive) until a resume request.",
    )
    interval: AnalysisDuration | None = Field(
        default=None, description="Query window (1s to 24h); the analysis interval when unset."
    )


class TemplateRef(Model):
    name: ObjectName = Field(description="Name of the template.")
    kind: Literal["MetricTemplate", "ClusterMetricTemplate"] = Field(
        default="MetricTemplate",
        description="MetricTemplate (in the TrafficConfig's namespace) or ClusterMetricTemplate (cluster-wide).",
    )


ArgValue = Annotated[str, Field(max_length=1024)]


class Metric(MetricDefinition):
    model_config = Model.model_config | {
        "json_schema_extra": validations(
            cel("[has(self.builtin), has(self.query), has(self.templateRef)].filter(x, x).size() == 1",
                "a metric needs exactly one of builtin, query or templateRef"),
            cel(f"has(self.templateRef) || {HAS_THRESHOLD}",
                "a metric needs a threshold: min, max, minRelativeToStable or maxRelativeToStable (or a templateRef "
                "whose template has one)"),
            cel("!has(self.args) || has(self.templateRef)", "args apply to a templateRef only"),
            cel(f"!has(self.args) || self.args.all(k, k.matches(r'{ARG_NAME_PATTERN}'))",
                "arg names must be letters, digits and _, not starting with a digit"),
            *DEFINITION_RULES,
            query_rule(),
        )
    }

    name: str = Field(min_length=1, max_length=63, description="Name of the check, shown in status.")
    template_ref: TemplateRef | None = Field(
        default=None,
        description="Take the check from a MetricTemplate or ClusterMetricTemplate: its query, thresholds, "
        "inconclusive range, interval and Prometheus. Thresholds set here replace the template's (all of them "
        "when any is set), as do inconclusive and interval.",
    )
    args: dict[str, ArgValue] | None = Field(
        default=None, max_length=20,
        description="Values of the template's arguments ({{ .Args.<name> }} in its query), escaped for where they "
        "stand like the other variables. An argument the template does not declare is refused (not Ready).",
    )


class WebhookSignature(Model):
    secret_key_ref: KeyReference = Field(
        description="The HMAC key: X-Model-Traffic-Signature: sha256=<hex HMAC-SHA256 of the exact body>.")


class Webhook(Model):
    name: str = Field(min_length=1, max_length=63, description="Name of the webhook.")
    type: Literal["PreRollout", "Rollout", "PrePromotion", "PostRollout"] = Field(description="When it runs.")
    url: str = Field(min_length=1, max_length=2048, pattern=r"^https?://", description="URL POSTed to.")
    timeout: WebhookTimeout = Field(
        default="60s",
        description="How long it may take (1s to 10m), enforced: no answer by then fails the check. The call runs "
        "beside the reconcile, which never waits for it.",
    )
    headers: WebhookHeaders | None = Field(
        default=None, description="Extra request headers (Authorization included), from values or Secrets.")
    signature: WebhookSignature | None = Field(
        default=None, description="Sign the body with a key from a Secret, so the receiver can tell it is ours.")


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
    prometheus: Prometheus | None = Field(
        default=None, description="Where metrics are queried (a template's own Prometheus wins for its metrics).")
    metrics: list[Metric] | None = Field(default=None, max_length=20, description="Checks at each interval.")
    webhooks: list[Webhook] | None = Field(default=None, max_length=10, description="Webhooks at rollout phases.")
    promotion: Literal["Automatic", "Manual"] = Field(default="Automatic", description="How promotion happens.")


# --- status -----------------------------------------------------------------------------------------------------

class WebhookCall(Model):
    """A webhook call under way (it runs beside the reconcile): a restart finds it here and calls again."""

    name: str = Field(description="The webhook's name.")
    type: str = Field(description="Its type (PreRollout, Rollout, PrePromotion).")
    started: str = Field(description="When it was first called for this check (RFC 3339).")
