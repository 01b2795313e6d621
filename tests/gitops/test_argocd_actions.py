"""Argo CD resource actions of a TrafficConfig (promote, abort, retry, pause, resume), run by a real Lua as Argo CD
runs them: discovery.lua with the live object says which apply; each action.lua returns the object with a request in
its status. The requests the scripts write are then fed to the operator's own state machine, which acts on them.
The action.lua files and argocd-cm.yaml's data are generated (tools/model_traffic_dev/argocd.py, `make docs`) from one
template and the hand-written scripts; a test checks they are what the generator writes."""

from __future__ import annotations

import datetime
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from model_traffic.kinds.trafficconfig.spec import REQUEST_ACTIONS, TrafficConfigStatus
from model_traffic_dev import argocd
from tests.gitops.test_argocd_health import ARGOCD, INTERPRETERS, lua_literal
from tests.support import prerequisites
from tests.unit.test_render_trafficconfig import T0, at, reasons, reconcile, spec

ACTIONS = ARGOCD / "actions"
ACTIONS_KEY = "resource.customizations.actions.modeltraffic.io_TrafficConfig"

# A JSON encoder in Lua, so the harness prints what the script returned. An empty table is an empty array, as the
# library Argo CD uses decodes it; Argo CD then turns it back into a map where the object had one (clean_returned).
HARNESS = """\
local loader = loadstring or load
local function encode(v)
  local t = type(v)
  if t == "nil" then return "null" end
  if t == "boolean" or t == "number" then return tostring(v) end
  if t == "string" then return string.format("%q", v) end
  if #v > 0 or next(v) == nil then
    local parts = {}
    for _, item in ipairs(v) do parts[#parts + 1] = encode(item) end
    return "[" .. table.concat(parts, ",") .. "]"
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do parts[#parts + 1] = string.format("%q", k) .. ":" .. encode(v[k]) end
  return "{" .. table.concat(parts, ",") .. "}"
end
local handle = assert(io.open(SCRIPT_PATH, "r"))
local source = handle:read("*a")
handle:close()
obj = OBJECT
local result = assert(loader(source, "=" .. SCRIPT_PATH))()
io.write(encode(result), "\\n")
"""


def clean_returned(new: Any, old: Any) -> Any:
    """Argo CD's cleanReturnedObj (util/lua/lua.go): Lua cannot tell an empty map from an empty array, so an empty
    array the script returns where the object had a map is a map again."""
    if isinstance(new, dict) and isinstance(old, dict):
        return {k: clean_returned(v, old.get(k)) for k, v in new.items()}
    if new == [] and isinstance(old, dict):
        return {}
    return new


def run(interpreter: str, script: Path, obj: dict[str, Any]) -> Any:
    program = f"SCRIPT_PATH = {lua_literal(str(script))}\nOBJECT = {lua_literal(obj)}\n" + HARNESS
    result = subprocess.run([interpreter, "-"], input=program.encode(), capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr.decode()
    return clean_returned(json.loads(result.stdout), obj)


@pytest.fixture(scope="module", params=INTERPRETERS)
def lua(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    prerequisites.tool(name)
    return name


def traffic_config(status: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "modeltraffic.io/v1alpha1", "kind": "TrafficConfig",
            "metadata": {"name": "llama", "namespace": "llm", "generation": 1},
            "spec": {"stable": {"version": "v1"}, "canary": {"version": "v2"}}, "status": status}


ROLLING = {"phase": "Progressing", "stableVersion": "v1", "candidateVersion": "v2", "canaryWeight": 10}


@pytest.mark.parametrize(("status", "enabled"), [
    ({}, {"pause"}),
    ({"phase": "Succeeded", "stableVersion": "v1"}, {"pause"}),
    (ROLLING, {"promote", "abort", "pause"}),
    ({**ROLLING, "phase": "WaitingPromotion"}, {"promote", "abort", "pause"}),
    ({**ROLLING, "phase": "Paused", "pausedByRequest": True}, {"promote", "abort", "resume"}),
    ({**ROLLING, "phase": "Failed", "canaryWeight": 0}, {"retry", "pause"}),
    # a request not acted on yet is not offered again; once handled, it is
    ({**ROLLING, "requests": {"abort": "t1"}}, {"promote", "pause"}),
    ({**ROLLING, "requests": {"abort": "t1"}, "handledRequests": {"abort": "t1"}}, {"promote", "abort", "pause"}),
], ids=["new", "succeeded", "progressing", "waiting", "paused", "failed", "abort-pending", "abort-handled"])
def test_discovery_offers_the_actions_that_apply(lua: str, status: dict[str, Any], enabled: set[str]) -> None:
    actions = run(lua, ACTIONS / "discovery.lua", traffic_config(status))
    assert set(actions) == set(REQUEST_ACTIONS)
    assert {name for name, action in actions.items() if not action["disabled"]} == enabled


@pytest.mark.parametrize("action", REQUEST_ACTIONS)
def test_each_action_writes_only_its_request_in_the_status(lua: str, action: str) -> None:
    before = traffic_config({**ROLLING, "requests": {"pause": "2020-01-01T00:00:00Z"}})
    after = run(lua, ACTIONS / action / "action.lua", before)
    token = after["status"]["requests"][action]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", token)
    when = datetime.datetime.fromisoformat(token.replace("Z", "+00:00"))
    assert abs((datetime.datetime.now(datetime.UTC) - when).total_seconds()) < 60  # UTC, now
    expected = json.loads(json.dumps(before))
    expected["status"]["requests"][action] = token
    assert after == expected  # the spec (Git's) and the rest of the status are as they were
    TrafficConfigStatus.model_validate({k: v for k, v in after["status"].items()})  # the CRD's schema takes it
    # An object without a status yet gets one.
    assert set(run(lua, ACTIONS / action / "action.lua", traffic_config({}))["status"]["requests"]) == {action}


def test_the_operator_acts_on_what_the_abort_and_retry_scripts_write(lua: str) -> None:
    s = spec()
    rolling = reconcile(s, None, T0)
    aborted_obj = run(lua, ACTIONS / "abort" / "action.lua", traffic_config(rolling.status))
    aborted = reconcile(s, aborted_obj["status"], at(1))
    assert aborted.status["phase"] == "Failed" and "Aborted" in reasons(aborted)
    offered = run(lua, ACTIONS / "discovery.lua", traffic_config(aborted.status))
    assert not offered["retry"]["disabled"] and offered["abort"]["disabled"]
    retried_obj = run(lua, ACTIONS / "retry" / "action.lua", traffic_config(aborted.status))
    retried = reconcile(s, retried_obj["status"], at(2))
    assert "Retried" in reasons(retried) and retried.status["phase"] == "Progressing"


def test_the_argocd_cm_snippet_embeds_the_action_scripts() -> None:
    snippet = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())
    actions = yaml.safe_load(snippet["data"][ACTIONS_KEY])
    assert actions["discovery.lua"] == (ACTIONS / "discovery.lua").read_text()
    assert [d["name"] for d in actions["definitions"]] == list(REQUEST_ACTIONS)
    for definition in actions["definitions"]:
        assert definition["action.lua"] == (ACTIONS / definition["name"] / "action.lua").read_text(), \
            f"{definition['name']}: argocd-cm.yaml is stale, run make docs"
    assert sorted(p.parent.name for p in ACTIONS.glob("*/action.lua")) == sorted(REQUEST_ACTIONS)


def test_the_action_scripts_and_the_snippet_are_what_the_generator_writes() -> None:
    """One template for every action.lua, argocd-cm.yaml's data from the scripts: none is edited by hand."""
    generated = argocd.outputs()
    assert set(generated) == {ACTIONS / a / "action.lua" for a in REQUEST_ACTIONS} | {ARGOCD / "argocd-cm.yaml"}
    stale = [str(path.relative_to(ARGOCD)) for path, text in generated.items() if path.read_text() != text]
    assert not stale, f"edited by hand or stale (run make docs; edit tools/model_traffic_dev/argocd.py): {stale}"


@pytest.mark.parametrize("action", REQUEST_ACTIONS)
def test_each_action_script_says_what_its_request_does_in_the_specs_words(action: str) -> None:
    script = (ACTIONS / action / "action.lua").read_text()
    comment = " ".join(line.removeprefix("--").strip() for line in script.splitlines() if line.startswith("--"))
    assert argocd.action_description(action) in comment
    assert f"status.requests.{action} = " in script and not [
        other for other in REQUEST_ACTIONS if other != action and f"status.requests.{other} =" in script]
