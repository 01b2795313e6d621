"""Every test namespace gets its own Gateway ``ai-gateway``, accepted by the stack's real Envoy Gateway.

VirtualModels claim a model name per Gateway, so a Gateway per namespace keeps the tests from claiming
each other's names while an earlier test's namespace is still being deleted. Envoy Gateway writes its status
(Accepted, and the address of the Service it makes); nothing here writes it.
"""

from __future__ import annotations

from typing import Any

import pytest

from model_traffic.kube import Kube, ResourceType
from model_traffic_dev.localcluster import stack
from tests.conftest import Cluster, wait_for

GATEWAY = "ai-gateway"
ENVOY_GATEWAY_CONTROLLER = stack.GATEWAY_CONTROLLER_NAME
GATEWAY_CLASS = ResourceType("gateway.networking.k8s.io", "v1", "gatewayclasses", "GatewayClass")


@pytest.fixture(scope="session")
def gateway_class(cluster: Cluster, kube: Kube) -> str:
    """The GatewayClass the stack's Envoy Gateway accepted."""
    def accepted() -> str | None:
        for item in kube.list_objects(GATEWAY_CLASS):
            conditions = (item.get("status") or {}).get("conditions") or []
            if item["spec"].get("controllerName") == ENVOY_GATEWAY_CONTROLLER and any(
                    c.get("type") == "Accepted" and c.get("status") == "True" for c in conditions):
                return str(item["metadata"]["name"])
        return None

    return wait_for(accepted, 60, "a GatewayClass accepted by Envoy Gateway")


@pytest.fixture
def namespace(namespace: str, cluster: Cluster, kube: Kube, gateway_class: str) -> str:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=f"""\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {GATEWAY}}}
spec:
  gatewayClassName: {gateway_class}
  listeners: [{{name: http, protocol: HTTP, port: 80}}]
""")
    return namespace


# Who writes the status of what the operator hands over (checked in the tests: never a test).
AI_GATEWAY_MANAGER = stack.AI_GATEWAY_FIELD_MANAGER
ENVOY_GATEWAY_MANAGER = stack.ENVOY_GATEWAY_FIELD_MANAGER


def status_writers(obj: dict[str, Any] | None) -> set[str]:
    """The field managers that wrote an object's status subresource."""
    return {entry["manager"] for entry in ((obj or {}).get("metadata") or {}).get("managedFields") or []
            if entry.get("subresource") == "status"}
