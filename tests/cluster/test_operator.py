"""The operator process itself: leader election, restart, metrics."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from model_traffic.kube import Kube
from tests.cluster.test_backend import backend_yaml, wait_ready
from tests.conftest import ROOT, Cluster, Operator, start_operator, stop_operator, wait_for

pytestmark = pytest.mark.cluster

PLAIN = """\
    schema: {name: OpenAI}
    endpoint: {ip: {address: 10.0.0.9, port: 8000}}
"""


def lease_holder(kube: Kube, namespace: str) -> str | None:
    try:
        lease = kubernetes.client.CoordinationV1Api(kube.api_client).read_namespaced_lease(
            "model-traffic-operator", namespace)
    except ApiException:
        return None
    return str(lease.spec.holder_identity) if lease.spec and lease.spec.holder_identity else None


def test_only_the_leader_reconciles_and_a_standby_takes_over(
    cluster: Cluster, kube: Kube, namespace: str, tmp_path: Path, operator: Operator
) -> None:
    # The session operator watches every namespace; stop it for this test so the leaders are alone.
    stop_operator(operator)
    try:
        env = {"MTO_LEADER_ELECT": "true", "MTO_LEADER_ELECTION_NAMESPACE": namespace}
        leader = start_operator(cluster, tmp_path / "leader.log", **env)
        holder = wait_for(lambda: lease_holder(kube, namespace), 20, "a lease holder")
        standby_log = (tmp_path / "standby.log").open("wb")
        standby = subprocess.Popen(
            [sys.executable, "-m", "model_traffic", "run", "--liveness-port", "0"],
            env={**leader.env, "MTO_METRICS_PORT": "0"}, cwd=ROOT, stdout=standby_log, stderr=subprocess.STDOUT,
        )
        try:
            cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=backend_yaml("one", PLAIN))
            wait_ready(kube, namespace, "one")
            assert lease_holder(kube, namespace) == holder
            wait_for(lambda: "waiting for leadership" in (tmp_path / "standby.log").read_text(), 30,
                     "the standby to wait for the lease")
            assert "became leader" not in (tmp_path / "standby.log").read_text()

            leader.process.send_signal(signal.SIGKILL)
            leader.process.wait()
            wait_for(lambda: lease_holder(kube, namespace) not in (None, holder), 40, "the standby to take over")
            cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=backend_yaml("two", PLAIN))
            wait_ready(kube, namespace, "two", timeout=40)
            assert "became leader" in (tmp_path / "standby.log").read_text()
        finally:
            for process in (leader.process, standby):
                if process.poll() is None:
                    process.kill()
                    process.wait()
    finally:
        restarted = start_operator(cluster, operator.log_path, **{"MTO_METRICS_PORT": str(operator.metrics_port)})
        operator.process = restarted.process


def test_a_restarted_operator_resumes_from_status(
    cluster: Cluster, kube: Kube, namespace: str, operator: Operator
) -> None:
    stop_operator(operator)
    try:
        # Created while no operator runs: picked up from the initial listing after the restart.
        cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=backend_yaml("offline", PLAIN))
    finally:
        restarted = start_operator(cluster, operator.log_path, **{"MTO_METRICS_PORT": str(operator.metrics_port)})
        operator.process = restarted.process
    wait_ready(kube, namespace, "offline")


def test_metrics_endpoint_reports_reconciles(cluster: Cluster, kube: Kube, namespace: str, operator: Operator) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=backend_yaml("m", textwrap.dedent(PLAIN)))
    wait_ready(kube, namespace, "m")
    text = operator.metrics()
    assert 'model_traffic_reconcile_total{kind="ManagedAIServiceBackend"' in text
    assert "model_traffic_reconcile_duration_seconds_bucket" in text
    assert f'model_traffic_object_ready{{kind="ManagedAIServiceBackend",name="m",namespace="{namespace}"}} 1.0' in text
