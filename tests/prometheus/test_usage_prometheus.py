"""`model-traffic usage` against a real Prometheus holding three days of gateway metrics labelled per tenant.

The series are the shape Envoy AI Gateway's Prometheus exporter writes (``internal/metrics/genai.go``), with the
``tenant_id`` label its ``--metricsRequestHeaderAttributes=x-tenant-id:tenant.id`` adds. They are written as
OpenMetrics with timestamps every 5 minutes and loaded into Debian's Prometheus with its own
``promtool tsdb create-blocks-from openmetrics`` (backfill), so the days are real days and the figures exact:
each counter grows linearly over its life, a window starts and ends on a sample, and the latency of each model
sits in one bucket, where ``histogram_quantile`` interpolates linearly.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from model_traffic.commands import usage
from model_traffic_dev.localcluster.process import die_with_parent, stop
from tests.support import prerequisites

STEP = 300
DAY = 86400
BOUNDS = ("0.1", "0.5", "1", "+Inf")


@dataclass(frozen=True)
class Traffic:
    """One tenant's client id on one model, per day, from ``first_day`` (0, 1 or 2) to the end."""

    tenant_id: str
    model: str
    backend_model: str
    first_day: int
    ok: int
    failed: int
    input_tokens: int
    output_tokens: int
    latency_bucket: str  # the le of the bucket every successful request's duration falls in
    ttft_bucket: str


TRAFFIC = [
    Traffic("acme", "gpt-4", "gpt-4o", 0, 100, 0, 100000, 20000, "0.5", "0.1"),
    Traffic("acme.1a2b3c4d", "gpt-4", "gpt-4o", 2, 50, 0, 50000, 10000, "0.5", "0.1"),  # the key rotated on day 3
    Traffic("beta", "claude", "claude-sonnet-4", 0, 40, 10, 40000, 8000, "1", "0.5"),
    Traffic("acme", "claude", "claude-sonnet-4", 1, 20, 0, 10000, 4000, "1", "0.5"),
]
PRICES = "gpt-4o: {input: 2.5, output: 10}\nclaude-sonnet-4: {input: 3, output: 15}\n"


def openmetrics(end: int) -> str:
    """Three days before ``end`` (a UTC midnight) of every series, every STEP seconds."""
    start = end - 3 * DAY
    families: dict[str, list[str]] = {}

    def series(name: str, labels: dict[str, str], per_day: float, first: int) -> None:
        text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        lines = families.setdefault(name, [])
        for t in range(first, end + 1, STEP):
            lines.append(f"{name}{{{text}}} {per_day * (t - first) / DAY!r} {t}")

    for tr in TRAFFIC:
        first = start + tr.first_day * DAY
        base = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "openai", "tenant_id": tr.tenant_id,
                "gen_ai_original_model": tr.model, "gen_ai_request_model": tr.backend_model,
                "gen_ai_response_model": tr.backend_model}
        for kind, tokens in (("input", tr.input_tokens), ("output", tr.output_tokens)):
            series(f"{usage.TOKENS}_sum", {**base, "gen_ai_token_type": kind}, tokens, first)
            series(f"{usage.TOKENS}_count", {**base, "gen_ai_token_type": kind}, tr.ok, first)
        series(f"{usage.DURATION}_count", base, tr.ok, first)
        for le in BOUNDS:
            ok_below = tr.ok if BOUNDS.index(le) >= BOUNDS.index(tr.latency_bucket) else 0
            series(f"{usage.DURATION}_bucket", {**base, "le": le}, ok_below, first)
            ttft_below = tr.ok if BOUNDS.index(le) >= BOUNDS.index(tr.ttft_bucket) else 0
            series(f"{usage.TTFT}_bucket", {**base, "le": le}, ttft_below, first)
        if tr.failed:
            failed = {**base, "error_type": "_OTHER"}
            series(f"{usage.DURATION}_count", failed, tr.failed, first)
            for le in BOUNDS:  # fast failures: they would pull the latency down were they counted
                series(f"{usage.DURATION}_bucket", {**failed, "le": le}, tr.failed, first)
    out = io.StringIO()
    for name, lines in families.items():
        out.write(f"# TYPE {name} unknown\n")
        out.write("\n".join(lines) + "\n")
    out.write("# EOF\n")
    return out.getvalue()


@dataclass
class Backfilled:
    address: str
    until: datetime


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def backfilled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backfilled]:
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prometheus is None or promtool is None:
        prerequisites.missing("prometheus and promtool (apt-get install prometheus)")
    workdir = tmp_path_factory.mktemp("usage-prometheus")
    now = datetime.now(UTC)
    until = datetime(now.year, now.month, now.day, tzinfo=UTC)  # today's midnight: three whole days before it
    source = workdir / "gateway.om"
    source.write_text(openmetrics(int(until.timestamp())))
    data = workdir / "data"
    subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(source), str(data)],
                   check=True, capture_output=True, timeout=300)
    (workdir / "prometheus.yml").write_text("global: {scrape_interval: 1m}\n")
    port = _free_port()
    with (workdir / "prometheus.log").open("ab") as log:
        process = subprocess.Popen(
            [prometheus, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={data}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=3650d", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir,
            preexec_fn=die_with_parent(signal.SIGTERM))
    try:
        address = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{address}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((workdir / "prometheus.log").read_text()[-3000:]) from None
                time.sleep(0.2)
        yield Backfilled(address, until)
    finally:
        stop(process, grace=15)


def rows_of(backfilled: Backfilled, by: usage.By, prices: bool = False,
            models: list[str] | None = None) -> dict[str, usage.Row]:
    rows = usage.collect(by, 3 * DAY, backfilled.until, usage.PrometheusVectors(backfilled.address),
                         usage.load_prices(PRICES) if prices else None, models)
    return {row.group: row for row in rows}


def figures(row: usage.Row) -> tuple[int, int, int, int]:
    return round(row.requests), round(row.errors), round(row.input_tokens), round(row.output_tokens)


def test_usage_by_tenant_folds_a_rotated_key_into_its_tenant_and_prices_it(backfilled: Backfilled) -> None:
    rows = rows_of(backfilled, "tenant", prices=True)
    assert set(rows) == {"acme", "beta"}  # acme.1a2b3c4d is acme
    assert figures(rows["acme"]) == (300 + 50 + 40, 0, 300000 + 50000 + 20000, 60000 + 10000 + 8000)
    assert figures(rows["beta"]) == (150, 30, 120000, 24000)
    assert rows["beta"].error_rate == pytest.approx(0.2)
    # µ$: gpt-4o 2.5 in / 10 out, claude-sonnet-4 3 in / 15 out, by the backend model that served the tokens.
    assert rows["acme"].cost_microdollars == pytest.approx(350000 * 2.5 + 70000 * 10 + 20000 * 3 + 8000 * 15)
    assert rows["beta"].cost_microdollars == pytest.approx(120000 * 3 + 24000 * 15)


def test_usage_by_model_with_latency_and_time_to_first_token_quantiles(backfilled: Backfilled) -> None:
    rows = rows_of(backfilled, "model")
    assert figures(rows["gpt-4"]) == (350, 0, 350000, 70000)
    assert figures(rows["claude"]) == (190, 30, 140000, 32000)
    # Successful requests only, each model in one bucket: linear interpolation inside it.
    assert rows["gpt-4"].latency == pytest.approx({0.5: 0.1 + 0.4 * 0.5, 0.95: 0.1 + 0.4 * 0.95})
    assert rows["claude"].latency == pytest.approx({0.5: 0.5 + 0.5 * 0.5, 0.95: 0.5 + 0.5 * 0.95})
    assert rows["gpt-4"].ttft == pytest.approx({0.5: 0.1 * 0.5, 0.95: 0.1 * 0.95})
    assert rows["claude"].ttft == pytest.approx({0.5: 0.1 + 0.4 * 0.5, 0.95: 0.1 + 0.4 * 0.95})
    only = rows_of(backfilled, "model", models=["claude"])  # -n: the models of one namespace's VirtualModels
    assert set(only) == {"claude"}


def test_usage_by_day(backfilled: Backfilled) -> None:
    rows = rows_of(backfilled, "day")
    days = [(backfilled.until - timedelta(days=n)).date().isoformat() for n in (3, 2, 1)]
    assert list(rows) == days
    assert [figures(rows[d]) for d in days] == [
        (150, 10, 140000, 28000),
        (170, 10, 150000, 32000),  # acme starts on claude
        (220, 10, 200000, 42000),  # acme's rotated key joins
    ]


def test_the_table_a_person_reads(backfilled: Backfilled) -> None:
    text = usage.table(rows_of(backfilled, "tenant", prices=True).values(), "tenant", priced=True)
    lines = [line.split() for line in text.splitlines()]
    assert lines[0] == ["TENANT", "REQUESTS", "ERRORS", "INPUT", "TOKENS", "OUTPUT", "TOKENS", "P50", "LATENCY",
                        "P95", "LATENCY", "P50", "TTFT", "P95", "TTFT", "COST", "(µ$)"]
    assert lines[1][:5] == ["acme", "390", "0.00%", "370000", "78000"] and lines[1][-1] == "1755000"
    assert lines[2][:5] == ["beta", "150", "20.00%", "120000", "24000"] and lines[2][-1] == "720000"
    assert lines[2][5:9] == ["0.750s", "0.975s", "0.300s", "0.480s"]


def test_a_bad_query_is_a_clear_error(backfilled: Backfilled) -> None:
    with pytest.raises(usage.UsageError, match="HTTP 400"):
        usage.PrometheusVectors(backfilled.address)("sum(", backfilled.until.timestamp())
    with pytest.raises(usage.UsageError, match="Prometheus at"):
        usage.PrometheusVectors(f"http://127.0.0.1:{_free_port()}")("up", 0)


def test_nothing_in_the_period_is_an_empty_table_not_an_error(backfilled: Backfilled) -> None:
    long_ago = backfilled.until - timedelta(days=30)
    rows = usage.collect("model", DAY, long_ago, usage.PrometheusVectors(backfilled.address))
    assert rows == []


DASHBOARD = (Path(__file__).resolve().parents[2] / "charts" / "model-traffic-operator" / "files" / "dashboards"
             / "model-traffic-tenants.json")


def test_every_panel_of_the_tenants_dashboard_answers_from_the_gateway_metrics(backfilled: Backfilled) -> None:
    """The chart's tenant dashboard: each query, with Grafana's variables as Grafana fills them, returns series
    from the metrics the gateway exports, labelled as its legend expects."""
    dashboard = json.loads(DASHBOARD.read_text())
    query = usage.PrometheusVectors(backfilled.address)
    at = backfilled.until.timestamp()
    for variable in dashboard["templating"]["list"][1:]:
        metric, _, label = variable["definition"].removeprefix("label_values(").removesuffix(")").partition(", ")
        assert {s[0].get(label) for s in query(f"count by ({label}) ({metric})", at)} == {"gpt-4", "claude"}
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = (target["expr"].replace("$__rate_interval", "1h").replace("$__range", "3d")
                    .replace('"$model"', '".*"'))
            samples = query(expr, at)
            assert samples, f"{panel['title']}: no data for {expr}"
            wanted = set(re.findall(r"{{(\w+)}}", target.get("legendFormat", "")))
            assert all(wanted <= set(labels) for labels, _ in samples), (panel["title"], wanted, samples[0][0])
    [table] = [p for p in dashboard["panels"] if p["type"] == "table"]
    totals = {(labels["tenant"], labels["gen_ai_original_model"], labels["gen_ai_token_type"]): round(value)
              for labels, value in query(table["targets"][0]["expr"].replace("$__range", "3d")
                                         .replace('"$model"', '".*"'), at)}
    assert totals[("acme", "gpt-4", "input")] == 350000 and totals[("beta", "claude", "output")] == 24000
