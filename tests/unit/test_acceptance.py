"""Reading back whether Envoy AI Gateway and Envoy Gateway accepted our children, and the verdict it makes.

The status shapes are the ones the upstream controllers write (see the module docstring of
model_traffic/pipeline/acceptance.py for the source files): Envoy AI Gateway v1.0.0's single
``Accepted``/``NotAccepted`` condition without observedGeneration, Envoy Gateway v1.9.1's policy ancestors,
route parents, and its Backend condition with type and reason swapped.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from model_traffic.kinds.virtualmodel.reconcile import generated_route
from model_traffic.pipeline.acceptance import (
    Acceptance,
    Judgement,
    children_accepted,
    judge,
    not_generated,
)
from model_traffic.pipeline.conditions import Detail, Verdict
from model_traffic.pipeline.plan import Plan
from model_traffic.pipeline.result import Applied, result_of

EG_CONTROLLER = "gateway.envoyproxy.io/gatewayclass-controller"
STAMP = "2026-01-01T00:00:00Z"


def obj(api_version: str, kind: str, name: str = "gpt-4", generation: int = 1, status: dict[str, Any] | None = None,
        spec: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"apiVersion": api_version, "kind": kind,
                           "metadata": {"name": name, "namespace": "llm", "generation": generation},
                           "spec": spec or {}}
    if status is not None:
        out["status"] = status
    return out


# --- Envoy AI Gateway: internal/controller/controller.go, newConditions ---------------------------------

def aigw_accepted(kind: str) -> dict[str, Any]:
    return {"conditions": [{"type": "Accepted", "status": "True", "reason": "ReconciliationSucceeded",
                            "message": f"{kind} reconciled successfully", "lastTransitionTime": STAMP}]}


def aigw_refused(message: str) -> dict[str, Any]:
    return {"conditions": [{"type": "NotAccepted", "status": "False", "reason": "ReconciliationFailed",
                            "message": message, "lastTransitionTime": STAMP}]}


def aigw(kind: str, status: dict[str, Any] | None, name: str = "gpt-4", version: str = "v1beta1") -> dict[str, Any]:
    return obj(f"aigateway.envoyproxy.io/{version}", kind, name, status=status)


@pytest.mark.parametrize(("kind", "version"), [("AIGatewayRoute", "v1beta1"), ("AIServiceBackend", "v1beta1"),
                                               ("AIServiceBackend", "v1alpha1"),
                                               ("BackendSecurityPolicy", "v1beta1"), ("QuotaPolicy", "v1alpha1")])
def test_ai_gateway_kinds(kind: str, version: str) -> None:
    assert judge(aigw(kind, aigw_accepted(kind), version=version)) == Acceptance(
        kind, "gpt-4", Judgement.ACCEPTED, "Envoy AI Gateway")
    refused = judge(aigw(kind, aigw_refused("boom"), version=version))
    assert refused is not None
    # The refusal's status is False: the type NotAccepted is what says so.
    assert (refused.judgement, refused.reason, refused.message) == (Judgement.REFUSED, "ReconciliationFailed", "boom")
    for silent in (None, {}, {"conditions": []}):
        awaited = judge(aigw(kind, silent, version=version))
        assert awaited is not None
        assert (awaited.judgement, awaited.message) == (Judgement.AWAITED, "no status yet")


def test_ai_gateway_report_with_an_older_observed_generation_is_awaited() -> None:
    """v1.0.0 sets no observedGeneration; should a later release set it, an older one is not current."""
    status = aigw_accepted("AIGatewayRoute")
    status["conditions"][0]["observedGeneration"] = 1
    route = aigw("AIGatewayRoute", status)
    route["metadata"]["generation"] = 2
    judged = judge(route)
    assert judged is not None and judged.judgement is Judgement.AWAITED
    route["metadata"]["generation"] = 1
    judged = judge(route)
    assert judged is not None and judged.judgement is Judgement.ACCEPTED


# --- Envoy Gateway policies: internal/gatewayapi/status/policy.go ---------------------------------------

def ancestor(gateway: str, *conditions: dict[str, Any], section: str | None = None) -> dict[str, Any]:
    ref: dict[str, Any] = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway,
                           "namespace": "envoy-gateway-system"}
    if section:
        ref["sectionName"] = section
    return {"ancestorRef": ref, "controllerName": EG_CONTROLLER, "conditions": list(conditions)}


def cond(ctype: str, status: str, reason: str, message: str, generation: int = 1) -> dict[str, Any]:
    return {"type": ctype, "status": status, "reason": reason, "message": message,
            "observedGeneration": generation, "lastTransitionTime": STAMP}


POLICY_ACCEPTED = cond("Accepted", "True", "Accepted", "Policy has been accepted.")
DEPRECATED = cond("Warning", "True", "DeprecatedField", "spec.rateLimit.type is deprecated, use spec.rateLimit.global")
RATE_LIMIT_REFUSED = cond("Accepted", "False", "Invalid",
                          "RateLimit: enable Ratelimit in the EnvoyGateway config to configure global rateLimit.")


def btp(*ancestors: dict[str, Any], generation: int = 1, status: bool = True) -> dict[str, Any]:
    return obj("gateway.envoyproxy.io/v1alpha1", "BackendTrafficPolicy", generation=generation,
               status={"ancestors": list(ancestors)} if status else None)


def test_backend_traffic_policy() -> None:
    accepted = judge(btp(ancestor("eg", POLICY_ACCEPTED, DEPRECATED)))
    assert accepted is not None and accepted.judgement is Judgement.ACCEPTED  # a Warning is no refusal
    merged = judge(btp(ancestor("eg", POLICY_ACCEPTED, cond("Merged", "True", "Merged", "Merged with policy x/y"),
                                cond("Overridden", "True", "Overridden", "overridden"))))
    assert merged is not None and merged.judgement is Judgement.ACCEPTED
    refused = judge(btp(ancestor("eg", RATE_LIMIT_REFUSED, DEPRECATED)))
    assert refused is not None
    assert (refused.judgement, refused.controller, refused.reason) == (Judgement.REFUSED, "Envoy Gateway", "Invalid")
    assert refused.message == ("on Gateway envoy-gateway-system/eg: RateLimit: enable Ratelimit in the EnvoyGateway "
                               "config to configure global rateLimit.")
    conflicted = judge(btp(ancestor("b", POLICY_ACCEPTED),
                           ancestor("a", cond("Accepted", "False", "Conflicted", "another policy attached"))))
    assert conflicted is not None and (conflicted.judgement, conflicted.reason) == (Judgement.REFUSED, "Conflicted")


def test_backend_traffic_policy_not_yet_reported() -> None:
    for silent in (btp(status=False), btp()):  # the target route is not in Envoy Gateway's tree yet
        judged = judge(silent)
        assert judged is not None and judged.judgement is Judgement.AWAITED
        assert "no status yet" in judged.message
    stale = judge(btp(ancestor("eg", POLICY_ACCEPTED), generation=2))
    assert stale is not None and stale.judgement is Judgement.AWAITED
    assert stale.message == "its report is for an older generation"
    # A refusal for the previous spec does not count against the new one.
    stale_refusal = judge(btp(ancestor("eg", RATE_LIMIT_REFUSED), generation=2))
    assert stale_refusal is not None and stale_refusal.judgement is Judgement.AWAITED


# --- HTTPRoute: internal/gatewayapi/route.go, status/route.go ----------------------------------------------

ROUTE_ACCEPTED = cond("Accepted", "True", "Accepted", "Route is accepted")
REFS_RESOLVED = cond("ResolvedRefs", "True", "ResolvedRefs", "Resolved all the Object references for the Route")
REFS_UNRESOLVED = cond(
    "ResolvedRefs", "False", "UnsupportedValue",
    "Failed to process route rule 0 backendRef 0: Backend is disabled in Envoy Gateway configuration.")


def parent(gateway: str, *conditions: dict[str, Any], namespace: str | None = "envoy-gateway-system",
           controller: str = EG_CONTROLLER) -> dict[str, Any]:
    ref: dict[str, Any] = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway}
    if namespace:
        ref["namespace"] = namespace
    return {"parentRef": ref, "controllerName": controller, "conditions": list(conditions)}


def http_route(*parents: dict[str, Any], gateways: tuple[str, ...] = ("eg",), generation: int = 1) -> dict[str, Any]:
    refs = [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": g, "namespace": "envoy-gateway-system"}
            for g in gateways]
    return obj("gateway.networking.k8s.io/v1", "HTTPRoute", generation=generation,
               spec={"parentRefs": refs}, status={"parents": list(parents)})


def test_http_route() -> None:
    accepted = judge(http_route(parent("eg", ROUTE_ACCEPTED, REFS_RESOLVED)))
    assert accepted is not None and accepted.judgement is Judgement.ACCEPTED
    unresolved = judge(http_route(parent("eg", ROUTE_ACCEPTED, REFS_UNRESOLVED)))
    assert unresolved is not None
    assert (unresolved.judgement, unresolved.reason) == (Judgement.REFUSED, "UnsupportedValue")
    assert unresolved.message == ("ResolvedRefs=False on Gateway envoy-gateway-system/eg: Failed to process route "
                                  "rule 0 backendRef 0: Backend is disabled in Envoy Gateway configuration.")
    not_allowed = judge(http_route(parent("eg", cond("Accepted", "False", "NotAllowedByListeners", "no listener"))))
    assert not_allowed is not None and not_allowed.reason == "NotAllowedByListeners"
    partial = judge(http_route(parent("eg", ROUTE_ACCEPTED, REFS_RESOLVED,
                                      cond("PartiallyInvalid", "True", "UnsupportedValue", "Dropped Rule(s) 1"))))
    assert partial is not None and partial.judgement is Judgement.REFUSED


def test_http_route_waits_for_a_report_on_every_gateway_it_names() -> None:
    one_of_two = judge(http_route(parent("a", ROUTE_ACCEPTED), gateways=("a", "b")))
    assert one_of_two is not None and one_of_two.judgement is Judgement.AWAITED
    assert one_of_two.message == "no current report for Gateway envoy-gateway-system/b"
    stale = judge(http_route(parent("eg", ROUTE_ACCEPTED, REFS_UNRESOLVED), generation=2))
    assert stale is not None and stale.judgement is Judgement.AWAITED
    # A Gateway the route no longer names is not read; another controller's parent is (see the module).
    gone = judge(http_route(parent("old", cond("Accepted", "False", "NoMatchingParent", "x")),
                            parent("eg", ROUTE_ACCEPTED, controller="example.com/other")))
    assert gone is not None and gone.judgement is Judgement.ACCEPTED
    empty = judge(obj("gateway.networking.k8s.io/v1", "HTTPRoute", spec={"parentRefs": []}, status={}))
    assert empty is not None and empty.judgement is Judgement.AWAITED
    assert not_generated("HTTPRoute", "gpt-4").judgement is Judgement.AWAITED


# --- Envoy Gateway Backend: internal/gatewayapi/status/backend.go (type and reason swapped) ----------------

BACKEND_ACCEPTED = cond("Accepted", "True", "Accepted", "The Backend was accepted")
LOOPBACK = cond("Invalid", "False", "Accepted",
                "The Backend was not accepted: IP address 127.0.0.1 in the loopback range is only supported when "
                "using the Host infrastructure")


def eg_backend(*conditions: dict[str, Any], generation: int = 1) -> dict[str, Any]:
    return obj("gateway.envoyproxy.io/v1alpha1", "Backend", "openai", generation=generation,
               status={"conditions": list(conditions)})


def test_envoy_gateway_backend() -> None:
    accepted = judge(eg_backend(BACKEND_ACCEPTED))
    assert accepted is not None and accepted.judgement is Judgement.ACCEPTED
    refused = judge(eg_backend(LOOPBACK))
    assert refused is not None
    assert (refused.judgement, refused.reason) == (Judgement.REFUSED, "Invalid")
    assert "loopback" in refused.message
    # Merged by type: both stay; the newer generation is the current report, a tie counts as refused.
    fixed = judge(eg_backend(LOOPBACK, {**BACKEND_ACCEPTED, "observedGeneration": 2}, generation=2))
    assert fixed is not None and fixed.judgement is Judgement.ACCEPTED
    broken = judge(eg_backend(BACKEND_ACCEPTED, {**LOOPBACK, "observedGeneration": 2}, generation=2))
    assert broken is not None and broken.judgement is Judgement.REFUSED
    tie = judge(eg_backend(BACKEND_ACCEPTED, LOOPBACK))
    assert tie is not None and tie.judgement is Judgement.REFUSED


def test_envoy_gateway_backend_without_a_current_report_is_unchecked_not_awaited() -> None:
    """Envoy Gateway looks at a Backend only when a route uses it; a backend is routed only once Ready."""
    for backend in (obj("gateway.envoyproxy.io/v1alpha1", "Backend", "openai"), eg_backend(LOOPBACK, generation=2)):
        judged = judge(backend)
        assert judged is not None and judged.judgement is Judgement.UNCHECKED


def test_kinds_no_other_controller_judges() -> None:
    for api_version, kind in (("modeltraffic.io/v1alpha1", "ManagedAIServiceBackend"),
                              ("modeltraffic.io/v1alpha1", "VirtualModel"),
                              ("serving.kserve.io/v1beta1", "InferenceService")):
        assert judge(obj(api_version, kind, status={"conditions": [{"type": "Ready", "status": "False"}]})) is None


# --- the fold ---------------------------------------------------------------------------------------------------

def a(kind: str, judgement: Judgement, name: str = "x", reason: str = "", message: str = "",
      controller: str = "Envoy Gateway") -> Acceptance:
    return Acceptance(kind, name, judgement, controller, reason, message)


def test_children_accepted_fold() -> None:
    ok = children_accepted([a("HTTPRoute", Judgement.ACCEPTED), a("AIGatewayRoute", Judgement.ACCEPTED)])
    assert ok.verdict is None
    assert ok.detail == Detail("ChildrenAccepted", True, "Accepted", "accepted: AIGatewayRoute/x, HTTPRoute/x")
    unchecked = children_accepted([a("Backend", Judgement.UNCHECKED, message="m"), a("AIServiceBackend",
                                                                                      Judgement.ACCEPTED)])
    assert unchecked.verdict is None and unchecked.detail.ok is True
    assert unchecked.detail.message == "accepted: AIServiceBackend/x; not yet checked: Backend/x (m)"
    waiting = children_accepted([a("HTTPRoute", Judgement.AWAITED, message="no status yet"),
                                 a("AIGatewayRoute", Judgement.ACCEPTED)])
    assert waiting.verdict == Verdict("Progressing", "AwaitingControllers",
                                      "waiting for Envoy Gateway to report on HTTPRoute/x (no status yet)")
    assert (waiting.detail.ok, waiting.detail.reason) == (None, "AwaitingControllers")
    refused = children_accepted([a("HTTPRoute", Judgement.AWAITED),
                                 a("Backend", Judgement.REFUSED, "b", "Invalid", "m2"),
                                 a("AIGatewayRoute", Judgement.REFUSED, "r", "ReconciliationFailed", "m1")])
    message = "refused: AIGatewayRoute/r: ReconciliationFailed: m1; Backend/b: Invalid: m2"
    assert refused.verdict == Verdict("Stalled", "ChildRefused", message)
    assert refused.detail == Detail("ChildrenAccepted", False, "ChildRefused", message)
    none = children_accepted([])
    assert none.verdict is None and (none.detail.ok, none.detail.reason) == (True, "NoUpstreamChildren")


def test_messages_do_not_depend_on_the_order_children_are_read() -> None:
    judged = [a("Backend", Judgement.REFUSED, "b", "Invalid", "m"), a("AIServiceBackend", Judgement.REFUSED, "b",
                                                                      "ReconciliationFailed", "n"),
              a("QuotaPolicy", Judgement.REFUSED, "a", "ReconciliationFailed", "o")]
    assert children_accepted(judged) == children_accepted(list(reversed(judged)))
    policy = btp(ancestor("b", RATE_LIMIT_REFUSED), ancestor("a", RATE_LIMIT_REFUSED))
    reordered = copy.deepcopy(policy)
    reordered["status"]["ancestors"].reverse()
    assert judge(policy) == judge(reordered)
    assert judge(policy).message.startswith("on Gateway envoy-gateway-system/a")  # type: ignore[union-attr]


# --- result_of: the verdict every kind gets --------------------------------------------------------------

READY = Verdict("Ready", "Ready", "model 'gpt-4' is routed to 1 backends")


def result(plan_verdict: Verdict, *live: dict[str, Any], also: list[Acceptance] | None = None) -> Any:
    applied = Applied(live={child["kind"]: child for child in live})
    return result_of(Plan(plan_verdict, []), applied, also or [])


def test_a_refused_child_makes_a_ready_object_stalled() -> None:
    """The gateway named by a VirtualModel does not exist: AI Gateway says NotAccepted=False."""
    route = aigw("AIGatewayRoute", aigw_refused(
        'gateway envoy-gateway-system/missing not found: gateways.gateway.networking.k8s.io "missing" not found'))
    out = result(READY, route)
    assert (out.verdict.state, out.verdict.reason) == ("Stalled", "ChildRefused")
    assert out.verdict.message == ("refused: AIGatewayRoute/gpt-4: ReconciliationFailed: gateway "
                                   'envoy-gateway-system/missing not found: gateways.gateway.networking.k8s.io '
                                   '"missing" not found')
    assert [d.type for d in out.details] == ["ChildrenOwned", "ChildrenAccepted"]


def test_a_child_not_yet_reported_keeps_the_object_reconciling() -> None:
    out = result(READY, aigw("AIGatewayRoute", aigw_accepted("AIGatewayRoute")), btp(status=False),
                 also=[judge(http_route(parent("eg", ROUTE_ACCEPTED)))])  # type: ignore[list-item]
    assert (out.verdict.state, out.verdict.reason) == ("Progressing", "AwaitingControllers")
    assert out.verdict.message == ("waiting for Envoy Gateway to report on BackendTrafficPolicy/gpt-4 (no status yet: "
                                   "its target route is not attached to a Gateway yet)")


def test_other_verdicts_take_precedence() -> None:
    refused = aigw("AIServiceBackend", aigw_refused("bad schema"), name="openai")
    for verdict in (Verdict("Stalled", "SecretNotFound", "Secret k not found"),
                    Verdict("Progressing", "InferenceServiceNotReady", "waiting")):
        out = result(verdict, refused)
        assert out.verdict == verdict
        assert next(d for d in out.details if d.type == "ChildrenAccepted").ok is False
    conflict = result_of(Plan(READY, []), Applied(conflicts=["Backend openai exists and is not owned"]))
    assert conflict.verdict.reason == "OwnershipConflict"


def test_every_child_accepted_is_ready() -> None:
    out = result(READY, aigw("AIServiceBackend", aigw_accepted("AIServiceBackend"), name="openai"),
                 aigw("BackendSecurityPolicy", aigw_accepted("BackendSecurityPolicy"), name="openai"),
                 aigw("QuotaPolicy", aigw_accepted("QuotaPolicy"), name="openai", version="v1alpha1"),
                 obj("gateway.envoyproxy.io/v1alpha1", "Backend", "openai"))
    assert out.verdict == READY
    accepted = next(d for d in out.details if d.type == "ChildrenAccepted")
    assert accepted.message == ("accepted: AIServiceBackend/openai, BackendSecurityPolicy/openai, QuotaPolicy/openai; "
                                "not yet checked: Backend/openai (Envoy Gateway checks a Backend once a route uses it)")


def test_a_refusal_heals_when_the_controller_accepts() -> None:
    """Refused, then the cause goes: the child's status event re-reconciles the owner, which reads Ready."""
    policy = btp(ancestor("eg", RATE_LIMIT_REFUSED))
    assert result(READY, policy).verdict.reason == "ChildRefused"
    policy["status"] = {"ancestors": [ancestor("eg", POLICY_ACCEPTED, DEPRECATED)]}
    assert result(READY, policy).verdict == READY
    backend = eg_backend(LOOPBACK)
    assert result(READY, backend).verdict.reason == "ChildRefused"
    backend["metadata"]["generation"] = 2  # the spec is fixed: not checked again until a route uses it
    assert result(READY, backend).verdict == READY
    backend["status"]["conditions"].append({**BACKEND_ACCEPTED, "observedGeneration": 2})
    assert result(READY, backend).verdict == READY


def test_an_unchanged_world_gives_the_same_result() -> None:
    children = (aigw("AIGatewayRoute", aigw_accepted("AIGatewayRoute")), btp(ancestor("b", RATE_LIMIT_REFUSED),
                                                                             ancestor("a", RATE_LIMIT_REFUSED)))
    also = [judge(http_route(parent("eg", ROUTE_ACCEPTED, REFS_UNRESOLVED)))]
    first = result(READY, *children, also=also)  # type: ignore[arg-type]
    second = result(READY, *reversed(children), also=also)  # type: ignore[arg-type]
    assert (first.verdict, first.details) == (second.verdict, second.details)


def test_traffic_config_children_are_neutral() -> None:
    """A TrafficConfig's children are our kinds and InferenceServices: no verdict changes."""
    out = result(Verdict("Progressing", "Initializing", "waiting"),
                 obj("serving.kserve.io/v1beta1", "InferenceService", "m-v1"),
                 obj("modeltraffic.io/v1alpha1", "VirtualModel", "m"))
    assert out.verdict.reason == "Initializing"
    assert next(d for d in out.details if d.type == "ChildrenAccepted").reason == "NoUpstreamChildren"


class _OneHTTPRoute:
    """Just enough of Kube for the VirtualModel reconciler's read of the generated HTTPRoute."""

    def __init__(self, http_route: dict[str, Any] | None) -> None:
        self.http_route = http_route

    def get_ours(self, rtype: Any, namespace: str, name: str) -> dict[str, Any] | None:
        assert (rtype.kind, namespace, name) == ("HTTPRoute", "llm", "gpt-4")
        return self.http_route


def test_the_virtual_model_judges_the_http_route_generated_from_its_route() -> None:
    with_route = Applied(live={"AIGatewayRoute": aigw("AIGatewayRoute", aigw_accepted("AIGatewayRoute"))})
    refused = http_route(parent("eg", ROUTE_ACCEPTED, REFS_UNRESOLVED))
    judged = generated_route(_OneHTTPRoute(refused), with_route, "llm", "gpt-4")  # type: ignore[arg-type]
    assert [j.judgement for j in judged] == [Judgement.REFUSED]
    missing = generated_route(_OneHTTPRoute(None), with_route, "llm", "gpt-4")  # type: ignore[arg-type]
    assert missing == [not_generated("HTTPRoute", "gpt-4")]
    assert result_of(Plan(READY, []), with_route, missing).verdict.reason == "AwaitingControllers"
    no_route = generated_route(_OneHTTPRoute(refused), Applied(), "llm", "gpt-4")  # type: ignore[arg-type]
    assert no_route == []
