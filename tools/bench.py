"""``make bench``: figures on the local stack, printed and saved as JSON (never asserted: a 2-core machine is noisy).

- the pure render functions: renders per second of a backend, a VirtualModel and a rollout step;
- end to end (real API server, Envoy Gateway and AI Gateway controllers, the operator as a process): N
  ManagedAIServiceBackends, N VirtualModels (one backend each) and N/10 TrafficConfigs applied at once. Their
  InferenceServices are served by the stack's KServe controller, on pods kwok runs on fake nodes.
  By default the operator starts once they all exist, so its time is its own work as the floor's is (``--start
  before-create`` starts it first and counts the bench's creation of the objects in its time).
  Printed: time until every object is reconciled (status written for its generation) and until every one is
  Ready; the floor (the same children written by a bare server-side-apply loop with the same client and
  concurrency) and the ratio; API requests per object by verb (the API server's ``apiserver_request_total``);
  mutating requests while idle and across an operator restart (both should be 0) and reads on restart; peak
  RSS; p95 of spec change -> child updated over 20 changes; SIGTERM -> exit.
- requests per client: ``apiserver_request_total`` has no user label, so the bench's API server writes an audit
  log (metadata only, see localcluster/controlplane.py) and the bench counts its lines by client (the operator's
  reconciles, its watches, the floor script, the bench's kubectl, each upstream controller: by user agent),
  by phase (convergence, idle, restart, floor) and by verb and resource.

``BENCH_ARGS="--objects 200 --idle 30"`` for a quick run. Not shipped: it lives in tools/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from model_traffic.kinds.backend import render as render_backend
from model_traffic.kinds.backend.spec import ManagedAIServiceBackendSpec
from model_traffic.kinds.trafficconfig import render as render_traffic
from model_traffic.kinds.trafficconfig.spec import TrafficConfigSpec
from model_traffic.kinds.virtualmodel import render as render_vm
from model_traffic.kinds.virtualmodel.spec import VirtualModelSpec

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "bench"


def per_second(function: Callable[[], object], seconds: float = 1.0) -> float:
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        function()
        count += 1
    return count / (time.perf_counter() - started)


def render_figures() -> list[tuple[str, str]]:
    backend_spec = ManagedAIServiceBackendSpec.model_validate(
        {"schema": {"name": "OpenAI"}, "endpoint": {"fqdn": {"hostname": "api.openai.com", "port": 443}},
         "credentials": {"type": "APIKey", "secretRef": {"name": "key"}}})
    backend_world = render_backend.BackendWorld(namespace="b", name="openai", ai_gateway_version="v1beta1",
                                                secret_keys=frozenset({"apiKey"}))
    vm_spec = VirtualModelSpec.model_validate(
        {"gatewayRefs": [{"name": "gw"}], "backends": [{"name": f"b{i}", "weight": 10} for i in range(5)],
         "rateLimit": {"tenantHeader": "x-tenant", "tokens": {"limit": 1000, "unit": "Hour"}}})
    vm_world = render_vm.VirtualModelWorld(
        namespace="b", name="m", ai_gateway_version="v1beta1",
        backends={("ManagedAIServiceBackend", f"b{i}"): render_vm.ObservedBackend(ready=True) for i in range(5)})
    tc_spec = TrafficConfigSpec.model_validate(
        {"inferenceService": {"template": {"predictor": {}}}, "release": {"version": "v2"},
         "analysis": {"stepWeights": [10, 50]}})
    tc_status = {"phase": "Succeeded", "stableVersion": "v1", "stable": {"version": "v1"}}  # v2: a new release
    tc_world = render_traffic.TrafficWorld(namespace="b", name="m", versions={
        v: render_traffic.ObservedVersion(ready=True) for v in ("v1", "v2")})
    now = datetime.datetime.now(datetime.UTC)
    rates = {
        "render ManagedAIServiceBackend": per_second(lambda: render_backend.render(backend_spec, backend_world)),
        "render VirtualModel (5 backends, rate limit)": per_second(lambda: render_vm.render(vm_spec, vm_world)),
        "TrafficConfig rollout step": per_second(lambda: render_traffic.step(tc_spec, tc_status, tc_world, now)),
    }
    return [(name, f"{rate:,.0f}/s") for name, rate in rates.items()]


MUTATING = ("POST", "PUT", "PATCH", "DELETE", "APPLY", "CREATE", "UPDATE", "DELETECOLLECTION")


def manifests(count: int, gateway: str) -> list[dict[str, Any]]:
    gw_namespace, gw_name = gateway.split("/")
    docs: list[dict[str, Any]] = []
    for i in range(count):
        docs.append({"apiVersion": "modeltraffic.io/v1alpha1", "kind": "ManagedAIServiceBackend",
                     "metadata": {"name": f"b{i}", "namespace": NAMESPACE},
                     "spec": {"schema": {"name": "OpenAI"},
                              "endpoint": {"ip": {"address": f"10.0.{i // 250}.{i % 250 + 1}", "port": 8000}}}})
        docs.append({"apiVersion": "modeltraffic.io/v1alpha1", "kind": "VirtualModel",
                     "metadata": {"name": f"m{i}", "namespace": NAMESPACE},
                     "spec": {"gatewayRefs": [{"name": gw_name, "namespace": gw_namespace}],
                              "backends": [{"name": f"b{i}"}]}})
    for i in range(count // 10):
        docs.append({"apiVersion": "modeltraffic.io/v1alpha1", "kind": "TrafficConfig",
                     "metadata": {"name": f"t{i}", "namespace": NAMESPACE},
                     "spec": {"modelName": f"tc-model-{i}",
                              "gatewayRefs": [{"name": gw_name, "namespace": gw_namespace}],
                              # A tenth of a CPU each: KServe's default request (1 CPU) fits only 192 of the 200
                              # predictors on the stack's fake nodes (localcluster/nodes.py), and the rest would
                              # stay Pending, never Ready.
                              "inferenceService": {"template": {"predictor": {"model": {
                                  "modelFormat": {"name": "huggingface"},
                                  "resources": {"requests": {"cpu": "100m", "memory": "512Mi"},
                                                "limits": {"cpu": "1", "memory": "2Gi"}}}}}},
                              "release": {"version": "v1"}}})
    return docs


def metric(text: str, name: str, labels: str = "") -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def series(text: str, name: str, labels: str = "") -> int:
    return sum(1 for line in text.splitlines() if line.startswith(name + "{") and labels in line)


def readiness(text: str) -> tuple[int, float]:
    """Of the bench's namespace in the operator's metrics: the objects it reported on (each has a series once its
    status is written for its generation), and how many of them are Ready."""
    labels = f'namespace="{NAMESPACE}"'
    return series(text, "model_traffic_object_ready", labels), metric(text, "model_traffic_object_ready", labels)


def requests_by_verb(text: str) -> dict[str, float]:
    """apiserver_request_total summed by verb (all clients)."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        found = re.match(r'apiserver_request_total\{(.*)\} (\S+)', line)
        if found:
            verb = re.search(r'verb="([^"]+)"', found.group(1))
            if verb:
                totals[verb.group(1)] = totals.get(verb.group(1), 0.0) + float(found.group(2))
    return totals


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {verb: after[verb] - before.get(verb, 0.0) for verb in after if after[verb] - before.get(verb, 0.0)}


def mutating(requests: dict[str, float]) -> float:
    return sum(v for verb, v in requests.items() if verb in MUTATING)


# User agents of the clients the bench tells apart in the audit log (the rest: the agent's product name).
OPERATOR_AGENT = "model-traffic-operator"  # model_traffic.kube.Kube: the reconciles
WATCH_AGENT = "model-traffic-operator-watch"  # model_traffic.pipeline.informer: the operator's watches
KOPF_AGENT = "kopf"  # kopf's own (CRDs, namespaces)
FLOOR_AGENT = "mto-bench-floor"  # the bare server-side-apply loop below


def utc_stamp() -> str:
    """Now, in the format of the audit log's timestamps (metav1.MicroTime, UTC): they compare as strings."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def client_of(user_agent: str, username: str) -> str:
    if user_agent.startswith(WATCH_AGENT) or user_agent.startswith(KOPF_AGENT):
        return "operator (watches)"
    if user_agent.startswith(OPERATOR_AGENT):
        return "operator (reconciles)"
    if user_agent.startswith(FLOOR_AGENT):
        return "floor script"
    if user_agent.startswith("kubectl"):
        return "bench (kubectl)"
    return user_agent.split("/", 1)[0] or username or "unknown"


def requests_per_client(audit_log: Path, phases: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """Audit log lines counted per phase and client: totals, by verb, and by verb and resource."""
    counts: dict[str, dict[str, Counter[str]]] = {phase: {} for phase in phases}
    try:
        lines = audit_log.open()
    except OSError:
        return {}
    with lines:
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            received = str(event.get("requestReceivedTimestamp") or "")
            phase = next((p for p, (start, end) in phases.items() if start <= received < end), None)
            if phase is None:
                continue
            client = client_of(str(event.get("userAgent") or ""), str((event.get("user") or {}).get("username") or ""))
            ref = event.get("objectRef") or {}
            resource = str(ref.get("resource") or event.get("requestURI", "?").split("?")[0])
            if ref.get("subresource"):
                resource += "/" + str(ref["subresource"])
            verb = str(event.get("verb") or "?")
            counter = counts[phase].setdefault(client, Counter())
            counter[f"{verb} {resource}"] += 1
    summary: dict[str, Any] = {}
    for phase, clients in counts.items():
        by_client: dict[str, Any] = {}
        for client, counter in sorted(clients.items(), key=lambda item: -sum(item[1].values())):
            by_verb: Counter[str] = Counter()
            for key, value in counter.items():
                by_verb[key.split(" ", 1)[0]] += value
            by_client[client] = {"total": sum(counter.values()), "by_verb": dict(by_verb.most_common()),
                                 "by_verb_and_resource": dict(counter.most_common())}
        summary[phase] = by_client
    return summary


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else float("nan")


def cluster_figures(count: int, idle: float, ready_timeout: float, start_mode: str, figures: dict[str, Any]) -> None:
    from model_traffic_dev import localcluster

    binaries = localcluster.ensure_binaries()
    with tempfile.TemporaryDirectory(prefix="mto-bench-") as tmp:
        stack = localcluster.LocalStack(Path(tmp), binaries, crds=[ROOT / "crds"])
        stack.plane.audit_log = Path(tmp) / "audit.log"
        with stack:
            run_on_stack(stack, binaries, count, idle, ready_timeout, start_mode, figures, Path(tmp))


def run_on_stack(stack: Any, binaries: Any, count: int, idle: float, ready_timeout: float, start_mode: str,
                 figures: dict[str, Any], tmp: Path) -> None:
    from model_traffic import kube as k
    from model_traffic.kube import Kube
    from model_traffic.pipeline import apply as apply_layer
    from model_traffic.pipeline.runtime import DEFAULT_WORKERS
    from model_traffic_dev.localcluster.process import stop

    port = 18080
    env = {**os.environ, "KUBECONFIG": str(stack.kubeconfig), "MTO_METRICS_PORT": str(port),
           "MTO_RESYNC_SECONDS": "3600", "MTO_DEFAULT_GATEWAY": stack.default_gateway}
    os.environ["KUBECONFIG"] = str(stack.kubeconfig)
    kube = Kube()
    kube.api_client.user_agent = "mto-bench"  # the bench's own reads and spec changes, not the operator's
    phases: dict[str, tuple[str, str]] = {}  # phase -> (start, end) in the audit log's time format

    def kubectl(*args: str, stdin: str | None = None) -> str:
        return subprocess.run([str(binaries.kubectl), *args], env=env, input=stdin, capture_output=True,
                              text=True, check=True).stdout

    def server_requests() -> dict[str, float]:
        return requests_by_verb(kubectl("get", "--raw", "/metrics"))

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    peak = {"rss": 0.0}
    log = (Path(tmp) / "operator.log").open("wb")

    def start() -> subprocess.Popen[bytes]:
        process = subprocess.Popen([sys.executable, "-m", "model_traffic", "run", "--liveness-port", "18081"],
                                   env=env, stdout=log, stderr=subprocess.STDOUT)
        while True:
            try:
                scrape()
                return process
            except OSError:
                time.sleep(0.2)

    kubectl("create", "namespace", NAMESPACE)
    docs = manifests(count, stack.default_gateway)
    total = len(docs)

    def create(doc: dict[str, Any]) -> None:
        group, _, version = doc["apiVersion"].partition("/")
        kube.custom.patch_namespaced_custom_object(
            group, version, NAMESPACE, doc["kind"].lower() + "s", doc["metadata"]["name"], doc,
            field_manager="mto-bench", force=True, _content_type="application/apply-patch+yaml")

    # Created as the floor writes: server-side applies from as many threads (kubectl apply -f creates one object
    # after the other, which on a loaded API server took longer than reconciling them).
    def create_all() -> None:
        creating = time.monotonic()
        with ThreadPoolExecutor(max_workers=DEFAULT_WORKERS) as pool:
            list(pool.map(create, docs))
        figures["seconds_to_create_all"] = round(time.monotonic() - creating, 1)

    figures["operator_started"] = start_mode
    if start_mode == "after-create":
        # The operator's own work, as the floor measures its own: every object is there and none is reconciled yet
        # (a GitOps sync of a whole environment, or an operator started on a cluster that waited for it). The
        # clock starts with the operator's process.
        create_all()
    before = server_requests()
    phase_start = utc_stamp()
    operator_started = time.monotonic()
    operator = start()
    stop_watching = threading.Event()

    def watch_rss() -> None:
        """Peak RSS (the InferenceServices are served by the stack's real KServe controller)."""
        while not stop_watching.is_set():
            peak["rss"] = max(peak["rss"], rss_mib(operator.pid))
            time.sleep(1)

    threading.Thread(target=watch_rss, daemon=True).start()
    started = time.monotonic() if start_mode == "before-create" else operator_started
    # "before-create": the operator reconciles while the objects are being created, the creation inside its time.
    created = threading.Thread(target=create_all if start_mode == "before-create" else lambda: None, daemon=True)
    created.start()
    reconciled_at = ready_at = None
    fractions: dict[float, float | None] = {0.5: None, 0.9: None}
    while time.monotonic() - started < 1800:
        text = scrape()
        reconciled, ready = readiness(text)
        for fraction, at in fractions.items():
            if at is None and reconciled >= fraction * total:
                fractions[fraction] = time.monotonic() - started
        if reconciled_at is None and reconciled >= total:
            reconciled_at = time.monotonic() - started
            figures["operator_cpu_seconds_to_all_reconciled"] = round(cpu_seconds(operator.pid), 1)
        # All Ready: every object the operator reports on, which includes the TrafficConfigs' own backends and
        # VirtualModels (more than the bench created).
        if reconciled >= total and ready >= reconciled:
            ready_at = time.monotonic() - started
            break
        if reconciled_at is not None and time.monotonic() - started > reconciled_at + ready_timeout:
            break  # the controllers have not accepted everything in ready_timeout more seconds: report what is known
        time.sleep(1)
    figures["objects"] = {"ManagedAIServiceBackend": count, "VirtualModel": count, "TrafficConfig": count // 10}
    created.join()
    figures["seconds_to_all_reconciled"] = reconciled_at
    for fraction, at in fractions.items():
        figures[f"seconds_to_{fraction:.0%}_reconciled"] = round(at, 1) if at is not None else None
    figures["seconds_to_all_ready"] = ready_at
    figures["ready_at_end"] = readiness(scrape())[1]
    phases["convergence"] = (phase_start, utc_stamp())
    converge = delta(server_requests(), before)
    figures["api_requests_per_object_during_convergence_all_clients"] = {
        verb: round(v / total, 2) for verb, v in sorted(converge.items())}

    before = server_requests()
    phase_start = utc_stamp()
    time.sleep(idle)
    phases["idle"] = (phase_start, utc_stamp())
    figures[f"mutating_requests_idle_{idle:.0f}s_all_clients"] = mutating(delta(server_requests(), before))

    # Spec change -> child updated, 20 times.
    latencies: list[float] = []
    for i in range(20):
        name = f"b{i}"
        new_port = 9000 + i
        change = time.monotonic()
        kube.custom.patch_namespaced_custom_object(
            "modeltraffic.io", "v1alpha1", NAMESPACE, "managedaiservicebackends", name,
            {"spec": {"endpoint": {"ip": {"port": new_port}}}}, _content_type="application/merge-patch+json")
        while time.monotonic() - change < 60:
            child = kube.get(k.BACKEND, NAMESPACE, name) or {}
            ports = [e.get("ip", {}).get("port") for e in (child.get("spec") or {}).get("endpoints") or []]
            if new_port in ports:
                latencies.append(time.monotonic() - change)
                break
            time.sleep(0.02)
    figures["spec_change_to_child_p95_seconds"] = round(p95(latencies), 3)
    # The changed backends Ready again (Envoy Gateway reports on their Backends), so that the restart below starts
    # from a settled world and its writes are the restart's own.
    settle = time.monotonic()
    while time.monotonic() - settle < 120:
        reported, ready = readiness(scrape())
        if ready >= reported:
            break
        time.sleep(1)
    time.sleep(5)

    stopping = time.monotonic()
    operator.send_signal(signal.SIGTERM)
    try:
        operator.wait(60)
    except subprocess.TimeoutExpired:
        stop(operator, grace=1)
    figures["sigterm_to_exit_seconds"] = round(time.monotonic() - stopping, 1)
    figures["peak_rss_mib"] = round(peak["rss"])
    peak["rss"] = 0.0  # from here: the restarted operator's

    before = server_requests()
    phase_start = utc_stamp()
    restarted = time.monotonic()
    operator = start()
    while time.monotonic() - restarted < 600:
        if metric(scrape(), "model_traffic_reconcile_total") >= total:
            break
        time.sleep(1)
    figures["restart_seconds_to_all_reconciled"] = round(time.monotonic() - restarted, 1)
    time.sleep(5)
    figures["restart_peak_rss_mib"] = round(peak["rss"])
    phases["restart"] = (phase_start, utc_stamp())
    restart = delta(server_requests(), before)
    figures["restart_requests_by_verb_all_clients"] = restart
    figures["restart_mutating_requests_all_clients"] = mutating(restart)
    stop_watching.set()
    stop(operator, grace=15)

    # The floor: the same children, written by a bare server-side-apply loop, same client, same concurrency (as
    # many threads as the operator has reconcile workers).
    kubectl("create", "namespace", FLOOR_NAMESPACE)
    children = []
    for rtype in (k.BACKEND, k.AI_SERVICE_BACKEND, k.AI_GATEWAY_ROUTE):
        for obj in kube.list_objects(rtype, NAMESPACE, f"{apply_layer.LABEL_MANAGED_BY}={apply_layer.MANAGED_BY}"):
            children.append({"apiVersion": obj["apiVersion"], "kind": obj["kind"],
                             "metadata": {"name": obj["metadata"]["name"], "namespace": FLOOR_NAMESPACE},
                             "spec": obj["spec"]})
    floor_kube = Kube()
    floor_kube.api_client.user_agent = FLOOR_AGENT
    phase_start = utc_stamp()
    floor_started = time.monotonic()
    with ThreadPoolExecutor(max_workers=DEFAULT_WORKERS) as pool:
        list(pool.map(lambda c: floor_kube.apply(c), children))
    figures["floor_children"] = len(children)
    figures["floor_threads_and_operator_workers"] = DEFAULT_WORKERS
    figures["floor_seconds"] = round(time.monotonic() - floor_started, 1)
    phases["floor"] = (phase_start, utc_stamp())
    if reconciled_at:
        figures["ratio_reconciled_to_floor"] = round(reconciled_at / max(0.001, figures["floor_seconds"]), 2)
    log.close()

    time.sleep(2)  # the API server writes its audit lines as requests end
    by_client = requests_per_client(tmp / "audit.log", phases)
    figures["requests_per_client"] = by_client
    operator_total: Counter[str] = Counter()
    for client in ("operator (reconciles)", "operator (watches)"):
        operator_total.update((by_client.get("convergence", {}).get(client) or {}).get("by_verb", {}))
    figures["operator_requests_per_object_during_convergence"] = {
        verb: round(value / total, 2) for verb, value in sorted(operator_total.items())}
    for phase in ("idle", "restart"):
        figures[f"operator_mutating_requests_{phase}"] = sum(
            value for client in ("operator (reconciles)", "operator (watches)")
            for verb, value in ((by_client.get(phase, {}).get(client) or {}).get("by_verb", {})).items()
            if verb.upper() in MUTATING)


FLOOR_NAMESPACE = "bench-floor"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=2000,
                        help="ManagedAIServiceBackends and VirtualModels each (TrafficConfigs: /10)")
    parser.add_argument("--idle", type=float, default=120.0, help="seconds of idle to count mutating requests in")
    parser.add_argument("--ready-timeout", type=float, default=300.0,
                        help="seconds to wait for all Ready after all are reconciled")
    parser.add_argument("--start", choices=["after-create", "before-create"], default="after-create",
                        help="start the operator once every object exists (its own work against the floor's: the "
                             "default), or before the bench creates them (the creation inside its time)")
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="where to save the figures (JSON)")
    args = parser.parse_args(argv)
    figures: dict[str, Any] = {"render": dict(render_figures())}
    if not args.render_only:
        cluster_figures(args.objects, args.idle, args.ready_timeout, args.start, figures)
    out = args.out or Path(tempfile.gettempdir()) / f"mto-bench-{int(time.time())}.json"
    out.write_text(json.dumps(figures, indent=2))
    by_client = figures.pop("requests_per_client", {})
    print(json.dumps(figures, indent=2))
    for phase, clients in by_client.items():
        print(f"requests per client, {phase}:")
        for client, counted in clients.items():
            verbs = ", ".join(f"{verb} {value}" for verb, value in counted["by_verb"].items())
            print(f"  {client:32} {counted['total']:8}  ({verbs})")
    print(f"figures saved to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
