"""A real control plane on loopback: etcd, kube-apiserver and kube-controller-manager, like envtest.

The API server runs with RBAC, client-certificate authentication and service-account tokens, so tests that
impersonate ServiceAccounts meet real authorization. kube-controller-manager runs the garbage collector and
namespace controllers (plus the service-account ones), so cascading and namespace deletion really happen.
Children get a parent-death signal, so they never outlive the process that started them.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import datetime
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .build import Binaries
from .process import die_with_parent

EXISTING_CLUSTER_ENV = "MODEL_TRAFFIC_USE_EXISTING_CLUSTER"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
# The first address of the service range is the `kubernetes` Service's ClusterIP; the serving cert names it.
KUBERNETES_SERVICE_IP = "10.0.0.1"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
KUBE_CONTROLLERS = (
    "garbage-collector-controller",
    "namespace-controller",
    # Creates each namespace's `default` ServiceAccount, as in a real cluster.
    "serviceaccount-controller",
    # Publishes kube-root-ca.crt into each namespace.
    "root-ca-certificate-publisher-controller",
    # Fills ClusterRoles built from aggregationRule (admin/edit/view pick up aggregate-to-* roles).
    "clusterrole-aggregation-controller",
    # Deployments (KServe's predictors, Envoy Gateway's proxies) make ReplicaSets, which make pods; pods of a
    # Service are published as EndpointSlices. kube-scheduler and kwok (nodes.py) take the pods from there.
    "deployment-controller",
    "replicaset-controller",
    "endpointslice-controller",
    # The API server taints every new node node.kubernetes.io/not-ready (admission plugin TaintNodesByCondition);
    # this controller lifts the taint once the node reports Ready, as kwok's nodes do.
    "node-lifecycle-controller",
)
PIDS_FILE = "pids.json"
# An audit policy that records who made every request (user, user agent, verb, resource) and nothing of its
# body: `make bench` counts requests per client from it, which apiserver_request_total cannot (no user label).
# The request's end only (ResponseComplete; a watch's when it closes), so each request is one line.
METADATA_AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1", "kind": "Policy",
    "omitStages": ["RequestReceived", "ResponseStarted"],
    "rules": [{"level": "Metadata"}],
}
LOG_TAIL_LINES = 40


class ControlPlaneError(RuntimeError):
    """A component failed to start or did not become ready; the message has its log's tail."""


@dataclass
class _Component:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path


def free_ports(count: int) -> list[int]:
    """Ports the kernel considers free on 127.0.0.1 (all held open together, so they are distinct)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def pid_alive(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # The state letter follows the parenthesised command name.
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager on 127.0.0.1, state under `workdir`.

    Use as a context manager, or call start() and stop(). With `existing_kubeconfig`, nothing is started and
    the plane stands for that cluster (see existing_cluster_from_env).
    """

    def __init__(
        self, workdir: Path, binaries: Binaries | None = None, *, existing_kubeconfig: Path | None = None,
        apiserver_bind_address: str = "127.0.0.1",
    ) -> None:
        if binaries is None and existing_kubeconfig is None:
            raise ValueError("ControlPlane needs the binaries (localcluster.ensure_binaries()) or an existing cluster")
        self._workdir = Path(workdir).resolve()
        self._binaries = binaries
        self._existing = existing_kubeconfig
        # 0.0.0.0 when controllers in network namespaces of their own must reach it (see stack.py).
        self._bind_address = apiserver_bind_address
        self._components: list[_Component] = []
        self._server = ""
        self._kubeconfig = existing_kubeconfig or self._workdir / "kubeconfig"
        self._pki = self._workdir / "pki"
        self._logs = self._workdir / "logs"
        # Off unless asked for (only `make bench` does): writing a line per request costs the API server time.
        self.audit_log: Path | None = None

    # -- public surface -------------------------------------------------------------------------------

    @property
    def workdir(self) -> Path:
        return self._workdir

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (system:masters); certificates are embedded, so it can be copied."""
        return self._kubeconfig

    @property
    def server(self) -> str:
        if not self._server:
            raise ControlPlaneError("the control plane has not been started")
        return self._server

    @property
    def log_dir(self) -> Path:
        return self._logs

    @property
    def pki_dir(self) -> Path:
        """ca.crt/ca.key of the cluster's CA, which also signs the serving certificates of local webhooks."""
        return self._pki

    @property
    def api_port(self) -> int:
        return int(self.server.rsplit(":", 1)[1])

    @property
    def is_existing(self) -> bool:
        return self._existing is not None

    @property
    def pids(self) -> dict[str, int]:
        return {component.name: component.process.pid for component in self._components}

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout: float = 90.0) -> None:
        """Start the components and return once the API is ready and the controllers run."""
        if self._existing is not None:
            self._server = _server_of(self._existing)
            return
        if self._components:
            raise ControlPlaneError("already started")
        assert self._binaries is not None
        deadline = time.monotonic() + timeout
        for directory in (self._workdir, self._pki, self._logs):
            directory.mkdir(parents=True, exist_ok=True)
        etcd_port, etcd_peer_port, api_port, kcm_port = free_ports(4)
        self._server = f"https://127.0.0.1:{api_port}"
        _write_pki(self._pki)
        self._write_kubeconfig()
        atexit.register(self.stop)
        try:
            self._spawn("etcd", self._binaries.etcd, self._etcd_args(etcd_port, etcd_peer_port))
            self._wait("etcd", deadline, lambda: _http_ok(f"http://127.0.0.1:{etcd_port}/health", None))
            self._spawn("kube-apiserver", self._binaries.kube_apiserver, self._apiserver_args(api_port, etcd_port))
            # Started without waiting: it retries until the API server answers, which saves a second or two.
            kcm = self._binaries.kube_controller_manager
            self._spawn("kube-controller-manager", kcm, self._controller_manager_args(kcm_port))
            client = self._admin_ssl_context()
            self._wait("kube-apiserver", deadline, lambda: _http_ok(f"{self._server}/readyz", client))
            self._wait(
                "kube-apiserver", deadline, lambda: _http_ok(f"{self._server}/api/v1/namespaces/default", client),
            )
            self._wait(
                "kube-controller-manager", deadline,
                lambda: _http_ok(f"https://127.0.0.1:{kcm_port}/healthz", insecure_context()),
            )
            # The ServiceAccount admission plugin is on, as in a real cluster: pods need their namespace's default
            # ServiceAccount, which the controller manager creates. Its appearance also proves the controllers run.
            self._wait(
                "kube-controller-manager", deadline,
                lambda: _http_ok(f"{self._server}/api/v1/namespaces/default/serviceaccounts/default", client),
            )
        except BaseException:
            self.stop()
            raise

    def stop(self, grace: float = 15.0) -> None:
        """Stop the components in reverse start order (SIGTERM, SIGKILL after `grace` s); return when all are gone."""
        atexit.unregister(self.stop)
        components, self._components = self._components, []
        # Reverse order: an API server whose etcd is already gone spends its whole grace retrying it.
        for component in reversed(components):
            if component.process.poll() is None:
                component.process.send_signal(signal.SIGTERM)
            try:
                component.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                component.process.kill()
                component.process.wait()
        if components:
            with contextlib.suppress(OSError):
                (self._workdir / PIDS_FILE).unlink()

    def spawn(self, name: str, command: list[str], env: dict[str, str] | None = None) -> int:
        """Run one more component (stopped by stop(), before the ones started earlier); returns its pid."""
        if not self._components:
            raise ControlPlaneError("start the control plane before adding components to it")
        return self._spawn(name, Path(command[0]), command[1:], env)

    def forget(self, name: str) -> None:
        """Drop a component that has exited (before it is started again under the same name)."""
        self._components = [c for c in self._components if c.name != name or c.process.poll() is None]

    def wait_ready(self, name: str, deadline: float, ready: Callable[[], bool]) -> None:
        """Poll `ready` until it holds; fail early, with its log, when any component exits meanwhile."""
        self._wait(name, deadline, ready)

    # -- internals ------------------------------------------------------------------------------------

    def _spawn(self, name: str, binary: Path, args: list[str], env: dict[str, str] | None = None) -> int:
        if not os.access(binary, os.X_OK):
            raise ControlPlaneError(
                f"{name} binary not found at {binary}: run `python -m model_traffic_dev.localcluster build`"
            )
        log_path = self._logs / f"{name}.log"
        with log_path.open("ab") as log:
            log.write(f"+ {binary} {' '.join(args)}\n".encode())
            log.flush()
            process = subprocess.Popen(
                [str(binary), *args], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                # SIGKILL when we die, even by SIGKILL: no etcd/apiserver outlives a killed test run.
                cwd=self._workdir, preexec_fn=die_with_parent(signal.SIGKILL), env=env,
                # Own session: a Ctrl-C on the terminal reaches us, and we stop the components in order.
                start_new_session=True,
            )
        self._components.append(_Component(name, process, log_path))
        (self._workdir / PIDS_FILE).write_text(json.dumps(self.pids))
        return process.pid

    def _wait(self, name: str, deadline: float, ready: Callable[[], bool]) -> None:
        component = next(c for c in self._components if c.name == name)
        while True:
            for running in self._components:
                if running.process.poll() is not None:
                    raise ControlPlaneError(
                        f"{running.name} exited with code {running.process.returncode} during start "
                        f"(log: {running.log_path}):\n{tail(running.log_path)}"
                    )
            if ready():
                return
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"{name} did not become ready in time (logs in {self._logs}); tail of {component.log_path}:\n"
                    f"{tail(component.log_path)}"
                )
            time.sleep(0.1)

    def _etcd_args(self, port: int, peer_port: int) -> list[str]:
        client_url, peer_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{peer_port}"
        return [
            "--name=default",
            f"--data-dir={self._workdir / 'etcd'}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}",
            # Throw-away data: durability buys nothing and fsync dominates API latency on slow disks.
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ]

    def _apiserver_args(self, port: int, etcd_port: int) -> list[str]:
        pki = self._pki
        return [
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            f"--bind-address={self._bind_address}",
            "--advertise-address=127.0.0.1",
            # Since 1.37 the endpoint reconciler refuses a loopback advertise address, and nothing here needs
            # Endpoints for the `kubernetes` Service (no pods run), so it is switched off.
            "--endpoint-reconciler-type=none",
            f"--secure-port={port}",
            f"--cert-dir={self._workdir / 'apiserver'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=RBAC",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--allow-privileged=true",
            "--profiling=false",
            *self._audit_args(),
        ]

    def _audit_args(self) -> list[str]:
        """With ``audit_log`` set before start: log every request's metadata there, as JSON lines."""
        if self.audit_log is None:
            return []
        policy = self._workdir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(METADATA_AUDIT_POLICY, sort_keys=False))
        return [f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}", "--audit-log-format=json",
                "--audit-log-maxsize=0", "--audit-log-maxbackup=0"]

    def _controller_manager_args(self, port: int) -> list[str]:
        return [
            f"--kubeconfig={self._kubeconfig}",
            "--leader-elect=false",
            f"--controllers={','.join(KUBE_CONTROLLERS)}",
            f"--root-ca-file={self._pki / 'ca.crt'}",
            "--bind-address=127.0.0.1",
            # Never the default 10257: several control planes may run at once (tests and `make cluster`).
            f"--secure-port={port}",
            f"--cert-dir={self._workdir / 'controller-manager'}",
        ]

    def _write_kubeconfig(self) -> None:
        def b64(name: str) -> str:
            return base64.b64encode((self._pki / name).read_bytes()).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": {
                "server": self._server, "certificate-authority-data": b64("ca.crt"),
            }}],
            "users": [{"name": "admin", "user": {
                "client-certificate-data": b64("admin.crt"), "client-key-data": b64("admin.key"),
            }}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": "admin"}}],
            "current-context": "local",
        }
        self._kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))
        self._kubeconfig.chmod(0o600)

    def _admin_ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self._pki / "ca.crt"))
        context.load_cert_chain(str(self._pki / "admin.crt"), str(self._pki / "admin.key"))
        return context


def existing_cluster_from_env(workdir: Path | None = None) -> ControlPlane | None:
    """The cluster of $KUBECONFIG when MODEL_TRAFFIC_USE_EXISTING_CLUSTER=1 (e.g. kind), else None."""
    if os.environ.get(EXISTING_CLUSTER_ENV) != "1":
        return None
    configured = os.environ.get("KUBECONFIG", "")
    if not configured:
        raise ControlPlaneError(f"{EXISTING_CLUSTER_ENV}=1 needs KUBECONFIG pointing at the cluster to use")
    kubeconfig = Path(configured.split(os.pathsep)[0]).expanduser()
    plane = ControlPlane(workdir or Path.cwd(), existing_kubeconfig=kubeconfig)
    plane.start()
    return plane


def _server_of(kubeconfig: Path) -> str:
    try:
        config: dict[str, Any] = yaml.safe_load(kubeconfig.read_text())
        contexts = {c["name"]: c["context"] for c in config.get("contexts", [])}
        clusters = {c["name"]: c["cluster"] for c in config.get("clusters", [])}
        return str(clusters[contexts[config["current-context"]]["cluster"]]["server"])
    except (OSError, KeyError, TypeError, yaml.YAMLError) as error:
        raise ControlPlaneError(f"cannot read the current cluster's server from {kubeconfig}: {error!r}") from error


def _http_ok(url: str, context: ssl.SSLContext | None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


def insecure_context() -> ssl.SSLContext:
    # kube-controller-manager and kube-scheduler serve their health endpoints with self-signed certificates.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# -- certificates -------------------------------------------------------------------------------------


def _write_pki(pki: Path) -> None:
    """CA, API server serving cert, admin client cert (system:masters) and the service-account key pair."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "model-traffic-local-ca")])
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(pki / "ca.key", ca_key)
    _write_cert(pki / "ca.crt", ca_cert)

    names = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
             "kubernetes.default.svc.cluster.local"]
    addresses = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address(KUBERNETES_SERVICE_IP)]
    sans = x509.SubjectAlternativeName(
        [x509.DNSName(name) for name in names] + [x509.IPAddress(address) for address in addresses]
    )
    _leaf(pki, "apiserver", ca_cert, ca_key, [x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")],
          ExtendedKeyUsageOID.SERVER_AUTH, sans)
    _leaf(pki, "admin", ca_cert, ca_key,
          [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
           x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes-admin")],
          ExtendedKeyUsageOID.CLIENT_AUTH, None)

    sa_key = ec.generate_private_key(ec.SECP256R1())
    _write_key(pki / "sa.key", sa_key)
    (pki / "sa.pub").write_bytes(sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo,
    ))


def issue_serving_cert(
    pki: Path, name: str, dns_names: list[str], ip_addresses: list[str],
) -> tuple[Path, Path]:
    """A serving certificate signed by the cluster's CA (pki/ca.*), written as pki/<name>.crt and .key."""
    ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ControlPlaneError(f"{pki / 'ca.key'} is not the EC key this module writes")
    sans = x509.SubjectAlternativeName(
        [x509.DNSName(dns) for dns in dns_names]
        + [x509.IPAddress(ipaddress.ip_address(address)) for address in ip_addresses]
    )
    common_name = dns_names[0] if dns_names else name
    _leaf(pki, name, ca_cert, ca_key, [x509.NameAttribute(NameOID.COMMON_NAME, common_name)],
          ExtendedKeyUsageOID.SERVER_AUTH, sans)
    return pki / f"{name}.crt", pki / f"{name}.key"


def _leaf(
    pki: Path, name: str, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
    subject: list[x509.NameAttribute[str]], usage: x509.ObjectIdentifier, sans: x509.SubjectAlternativeName | None,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        _builder(x509.Name(subject), ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False,
        )
    )
    if sans is not None:
        builder = builder.add_extension(sans, critical=False)
    _write_key(pki / f"{name}.key", key)
    _write_cert(pki / f"{name}.crt", builder.sign(ca_key, hashes.SHA256()))


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        # Backdated a little so that a clock a few seconds off does not reject a fresh certificate.
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=365))
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption(),
    ))
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
