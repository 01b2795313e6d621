"""Analysis against a real Prometheus that needs auth: TLS with its own CA and basic auth, both set with Prometheus'
own --web.config.file (tls_server_config, basic_auth_users with a bcrypt hash), queried through the operator's
client built from Secret values (kinds/trafficconfig/measure.py), never a mock.

Bearer tokens and X-Scope-OrgID are what Mimir, Cortex or a proxy in front of Prometheus check; Prometheus itself
checks neither, so their headers are asserted in tests/unit/test_measure.py.
"""

from __future__ import annotations

import base64
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from model_traffic.kinds.metrictemplate.resolve import resolve_analysis
from model_traffic.kinds.trafficconfig import measure
from model_traffic.kinds.trafficconfig.analysis import PrometheusError, Target
from model_traffic.kinds.trafficconfig.analysis_spec import Metric, Prometheus
from model_traffic.outbound import OutboundPolicy
from tests.support.prometheus import GenAIExporter, PrometheusServer, find_prometheus

with warnings.catch_warnings():  # deprecated (gone in Python 3.13; the project runs 3.11): bcrypt via libxcrypt,
    warnings.simplefilter("ignore", DeprecationWarning)  # what Prometheus' basic_auth_users takes, without a
    import crypt  # new dependency

USER, PASSWORD = "analysis", "pa55-w0rd"
MODEL = "pauth-llama"
STABLE, CANDIDATE = Target("v1", f"{MODEL}-v1"), Target("v2", f"{MODEL}-v2")
CA: dict[str, str] = {}  # the secured Prometheus' certificate, as a CA bundle (set by the fixture)


def self_signed(workdir: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA (what a private CA bundle holds), and its key."""
    cert, key = workdir / "tls.crt", workdir / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=model-traffic-test-ca",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def secured(genai_exporter: GenAIExporter, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    if find_prometheus() is None:
        pytest.skip("prometheus not installed (the session's Prometheus fixture says how)")
    workdir = tmp_path_factory.mktemp("prometheus-auth")
    cert, key = self_signed(workdir)
    password_hash = crypt.crypt(PASSWORD, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
    web = {"tls_server_config": {"cert_file": str(cert), "key_file": str(key)},
           "basic_auth_users": {USER: password_hash}}
    basic = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
    genai_exporter.set_profile(STABLE.served_model, ttft_seconds=0.2)
    genai_exporter.set_profile(CANDIDATE.served_model, ttft_seconds=0.22)
    with PrometheusServer(workdir, [genai_exporter.target], web_config=web, ca_pem=cert.read_text(),
                          headers=basic) as server:
        server.wait_for_samples(f'up{{job="{PrometheusServer.JOB}"}} == 1', timeout=30)
        CA["pem"] = cert.read_text()
        yield server
    genai_exporter.remove(STABLE.served_model)
    genai_exporter.remove(CANDIDATE.served_model)


def values(server: PrometheusServer, password: str = PASSWORD) -> dict[tuple[str, str, str], str]:
    """The Secret and ConfigMap a TrafficConfig's namespace would hold."""
    return {("Secret", "prom-auth", "username"): USER, ("Secret", "prom-auth", "password"): password,
            ("ConfigMap", "prom-ca", "ca.crt"): CA["pem"], ("Secret", "org", "id"): "tenant-a"}


def reader(table: dict[tuple[str, str, str], str]) -> measure.ReadValue:
    return lambda kind, name, key: table.get((kind, name, key))


PROVIDER: dict[str, Any] = {"secretRef": {"name": "prom-auth"}, "ca": {"configMapKeyRef": {"name": "prom-ca",
                                                                                           "key": "ca.crt"}},
                            "headers": [{"name": "X-Scope-OrgID", "valueFrom": {"secretKeyRef": {"name": "org",
                                                                                                "key": "id"}}}]}


def provider(server: PrometheusServer, **changes: Any) -> Prometheus:
    return Prometheus.model_validate({"address": server.address, **PROVIDER, **changes})


def test_basic_auth_and_a_private_ca_from_the_namespace_reach_prometheus(secured: PrometheusServer) -> None:
    client = measure.prometheus_client(provider(secured), reader(values(secured)))
    assert client.query("vector(42)") == 42.0


def test_a_wrong_password_is_refused_by_prometheus_and_the_message_holds_no_secret(
        secured: PrometheusServer) -> None:
    client = measure.prometheus_client(provider(secured), reader(values(secured, password="wrong")))
    with pytest.raises(PrometheusError, match="HTTP 401") as refused:
        client.query("vector(1)")
    assert "wrong" not in str(refused.value) and PASSWORD not in str(refused.value)


def test_without_the_ca_the_certificate_is_not_trusted(secured: PrometheusServer) -> None:
    client = measure.prometheus_client(provider(secured, ca=None), reader(values(secured)))
    with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
        client.query("vector(1)")


def test_a_cluster_template_with_its_own_authenticated_prometheus_judges_the_candidate(
        secured: PrometheusServer) -> None:
    """The whole path of a check: a ClusterMetricTemplate ('TTFT p95 at most 1.2x stable') carrying the
    authenticated Prometheus, referenced with an argument, resolved and measured as the reconciler does."""
    template = {"spec": {"query": 'histogram_quantile(0.95, sum by (le) (rate('
                                  'gen_ai_server_time_to_first_token_seconds_bucket{gen_ai_request_model='
                                  '"{{ .ServedModel }}"}[{{ .Args.window }}])))',
                         "maxRelativeToStable": 1.2, "args": [{"name": "window", "default": "5s"}],
                         "prometheus": {"address": secured.address, **PROVIDER}}}
    resolved = resolve_analysis(
        [Metric.model_validate({"name": "ttft", "templateRef": {"name": "ttft", "kind": "ClusterMetricTemplate"},
                                "args": {"window": "10s"}})],
        "llm", lambda kind, namespace, name: template if (kind, name) == ("ClusterMetricTemplate", "ttft") else None)
    assert resolved.problems == []
    secured.wait_for_samples(
        f'sum(rate(gen_ai_server_time_to_first_token_seconds_count{{gen_ai_request_model="{CANDIDATE.served_model}"}}'
        '[10s]))', timeout=30)
    measured = measure.run_analysis(
        resolved.metrics, [], candidate=CANDIDATE, stable=STABLE, interval="1m", prometheus=None,
        template_prometheus=resolved.prometheus, target=measure.AnalysisTarget("llm", "chat", MODEL, check="c"),
        read=reader(values(secured)), outbound=OutboundPolicy())
    assert measured.results is not None
    [result] = measured.results
    assert result.passed, result.message
    assert result.value is not None and result.stable_value is not None
    assert result.value / result.stable_value < 1.2
