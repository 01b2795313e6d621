"""Tenants end to end: API keys and JWT on a VirtualModel become an Envoy Gateway SecurityPolicy that the real
Envoy Gateway judges, budgets per tenant that it accepts, and the key lifecycle of `model-traffic keys` against the
real API server.

No test writes a controller's status: Envoy Gateway's field manager wrote every SecurityPolicy and
BackendTrafficPolicy status read here (checked).
"""

from __future__ import annotations

import base64
import io
import json
import textwrap
from typing import Any

import pytest

from model_traffic import kube as k
from model_traffic.commands import keys
from model_traffic.kinds.virtualmodel.spec import DEFAULT_API_KEY_SECRET
from model_traffic.kube import Kube
from tests.cluster.conftest import ENVOY_GATEWAY_MANAGER, status_writers
from tests.cluster.test_trafficconfig import TEMPLATE as TRAFFIC_TEMPLATE
from tests.cluster.test_trafficconfig import traffic_config, wait_served
from tests.cluster.test_virtualmodel import GATEWAY, make_backends, vm_yaml, wait_vm
from tests.conftest import Cluster, Operator, condition, wait_for

pytestmark = pytest.mark.cluster

KEY_A = "sk-test-acme-0123456789abcdef0123456789abcdef"
KEY_B = "sk-test-beta-0123456789abcdef0123456789abcdef"


def key_secret(name: str, keys: dict[str, str]) -> str:
    data = "\n".join(f"  {client}: {base64.b64encode(key.encode()).decode()}" for client, key in keys.items())
    return f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\ntype: Opaque\ndata:\n{data}\n"


TIERED = f"""\
    gatewayRefs: [{{name: {GATEWAY}}}]
    backends: [{{name: openai}}]
    auth: {{apiKey: {{}}}}
    rateLimit:
      tokens: {{limit: 100000, unit: Month}}
      requests: {{limit: 1000, unit: Day}}
      tenants:
      - {{tenant: acme, tokens: {{limit: 5000000, unit: Week}}, requests: {{limit: 10, unit: Second}}}}
      - {{tenant: beta, requests: {{limit: 100, unit: Year}}}}
"""


def test_api_keys_become_a_security_policy_envoy_gateway_accepts_with_tiered_budgets(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    make_backends(cluster, kube, namespace, "openai")
    cluster.kubectl("apply", "-n", namespace, "-f", "-",
                    stdin=key_secret("model-traffic-api-keys", {"acme": KEY_A, "beta": KEY_B}))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=vm_yaml("gpt-4", TIERED))
    obj = wait_vm(kube, namespace, "gpt-4", timeout=90)
    accepted = condition(obj, "ChildrenAccepted")
    assert accepted["status"] == "True", accepted
    assert "SecurityPolicy/gpt-4" in accepted["message"] and "BackendTrafficPolicy/gpt-4" in accepted["message"]
    assert condition(obj, "TenantHeader")["reason"] == "SetByGateway"

    policy = kube.get(k.SECURITY_POLICY, namespace, "gpt-4")
    assert policy is not None
    assert policy["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    assert policy["spec"]["apiKeyAuth"] == {
        "credentialRefs": [{"group": "", "kind": "Secret", "name": "model-traffic-api-keys"}],
        "extractFrom": [{"headers": ["authorization"]}], "forwardClientIDHeader": "x-tenant-id", "sanitize": True}
    # The AI Gateway generated the HTTPRoute the policy targets, and Envoy Gateway accepted the policy on it.
    assert kube.get(k.HTTP_ROUTE, namespace, "gpt-4") is not None
    [ancestor] = policy["status"]["ancestors"]
    assert {c["type"]: c["status"] for c in ancestor["conditions"]}["Accepted"] == "True"
    assert status_writers(policy) == {ENVOY_GATEWAY_MANAGER}
    # Every unit of the tiers (Week, Month, Year among them) was accepted by Envoy Gateway.
    traffic = kube.get(k.BACKEND_TRAFFIC_POLICY, namespace, "gpt-4")
    assert traffic is not None and status_writers(traffic) == {ENVOY_GATEWAY_MANAGER}
    units = {r["limit"]["unit"] for r in traffic["spec"]["rateLimit"]["global"]["rules"]}
    assert units == {"Week", "Second", "Year", "Month", "Day"}

    # No key byte in anything the operator wrote: status, Events, children.
    written = json.dumps([obj["status"], policy["spec"], traffic["spec"],
                          cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout])
    for key in (KEY_A, KEY_B):
        assert key not in written and base64.b64encode(key.encode()).decode() not in written

    # auth removed: the SecurityPolicy is pruned.
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=vm_yaml("gpt-4", f"""\
        gatewayRefs: [{{name: {GATEWAY}}}]
        backends: [{{name: openai}}]
    """))
    wait_for(lambda: kube.get(k.SECURITY_POLICY, namespace, "gpt-4") is None, 30, "SecurityPolicy pruned")


def test_a_security_policy_envoy_gateway_refuses_is_not_ready_until_its_cause_goes(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    make_backends(cluster, kube, namespace, "openai")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=vm_yaml("gpt-4", f"""\
        gatewayRefs: [{{name: {GATEWAY}}}]
        backends: [{{name: openai}}]
        auth: {{apiKey: {{secretRefs: [team-keys, more-keys]}}}}
    """))
    # The Secrets are missing: Envoy Gateway refuses the policy (validateSecretRef), and the model is not Ready.
    obj = wait_vm(kube, namespace, "gpt-4", "False", "ChildRefused", timeout=90)
    message = condition(obj, "Ready")["message"]
    assert "SecurityPolicy/gpt-4" in message and "team-keys" in message, message
    assert condition(obj, "Stalled")["status"] == "True"
    events = cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    assert "ChildRefused" in events

    # Two Secrets that give one key to two clients: Envoy Gateway refuses the duplicate.
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=key_secret("team-keys", {"acme": KEY_A}))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=key_secret("more-keys", {"other": KEY_A}))
    obj = wait_vm(kube, namespace, "gpt-4", "False", "ChildRefused", timeout=90)

    def refused_for_duplicate() -> dict[str, Any] | None:
        found = kube.get(k.VIRTUAL_MODEL, namespace, "gpt-4")
        return found if "duplicated API key" in condition(found, "Ready").get("message", "") else None

    obj = wait_for(refused_for_duplicate, 60, "refused for the duplicated key")
    assert KEY_A not in json.dumps(obj["status"])

    # Fixed: it heals by itself.
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=key_secret("more-keys", {"other": KEY_B}))
    wait_vm(kube, namespace, "gpt-4", timeout=90)


@pytest.mark.parametrize(("spec", "message"), [
    ("auth: {}", "exactly one of apiKey or jwt"),
    ("auth: {apiKey: {}, tenantHeader: x-ai-eg-model}", "tenantHeader cannot be"),
    ("auth: {apiKey: {}}\nrateLimit: {tenantHeader: x-other, requests: {limit: 1, unit: Day}}",
     "rateLimit.tenantHeader must be auth.tenantHeader"),
    ("rateLimit: {requests: {limit: 1, unit: Day}, withoutTenant: Refused}", "need a tenant"),
    ("rateLimit: {tenantHeader: x-t, tenants: [{tenant: a, requests: {limit: 1, unit: Day}},"
     " {tenant: a, tokens: {limit: 1, unit: Day}}]}", "at most one budget"),
    ("rateLimit: {tenantHeader: x-t, tenants: [{tenant: a}]}", "a tenant budget needs tokens or requests"),
    ("rateLimit: {requests: {limit: 1, unit: Fortnight}}", "Unsupported value"),
])
@pytest.mark.parametrize("kind", ["VirtualModel", "TrafficConfig"])
def test_tenant_specs_are_refused_at_apply_with_a_message(
    cluster: Cluster, namespace: str, spec: str, message: str, kind: str
) -> None:
    """A TrafficConfig refuses what its VirtualModel would: it passes auth and rateLimit on unchanged."""
    if kind == "VirtualModel":
        body = f"gatewayRefs: [{{name: {GATEWAY}}}]\nbackends: [{{name: openai}}]\n{spec}\n"
        text = vm_yaml("gpt-4", textwrap.indent(body, "    "))
    else:
        text = traffic_config("llama", TRAFFIC_TEMPLATE, f"stable: {{version: v1}}\n{spec}\n")
    result = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", stdin=text, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_jwt_becomes_a_security_policy_envoy_gateway_accepts(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    make_backends(cluster, kube, namespace, "openai")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=vm_yaml("gpt-4", f"""\
        gatewayRefs: [{{name: {GATEWAY}}}]
        backends: [{{name: openai}}]
        auth:
          jwt: {{issuer: "https://idp.example.com", jwksUri: "https://idp.example.com/jwks.json",
                 audiences: [models], tenantClaim: org_id}}
        rateLimit: {{requests: {{limit: 10, unit: Minute}}}}
    """))
    obj = wait_vm(kube, namespace, "gpt-4", timeout=90)
    assert "SecurityPolicy/gpt-4" in condition(obj, "ChildrenAccepted")["message"]
    assert condition(obj, "TenantHeader")["reason"] == "ClientMayAddTenantHeader"
    policy = kube.get(k.SECURITY_POLICY, namespace, "gpt-4")
    assert policy is not None and status_writers(policy) == {ENVOY_GATEWAY_MANAGER}
    assert policy["spec"]["jwt"]["providers"][0]["claimToHeaders"] == [{"header": "x-tenant-id", "claim": "org_id"}]


# --- model-traffic keys, against the real API server -----------------------------------------------------------

def keys_cmd(kube: Kube, namespace: str, *args: str, **options: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    command, tenant = args[0], (args[1] if len(args) > 1 else None)
    code = keys.run(command, namespace, tenant, kube_=kube, out=out, err=err, **options)
    return code, out.getvalue(), err.getvalue()


def stored_keys(kube: Kube, namespace: str) -> dict[str, str]:
    secret = kube.core.read_namespaced_secret(DEFAULT_API_KEY_SECRET, namespace)
    return {cid: base64.b64decode(value).decode() for cid, value in (secret.data or {}).items()}


def test_key_lifecycle_create_list_rotate_revoke(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    code, first, err = keys_cmd(kube, namespace, "create", "acme")
    assert code == 0, err
    first = first.strip()
    assert stored_keys(kube, namespace) == {"acme": first}  # the key printed is the one stored, and only there
    assert first not in err
    assert keys_cmd(kube, namespace, "create", "acme")[0] == 1  # one create per tenant
    assert keys_cmd(kube, namespace, "create", "beta")[0] == 0

    # A VirtualModel on those keys is accepted by Envoy Gateway.
    make_backends(cluster, kube, namespace, "openai")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=vm_yaml("gpt-4", f"""\
        gatewayRefs: [{{name: {GATEWAY}}}]
        backends: [{{name: openai}}]
        auth: {{apiKey: {{}}}}
    """))
    wait_vm(kube, namespace, "gpt-4", timeout=90)

    code, second, err = keys_cmd(kube, namespace, "rotate", "acme")
    assert code == 0, err
    second = second.strip()
    stored = stored_keys(kube, namespace)
    [rotated] = [cid for cid in stored if cid.startswith("acme.")]
    assert stored == {"acme": first, rotated: second, "beta": stored["beta"]}  # both acme keys valid
    assert keys_cmd(kube, namespace, "rotate", "acme")[0] == 1  # not a third
    code, listed, _ = keys_cmd(kube, namespace, "list")
    rows = [line.split() for line in listed.splitlines()[1:]]
    assert [row[:2] for row in rows] == [["acme", "acme"], ["acme", rotated], ["beta", "beta"]]
    assert first not in listed and second not in listed

    assert keys_cmd(kube, namespace, "revoke", "acme")[0] == 1  # two keys: which one?
    code, _, err = keys_cmd(kube, namespace, "revoke", "acme", client_id="acme")
    assert code == 0, err
    assert set(stored_keys(kube, namespace)) == {rotated, "beta"}
    # Envoy Gateway still accepts the policy with the edited Secret; the model stays Ready.
    obj = wait_vm(kube, namespace, "gpt-4", timeout=90)

    # No key byte anywhere the operator writes, nor in its log.
    everything = json.dumps(obj) + cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    everything += operator.log_path.read_text(errors="replace")
    for key in (first, second):
        assert key not in everything and base64.b64encode(key.encode()).decode() not in everything


# --- backends shared across namespaces ------------------------------------------------------------------------

def test_a_backend_of_another_namespace_is_routed_once_a_reference_grant_there_allows_it(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    platform = f"{namespace}-platform"
    cluster.kubectl("create", "namespace", platform)
    try:
        make_backends(cluster, kube, platform, "openai")
        cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=vm_yaml("gpt-4", f"""\
            gatewayRefs: [{{name: {GATEWAY}}}]
            backends: [{{name: openai, namespace: {platform}}}]
        """))
        obj = wait_vm(kube, namespace, "gpt-4", "False", "RefNotPermitted")
        assert condition(obj, "Stalled")["status"] == "True"
        message = condition(obj, "BackendsResolved")["message"]
        assert f"no ReferenceGrant in namespace {platform} allows AIGatewayRoute of {namespace}" in message, message
        assert kube.get(k.AI_GATEWAY_ROUTE, namespace, "gpt-4") is None  # nothing routed

        # The platform team allows it: the route names the backend's namespace, and the real AI Gateway (its
        # ReferenceGrant check) and Envoy Gateway (the generated HTTPRoute's Backend reference) accept it.
        grant = textwrap.dedent(f"""\
            apiVersion: gateway.networking.k8s.io/v1beta1
            kind: ReferenceGrant
            metadata: {{name: share-backends, namespace: {platform}}}
            spec:
              from:
              - {{group: aigateway.envoyproxy.io, kind: AIGatewayRoute, namespace: {namespace}}}
              - {{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: {namespace}}}
              to:
              - {{group: aigateway.envoyproxy.io, kind: AIServiceBackend}}
              - {{group: gateway.envoyproxy.io, kind: Backend}}
            """)
        cluster.kubectl("apply", "-f", "-", stdin=grant)
        obj = wait_vm(kube, namespace, "gpt-4", timeout=90)
        accepted = condition(obj, "ChildrenAccepted")
        assert accepted["status"] == "True" and "AIGatewayRoute/gpt-4" in accepted["message"], accepted
        live = kube.get(k.AI_GATEWAY_ROUTE, namespace, "gpt-4")
        assert live is not None
        assert live["spec"]["rules"][0]["backendRefs"][0]["namespace"] == platform
        http_route = kube.get(k.HTTP_ROUTE, namespace, "gpt-4")
        assert http_route is not None and status_writers(http_route) == {ENVOY_GATEWAY_MANAGER}
        assert [(b["name"], b.get("namespace")) for b in obj["status"]["backends"]] == [("openai", platform)]

        # Taken back: the backend is left out again.
        cluster.kubectl("delete", "referencegrant", "share-backends", "-n", platform)
        wait_vm(kube, namespace, "gpt-4", "False", "RefNotPermitted")
    finally:
        cluster.kubectl("delete", "namespace", platform, "--wait=false", check=False)


def test_budgets_without_auth_refused_callers_and_tiers_are_accepted_by_envoy_gateway(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    """The rules only a header selects (a tier's regular expression, the default's inverted one, the 0 budget of
    callers without the header) are what Envoy Gateway translates, not just what its schema takes."""
    make_backends(cluster, kube, namespace, "openai")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=vm_yaml("gpt-4", f"""\
        gatewayRefs: [{{name: {GATEWAY}}}]
        backends: [{{name: openai}}]
        rateLimit:
          tenantHeader: x-team
          requests: {{limit: 100, unit: Minute}}
          tenants: [{{tenant: gold, requests: {{limit: 1000, unit: Minute}}}}]
          withoutTenant: Refused
    """))
    obj = wait_vm(kube, namespace, "gpt-4", timeout=90)
    assert "BackendTrafficPolicy/gpt-4" in condition(obj, "ChildrenAccepted")["message"]
    traffic = kube.get(k.BACKEND_TRAFFIC_POLICY, namespace, "gpt-4")
    assert traffic is not None and status_writers(traffic) == {ENVOY_GATEWAY_MANAGER}
    rules = traffic["spec"]["rateLimit"]["global"]["rules"]
    assert [r["limit"]["requests"] for r in rules] == [1000, 100, 0]
    [ancestor] = traffic["status"]["ancestors"]
    assert {c["type"]: c["status"] for c in ancestor["conditions"]}["Accepted"] == "True"


def test_a_traffic_config_passes_api_keys_and_a_tier_to_its_virtual_model_and_envoy_gateway_accepts_them(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=key_secret(DEFAULT_API_KEY_SECRET, {"acme": KEY_A}))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=traffic_config("llama", f"""\
        modelName: llama-3
        gatewayRefs: [{{name: {GATEWAY}}}]
        auth: {{apiKey: {{}}}}
        rateLimit:
          tokens: {{limit: 100000, unit: Month}}
          tenants: [{{tenant: acme, requests: {{limit: 10, unit: Second}}}}]
    """, TRAFFIC_TEMPLATE, """\
        stable: {version: v1, storageUri: "hf://org/llama:rev1"}
    """))
    wait_served(kube, namespace, "llama-v1")
    # The VirtualModel the TrafficConfig owns carries its auth and budgets, and is Ready: its SecurityPolicy and
    # BackendTrafficPolicy were accepted by Envoy Gateway (ChildrenAccepted).
    obj = wait_vm(kube, namespace, "llama", timeout=120)
    assert obj["spec"]["auth"] == {"tenantHeader": "x-tenant-id",
                                   "apiKey": {"secretRefs": [DEFAULT_API_KEY_SECRET], "headers": ["authorization"]}}
    assert obj["spec"]["rateLimit"]["tenants"] == [{"tenant": "acme", "requests": {"limit": 10, "unit": "Second"}}]
    accepted = condition(obj, "ChildrenAccepted")
    assert accepted["status"] == "True", accepted
    assert "SecurityPolicy/llama" in accepted["message"] and "BackendTrafficPolicy/llama" in accepted["message"]

    policy = kube.get(k.SECURITY_POLICY, namespace, "llama")
    assert policy is not None
    assert policy["spec"]["apiKeyAuth"]["forwardClientIDHeader"] == "x-tenant-id"
    [ancestor] = policy["status"]["ancestors"]
    assert {c["type"]: c["status"] for c in ancestor["conditions"]}["Accepted"] == "True"
    assert status_writers(policy) == {ENVOY_GATEWAY_MANAGER}
    traffic = kube.get(k.BACKEND_TRAFFIC_POLICY, namespace, "llama")
    assert traffic is not None and status_writers(traffic) == {ENVOY_GATEWAY_MANAGER}
    assert {r["limit"]["unit"] for r in traffic["spec"]["rateLimit"]["global"]["rules"]} == {"Second", "Month"}
