"""The one way this operator talks to the API server (besides kopf's own watches).

The official ``kubernetes`` client, used through its generic custom-object calls with explicit
group/version/plural: no discovery round trip on the hot path, and new CRDs installed after start-up
work without cache invalidation. Writes are server-side apply with one field manager.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any, cast

import kubernetes
from kubernetes.client.exceptions import ApiException

FIELD_MANAGER = "model-traffic-operator"


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def at(self, version: str) -> ResourceType:
        return ResourceType(self.group, version, self.plural, self.kind)


# Everything the operator reads or writes. AI Gateway kinds are listed at their newest version; the
# version actually used is discovered (see discover_ai_gateway_version).
BACKEND = ResourceType("gateway.envoyproxy.io", "v1alpha1", "backends", "Backend")
BACKEND_TRAFFIC_POLICY = ResourceType("gateway.envoyproxy.io", "v1alpha1", "backendtrafficpolicies",
                                      "BackendTrafficPolicy")
AI_SERVICE_BACKEND = ResourceType("aigateway.envoyproxy.io", "v1beta1", "aiservicebackends", "AIServiceBackend")
BACKEND_SECURITY_POLICY = ResourceType("aigateway.envoyproxy.io", "v1beta1", "backendsecuritypolicies",
                                       "BackendSecurityPolicy")
AI_GATEWAY_ROUTE = ResourceType("aigateway.envoyproxy.io", "v1beta1", "aigatewayroutes", "AIGatewayRoute")
QUOTA_POLICY = ResourceType("aigateway.envoyproxy.io", "v1alpha1", "quotapolicies", "QuotaPolicy")
INFERENCE_SERVICE = ResourceType("serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService")
INFERENCE_POOL = ResourceType("inference.networking.k8s.io", "v1", "inferencepools", "InferencePool")
GATEWAY = ResourceType("gateway.networking.k8s.io", "v1", "gateways", "Gateway")
SECRET = ResourceType("", "v1", "secrets", "Secret")


def load_config() -> kubernetes.client.Configuration:
    """In-cluster when running in a pod, else $KUBECONFIG / ~/.kube/config."""
    config = kubernetes.client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        kubernetes.config.load_incluster_config(client_configuration=config)  # type: ignore[no-untyped-call]
    else:
        kubernetes.config.load_kube_config(client_configuration=config)  # type: ignore[no-untyped-call]
    return config


class Kube:
    """Thin, typed wrapper over the client: objects are plain dicts, absence is None."""

    def __init__(self, config: kubernetes.client.Configuration | None = None) -> None:
        self.api_client = kubernetes.client.ApiClient(config or load_config())
        self.custom = kubernetes.client.CustomObjectsApi(self.api_client)
        self.core = kubernetes.client.CoreV1Api(self.api_client)
        self._served: dict[str, list[str]] = {}
        self._served_lock = threading.Lock()

    # -- reads -------------------------------------------------------------------------------
    def get(self, rtype: ResourceType, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            if rtype == SECRET:
                secret = self.core.read_namespaced_secret(name, namespace)
                return cast(dict[str, Any], self.api_client.sanitize_for_serialization(secret))  # type: ignore[no-untyped-call]
            return cast(dict[str, Any], self.custom.get_namespaced_custom_object(
                rtype.group, rtype.version, namespace, rtype.plural, name
            ))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def list_objects(self, rtype: ResourceType, namespace: str | None = None) -> list[dict[str, Any]]:
        if namespace:
            result = self.custom.list_namespaced_custom_object(rtype.group, rtype.version, namespace, rtype.plural)
        else:
            result = self.custom.list_cluster_custom_object(rtype.group, rtype.version, rtype.plural)
        return cast(list[dict[str, Any]], cast(dict[str, Any], result).get("items", []))

    # -- writes ------------------------------------------------------------------------------
    def apply(self, obj: dict[str, Any], *, force: bool = True, dry_run: bool = False) -> dict[str, Any]:
        """Server-side apply of a whole custom object under our field manager."""
        group, _, version = str(obj["apiVersion"]).rpartition("/")
        result = self.custom.patch_namespaced_custom_object(
            group, version, obj["metadata"]["namespace"], _plural_of(obj["kind"]), obj["metadata"]["name"], obj,
            field_manager=FIELD_MANAGER, force=force, dry_run="All" if dry_run else None,
            _content_type="application/apply-patch+yaml",
        )
        return cast(dict[str, Any], result)

    def delete(self, rtype: ResourceType, namespace: str, name: str, *, uid: str | None = None) -> bool:
        """Delete, only if the uid still matches (so a same-named newcomer is never deleted)."""
        options = kubernetes.client.V1DeleteOptions(
            propagation_policy="Background",
            preconditions=kubernetes.client.V1Preconditions(uid=uid) if uid else None,
        )
        try:
            self.custom.delete_namespaced_custom_object(
                rtype.group, rtype.version, namespace, rtype.plural, name, body=options
            )
            return True
        except ApiException as error:
            if error.status in (404, 409):
                return False
            raise

    def patch_status(self, rtype: ResourceType, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            rtype.group, rtype.version, namespace, rtype.plural, name, {"status": status},
            _content_type="application/merge-patch+json",
        )

    # -- discovery ---------------------------------------------------------------------------
    def served_versions(self, group: str) -> list[str]:
        """Versions of an API group the server serves, preferred first; [] when the group is absent."""
        with self._served_lock:
            if group in self._served:
                return self._served[group]
        groups = kubernetes.client.ApisApi(self.api_client).get_api_versions().groups or []
        found: dict[str, list[str]] = {}
        for api_group in groups:
            versions = [v.version for v in api_group.versions]
            preferred = api_group.preferred_version.version if api_group.preferred_version else None
            if preferred in versions:
                versions.remove(preferred)
                versions.insert(0, preferred)
            found[api_group.name] = versions
        with self._served_lock:
            # Only positive answers are cached: a missing group may be installed later.
            self._served.update(found)
        return found.get(group, [])


_PLURALS = {
    rtype.kind: rtype.plural
    for rtype in (BACKEND, BACKEND_TRAFFIC_POLICY, AI_SERVICE_BACKEND, BACKEND_SECURITY_POLICY, AI_GATEWAY_ROUTE,
                  QUOTA_POLICY, INFERENCE_SERVICE, INFERENCE_POOL, GATEWAY, SECRET)
}
_PLURALS.update({
    "ManagedAIServiceBackend": "managedaiservicebackends",
    "VirtualModel": "virtualmodels",
    "TrafficConfig": "trafficconfigs",
})


def _plural_of(kind: str) -> str:
    return _PLURALS[kind]
