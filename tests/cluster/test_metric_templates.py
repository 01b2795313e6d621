"""Metric templates, Inconclusive checks and signed webhooks on the real API server, with the operator running
under the chart's RBAC: a TrafficConfig using a ClusterMetricTemplate (with an argument) that does not exist yet is
Stalled with TemplateNotFound and an Event, heals when the template is created (the operator watches the kind),
and its analysis, measured through the template's query on a real Prometheus, promotes the candidate; an
inconclusive check pauses the rollout until a resume request; a webhook signed with a key from a Secret."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from typing import Any

import pytest

from model_traffic import kube as k
from model_traffic.kube import Kube
from tests.cluster.test_trafficconfig import (
    apply,
    canary_with_analysis,
    events,
    wait_phase,
    wait_served,
    wait_weights,
)
from tests.conftest import Cluster, Operator, condition, our_yaml, wait_for
from tests.support.prometheus import GenAIExporter, PrometheusServer, genai_exporter, prometheus
from tests.support.webhooks import WebhookServer

pytestmark = pytest.mark.cluster
__all__ = ["genai_exporter", "prometheus"]  # the session fixtures, re-exported for pytest

TTFT_QUERY = ('histogram_quantile({{ .Args.quantile }}, sum by (le) (rate(gen_ai_server_time_to_first_token_seconds_'
              'bucket{gen_ai_request_model="{{ .ServedModel }}"}[{{ .Interval }}])))')


@pytest.fixture
def receiver() -> Iterator[WebhookServer]:
    with WebhookServer() as server:
        yield server


def cluster_template(cluster: Cluster, name: str, spec: str) -> None:
    cluster.kubectl("apply", "-f", "-", stdin=our_yaml("ClusterMetricTemplate", name, spec))


def ready(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return condition(kube.get(k.TRAFFIC_CONFIG, namespace, name), "Ready")


def test_a_cluster_template_with_args_heals_when_created_and_its_analysis_promotes(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str, genai_exporter: GenAIExporter,
    prometheus: PrometheusServer,
) -> None:
    model = f"llama-{namespace}"
    template = f"ttft-{namespace}"  # cluster-wide: a name of this test's own
    genai_exporter.set_profile(f"{model}-v1", ttft_seconds=0.2)
    genai_exporter.set_profile(f"{model}-v2", ttft_seconds=0.21)
    prometheus.wait_for_samples(f'gen_ai_server_time_to_first_token_seconds_count{{gen_ai_request_model="{model}-v2"}}')
    apply(cluster, namespace, canary_with_analysis(namespace, model, f"""\
        interval: 5s
        stepWeights: [50]
        prometheus: {{address: "{prometheus.address}"}}
        metrics:
        - name: ttft
          templateRef: {{kind: ClusterMetricTemplate, name: {template}}}
          args: {{quantile: "0.95"}}
    """))
    try:
        def template_not_found() -> dict[str, Any] | None:
            found = ready(kube, namespace, "llama")
            return found if found.get("reason") == "TemplateNotFound" else None

        missing = wait_for(template_not_found, 60, "Ready=False TemplateNotFound")
        assert missing["status"] == "False"
        assert f"ClusterMetricTemplate {template} not found" in str(missing["message"])
        wait_for(lambda: any(reason == "TemplateNotFound" for reason, _ in events(cluster, namespace, "llama")), 30,
                 "a TemplateNotFound Event")

        # A template that declares no argument quantile (its query uses it all the same: a CEL rule comparing each
        # variable with each declared name exceeds the API server's cost budget): the TrafficConfig says so.
        cluster_template(cluster, template, f"""\
            query: '{TTFT_QUERY}'
            maxRelativeToStable: 1.2
        """)
        wait_for(lambda: "declares no argument quantile" in str(ready(kube, namespace, "llama").get("message")), 30,
                 "Ready=False TemplateArgsInvalid")
        assert ready(kube, namespace, "llama")["reason"] == "TemplateArgsInvalid"

        cluster_template(cluster, template, f"""\
            query: '{TTFT_QUERY}'
            maxRelativeToStable: 1.2
            args: [{{name: quantile, description: the latency quantile}}]
        """)
        wait_served(kube, namespace, "llama-v1")
        wait_served(kube, namespace, "llama-v2")
        done = wait_phase(kube, namespace, "llama", "Succeeded", timeout=90)
        assert done["stableVersion"] == "v2"
        [result] = [r for r in done["lastResults"] if r["name"] == "ttft"] or [None]
        assert result is not None and result["passed"], done["lastResults"]
        assert result["value"] == pytest.approx(0.21, rel=0.05)
        assert result["stableValue"] == pytest.approx(0.2, rel=0.05)
        wait_weights(kube, namespace, "llama", {"llama-v2": 100})
    finally:
        cluster.kubectl("delete", "clustermetrictemplate", template, "--ignore-not-found", "--wait=false")


def test_an_inconclusive_check_pauses_until_a_resume_request_and_a_signed_webhook_is_verifiable(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str, genai_exporter: GenAIExporter,
    prometheus: PrometheusServer, receiver: WebhookServer,
) -> None:
    model = f"llama-{namespace}"
    genai_exporter.set_profile(f"{model}-v1", ttft_seconds=0.2)
    genai_exporter.set_profile(f"{model}-v2", ttft_seconds=0.3)  # 1.5x: inside the inconclusive range
    prometheus.wait_for_samples(f'gen_ai_server_time_to_first_token_seconds_count{{gen_ai_request_model="{model}-v2"}}')
    cluster.kubectl("create", "secret", "generic", "hooks", "-n", namespace, "--from-literal=hmac=k3y",
                    "--from-literal=token=t0ken")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=our_yaml("MetricTemplate", "ttft", """\
        builtin: TimeToFirstTokenP95
        maxRelativeToStable: 2.0
        inconclusive: {maxRelativeToStable: 1.2}
    """))
    apply(cluster, namespace, canary_with_analysis(namespace, model, f"""\
        interval: 5s
        stepWeights: [50]
        prometheus: {{address: "{prometheus.address}"}}
        metrics:
        - {{name: ttft, templateRef: {{name: ttft}}}}
        webhooks:
        - name: evals
          type: Rollout
          url: "{receiver.url('/evals')}"
          headers: [{{name: X-Token, valueFrom: {{secretKeyRef: {{name: hooks, key: token}}}}}}]
          signature: {{secretKeyRef: {{name: hooks, key: hmac}}}}
    """))
    paused = wait_phase(kube, namespace, "llama", "Paused", timeout=120)
    assert paused["pausedByRequest"] is True and paused["canaryWeight"] == 50
    # The progress is written first, the conditions at the end of the same reconcile.
    def inconclusive() -> dict[str, Any] | None:
        found = ready(kube, namespace, "llama")
        return found if found.get("reason") == "Inconclusive" else None

    held = wait_for(inconclusive, 30, "Ready reason Inconclusive")
    assert "check of v2 inconclusive" in str(held["message"])
    [ttft] = [r for r in paused["lastResults"] if r["name"] == "ttft"]
    assert ttft["inconclusive"] is True and not ttft["passed"]
    assert not paused.get("failedChecks")  # not counted toward rollback
    assert any(reason == "Inconclusive" for reason, _ in events(cluster, namespace, "llama"))

    # The webhook was called beside the reconcile, with its header from the Secret and a signature a receiver
    # checks over the exact body with the shared key.
    call = receiver.calls("/evals")[0]
    assert call.headers["x-token"] == "t0ken"
    expected = "sha256=" + hmac.new(b"k3y", call.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(call.headers["x-model-traffic-signature"], expected)
    assert json.loads(call.body)["candidate"]["version"] == "v2"
    status_text = json.dumps(kube.get(k.TRAFFIC_CONFIG, namespace, "llama"))
    assert "t0ken" not in status_text and "k3y" not in status_text

    genai_exporter.set_profile(f"{model}-v2", ttft_seconds=0.21)  # better now: a resume checks again
    prometheus.wait_for_samples(
        f'histogram_quantile(0.95, sum by (le) (rate(gen_ai_server_time_to_first_token_seconds_bucket'
        f'{{gen_ai_request_model="{model}-v2"}}[5s])))', until=lambda v: v < 0.24, timeout=30)
    cluster.kubectl("patch", "trafficconfig", "llama", "-n", namespace, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": {"requests": {"resume": "2026-01-01T00:00:00Z"}}}))
    done = wait_phase(kube, namespace, "llama", "Succeeded", timeout=90)
    assert done["stableVersion"] == "v2"


def test_a_missing_credentials_secret_holds_the_check_and_heals_and_a_slow_webhook_times_out_beside_the_reconcile(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str, genai_exporter: GenAIExporter,
    prometheus: PrometheusServer, receiver: WebhookServer,
) -> None:
    model = f"llama-{namespace}"
    genai_exporter.set_profile(f"{model}-v1", ttft_seconds=0.2)
    genai_exporter.set_profile(f"{model}-v2", ttft_seconds=0.2)
    prometheus.wait_for_samples(f'gen_ai_server_time_to_first_token_seconds_count{{gen_ai_request_model="{model}-v2"}}')
    receiver.respond("/slow", delay=30.0)
    apply(cluster, namespace, canary_with_analysis(namespace, model, f"""\
        interval: 2s
        threshold: 1
        stepWeights: [50]
        prometheus:
          address: "{prometheus.address}"
          secretRef: {{name: prom-reader}}
        metrics:
        - {{name: ttft, builtin: TimeToFirstTokenP95, maxRelativeToStable: 1.5}}
        webhooks:
        - {{name: load, type: Rollout, url: "{receiver.url('/slow')}", timeout: 3s}}
    """))
    wait_served(kube, namespace, "llama-v2")

    # The metric's Secret is missing: the check is not run at all (counted neither way, no webhook called) and the
    # object says which Secret.
    def credentials_missing() -> dict[str, Any] | None:
        found = ready(kube, namespace, "llama")
        return found if found.get("reason") == "CredentialsNotFound" else None

    missing = wait_for(credentials_missing, 60, "Ready=False CredentialsNotFound")
    assert "Secret prom-reader not found" in str(missing["message"])
    assert not (kube.get(k.TRAFFIC_CONFIG, namespace, "llama") or {})["status"].get("failedChecks")
    assert receiver.calls("/slow") == []

    # The Secret appears (basic auth: this Prometheus ignores it): the next look (every 15 s) runs the check. Its
    # webhook is called beside the reconcile, recorded in status while awaited; its 30 s answer is not waited for:
    # after its 3 s timeout the check fails, rolled back at threshold 1.
    cluster.kubectl("create", "secret", "generic", "prom-reader", "-n", namespace, "--from-literal=username=u",
                    "--from-literal=password=hunter2")

    def awaited() -> list[dict[str, Any]] | None:
        calls = (kube.get(k.TRAFFIC_CONFIG, namespace, "llama") or {}).get("status", {}).get("webhookCalls")
        return calls or None

    [call] = wait_for(awaited, 60, "status.webhookCalls while the webhook runs")
    assert (call["name"], call["type"]) == ("load", "Rollout")
    failed = wait_phase(kube, namespace, "llama", "Failed", timeout=90)
    hook = next(r for r in failed["lastResults"] if r["name"] == "webhook/load")
    assert hook["message"] == "no answer within 3s" and not hook["passed"]
    assert "hunter2" not in json.dumps(kube.get(k.TRAFFIC_CONFIG, namespace, "llama"))
