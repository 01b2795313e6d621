"""install.yaml, for real: what `make release` writes, applied to a control plane that has nothing of ours, and the
operator run the way install.yaml's Deployment runs it, until a backend and a VirtualModel are Ready.

The control plane is a local stack of its own (the real Envoy Gateway, AI Gateway and KServe controllers, kwok's
fake nodes), started without our CRDs: install.yaml is the only source of the CRDs, the Namespace, the
ServiceAccount, the RBAC and the settings. It uses install.yaml's default names (release and namespace
``model-traffic-system``, ClusterRole ``model-traffic-operator``), which the session's own chart install holds on
the shared control plane; here nothing else uses them, and the whole stack goes when the module ends.

kwok schedules the Deployment's pods and reports them Running and Ready, but runs no container, so the image itself
cannot run here. Each replica is run instead as the process its pod would run: the Deployment's ``command`` and
``args`` and its container's ``env`` (field references resolved against that pod), read from the API server,
executed from the wheel the image installs (tests/support/image.py, as tests/test_image.py), with a TokenRequest
token of the pod's ServiceAccount bound to that pod (what the kubelet mounts), in a kubeconfig. The one change: the
container's ports (metrics, health) are mapped to free ports, as a pod has a network namespace of its own and this
process shares the host's with other tests. tests/test_image.py covers the image's own rules and its entrypoint.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from model_traffic import kube as k
from model_traffic.kube import Kube
from model_traffic_dev.localcluster.process import die_with_parent
from tests.cluster.test_chart import refusals
from tests.conftest import ROOT, Cluster, condition, free_port, parse_manifests, wait_for
from tests.support import image

pytestmark = pytest.mark.cluster

# `make release`'s defaults: tools/release.py.
RELEASE_NAMESPACE = "model-traffic-system"
DEPLOYMENT = "model-traffic-operator"
USERS = "llm"


@pytest.fixture(scope="module")
def bare_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A local stack of this module's own, with the upstream CRDs and controllers and none of ours."""
    from model_traffic_dev import localcluster

    if os.environ.get(localcluster.EXISTING_CLUSTER_ENV) == "1":
        pytest.skip("an existing cluster: install.yaml would install (or replace) model-traffic-system there")
    binaries = localcluster.ensure_binaries()
    workdir = tmp_path_factory.mktemp("install-controlplane")
    with localcluster.LocalStack(workdir, binaries, crds=[]) as stack:
        yield Cluster(stack.kubeconfig, binaries.kubectl, workdir, stack.default_gateway)


@pytest.fixture(scope="module")
def bare_kube(bare_stack: Cluster) -> Kube:
    config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(bare_stack.kubeconfig), client_configuration=config)
    return Kube(config)


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make release` (tools/release.py with its defaults) into a temporary directory."""
    from model_traffic_dev.localcluster.build import ensure_helm

    out = tmp_path_factory.mktemp("release") / "dist"
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "release.py"), "--helm", str(ensure_helm()),
                             "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> image.Installed:
    sources = tmp_path_factory.mktemp("install-src")
    wheel = image.build_wheel(sources, tmp_path_factory.mktemp("install-wheels"),
                              tmp_path_factory.mktemp("install-build"))
    return image.install(wheel, sources / "requirements" / "runtime.txt", tmp_path_factory.mktemp("install-venv"),
                         tmp_path_factory.mktemp("install-home"))


@dataclass
class Replica:
    """The process one pod of the Deployment would run."""

    pod: str
    process: subprocess.Popen[bytes]
    log_path: Path
    ports: dict[int, int]  # the container's port -> the free port it runs on here

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self, container_port: int) -> str | None:
        if self.process.poll() is not None:
            raise AssertionError(f"replica {self.pod} exited with {self.process.returncode}:\n{self.log()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[container_port]}/metrics",
                                        timeout=2) as response:
                return str(response.read().decode())
        except OSError:
            return None


def field_ref(pod: dict[str, Any], path: str) -> str:
    """The value the kubelet gives a fieldRef (the paths the chart may use)."""
    values: dict[str, str] = {
        "metadata.namespace": pod["metadata"]["namespace"], "metadata.name": pod["metadata"]["name"],
        "spec.serviceAccountName": pod["spec"]["serviceAccountName"], "spec.nodeName": pod["spec"].get("nodeName", ""),
    }
    assert path in values, f"install.yaml's Deployment uses a fieldRef the test cannot resolve: {path}"
    return values[path]


def container_env(container: dict[str, Any], pod: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for var in container.get("env") or []:
        if "valueFrom" not in var:  # an empty value is not in the object the API server returns
            env[var["name"]] = str(var.get("value", ""))
        else:
            source = var.get("valueFrom") or {}
            assert set(source) == {"fieldRef"}, f"install.yaml's env var {var} needs a source the test lacks"
            env[var["name"]] = field_ref(pod, source["fieldRef"]["fieldPath"])
    return env


def with_ports(value: str, ports: dict[int, int]) -> str:
    """A setting with each container port replaced by the port it runs on here (`8081`, `--x=8081`)."""
    for container_port, port in ports.items():
        value = re.sub(rf"(^|=){container_port}$", rf"\g<1>{port}", value)
    return value


def service_account_kubeconfig(cluster: Cluster, pod: dict[str, Any], path: Path) -> Path:
    """A kubeconfig with the token the kubelet would mount into the pod: a TokenRequest for its ServiceAccount,
    bound to the pod."""
    namespace, account = pod["metadata"]["namespace"], pod["spec"]["serviceAccountName"]
    token = cluster.kubectl("create", "token", account, "-n", namespace, "--bound-object-kind=Pod",
                            f"--bound-object-name={pod['metadata']['name']}", "--duration=1h").stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    server = next(c for c in admin["clusters"] if c["name"] == context["cluster"])
    user = f"{namespace}:{account}"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "clusters": [server],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": server["name"], "user": user}}],
        "current-context": user,
    }))
    path.chmod(0o600)
    return path


def start_replica(cluster: Cluster, installed: image.Installed, deployment: dict[str, Any], pod: dict[str, Any],
                  workdir: Path) -> Replica:
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "operator"]
    ports = {p["containerPort"]: free_port() for p in container.get("ports") or []}
    # The image's ENTRYPOINT is overridden by `command`, its CMD by `args` (the Kubernetes rule).
    argv = [*container["command"], *container.get("args", [])]
    env = {name: with_ports(value, ports) for name, value in container_env(container, pod).items()}
    name = pod["metadata"]["name"]
    kubeconfig = service_account_kubeconfig(cluster, pod, workdir / f"{name}.kubeconfig")
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [installed.command(argv[0]), *(with_ports(arg, ports) for arg in argv[1:])],
            # The pod's: the image's ENV, the container's env, HOSTNAME; credentials from the kubeconfig.
            env=installed.env(**env, HOSTNAME=name, KUBECONFIG=str(kubeconfig)),
            cwd=installed.home, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent(signal.SIGTERM),  # no orphan operator when the test run is killed
        )
    return Replica(name, process, log_path, ports)


def stop_replica(replica: Replica) -> None:
    replica.process.send_signal(signal.SIGTERM)
    try:
        replica.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        replica.process.kill()
        replica.process.wait()


def ready_in_metrics(text: str | None, kind: str, namespace: str, name: str) -> bool:
    wanted = {"kind": kind, "namespace": namespace, "name": name}
    return any(sample.name == "model_traffic_object_ready" and sample.labels == wanted and sample.value == 1
               for family in text_string_to_metric_families(text or "") for sample in family.samples)


@pytest.mark.timeout(900)
def test_install_yaml_installs_an_operator_that_gets_a_backend_ready(
    bare_stack: Cluster, bare_kube: Kube, dist: Path, installed: image.Installed, tmp_path: Path,
) -> None:
    cluster, kube = bare_stack, bare_kube
    install = dist / "install.yaml"
    manifests = parse_manifests(install.read_text())
    crds = [m["metadata"]["name"] for m in manifests if m["kind"] == "CustomResourceDefinition"]
    assert crds, "install.yaml has no CRDs"
    # Nothing of ours before: what follows works from install.yaml alone.
    for crd in crds:
        assert cluster.kubectl("get", "crd", crd, check=False).returncode != 0, f"{crd} is there before the install"

    # As docs/install.md says, one command.
    applied = cluster.kubectl("apply", "--server-side", "-f", str(install))
    assert len(applied.stdout.strip().splitlines()) == len(manifests), applied.stdout
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{name}" for name in crds))
    # kwok runs the Deployment's pods without containers: scheduled, Running and Ready, so the pod spec (security
    # contexts, probes, volumes, spread) is one the control plane admits and the scheduler places.
    cluster.kubectl("rollout", "status", f"deployment/{DEPLOYMENT}", "-n", RELEASE_NAMESPACE, "--timeout=120s")
    deployment = json.loads(cluster.kubectl("get", "deployment", DEPLOYMENT, "-n", RELEASE_NAMESPACE,
                                            "-o", "json").stdout)
    image_ref = (dist / "image.txt").read_text().strip()
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == image_ref
    selector = ",".join(f"{key}={value}" for key, value in deployment["spec"]["selector"]["matchLabels"].items())
    pods = [p for p in json.loads(cluster.kubectl("get", "pods", "-n", RELEASE_NAMESPACE, "-l", selector,
                                                  "-o", "json").stdout)["items"]
            if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]
    assert len(pods) == deployment["spec"]["replicas"], [p["metadata"]["name"] for p in pods]

    # Each pod's process, as its container would run it.
    replicas = [start_replica(cluster, installed, deployment, pod, tmp_path) for pod in pods]
    try:
        leader = _check_the_installed_operator(cluster, kube, replicas)
    finally:
        for replica in replicas:
            stop_replica(replica)
    # SIGTERM, as the kubelet stops a container: the leader's kopf stops cleanly; a standby, still waiting for the
    # Lease before kopf starts, ends by the signal itself.
    for replica in replicas:
        expected = (0,) if replica is leader else (0, -signal.SIGTERM)
        assert replica.process.returncode in expected, f"{replica.pod} exited with {replica.process.returncode}"


def _check_the_installed_operator(cluster: Cluster, kube: Kube, replicas: list[Replica]) -> Replica:
    """The replicas elect a leader, which gets a backend and a VirtualModel Ready, refused nothing; the leader."""
    metrics_port = 8080  # the container's metrics port (install.yaml's default values)
    assert all(metrics_port in replica.ports for replica in replicas), "the container declares no metrics port"
    # One replica leads (the Lease in the release namespace, install.yaml's Role), the others wait.
    wait_for(lambda: any("became leader" in r.log() for r in replicas), 90, "a replica to take the Lease")
    wait_for(lambda: all("became leader" in r.log() or "waiting for leadership" in r.log() for r in replicas), 60,
             "the other replicas to wait for the Lease")
    (leader,) = [r for r in replicas if "became leader" in r.log()]
    lease = json.loads(cluster.kubectl("get", "lease", "model-traffic-operator", "-n", RELEASE_NAMESPACE,
                                       "-o", "json").stdout)
    # The identity is <host name>-<pid> (leader.py): the host's name here, the pod's name in a pod.
    assert lease["spec"]["holderIdentity"].endswith(f"-{leader.process.pid}"), lease["spec"]

    cluster.kubectl("create", "namespace", USERS)
    gateway_namespace, gateway = cluster.default_gateway.split("/")
    cluster.kubectl("apply", "-n", USERS, "-f", "-", stdin=f"""\
apiVersion: v1
kind: Secret
metadata: {{name: openai-key}}
stringData: {{apiKey: sk-install-test}}
---
apiVersion: modeltraffic.io/v1alpha1
kind: ManagedAIServiceBackend
metadata: {{name: openai}}
spec:
  schema: {{name: OpenAI, version: v1}}
  endpoint: {{fqdn: {{hostname: api.openai.com, port: 443}}}}
  credentials: {{type: APIKey, secretRef: {{name: openai-key}}}}
---
apiVersion: modeltraffic.io/v1alpha1
kind: VirtualModel
metadata: {{name: gpt}}
spec:
  gatewayRefs: [{{name: {gateway}, namespace: {gateway_namespace}}}]
  backends: [{{name: openai}}]
""")

    def failure(what: str) -> AssertionError:
        statuses = {resource.kind: (kube.get(resource, USERS, name) or {}).get("status")
                    for resource, name in ((k.MANAGED_AI_SERVICE_BACKEND, "openai"), (k.VIRTUAL_MODEL, "gpt"))}
        return AssertionError(f"{what}\nstatus: {statuses}\nleader's log:\n{leader.log()[-4000:]}")

    # The leader's own metric: this process, run as install.yaml says, found them Ready.
    for kind, name in (("ManagedAIServiceBackend", "openai"), ("VirtualModel", "gpt")):
        try:
            wait_for(lambda: ready_in_metrics(leader.metrics(metrics_port), kind, USERS, name),  # noqa: B023
                     120, f"{kind} {name} Ready in the leader's metrics")
        except AssertionError as error:
            raise failure(str(error)) from None
    for resource, name in ((k.MANAGED_AI_SERVICE_BACKEND, "openai"), (k.VIRTUAL_MODEL, "gpt")):
        obj = kube.get(resource, USERS, name)
        assert condition(obj, "Ready")["status"] == "True", failure(f"{resource.kind} {name} is not Ready")
        assert obj is not None and obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    # The children the upstream controllers accepted, written with install.yaml's RBAC.
    route = kube.get(k.AI_GATEWAY_ROUTE, USERS, "gpt")
    assert route is not None, failure("no AIGatewayRoute gpt")
    # Nothing was refused on the way (a refused watch only makes kopf log and retry): the RBAC is enough.
    for replica in replicas:
        refused = refusals(replica.log(), USERS)
        assert not refused, f"{replica.pod} was refused:\n" + "\n".join(refused[:10])
    # The standby serves its metrics too and says it does not lead.
    for replica in replicas:
        if replica is not leader:
            text = replica.metrics(metrics_port) or ""
            assert "model_traffic_operator_leader 0.0" in text
    return leader
