"""ManagedAIServiceBackend reconciler: observe, render, apply, report."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from model_traffic import kube
from model_traffic.kinds.backend.render import BackendWorld, render
from model_traffic.kinds.backend.spec import SECRET_KEY_BY_CREDENTIAL_TYPE, ManagedAIServiceBackendSpec
from model_traffic.kube import Kube
from model_traffic.outbound import DEFAULT_POLICY, OutboundPolicy
from model_traffic.pipeline import apply
from model_traffic.pipeline.result import apply_plan, result_of
from model_traffic.pipeline.runtime import Result, invalid_spec

# Whether the AIServiceBackend schema accepts an InferencePool: a property of the installed CRDs, asked
# with a server-side dry run and remembered briefly so a pool-backed backend does not ask every time.
_CAPABILITY_TTL_SECONDS = 300.0
# Secrets are read by name, not watched (least privilege: app.COMPLETELY_CACHED): while a backend's Secret or its key
# is missing, the backend is reconciled again this often, so it heals soon after the Secret is fixed.
SECRET_RECHECK_SECONDS = 10.0
_pool_capability: dict[str, tuple[float, bool]] = {}
_pool_capability_lock = threading.Lock()


def ai_gateway_version(kube_: Kube, override: str | None = None) -> str | None:
    if override:
        return override
    served = kube_.served_versions(kube.AI_SERVICE_BACKEND.group)
    for version in ("v1beta1", "v1alpha1"):
        if version in served:
            return version
    return None


def pool_accepted_at_backend_level(kube_: Kube, version: str, namespace: str, pool: str) -> bool:
    with _pool_capability_lock:
        cached = _pool_capability.get(version)
        if cached and time.monotonic() - cached[0] < _CAPABILITY_TTL_SECONDS:
            return cached[1]
    probe = {
        "apiVersion": f"{kube.AI_SERVICE_BACKEND.group}/{version}",
        "kind": "AIServiceBackend",
        "metadata": {"name": "model-traffic-capability-probe", "namespace": namespace},
        "spec": {
            "schema": {"name": "OpenAI"},
            "backendRef": {"group": kube.INFERENCE_POOL.group, "kind": "InferencePool", "name": pool},
        },
    }
    try:
        kube_.apply(probe, dry_run=True)
        accepted = True
    except ApiException as error:
        if error.status not in (400, 422):
            raise
        accepted = False
    with _pool_capability_lock:
        _pool_capability[version] = (time.monotonic(), accepted)
    return accepted


def observe(kube_: Kube, spec: ManagedAIServiceBackendSpec, namespace: str, name: str,
            version_override: str | None = None, outbound: OutboundPolicy = DEFAULT_POLICY) -> BackendWorld:
    version = ai_gateway_version(kube_, version_override)
    world = BackendWorld(namespace=namespace, name=name, ai_gateway_version=version, outbound=outbound)
    endpoint = spec.endpoint
    if endpoint.inference_service:
        isvc = kube_.get(kube.INFERENCE_SERVICE, namespace, endpoint.inference_service.name) \
            if kube_.served_versions(kube.INFERENCE_SERVICE.group) else None
        world = dataclasses.replace(world, inference_service=isvc, inference_service_checked=True)
    if endpoint.inference_pool:
        pool_name = endpoint.inference_pool.name
        exists = bool(kube_.served_versions(kube.INFERENCE_POOL.group)) and \
            kube_.get(kube.INFERENCE_POOL, namespace, pool_name) is not None
        at_backend = bool(exists and version and pool_accepted_at_backend_level(kube_, version, namespace, pool_name))
        world = dataclasses.replace(world, inference_pool_exists=exists, pool_at_backend_level=at_backend)
    if endpoint.backend_ref:
        exists = kube_.get(kube.BACKEND, namespace, endpoint.backend_ref.name) is not None
        world = dataclasses.replace(world, referenced_backend_exists=exists)
    if spec.credentials:
        secret = kube_.get(kube.SECRET, namespace, spec.credentials.secret_ref.name)
        if secret is not None:
            # Only the key names are kept: a credential's value never leaves the API server through us.
            keys = frozenset((secret.get("data") or {}).keys()) | frozenset((secret.get("stringData") or {}).keys())
            world = dataclasses.replace(world, secret_keys=keys)
    return world


def reconcile(kube_: Kube, body: dict[str, Any], version_override: str | None = None,
              outbound: OutboundPolicy = DEFAULT_POLICY) -> Result:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    try:
        spec = ManagedAIServiceBackendSpec.model_validate(body.get("spec") or {})
    except ValidationError as error:
        return invalid_spec(error)
    owner = apply.Owner.of(body)
    world = observe(kube_, spec, namespace, name, version_override, outbound)
    plan = render(spec, world)
    applied = apply_plan(kube_, owner, plan)
    result = result_of(plan, applied)
    if spec.credentials and result.requeue_after is None and (
            world.secret_keys is None or SECRET_KEY_BY_CREDENTIAL_TYPE[spec.credentials.type] not in world.secret_keys):
        result = dataclasses.replace(result, requeue_after=SECRET_RECHECK_SECONDS)
    return result
