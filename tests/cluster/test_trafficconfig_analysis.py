"""TrafficConfig analysis against a real Prometheus scraping a fake AI Gateway (tests/support/prometheus.py):
each version serves under ``<modelName>-<version>``, which is what the gateway's ``gen_ai_request_model``
label carries, and the test chooses what each version's traffic looks like."""

from __future__ import annotations

import textwrap

import pytest

from model_traffic import kube as k
from model_traffic.kube import Kube
from tests.cluster.test_trafficconfig import (
    TEMPLATE,
    apply,
    canary_with_analysis,
    events,
    traffic_config,
    wait_phase,
    wait_served,
    wait_weights,
)
from tests.conftest import Cluster, Operator, condition, wait_for
from tests.support.prometheus import GenAIExporter, PrometheusServer, genai_exporter, prometheus

pytestmark = pytest.mark.cluster
__all__ = ["genai_exporter", "prometheus"]  # the session fixtures, re-exported for pytest


def rollout(cluster: Cluster, kube: Kube, namespace: str, prometheus: PrometheusServer, model: str,
            analysis: str) -> None:
    apply(cluster, namespace, canary_with_analysis(
        namespace, model, f'prometheus: {{address: "{prometheus.address}"}}\n' + textwrap.dedent(analysis)))
    wait_served(kube, namespace, "llama-v1")
    wait_served(kube, namespace, "llama-v2")


def test_a_healthy_candidate_is_promoted_with_its_measurements_in_status(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str, genai_exporter: GenAIExporter,
    prometheus: PrometheusServer,
) -> None:
    model = f"llama-{namespace}"
    genai_exporter.set_profile(f"{model}-v1", ttft_seconds=0.2, output_tokens_per_request=100)
    genai_exporter.set_profile(f"{model}-v2", ttft_seconds=0.21, output_tokens_per_request=120)
    prometheus.wait_for_samples(f'gen_ai_server_time_to_first_token_seconds_count{{gen_ai_request_model="{model}-v2"}}')
    rollout(cluster, kube, namespace, prometheus, model, """\
          interval: 5s
          stepWeights: [20, 50]
          metrics:
          - {name: error-rate, builtin: ErrorRate, max: 0.01}
          - {name: ttft-p95, builtin: TimeToFirstTokenP95, maxRelativeToStable: 1.2}
          - {name: tokens, builtin: OutputTokensPerRequest, min: 50}
    """)
    wait_weights(kube, namespace, "llama", {"llama-v1": 50, "llama-v2": 50}, timeout=30)
    mid = (kube.get(k.TRAFFIC_CONFIG, namespace, "llama") or {})["status"]
    results = {r["name"]: r for r in mid["lastResults"]}
    assert set(results) == {"error-rate", "ttft-p95", "tokens"}
    assert all(r["passed"] for r in results.values()), results
    assert results["error-rate"]["value"] == 0  # measured zero, not "no data"
    assert results["ttft-p95"]["value"] == pytest.approx(0.21, rel=0.05)
    assert results["ttft-p95"]["stableValue"] == pytest.approx(0.2, rel=0.05)  # same window, the stable's value
    assert results["tokens"]["value"] == pytest.approx(120, rel=0.01)

    done = wait_phase(kube, namespace, "llama", "Succeeded", timeout=30)
    assert done["stableVersion"] == "v2"
    wait_weights(kube, namespace, "llama", {"llama-v2": 100})
    text = operator.metrics()
    assert f'model_traffic_analysis_passed{{metric="ttft-p95",name="llama",namespace="{namespace}"}} 1.0' in text
    assert f'model_traffic_rollout_phase{{name="llama",namespace="{namespace}",phase="Succeeded"}} 1.0' in text


def test_a_slow_time_to_first_token_rolls_back_after_the_threshold(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str, genai_exporter: GenAIExporter,
    prometheus: PrometheusServer,
) -> None:
    model = f"llama-{namespace}"
    genai_exporter.set_profile(f"{model}-v1", ttft_seconds=0.2)
    genai_exporter.set_profile(f"{model}-v2", ttft_seconds=0.6)
    prometheus.wait_for_samples(f'gen_ai_server_time_to_first_token_seconds_count{{gen_ai_request_model="{model}-v2"}}')
    rollout(cluster, kube, namespace, prometheus, model, """\
          interval: 5s
          threshold: 2
          stepWeights: [10, 50]
          metrics:
          - {name: ttft-p95, builtin: TimeToFirstTokenP95, maxRelativeToStable: 1.2}
    """)
    failed = wait_phase(kube, namespace, "llama", "Failed", timeout=40)
    assert failed["failedChecks"] == 2
    assert len(failed["lastResults"]) == 1, failed["lastResults"]
    [result] = failed["lastResults"]
    assert result["passed"] is False
    assert result["value"] == pytest.approx(0.6, rel=0.05)
    assert "x stable" in result["message"]
    wait_weights(kube, namespace, "llama", {"llama-v1": 100})
    [message] = [m for r, m in events(cluster, namespace, "llama") if r == "RolledBack" and "after 2 failed" in m]
    assert "ttft-p95=0.6" in message and "all traffic to v1" in message
    assert condition(kube.get(k.TRAFFIC_CONFIG, namespace, "llama"), "Ready")["status"] == "False"
    wait_for(lambda: kube.get(k.INFERENCE_SERVICE, namespace, "llama-v2") is None, 30, "the candidate removed")


def test_no_data_for_the_candidate_is_a_failed_check(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str, genai_exporter: GenAIExporter,
    prometheus: PrometheusServer,
) -> None:
    model = f"llama-{namespace}"
    genai_exporter.set_profile(f"{model}-v1", ttft_seconds=0.2)  # v2 gets no traffic at all
    rollout(cluster, kube, namespace, prometheus, model, """\
          interval: 5s
          threshold: 1
          metrics:
          - {name: error-rate, builtin: ErrorRate, max: 0.01}
    """)
    failed = wait_phase(kube, namespace, "llama", "Failed", timeout=30)
    assert failed["lastResults"] == [{"name": "error-rate", "passed": False, "message": "no data"}]


def test_weighted_variants_are_measured_and_compared_in_status(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str, genai_exporter: GenAIExporter,
    prometheus: PrometheusServer,
) -> None:
    model = f"mix-{namespace}"
    genai_exporter.set_profile(f"{model}-v1", ttft_seconds=0.2, output_tokens_per_request=100)
    genai_exporter.set_profile(f"{model}-v2", ttft_seconds=0.3, output_tokens_per_request=150)
    prometheus.wait_for_samples(f'gen_ai_server_time_to_first_token_seconds_count{{gen_ai_request_model="{model}-v2"}}')
    apply(cluster, namespace, traffic_config("mix", f"""\
        modelName: {model}
        strategy: Weighted
        gatewayRefs: [{{name: ai-gateway, namespace: {namespace}}}]
    """, TEMPLATE, f"""\
        stable: {{version: v1}}
        variants: [{{version: v1, weight: 80}}, {{version: v2, weight: 20}}]
        analysis:
          interval: 5s
          prometheus: {{address: "{prometheus.address}"}}
          metrics:
          - {{name: ttft-p95, builtin: TimeToFirstTokenP95, maxRelativeToStable: 1.2}}
          - {{name: tokens, builtin: OutputTokensPerRequest, min: 1}}
    """))
    wait_served(kube, namespace, "mix-v1")
    wait_served(kube, namespace, "mix-v2")

    def measured() -> dict[str, dict[str, dict[str, object]]] | None:
        versions = ((kube.get(k.TRAFFIC_CONFIG, namespace, "mix") or {}).get("status") or {}).get("versions") or []
        found = {v["version"]: {m["name"]: m for m in v.get("metrics") or []} for v in versions}
        complete = len(found) == 2 and all(len(m) == 2 and all("value" in r for r in m.values())
                                           for m in found.values())
        return found if complete else None

    # The first measurement may come before Prometheus has two samples of the new series: no data, then data.
    by_version = wait_for(measured, 30, "per-variant measurements in status")
    v2 = by_version["v2"]
    assert v2["ttft-p95"]["value"] == pytest.approx(0.3, rel=0.05)
    assert v2["ttft-p95"]["stableValue"] == pytest.approx(0.2, rel=0.05)  # compared with v1, same window
    assert v2["ttft-p95"]["passed"] is False  # 1.5x the stable: reported ...
    assert v2["tokens"]["value"] == pytest.approx(150, rel=0.01)
    assert by_version["v1"]["tokens"]["value"] == pytest.approx(100, rel=0.01)
    # ... but Weighted never acts on it: the weights are the spec's.
    assert wait_phase(kube, namespace, "mix", "Succeeded")["canaryWeight"] == 20
    wait_weights(kube, namespace, "mix", {"mix-v1": 80, "mix-v2": 20})
