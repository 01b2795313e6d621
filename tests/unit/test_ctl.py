"""The one-line rollout commands: each is the spec edit a person (or a Git commit) would make."""

from __future__ import annotations

from typing import Any

import pytest

from model_traffic import ctl
from model_traffic.api.trafficconfig import TrafficConfigSpec

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


def test_abort_pause_resume() -> None:
    assert merged(CANARY, ctl.abort(CANARY)[0]).get("canary") is None
    with pytest.raises(ctl.EditError, match="no rollout to abort"):
        ctl.abort(WEIGHTED)
    assert ctl.pause(CANARY, True)[0] == {"paused": True}
    assert ctl.pause(CANARY, False)[0] == {"paused": False}


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
