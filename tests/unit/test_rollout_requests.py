"""Actions asked through the status (status.requests): promote, abort, retry, pause, resume. Each is acted on once
(recorded in status.handledRequests with its effect), through the moves of the one transition table, and the spec
(Git's) is never what changes."""

from __future__ import annotations

from typing import Any

from model_traffic.kinds.trafficconfig.render import TRANSITIONS, RolloutPlan, step
from tests.unit.test_render_trafficconfig import (
    T0,
    applied,
    at,
    failing_ttft,
    reasons,
    reconcile,
    spec,
    vm_weights,
    world,
)


def asked(status: dict[str, Any], action: str, token: str) -> dict[str, Any]:
    """The status after ``model-traffic ACTION``: a merge patch of status.requests only."""
    return {**status, "requests": {**(status.get("requests") or {}), action: token}}


def moved(plan: RolloutPlan) -> RolloutPlan:
    phase = plan.status.get("phase")
    assert phase == plan.previous_phase or phase in TRANSITIONS[plan.previous_phase], (plan.previous_phase, phase)
    return plan


def test_promote_skips_the_remaining_steps_and_is_acted_on_once() -> None:
    s = spec()
    first = reconcile(s, None, T0)
    assert first.status["canaryWeight"] == 10
    promoted = moved(reconcile(s, asked(first.status, "promote", "2025-01-01T12:01:00Z"), at(1)))
    assert promoted.status["stableVersion"] == "v2"
    assert promoted.status["handledRequests"] == {"promote": "2025-01-01T12:01:00Z"}
    assert promoted.status["requests"] == {"promote": "2025-01-01T12:01:00Z"}  # people's field goes through
    assert vm_weights(promoted) == {"llama-v2": 100}
    assert "Promoted" in reasons(promoted)
    # The same status again (a crash after the write, a resync): nothing more happens.
    again = step(s, promoted.status, applied(s, promoted.status, live={"v2": 100}), at(2))
    assert "Promoted" not in reasons(again) and "RequestRefused" not in reasons(again)
    assert again.status["stableVersion"] == "v2"


def test_a_request_not_yet_recorded_is_acted_on_after_a_crash() -> None:
    """The handled token is written with the progress in one guarded write: before it, the request is pending."""
    s = spec()
    first = reconcile(s, None, T0)
    status = asked(first.status, "abort", "t1")
    one = step(s, status, applied(s, status), at(1))
    replay = step(s, status, applied(s, status), at(1))  # the write was lost: the same input, the same plan
    assert one.status == replay.status
    assert one.status["phase"] == "Failed" and one.status["handledRequests"] == {"abort": "t1"}


def test_abort_rolls_back_and_retry_starts_again_without_a_spec_change() -> None:
    s = spec()
    first = reconcile(s, None, T0)
    aborted = moved(reconcile(s, asked(first.status, "abort", "2025-01-01T12:01:00Z"), at(1),
                              live={"v1": 90, "v2": 10}))
    assert aborted.status["phase"] == "Failed"
    assert aborted.verdict.state == "Stalled"
    assert vm_weights(aborted) == {"llama-v1": 100}
    assert "Aborted" in reasons(aborted)
    assert "aborted by request" in aborted.verdict.message
    stays = reconcile(s, aborted.status, at(5))
    assert stays.status["phase"] == "Failed"  # a sync of the unchanged spec does not restart it

    retried = moved(reconcile(s, asked(aborted.status, "retry", "2025-01-01T12:06:00Z"), at(6)))
    assert "Retried" in reasons(retried)
    assert retried.status["phase"] == "Progressing"
    assert retried.status["canaryWeight"] == 10 and retried.status["failedChecks"] == 0
    assert retried.status["handledRequests"] == {"abort": "2025-01-01T12:01:00Z", "retry": "2025-01-01T12:06:00Z"}


def test_retry_after_failed_checks() -> None:
    s = spec()
    plan = reconcile(s, None, T0)
    for minute in (1, 2):
        plan = reconcile(s, plan.status, at(minute), results=failing_ttft)
    assert plan.status["phase"] == "Failed"
    retried = moved(reconcile(s, asked(plan.status, "retry", "r1"), at(3)))
    assert retried.status["phase"] == "Progressing" and retried.status["candidateVersion"] == "v2"


def test_pause_and_resume_requests_hold_the_rollout_where_it_is() -> None:
    s = spec()
    first = reconcile(s, None, T0)
    paused = moved(reconcile(s, asked(first.status, "pause", "2025-01-01T12:01:00Z"), at(1)))
    assert paused.status["phase"] == "Paused" and paused.status["pausedByRequest"] is True
    assert paused.requeue_after is None
    held = reconcile(s, paused.status, at(9))
    assert held.status["phase"] == "Paused" and held.status["canaryWeight"] == 10 and held.analysis is None
    resumed = moved(reconcile(s, asked(held.status, "resume", "2025-01-01T12:10:00Z"), at(10)))
    assert "Resumed" in reasons(resumed)
    assert resumed.status["canaryWeight"] == 50
    assert "pausedByRequest" not in resumed.status


def test_resume_does_not_override_spec_paused() -> None:
    s = spec(paused=True)
    first = reconcile(s, None, T0)
    assert first.status["phase"] == "Paused"
    still = reconcile(s, asked(first.status, "resume", "t"), at(1))
    assert still.status["phase"] == "Paused"
    assert "ResumeRefused" in reasons(still)


def test_requests_are_acted_on_in_the_order_they_were_made() -> None:
    s = spec()
    first = reconcile(s, None, T0)
    status = {**first.status, "requests": {"resume": "2025-01-01T12:02:00Z", "pause": "2025-01-01T12:01:00Z"}}
    plan = reconcile(s, status, at(3))
    assert plan.status["phase"] == "Progressing"  # paused, then resumed
    status = {**first.status, "requests": {"resume": "2025-01-01T12:01:00Z", "pause": "2025-01-01T12:02:00Z"}}
    assert reconcile(s, status, at(3)).status["phase"] == "Paused"


def test_requests_that_do_not_apply_are_refused_with_a_reason_once() -> None:
    s = spec(canary=None)
    first = reconcile(s, None, T0)
    plan = reconcile(s, asked(first.status, "promote", "p"), at(1))
    assert "RequestRefused" in reasons(plan)
    assert "no rollout is in progress" in plan.events[0].message
    assert plan.status["handledRequests"] == {"promote": "p"}
    assert "RequestRefused" not in reasons(reconcile(s, plan.status, at(2)))


def test_promote_waits_for_nothing_it_refuses_a_candidate_not_ready() -> None:
    s = spec()
    first = reconcile(s, None, T0)
    status = asked(first.status, "promote", "p")
    plan = step(s, status, world(ready=("v1",)), at(1))
    assert plan.status["stableVersion"] == "v1"
    assert [e.reason for e in plan.events] == ["RequestRefused"]
    assert "not Ready" in plan.events[0].message


def test_weighted_takes_no_rollout_requests() -> None:
    s = spec(strategy="Weighted", canary=None, analysis=None,
             variants=[{"version": "v1", "weight": 70}, {"version": "v2", "weight": 30}])
    first = reconcile(s, None, T0)
    plan = reconcile(s, asked(first.status, "abort", "a"), at(1))
    assert "RequestRefused" in reasons(plan)
    assert vm_weights(plan) == {"llama-v1": 70, "llama-v2": 30}


def test_a_pending_request_wakes_the_reconciler_though_no_generation_changed() -> None:
    """A request is a status-only change: without this, the watch takes it for our own status write coming back."""
    from model_traffic.app import has_pending_request, is_status_echo

    def body(status: dict[str, Any]) -> Any:
        return {"metadata": {"generation": 2}, "status": {"observedGeneration": 2, **status}}

    asked_ = body({"requests": {"pause": "t1"}})
    assert is_status_echo("MODIFIED", asked_) and has_pending_request(asked_)
    assert not has_pending_request(body({"requests": {"pause": "t1"}, "handledRequests": {"pause": "t1"}}))
    assert has_pending_request(body({"requests": {"pause": "t2"}, "handledRequests": {"pause": "t1"}}))
    assert not has_pending_request(body({}))
