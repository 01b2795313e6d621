"""`model-traffic get`: the one-screen view of a rollout, rendered from a status the state machine wrote."""

from __future__ import annotations

import datetime
from typing import Any

from model_traffic import cli
from model_traffic.commands import rolloutview
from tests.unit.test_render_trafficconfig import T0, at, reconcile, spec

NOW = at(2)


def obj_of(spec_: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "llama", "namespace": "llm"}, "spec": spec_, "status": status}


def event(reason: str, message: str, seconds_ago: int, type_: str = "Normal") -> dict[str, Any]:
    when = (NOW - datetime.timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"reason": reason, "message": message, "type": type_, "eventTime": when}


def test_a_canary_in_progress_shows_step_weights_analysis_requests_and_events() -> None:
    s = spec()
    plan = reconcile(s, None, T0)
    status = {**plan.status, "requests": {"pause": "2025-01-01T12:01:30Z"},
              "conditions": [{"type": "Ready", "status": "False", "reason": "Progressing",
                              "message": "v2 at weight 10, next check in 30s"}],
              "lastResults": [{"name": "ttft", "value": 0.21, "stableValue": 0.2, "passed": True},
                              {"name": "errors", "value": 0.3, "passed": False, "message": "above 0.1"}]}
    view = rolloutview.render(obj_of(s.wire(), status), [event("StepAdvanced", "v2 at weight 10", 5),
                                                         event("RolloutStarted", "Canary rollout of v2", 90)], NOW)
    lines = view.splitlines()
    assert "Strategy:    Canary" in lines
    assert "Phase:       Progressing  (Progressing: v2 at weight 10, next check in 30s)" in lines
    assert "Step:        1/2  (weight 10)" in lines
    assert "Stable:      v1" in lines and "Candidate:   v2" in lines
    assert "Requests:    pause (pending since 30s)" in lines
    [v1] = [line for line in lines if line.startswith("v1 ")]
    [v2] = [line for line in lines if line.startswith("v2 ")]
    assert v1.split() == ["v1", "stable", "90%", "✔", "llama-v1"]
    assert v2.split() == ["v2", "candidate", "10%", "✔", "llama-v2"]
    assert "  ✔ ttft 0.21 (stable 0.2)" in lines
    assert "  ✖ errors 0.3  above 0.1" in lines
    events = lines[lines.index("Events:") + 1:]
    assert [e.split()[:3] for e in events] == [["1m", "Normal", "RolloutStarted"], ["5s", "Normal", "StepAdvanced"]]


def test_a_handled_request_is_not_pending_and_a_finished_rollout_has_no_step() -> None:
    s = spec(canary=None)
    plan = reconcile(s, None, T0)
    status = {**plan.status, "requests": {"abort": "t"}, "handledRequests": {"abort": "t"}}
    view = rolloutview.render(obj_of(s.wire(), status), [], NOW)
    assert "Requests:    none pending" in view
    assert "Step:" not in view and "Candidate:   -" in view
    assert "Analysis:    none yet" in view and "Events:      none" in view


def test_paused_by_request_and_a_new_object_without_status() -> None:
    s = spec()
    plan = reconcile(s, None, T0)
    view = rolloutview.render(obj_of(s.wire(), {**plan.status, "pausedByRequest": True}), [], NOW)
    assert "Paused:      by request" in view
    bare = rolloutview.render(obj_of(s.wire(), {}), [], NOW)
    assert "Phase:       -" in bare and "Stable:      -" in bare


def test_the_cli_has_get_with_watch() -> None:
    import pytest

    with pytest.raises(SystemExit) as exit_:
        cli.main(["get", "--help"])
    assert exit_.value.code == 0


def test_a_failed_release_shows_what_git_asks_for_beside_what_runs() -> None:
    s = spec(release={"version": "v2"}, stable=None, canary=None)
    status = {"phase": "Failed", "stableVersion": "v1", "candidateVersion": "v2", "stable": {"version": "v1"}}
    lines = rolloutview.render(obj_of(s.wire(), status), [], NOW).splitlines()
    assert "Release:     v2  (spec.release)" in lines and "Stable:      v1" in lines
