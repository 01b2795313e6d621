"""The pure part of `model-traffic usage`: the PromQL it asks, how answers fold into rows, the period's days."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from model_traffic.commands import usage

UNTIL = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)


def test_tenant_queries_fold_rotated_client_ids_and_escape_model_names() -> None:
    q = usage.queries("tenant", 86400, ["gpt-4", 'we"ird.model'])
    assert q.tokens == (
        'sum by (tenant, gen_ai_request_model, gen_ai_token_type) (label_replace(increase('
        'gen_ai_client_token_usage_sum{gen_ai_original_model=~"gpt\\\\-4|we\\"ird\\\\.model"}[86400s]), '
        '"tenant", "$1", "tenant_id", "([^.]*).*"))')
    assert 'error_type!=""' in q.errors and 'error_type=""' in q.latency[0.95]
    assert q.ttft[0.5].startswith("histogram_quantile(0.5, sum by (tenant, le) (")


def test_model_and_day_queries_group_by_the_client_model_or_nothing() -> None:
    assert usage.queries("model", 3600).requests == (
        "sum by (gen_ai_original_model) (increase(gen_ai_server_request_duration_seconds_count{}[3600s]))")
    assert usage.queries("day", 60).requests.startswith("sum by () (")


@pytest.mark.parametrize(("text", "seconds"), [("7d", 604800), ("12h", 43200), ("30m", 1800), ("2w", 1209600)])
def test_periods(text: str, seconds: int) -> None:
    assert usage.window_seconds(text) == seconds


@pytest.mark.parametrize("text", ["0d", "7", "7y", "-1d", "1.5h", ""])
def test_bad_periods(text: str) -> None:
    with pytest.raises(usage.UsageError, match="--since"):
        usage.window_seconds(text)


def test_days_of_a_period_are_utc_days_partial_at_both_ends() -> None:
    assert usage.days(UNTIL, 2 * 86400) == [
        ("2026-11-28", datetime(2026, 11, 29, tzinfo=UTC).timestamp(), 18 * 3600),
        ("2026-11-29", datetime(2026, 11, 30, tzinfo=UTC).timestamp(), 86400),
        ("2026-11-30", UNTIL.timestamp(), 6 * 3600),
    ]


def test_fold_sums_tokens_prices_by_backend_model_and_names_the_unpriced() -> None:
    answers = {
        "tokens": [({"tenant": "acme", "gen_ai_request_model": "gpt-4o", "gen_ai_token_type": "input"}, 1000.0),
                   ({"tenant": "acme", "gen_ai_request_model": "gpt-4o", "gen_ai_token_type": "output"}, 100.0),
                   ({"tenant": "acme", "gen_ai_request_model": "mystery", "gen_ai_token_type": "input"}, 5.0),
                   ({"gen_ai_request_model": "gpt-4o", "gen_ai_token_type": "input"}, 7.0)],
        "requests": [({"tenant": "acme"}, 10.0)], "errors": [({"tenant": "acme"}, 1.0)],
    }
    q = usage.queries("tenant", 60)

    def query(promql: str, at: float) -> list[usage.Sample]:
        assert at == UNTIL.timestamp()
        for name in ("tokens", "requests", "errors"):
            if promql == getattr(q, name):
                return answers[name]
        return [({"tenant": "acme"}, float("nan"))] if "0.95" in promql else []

    rows = {r.group: r for r in usage.collect("tenant", 60, UNTIL, query, {"gpt-4o": {"input": 2, "output": 8}})}
    acme = rows["acme"]
    assert (acme.input_tokens, acme.output_tokens, acme.requests, acme.error_rate) == (1005, 100, 10, 0.1)
    assert acme.cost_microdollars == 1000 * 2 + 100 * 8 and acme.unpriced == {"mystery"}
    assert acme.latency == {}  # NaN (no successful request in the window) is no figure
    assert rows[usage.NONE].input_tokens == 7  # requests without a tenant label
    table = usage.table(rows.values(), "tenant", priced=True)
    assert "2800 (no price: mystery)" in table and "-" in table.splitlines()[1]


@pytest.mark.parametrize("text", ["[1, 2]", "gpt-4o: 3", "gpt-4o: {input: x}", "gpt-4o: {in: 1}", "m: {input: -1}"])
def test_bad_price_tables(text: str) -> None:
    with pytest.raises(usage.UsageError):
        usage.load_prices(text)


def test_the_command_line_needs_a_prometheus(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
                                             ) -> None:
    from model_traffic import cli

    monkeypatch.delenv("MTO_PROMETHEUS_ADDRESS", raising=False)
    assert cli.main(["usage", "--by", "tenant"]) == 1
    assert "--prometheus" in capsys.readouterr().err
