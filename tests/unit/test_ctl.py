"""The one-line rollout commands: requests in the status (promote, abort, retry, pause, resume) and the spec
edits a person (or a Git commit) would make (set-weight, set-weights, promote --version of a Weighted variant)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from model_traffic.commands import ctl
from model_traffic.kinds.trafficconfig.spec import TrafficConfigSpec, TrafficConfigStatus

CANARY: dict[str, Any] = {
    "inferenceService": {"template": {"predictor": {}}},
    "stable": {"version": "v1", "storageUri": "hf://m@1"},
    "canary": {"version": "v2", "storageUri": "hf://m@2", "weight": 10},
}
WEIGHTED: dict[str, Any] = {
    "inferenceService": {"template": {"predictor": {}}},
    "strategy": "Weighted",
    "stable": {"version": "v1"},
    "variants": [{"version": "v1", "weight": 70}, {"version": "v2", "weight": 30}],
}


def merged(spec: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """The spec after the JSON merge patch, validated like the API server would."""
    out = {**spec, **change}
    out = {k: v for k, v in out.items() if v is not None}
    TrafficConfigSpec.model_validate(out)
    return out


def test_promote_moves_the_stable_pointer_and_ends_the_rollout() -> None:
    change, summary = ctl.promote(CANARY)
    after = merged(CANARY, change)
    assert after["stable"] == {"version": "v2", "storageUri": "hf://m@2"}  # the weight stays behind
    assert "canary" not in after
    assert "v2" in summary


def test_promote_refuses_another_version_and_a_missing_candidate() -> None:
    with pytest.raises(ctl.EditError, match="the candidate is v2, not v3"):
        ctl.promote(CANARY, "v3")
    with pytest.raises(ctl.EditError, match="no candidate"):
        ctl.promote({**CANARY, "canary": None})


def test_promote_a_variant_retires_the_others() -> None:
    change, _ = ctl.promote(WEIGHTED, "v2")
    after = merged(WEIGHTED, change)
    assert after["stable"] == {"version": "v2"}
    assert after["variants"] == [{"version": "v2", "weight": 100}]
    with pytest.raises(ctl.EditError, match="say which variant"):
        ctl.promote(WEIGHTED)
    with pytest.raises(ctl.EditError, match="no variant v9"):
        ctl.promote(WEIGHTED, "v9")


def test_a_request_is_one_key_of_status_requests_with_a_time_token() -> None:
    token = ctl.request_token(datetime.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=datetime.UTC))
    assert token == "2026-01-02T03:04:05.000006Z"
    assert ctl.request("abort", token) == {"requests": {"abort": token}}
    later = ctl.request_token(datetime.datetime(2026, 1, 2, 3, 4, 5, 7, tzinfo=datetime.UTC))
    assert later > token  # tokens order as the requests were made (the operator acts on them in that order)
    with pytest.raises(ctl.EditError, match="unknown action"):
        ctl.request("set-weight", token)
    for action in ctl.REQUESTS:  # every action the CLI asks for is a field of the status schema
        TrafficConfigStatus.model_validate({"requests": ctl.request(action, token)["requests"]})


def test_set_weight_holds_the_canary() -> None:
    change, _ = ctl.set_weight(CANARY, 40)
    assert merged(CANARY, change)["canary"]["weight"] == 40
    with pytest.raises(ctl.EditError, match="between 1 and 100"):
        ctl.set_weight(CANARY, 0)
    with pytest.raises(ctl.EditError, match="use set-weights"):
        ctl.set_weight(WEIGHTED, 10)


def test_set_weights_rewrites_all_variants_at_once() -> None:
    change, summary = ctl.set_weights(WEIGHTED, ctl.parse_weights(["v1=20", "v2=80"]))
    assert merged(WEIGHTED, change)["variants"] == [{"version": "v1", "weight": 20}, {"version": "v2", "weight": 80}]
    assert summary == "v1=20, v2=80"
    with pytest.raises(ctl.EditError, match="sum to 100, they would sum to 110"):
        ctl.set_weights(WEIGHTED, {"v1": 80})
    with pytest.raises(ctl.EditError, match="no variant v3"):
        ctl.set_weights(WEIGHTED, {"v3": 10})
    with pytest.raises(ctl.EditError, match="VERSION=WEIGHT"):
        ctl.parse_weights(["v1:20"])


def test_with_a_release_set_weight_holds_the_release_and_a_variant_promotion_names_it() -> None:
    """spec.release (issue #14): the held weight is the release's; the promoted variant becomes the release."""
    released = {k: v for k, v in CANARY.items() if k not in ("stable", "canary")} | {
        "release": {"version": "v2", "storageUri": "hf://m@2"}}
    change, summary = ctl.set_weight(released, 40)
    assert merged(released, change)["release"] == {"version": "v2", "storageUri": "hf://m@2", "weight": 40}
    assert summary == "spec.release.weight=40"
    weighted = {k: v for k, v in WEIGHTED.items() if k != "stable"} | {"release": {"version": "v1"}}
    change, _ = ctl.promote(weighted, "v2")
    after = merged(weighted, change)
    assert after["release"] == {"version": "v2"} and "stable" not in after
