"""KServe's controller as the stack runs it: its own manifests, read from the released module at run time.

KServe installs with kustomize (``config/default``); the stack needs only a few of its pieces and renders
them here, from the module's files, changing only what a cluster without Knative, Istio or an ingress needs:

- the ``inferenceservice-config`` ConfigMap (``config/configmap/inferenceservice.yaml``) with
  ``deploy.defaultDeploymentMode`` set to ``Standard`` (v0.16's name for RawDeployment:
  ``pkg/constants/constants.go``, ``LegacyRawDeployment``) and ``ingress.disableIngressCreation`` on, so an
  InferenceService becomes a Deployment and a Service and no Ingress or Istio VirtualService is made;
- the webhook configurations (``config/webhook/manifests.yaml``), their ``clientConfig.service`` (kustomize
  vars) replaced by the manager's address in its network namespace and the stack's CA;
- the Hugging Face ClusterServingRuntime (``config/runtimes/kserve-huggingfaceserver.yaml``) with the image
  that ``config/runtimes/kustomization.yaml`` gives it.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from . import upstream

NAMESPACE = "kserve"
CONFIG_MAP = "inferenceservice-config"
# cmd/manager/main.go: --webhook-port defaults to 9443; metrics on :8080 and probes on :8081 (its own netns).
WEBHOOK_PORT = 9443
HEALTH_PORT = 8081
HUGGINGFACE_RUNTIME_FILE = "config/runtimes/kserve-huggingfaceserver.yaml"
HUGGINGFACE_RUNTIME = "kserve-huggingfaceserver"
# pkg/constants/constants.go: DeploymentModeType Standard (RawDeployment is its deprecated alias).
DEPLOYMENT_MODE = "Standard"
# KServe's image runs the binary as /manager (config/manager/manager.yaml), and client-go names the field
# manager of its writes after argv[0]: the stack runs it through a link named so.
FIELD_MANAGER = "manager"


def module_root() -> Path:
    return upstream.module_dir(upstream.KSERVE.module, upstream.KSERVE.version)


def inferenceservice_config(root: Path | None = None) -> dict[str, Any]:
    """KServe's ConfigMap, for Kubernetes-native Deployments and without an ingress."""
    root = root or module_root()
    config_map: dict[str, Any] = yaml.safe_load((root / "config/configmap/inferenceservice.yaml").read_text())
    data = config_map["data"]
    deploy = json.loads(data["deploy"])
    deploy["defaultDeploymentMode"] = DEPLOYMENT_MODE
    data["deploy"] = json.dumps(deploy)
    ingress = json.loads(data["ingress"])
    # pkg/controller/v1beta1/inferenceservice/reconcilers/ingress/kube_ingress_reconciler.go: with creation off
    # the reconciler still fills status.url and status.address and sets IngressReady.
    ingress["disableIngressCreation"] = True
    # cmd/manager/main.go looks for Istio's CRDs unless this is set; there is no Istio here.
    ingress["disableIstioVirtualHost"] = True
    data["ingress"] = json.dumps(ingress)
    config_map["metadata"]["namespace"] = NAMESPACE
    return config_map


def huggingface_runtime(root: Path | None = None) -> dict[str, Any]:
    """The ClusterServingRuntime, its image named as config/runtimes/kustomization.yaml's `images:` names it."""
    root = root or module_root()
    runtime: dict[str, Any] = yaml.safe_load((root / HUGGINGFACE_RUNTIME_FILE).read_text())
    kustomization = yaml.safe_load((root / "config/runtimes/kustomization.yaml").read_text())
    for container in runtime["spec"]["containers"]:
        container["image"] = kustomize_image(container["image"], kustomization.get("images") or [])
    return runtime


def kustomize_image(image: str, images: list[dict[str, str]]) -> str:
    """kustomize's `images:` transformer for one reference: name matched without tag, newName/newTag applied."""
    name, _, tag = image.partition(":")
    for entry in images:
        if entry.get("name") == name:
            return f"{entry.get('newName', name)}:{entry.get('newTag', tag)}"
    return image


def webhook_configurations(address: str, ca_bundle: bytes, root: Path | None = None) -> list[dict[str, Any]]:
    """KServe's webhook configurations, addressed at the manager (https://address:9443/path)."""
    root = root or module_root()
    documents = [doc for doc in yaml.safe_load_all((root / "config/webhook/manifests.yaml").read_text()) if doc]
    encoded = base64.b64encode(ca_bundle).decode()
    for document in documents:
        document["metadata"].pop("creationTimestamp", None)
        for webhook in document["webhooks"]:
            path = webhook["clientConfig"]["service"]["path"]
            webhook["clientConfig"] = {"url": f"https://{address}:{WEBHOOK_PORT}{path}", "caBundle": encoded}
    return documents


def manager_args() -> list[str]:
    """config/manager/manager.yaml's container args (leader election off: one replica, no lease wait)."""
    return [f"--webhook-port={WEBHOOK_PORT}", "--leader-elect=false", f"--health-probe-addr=:{HEALTH_PORT}",
            "--zap-encoder=console"]


def is_ready(inference_service: dict[str, Any]) -> bool:
    conditions = (inference_service.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def seconds_until_ready(kubectl: Path, kubeconfig: Path, namespace: str, name: str, since: float,
                        timeout: float = 180.0, poll: float = 0.25) -> float:
    """Seconds from `since` (a time.monotonic() reading, e.g. taken before a new version was applied) until KServe
    reports the InferenceService Ready: the operator writing it, KServe's Deployment, the scheduler and kwok.

    For benchmarks; raises TimeoutError with the last status seen.
    """
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    last: dict[str, Any] = {}
    while time.monotonic() - since < timeout:
        result = subprocess.run([str(kubectl), "get", "inferenceservice", name, "-n", namespace, "-o", "json",
                                 "--ignore-not-found"], env=env, capture_output=True, text=True, check=False)
        if result.returncode == 0 and result.stdout.strip():
            last = json.loads(result.stdout)
            if is_ready(last):
                return time.monotonic() - since
        time.sleep(poll)
    raise TimeoutError(f"InferenceService {namespace}/{name} not Ready after {timeout:.0f}s: {last.get('status')}")
