"""Fixtures: one real cluster per test session, the operator running against it, a namespace a test.

The cluster is the local stack of ``model_traffic_dev.localcluster`` (etcd, kube-apiserver,
kube-controller-manager and kube-scheduler, kwok's fake nodes on which pods run without containers, plus the
real Envoy Gateway, Envoy AI Gateway and KServe controllers, all built from released Go modules), or an
existing cluster when ``MODEL_TRAFFIC_USE_EXISTING_CLUSTER=1`` and
``KUBECONFIG`` are set. Our CRDs and the upstream CRDs (read from the released modules of Envoy Gateway, AI
Gateway, KServe and the Gateway API Inference Extension, see ``localcluster/upstream.py``) are installed, so
every object the operator writes is validated by the real schemas. On the local stack, Envoy Gateway has
accepted the Gateway ``Cluster.default_gateway`` (``envoy-gateway-system/ai-gateway``), which routes from
all namespaces may attach to; on an existing cluster that is ``$MTO_DEFAULT_GATEWAY`` or the same name.

The operator runs with exactly the permissions the Helm chart (``charts/model-traffic-operator``) grants:
each start renders the chart for the operator's settings with the built ``helm``, applies it server-side and
hands the operator a kubeconfig holding a token of the chart's ServiceAccount, so a verb the chart lacks
fails the tests (``MODEL_TRAFFIC_OPERATOR_RBAC=admin`` runs it as the cluster admin instead, to debug).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import kubernetes
import pytest
import yaml

from model_traffic.kube import Kube
from model_traffic_dev.localcluster.process import die_with_parent, stop

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")
CHART = ROOT / "charts" / "model-traffic-operator"
# Where the tests install the chart; a real install would use its own namespace the same way.
CHART_NAMESPACE = "model-traffic-system"
CHART_RELEASE = "model-traffic-operator"
RBAC_ENV = "MODEL_TRAFFIC_OPERATOR_RBAC"


@dataclass
class Cluster:
    kubeconfig: Path
    kubectl_path: Path
    workdir: Path
    # `namespace/name` of a Gateway that Envoy Gateway accepted: what MTO_DEFAULT_GATEWAY should say.
    default_gateway: str

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
    from model_traffic_dev import localcluster

    if os.environ.get("MODEL_TRAFFIC_USE_EXISTING_CLUSTER") == "1":
        existing = Cluster(Path(os.environ["KUBECONFIG"]), Path(os.environ.get("KUBECTL", "kubectl")),
                           tmp_path_factory.mktemp("existing"),
                           os.environ.get("MTO_DEFAULT_GATEWAY") or localcluster.DEFAULT_GATEWAY)
        install_crds(existing)
        yield existing
        return
    binaries = localcluster.ensure_binaries()
    workdir = tmp_path_factory.mktemp("controlplane")
    # The stack installs our CRDs and the upstream ones before it starts the gateway controllers.
    with localcluster.LocalStack(workdir, binaries, crds=[ROOT / "crds"]) as stack:
        yield Cluster(stack.kubeconfig, binaries.kubectl, workdir, stack.default_gateway)


def install_crds(cluster: Cluster) -> None:
    """Our CRDs and the upstream ones."""
    from model_traffic_dev import localcluster

    localcluster.install_manifests(cluster.kubectl_path, cluster.kubeconfig,
                                   [ROOT / "crds", *localcluster.crd_files()])


@pytest.fixture(scope="session")
def kube(cluster: Cluster) -> Kube:
    config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=config)
    return Kube(config)


@dataclass(frozen=True)
class ChartIdentity:
    """A rendered and applied release of the chart, and a kubeconfig that authenticates as its ServiceAccount."""

    release: str
    namespace: str
    service_account: str
    kubeconfig: Path
    manifests: list[dict[str, Any]]

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"

    def environment(self) -> dict[str, str]:
        """The operator container's environment as the chart's Deployment sets it (fieldRefs resolved)."""
        deployment = next(m for m in self.manifests if m["kind"] == "Deployment")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        env: dict[str, str] = {}
        for var in container.get("env") or []:
            if "value" in var:
                env[var["name"]] = str(var["value"])
            elif var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
                env[var["name"]] = self.namespace
            else:
                raise AssertionError(f"the tests cannot resolve the chart's env var {var}")
        return env


def helm_binary() -> Path:
    """The helm built from Go modules (cached; minutes the first time)."""
    from model_traffic_dev.localcluster.build import ensure_helm

    return ensure_helm()


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    home = Path(os.environ.get("TMPDIR", "/tmp")) / "model-traffic-helm-home"
    result = subprocess.run(
        [str(helm_binary()), *args], capture_output=True, text=True, timeout=120,
        # No user's helm config or repositories leak in, and none are written.
        env={**os.environ, "HELM_CONFIG_HOME": str(home / "config"), "HELM_CACHE_HOME": str(home / "cache"),
             "HELM_DATA_HOME": str(home / "data")},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def helm_template(values: dict[str, Any] | None = None, *, release: str = CHART_RELEASE,
                  namespace: str = CHART_NAMESPACE, extra: tuple[str, ...] = ()) -> str:
    """`helm template` of the chart with these values (given as a values file, as a user would)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="values-") as values_file:
        yaml.safe_dump(values or {}, values_file)
        values_file.flush()
        return helm("template", release, str(CHART), "--namespace", namespace, "--values", values_file.name,
                    *extra).stdout


def parse_manifests(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def chart_values_for(env: dict[str, str]) -> dict[str, Any]:
    """The chart values that correspond to the operator's settings (the ones that decide its RBAC)."""
    values: dict[str, Any] = {}
    namespaces = [part.strip() for part in env.get("MTO_NAMESPACES", "").split(",") if part.strip()]
    if namespaces:
        values["watchNamespaces"] = namespaces
    leader_elect = env.get("MTO_LEADER_ELECT", "false").lower() in ("1", "true", "yes")
    values["leaderElection"] = {"enabled": leader_elect}
    if leader_elect and env.get("MTO_LEADER_ELECTION_NAMESPACE"):
        values["leaderElection"]["namespace"] = env["MTO_LEADER_ELECTION_NAMESPACE"]
    if env.get("MTO_DEFAULT_GATEWAY"):
        values["defaultGateway"] = env["MTO_DEFAULT_GATEWAY"]
    return values


def install_chart(cluster: Cluster, values: dict[str, Any], release: str | None = None) -> ChartIdentity:
    """Render the chart, apply it server-side, and write a kubeconfig with a token of its ServiceAccount.

    Each distinct set of values is its own release (so the cluster-scoped RBAC of one never grants another).
    The chart's Deployment gets pods on the stack's fake nodes, but no container runs in them: the operator
    process is started by the tests, with the ServiceAccount's credentials.
    """
    if release is None:
        digest = zlib.crc32(json.dumps(values, sort_keys=True).encode())
        release = CHART_RELEASE if values == chart_values_for({}) else f"mto-{digest:08x}"
    manifests = parse_manifests(helm_template(values, release=release))
    cluster.kubectl("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CHART_NAMESPACE}}))
    cluster.kubectl("apply", "--server-side", "--field-manager=helm", "-f", "-",
                    stdin=yaml.safe_dump_all(manifests))
    service_account = next(m["metadata"]["name"] for m in manifests if m["kind"] == "ServiceAccount")
    token = cluster.kubectl("create", "token", service_account, "-n", CHART_NAMESPACE,
                            "--duration=12h").stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    server = next(c for c in admin["clusters"] if c["name"] == context["cluster"])
    user = f"{CHART_NAMESPACE}:{service_account}"
    kubeconfig = cluster.workdir / f"{release}.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [server],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": server["name"], "user": user}}],
        "current-context": user,
    }))
    kubeconfig.chmod(0o600)
    return ChartIdentity(release, CHART_NAMESPACE, service_account, kubeconfig, manifests)


@dataclass
class Operator:
    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int
    env: dict[str, str]
    # The chart release whose ServiceAccount it runs as; None when it runs as the cluster admin.
    identity: ChartIdentity | None = None

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
    """Start the operator with these settings, as the chart's ServiceAccount for the same settings.

    A KUBECONFIG given in env is used as it is (no chart install).
    """
    metrics_port, liveness_port = free_port(), free_port()
    settings = {"MTO_METRICS_PORT": str(metrics_port), "MTO_RESYNC_SECONDS": "20", **env}
    identity: ChartIdentity | None = None
    if "KUBECONFIG" in env:
        kubeconfig = env["KUBECONFIG"]
    elif os.environ.get(RBAC_ENV, "chart") == "admin":
        kubeconfig = str(cluster.kubeconfig)
    else:
        identity = install_chart(cluster, chart_values_for({**os.environ, **settings}))
        kubeconfig = str(identity.kubeconfig)
    # Settings as the chart's Deployment sets them, then the test's own (ports, a short resync).
    chart_env = identity.environment() if identity else {}
    full_env = {**os.environ, **chart_env, **settings, "KUBECONFIG": kubeconfig}
    log_file = log_path.open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "model_traffic", "run", "--liveness-port", str(liveness_port)],
        stdout=log_file, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT,
        preexec_fn=die_with_parent(signal.SIGTERM),  # no orphan operator when the test run is killed
    )
    operator = Operator(process, log_path, metrics_port, full_env, identity)

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
    stop(operator.process)


@pytest.fixture(scope="session")
def operator(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    running = start_operator(cluster, tmp_path_factory.mktemp("operator") / "operator.log")
    yield running
    stop_operator(running)
    # The chart's cluster-scoped objects (one set per release the tests installed), for an existing cluster.
    cluster.kubectl("delete", "clusterrole,clusterrolebinding", "-l",
                    "app.kubernetes.io/part-of=model-traffic-operator",
                    "--ignore-not-found", check=False)
    cluster.kubectl("delete", "namespace", CHART_NAMESPACE, "--ignore-not-found", "--wait=false", check=False)


@pytest.fixture
def plain_namespace(kube: Kube) -> Iterator[str]:
    """A fresh namespace with nothing in it, deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube.core.create_namespace(kubernetes.client.V1Namespace(metadata=kubernetes.client.V1ObjectMeta(name=name)))
    yield name
    kube.core.delete_namespace(name)


@pytest.fixture
def namespace(plain_namespace: str) -> str:
    """A test's namespace (tests/cluster/conftest.py adds a Gateway to it)."""
    return plain_namespace


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
