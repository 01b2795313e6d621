"""Fixtures: one real control plane per test session, the operator running against it, a namespace a test.

The control plane is built and started by ``model_traffic.localcluster`` (etcd, kube-apiserver and
kube-controller-manager from Go modules), or is an existing cluster when
``MODEL_TRAFFIC_USE_EXISTING_CLUSTER=1`` and ``KUBECONFIG`` are set. Our CRDs and the upstream CRDs from
``$MODEL_TRAFFIC_UPSTREAM_CRDS`` (default ``../shared/upstream-crds``) are installed, so every object the
operator writes is validated by the real schemas.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import kubernetes
import pytest

from model_traffic.kube import Kube
from model_traffic.localcluster.process import die_with_parent

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM_CRDS = Path(os.environ.get("MODEL_TRAFFIC_UPSTREAM_CRDS", ROOT.parent / "shared" / "upstream-crds"))
T = TypeVar("T")


@dataclass
class Cluster:
    kubeconfig: Path
    kubectl_path: Path
    workdir: Path

    def kubectl(self, *args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """The real kubectl, as a user would run it."""
        result = subprocess.run(
            [str(self.kubectl_path), *args], input=stdin, capture_output=True, text=True, timeout=120,
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], T | None], timeout: float = 30.0, what: str = "condition") -> T:
    """Poll until check returns something truthy; fail with `what` otherwise."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if not UPSTREAM_CRDS.is_dir():
        pytest.skip(f"upstream CRDs not found at {UPSTREAM_CRDS}: set MODEL_TRAFFIC_UPSTREAM_CRDS")
    if os.environ.get("MODEL_TRAFFIC_USE_EXISTING_CLUSTER") == "1":
        existing = Cluster(Path(os.environ["KUBECONFIG"]), Path(os.environ.get("KUBECTL", "kubectl")),
                           tmp_path_factory.mktemp("existing"))
        install_crds(existing)
        yield existing
        return
    from model_traffic import localcluster

    binaries = localcluster.ensure_binaries()
    workdir = tmp_path_factory.mktemp("controlplane")
    with localcluster.ControlPlane(workdir, binaries) as plane:
        local = Cluster(plane.kubeconfig, binaries.kubectl, workdir)
        install_crds(local)
        yield local


def install_crds(cluster: Cluster) -> None:
    """Our CRDs and the upstream ones."""
    from model_traffic import localcluster

    localcluster.install_manifests(cluster.kubectl_path, cluster.kubeconfig, [ROOT / "crds", UPSTREAM_CRDS])


@pytest.fixture(scope="session")
def kube(cluster: Cluster) -> Kube:
    config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=config)
    return Kube(config)


@dataclass
class Operator:
    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int
    env: dict[str, str]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def counter(self, name: str, **labels: str) -> float:
        """One sample's value (0 when absent); labels in the metric's declared order."""
        wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
        for line in self.metrics().splitlines():
            sample, _, value = line.rpartition(" ")
            if sample == f"{name}{{{wanted}}}":
                return float(value)
        return 0.0


def start_operator(cluster: Cluster, log_path: Path, **env: str) -> Operator:
    metrics_port, liveness_port = free_port(), free_port()
    full_env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "MTO_METRICS_PORT": str(metrics_port),
        "MTO_RESYNC_SECONDS": "20",
        **env,
    }
    log_file = log_path.open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "model_traffic", "run", "--liveness-port", str(liveness_port)],
        stdout=log_file, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT,
        preexec_fn=die_with_parent(signal.SIGTERM),  # no orphan operator when the test run is killed
    )
    operator = Operator(process, log_path, metrics_port, full_env)

    def alive() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"operator exited with {process.returncode}:\n{operator.log()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{liveness_port}/healthz", timeout=2):
                return True
        except OSError:
            return False

    wait_for(alive, timeout=60, what="the operator's liveness endpoint")
    return operator


def stop_operator(operator: Operator) -> None:
    operator.process.terminate()
    try:
        operator.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        operator.process.kill()
        operator.process.wait()


@pytest.fixture(scope="session")
def operator(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    running = start_operator(cluster, tmp_path_factory.mktemp("operator") / "operator.log")
    yield running
    stop_operator(running)


@pytest.fixture
def namespace(kube: Kube) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube.core.create_namespace(kubernetes.client.V1Namespace(metadata=kubernetes.client.V1ObjectMeta(name=name)))
    yield name
    kube.core.delete_namespace(name)


def apply_yaml(cluster: Cluster, text: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("apply", "-f", "-", stdin=text, check=check)


def get_json(cluster: Cluster, *args: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)
    return result


# A valid InferencePool named vllm-pool (Gateway API Inference Extension v1).
POOL = """\
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: vllm-pool}
spec:
  selector: {matchLabels: {app: vllm}}
  targetPorts: [{number: 8000}]
  endpointPickerRef: {name: vllm-epp, port: {number: 9002}}
"""


def our_yaml(kind: str, name: str, spec: str) -> str:
    """One of our resources as YAML, spec given as an indented YAML block."""
    return textwrap.dedent(f"""\
        apiVersion: modeltraffic.io/v1alpha1
        kind: {kind}
        metadata:
          name: {name}
        spec:
        """) + textwrap.indent(textwrap.dedent(spec), "  ")


def condition(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any]:
    """A condition of an object's status, {} when absent."""
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] == ctype:
            return dict(cond)
    return {}
