"""Random SIGKILLs of the operator during every strategy's rollout, the invariants checked from watch records.

Each round runs eight rollouts at once in one namespace (Canary, ABTest, BlueGreen and Weighted, each with
analysis webhooks that pass and that fail) on the real local stack (KServe's controller makes the versions'
Deployments, Envoy Gateway and the AI Gateway take the routes), and SIGKILLs the one operator process at random
moments until its kill budget is spent, restarting it each time exactly as the cluster fixtures start it (the
chart's ServiceAccount). A :class:`~tests.chaos.recorder.WatchRecorder` records every watch event of the kinds
involved; once every rollout has finished (or the round's time is up) the invariants of
:mod:`tests.chaos.invariants` are checked for each rollout:

- the VirtualModel and its AIGatewayRoute went through exactly the rollout's steps, none skipped or repeated;
- the route never named an AIServiceBackend that had been deleted (make-before-break);
- no child with our labels is left that does not belong to a live, wanted version;
- exactly one Event per step (RolloutStarted, StepAdvanced, WaitingPromotion, Promoted, RolledBack).

By default one round with a few kills (the whole suite, stack included, stays within about four minutes on two
cores). ``MTO_CHAOS_KILLS=100`` runs rounds until at least that many kills; ``make chaos`` does that. The figures
(kills, rollouts finished, violations by invariant) are printed and written as JSON to ``$MTO_CHAOS_REPORT``
(default: chaos.json in the test's temporary directory).
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from model_traffic import kube as k
from model_traffic.kube import Kube
from tests.chaos import invariants
from tests.chaos.invariants import TrafficState, state
from tests.chaos.recorder import WatchRecorder
from tests.conftest import Cluster, Operator, our_yaml, start_operator, stop_operator
from tests.support.webhooks import WebhookServer

pytestmark = pytest.mark.cluster

KILLS_ENV = "MTO_CHAOS_KILLS"
REPORT_ENV = "MTO_CHAOS_REPORT"
# The default run: a few kills, each of which lands during every rollout still running.
DEFAULT_KILLS = 3
LONG_RUN = bool(os.environ.get(KILLS_ENV))
# A long run kills more often per round (the rollouts only move while the operator is up, so they wait for it).
KILLS_PER_ROUND = 8 if LONG_RUN else DEFAULT_KILLS
PAUSE_BETWEEN_KILLS = (0.5, 2.5) if LONG_RUN else (0.5, 4.0)
ROUND_SECONDS = 150.0
# How long a settled cluster gets to retire what a finished rollout left (make-before-break takes a moment).
SETTLE_SECONDS = 20.0

TARGET_KILLS = int(os.environ.get(KILLS_ENV) or DEFAULT_KILLS)
# A round ends when its rollouts have finished, often before its kill budget is spent (about 6 of 8 land): enough
# rounds for the target at 3 a round, the ones after the target is reached skip.
ROUNDS = max(1, math.ceil(TARGET_KILLS / 3)) if LONG_RUN else 1
ROUND_KILLS = min(TARGET_KILLS, KILLS_PER_ROUND)

TEMPLATE = """\
inferenceService:
  template:
    predictor:
      model:
        modelFormat: {name: huggingface}
"""
CHILD_TYPES = (k.INFERENCE_SERVICE, k.MANAGED_AI_SERVICE_BACKEND, k.VIRTUAL_MODEL, k.AI_SERVICE_BACKEND, k.BACKEND,
               k.BACKEND_SECURITY_POLICY, k.AI_GATEWAY_ROUTE, k.BACKEND_TRAFFIC_POLICY)
OWNER_TYPES = (k.TRAFFIC_CONFIG, k.MANAGED_AI_SERVICE_BACKEND, k.VIRTUAL_MODEL)


@dataclass
class Scenario:
    """One rollout: the spec before, the spec (or specs, Weighted) that roll out, what traffic must go through."""

    name: str
    strategy: str
    passing: bool
    namespace: str
    hook_url: str
    # Weighted: the spec edits after the first, each applied once the VirtualModel serves the previous one.
    pending_edits: list[tuple[dict[str, int], str]] = field(default_factory=list)
    finished_at: float | None = None

    @property
    def v1(self) -> str:
        return f"{self.name}-v1"

    @property
    def v2(self) -> str:
        return f"{self.name}-v2"

    def head(self) -> str:
        return f"strategy: {self.strategy}\ngatewayRefs: [{{name: ai-gateway, namespace: {self.namespace}}}]\n"

    def analysis(self) -> str:
        checks = "threshold: 2\n" + ("stepWeights: [10, 30, 60]\n" if self.strategy == "Canary" else "iterations: 3\n")
        if self.strategy == "ABTest":
            checks += 'match: [{headers: [{name: x-canary, value: "true"}]}]\n'
        return "analysis:\n" + textwrap.indent(
            f"interval: 3s\n{checks}webhooks: [{{name: load, type: Rollout, url: \"{self.hook_url}\"}}]\n", "  ")

    def initial(self) -> str:
        versions = "release: {version: v1}\n"  # Git holds the release; the first one is stable at once
        if self.strategy == "Weighted":
            versions += "variants: [{version: v1, weight: 100}]\n"
        return our_yaml("TrafficConfig", self.name, self.head() + TEMPLATE + versions + self.analysis())

    def rollout(self) -> str:
        if self.strategy == "Weighted":
            self.pending_edits = [
                ({self.v1: 40, self.v2: 60}, "release: {version: v1}\nvariants: [{version: v1, weight: 40}, "
                                             "{version: v2, weight: 60}]\n"),
                ({self.v2: 100}, "release: {version: v2}\nvariants: [{version: v2, weight: 100}]\n"),
            ]
            versions = "release: {version: v1}\nvariants: [{version: v1, weight: 70}, {version: v2, weight: 30}]\n"
        else:
            versions = "release: {version: v2}\n"  # one commit: the new release, rolled out from the stable
        return our_yaml("TrafficConfig", self.name, self.head() + TEMPLATE + versions + self.analysis())

    def expected_states(self) -> list[TrafficState]:
        """The traffic states of the steps, in order, from the stable version alone."""
        v1, v2 = self.v1, self.v2
        start, promoted = state({v1: 100}), state({v2: 100})
        if self.strategy == "Canary":
            steps = [state({v1: 100 - w, v2: w}) for w in (10, 30, 60)]
            return [start, *steps, promoted] if self.passing else [start, steps[0], start]
        if self.strategy == "ABTest":
            matched = state({v1: 100}, [v2])
            return [start, matched, promoted] if self.passing else [start, matched, start]
        if self.strategy == "BlueGreen":
            return [start, promoted] if self.passing else [start]
        # Weighted: the spec's weights, whatever the analysis says (it is informative there).
        return [start, state({v1: 70, v2: 30}), state({v1: 40, v2: 60}), promoted]

    def expected_events(self) -> dict[str, int]:
        if self.strategy == "Weighted":
            return {}
        if not self.passing:
            return {"RolloutStarted": 1, "RolledBack": 1}
        steps = {"StepAdvanced": 2} if self.strategy == "Canary" else {}
        return {"RolloutStarted": 1, **steps, "Promoted": 1}

    def wanted_versions(self) -> set[str]:
        return {"v2"} if self.passing or self.strategy == "Weighted" else {"v1"}


def traffic(kube: Kube, scenario: Scenario) -> TrafficState | None:
    vm = kube.get(k.VIRTUAL_MODEL, scenario.namespace, scenario.name)
    return invariants.virtual_model_state(vm) if vm else None


def finished(kube: Kube, scenario: Scenario) -> bool:
    """Rolled out (or back) for good: the final traffic, the final phase, the other version's InferenceService and
    backend gone."""
    if scenario.pending_edits:
        return False
    status = (kube.get(k.TRAFFIC_CONFIG, scenario.namespace, scenario.name) or {}).get("status") or {}
    keep, drop = ("v2", "v1") if "v2" in scenario.wanted_versions() else ("v1", "v2")
    phase = "Failed" if keep == "v1" and scenario.strategy != "Weighted" else "Succeeded"
    if status.get("phase") != phase or status.get("stableVersion") != keep:
        return False
    if traffic(kube, scenario) != state({f"{scenario.name}-{keep}": 100}):
        return False
    gone = f"{scenario.name}-{drop}"
    return (kube.get(k.INFERENCE_SERVICE, scenario.namespace, gone) is None
            and kube.get(k.MANAGED_AI_SERVICE_BACKEND, scenario.namespace, gone) is None)


def apply(cluster: Cluster, namespace: str, text: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=text)


def routed(kube: Kube, scenario: Scenario) -> TrafficState | None:
    route = kube.get(k.AI_GATEWAY_ROUTE, scenario.namespace, scenario.name)
    return invariants.route_state(route) if route else None


def drive_weighted(cluster: Cluster, kube: Kube, scenario: Scenario) -> None:
    """The next spec edit of a Weighted rollout, once the route serves the weights of the previous one (the
    VirtualModel takes a variant's weight at once; the route only once the variant is Ready)."""
    if not scenario.pending_edits:
        return
    previous = scenario.expected_states()[-len(scenario.pending_edits) - 1]
    if traffic(kube, scenario) == previous and routed(kube, scenario) == previous:
        _, versions = scenario.pending_edits.pop(0)
        apply(cluster, scenario.namespace, our_yaml("TrafficConfig", scenario.name,
                                                   scenario.head() + TEMPLATE + versions + scenario.analysis()))


class ChaosOperator:
    """The operator, SIGKILLed and started again as the same ServiceAccount with the same settings."""

    def __init__(self, cluster: Cluster, log_path: Path) -> None:
        self.cluster = cluster
        self.log_path = log_path
        self.current: Operator = start_operator(cluster, log_path)
        # The restart reuses the chart identity and settings of the first start (no new chart install).
        self.settings = {name: value for name, value in self.current.env.items()
                         if name.startswith("MTO_") and name != "MTO_METRICS_PORT"}
        self.settings["KUBECONFIG"] = self.current.env["KUBECONFIG"]
        self.kills: list[float] = []

    def kill_and_restart(self) -> None:
        self.current.process.send_signal(signal.SIGKILL)
        self.current.process.wait()
        self.kills.append(time.time())
        self.current = start_operator(self.cluster, self.log_path, **self.settings)

    def stop(self) -> None:
        stop_operator(self.current)


@dataclass
class Figures:
    kills: int = 0
    rounds: int = 0
    rollouts: int = 0
    rollouts_finished: int = 0
    kills_during: dict[str, int] = field(default_factory=dict)  # scenario kind -> kills while it ran
    violations: dict[str, list[str]] = field(default_factory=dict)  # invariant -> messages

    def add(self, invariant: str, messages: list[str]) -> None:
        self.violations.setdefault(invariant, []).extend(messages)

    def summary(self) -> dict[str, Any]:
        return {"kills": self.kills, "rounds": self.rounds, "rollouts": self.rollouts,
                "rolloutsFinished": self.rollouts_finished, "killsDuringRollout": self.kills_during,
                "violations": {name: len(found) for name, found in self.violations.items()},
                "violationCount": sum(len(found) for found in self.violations.values()),
                "violationMessages": self.violations}


FIGURES = Figures()
INVARIANTS = ("virtual-model-steps", "route-steps", "no-reference-to-deleted-backend", "no-orphans",
              "one-event-per-step", "rollout-finished", "watch-records-complete")


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Figures]:
    for invariant in INVARIANTS:
        FIGURES.violations.setdefault(invariant, [])
    yield FIGURES
    report = Path(os.environ.get(REPORT_ENV) or tmp_path_factory.mktemp("chaos") / "chaos.json")
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(FIGURES.summary(), indent=2) + "\n")
    summary = FIGURES.summary()
    print(f"\nchaos: {summary['kills']} kills in {summary['rounds']} round(s); "
          f"{summary['rolloutsFinished']}/{summary['rollouts']} rollouts finished; "
          f"violations {summary['violations']}; kills during each rollout kind {summary['killsDuringRollout']}; "
          f"figures in {report}")


@pytest.fixture
def hooks() -> Iterator[WebhookServer]:
    with WebhookServer() as server:
        yield server


def scenarios(namespace: str, hooks: WebhookServer) -> list[Scenario]:
    hooks.respond("/fail", 500, body={"error": "p95 too high"})
    return [Scenario(f"{strategy.lower()}-{'pass' if passing else 'fail'}", strategy, passing, namespace,
                     hooks.url("/pass" if passing else "/fail"))
            for strategy in ("Canary", "ABTest", "BlueGreen", "Weighted") for passing in (True, False)]


def wait_until(check: Callable[[], bool], timeout: float, tick: Callable[[], None] = lambda: None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tick()
        if check():
            return True
        time.sleep(0.3)
    return False


@pytest.mark.parametrize("round_number", range(1, ROUNDS + 1))
def test_rollouts_survive_random_kills(round_number: int, cluster: Cluster, kube: Kube, namespace: str,
                                       hooks: WebhookServer, figures: Figures,
                                       tmp_path: Path) -> None:
    if figures.kills >= TARGET_KILLS:
        pytest.skip(f"{figures.kills} kills already, the target is {TARGET_KILLS}")
    seed = int(os.environ.get("MTO_CHAOS_SEED") or time.time_ns() % 1_000_000)
    rng = random.Random(seed)
    earlier = {name: len(messages) for name, messages in figures.violations.items()}
    runs = scenarios(namespace, hooks)
    operator = ChaosOperator(cluster, tmp_path / "operator.log")
    try:
        for scenario in runs:
            apply(cluster, namespace, scenario.initial())
        # Served means on the route too: the route leaves out a version whose backend is not Ready yet, so a
        # rollout started before v1 serves would see the route begin at the candidate alone (v2 Ready first).
        settled = wait_until(lambda: all(traffic(kube, s) == state({s.v1: 100}) == routed(kube, s) for s in runs),
                             120)
        assert settled, "the stable versions never served: " + ", ".join(
            f"{s.name}={traffic(kube, s)} (route {routed(kube, s)})" for s in runs)

        with WatchRecorder(kube, namespace) as recorder:
            started = time.time()
            for scenario in runs:
                apply(cluster, namespace, scenario.rollout())
            deadline = time.monotonic() + ROUND_SECONDS
            next_kill = time.monotonic() + rng.uniform(2.0, 6.0)  # the first kill after the versions start
            while time.monotonic() < deadline:
                for scenario in runs:
                    drive_weighted(cluster, kube, scenario)
                    if scenario.finished_at is None and finished(kube, scenario):
                        scenario.finished_at = time.time()
                if all(s.finished_at is not None for s in runs):
                    break
                if len(operator.kills) < ROUND_KILLS and time.monotonic() >= next_kill:
                    operator.kill_and_restart()
                    next_kill = time.monotonic() + rng.uniform(*PAUSE_BETWEEN_KILLS)
                time.sleep(0.3)
            # What a finished rollout still retires, and the Events of its last step.
            wait_until(lambda: not orphans(kube, namespace, runs), SETTLE_SECONDS)
            time.sleep(1.0)
        records = recorder.records()
        figures.add("watch-records-complete", recorder.errors)
    finally:
        operator.stop()

    figures.rounds += 1
    figures.kills += len(operator.kills)
    for scenario in runs:
        figures.rollouts += 1
        end = scenario.finished_at or time.time()
        during = sum(1 for when in operator.kills if started <= when <= end)
        kind = f"{scenario.strategy}/{'pass' if scenario.passing else 'fail'}"
        figures.kills_during[kind] = figures.kills_during.get(kind, 0) + during
        if scenario.finished_at is not None:
            figures.rollouts_finished += 1
        else:
            status = (kube.get(k.TRAFFIC_CONFIG, namespace, scenario.name) or {}).get("status") or {}
            left = [f"{rtype.kind} {name}" for rtype in (k.INFERENCE_SERVICE, k.MANAGED_AI_SERVICE_BACKEND)
                    for name in (scenario.v1, scenario.v2)
                    if name[-2:] not in scenario.wanted_versions() and kube.get(rtype, namespace, name)]
            figures.add("rollout-finished", [
                f"{scenario.name} did not finish in {ROUND_SECONDS:.0f}s: phase {status.get('phase')}, stable "
                f"{status.get('stableVersion')}, traffic {traffic(kube, scenario)}, route {routed(kube, scenario)}, "
                f"not retired: {', '.join(left) or 'nothing'}; conditions "
                f"{[(c.get('type'), c.get('reason'), c.get('message')) for c in status.get('conditions') or []]}"])
        expected = scenario.expected_states()
        figures.add("virtual-model-steps",
                    invariants.check_steps(records, "VirtualModel", scenario.name, expected))
        figures.add("route-steps", invariants.check_steps(records, "AIGatewayRoute", scenario.name, expected))
        figures.add("no-reference-to-deleted-backend",
                    invariants.check_no_reference_to_deleted_backend(records, scenario.name))
        figures.add("one-event-per-step", invariants.check_events(records, scenario.name, scenario.expected_events()))
    figures.add("no-orphans", orphans(kube, namespace, runs))

    found = [f"[{name}] {message}" for name, messages in figures.violations.items()
             for message in messages[earlier.get(name, 0):]]
    assert not found, (f"round {round_number} (MTO_CHAOS_SEED={seed}): {len(operator.kills)} kills, "
                       f"{sum(s.finished_at is not None for s in runs)}/{len(runs)} rollouts finished; "
                       f"invariant violations:\n" + "\n".join(found))


def orphans(kube: Kube, namespace: str, runs: list[Scenario]) -> list[str]:
    selector = "app.kubernetes.io/managed-by=model-traffic-operator"
    children = [child for rtype in CHILD_TYPES for child in kube.list_objects(rtype, namespace, selector)]
    alive = {(rtype.kind, str(obj["metadata"]["name"])) for rtype in OWNER_TYPES
             for obj in kube.list_objects(rtype, namespace)}
    return invariants.check_no_orphans(children, alive, {s.name: s.wanted_versions() for s in runs})
