"""The local stack: the control plane, the upstream CRDs, and the real Envoy Gateway and AI Gateway controllers.

Envoy Gateway (EG) and the Envoy AI Gateway controller (AIGW) are configured the way AI Gateway's
``manifests/envoy-gateway-values.yaml`` and ``examples/token_ratelimit/envoy-gateway-values-addon.yaml``
configure EG, and the way its Helm chart (``manifests/charts/ai-gateway-helm``) runs AIGW. They then
accept a Gateway, turn AIGatewayRoutes into HTTPRoutes and accept BackendTrafficPolicies, as in a cluster.
Envoy's proxy pods are scheduled onto kwok's fake nodes and reported Running, but no Envoy process runs.

Both bind fixed ports on every address (EG: xDS 18000, rate-limit xDS 18001, Wasm 18002, ...; AIGW: its
rate-limit xDS server on 18002 too, exiting when it cannot), and several stacks may run on one machine
(tests, ``make cluster``, the demo). So each controller runs in a network namespace of its own, made with
``unshare --net --mount`` around a small shell that waits for its interfaces and then ``exec``s the
controller: when the process dies, its namespace and links vanish with it. Links (veth pairs, a /30 each
from 10.213.<slot>.0/24, the slot held by a lock for the stack's lifetime)::

    host 10.213.S.1 <-> EG 10.213.S.2        (EG -> API server)
    host 10.213.S.5 <-> AIGW 10.213.S.6      (AIGW -> API server, API server -> AIGW's webhook)
    EG 10.213.S.9   <-> AIGW 10.213.S.10     (EG -> AIGW's extension server)
    host 10.213.S.13 <-> KServe 10.213.S.14  (KServe -> API server, API server -> KServe's webhooks)

KServe's controller manager (``kserve.py``) runs the same way. kube-scheduler and kwok (``nodes.py``) bind
nothing fixed and run beside the control plane: pods are scheduled onto fake nodes and become Running and
Ready without a container, so Deployments (KServe's predictors, Envoy Gateway's proxies) become available.

The API server listens on 0.0.0.0 so that the controllers reach it at the host end of their link; they
verify its certificate as `localhost`. This needs root (CI runs as root).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import yaml

from . import build, kserve, nodes, upstream
from .build import Binaries, Controllers
from .controlplane import (
    ControlPlane,
    ControlPlaneError,
    free_ports,
    insecure_context,
    issue_serving_cert,
    pid_alive,
)
from .manifests import install_manifests

ENVOY_GATEWAY_NAMESPACE = "envoy-gateway-system"
AI_GATEWAY_NAMESPACE = "envoy-ai-gateway-system"
GATEWAY_CLASS = "envoy-gateway"
ENVOY_PROXY = "cluster-ip"
GATEWAY_NAME = "ai-gateway"
DEFAULT_GATEWAY = f"{ENVOY_GATEWAY_NAMESPACE}/{GATEWAY_NAME}"
# The field managers of the controllers' writes (client-go names them after the binary, as the images run it).
ENVOY_GATEWAY_FIELD_MANAGER = "envoy-gateway"
AI_GATEWAY_FIELD_MANAGER = "app"
# What EG's Helm chart names its controller (charts/gateway-helm/values.tmpl.yaml, config.envoyGateway.gateway).
GATEWAY_CONTROLLER_NAME = "gateway.envoyproxy.io/gatewayclass-controller"
# AIGW's extension server (cmd/controller/main.go, flag -port) and webhook port (chart values).
EXTENSION_SERVER_PORT = 1063
WEBHOOK_PORT = 9443
# The chart's Service and MutatingWebhookConfiguration names (templates/admission_webhook.yaml); the
# controller refuses to start unless `envoy-ai-gateway-gateway-pod-mutator.<POD_NAMESPACE>` exists.
AI_GATEWAY_SERVICE = "ai-gateway-controller"
AI_GATEWAY_WEBHOOK_CONFIGURATION = f"envoy-ai-gateway-gateway-pod-mutator.{AI_GATEWAY_NAMESPACE}"
# examples/token_ratelimit/envoy-gateway-values-addon.yaml: EG translates global rate limits only when a
# backend is configured. Nothing connects to it here (no rate-limit pod runs).
RATE_LIMIT_REDIS_URL = "redis.redis-system.svc.cluster.local:6379"
FIELD_MANAGER = "model-traffic-localcluster"
EG_LABELS = {"control-plane": "envoy-gateway", "app.kubernetes.io/name": "gateway-helm"}
NETNS_PREFIX = "10.213"
SLOT_LOCK_DIR = Path("/run/model-traffic-operator")
SLOTS = 256

# Runs inside the new namespaces: wait for each link (moved in from the host), address it, bring it up,
# bind-mount the certificates EG reads from the fixed path /certs, then become the controller.
NETNS_WRAPPER = r"""
set -eu
for link in $MTO_NETNS_LINKS; do
  waited=0
  until ip link show "${link%%=*}" >/dev/null 2>&1; do
    waited=$((waited + 1))
    if [ "$waited" -gt 1200 ]; then echo "netns: no link ${link%%=*} after 60s" >&2; exit 1; fi
    sleep 0.05
  done
done
ip link set lo up
for link in $MTO_NETNS_LINKS; do
  ip addr add "${link#*=}" dev "${link%%=*}"
  ip link set "${link%%=*}" up
done
if [ -n "${MTO_NETNS_CERTS:-}" ]; then
  mkdir -p /certs
  mount --bind "$MTO_NETNS_CERTS" /certs
fi
exec "$@"
"""


class StackError(ControlPlaneError):
    """The gateway controllers could not be set up or did not become ready."""


@dataclass
class NetnsController:
    """A controller in network and mount namespaces of its own, linked to the host (and maybe to a peer)."""

    name: str
    command: list[str]
    env: dict[str, str]
    host_link: str
    host_address: str
    inside_address: str
    peer_address: str = ""
    certs: Path | None = None
    pid: int = 0


class Slot:
    """10.213.<index>.0/24 for one stack's links, held by a lock file until release()."""

    def __init__(self, index: int, handle: IO[str]) -> None:
        self.index = index
        self._handle = handle

    def address(self, host: int) -> str:
        return f"{NETNS_PREFIX}.{self.index}.{host}"

    def release(self) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()


def claim_slot() -> Slot:
    """The first slot no other stack holds and no address on this machine overlaps."""
    SLOT_LOCK_DIR.mkdir(parents=True, exist_ok=True)
    in_use = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=False).stdout
    for index in range(SLOTS):
        handle = (SLOT_LOCK_DIR / f"netns-slot-{index}.lock").open("w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        if f" {NETNS_PREFIX}.{index}." in in_use:
            # Someone else's address in our range, or a leftover still being torn down: skip it.
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
            continue
        return Slot(index, handle)
    raise StackError(f"all {SLOTS} network slots ({NETNS_PREFIX}.0-255.0/24) are in use")


def require_root() -> None:
    if os.geteuid() != 0:
        raise StackError(
            "the local stack runs Envoy Gateway and the AI Gateway controller in network namespaces of their "
            "own (they bind fixed ports, and several stacks may run at once), which needs root; CI runs as "
            "root. Run as root, or use an existing cluster (MODEL_TRAFFIC_USE_EXISTING_CLUSTER=1 and KUBECONFIG)."
        )
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            raise StackError(f"`{tool}` is needed to run the gateway controllers in network namespaces of their own")


class LocalStack:
    """A ControlPlane with our CRDs (`crds`), the upstream CRDs and the gateway controllers running.

    Use as a context manager, or call start() and stop().
    """

    def __init__(self, workdir: Path, binaries: Binaries, crds: list[Path] | None = None) -> None:
        self._workdir = Path(workdir).resolve()
        self._binaries = binaries
        self._crds = list(crds or [])
        self._plane = ControlPlane(self._workdir, binaries, apiserver_bind_address="0.0.0.0")
        self._slot: Slot | None = None
        self._scheduler_port = 0
        self._kserve_address = ""
        self._netns_controllers: dict[str, NetnsController] = {}
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self.timings: dict[str, float] = {}
        # How often each controller was restarted after it exited (see _supervise).
        self.restarts: dict[str, int] = {}

    @property
    def plane(self) -> ControlPlane:
        return self._plane

    @property
    def kubeconfig(self) -> Path:
        return self._plane.kubeconfig

    @property
    def server(self) -> str:
        return self._plane.server

    @property
    def pids(self) -> dict[str, int]:
        return self._plane.pids

    @property
    def log_dir(self) -> Path:
        return self._plane.log_dir

    @property
    def default_gateway(self) -> str:
        """`namespace/name` of the Gateway that EG accepted: what MTO_DEFAULT_GATEWAY should say."""
        return DEFAULT_GATEWAY

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout: float = 180.0) -> None:
        require_root()
        controllers = build.ensure_controllers()
        deadline = time.monotonic() + timeout
        try:
            self._timed("control plane", lambda: self._plane.start(timeout=timeout))
            # First: nodes and pods need nothing else, and the scheduler and kwok start while the CRDs install.
            self._timed("nodes", lambda: self._start_nodes(controllers))
            self._timed("CRDs", lambda: install_manifests(
                self._binaries.kubectl, self.kubeconfig, [*self._crds, *upstream.crd_files()],
            ))
            self._slot = claim_slot()
            self._timed("controllers", lambda: self._start_controllers(controllers, deadline))
            self._timed("nodes ready", lambda: self._wait_nodes_ready(deadline))
            self._timed("kserve", lambda: self._configure_kserve(deadline))
            self._timed("gateway accepted", lambda: self._apply_gateway(deadline))
            self._supervisor = threading.Thread(target=self._supervise, name="localstack-supervisor", daemon=True)
            self._supervisor.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        # No restarts from here on; what the supervisor restarted dies with its thread (parent-death signal).
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join()
            self._supervisor = None
        # The controllers were started last, so they stop first; their namespaces and links go with them.
        self._plane.stop()
        if self._slot is not None:
            self._slot.release()
            self._slot = None

    # -- internals ------------------------------------------------------------------------------------

    def _timed(self, step: str, action: Any) -> None:
        started = time.monotonic()
        action()
        self.timings[step] = round(time.monotonic() - started, 1)

    def _kubectl(self, *args: str, stdin: str | None = None) -> str:
        from_stdin = ["-f", "-"] if stdin is not None else []
        result = subprocess.run(
            [str(self._binaries.kubectl), *args, *from_stdin], input=stdin, capture_output=True, text=True,
            timeout=60, check=False, env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
        )
        if result.returncode != 0:
            raise StackError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result.stdout

    def _apply(self, *objects: dict[str, Any]) -> None:
        self._kubectl("apply", "--server-side", "--force-conflicts", f"--field-manager={FIELD_MANAGER}",
                      stdin=yaml.safe_dump_all(objects))

    def _start_nodes(self, controllers: Controllers) -> None:
        """The fake nodes, with their capacity, then kube-scheduler and kwok (readiness: _wait_nodes_ready)."""
        self._apply(*(node.manifest() for node in nodes.FAKE_NODES))
        for node in nodes.FAKE_NODES:
            # Node status is a subresource: the capacity is set there, before kwok initializes the node.
            self._kubectl("patch", "node", node.name, "--subresource=status", "--type=merge",
                          "-p", json.dumps(node.status()))
        (self._scheduler_port,) = free_ports(1)
        self._plane.spawn("kube-scheduler", [
            str(controllers.kube_scheduler),
            *nodes.scheduler_args(self.kubeconfig, self._scheduler_port, self._workdir / "kube-scheduler")])
        self._plane.spawn("kwok", [str(controllers.kwok), *nodes.kwok_args(self.kubeconfig)])

    def _wait_nodes_ready(self, deadline: float) -> None:
        self._plane.wait_ready("kube-scheduler", deadline, lambda: _https_ok(
            f"https://127.0.0.1:{self._scheduler_port}/healthz"))

        def all_ready() -> bool:
            listing = json.loads(self._kubectl("get", "nodes", "-o", "json"))
            # Ready (kwok) and schedulable: the node lifecycle controller has lifted the not-ready taint.
            ready = {item["metadata"]["name"] for item in listing["items"]
                     if any(c.get("type") == "Ready" and c.get("status") == "True"
                            for c in (item.get("status") or {}).get("conditions") or [])
                     and not (item.get("spec") or {}).get("taints")}
            return all(node.name in ready for node in nodes.FAKE_NODES)

        self._plane.wait_ready("kwok", deadline, _every(0.5, all_ready))

    def _start_controllers(self, controllers: Controllers, deadline: float) -> None:
        assert self._slot is not None
        envoy_gateway, ai_gateway = controllers.envoy_gateway, controllers.ai_gateway
        slot = self._slot
        eg_host, eg_inside, ai_host, ai_inside = (slot.address(n) for n in (1, 2, 5, 6))
        eg_peer, ai_peer = slot.address(9), slot.address(10)
        kserve_host, kserve_inside = slot.address(13), slot.address(14)
        self._apply(*self._prerequisites(ai_inside))
        self._apply(kserve.inferenceservice_config())
        eg_certs = self._envoy_gateway_certs(envoy_gateway)
        ai_certs = self._ai_gateway_certs(ai_inside)
        eg_config = self._workdir / "envoy-gateway.yaml"
        eg_config.write_text(yaml.safe_dump(envoy_gateway_config(ai_peer)))

        # AIGW first: EG's Wasm server logs and carries on when 18002 is taken, AIGW would exit (they no longer
        # share a namespace, but the order costs nothing).
        # AI Gateway's image runs the controller as /app (its Dockerfile), and client-go names the field manager
        # after argv[0]: a link named `app` makes the status writer `app`, as in a cluster.
        ai_app = self._workdir / "ai-gateway-controller" / "app"
        ai_app.parent.mkdir(exist_ok=True)
        ai_app.unlink(missing_ok=True)
        ai_app.symlink_to(ai_gateway)
        index = slot.index
        ai = NetnsController(
            "ai-gateway-controller", [str(ai_app), *ai_gateway_args(ai_certs)],
            {"KUBECONFIG": str(self._controller_kubeconfig("ai-gateway-controller", ai_host)),
             "POD_NAMESPACE": AI_GATEWAY_NAMESPACE},
            host_link=f"mto{index}a", host_address=ai_host, inside_address=ai_inside, peer_address=ai_peer)
        eg = NetnsController(
            "envoy-gateway", [str(envoy_gateway), "server", f"--config-path={eg_config}"],
            {"KUBECONFIG": str(self._controller_kubeconfig("envoy-gateway", eg_host)),
             "ENVOY_GATEWAY_NAMESPACE": ENVOY_GATEWAY_NAMESPACE},
            host_link=f"mto{index}e", host_address=eg_host, inside_address=eg_inside, peer_address=eg_peer,
            certs=eg_certs)
        kserve_manager = self._workdir / "kserve-manager" / kserve.FIELD_MANAGER
        kserve_manager.parent.mkdir(exist_ok=True)
        kserve_manager.unlink(missing_ok=True)
        kserve_manager.symlink_to(controllers.kserve_manager)
        kserve_controller = NetnsController(
            "kserve-manager", [str(kserve_manager), *kserve.manager_args()],
            {"KUBECONFIG": str(self._controller_kubeconfig("kserve-manager", kserve_host)),
             "POD_NAMESPACE": kserve.NAMESPACE,
             # controller-runtime reads the webhook certificates from $TMPDIR/k8s-webhook-server/serving-certs.
             "TMPDIR": str(self._kserve_certs(kserve_inside))},
            host_link=f"mto{index}k", host_address=kserve_host, inside_address=kserve_inside)
        self._kserve_address = kserve_inside
        self._netns_controllers = {c.name: c for c in (ai, eg, kserve_controller)}
        for controller in self._netns_controllers.values():
            self._launch(controller, deadline)
        # Last: the wrappers wait for both their links, so the host ends are up when the controllers start.
        self._link_peers(eg, ai)

        self._plane.wait_ready("ai-gateway-controller", deadline, lambda: all(
            _listening(ai_inside, port) for port in (EXTENSION_SERVER_PORT, WEBHOOK_PORT)))

    def _launch(self, controller: NetnsController, deadline: float) -> None:
        """Start the controller in new namespaces and link them to the host (the peer link: _link_peers)."""
        links = {"host0": f"{controller.inside_address}/30"}
        if controller.peer_address:
            links["peer0"] = f"{controller.peer_address}/30"
        controller.pid = self._spawn_in_netns(controller.name, controller.command, links=links, env=controller.env,
                                              certs=controller.certs)
        self._wait_for_own_netns(controller.name, controller.pid, deadline)
        # A leftover of a stack that held this slot before (we hold its lock now), or of the controller's last run.
        subprocess.run(["ip", "link", "delete", controller.host_link], capture_output=True, check=False)
        _ip("link", "add", controller.host_link, "type", "veth", "peer", "name", "host0", "netns", str(controller.pid))
        _ip("addr", "add", f"{controller.host_address}/30", "dev", controller.host_link)
        _ip("link", "set", controller.host_link, "up")

    @staticmethod
    def _link_peers(first: NetnsController, second: NetnsController) -> None:
        _ip("link", "add", "peer0", "netns", str(first.pid), "type", "veth", "peer", "name", "peer0", "netns",
            str(second.pid))

    def _supervise(self) -> None:
        """Restart a controller that exits, as a Deployment's pod is restarted (with a growing back-off).

        Upstream controllers do crash: Envoy AI Gateway v1.0.0's extension server panics (index out of range in
        internal/extensionserver/post_translate_modify.go, maybeModifyCluster) when an AIGatewayRoute has more
        backends than the HTTPRoute Envoy Gateway last translated, a race while routes change. In a cluster the
        kubelet restarts it; without that, every later test would wait for a dead controller. Runs in its own
        thread, which lives until stop(): the children it starts get their parent-death signal when it ends.
        """
        back_off: dict[str, float] = {}
        while not self._stopping.wait(0.5):
            pids = self._plane.pids
            for name, controller in self._netns_controllers.items():
                if pid_alive(pids.get(name, 0)) or self._stopping.is_set():
                    continue
                delay = back_off.get(name, 1.0)
                self._note(name, f"exited; restarting in {delay:.0f}s (restart {self.restarts.get(name, 0) + 1})")
                if self._stopping.wait(delay):
                    return
                back_off[name] = min(delay * 2, 10.0)
                self.restarts[name] = self.restarts.get(name, 0) + 1
                try:
                    self._plane.forget(name)
                    self._launch(controller, time.monotonic() + 60)
                    peer = {"ai-gateway-controller": "envoy-gateway",
                            "envoy-gateway": "ai-gateway-controller"}.get(name)
                    if peer:
                        # The veth pair died with the old namespace, on both sides.
                        self._link_peers(controller, self._netns_controllers[peer])
                except (ControlPlaneError, OSError) as error:
                    self._note(name, f"restart failed: {error}")
                    # Half started (no links): end it, so that the next round starts it again.
                    with contextlib.suppress(OSError):
                        os.kill(controller.pid, signal.SIGKILL)

    def _note(self, name: str, message: str) -> None:
        with (self.log_dir / f"{name}.log").open("a") as log:
            log.write(f"--- model-traffic localcluster: {name} {message}\n")

    def _configure_kserve(self, deadline: float) -> None:
        """Once KServe's webhooks serve: register them (as config/webhook/manifests.yaml) and the HF runtime."""
        address = self._kserve_address
        self._plane.wait_ready("kserve-manager", deadline, lambda: _listening(address, kserve.WEBHOOK_PORT))
        self._apply(*kserve.webhook_configurations(address, (self._plane.pki_dir / "ca.crt").read_bytes()))
        # Validated by the ClusterServingRuntime webhook just registered: proof that the API server reaches it.
        self._apply(kserve.huggingface_runtime())

    def _kserve_certs(self, address: str) -> Path:
        tmpdir = self._workdir / "kserve-manager-tmp"
        certs = tmpdir / "k8s-webhook-server" / "serving-certs"
        certs.mkdir(parents=True, exist_ok=True)
        service = f"kserve-webhook-server-service.{kserve.NAMESPACE}"
        cert, key = issue_serving_cert(self._plane.pki_dir, "kserve-webhook",
                                       [f"{service}.svc", service, f"{service}.svc.cluster.local"], [address])
        shutil.copyfile(cert, certs / "tls.crt")
        shutil.copyfile(key, certs / "tls.key")
        return tmpdir

    def _prerequisites(self, ai_address: str) -> list[dict[str, Any]]:
        ca_bundle = base64.b64encode((self._plane.pki_dir / "ca.crt").read_bytes()).decode()
        return [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ENVOY_GATEWAY_NAMESPACE}},
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": AI_GATEWAY_NAMESPACE}},
            # KServe's namespace (config/default/kustomization.yaml), where its manager reads its ConfigMap.
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": kserve.NAMESPACE}},
            # EG's rate-limit infrastructure names this Service as its xDS server and makes the Service, the
            # Deployment and the ServiceAccount `envoy-gateway` the owners of what it creates
            # (internal/infrastructure/kubernetes/ratelimit_infra.go): as EG's chart creates them. The
            # Deployment has no replicas: EG runs here as a process (and no kubelet would run a pod anyway).
            {"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": {"name": "envoy-gateway", "namespace": ENVOY_GATEWAY_NAMESPACE}},
            {"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": "envoy-gateway", "namespace": ENVOY_GATEWAY_NAMESPACE},
             "spec": {"selector": EG_LABELS, "ports": [
                 # charts/gateway-helm/values.tmpl.yaml, deployment.ports
                 {"name": "grpc", "port": 18000, "targetPort": 18000},
                 {"name": "ratelimit", "port": 18001, "targetPort": 18001},
                 {"name": "wasm", "port": 18002, "targetPort": 18002},
                 {"name": "metrics", "port": 19001, "targetPort": 19001}]}},
            {"apiVersion": "apps/v1", "kind": "Deployment",
             "metadata": {"name": "envoy-gateway", "namespace": ENVOY_GATEWAY_NAMESPACE, "labels": EG_LABELS},
             "spec": {"replicas": 0, "selector": {"matchLabels": EG_LABELS}, "template": {
                 "metadata": {"labels": EG_LABELS},
                 "spec": {"serviceAccountName": "envoy-gateway", "containers": [{
                     "name": "envoy-gateway", "image": f"docker.io/envoyproxy/gateway:{upstream.ENVOY_GATEWAY.version}",
                     "args": ["server", "--config-path=/config/envoy-gateway.yaml"]}]}}}},
            # As AIGW's chart has it (templates/admission_webhook.yaml), but addressed at the controller's own
            # namespace address, with the local CA (the controller rewrites caBundle from its CA file anyway).
            {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
             "metadata": {"name": AI_GATEWAY_WEBHOOK_CONFIGURATION},
             "webhooks": [{
                 "name": f"{AI_GATEWAY_SERVICE}.{AI_GATEWAY_NAMESPACE}.svc.cluster.local",
                 "clientConfig": {"url": f"https://{ai_address}:{WEBHOOK_PORT}/mutate", "caBundle": ca_bundle},
                 "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                            "resources": ["pods"]}],
                 "objectSelector": {"matchLabels": {"app.kubernetes.io/managed-by": "envoy-gateway"}},
                 "sideEffects": "None", "admissionReviewVersions": ["v1"], "timeoutSeconds": 10,
                 "failurePolicy": "Fail",
             }]},
        ]

    def _envoy_gateway_certs(self, envoy_gateway: Path) -> Path:
        """EG's own `certgen` (as its chart's certgen Job runs it) writes the Secrets; /certs is `envoy-gateway`."""
        log_path = self.log_dir / "envoy-gateway-certgen.log"
        result = subprocess.run(
            # The topology injector webhook is off (no pods here; see envoy_gateway_config), so nothing to patch.
            [str(envoy_gateway), "certgen", "--disable-topology-injector"], capture_output=True, text=True,
            timeout=60, check=False,
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig), "ENVOY_GATEWAY_NAMESPACE": ENVOY_GATEWAY_NAMESPACE},
        )
        log_path.write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise StackError(f"envoy-gateway certgen failed ({result.returncode}):\n{result.stdout}{result.stderr}")
        secret = json.loads(
            self._kubectl("get", "secret", "envoy-gateway", "-n", ENVOY_GATEWAY_NAMESPACE, "-o", "json"))
        certs = self._workdir / "envoy-gateway-certs"
        certs.mkdir(exist_ok=True)
        for key in ("ca.crt", "tls.crt", "tls.key"):
            (certs / key).write_bytes(base64.b64decode(secret["data"][key]))
        (certs / "tls.key").chmod(0o600)
        return certs

    def _ai_gateway_certs(self, address: str) -> Path:
        """The webhook's serving certificate, for the chart's Service names and the controller's address."""
        certs = self._workdir / "ai-gateway-certs"
        certs.mkdir(exist_ok=True)
        service = f"{AI_GATEWAY_SERVICE}.{AI_GATEWAY_NAMESPACE}"
        cert, key = issue_serving_cert(self._plane.pki_dir, "ai-gateway-webhook",
                                       [f"{service}.svc", AI_GATEWAY_SERVICE, service, f"{service}.svc.cluster.local"],
                                       [address])
        shutil.copyfile(cert, certs / "tls.crt")
        shutil.copyfile(key, certs / "tls.key")
        shutil.copyfile(self._plane.pki_dir / "ca.crt", certs / "ca.crt")
        return certs

    def _controller_kubeconfig(self, name: str, host_address: str) -> Path:
        """The admin kubeconfig, reaching the API server at the host end of the controller's link."""
        config = yaml.safe_load(self.kubeconfig.read_text())
        cluster = config["clusters"][0]["cluster"]
        cluster["server"] = f"https://{host_address}:{self._plane.api_port}"
        # The serving certificate names localhost and 127.0.0.1, not the link's address.
        cluster["tls-server-name"] = "localhost"
        path = self._workdir / f"{name}.kubeconfig"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)
        return path

    def _spawn_in_netns(self, name: str, command: list[str], *, links: dict[str, str], env: dict[str, str],
                        certs: Path | None = None) -> int:
        unshare = shutil.which("unshare")
        assert unshare is not None  # require_root checked
        wrapper_env = {**os.environ, **env, "MTO_NETNS_LINKS": " ".join(f"{k}={v}" for k, v in links.items()),
                       "MTO_NETNS_CERTS": str(certs or "")}
        return self._plane.spawn(name, [unshare, "--net", "--mount", "sh", "-c", NETNS_WRAPPER, "netns", *command],
                                 env=wrapper_env)

    def _wait_for_own_netns(self, name: str, pid: int, deadline: float) -> None:
        # A link moved to the pid before unshare(2) took effect would land in the host's namespace.
        ours = os.readlink("/proc/self/ns/net")

        def separate() -> bool:
            try:
                return os.readlink(f"/proc/{pid}/ns/net") != ours
            except OSError:
                return False

        self._plane.wait_ready(name, deadline, separate)

    def _apply_gateway(self, deadline: float) -> None:
        self._apply(
            # No load balancer runs here, so EG's default LoadBalancer Service never gets an address; with a
            # ClusterIP Service EG reports the Service's cluster IP as each Gateway's address
            # (internal/gatewayapi/status/gateway.go), which the VirtualModels then show.
            {"apiVersion": "gateway.envoyproxy.io/v1alpha1", "kind": "EnvoyProxy",
             "metadata": {"name": ENVOY_PROXY, "namespace": ENVOY_GATEWAY_NAMESPACE},
             "spec": {"provider": {"type": "Kubernetes", "kubernetes": {"envoyService": {"type": "ClusterIP"}}}}},
            {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": GATEWAY_CLASS},
             "spec": {"controllerName": GATEWAY_CONTROLLER_NAME, "parametersRef": {
                 "group": "gateway.envoyproxy.io", "kind": "EnvoyProxy", "name": ENVOY_PROXY,
                 "namespace": ENVOY_GATEWAY_NAMESPACE}}},
            {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
             "metadata": {"name": GATEWAY_NAME, "namespace": ENVOY_GATEWAY_NAMESPACE},
             "spec": {"gatewayClassName": GATEWAY_CLASS, "listeners": [{
                 "name": "http", "protocol": "HTTP", "port": 80,
                 # The operator's VirtualModels live in namespaces of their own.
                 "allowedRoutes": {"namespaces": {"from": "All"}},
             }]}},
        )
        last_poll = 0.0

        def accepted() -> bool:
            nonlocal last_poll
            # kubectl costs a process start: every half second is enough.
            if time.monotonic() - last_poll < 0.5:
                return False
            last_poll = time.monotonic()
            gateway = json.loads(self._kubectl("get", "gateway", GATEWAY_NAME, "-n", ENVOY_GATEWAY_NAMESPACE,
                                               "-o", "json"))
            return any(c.get("type") == "Accepted" and c.get("status") == "True"
                       for c in (gateway.get("status") or {}).get("conditions") or [])

        self._plane.wait_ready("envoy-gateway", deadline, accepted)


def envoy_gateway_config(extension_server_address: str) -> dict[str, Any]:
    """EG's configuration (the chart's envoy-gateway-config ConfigMap) with AI Gateway's values applied."""
    return {
        "apiVersion": "gateway.envoyproxy.io/v1alpha1",
        "kind": "EnvoyGateway",
        "gateway": {"controllerName": GATEWAY_CONTROLLER_NAME},
        "logging": {"level": {"default": "info"}},
        "provider": {"type": "Kubernetes", "kubernetes": {
            # One replica, and no lease to wait for at start.
            "leaderElection": {"disable": True},
            # It mutates Envoy pods; none are ever created here.
            "proxyTopologyInjector": {"disabled": True},
        }},
        # manifests/envoy-gateway-values.yaml of AI Gateway:
        "extensionApis": {"enableEnvoyPatchPolicy": True, "enableBackend": True},
        "extensionManager": {
            "hooks": {"xdsTranslator": {
                "translation": {kind: {"includeAll": True} for kind in ("listener", "route", "cluster", "secret")},
                "post": ["Translation", "Cluster", "Route"],
            }},
            # The values name the controller's Service by FQDN; here the controller is at its link's address.
            "service": {"ip": {"address": extension_server_address, "port": EXTENSION_SERVER_PORT}},
        },
        # examples/token_ratelimit/envoy-gateway-values-addon.yaml of AI Gateway.
        "rateLimit": {"backend": {"type": "Redis", "redis": {"url": RATE_LIMIT_REDIS_URL}}},
    }


def ai_gateway_args(certs: Path) -> list[str]:
    """The flags AI Gateway's chart passes (templates/deployment.yaml with the default values)."""
    image_tag = upstream.ENVOY_AI_GATEWAY.version
    return [
        "-logLevel=info",
        f"--extProcImage=docker.io/envoyproxy/ai-gateway-extproc:{image_tag}",
        "--extProcImagePullPolicy=IfNotPresent",
        "--extProcLogLevel=info",
        f"--envoyGatewayNamespace={ENVOY_GATEWAY_NAMESPACE}",
        "--endpointPrefixes=openai:,cohere:/cohere,anthropic:/anthropic",
        f"--tlsCertDir={certs}",
        "--tlsCertName=tls.crt",
        "--tlsKeyName=tls.key",
        f"--webhookPort={WEBHOOK_PORT}",
        # The chart leaves the flag out when leader election is off, and the flag defaults to true: say it.
        "--enableLeaderElection=false",
        "--rootPrefix=/",
        # The tenant on the gateway's gen_ai_* metrics, as label tenant_id (docs/tenants.md): passed to each Envoy's
        # external processor (internal/controller/gateway_mutator.go); the controller refuses a malformed value.
        "--metricsRequestHeaderAttributes=x-tenant-id:tenant.id",
        "--cacheSyncTimeout=2m",
        "--watchNamespaces=",
        "--quotaRateLimitServiceAddr=envoy-ai-gateway-ratelimit.envoy-gateway-system",
        "--quotaRateLimitTimeout=5",
        "--quotaRateLimitFailureModeDeny=false",
        "--mcpSessionEncryptionSeed=default-insecure-seed",
        "--mcpSessionEncryptionIterations=100000",
    ]


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise StackError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")


def _https_ok(url: str) -> bool:
    # kube-scheduler serves its health endpoint with a self-signed certificate.
    try:
        with urllib.request.urlopen(url, timeout=2, context=insecure_context()) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _every(seconds: float, check: Callable[[], bool]) -> Callable[[], bool]:
    """`check`, run at most every `seconds` (kubectl costs a process start); False in between."""
    last = 0.0

    def throttled() -> bool:
        nonlocal last
        if time.monotonic() - last < seconds:
            return False
        last = time.monotonic()
        return check()

    return throttled


def _listening(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False
