"""``make demo``: the local stack, the operator, the examples, and what kubectl shows.

The local stack is a control plane with the real Envoy Gateway, AI Gateway and KServe controllers, and fake
nodes (kube-scheduler and kwok) on which KServe's predictor pods are scheduled and run without a container.
Envoy Gateway accepted the Gateway ``envoy-gateway-system/ai-gateway``: the operator's default gateway unless
MTO_DEFAULT_GATEWAY says otherwise.

Everything is started here and stopped at the end (``--keep`` leaves it running until Ctrl-C).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from model_traffic_dev import localcluster
from model_traffic_dev.localcluster.process import stop

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep everything running until Ctrl-C")
    args = parser.parse_args(argv)
    binaries = localcluster.ensure_binaries()
    print("== starting the local stack: control plane, fake nodes, our CRDs and the upstream ones, Envoy Gateway,"
          " AI Gateway, KServe", flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="mto-demo-") as tmp,
        localcluster.LocalStack(Path(tmp), binaries, crds=[ROOT / "crds"]) as plane,
    ):
        print(f"== Envoy Gateway accepted the Gateway {plane.default_gateway} (stack ready: {plane.timings})",
              flush=True)
        env = {**os.environ, "KUBECONFIG": str(plane.kubeconfig), "MTO_METRICS_PORT": "0",
               "MTO_DEFAULT_GATEWAY": os.environ.get("MTO_DEFAULT_GATEWAY") or plane.default_gateway}

        def kubectl(*kubectl_args: str, check: bool = True) -> str:
            result = subprocess.run([str(binaries.kubectl), *kubectl_args], env=env, capture_output=True, text=True)
            if check and result.returncode != 0:
                raise SystemExit(f"kubectl {' '.join(kubectl_args)} failed:\n{result.stderr}")
            return result.stdout

        log_path = Path(tmp) / "operator.log"
        print(f"== starting the operator (log: {log_path})", flush=True)
        with log_path.open("wb") as log:
            operator = subprocess.Popen([sys.executable, "-m", "model_traffic", "run"], env=env,
                                        stdout=log, stderr=subprocess.STDOUT)
            try:
                print("== kubectl apply -f examples/", flush=True)
                print(kubectl("apply", "-f", str(ROOT / "examples")), flush=True)
                # The example's first release (v1) is stable at once; the next release, as a Git commit of
                # spec.release would bring it, is rolled out from it.
                kubectl("wait", "--for=jsonpath={.status.stableVersion}=v1", "trafficcfg/llama", "-n", "llm",
                        "--timeout=120s")
                print("== the next release: spec.release v2 (as a commit would write it)", flush=True)
                kubectl("patch", "trafficcfg", "llama", "-n", "llm", "--type=merge", "-p", '{"spec": {"release": '
                        '{"version": "v2", "storageUri": "hf://meta-llama/Llama-3.1-8B-Instruct:0e9e39f"}}}')
                print("== KServe makes a Deployment per version; its pods run on the fake GPU nodes", flush=True)
                wait_created(kubectl, "inferenceservice", ("llama-v1", "llama-v2"))
                kubectl("wait", "--for=condition=Ready", "inferenceservice/llama-v1", "inferenceservice/llama-v2",
                        "-n", "llm", "--timeout=120s")
                print(kubectl("get", "deployments,pods", "-n", "llm", "-o", "wide"), flush=True)
                print("== kubectl wait --for=condition=Ready maisb,vmodel --all -n llm", flush=True)
                waited = subprocess.run([str(binaries.kubectl), "wait", "--for=condition=Ready", "maisb,vmodel",
                                         "--all", "-n", "llm", "--timeout=90s"], env=env, capture_output=True,
                                        text=True)
                print(waited.stdout or waited.stderr, flush=True)
                print("== kubectl get modeltraffic -n llm -o wide", flush=True)
                print(kubectl("get", "modeltraffic", "-n", "llm", "-o", "wide"), flush=True)
                children = "backends,aiservicebackends,backendsecuritypolicies,quotapolicies,aigatewayroutes," \
                           "backendtrafficpolicies"
                print(f"== kubectl get {children} -n llm", flush=True)
                print(kubectl("get", children, "-n", "llm"), flush=True)
                print("== kubectl get trafficcfg,inferenceservices -n llm   (v2 is the canary at its first step)",
                      flush=True)
                print(kubectl("get", "trafficcfg,inferenceservices", "-n", "llm"), flush=True)
                print("== model-traffic promote llama -n llm", flush=True)
                promoted = subprocess.run([sys.executable, "-m", "model_traffic", "promote", "llama", "-n", "llm"],
                                          env=env, capture_output=True, text=True)
                print(promoted.stdout or promoted.stderr, flush=True)
                kubectl("wait", "--for=jsonpath={.status.phase}=Succeeded", "trafficcfg/llama", "-n", "llm",
                        "--timeout=60s")
                print("== kubectl get trafficcfg -n llm   (v2 is stable; v1 retires once no traffic points at it)",
                      flush=True)
                print(kubectl("get", "trafficcfg", "-n", "llm"), flush=True)
                if args.keep:
                    print(f"== running; export KUBECONFIG={plane.kubeconfig} and PATH={binaries.kubectl.parent}:$PATH"
                          " in another shell. Ctrl-C stops everything.", flush=True)
                    while operator.poll() is None:
                        time.sleep(1)
                return 0 if waited.returncode == 0 else 1
            except KeyboardInterrupt:
                return 0
            finally:
                stop(operator, grace=30)


def wait_created(kubectl: Callable[..., str], kind: str, names: tuple[str, ...], timeout: float = 60.0) -> None:
    """`kubectl wait` needs the objects to exist: wait for the operator to create them."""
    deadline = time.monotonic() + timeout
    for name in names:
        while not kubectl("get", kind, name, "-n", "llm", "--ignore-not-found", "-o", "name").strip():
            if time.monotonic() > deadline:
                raise SystemExit(f"{kind} {name} was not created within {timeout:.0f}s")
            time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
