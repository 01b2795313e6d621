"""Inconclusive checks: neither passed nor failed; the rollout pauses (resumable) instead of counting toward
rollback."""

from __future__ import annotations

from typing import Any

from model_traffic.kinds.trafficconfig.analysis import evaluate
from model_traffic.kinds.trafficconfig.analysis_spec import Metric
from model_traffic.kinds.trafficconfig.render import AnalysisRequest
from model_traffic.kinds.trafficconfig.spec import MetricResult
from tests.unit.test_render_trafficconfig import T0, at, reasons, reconcile, spec, vm_weights

TTFT = {"name": "ttft", "builtin": "TimeToFirstTokenP95", "maxRelativeToStable": 1.5,
        "inconclusive": {"maxRelativeToStable": 1.2, "noData": True}}


def metric(**fields: Any) -> Metric:
    return Metric.model_validate({**TTFT, **fields})


def test_between_the_pass_and_the_fail_bound_is_inconclusive() -> None:
    assert evaluate(metric(), 0.11, 0.1).passed  # 1.1x: passes
    doubt = evaluate(metric(), 0.13, 0.1)  # 1.3x: above 1.2, not above 1.5
    assert (doubt.passed, doubt.inconclusive) == (False, True)
    assert doubt.message == "inconclusive: 0.13 > 1.2 x stable 0.1 = 0.12 (inconclusive.maxRelativeToStable)"
    failed = evaluate(metric(), 0.16, 0.1)  # 1.6x: fails, whatever the inconclusive range says
    assert (failed.passed, failed.inconclusive) == (False, None)


def test_no_data_is_inconclusive_only_when_asked() -> None:
    assert evaluate(metric(), None, 0.1).inconclusive
    assert evaluate(metric(), 0.1, None).inconclusive  # the stable's value is missing for a relative bound
    plain = Metric.model_validate({"name": "ttft", "builtin": "TimeToFirstTokenP95", "max": 0.5})
    assert evaluate(plain, None, 0.1).inconclusive is None
    assert evaluate(metric(inconclusive={"max": 0.4}), None, 0.1).inconclusive is None


def test_absolute_inconclusive_bounds() -> None:
    m = Metric.model_validate({"name": "err", "builtin": "ErrorRate", "max": 0.05, "inconclusive": {"max": 0.01}})
    assert evaluate(m, 0.005, None).passed
    assert evaluate(m, 0.02, None).inconclusive
    assert not evaluate(m, 0.06, None).inconclusive


def doubtful(request: AnalysisRequest) -> list[MetricResult]:
    return [evaluate(m, 0.13, 0.1) for m in request.metrics]


def test_an_inconclusive_check_pauses_the_rollout_and_a_resume_request_checks_again() -> None:
    s = spec(analysis={"interval": "1m", "threshold": 1, "stepWeights": [10, 50], "metrics": [TTFT]})
    plan = reconcile(s, None, T0)
    paused = reconcile(s, plan.status, at(1), results=doubtful)
    assert paused.status["phase"] == "Paused"
    assert paused.status["pausedByRequest"] is True
    assert paused.status.get("failedChecks", 0) == 0 and paused.status.get("iterations", 0) == 0  # neither way
    assert paused.status["canaryWeight"] == 10 and vm_weights(paused) == {"llama-v1": 90, "llama-v2": 10}
    assert (paused.verdict.state, paused.verdict.reason) == ("Ready", "Inconclusive")
    assert "check of v2 inconclusive: ttft=0.13" in paused.verdict.message
    assert "Inconclusive" in reasons(paused)
    analysis = next(d for d in paused.details if d.type == "AnalysisPassed")
    assert analysis.reason == "Inconclusive"

    still = reconcile(s, paused.status, at(5), results=doubtful)
    assert still.status["phase"] == "Paused" and still.events == []
    assert still.verdict.reason == "Inconclusive"  # it still says which check

    resume = {**still.status, "requests": {"resume": "2026-01-01T00:06:00Z"}}
    resumed = reconcile(s, resume, at(6))  # the interval since the inconclusive check has passed: checked again
    assert resumed.status["phase"] == "Progressing"
    assert "Resumed" in reasons(resumed)
    assert resumed.status["canaryWeight"] == 50 and "StepAdvanced" in reasons(resumed)


def test_a_failed_check_beside_an_inconclusive_one_counts_toward_rollback() -> None:
    metrics = [TTFT, {"name": "errors", "builtin": "ErrorRate", "max": 0.01}]
    s = spec(analysis={"interval": "1m", "threshold": 1, "stepWeights": [10, 50], "metrics": metrics})

    def mixed(request: AnalysisRequest) -> list[MetricResult]:
        return [evaluate(m, 0.13, 0.1) if m.name == "ttft" else evaluate(m, 0.5, 0.0) for m in request.metrics]

    plan = reconcile(s, None, T0)
    failed = reconcile(s, plan.status, at(1), results=mixed)
    assert failed.status["phase"] == "Failed"
    assert "RolledBack" in reasons(failed)
