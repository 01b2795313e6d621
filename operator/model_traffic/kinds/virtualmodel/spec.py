"""VirtualModel: the model name clients ask for, mapped to weighted and prioritised backends."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from model_traffic.kinds.backend.spec import ChildRef
from model_traffic.kinds.common import (
    HEADER_VALUE_PATTERN,
    MAX_OWNER_NAME_LENGTH,
    DurationBetween,
    GatewayRef,
    HeaderName,
    HeaderValueText,
    Model,
    ObjectName,
    StatusBase,
    cel,
    name_length_rule,
    validations,
)
from model_traffic.kinds.virtualmodel import costcel

KIND = "VirtualModel"
PLURAL = "virtualmodels"

BackendKind = Literal["ManagedAIServiceBackend", "AIServiceBackend", "InferencePool"]

# The header Envoy AI Gateway fills with the model name read from the request body; every rule of the route
# matches it against the model name.
MODEL_HEADER = "x-ai-eg-model"
# Upstream limits: an AIGatewayRoute (and the HTTPRoute it becomes) allows 16 header matches per match; the
# model header takes one of them.
MAX_MATCH_HEADERS = 15
MAX_MATCHES = 8
# Timeouts Envoy takes: "0s" would switch a timeout off, and a request may not outlive an hour.
RequestDuration = Annotated[str, DurationBetween("1ms", "1h")]


class HeaderMatch(Model):
    """A request header that must be present with exactly this value."""

    model_config = Model.model_config | {
        "json_schema_extra": validations(
            cel(
                f"self.name.lowerAscii() != '{MODEL_HEADER}'",
                f"{MODEL_HEADER} cannot be a match header: every rule of the route already matches it against "
                "the model name (spec.modelName), so a second match on it would be ignored or never match; "
                "to route another model name, write another VirtualModel",
            ),
        )
    }

    name: HeaderName = Field(description="Header name (case-insensitive).")
    # A pattern, not HeaderValueText's CEL rule: 128 backends x 8 matches x 15 headers of CEL exceed the API server's
    # cost budget, a pattern costs nothing. The same expression (Gateway API's HTTPRoute's own).
    value: str = Field(
        min_length=1, max_length=4096, pattern=HEADER_VALUE_PATTERN,
        description="Exact header value: printable ASCII, single spaces or tabs between words.",
    )


class BackendMatch(Model):
    """One alternative: a request matches when it carries ALL of these headers."""

    headers: list[HeaderMatch] = Field(
        min_length=1, max_length=MAX_MATCH_HEADERS,
        description=f"Headers that must all match exactly (at most {MAX_MATCH_HEADERS}: the route's match also "
        f"carries {MODEL_HEADER}). Names are unique; they match case-insensitively, so of names that differ in "
        "case only the first counts (Gateway API).",
        # Unique names as a list map (checked for free): a CEL check of every pair, case-insensitive or not,
        # exceeds the API server's cost budget at 128 backends x 8 matches x 15 headers.
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )


# A namespace name (DNS label).
NamespaceName = Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", min_length=1, max_length=63)]


class BackendReference(Model):
    """One backend of the model, in this namespace unless it names another."""

    name: ObjectName = Field(description="Name of the backend.")
    namespace: NamespaceName | None = Field(
        default=None,
        description="Namespace of a ManagedAIServiceBackend or AIServiceBackend shared by another team; a "
        "ReferenceGrant there must allow it (docs/tenants.md). This namespace when unset.",
    )
    kind: BackendKind = Field(
        default="ManagedAIServiceBackend",
        description="ManagedAIServiceBackend (default), an unmanaged AIServiceBackend, or an InferencePool.",
    )
    model_name_override: HeaderValueText | None = Field(
        default=None, max_length=256, description="Model name sent to this backend instead of the client's."
    )
    weight: int = Field(
        default=1, ge=0, le=1000000, description="Share of the traffic within its priority tier."
    )
    priority: int = Field(
        default=0, ge=0, le=16, description="Fallback tier: 0 first; tier n+1 is used when all of tier n fails."
    )
    matches: list[BackendMatch] | None = Field(
        default=None, min_length=1, max_length=MAX_MATCHES,
        description="Reach this backend only with requests that match one of these (any of them; within one, all "
        "headers). Such requests go to the backends with the same matches only, shared by weight and "
        "priority; all other requests go to the backends without matches. A request matching several "
        "backends' matches goes to the match with the most headers, on a tie to the backend listed first.",
    )


class RetryOn(Model):
    status_codes: list[Annotated[int, Field(ge=100, le=599)]] | None = Field(
        default=None, max_length=16,
        description="HTTP status codes that are retried, e.g. 500, 503 (the retriable-status-codes trigger is "
        "added for them).",
    )
    triggers: (
        list[
            Literal[
                "5xx", "gateway-error", "connect-failure", "retriable-4xx", "retriable-status-codes", "reset",
                "reset-before-request", "refused-stream", "cancelled", "deadline-exceeded", "internal",
                "resource-exhausted", "unavailable",
            ]
        ]
        | None
    ) = Field(default=None, max_length=10, description="Envoy retry triggers.")


class Retry(Model):
    attempts: int = Field(default=2, ge=0, le=10, description="Retries after the first attempt.")
    per_try_timeout: RequestDuration | None = Field(default=None, description="Timeout of each attempt (1ms to 1h).")
    retry_on: RetryOn | None = Field(default=None, description="What is retried.")


class Timeouts(Model):
    request: RequestDuration | None = Field(
        default=None, description="Timeout of the whole request, retries included (1ms to 1h)."
    )


class LoadBalancer(Model):
    model_config = Model.model_config | {
        "json_schema_extra": validations(
            cel("self.type == 'ConsistentHash' || !has(self.hashHeader)",
                "hashHeader applies to the ConsistentHash load balancer only"),
        )
    }

    type: Literal["RoundRobin", "LeastRequest", "Random", "ConsistentHash"] = Field(
        description="How a request picks an endpoint within a backend."
    )
    hash_header: HeaderName | None = Field(
        default=None, description="ConsistentHash: the header hashed (source IP when unset)."
    )


class PassiveHealthCheck(Model):
    consecutive5xx_errors: int | None = Field(
        default=None, alias="consecutive5XxErrors", ge=1, le=1000, description="5xx responses before ejection."
    )
    interval: RequestDuration | None = Field(default=None, description="How often ejection is evaluated.")
    base_ejection_time: RequestDuration | None = Field(default=None, description="How long an endpoint is ejected.")


class HealthCheck(Model):
    passive: PassiveHealthCheck | None = Field(default=None, description="Outlier detection on live traffic.")


# Every unit Envoy Gateway v1.9.1 accepts (api/v1alpha1/ratelimit_types.go, RateLimitUnit's enum).
RateUnit = Literal["Second", "Minute", "Hour", "Day", "Week", "Month", "Year"]
# Envoy Gateway's limit.requests is a uint32 (same file).
MAX_RATE_LIMIT = 4294967295
MAX_TENANT_BUDGETS = 16

# A tenant: what `model-traffic keys` writes as the client id of an API key (a Secret data key, so it must be
# one) and what the tenant header carries. A DNS label, so a rotated key's client id can be <tenant>.<suffix>.
TENANT_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
TenantName = Annotated[str, Field(pattern=TENANT_PATTERN, min_length=1, max_length=40)]
DEFAULT_TENANT_HEADER = "x-tenant-id"
# The Secret `model-traffic keys` writes and spec.auth.apiKey reads by default: Envoy Gateway's format, one data
# key per client id. Envoy Gateway reads it; the operator never does (it is not granted to list or watch Secrets).
DEFAULT_API_KEY_SECRET = "model-traffic-api-keys"


class RateLimitValue(Model):
    limit: int = Field(ge=1, le=MAX_RATE_LIMIT, description="Allowed amount per unit.")
    unit: RateUnit = Field(description="Second, Minute, Hour, Day, Week, Month or Year.")


class TenantBudget(Model):
    """A tenant's own budget, instead of the default one."""

    model_config = Model.model_config | {
        "json_schema_extra": validations(
            cel("has(self.tokens) || has(self.requests)", "a tenant budget needs tokens or requests"),
        )
    }

    tenant: TenantName = Field(
        description="The tenant, as the tenant header carries it; with API keys, its client id (a rotated key's "
        "client id <tenant>.<suffix> counts as the same tenant)."
    )
    tokens: RateLimitValue | None = Field(default=None, description="Its token budget; none when unset.")
    requests: RateLimitValue | None = Field(default=None, description="Its request budget; none when unset.")


class RateLimit(Model):
    """Budgets per tenant, with Envoy Gateway's global rate limit."""

    model_config = Model.model_config | {
        "json_schema_extra": validations(
            cel("has(self.tokens) || has(self.requests) || has(self.tenants)",
                "rateLimit needs tokens, requests or tenants"),
            cel("!has(self.tenants) || self.tenants.all(a, self.tenants.exists_one(b, a.tenant == b.tenant))",
                "each tenant has at most one budget in rateLimit.tenants"),
        )
    }

    tenant_header: HeaderName | None = Field(
        default=None,
        description="One budget per distinct value of this header. With spec.auth it is auth.tenantHeader (set "
        "by the gateway from the authenticated caller, never by the client); without, one shared budget when "
        "unset.",
    )
    tokens: RateLimitValue | None = Field(
        default=None, description="Default token budget of each tenant, charged from the response's total tokens."
    )
    requests: RateLimitValue | None = Field(default=None, description="Default request budget of each tenant.")
    tenants: list[TenantBudget] | None = Field(
        default=None, min_length=1, max_length=MAX_TENANT_BUDGETS,
        description="Tenants with a budget of their own (a tier), which replaces the default one for them.",
    )
    without_tenant: Literal["Shared", "Refused"] = Field(
        default="Shared",
        description="Requests that carry no tenant header: Shared (the default budget, one bucket for all of "
        "them) or Refused (answered 429). With spec.auth there are none: an unauthenticated request is "
        "answered 401 before any budget.",
    )


class APIKeyAuth(Model):
    """API keys in Envoy Gateway's Secret format: one data key per client id, its value the key."""

    secret_refs: list[ObjectName] = Field(
        default_factory=lambda: [DEFAULT_API_KEY_SECRET], min_length=1, max_length=16,
        description=f"Secrets of this namespace holding the keys, read by Envoy Gateway (a client id in several: "
        f"the first Secret's key counts). Default: {DEFAULT_API_KEY_SECRET}, which `model-traffic keys` writes.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    headers: list[HeaderName] = Field(
        default_factory=lambda: ["authorization"], min_length=1, max_length=4,
        description="Request headers the key is read from, in order (a 'Bearer ' prefix is dropped, so OpenAI "
        "clients send it as their api_key). The key is removed before the request goes upstream.",
    )


class JWTAuth(Model):
    """JSON Web Tokens of one issuer, checked against its JWKS."""

    issuer: str = Field(min_length=1, max_length=253, description="The iss the tokens must carry.")
    jwks_uri: str = Field(
        min_length=1, max_length=253, pattern=r"^https?://[^\s]+$",
        description="Where the issuer publishes its JSON Web Key Set.",
    )
    audiences: list[str] | None = Field(
        default=None, min_length=1, max_length=8, description="Accepted aud values; any when unset."
    )
    tenant_claim: str = Field(
        min_length=1, max_length=253, pattern=r"^[A-Za-z0-9_.:/-]+$",
        description="The claim whose value is the tenant (nested claims with dots, e.g. org.id).",
    )


class Auth(Model):
    """Who may call the model; the authenticated caller becomes the tenant."""

    model_config = Model.model_config | {
        "json_schema_extra": validations(
            cel("has(self.apiKey) != has(self.jwt)", "auth needs exactly one of apiKey or jwt"),
            cel(f"self.tenantHeader.lowerAscii() != '{MODEL_HEADER}'"
                " && self.tenantHeader.lowerAscii() != 'authorization'",
                f"tenantHeader cannot be {MODEL_HEADER} or authorization"),
        )
    }

    tenant_header: HeaderName = Field(
        default=DEFAULT_TENANT_HEADER,
        description="The header the gateway sets to the authenticated tenant (the API key's client id, or the "
        "JWT claim); budgets and metrics read it.",
    )
    api_key: APIKeyAuth | None = Field(default=None, description="API keys.")
    jwt: JWTAuth | None = Field(default=None, description="JSON Web Tokens.")


class LLMRequestCost(Model):
    model_config = Model.model_config | {
        "json_schema_extra": validations(
            cel("(self.type == 'CEL') == has(self.cel)", "cel is set exactly when type is CEL"),
        )
    }

    metadata_key: str = Field(min_length=1, max_length=128, description="Dynamic metadata key of the cost.")
    type: Literal[
        "OutputToken", "InputToken", "CachedInputToken", "CacheCreationInputToken", "TotalToken",
        "ReasoningToken", "CEL",
    ] = Field(description="What is counted.")
    cel: str | None = Field(default=None, max_length=4096, description="CEL expression, for type CEL.")

    @field_validator("cel")
    @classmethod
    def _compiles_as_the_ai_gateway_compiles_it(cls, value: str | None) -> str | None:
        # A CRD rule cannot parse CEL held in a string, and the AI Gateway only logs a bad one: the spec is refused
        # when read (Stalled, InvalidSpec, the parser's message). See model_traffic.kinds.virtualmodel.costcel.
        if value is not None and (problem := costcel.problem(value)):
            raise ValueError(problem)
        return value


# How spec.auth and spec.rateLimit must agree; a TrafficConfig, which passes both on to its VirtualModel, checks
# the same rules so that what it accepts its VirtualModel accepts too.
AUTH_RATE_LIMIT_RULES = (
    cel(
        "!has(self.auth) || !has(self.rateLimit) || !has(self.rateLimit.tenantHeader)"
        " || self.rateLimit.tenantHeader.lowerAscii() == self.auth.tenantHeader.lowerAscii()",
        "rateLimit.tenantHeader must be auth.tenantHeader (or unset): budgets key on the authenticated tenant",
    ),
    cel(
        "!has(self.rateLimit) || has(self.auth) || has(self.rateLimit.tenantHeader)"
        " || (!has(self.rateLimit.tenants)"
        " && (!has(self.rateLimit.withoutTenant) || self.rateLimit.withoutTenant == 'Shared'))",
        "rateLimit.tenants and withoutTenant need a tenant: set spec.auth or rateLimit.tenantHeader",
    ),
)


class VirtualModelSpec(Model):
    """A client-facing model name and where its traffic goes."""

    model_config = Model.model_config | {
        "json_schema_extra": validations(
            cel(
                # Per kind, whatever the namespace: comparing namespaces too exceeds the API server's CEL cost
                # budget at 128 backends.
                "self.backends.all(a, self.backends.exists_one(b, a.name == b.name && a.kind == b.kind))",
                "backend names must be unique (per kind, across namespaces)",
            ),
            cel(
                "self.backends.exists(b, !has(b.matches))",
                "at least one backend must have no matches: it serves the requests that match none",
            ),
            cel(
                "!self.backends.exists(b, !has(b.matches))"
                " || self.backends.exists(b, !has(b.matches) && b.priority == 0 && b.weight > 0)",
                "tier 0 (priority 0) needs at least one backend with a positive weight among the backends "
                "without matches",
            ),
            cel(
                "self.backends.all(b, b.kind != 'InferencePool' || !has(b.namespace))",
                "an InferencePool is routed in the VirtualModel's namespace only (AI Gateway routes no other)",
            ),
            *AUTH_RATE_LIMIT_RULES,
            cel(
                "self.backends.all(p, p.kind != 'InferencePool' || has(p.matches)"
                " || self.backends.all(o, has(o.matches) || o.priority != p.priority || o == p))",
                "an InferencePool must be alone in its priority tier",
            ),
        )
    }

    model_name: HeaderValueText | None = Field(
        default=None, max_length=256,
        description="Model name clients send (x-ai-eg-model); defaults to metadata.name.",
    )
    gateway_refs: list[GatewayRef] | None = Field(
        default=None, max_length=16, description="Gateways serving the model; defaults from operator settings."
    )
    backends: list[BackendReference] = Field(
        min_length=1, max_length=128, description="Backends, weighted within a tier, tiers by priority."
    )
    retry: Retry | None = Field(default=None, description="Retries; a default applies when fallback tiers exist.")
    timeouts: Timeouts | None = Field(default=None, description="Request timeouts.")
    load_balancer: LoadBalancer | None = Field(default=None, description="Endpoint selection within a backend.")
    health_check: HealthCheck | None = Field(default=None, description="Passive health checking.")
    auth: Auth | None = Field(
        default=None, description="Authentication: API keys or JWT; the caller's identity is the tenant."
    )
    rate_limit: RateLimit | None = Field(default=None, description="Token and request budgets per tenant.")
    llm_request_costs: list[LLMRequestCost] | None = Field(
        default=None, max_length=36, description="Token accounting; total tokens when unset."
    )


class BackendStatus(Model):
    name: str = Field(description="Backend name.")
    namespace: str | None = Field(default=None, description="Its namespace, when not the VirtualModel's.")
    kind: str = Field(description="Backend kind.")
    tier: int = Field(description="Priority tier.")
    share_percent: float = Field(
        description="Effective share of its tier's traffic, in percent; for a backend with matches, of the "
        "requests matching them (see onlyMatching)."
    )
    ready: bool = Field(description="Whether the backend is resolved and ready.")
    only_matching: str | None = Field(
        default=None,
        description="For a backend with matches: the requests it serves, e.g. 'x-canary: true'. It takes no "
        "part in the share of the other requests.",
    )


class VirtualModelStatus(StatusBase):
    model_name: str | None = Field(default=None, description="The model name served.")
    route: str | None = Field(default=None, description="Name of the AIGatewayRoute.")
    backends: list[BackendStatus] = Field(default_factory=list, description="Each backend as routed.")
    backend_summary: str | None = Field(default=None, description="Ready backends of all, for kubectl get.")
    address: str | None = Field(default=None, description="Address clients call, from the Gateway's status.")
    children: list[ChildRef] = Field(default_factory=list, description="Objects the operator owns for this one.")


ROOT_VALIDATIONS = [
    name_length_rule(MAX_OWNER_NAME_LENGTH, "it is the value of the modeltraffic.io/owner-name label of the "
                     "AIGatewayRoute and BackendTrafficPolicy written for it"),
]


class VirtualModel(Model):
    spec: VirtualModelSpec
    status: VirtualModelStatus | None = None


__all__ = ["DEFAULT_API_KEY_SECRET", "DEFAULT_TENANT_HEADER", "KIND", "MODEL_HEADER", "PLURAL", "TENANT_PATTERN",
           "Auth", "BackendMatch", "HeaderMatch", "ObjectName", "RateLimit", "VirtualModelSpec", "VirtualModelStatus"]
