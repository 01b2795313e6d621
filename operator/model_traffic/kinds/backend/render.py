"""ManagedAIServiceBackend: spec + observed world -> desired children, status and verdict.

Pure: no client, no clock. The reconciler gathers :class:`BackendWorld` and writes what
:func:`render` returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from model_traffic import kube
from model_traffic.kinds.backend.spec import (
    SECRET_KEY_BY_CREDENTIAL_TYPE,
    Credentials,
    ManagedAIServiceBackendSpec,
)
from model_traffic.kube import ResourceType
from model_traffic.outbound import OutboundPolicy
from model_traffic.pipeline.conditions import Detail, Verdict
from model_traffic.pipeline.plan import Child, Plan


@dataclass(frozen=True)
class BackendWorld:
    """What the reconciler observed; None means 'not looked at / not applicable'."""

    namespace: str
    name: str
    ai_gateway_version: str | None  # v1beta1 / v1alpha1; None when AI Gateway's CRDs are not installed
    inference_service: dict[str, Any] | None = None
    inference_service_checked: bool = False
    inference_pool_exists: bool | None = None
    pool_at_backend_level: bool = False  # the cluster's AIServiceBackend accepts an InferencePool reference
    referenced_backend_exists: bool | None = None
    secret_keys: frozenset[str] | None = None  # keys of the credentials Secret; None when it does not exist
    outbound: OutboundPolicy = field(default_factory=OutboundPolicy)  # the operator's, from its settings


def _meta(name: str) -> dict[str, Any]:
    return {"name": name}


def predictor_address(isvc: dict[str, Any], namespace: str, port: int) -> tuple[str, int, str]:
    """Host, port and URL of a KServe predictor: from its status, else the naming convention.

    Not ``status.url``: in KServe's Standard (raw Deployment) mode it names the ingress domain
    (``http://<name>-<namespace>.example.com``) even when no ingress is made, and nothing answers there."""
    status = isvc.get("status") or {}
    candidates = [
        ((status.get("components") or {}).get("predictor") or {}).get("address", {}).get("url"),
        (status.get("address") or {}).get("url"),
    ]
    for url in candidates:
        if url:
            parts = urlsplit(url)
            if parts.hostname:
                default_port = 443 if parts.scheme == "https" else port
                return parts.hostname, parts.port or default_port, url
    host = f"{isvc['metadata']['name']}-predictor.{namespace}.svc.cluster.local"
    return host, port, f"http://{host}:{port}"


def _is_ready(obj: dict[str, Any]) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _security_policy_spec(creds: Credentials, target: dict[str, Any]) -> dict[str, Any]:
    secret = {"secretRef": {"name": creds.secret_ref.name}}
    spec: dict[str, Any] = {"type": creds.type, "targetRefs": [target]}
    if creds.type == "APIKey":
        spec["apiKey"] = secret
    elif creds.type == "AnthropicAPIKey":
        spec["anthropicAPIKey"] = secret
    elif creds.type == "AzureAPIKey":
        spec["azureAPIKey"] = secret
    elif creds.type == "AWSCredentials":
        credentials_file: dict[str, Any] = dict(secret)
        if creds.profile:
            credentials_file["profile"] = creds.profile
        spec["awsCredentials"] = {"region": creds.region, "credentialsFile": credentials_file}
    elif creds.type == "AzureCredentials":
        spec["azureCredentials"] = {
            "clientID": creds.client_id, "tenantID": creds.tenant_id, "clientSecretRef": secret["secretRef"],
        }
    elif creds.type == "GCPCredentials":
        spec["gcpCredentials"] = {
            "projectName": creds.project_name, "region": creds.region, "credentialsFile": secret,
        }
    return spec


def _backend_tls(spec: ManagedAIServiceBackendSpec) -> dict[str, Any] | None:
    tls = spec.tls
    if tls is None:
        return None
    out: dict[str, Any] = {}
    if tls.sni:
        out["sni"] = tls.sni
    if tls.well_known_ca_certificates:
        out["wellKnownCACertificates"] = tls.well_known_ca_certificates
    if tls.ca_certificate_refs:
        out["caCertificateRefs"] = [
            {"group": "", "kind": "ConfigMap", "name": ref.name} for ref in tls.ca_certificate_refs
        ]
    if tls.insecure_skip_verify:
        out["insecureSkipVerify"] = True
    return out


def _refused_endpoint(endpoint: dict[str, Any], policy: OutboundPolicy) -> str | None:
    """Why an Envoy Gateway Backend endpoint ({"fqdn": {...}} or {"ip": {...}}) may not be written; None if it may."""
    target = endpoint.get("fqdn") or endpoint.get("ip") or {}
    return policy.refusal(str(target.get("hostname") or target.get("address") or ""))


def render(spec: ManagedAIServiceBackendSpec, world: BackendWorld) -> Plan:
    name, namespace = world.name, world.namespace
    details: list[Detail] = []
    status: dict[str, Any] = {}
    endpoint = spec.endpoint

    if world.ai_gateway_version is None:
        verdict = Verdict("Stalled", "AIGatewayNotInstalled",
                          "the cluster serves no aigateway.envoyproxy.io API: install Envoy AI Gateway's CRDs")
        return Plan(verdict, [Detail("EndpointResolved", None, "NotChecked", "")], status=status)
    status["aiGatewayApiVersion"] = world.ai_gateway_version
    aisb_type = kube.AI_SERVICE_BACKEND.at(world.ai_gateway_version)
    bsp_type = kube.BACKEND_SECURITY_POLICY.at(world.ai_gateway_version)

    # --- endpoint -------------------------------------------------------------------------------
    backend_endpoint: dict[str, Any] | None = None  # an Envoy Gateway Backend endpoint we own
    backend_ref: dict[str, Any] | None = None  # what the AIServiceBackend points at
    waiting: Verdict | None = None
    stalled: Verdict | None = None
    routing = "Backend"

    if endpoint.fqdn:
        backend_endpoint = {"fqdn": {"hostname": endpoint.fqdn.hostname, "port": endpoint.fqdn.port}}
        status["endpoint"] = {"address": endpoint.fqdn.hostname, "port": endpoint.fqdn.port,
                              "url": f"{'https' if spec.tls else 'http'}://{endpoint.fqdn.hostname}"
                                     f":{endpoint.fqdn.port}"}
        status["endpointSummary"] = f"{endpoint.fqdn.hostname}:{endpoint.fqdn.port}"
        details.append(Detail("EndpointResolved", True, "Resolved", f"{status['endpointSummary']}"))
    elif endpoint.ip:
        backend_endpoint = {"ip": {"address": endpoint.ip.address, "port": endpoint.ip.port}}
        status["endpoint"] = {"address": endpoint.ip.address, "port": endpoint.ip.port}
        status["endpointSummary"] = f"{endpoint.ip.address}:{endpoint.ip.port}"
        details.append(Detail("EndpointResolved", True, "Resolved", f"{status['endpointSummary']}"))
    elif endpoint.inference_service:
        ref = endpoint.inference_service
        status["endpointSummary"] = f"InferenceService/{ref.name}"
        isvc = world.inference_service
        if isvc is None:
            message = f"InferenceService {ref.name} not found in namespace {namespace}"
            details.append(Detail("EndpointResolved", False, "InferenceServiceNotFound", message))
            stalled = Verdict("Stalled", "InferenceServiceNotFound", message)
        else:
            host, port, url = predictor_address(isvc, namespace, ref.port)
            backend_endpoint = {"fqdn": {"hostname": host, "port": port}}
            status["endpoint"] = {"address": host, "port": port, "url": url}
            if _is_ready(isvc):
                details.append(Detail("EndpointResolved", True, "Resolved", f"InferenceService {ref.name}: {url}"))
            else:
                message = f"waiting for InferenceService {ref.name} to become Ready"
                details.append(Detail("EndpointResolved", False, "InferenceServiceNotReady", message))
                waiting = Verdict("Progressing", "InferenceServiceNotReady", message)
    elif endpoint.inference_pool:
        pool = endpoint.inference_pool.name
        status["endpointSummary"] = f"InferencePool/{pool}"
        status["inferencePool"] = pool
        if not world.inference_pool_exists:
            message = f"InferencePool {pool} not found in namespace {namespace}"
            details.append(Detail("EndpointResolved", False, "InferencePoolNotFound", message))
            stalled = Verdict("Stalled", "InferencePoolNotFound", message)
        elif world.pool_at_backend_level:
            backend_ref = {"group": kube.INFERENCE_POOL.group, "kind": "InferencePool", "name": pool}
            details.append(Detail("EndpointResolved", True, "Resolved", f"InferencePool {pool} (backend level)"))
        else:
            routing = "InferencePool"
            details.append(Detail("EndpointResolved", True, "RouteLevel",
                                  f"InferencePool {pool}: VirtualModels route to it at route level"))
    elif endpoint.backend_ref:
        existing = endpoint.backend_ref.name
        status["endpointSummary"] = f"Backend/{existing}"
        if not world.referenced_backend_exists:
            message = f"Envoy Gateway Backend {existing} not found in namespace {namespace}"
            details.append(Detail("EndpointResolved", False, "BackendNotFound", message))
            stalled = Verdict("Stalled", "BackendNotFound", message)
        else:
            backend_ref = {"group": kube.BACKEND.group, "kind": "Backend", "name": existing}
            details.append(Detail("EndpointResolved", True, "Resolved", f"existing Backend {existing}"))
    status["routing"] = routing

    if backend_endpoint is not None:
        refused = _refused_endpoint(backend_endpoint, world.outbound)
        if refused is not None:
            # Nothing is handed to the gateway for an address it must not reach; a Backend written for an earlier,
            # allowed address goes too, so no route keeps sending traffic on the strength of an outdated spec.
            message = f"{refused}: no Backend or AIServiceBackend is written for this endpoint"
            details = [d for d in details if d.type != "EndpointResolved"]
            details.append(Detail("EndpointResolved", False, "AddressNotAllowed", message))
            return Plan(Verdict("Stalled", "AddressNotAllowed", message), details, [],
                        [kube.BACKEND, aisb_type, bsp_type, kube.QUOTA_POLICY], status)

    children: list[Child] = []
    prune: list[ResourceType] = []
    if backend_endpoint is not None:
        backend_spec: dict[str, Any] = {"endpoints": [backend_endpoint]}
        tls = _backend_tls(spec)
        if tls:
            backend_spec["tls"] = tls
        children.append(Child(kube.BACKEND, {
            "apiVersion": kube.BACKEND.api_version, "kind": "Backend", "metadata": _meta(name), "spec": backend_spec,
        }))
        backend_ref = {"group": kube.BACKEND.group, "kind": "Backend", "name": name}
    else:
        prune.append(kube.BACKEND)

    if backend_ref is not None:
        aisb_spec: dict[str, Any] = {"schema": spec.schema_.wire(), "backendRef": backend_ref}
        if spec.header_mutation:
            aisb_spec["headerMutation"] = spec.header_mutation.wire()
        if spec.body_mutation:
            aisb_spec["bodyMutation"] = spec.body_mutation.wire()
        children.append(Child(aisb_type, {
            "apiVersion": aisb_type.api_version, "kind": "AIServiceBackend", "metadata": _meta(name),
            "spec": aisb_spec,
        }))
    else:
        prune.append(aisb_type)

    # --- credentials ------------------------------------------------------------------------------
    creds = spec.credentials
    policy_target: dict[str, Any] | None = None
    if backend_ref is not None:
        policy_target = {"group": aisb_type.group, "kind": "AIServiceBackend", "name": name}
    elif routing == "InferencePool" and world.inference_pool_exists:
        policy_target = {"group": kube.INFERENCE_POOL.group, "kind": "InferencePool",
                         "name": status["inferencePool"]}
    if creds is not None and policy_target is not None:
        children.append(Child(bsp_type, {
            "apiVersion": bsp_type.api_version, "kind": "BackendSecurityPolicy", "metadata": _meta(name),
            "spec": _security_policy_spec(creds, policy_target),
        }))
    else:
        prune.append(bsp_type)
    if creds is None:
        details.append(Detail("CredentialsResolved", True, "NoCredentials", "no credentials are configured"))
    else:
        key = SECRET_KEY_BY_CREDENTIAL_TYPE[creds.type]
        secret = creds.secret_ref.name
        if world.secret_keys is None:
            message = f"Secret {secret} not found in namespace {namespace}"
            details.append(Detail("CredentialsResolved", False, "SecretNotFound", message))
            stalled = stalled or Verdict("Stalled", "SecretNotFound", message)
        elif key not in world.secret_keys:
            message = f"Secret {secret} has no key {key!r}, which {creds.type} credentials are read from"
            details.append(Detail("CredentialsResolved", False, "SecretKeyMissing", message))
            stalled = stalled or Verdict("Stalled", "SecretKeyMissing", message)
        else:
            details.append(Detail("CredentialsResolved", True, "Resolved", f"Secret {secret}, key {key!r}"))

    # --- quota ------------------------------------------------------------------------------------
    if spec.quota is not None and backend_ref is not None:
        quota_spec: dict[str, Any] = {
            "targetRefs": [{"group": aisb_type.group, "kind": "AIServiceBackend", "name": name}],
        }
        if spec.quota.service:
            quota_spec["serviceQuota"] = {"quota": spec.quota.service.wire()}
        if spec.quota.per_model:
            quota_spec["perModelQuotas"] = [
                {"modelName": q.model_name, "quota": {"defaultBucket": {"limit": q.limit, "duration": q.duration}}}
                for q in spec.quota.per_model
            ]
        children.append(Child(kube.QUOTA_POLICY, {
            "apiVersion": kube.QUOTA_POLICY.api_version, "kind": "QuotaPolicy", "metadata": _meta(name),
            "spec": quota_spec,
        }))
    else:
        prune.append(kube.QUOTA_POLICY)

    # --- verdict (whether the controllers accept the children is read back by result_of) ----------
    if stalled:
        verdict = stalled
    elif waiting:
        verdict = waiting
    else:
        verdict = Verdict("Ready", "Ready", f"backend {status.get('endpointSummary', name)} is ready")
    return Plan(verdict, details, children, prune, status)
