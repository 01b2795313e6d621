"""docs/ stays true to the code: generated parts are fresh, and what the code can write is documented.

- ``docs/api.md`` and the generated block of ``docs/progressive-delivery.md`` are what
  ``python -m model_traffic_dev.docgen`` writes from ``crds/`` and ``model_traffic.kinds.trafficconfig.analysis``.
- Every condition type and reason and every Event reason the operator can write appears in
  ``docs/conditions.md``: they are read off the source with :mod:`ast` (the literals passed as the reason
  of ``Verdict(...)``, ``Detail(...)``, ``dataclasses.replace(verdict, reason=...)``, ``events.emit(...)``
  and the rollout's ``self.event(...)``), following a reason held in a local variable to the literals
  assigned to it. A reason computed some other way fails here until this file says what values it takes.
- Every metric of ``model_traffic/metrics.py`` is in ``docs/metrics.md``, on a line naming all its labels.
- The chart values ``docs/install.md`` documents exist in the chart's ``values.yaml``.
- Relative links between the docs point at files that exist.
"""

from __future__ import annotations

import ast
import re
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from model_traffic.kinds.trafficconfig.render import Phase
from model_traffic_dev import docgen

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PACKAGE = ROOT / "operator" / "model_traffic"
VALUES = ROOT / "charts" / "model-traffic-operator" / "values.yaml"

# Where the reason (and, for Detail, the condition type) sits among a call's positional arguments.
CONDITION_REASON_ARG = {"Verdict": 1, "Detail": 2}
CONDITION_TYPE_ARG = {"Detail": 0}
# events.emit(kube, body, type, reason, message); the rollout's <rollout>.event(type, reason, message) and
# RolloutEvent(type, reason, message). (kopf.on.event is a decorator, not an Event.)
EVENT_REASON_ARG = {"emit": 3, "event": 1, "RolloutEvent": 1}
NOT_EVENTS = {"kopf.on.event"}
# The three conditions every kind has, written by conditions.build from the verdict.
SUMMARY_CONDITIONS = ("Ready", "Reconciling", "Stalled")

# Reasons that are not literals where they are passed: (file, expression) -> the values they take.
# An empty tuple means the values are collected where they originate (another call found here).
DYNAMIC_REASONS: dict[tuple[str, str], tuple[str, ...]] = {
    # A TrafficConfig that is progressing reports its phase as the reason.
    ("kinds/trafficconfig/render.py", "str(s.phase)"): typing.get_args(Phase),
    # _Rollout.event(kind, reason, message) wraps RolloutEvent: its callers pass literals.
    ("kinds/trafficconfig/render.py", "reason"): (),
    # The reconciler emits the plan's RolloutEvents: their reasons are the self.event(...) literals.
    ("kinds/trafficconfig/reconcile.py", "event.reason"): (),
    # A named constant: the reason while a controller has not reported yet (the runtime posts no Event for it).
    ("pipeline/acceptance.py", "AWAITING_CONTROLLERS"): ("AwaitingControllers",),
}


@dataclass(frozen=True)
class Found:
    what: str  # "condition type", "condition reason" or "event reason"
    value: str
    where: str


def _callee(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _argument(call: ast.Call, position: int, keyword: str) -> ast.expr | None:
    for kw in call.keywords:
        if kw.arg == keyword:
            return kw.value
    return call.args[position] if len(call.args) > position else None


class _Collector(ast.NodeVisitor):
    def __init__(self, relative: str) -> None:
        self.relative = relative
        self.found: list[Found] = []
        self.unresolved: list[str] = []
        self._scopes: list[dict[str, list[ast.expr]]] = []

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        assigned: dict[str, list[ast.expr]] = {}
        for sub in ast.walk(node):
            if isinstance(sub, ast.Assign):
                for target in sub.targets:
                    if isinstance(target, ast.Name):
                        assigned.setdefault(target.id, []).append(sub.value)
            elif isinstance(sub, ast.AnnAssign) and isinstance(sub.target, ast.Name) and sub.value is not None:
                assigned.setdefault(sub.target.id, []).append(sub.value)
        self._scopes.append(assigned)
        self.generic_visit(node)
        self._scopes.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def _values(self, expr: ast.expr, line: int, seen: frozenset[str] = frozenset()) -> list[str]:
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            return [expr.value]
        if isinstance(expr, ast.IfExp):
            return self._values(expr.body, line, seen) + self._values(expr.orelse, line, seen)
        if isinstance(expr, ast.Name) and expr.id not in seen and self._scopes and self._scopes[-1].get(expr.id):
            return [v for value in self._scopes[-1][expr.id] for v in self._values(value, line, seen | {expr.id})]
        key = (self.relative, ast.unparse(expr))
        if key in DYNAMIC_REASONS:
            return list(DYNAMIC_REASONS[key])
        self.unresolved.append(f"{self.relative}:{line}: {ast.unparse(expr)}")
        return []

    def _add(self, what: str, expr: ast.expr | None, line: int) -> None:
        if expr is None:
            return
        for value in self._values(expr, line):
            self.found.append(Found(what, value, f"{self.relative}:{line}"))

    def visit_Call(self, node: ast.Call) -> None:
        name = _callee(node)
        if name in CONDITION_REASON_ARG:
            self._add("condition reason", _argument(node, CONDITION_REASON_ARG[name], "reason"), node.lineno)
        if name in CONDITION_TYPE_ARG:
            self._add("condition type", _argument(node, CONDITION_TYPE_ARG[name], "type"), node.lineno)
        if name == "replace" and any(kw.arg == "reason" for kw in node.keywords):  # dataclasses.replace(verdict)
            self._add("condition reason", _argument(node, 99, "reason"), node.lineno)
        if name in EVENT_REASON_ARG and ast.unparse(node.func) not in NOT_EVENTS:
            self._add("event reason", _argument(node, EVENT_REASON_ARG[name], "reason"), node.lineno)
        self.generic_visit(node)


def collect() -> tuple[list[Found], list[str]]:
    found: list[Found] = []
    unresolved: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        collector = _Collector(relative)
        collector.visit(ast.parse(path.read_text(), filename=str(path)))
        found += collector.found
        unresolved += collector.unresolved
    return found, unresolved


def _documented(text: str, value: str) -> bool:
    return f"`{value}`" in text


# --- generated docs ----------------------------------------------------------------------------------------

def test_generated_docs_are_up_to_date() -> None:
    assert docgen.main(["--check"]) == 0, "docs are stale: run `python -m model_traffic_dev.docgen`"


def test_api_reference_covers_every_field_and_rule() -> None:
    text = (DOCS / "api.md").read_text()
    for crd in docgen.load_crds(ROOT / "crds"):
        schema = docgen._version(crd)["schema"]["openAPIV3Schema"]
        for section in ("spec", "status"):
            if section not in schema["properties"]:  # the metric templates have no status
                continue
            for item in docgen.walk(schema["properties"][section], section):
                if isinstance(item, docgen.Field):
                    assert f"`{item.path}`" in text, item.path
                elif item.message:
                    assert docgen._cell(item.message) in text, item.message


# --- conditions --------------------------------------------------------------------------------------------

def test_the_collector_finds_what_the_code_writes() -> None:
    """Guards the collector itself: reasons written in each of the ways it understands are found."""
    found, _ = collect()
    values = {(f.what, f.value) for f in found}
    for expected in [("condition reason", "SecretNotFound"), ("condition reason", "OwnershipConflict"),
                     ("condition reason", "InvalidSpec"), ("condition reason", "KServeNotInstalled"),
                     ("condition reason", "BackendsNotReady"), ("condition reason", "RolledBack"),
                     ("condition reason", "Initializing"), ("condition type", "ChildrenOwned"),
                     ("condition type", "AnalysisPassed"), ("event reason", "Retired"),
                     ("event reason", "StepAdvanced"), ("event reason", "Aborted")]:
        assert expected in values, expected


def test_every_reason_is_computed_in_a_way_this_test_understands() -> None:
    _, unresolved = collect()
    assert unresolved == [], (
        "reasons computed from expressions this test cannot follow; add them to DYNAMIC_REASONS in "
        f"tests/unit/test_docs.py with the values they take: {unresolved}")


def test_every_condition_and_event_reason_is_documented() -> None:
    text = (DOCS / "conditions.md").read_text()
    found, _ = collect()
    missing = sorted({f"{f.what} `{f.value}` ({f.where})" for f in found if not _documented(text, f.value)})
    assert missing == [], "add these to docs/conditions.md, with what they mean and what to do:\n" + "\n".join(
        missing)
    for ctype in SUMMARY_CONDITIONS:
        assert _documented(text, ctype), ctype


# --- metrics -----------------------------------------------------------------------------------------------

METRIC_TYPES = {"Counter", "Gauge", "Histogram", "Summary", "Info", "Enum"}


def metric_definitions() -> list[tuple[str, list[str]]]:
    """(name, labels) of each metric defined in model_traffic/metrics.py."""
    tree = ast.parse((PACKAGE / "metrics.py").read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _callee(node) in METRIC_TYPES:
            name = _argument(node, 0, "name")
            labels = _argument(node, 2, "labelnames")
            assert isinstance(name, ast.Constant) and isinstance(name.value, str), ast.unparse(node)
            label_values = [str(e.value) for e in labels.elts if isinstance(e, ast.Constant)] \
                if isinstance(labels, ast.List | ast.Tuple) else []
            out.append((name.value, label_values))
    return out


def test_every_metric_is_documented_with_its_labels() -> None:
    lines = (DOCS / "metrics.md").read_text().splitlines()
    definitions = metric_definitions()
    assert len(definitions) >= 4
    for name, labels in definitions:
        rows = [line for line in lines if line.startswith("|") and f"`{name}`" in line]
        assert rows, f"metric {name} is not in a table row of docs/metrics.md"
        assert all(f"`{label}`" in rows[0] for label in labels), f"{name}: document its labels {labels}"


# --- install: chart values ---------------------------------------------------------------------------------

def test_documented_chart_values_exist() -> None:
    if not VALUES.exists():
        pytest.skip("the chart is not there")
    values = yaml.safe_load(VALUES.read_text())
    text = (DOCS / "install.md").read_text()
    table = text.split("<!-- values -->", 2)
    assert len(table) == 3, "docs/install.md: the values table sits between two <!-- values --> markers"
    keys = re.findall(r"^\| `([A-Za-z0-9_.]+)` \|", table[1], re.MULTILINE)
    assert len(keys) >= 5
    for key in keys:
        node: object = values
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"docs/install.md documents {key}: not in values.yaml"
            node = node[part]


# --- links -------------------------------------------------------------------------------------------------

def test_relative_links_resolve() -> None:
    broken = []
    for doc in sorted(DOCS.glob("*.md")):
        prose = re.sub(r"```.*?```", "", doc.read_text(), flags=re.DOTALL)
        prose = re.sub(r"``.+?``|`[^`\n]+`", "", prose)  # code spans: patterns like [a-z](...) are no links
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", prose):
            if re.match(r"^[a-z]+:", target):
                continue
            if not (doc.parent / target).exists():
                broken.append(f"{doc.name}: {target}")
    assert broken == []
