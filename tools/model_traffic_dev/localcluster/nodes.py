"""Fake nodes on which pods really get scheduled and run, without a container: kube-scheduler and kwok.

kube-scheduler (the API server's release) binds pods to nodes as in any cluster; kwok (``sigs.k8s.io/kwok``)
plays the kubelet of the nodes carrying its annotation: it keeps them Ready (with leases) and moves their
pods through its default stages (``kustomize/stage/pod/fast``: pod-ready, pod-complete, pod-delete; built
into the binary), so a scheduled pod gets an IP and is Running and Ready, and a deleted one goes away.
No image is ever pulled and nothing runs. A pod no node can hold (resources, selectors) stays Pending,
Unschedulable, as it would in a cluster without such a node.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

# kwok's own convention (test/kwok/fake-node.yaml; kwokctl runs kwok with this selector).
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_NODE_VALUE = "fake"
# Pod and node IPs kwok hands out; away from the service range 10.0.0.0/24 (kwok's default --cidr) and the
# stack's links on 10.213.0.0/16.
POD_CIDR = "10.244.0.1/16"
NODE_IP = "10.245.0.1"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_LABEL = "nvidia.com/gpu.present"


@dataclass(frozen=True)
class FakeNode:
    name: str
    cpu: str
    memory: str
    gpus: int = 0
    pods: str = "110"

    def manifest(self) -> dict[str, Any]:
        labels = {"kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                  "type": "kwok"}
        if self.gpus:
            labels[GPU_LABEL] = "true"
        return {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.name, "labels": labels,
                             "annotations": {KWOK_NODE_ANNOTATION: KWOK_NODE_VALUE,
                                             # As kwok's example node: no TTL caching of the node object.
                                             "node.alpha.kubernetes.io/ttl": "0"}}}

    def status(self) -> dict[str, Any]:
        """The capacity kwok's node-initialize stage keeps (it fills conditions, addresses and nodeInfo)."""
        resources = {"cpu": self.cpu, "memory": self.memory, "pods": self.pods}
        if self.gpus:
            resources[GPU_RESOURCE] = str(self.gpus)
        return {"status": {"capacity": resources, "allocatable": resources}}


# Two CPU nodes and two with 8 GPUs each: an InferenceService asking for more GPUs than one node has (or a
# node selector none matches) stays unschedulable, and so not Ready, for real.
FAKE_NODES = (
    FakeNode("kwok-cpu-0", cpu="32", memory="128Gi"),
    FakeNode("kwok-cpu-1", cpu="32", memory="128Gi"),
    FakeNode("kwok-gpu-0", cpu="64", memory="512Gi", gpus=8),
    FakeNode("kwok-gpu-1", cpu="64", memory="512Gi", gpus=8),
)
MAX_GPUS_PER_NODE = max(node.gpus for node in FAKE_NODES)


def kwok_args(kubeconfig: Path) -> list[str]:
    """As kwokctl runs kwok beside a cluster (manage only the annotated nodes), without its own server."""
    return [
        f"--kubeconfig={kubeconfig}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}={KWOK_NODE_VALUE}",
        f"--cidr={POD_CIDR}",
        f"--node-ip={NODE_IP}",
        # kwokctl's setting: nodes renew a Lease, as kubelets do.
        "--node-lease-duration-seconds=40",
    ]


def scheduler_args(kubeconfig: Path, port: int, cert_dir: Path) -> list[str]:
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--leader-elect=false",
        "--bind-address=127.0.0.1",
        # Never the default 10259: several stacks may run at once.
        f"--secure-port={port}",
        f"--cert-dir={cert_dir}",
    ]
