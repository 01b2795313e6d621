"""Flux reads our kinds right: the real kstatus ``status.Compute`` on objects in every state.

The objects carry the status the operator's own code writes (see :mod:`tests.gitops.states`); the
verdict is computed by kstatus itself, built from ``sigs.k8s.io/cli-utils`` (see :mod:`tests.tools.kstatus`).
"""

from __future__ import annotations

import pytest

from tests.gitops import states
from tests.support import prerequisites
from tests.tools import kstatus

# The first run builds kstatus: about a minute (k8s.io/api is compiled), minutes on a busy machine.
pytestmark = pytest.mark.timeout(1800)
CASES = states.all_cases()


@pytest.fixture(scope="module")
def computed() -> dict[str, kstatus.KStatus]:
    prerequisites.tool("go")  # kstatus is built from its Go module, as the local control plane is
    binary = kstatus.ensure_kstatus()
    return dict(zip([c.id for c in CASES], kstatus.compute(binary, [c.obj for c in CASES]), strict=True))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_kstatus_reads_the_state(case: states.Case, computed: dict[str, kstatus.KStatus]) -> None:
    result = computed[case.id]
    assert result.status == case.kstatus, f"{case.id}: kstatus says {result.status} ({result.message})"


def test_a_stale_generation_is_in_progress_whatever_the_conditions_say(
        computed: dict[str, kstatus.KStatus]) -> None:
    stale = [c for c in CASES if c.id.endswith("-stale-generation")]
    assert len(stale) == 2 * 3 + len(states.TC_EXPECTED)  # every state of every kind
    for case in stale:
        assert computed[case.id].message == f"{case.obj['kind']} generation is 2, but latest observed generation is 1"


def test_every_verdict_state_and_phase_is_covered() -> None:
    ids = {c.id for c in CASES}
    for kind in ("ManagedAIServiceBackend", "VirtualModel"):
        assert {f"{kind}-{state}" for state in ("Ready", "Progressing", "Stalled")} <= ids
    assert {f"TrafficConfig-{phase}" for phase in states.TC_EXPECTED} <= ids
    # Every phase the state machine knows has an expectation (a new phase must be added here).
    from model_traffic.kinds.trafficconfig.reconcile import PHASES
    assert set(PHASES) == set(states.TC_EXPECTED)


def test_the_messages_flux_shows_are_the_operators(computed: dict[str, kstatus.KStatus]) -> None:
    """InProgress and Failed carry the Reconciling / Stalled message: what `flux get` and events show."""
    for case in CASES:
        conditions = {c["type"]: c for c in (case.obj.get("status") or {}).get("conditions") or []}
        if case.id.endswith("-stale-generation") or not conditions:
            continue
        result = computed[case.id]
        if result.status == "InProgress":
            assert result.message == conditions["Reconciling"]["message"], case.id
        elif result.status == "Failed":
            assert result.message == conditions["Stalled"]["message"], case.id


def test_the_tool_is_kstatus_and_not_a_constant(computed: dict[str, kstatus.KStatus]) -> None:
    """A sanity check of the harness: the same object flips with one field, through kstatus's own words."""
    case = next(c for c in CASES if c.id == "VirtualModel-Ready")
    binary = kstatus.ensure_kstatus()
    deleting = {**case.obj, "metadata": {**case.obj["metadata"], "deletionTimestamp": "2025-01-01T12:00:00Z"}}
    (result,) = kstatus.compute(binary, [deleting])
    assert (result.status, result.message) == ("Terminating", "Resource scheduled for deletion")
    assert computed[case.id].message == "Resource is Ready"
