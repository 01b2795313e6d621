"""VirtualModel: spec + observed world -> desired AIGatewayRoute, BackendTrafficPolicy, status and verdict.

Pure: no client, no clock. The reconciler gathers :class:`VirtualModelWorld` and writes what
:func:`render` returns.

Routing, as Envoy AI Gateway and Envoy Gateway do it:

- Every AIServiceBackend (a ManagedAIServiceBackend routed at backend level, or an unmanaged one) goes
  into ONE rule matching ``x-ai-eg-model: <modelName>``; weights split traffic within a priority, and
  priorities are fallback tiers (Envoy priorities on the rule's endpoints).
- An InferencePool (``kind: InferencePool``, or a ManagedAIServiceBackend whose status says
  ``routing: InferencePool``) gets a rule of its own with the same match: the upstream CEL rules forbid
  mixing it with AIServiceBackends in a rule and allow one per rule.
- The AI Gateway turns each rule into one rule of an HTTPRoute of the same name, in the same order, each
  match with the same path prefix (internal/controller/ai_gateway_route.go, newHTTPRoute), plus a
  catch-all ``route-not-found`` rule last. Gateway API gives a request whose matches tie to the FIRST such
  rule, so of several rules with the same match only the first carries traffic. The rules are ordered by
  tier (tier 0 first) and the status says which backends sit in a rule that cannot be reached (detail
  condition ``AllBackendsReachable``).

Header-matched backends (``backends[].matches``): the backends with the same matches form a *path* of
their own, rendered like the default path above but with every match extended by the extra headers
(``x-ai-eg-model`` plus all headers of one alternative). These rules come BEFORE the default path's, and
each of their matches carries more header matches than the default rule's, so they win both ways:
Gateway API precedence ("largest number of header matches", then the first rule in list order) and Envoy
Gateway's implementation of it (internal/gatewayapi/sort.go: a stable sort, by header-match count among
others, that keeps list order on ties; or list order alone with ``preserveRouteOrder``). Two paths with
the same alternative: the later one never sees it, so it is left out of the later rule and reported.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from model_traffic import kube
from model_traffic.kinds.common import GatewayRef
from model_traffic.kinds.virtualmodel.spec import (
    MODEL_HEADER,
    BackendReference,
    RateLimit,
    RateLimitValue,
    Retry,
    VirtualModelSpec,
)
from model_traffic.kube import ResourceType
from model_traffic.pipeline.acceptance import AWAITING_CONTROLLERS
from model_traffic.pipeline.conditions import Detail, Verdict
from model_traffic.pipeline.plan import Child, Plan

# Where the AI Gateway filter stores what llmRequestCosts capture (Envoy dynamic metadata namespace).
AI_GATEWAY_METADATA_NAMESPACE = "io.envoy.ai_gateway"
DEFAULT_LLM_REQUEST_COSTS: list[dict[str, str]] = [{"metadataKey": "llm_total_token", "type": "TotalToken"}]
GATEWAY_API_GROUP = "gateway.networking.k8s.io"

# Upstream limits of AIGatewayRoute (v1alpha1 and v1beta1).
MAX_RULES = 15
MAX_BACKEND_REFS_PER_RULE = 128

# Envoy AI Gateway's documented provider-fallback retry (docs: capabilities/traffic/provider-fallback):
# one attempt per priority, so a failed request moves to the next tier instead of retrying the same one.
# The documented per-try timeout (30s) is left out: it would cut long completions; the request timeout
# (spec.timeouts.request, else the AI Gateway's 60s) bounds the attempts.
DEFAULT_FALLBACK_RETRY: dict[str, Any] = {
    "numAttemptsPerPriority": 1,
    "numRetries": 5,
    "perRetry": {"backOff": {"baseInterval": "100ms", "maxInterval": "10s"}},
    "retryOn": {"triggers": ["5xx", "connect-failure"]},
}

Routing = Literal["Backend", "InferencePool"]


@dataclass(frozen=True)
class ObservedBackend:
    """One referenced backend as observed. Absence is ``None`` in :attr:`VirtualModelWorld.backends`."""

    ready: bool
    routing: Routing = "Backend"
    inference_pool: str | None = None  # for routing == InferencePool
    message: str = ""  # why it is not ready, when it is not
    # In another namespace whose ReferenceGrants do not allow the reference (message: which grant is missing).
    not_permitted: bool = False

    @classmethod
    def from_managed_backend(cls, obj: dict[str, Any]) -> ObservedBackend:
        """A ManagedAIServiceBackend: its status says whether it is Ready and how it is routed."""
        status = obj.get("status") or {}
        ready_cond = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
        ready = bool(ready_cond and ready_cond.get("status") == "True")
        generation = (obj.get("metadata") or {}).get("generation")
        observed = status.get("observedGeneration")
        if ready and generation is not None and observed is not None and observed < generation:
            return cls(ready=False, message="its operator has not yet reconciled its latest spec")
        routing: Routing = "InferencePool" if status.get("routing") == "InferencePool" else "Backend"
        pool = status.get("inferencePool")
        if ready and routing == "InferencePool" and not pool:
            return cls(ready=False, routing=routing, message="its status names no InferencePool")
        message = ""
        if ready_cond is None:
            message = "it has no Ready condition yet"
        elif not ready and ready_cond.get("reason") == AWAITING_CONTROLLERS:
            # Not its message, which names each child still awaited and changes as each controller reports: a
            # status write of every VirtualModel on it per report, with nothing new to say at this level.
            message = f"{AWAITING_CONTROLLERS}: Envoy Gateway and AI Gateway have not yet reported on all its children"
        elif not ready:
            message = f"{ready_cond.get('reason')}: {ready_cond.get('message')}"
        return cls(ready=ready, routing=routing, inference_pool=pool, message=message)


BackendKey = tuple[str, str]  # (kind, name), the name as namespace/name for a backend of another namespace


@dataclass(frozen=True)
class VirtualModelWorld:
    """What the reconciler observed; None means 'not there / not looked at'."""

    namespace: str
    name: str
    ai_gateway_version: str | None  # v1beta1 / v1alpha1; None when AI Gateway's CRDs are not installed
    default_gateway: GatewayRef | None = None
    backends: dict[BackendKey, ObservedBackend | None] = field(default_factory=dict)
    claimed_elsewhere: str | None = None  # "namespace/name" of an older VirtualModel serving the same model
    gateway_address: str | None = None


# --- helpers, public for the reconciler and the tests ------------------------------------------------

# The references a backend of another namespace needs, each allowed by a ReferenceGrant in that namespace
# (from group, from kind, to group, to kind): AI Gateway checks its AIGatewayRoute's reference to the
# AIServiceBackend (v1.0.0 internal/controller/referencegrant.go), and Envoy Gateway the reference of the
# HTTPRoute the AI Gateway generates to the Backend (Gateway API; AI Gateway writes the Backend's namespace into it,
# internal/controller/ai_gateway_route.go, newHTTPRoute).
AI_GATEWAY_GROUP = "aigateway.envoyproxy.io"
ROUTE_TO_AI_SERVICE_BACKEND = (AI_GATEWAY_GROUP, "AIGatewayRoute", AI_GATEWAY_GROUP, "AIServiceBackend")
HTTP_ROUTE_TO_BACKEND = (GATEWAY_API_GROUP, "HTTPRoute", "gateway.envoyproxy.io", "Backend")


def _grants(grant: dict[str, Any], need: tuple[str, str, str, str], from_namespace: str, name: str) -> bool:
    from_group, from_kind, to_group, to_kind = need
    spec = grant.get("spec") or {}
    allowed_from = any(f.get("group", "") == from_group and f.get("kind") == from_kind
                       and f.get("namespace") == from_namespace for f in spec.get("from") or [])
    # A `to` entry with a name allows that object only (Gateway API); AI Gateway v1.0.0 ignores the name, so an
    # entry naming another AIServiceBackend is refused here although AI Gateway would take it.
    allowed_to = any(t.get("group", "") == to_group and t.get("kind") == to_kind and t.get("name") in (None, "", name)
                     for t in spec.get("to") or [])
    return allowed_from and allowed_to


def missing_grants(grants: list[dict[str, Any]], from_namespace: str, to_namespace: str, ai_service_backend: str,
                   envoy_backend: str | None) -> list[str]:
    """What no ReferenceGrant of ``to_namespace`` allows a route of ``from_namespace`` to reach, in words."""
    needs = [(ROUTE_TO_AI_SERVICE_BACKEND, ai_service_backend)]
    if envoy_backend:
        needs.append((HTTP_ROUTE_TO_BACKEND, envoy_backend))
    return [f"{need[1]} of {from_namespace} to {need[3]} {to_namespace}/{name}" for need, name in needs
            if not any(_grants(g, need, from_namespace, name) for g in grants)]


def model_name(spec: VirtualModelSpec, name: str) -> str:
    return spec.model_name or name


def parse_gateway(value: str | None) -> GatewayRef | None:
    """The operator's default gateway setting: ``namespace/name`` or ``name``."""
    if not value or not value.strip():
        return None
    namespace, _, name = value.strip().rpartition("/")
    try:
        return GatewayRef(name=name, namespace=namespace or None)
    except ValidationError:
        return None


def gateway_refs(spec: VirtualModelSpec, default: GatewayRef | None) -> list[GatewayRef]:
    return list(spec.gateway_refs) if spec.gateway_refs else ([default] if default else [])


def gateway_keys(refs: list[GatewayRef], namespace: str) -> set[tuple[str, str]]:
    """(namespace, name) of each Gateway, the namespace defaulted the way the route's parentRefs are."""
    return {(ref.namespace or namespace, ref.name) for ref in refs}


def gateway_address(gateway: dict[str, Any] | None, section_name: str | None = None) -> str | None:
    """The address clients call, from a Gateway's status (with the listener's port unless 80 or 443)."""
    if not gateway:
        return None
    addresses = (gateway.get("status") or {}).get("addresses") or []
    value = next((a.get("value") for a in addresses if a.get("value")), None)
    if not value:
        return None
    listeners = (gateway.get("spec") or {}).get("listeners") or []
    listener = next((x for x in listeners if section_name and x.get("name") == section_name), None)
    listener = listener or next(iter(listeners), None)
    port = listener.get("port") if listener else None
    host = f"[{value}]" if ":" in value else value
    if port and port not in (80, 443):
        return f"{host}:{port}"
    return str(value)


def llm_request_costs(spec: VirtualModelSpec) -> list[dict[str, Any]]:
    if spec.llm_request_costs:
        return [cost.wire() for cost in spec.llm_request_costs]
    return [dict(cost) for cost in DEFAULT_LLM_REQUEST_COSTS]


def token_cost_key(spec: VirtualModelSpec) -> str:
    """The metadata key the token budget is charged from: the TotalToken cost, else the first cost."""
    costs = llm_request_costs(spec)
    total = next((c for c in costs if c["type"] == "TotalToken"), None)
    return str((total or costs[0])["metadataKey"])


def _qualified(ref: BackendReference) -> str:
    return f"{ref.namespace}/{ref.name}" if ref.namespace else ref.name


def _describe(ref: BackendReference) -> str:
    return f"{ref.kind} {_qualified(ref)}"


def backend_key(ref: BackendReference) -> BackendKey:
    """How the world and the status know a backend: (kind, name), or (kind, namespace/name) across namespaces."""
    return (ref.kind, _qualified(ref))


_key = backend_key


def _percent(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 2) if whole > 0 else 0.0


# --- the pieces of the plan -------------------------------------------------------------------------

@dataclass(frozen=True)
class _Resolved:
    ref: BackendReference
    pool: str | None  # route-level InferencePool, or None for an AIServiceBackend


@dataclass(frozen=True)
class _LeftOut:
    missing: bool  # not found (else: not Ready, or not permitted)
    message: str
    not_permitted: bool = False


def _resolve(spec: VirtualModelSpec, world: VirtualModelWorld) -> tuple[list[_Resolved], dict[BackendKey, _LeftOut]]:
    """The backends that can go into the route; and why each of the others is left out, in spec order."""
    resolved: list[_Resolved] = []
    left_out: dict[BackendKey, _LeftOut] = {}
    for ref in spec.backends:
        seen = world.backends.get(_key(ref))
        if seen is None:
            left_out[_key(ref)] = _LeftOut(True, f"{_describe(ref)} not found")
        elif seen.not_permitted:
            left_out[_key(ref)] = _LeftOut(False, f"{_describe(ref)} not permitted: {seen.message}", True)
        elif not seen.ready:
            left_out[_key(ref)] = _LeftOut(
                False, f"{_describe(ref)} not Ready" + (f" ({seen.message})" if seen.message else ""))
        elif ref.kind == "InferencePool":
            resolved.append(_Resolved(ref, ref.name))
        elif seen.routing == "InferencePool" and seen.inference_pool:
            resolved.append(_Resolved(ref, seen.inference_pool))
        else:
            resolved.append(_Resolved(ref, None))
    return resolved, left_out


def _backend_ref(item: _Resolved) -> dict[str, Any]:
    ref = item.ref
    out: dict[str, Any]
    if item.pool is not None:
        # Priority is ignored upstream for InferencePool references; the rule carries the pool alone.
        out = {"group": kube.INFERENCE_POOL.group, "kind": "InferencePool", "name": item.pool}
    else:
        out = {"name": ref.name, "weight": ref.weight, "priority": ref.priority}
        if ref.namespace:
            out["namespace"] = ref.namespace  # AI Gateway checks a ReferenceGrant for it (referencegrant.go)
    if ref.model_name_override:
        out["modelNameOverride"] = ref.model_name_override
    return out


Header = tuple[str, str]  # (name as written, value)
Alternative = tuple[Header, ...]  # one entry of backends[].matches: all its headers must match


def _alternative_key(alt: Alternative) -> frozenset[tuple[str, str]]:
    return frozenset((name.lower(), value) for name, value in alt)


def alternatives(ref: BackendReference) -> list[Alternative]:
    """A backend's matches as header tuples, the way Gateway API reads them: of headers with equivalent
    names (case-insensitive: x-a and X-A, which the CRD's list map lets through) only the first counts, the
    model header is the route's own (refused by the CRD; guarded here for an outdated one), and a repeated
    alternative is one."""
    out: list[Alternative] = []
    seen: set[frozenset[tuple[str, str]]] = set()
    for match in ref.matches or []:
        names = {MODEL_HEADER}
        headers: list[Header] = []
        for header in match.headers:
            if header.name.lower() not in names:
                names.add(header.name.lower())
                headers.append((header.name, header.value))
        key = _alternative_key(tuple(headers))
        if headers and key not in seen:
            seen.add(key)
            out.append(tuple(headers))
    return out


def describe_alternatives(alts: list[Alternative]) -> str:
    """``x-canary: true``; ``x-team: ml and x-env: prod; or x-beta: 1``."""
    return "; or ".join(" and ".join(f"{name}: {value}" for name, value in alt) for alt in alts)


@dataclass
class _Path:
    """The backends that serve the same requests: the default path (no matches), or the backends with the
    same matches."""

    default: bool
    refs: list[BackendReference] = field(default_factory=list)  # in spec order
    written: list[Alternative] = field(default_factory=list)  # the matches; [] for the default path
    live: list[Alternative] = field(default_factory=list)  # written minus those an earlier path took
    taken_by: dict[Alternative, _Path] = field(default_factory=dict)  # written but taken by an earlier path

    def describe(self) -> str:
        return ", ".join(_describe(ref) for ref in self.refs)


def _paths(spec: VirtualModelSpec) -> list[_Path]:
    """The matched paths in the order their first backend is listed, then the default path."""
    default = _Path(default=True)
    matched: dict[frozenset[frozenset[tuple[str, str]]], _Path] = {}
    for ref in spec.backends:
        if ref.matches is None:
            default.refs.append(ref)
            continue
        alts = alternatives(ref)
        key = frozenset(_alternative_key(alt) for alt in alts)
        matched.setdefault(key, _Path(default=False, written=alts)).refs.append(ref)
    taken: dict[frozenset[tuple[str, str]], _Path] = {}
    for path in matched.values():
        for alt in path.written:
            owner = taken.setdefault(_alternative_key(alt), path)
            if owner is path:
                path.live.append(alt)
            else:
                path.taken_by[alt] = owner
    return [*matched.values(), default]


@dataclass
class _Layout:
    """The route's rules and what they leave out."""

    rules: list[tuple[_Path, list[_Resolved]]]  # in route order: matched paths first, the default path last
    live_rules: list[list[_Resolved]]  # the first rule of each path: the one that carries its traffic
    shadowed: list[_Resolved]  # in a rule behind another with the same matches: never reached
    dropped: list[_Resolved]  # beyond the upstream limits
    taken: list[str]  # matches an earlier backend's matches already take
    idle: list[str]  # matched paths without a rule: their requests go to the default path

    @property
    def live(self) -> dict[BackendKey, list[_Resolved]]:
        """Backend -> the rule it is in, when that rule carries traffic."""
        return {_key(m.ref): rule for rule in self.live_rules for m in rule}

    @property
    def fallback(self) -> bool:
        """Whether a rule that carries traffic has more than one tier of AIServiceBackends."""
        return any(len({m.ref.priority for m in rule if m.pool is None}) > 1 for rule in self.live_rules)


def _split(members: list[_Resolved]) -> tuple[list[list[_Resolved]], list[_Resolved]]:
    """One path's rules: the AIServiceBackends together, each InferencePool alone, tier 0 first (on a tie
    the AIServiceBackends' rule first); and the backends beyond the upstream limit of a rule."""
    services = [r for r in members if r.pool is None]
    pools = [r for r in members if r.pool is not None]
    groups: list[tuple[int, int, list[_Resolved]]] = []
    if services:
        groups.append((min(r.ref.priority for r in services), 0, services[:MAX_BACKEND_REFS_PER_RULE]))
    groups += [(r.ref.priority, 1, [r]) for r in pools]
    groups.sort(key=lambda g: (g[0], g[1]))
    return [g[2] for g in groups], services[MAX_BACKEND_REFS_PER_RULE:]


def _layout(paths: list[_Path], resolved: list[_Resolved]) -> _Layout:
    by_key = {_key(r.ref): r for r in resolved}
    dropped: list[_Resolved] = []
    idle: list[str] = []
    # (rank, path order, rule order, path, members); rank says what is kept first within MAX_RULES: the
    # default path's live rule, the matched paths' live rules, then the rules nothing reaches.
    candidates: list[tuple[int, int, int, _Path, list[_Resolved]]] = []
    for order, path in enumerate(paths):
        members = [by_key[_key(ref)] for ref in path.refs if _key(ref) in by_key]
        if not path.default:
            if not path.live:
                continue  # every match taken by an earlier path: reported below
            if not members or not any(m.ref.weight > 0 for m in members):
                why = "no backend of theirs is Ready" if not members else "their backends all have weight 0"
                idle.append(f"requests with {describe_alternatives(path.live)} go to the backends without "
                            f"matches: {why}")
                continue
        rules, beyond = _split(members)
        dropped += beyond
        for index, rule in enumerate(rules):
            rank = (0 if path.default else 1) if index == 0 else (3 if path.default else 2)
            candidates.append((rank, order, index, path, rule))
    candidates.sort(key=lambda c: c[:3])
    kept = sorted(candidates[:MAX_RULES], key=lambda c: c[1:3])
    dropped += [m for c in candidates[MAX_RULES:] for m in c[4]]
    live = [c[4] for c in kept if c[2] == 0]
    shadowed = [m for c in kept if c[2] > 0 for m in c[4]]
    taken = [f"{describe_alternatives([alt])} of {path.describe()} is already a match of {owner.describe()}, "
             "whose rule comes first"
             for path in paths for alt, owner in path.taken_by.items()]
    return _Layout([(c[3], c[4]) for c in kept], live, shadowed, dropped, taken, idle)


def _matches(path: _Path, model: str) -> list[dict[str, Any]]:
    """The model header, and for a matched path the headers of each alternative after it."""
    by_model = {"type": "Exact", "name": MODEL_HEADER, "value": model}
    if path.default:
        return [{"headers": [by_model]}]
    return [{"headers": [by_model, *({"type": "Exact", "name": name, "value": value} for name, value in alt)]}
            for alt in path.live]


def _route(spec: VirtualModelSpec, world: VirtualModelWorld, model: str, parents: list[GatewayRef],
           rules: list[tuple[_Path, list[_Resolved]]], rtype: ResourceType) -> Child:
    parent_refs = []
    for ref in parents:
        parent: dict[str, Any] = {"group": GATEWAY_API_GROUP, "kind": "Gateway", "name": ref.name}
        if ref.namespace:
            parent["namespace"] = ref.namespace
        if ref.section_name:
            parent["sectionName"] = ref.section_name
        parent_refs.append(parent)
    route_rules = []
    for path, members in rules:
        rule: dict[str, Any] = {"matches": _matches(path, model), "backendRefs": [_backend_ref(m) for m in members]}
        if spec.timeouts and spec.timeouts.request:
            rule["timeouts"] = {"request": spec.timeouts.request}
        route_rules.append(rule)
    return Child(rtype, {
        "apiVersion": rtype.api_version,
        "kind": "AIGatewayRoute",
        "metadata": {"name": world.name},
        "spec": {"parentRefs": parent_refs, "rules": route_rules, "llmRequestCosts": llm_request_costs(spec)},
    })


def _retry(retry: Retry, fallback: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"numRetries": retry.attempts}
    if fallback:
        out["numAttemptsPerPriority"] = 1
    if retry.per_try_timeout:
        out["perRetry"] = {"timeout": retry.per_try_timeout}
    if retry.retry_on:
        retry_on: dict[str, Any] = {}
        triggers = list(retry.retry_on.triggers or [])
        if retry.retry_on.status_codes:
            retry_on["httpStatusCodes"] = list(retry.retry_on.status_codes)
            # Envoy retries on httpStatusCodes only with this trigger.
            if "retriable-status-codes" not in triggers:
                triggers.append("retriable-status-codes")
        if triggers:
            retry_on["triggers"] = triggers
        if retry_on:
            out["retryOn"] = retry_on
    return out


def tenant_header(spec: VirtualModelSpec) -> str | None:
    """The header budgets are keyed on: the authenticated tenant's with spec.auth, else rateLimit.tenantHeader."""
    if spec.auth is not None:
        return spec.auth.tenant_header
    return spec.rate_limit.tenant_header if spec.rate_limit else None


def tenant_regex(tenants: list[str]) -> str:
    """The tenant header values of these tenants: the client id of each, or of a rotated key of it
    (<tenant>.<suffix>, see model_traffic.commands.keys). Tenant names are DNS labels: no regex metacharacters. Envoy's
    header matchers match a regex against the whole value."""
    return f"({'|'.join(tenants)})(\\.[-a-z0-9]+)?"


def _budget_rules(limit: RateLimit, tokens: RateLimitValue | None, requests: RateLimitValue | None,
                  selector: list[dict[str, Any]], cost_key: str) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    if tokens:
        rule: dict[str, Any] = {
            "limit": {"requests": tokens.limit, "unit": tokens.unit},
            # Checked on the request (cost 0), charged on the response with the tokens the AI Gateway counted.
            "cost": {
                "request": {"from": "Number", "number": 0},
                "response": {"from": "Metadata",
                             "metadata": {"namespace": AI_GATEWAY_METADATA_NAMESPACE, "key": cost_key}},
            },
        }
        if selector:
            rule["clientSelectors"] = [{"headers": selector}]
        rules.append(rule)
    if requests:
        rule = {"limit": {"requests": requests.limit, "unit": requests.unit}}
        if selector:
            rule["clientSelectors"] = [{"headers": selector}]
        rules.append(rule)
    return rules


def _rate_limit(spec: VirtualModelSpec) -> dict[str, Any] | None:
    """Envoy Gateway's global rate limit. A rule's header match of type Distinct gives one bucket per value; any
    other match gives the rule one bucket for all the requests it selects (internal/xds/translator/ratelimit.go:
    a request_headers action for Distinct, a header_value_match action with a fixed descriptor otherwise). A
    request is refused when any rule that selects it is spent, so each request is selected by exactly one
    budget: a tenant's own, else the default one (which inverts a match of the tenants with their own), else,
    without a tenant header, the shared or refused one."""
    limit = spec.rate_limit
    if limit is None:
        return None
    header = tenant_header(spec)
    cost_key = token_cost_key(spec)
    if header is None:
        return {"type": "Global", "global": {"rules": _budget_rules(limit, limit.tokens, limit.requests, [], cost_key)}}
    rules: list[dict[str, Any]] = []
    for budget in limit.tenants or []:
        own = [{"name": header, "type": "RegularExpression", "value": tenant_regex([budget.tenant])}]
        rules += _budget_rules(limit, budget.tokens, budget.requests, own, cost_key)
    default: list[dict[str, Any]] = [{"name": header, "type": "Distinct"}]
    if limit.tenants:
        default.append({"name": header, "type": "RegularExpression",
                        "value": tenant_regex([b.tenant for b in limit.tenants]), "invert": True})
    rules += _budget_rules(limit, limit.tokens, limit.requests, default, cost_key)
    if spec.auth is None:
        # A request without the header: a Distinct match produces no descriptor, so no default rule selects it.
        # ".*" matches every value a present header can have; inverted, it selects the header's absence.
        absent = [{"name": header, "type": "RegularExpression", "value": ".*", "invert": True}]
        if limit.without_tenant == "Refused":
            rules.append({"clientSelectors": [{"headers": absent}], "limit": {"requests": 0, "unit": "Second"}})
        else:
            rules += _budget_rules(limit, limit.tokens, limit.requests, absent, cost_key)
    # type: Global is deprecated in favour of the global field alone; Envoy Gateway releases before it
    # require it, and the AI Gateway docs write both.
    return {"type": "Global", "global": {"rules": rules}}


def _security_policy(spec: VirtualModelSpec, world: VirtualModelWorld) -> dict[str, Any] | None:
    """The Envoy Gateway SecurityPolicy spec for spec.auth, on the HTTPRoute the AI Gateway generates.

    API keys: Envoy's api_key_auth filter answers 401 to a request without a known key; for a known one it
    sets the tenant header to the key's client id with ``headers.setCopy`` (envoy
    source/extensions/filters/http/api_key_auth/api_key_auth.cc), which REPLACES any value the client sent,
    and ``sanitize`` (hide_credentials) removes the key (Envoy Gateway v1.9.1
    internal/xds/translator/api_key_auth.go). Envoy Gateway orders the HTTP filters so api_key_auth (7) and
    jwt_authn (10) run before the AI Gateway's ext_proc (100+) and the global rate limit (303)
    (internal/xds/translator/httpfilters.go, newOrderedHTTPFilter): budgets and metrics see the
    authenticated tenant.

    JWT: jwt_authn's claim_to_headers ADDS the claim's value (``addCopy``, envoy
    source/extensions/filters/http/jwt_authn/authenticator.cc), after any value the client sent, and the
    rate limit's request_headers action reads the first value: the client-sent header must be removed
    before the filters, by the Gateway owner's ClientTrafficPolicy ``headers.earlyRequestHeaders.remove``
    (docs/tenants.md). The ``TenantHeader`` detail says so.
    """
    auth = spec.auth
    if auth is None:
        return None
    policy: dict[str, Any] = {"targetRefs": [{"group": GATEWAY_API_GROUP, "kind": "HTTPRoute", "name": world.name}]}
    if auth.api_key is not None:
        policy["apiKeyAuth"] = {
            "credentialRefs": [{"group": "", "kind": "Secret", "name": name} for name in auth.api_key.secret_refs],
            "extractFrom": [{"headers": list(auth.api_key.headers)}],
            "forwardClientIDHeader": auth.tenant_header,
            "sanitize": True,
        }
    elif auth.jwt is not None:
        provider: dict[str, Any] = {
            "name": "tenants",
            "issuer": auth.jwt.issuer,
            "remoteJWKS": {"uri": auth.jwt.jwks_uri},
            "claimToHeaders": [{"header": auth.tenant_header, "claim": auth.jwt.tenant_claim}],
        }
        if auth.jwt.audiences:
            provider["audiences"] = list(auth.jwt.audiences)
        policy["jwt"] = {"providers": [provider]}
    return policy


def _auth_details(spec: VirtualModelSpec) -> list[Detail]:
    auth = spec.auth
    if auth is None:
        return [Detail("Authenticated", None, "NotConfigured", "spec.auth is unset: callers are not authenticated")]
    if auth.jwt is not None:
        return [
            Detail("Authenticated", True, "JWT",
                   f"tokens of issuer {auth.jwt.issuer}; claim {auth.jwt.tenant_claim} becomes {auth.tenant_header}"),
            Detail("TenantHeader", False, "ClientMayAddTenantHeader",
                   f"Envoy's JWT filter adds {auth.tenant_header} after any value the client sent, and budgets read "
                   f"the first: the Gateway's ClientTrafficPolicy must remove {auth.tenant_header} early "
                   "(headers.earlyRequestHeaders.remove; docs/tenants.md)"),
        ]
    secrets = ", ".join(auth.api_key.secret_refs if auth.api_key else [])
    # The operator does not read the Secrets (Envoy Gateway does): a missing one is Envoy Gateway's refusal of
    # the SecurityPolicy, read back into ChildrenAccepted.
    authenticated = Detail("Authenticated", True, "APIKeys",
                           f"API keys from Secret {secrets} (one data key per client id), checked by Envoy Gateway")
    return [authenticated,
            Detail("TenantHeader", True, "SetByGateway",
                   f"{auth.tenant_header} is the API key's client id, set by Envoy's api_key_auth filter over any "
                   "value the client sent, before budgets and metrics read it; the key is removed before upstream")]


def _load_balancer(spec: VirtualModelSpec) -> dict[str, Any] | None:
    lb = spec.load_balancer
    if lb is None:
        return None
    if lb.type != "ConsistentHash":
        return {"type": lb.type}
    if lb.hash_header:
        return {"type": "ConsistentHash", "consistentHash": {"type": "Header", "header": {"name": lb.hash_header}}}
    return {"type": "ConsistentHash", "consistentHash": {"type": "SourceIP"}}


def _health_check(spec: VirtualModelSpec) -> dict[str, Any] | None:
    if spec.health_check is None or spec.health_check.passive is None:
        return None
    return {"passive": spec.health_check.passive.wire()}


def _traffic_policy(spec: VirtualModelSpec, name: str, fallback: bool) -> tuple[dict[str, Any] | None, Detail]:
    """The BackendTrafficPolicy spec (None when nothing calls for one) and the RetryPolicy detail."""
    policy: dict[str, Any] = {}
    if spec.retry is not None:
        policy["retry"] = _retry(spec.retry, fallback)
        if fallback and spec.retry.attempts == 0:
            detail = Detail("RetryPolicy", False, "NoRetriesForFallback",
                            "retry.attempts is 0: a request that fails on tier 0 is never sent to a fallback tier")
        elif fallback:
            detail = Detail("RetryPolicy", True, "Configured",
                            f"spec.retry, with one attempt per priority so failures move to the next tier "
                            f"(up to {spec.retry.attempts} retries)")
        else:
            detail = Detail("RetryPolicy", True, "Configured", f"spec.retry: up to {spec.retry.attempts} retries")
    elif fallback:
        policy["retry"] = copy.deepcopy(DEFAULT_FALLBACK_RETRY)
        detail = Detail("RetryPolicy", True, "FallbackDefault",
                        "fallback tiers need retries and spec.retry is unset: Envoy AI Gateway's documented "
                        "default applies (numAttemptsPerPriority 1, numRetries 5, retry on 5xx and connect "
                        "failures)")
    else:
        detail = Detail("RetryPolicy", True, "NotConfigured", "no retry policy; no fallback tier")
    for key, value in (("loadBalancer", _load_balancer(spec)), ("healthCheck", _health_check(spec)),
                       ("rateLimit", _rate_limit(spec))):
        if value is not None:
            policy[key] = value
    if not policy:
        return None, detail
    target = {"group": GATEWAY_API_GROUP, "kind": "HTTPRoute", "name": name}  # the AI Gateway names it so
    return {"targetRefs": [target], **policy}, detail


def _reachable(model: str, layout: _Layout) -> Detail:
    """AllBackendsReachable: False when a backend sits where no request reaches it."""
    parts = []
    if layout.shadowed:
        parts.append(
            "in a rule of their own with the same match, which Gateway API never reaches while the first "
            f"rule matches: {', '.join(_describe(m.ref) for m in layout.shadowed)} (an InferencePool cannot share "
            "a rule with AIServiceBackends, so there is no fallback between them)")
    if layout.dropped:
        parts.append(f"beyond the AIGatewayRoute limits ({MAX_RULES} rules, {MAX_BACKEND_REFS_PER_RULE} "
                     f"backends a rule): {', '.join(_describe(m.ref) for m in layout.dropped)}")
    if layout.taken:
        parts.append("matches that never see a request: " + "; ".join(layout.taken))
    notes = "; ".join(layout.idle)
    if parts:
        reason = "ShadowedRules" if layout.shadowed or layout.dropped else "ShadowedMatches"
        return Detail("AllBackendsReachable", False, reason, "; ".join(parts) + (f" ({notes})" if notes else ""))
    if len(layout.rules) == 1 and not notes:
        return Detail("AllBackendsReachable", True, "Reachable", f"one rule carries every backend of model {model!r}")
    matched = len(layout.live_rules) - 1
    message = (f"every backend is in a rule that carries traffic: {matched} rule{'s' if matched > 1 else ''} for "
               "header-matched requests, ahead of the rule for all others" if matched
               else f"one rule carries every routed backend of model {model!r}")
    return Detail("AllBackendsReachable", True, "Reachable", message + (f"; {notes}" if notes else ""))


def _status_backends(spec: VirtualModelSpec, resolved: list[_Resolved], paths: list[_Path],
                     layout: _Layout) -> list[dict[str, Any]]:
    """Each backend as routed: its effective share within its tier, counting only the rule of its path that
    carries traffic (the first; see the module docstring) and the backends that resolved. A backend with
    matches is counted among the requests matching them only."""
    ready = {_key(r.ref) for r in resolved}
    path_of = {_key(ref): path for path in paths for ref in path.refs}
    out = []
    for ref in spec.backends:
        rule = layout.live.get(_key(ref), [])
        item = next((m for m in rule if _key(m.ref) == _key(ref)), None)
        share = 0.0
        if item is not None and item.pool is not None:
            share = 100.0  # alone in its rule
        elif item is not None:
            tier = [m.ref.weight for m in rule if m.pool is None and m.ref.priority == ref.priority]
            share = _percent(ref.weight, sum(tier))
        entry: dict[str, Any] = {"name": ref.name, "kind": ref.kind, "tier": ref.priority, "sharePercent": share,
                                 "ready": _key(ref) in ready}
        if ref.namespace:
            entry["namespace"] = ref.namespace
        path = path_of[_key(ref)]
        if not path.default:
            entry["onlyMatching"] = describe_alternatives(path.live or path.written)
        out.append(entry)
    return out


def render(spec: VirtualModelSpec, world: VirtualModelWorld) -> Plan:
    model = model_name(spec, world.name)
    status: dict[str, Any] = {"modelName": model}
    details: list[Detail] = []

    if world.ai_gateway_version is None:
        verdict = Verdict("Stalled", "AIGatewayNotInstalled",
                          "the cluster serves no aigateway.envoyproxy.io API: install Envoy AI Gateway's CRDs")
        return Plan(verdict, [Detail("BackendsResolved", None, "NotChecked", "")], status=status)
    route_type = kube.AI_GATEWAY_ROUTE.at(world.ai_gateway_version)
    prune_all = [route_type, kube.BACKEND_TRAFFIC_POLICY, kube.SECURITY_POLICY]

    resolved, problems = _resolve(spec, world)
    missing = [p.message for p in problems.values() if p.missing]
    unready = [p.message for p in problems.values() if not p.missing]
    not_permitted = any(p.not_permitted for p in problems.values())
    paths = _paths(spec)
    layout = _layout(paths, resolved)
    status["backends"] = _status_backends(spec, resolved, paths, layout)
    status["backendSummary"] = f"{len(resolved)}/{len(spec.backends)}"
    if world.gateway_address:
        status["address"] = world.gateway_address

    left_out = missing + unready
    if not left_out:
        details.append(Detail("BackendsResolved", True, "Resolved",
                               f"all {len(spec.backends)} backends are Ready"))
    else:
        reason = ("BackendsNotFound" if missing else "RefNotPermitted" if not_permitted else "BackendsNotReady")
        routed = "none is routed" if not resolved else "left out of the route"
        details.append(Detail("BackendsResolved", False, reason, f"{routed}: {'; '.join(left_out)}"))

    details += _auth_details(spec)

    # --- refusals: nothing is routed ---------------------------------------------------------------
    parents = gateway_refs(spec, world.default_gateway)
    default_keys = {_key(ref) for ref in paths[-1].refs}
    refusal: Verdict | None = None
    if world.claimed_elsewhere:
        refusal = Verdict("Stalled", "ModelNameConflict",
                          f"model name {model!r} is already served on the same Gateway by VirtualModel "
                          f"{world.claimed_elsewhere}, which is older: rename the model or remove one of them")
    elif not parents:
        refusal = Verdict("Stalled", "NoGateway",
                          "spec.gatewayRefs is empty and the operator has no default Gateway "
                          "(MTO_DEFAULT_GATEWAY is unset or not namespace/name)")
    elif not resolved:
        # Missing backends need someone to create them, refused references a ReferenceGrant (Stalled); unready ones
        # become Ready by themselves.
        reason = ("BackendsNotFound" if missing else "RefNotPermitted" if not_permitted else "BackendsNotReady")
        refusal = Verdict("Progressing" if reason == "BackendsNotReady" else "Stalled", reason,
                          f"no backend of model {model!r} resolves: {'; '.join(left_out)}")
    elif not any(_key(r.ref) in default_keys for r in resolved):
        # Without its default rule the route would serve the header-matched requests only: not the model.
        default_left_out = [p for key, p in problems.items() if key in default_keys]
        any_missing = any(p.missing for p in default_left_out) or not default_left_out
        reason = ("BackendsNotFound" if any_missing
                  else "RefNotPermitted" if any(p.not_permitted for p in default_left_out) else "BackendsNotReady")
        why = "; ".join(p.message for p in default_left_out) or "there is none"
        refusal = Verdict("Progressing" if reason == "BackendsNotReady" else "Stalled", reason,
                          f"no backend without matches of model {model!r} resolves (they serve the requests "
                          f"that match no backend's matches): {why}")
    if refusal is not None:
        details.append(Detail("RetryPolicy", None, "NoRoute", "no route is written"))
        details.append(Detail("AllBackendsReachable", None, "NoRoute", "no route is written"))
        for entry in status["backends"]:
            entry["sharePercent"] = 0.0
        return Plan(refusal, details, prune=prune_all, status=status)

    # --- the route --------------------------------------------------------------------------------
    # The SecurityPolicy is written first: on a new model it is there when Envoy Gateway first sees the route.
    children: list[Child] = []
    prune: list[ResourceType] = []
    security = _security_policy(spec, world)
    if security is not None:
        children.append(Child(kube.SECURITY_POLICY, {
            "apiVersion": kube.SECURITY_POLICY.api_version, "kind": "SecurityPolicy",
            "metadata": {"name": world.name}, "spec": security,
        }))
    else:
        prune.append(kube.SECURITY_POLICY)
    children.append(_route(spec, world, model, parents, layout.rules, route_type))
    status["route"] = world.name
    details.append(_reachable(model, layout))

    fallback = layout.fallback
    policy, retry_detail = _traffic_policy(spec, world.name, fallback)
    details.append(retry_detail)
    if policy is not None:
        children.append(Child(kube.BACKEND_TRAFFIC_POLICY, {
            "apiVersion": kube.BACKEND_TRAFFIC_POLICY.api_version, "kind": "BackendTrafficPolicy",
            "metadata": {"name": world.name}, "spec": policy,
        }))
    else:
        prune.append(kube.BACKEND_TRAFFIC_POLICY)

    # Whether AI Gateway and Envoy Gateway accept the route is read back by the reconciler (result_of).
    if left_out:
        verdict = Verdict("Ready", "BackendsLeftOut",
                          f"model {model!r} is routed to {len(resolved)} of {len(spec.backends)} backends; "
                          f"left out: {'; '.join(left_out)}")
    else:
        verdict = Verdict("Ready", "Ready", f"model {model!r} is routed to {len(resolved)} backends")
    return Plan(verdict, details, children, prune, status)
