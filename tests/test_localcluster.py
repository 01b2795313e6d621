"""The local control plane: real etcd, kube-apiserver and kube-controller-manager processes, no mocks.

If the binaries are not cached yet, the `binaries` fixture builds them (minutes: the cold CI path).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from model_traffic_dev import localcluster
from model_traffic_dev.localcluster import build, kserve, nodes
from model_traffic_dev.localcluster.build import kubernetes_build_gomod, staging_modules
from model_traffic_dev.localcluster.controlplane import pid_alive

# A cold build of the binaries exceeds the project-wide 600 s test timeout.
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(2400)]

DEV_TOOLS_DIR = Path(localcluster.__file__).resolve().parents[2]


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def kubectl(binaries: localcluster.Binaries, kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        [str(binaries.kubectl), *args], input=stdin, capture_output=True, text=True, timeout=60,
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
    )
    assert result.returncode == 0, f"kubectl {' '.join(args)} failed:\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def binaries() -> localcluster.Binaries:
    return localcluster.ensure_binaries()


@pytest.fixture(scope="module")
def plane(
    binaries: localcluster.Binaries, tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[localcluster.ControlPlane]:
    with localcluster.ControlPlane(tmp_path_factory.mktemp("plane"), binaries) as running:
        yield running


def test_staging_modules_come_from_kubernetes_gomod() -> None:
    gomod = textwrap.dedent("""\
        module k8s.io/kubernetes

        go 1.26.0

        require (
        \tgithub.com/spf13/cobra v1.10.2
        \tk8s.io/api v0.0.0
        \tk8s.io/utils v0.0.0-20260626114624-be93311217bd
        )

        require k8s.io/client-go v0.0.0 // indirect

        replace k8s.io/api => ./staging/src/k8s.io/api
        """)
    assert staging_modules(gomod) == ["k8s.io/api", "k8s.io/client-go"]
    generated = kubernetes_build_gomod(gomod)
    assert "\tk8s.io/client-go => k8s.io/client-go v0.37.2" in generated
    assert "require k8s.io/kubernetes v1.37.2" in generated
    assert "./staging" not in generated


def test_kube_scheduler_builds_beside_the_control_plane_without_invalidating_it(tmp_path: Path) -> None:
    # A cache that holds the control plane (marker and the three commands) stays complete: the scheduler has a
    # bin dir of its own, so adding it never rebuilds kube-apiserver and friends.
    assert build.KUBE_SCHEDULER not in build.KUBERNETES_COMMANDS
    assert build.kube_scheduler_bin_dir(tmp_path) != build.kubernetes_bin_dir(tmp_path)
    assert build.kube_scheduler_bin_dir(tmp_path).name == f"kube-scheduler-{localcluster.KUBERNETES_VERSION}"


def test_kserve_manifests_are_rendered_from_the_module() -> None:
    config = kserve.inferenceservice_config()
    released = yaml.safe_load((kserve.module_root() / "config/configmap/inferenceservice.yaml").read_text())
    assert set(config["data"]) == set(released["data"])  # only values change
    assert config["metadata"] == {"name": kserve.CONFIG_MAP, "namespace": kserve.NAMESPACE}
    assert json.loads(config["data"]["deploy"]) == {"defaultDeploymentMode": "Standard"}
    ingress = json.loads(config["data"]["ingress"])
    assert ingress["disableIngressCreation"] is True and ingress["disableIstioVirtualHost"] is True
    assert ingress["ingressDomain"] == json.loads(released["data"]["ingress"])["ingressDomain"]

    runtime = kserve.huggingface_runtime()
    assert (runtime["kind"], runtime["metadata"]["name"]) == ("ClusterServingRuntime", kserve.HUGGINGFACE_RUNTIME)
    assert [c["image"] for c in runtime["spec"]["containers"]] == ["kserve/huggingfaceserver:latest"]

    webhooks = kserve.webhook_configurations("10.213.0.14", b"PEM")
    kinds = {(w["kind"], w["metadata"]["name"]) for w in webhooks}
    assert ("MutatingWebhookConfiguration", "inferenceservice.serving.kserve.io") in kinds
    assert ("ValidatingWebhookConfiguration", "clusterservingruntime.serving.kserve.io") in kinds
    for configuration in webhooks:
        for webhook in configuration["webhooks"]:
            assert webhook["clientConfig"]["url"].startswith("https://10.213.0.14:9443/"), webhook
            assert webhook["clientConfig"]["caBundle"] == "UEVN"


def test_kustomize_image_transformer() -> None:
    images = [{"name": "huggingfaceserver", "newName": "kserve/huggingfaceserver", "newTag": "latest"},
              {"name": "other", "newTag": "v2"}]
    assert kserve.kustomize_image("huggingfaceserver:replace", images) == "kserve/huggingfaceserver:latest"
    assert kserve.kustomize_image("other:v1", images) == "other:v2"
    assert kserve.kustomize_image("unrelated:v1", images) == "unrelated:v1"


def test_fake_nodes_hold_gpus_and_are_managed_by_kwok() -> None:
    assert nodes.MAX_GPUS_PER_NODE > 0
    assert any(node.gpus == 0 for node in nodes.FAKE_NODES)
    for node in nodes.FAKE_NODES:
        manifest = node.manifest()
        assert manifest["metadata"]["annotations"][nodes.KWOK_NODE_ANNOTATION] == nodes.KWOK_NODE_VALUE
        capacity = node.status()["status"]["capacity"]
        assert (nodes.GPU_RESOURCE in capacity) == bool(node.gpus)
    args = nodes.kwok_args(Path("/k"))
    assert "--manage-all-nodes=false" in args
    assert f"--manage-nodes-with-annotation-selector={nodes.KWOK_NODE_ANNOTATION}={nodes.KWOK_NODE_VALUE}" in args


def test_kubectl_and_server_report_the_pinned_version(
    binaries: localcluster.Binaries, plane: localcluster.ControlPlane,
) -> None:
    versions = json.loads(kubectl(binaries, plane.kubeconfig, "version", "-o", "json"))
    assert versions["clientVersion"]["gitVersion"] == localcluster.KUBERNETES_VERSION
    assert versions["serverVersion"]["gitVersion"] == localcluster.KUBERNETES_VERSION
    assert plane.server.startswith("https://127.0.0.1:")


def test_rbac_is_enforced_for_service_accounts(
    binaries: localcluster.Binaries, plane: localcluster.ControlPlane,
) -> None:
    # Impersonation is what later tests use: an unbound ServiceAccount must be refused, not waved through.
    result = subprocess.run(
        [str(binaries.kubectl), "auth", "can-i", "list", "configmaps", "-n", "default",
         "--as=system:serviceaccount:default:default"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "KUBECONFIG": str(plane.kubeconfig)},
    )
    assert result.stdout.strip() == "no", result.stdout + result.stderr


def test_garbage_collector_and_namespace_controller_run(
    binaries: localcluster.Binaries, plane: localcluster.ControlPlane,
) -> None:
    namespace = f"gc-{uuid.uuid4().hex[:8]}"
    kubectl(binaries, plane.kubeconfig, "create", "namespace", namespace)
    kubectl(binaries, plane.kubeconfig, "create", "configmap", "owner", "-n", namespace)
    owner_uid = kubectl(binaries, plane.kubeconfig, "get", "configmap", "owner", "-n", namespace,
                        "-o", "jsonpath={.metadata.uid}")
    dependent: dict[str, Any] = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "dependent", "namespace": namespace, "ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner_uid},
        ]},
    }
    kubectl(binaries, plane.kubeconfig, "create", "-f", "-", stdin=json.dumps(dependent))

    kubectl(binaries, plane.kubeconfig, "delete", "configmap", "owner", "-n", namespace, "--cascade=background")

    def dependent_gone() -> bool:
        names = kubectl(binaries, plane.kubeconfig, "get", "configmaps", "-n", namespace, "-o", "name").split()
        return "configmap/dependent" not in names

    wait_until(dependent_gone, 30, "the garbage collector to delete the dependent ConfigMap")

    kubectl(binaries, plane.kubeconfig, "delete", "namespace", namespace, "--wait=false")

    def namespace_gone() -> bool:
        return namespace not in kubectl(binaries, plane.kubeconfig, "get", "namespaces", "-o", "name")

    wait_until(namespace_gone, 60, "the namespace controller to finish deleting the namespace")


def test_stop_leaves_no_component_running(plane: localcluster.ControlPlane) -> None:
    pids = plane.pids
    assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager"}
    assert all(pid_alive(pid) for pid in pids.values())
    plane.stop()
    assert [name for name, pid in pids.items() if pid_alive(pid)] == []


def test_components_die_with_a_sigkilled_parent(binaries: localcluster.Binaries, tmp_path: Path) -> None:
    script = textwrap.dedent(f"""\
        import json, sys, time
        from pathlib import Path
        from model_traffic_dev import localcluster
        plane = localcluster.ControlPlane(Path({str(tmp_path)!r}), localcluster.ensure_binaries())
        plane.start()
        print(json.dumps(plane.pids), flush=True)
        time.sleep(600)
        """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(DEV_TOOLS_DIR)})
    try:
        assert parent.stdout is not None
        pids: dict[str, int] = json.loads(parent.stdout.readline())
        assert len(pids) == 3 and all(pid_alive(pid) for pid in pids.values())
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    wait_until(lambda: not any(pid_alive(pid) for pid in pids.values()), 10,
               f"the components {pids} to die with their parent")


CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.test
spec:
  group: example.test
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec: {type: object, properties: {size: {type: integer}}}
"""

WIDGET = """\
apiVersion: example.test/v1
kind: Widget
metadata: {name: first, namespace: default}
spec: {size: 3}
"""


def test_up_and_down_through_the_cli(binaries: localcluster.Binaries, tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    (manifests / "nested").mkdir(parents=True)
    (manifests / "00-crd.yaml").write_text(CRD)
    # Sorted after the CRD, applied in the same kubectl run: install_manifests must wait and retry.
    (manifests / "nested" / "widget.yaml").write_text(WIDGET)
    state = tmp_path / ".local"
    env = {**os.environ, "PYTHONPATH": str(DEV_TOOLS_DIR)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "model_traffic_dev.localcluster", *args], capture_output=True,
                              text=True, timeout=300, cwd=tmp_path, env=env)

    up = cli("up", "--dir", str(state), "--crds", str(manifests))
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        assert f"export KUBECONFIG={state / 'kubeconfig'}" in up.stdout
        assert f"export PATH={state / 'bin'}:$PATH" in up.stdout
        ready = json.loads((state / "cluster" / "ready.json").read_text())
        supervisor = int((state / "cluster" / "supervisor.pid").read_text())
        pids = [supervisor, *ready["pids"].values()]
        assert all(pid_alive(pid) for pid in pids)

        linked_kubectl = state / "bin" / "kubectl"
        assert linked_kubectl.resolve() == binaries.kubectl.resolve()
        size = subprocess.run(
            [str(linked_kubectl), "get", "widget", "first", "-n", "default", "-o", "jsonpath={.spec.size}"],
            capture_output=True, text=True, timeout=60, env={**os.environ, "KUBECONFIG": str(state / "kubeconfig")},
        )
        assert size.stdout == "3", size.stderr

        again = cli("up", "--dir", str(state))
        assert again.returncode == 0 and "already running" in again.stdout, again.stdout + again.stderr
        assert cli("env", "--dir", str(state)).stdout == up.stdout[up.stdout.index("export KUBECONFIG"):]
    finally:
        down = cli("down", "--dir", str(state))
    assert down.returncode == 0, down.stdout + down.stderr
    assert [pid for pid in pids if pid_alive(pid)] == []
    assert "not running" in cli("down", "--dir", str(state)).stdout
