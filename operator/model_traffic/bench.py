"""``make bench``: figures on the local control plane, printed (never asserted: a 2-core machine is noisy).

- the pure render functions: renders per second of a backend, a VirtualModel and a rollout step;
- end to end: N backends and N/5 VirtualModels of 5 backends each applied at once: time until every one
  is Ready, the operator's reconcile latency (p50/p95 from its own histogram) and resident memory; then a
  restart, which reconciles every unchanged object again like a resync: how long it takes and how many
  status writes it makes (expected: none).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from model_traffic import localcluster
from model_traffic.api.backend import ManagedAIServiceBackendSpec
from model_traffic.api.trafficconfig import TrafficConfigSpec
from model_traffic.api.virtualmodel import VirtualModelSpec
from model_traffic.localcluster.process import stop
from model_traffic.render import backend as render_backend
from model_traffic.render import trafficconfig as render_traffic
from model_traffic.render import virtualmodel as render_vm

ROOT = Path(__file__).resolve().parents[2]
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
        {"inferenceService": {"template": {"predictor": {}}}, "stable": {"version": "v1"},
         "canary": {"version": "v2"}, "analysis": {"stepWeights": [10, 50]}})
    tc_world = render_traffic.TrafficWorld(namespace="b", name="m", versions={
        v: render_traffic.ObservedVersion(ready=True) for v in ("v1", "v2")})
    now = datetime.datetime.now(datetime.UTC)
    rates = {
        "render ManagedAIServiceBackend": per_second(lambda: render_backend.render(backend_spec, backend_world)),
        "render VirtualModel (5 backends, rate limit)": per_second(lambda: render_vm.render(vm_spec, vm_world)),
        "TrafficConfig rollout step": per_second(lambda: render_traffic.step(tc_spec, None, tc_world, now)),
    }
    return [(name, f"{rate:,.0f}/s") for name, rate in rates.items()]


def manifests(count: int) -> str:
    docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}]
    for i in range(count):
        docs.append({"apiVersion": "modeltraffic.io/v1alpha1", "kind": "ManagedAIServiceBackend",
                     "metadata": {"name": f"b{i}", "namespace": NAMESPACE},
                     "spec": {"schema": {"name": "OpenAI"},
                              "endpoint": {"ip": {"address": f"10.0.{i // 250}.{i % 250 + 1}", "port": 8000}}}})
    for i in range(count // 5):
        docs.append({"apiVersion": "modeltraffic.io/v1alpha1", "kind": "VirtualModel",
                     "metadata": {"name": f"m{i}", "namespace": NAMESPACE},
                     "spec": {"gatewayRefs": [{"name": "gw"}],
                              "backends": [{"name": f"b{5 * i + j}", "weight": 20} for j in range(5)]}})
    return "\n---\n".join(json.dumps(d) for d in docs)


def metric(text: str, name: str, labels: str = "") -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def histogram_quantile(text: str, name: str, q: float) -> float:
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        found = re.match(rf'{name}_bucket{{.*le="([^"]+)".*}} (\S+)', line)
        if found:
            bound = float("inf") if found.group(1) == "+Inf" else float(found.group(1))
            buckets[bound] = buckets.get(bound, 0.0) + float(found.group(2))
    total = buckets.get(float("inf"), 0.0)
    for bound in sorted(buckets):
        if total and buckets[bound] >= q * total:
            return bound
    return float("nan")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cluster_figures(count: int) -> list[tuple[str, str]]:
    binaries = localcluster.ensure_binaries()
    figures: list[tuple[str, str]] = []
    # The whole local stack (upstream CRDs and gateway controllers too), as the operator meets it in the tests.
    with (tempfile.TemporaryDirectory(prefix="mto-bench-") as tmp,
          localcluster.LocalStack(Path(tmp), binaries, crds=[ROOT / "crds"]) as plane):
        port = 18080
        env = {**os.environ, "KUBECONFIG": str(plane.kubeconfig), "MTO_METRICS_PORT": str(port),
               "MTO_RESYNC_SECONDS": "3600"}

        def kubectl(*args: str, stdin: str | None = None) -> str:
            return subprocess.run([str(binaries.kubectl), *args], env=env, input=stdin, capture_output=True,
                                  text=True, check=True).stdout

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                return str(response.read().decode())

        with (Path(tmp) / "operator.log").open("wb") as log:
            operator = subprocess.Popen([sys.executable, "-m", "model_traffic", "run", "--liveness-port", "18081"],
                                        env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                time.sleep(3)
                started = time.monotonic()
                kubectl("apply", "-f", "-", stdin=manifests(count))
                backends, models = count, count // 5
                total = backends + models
                while True:
                    ready = metric(scrape(), "model_traffic_object_ready", f'namespace="{NAMESPACE}"')
                    if ready >= backends + models or time.monotonic() - started > 600:
                        break
                    time.sleep(0.5)
                figures.append((f"{backends} backends + {models} VirtualModels Ready after apply",
                                f"{time.monotonic() - started:.1f} s"))
                text = scrape()
                figures.append(("reconcile latency p50 / p95 (histogram bucket)",
                                f"{histogram_quantile(text, 'model_traffic_reconcile_duration_seconds', 0.5)} s / "
                                f"{histogram_quantile(text, 'model_traffic_reconcile_duration_seconds', 0.95)} s"))
                figures.append((f"operator resident memory with {total} objects", f"{rss_mib(operator.pid):.0f} MiB"))
                stop(operator, grace=30)
                # A restart reconciles everything from the initial listing: the same work as a resync.
                operator = subprocess.Popen([sys.executable, "-m", "model_traffic", "run", "--liveness-port",
                                             "18081"], env=env, stdout=log, stderr=subprocess.STDOUT)
                started = time.monotonic()
                while True:
                    time.sleep(0.5)
                    try:
                        text = scrape()
                    except OSError:
                        continue
                    if metric(text, "model_traffic_reconcile_total") >= total or time.monotonic() - started > 600:
                        break
                figures.append((f"restart: all {total} objects reconciled again",
                                f"{time.monotonic() - started:.1f} s"))
                writes = metric(text, "model_traffic_reconcile_total", 'result="updated"')
                figures.append(("status writes in that pass (unchanged objects)", f"{writes:.0f}"))
            finally:
                stop(operator, grace=30)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=100, help="backends (VirtualModels: /5, TrafficConfigs: /10)")
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args(argv)
    figures = render_figures()
    if not args.render_only:
        figures += cluster_figures(args.objects)
    width = max(len(name) for name, _ in figures)
    for name, value in figures:
        print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
