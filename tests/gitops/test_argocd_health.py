"""Argo CD reads our kinds right: the chart's health script, run by a real Lua, on objects in every state.

Argo CD's Lua is gopher-lua (Lua 5.1); the script is run with Debian's ``lua5.1`` (the same language)
and ``lua5.4`` (catches reliance on anything version-specific), each that is installed. As in Argo CD,
the object is the global ``obj`` and the script's chunk returns ``hs``. The objects carry the status the
operator's own code writes (see :mod:`tests.gitops.states`).
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.gitops import states
from tests.support import prerequisites

ROOT = Path(__file__).resolve().parents[2]
ARGOCD = ROOT / "charts" / "model-traffic-operator" / "files" / "argocd"
SCRIPT = ARGOCD / "health.lua"
INTERPRETERS = ("lua5.1", "lua5.4")
HEALTH_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
CASES = states.all_cases()


def lua_literal(value: Any) -> str:
    """A JSON value as a Lua expression, as Argo CD hands objects to Lua (null: nil, arrays 1-based)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(value)
        return repr(value)
    if isinstance(value, str):
        out = []
        for byte in value.encode():
            char = chr(byte)
            out.append(char if 32 <= byte < 127 and char not in '"\\' else f"\\{byte:03d}")
        return '"' + "".join(out) + '"'
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{lua_literal(str(k))}] = {lua_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


HARNESS = """\
local loader = loadstring or load
local handle = assert(io.open(SCRIPT_PATH, "r"))
local source = handle:read("*a")
handle:close()
for _, object in ipairs(OBJECTS) do
  obj = object
  local chunk = assert(loader(source, "=health.lua"))
  local ok, hs = pcall(chunk)
  if not ok then
    io.write("ERROR\\t", #tostring(hs), "\\t", tostring(hs), "\\n")
  elseif type(hs) ~= "table" then
    io.write("ERROR\\t", 22, "\\t", "script returned no hs\\n")
  else
    local message = hs.message
    if type(message) ~= "string" then message = "" end
    io.write(tostring(hs.status), "\\t", #message, "\\t", message, "\\n")
  end
end
"""


def run_health(interpreter: str, objects: list[dict[str, Any]], script: Path = SCRIPT) -> list[tuple[str, str]]:
    program = (f"SCRIPT_PATH = {lua_literal(str(script))}\n"
               f"OBJECTS = {{{', '.join(lua_literal(o) for o in objects)}}}\n" + HARNESS)
    result = subprocess.run([interpreter, "-"], input=program.encode(), capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr.decode()
    out, data = [], result.stdout
    while data:
        status, rest = data.split(b"\t", 1)
        length, rest = rest.split(b"\t", 1)
        message, data = rest[:int(length)], rest[int(length) + 1:]
        out.append((status.decode(), message.decode()))
    assert len(out) == len(objects)
    return out


@pytest.fixture(scope="module", params=INTERPRETERS)
def lua(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    prerequisites.tool(name)
    return name


@pytest.fixture(scope="module")
def health(lua: str) -> dict[str, tuple[str, str]]:
    return dict(zip([c.id for c in CASES], run_health(lua, [c.obj for c in CASES]), strict=True))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_argocd_health_of_the_state(case: states.Case, health: dict[str, tuple[str, str]]) -> None:
    status, message = health[case.id]
    assert status in HEALTH_STATUSES, f"{case.id}: the script failed or returned {status}: {message}"
    assert status == case.health, f"{case.id}: {status} ({message})"
    assert case.message in message, f"{case.id}: message {message!r} does not say {case.message!r}"
    assert message, f"{case.id}: Argo CD shows the message; it must never be empty"


def test_every_health_status_is_reached(health: dict[str, tuple[str, str]]) -> None:
    assert {status for status, _ in health.values()} == {"Healthy", "Progressing", "Degraded", "Suspended"}


def test_ready_unknown_and_missing_conditions_are_progressing(lua: str) -> None:
    """Not written by this operator (its conditions are True/False), but possible from a hand edit or an
    older version: Argo CD must not call such an object Healthy."""
    case = next(c for c in CASES if c.id == "VirtualModel-Ready")
    unknown = states.merge_patch(case.obj, {"status": {"conditions": [
        {"type": "Ready", "status": "Unknown", "reason": "Checking", "message": "checking backends"}]}})
    bare = states.merge_patch(case.obj, {"status": {"conditions": []}})
    (status_unknown, message_unknown), (status_bare, message_bare) = run_health(lua, [unknown, bare])
    assert (status_unknown, message_unknown) == ("Progressing", "checking backends")
    assert (status_bare, message_bare) == ("Progressing", "Waiting for the Ready condition")


def test_a_failed_rollout_says_why(health: dict[str, tuple[str, str]]) -> None:
    """The Stalled message (the operator's account of the rollback) when written; until then, from the
    recorded progress, which versions are involved."""
    failed = next(c for c in CASES if c.id == "TrafficConfig-Failed")
    stalled = next(c for c in failed.obj["status"]["conditions"] if c["type"] == "Stalled")
    assert health[failed.id] == ("Degraded", stalled["message"])
    assert health["TrafficConfig-Failed-progress-recorded-conditions-not-yet"] == (
        "Degraded", "Rollout of v2 failed and was rolled back; all traffic to v1")


def test_the_harness_runs_the_script_it_is_given(lua: str, tmp_path: Path) -> None:
    """The harness is not a constant: a script that always says Degraded is reported so."""
    other = tmp_path / "degraded.lua"
    other.write_text('hs = {}\nhs.status = "Degraded"\nhs.message = obj.metadata.name\nreturn hs\n')
    assert run_health(lua, [CASES[0].obj], other) == [("Degraded", "demo")]


def test_the_argocd_cm_snippet_embeds_the_script_for_each_kind() -> None:
    snippet = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())
    assert (snippet["apiVersion"], snippet["kind"]) == ("v1", "ConfigMap")
    assert snippet["metadata"]["name"] == "argocd-cm"
    script = SCRIPT.read_text()
    keys = {f"resource.customizations.health.modeltraffic.io_{kind}" for kind in states.KINDS}
    assert {key for key in snippet["data"] if ".health." in key} == keys  # (the actions: test_argocd_actions.py)
    for key in keys:
        assert snippet["data"][key] == script, f"{key} is not files/argocd/health.lua: paste it in, indented by 4"
    # Every kind the operator reports a status on has its key (the CRDs are the list of kinds). The metric templates
    # have no status: Argo CD assesses no health for them, as for a ConfigMap, which is right for a definition.
    crds = [yaml.safe_load(p.read_text()) for p in (ROOT / "crds").glob("*.yaml")]
    with_status = {crd["spec"]["names"]["kind"] for crd in crds
                   if any("status" in (v.get("subresources") or {}) for v in crd["spec"]["versions"])}
    assert with_status == set(states.KINDS)
    assert {crd["spec"]["names"]["kind"] for crd in crds} - with_status == {"MetricTemplate", "ClusterMetricTemplate"}
