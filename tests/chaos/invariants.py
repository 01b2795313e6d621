"""What must hold of a rollout however often the operator is killed, checked from watch records.

Pure functions over :class:`tests.chaos.recorder.Record` lists (ordered by etcd revision); each returns the
violations it found as sentences a person can act on, empty when the invariant holds.

A *traffic state* is what the gateway is asked to do with a model's requests: the percentage of the default path
each backend gets (backends at weight 0 carry nothing and are left out) and the backends of the matched paths.
The VirtualModel and the AIGatewayRoute rendered from it must each go through exactly the states the rollout's
steps name, in order: a state missing is a skipped step, a state seen again after another is a repeated one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tests.chaos.recorder import Record

MODEL_HEADER = "x-ai-eg-model"
# Events that announce a step of a rollout: each must be posted once per step, never lost, never doubled.
STEP_REASONS = ("RolloutStarted", "StepAdvanced", "WaitingPromotion", "Promoted", "RolledBack")


@dataclass(frozen=True, order=True)
class TrafficState:
    default: tuple[tuple[str, int], ...]  # (backend, percent of the default path), sorted
    matched: tuple[str, ...] = ()  # backends that only matching requests reach, sorted

    def __str__(self) -> str:
        shares = ", ".join(f"{name}={share}%" for name, share in self.default) or "nothing"
        return f"{{{shares}}}" + (f" + matched {{{', '.join(self.matched)}}}" if self.matched else "")


def state(default: dict[str, int], matched: Iterable[str] = ()) -> TrafficState:
    """A traffic state from weights (normalised to percent of their sum, weight-0 backends dropped)."""
    total = sum(weight for weight in default.values() if weight > 0)
    shares = tuple(sorted((name, round(100 * weight / total)) for name, weight in default.items() if weight > 0))
    return TrafficState(shares, tuple(sorted(set(matched))))


def virtual_model_state(obj: dict[str, Any]) -> TrafficState:
    backends = (obj.get("spec") or {}).get("backends") or []
    tier0 = [b for b in backends if not b.get("matches") and int(b.get("priority") or 0) == 0]
    return state({str(b["name"]): int(b.get("weight", 1)) for b in tier0},
                 [str(b["name"]) for b in backends if b.get("matches")])


def _is_default_rule(rule: dict[str, Any]) -> bool:
    return all([h.get("name") for h in match.get("headers") or []] == [MODEL_HEADER]
               for match in rule.get("matches") or [])


def route_state(obj: dict[str, Any]) -> TrafficState:
    """The route's first default rule (the one that carries the default path) and its matched rules."""
    rules = (obj.get("spec") or {}).get("rules") or []
    default: dict[str, int] = {}
    matched: list[str] = []
    seen_default = False
    for rule in rules:
        refs = rule.get("backendRefs") or []
        if _is_default_rule(rule):
            if not seen_default:
                seen_default = True
                default = {str(r["name"]): int(r.get("weight", 1)) for r in refs
                           if int(r.get("priority") or 0) == 0}
        else:
            matched += [str(r["name"]) for r in refs if int(r.get("weight", 1)) > 0]
    return state(default, matched)


def route_references(obj: dict[str, Any]) -> set[str]:
    """Every AIServiceBackend the route names, in any rule."""
    return {str(ref["name"]) for rule in (obj.get("spec") or {}).get("rules") or []
            for ref in rule.get("backendRefs") or [] if ref.get("kind", "AIServiceBackend") == "AIServiceBackend"}


def traffic_history(records: list[Record], kind: str, name: str) -> list[TrafficState]:
    """The distinct consecutive traffic states of one VirtualModel or AIGatewayRoute, in write order."""
    read = virtual_model_state if kind == "VirtualModel" else route_state
    history: list[TrafficState] = []
    for record in records:
        if record.kind != kind or record.name != name or record.type == "DELETED":
            continue
        current = read(record.obj)
        if not history or history[-1] != current:
            history.append(current)
    return history


def check_steps(records: list[Record], kind: str, name: str, expected: list[TrafficState]) -> list[str]:
    """The object went through exactly ``expected``, in order (the first state may predate the records)."""
    history = traffic_history(records, kind, name)
    if history == expected or history == expected[1:]:
        return []
    seen = " -> ".join(map(str, history)) or "no state at all"
    wanted = " -> ".join(map(str, expected))
    problems = []
    repeated = sorted({str(s) for i, s in enumerate(history) if s in history[:i]})
    if repeated:
        problems.append(f"repeated {', '.join(repeated)}")
    skipped = [str(s) for s in expected[1:] if s not in history]
    if skipped:
        problems.append(f"skipped {', '.join(skipped)}")
    unexpected = sorted({str(s) for s in history if s not in expected})
    if unexpected:
        problems.append(f"never a step: {', '.join(unexpected)}")
    if not problems:
        problems.append("out of order")
    return [f"{kind} {name} went through {seen}; the steps are {wanted} ({'; '.join(problems)})"]


def check_no_reference_to_deleted_backend(records: list[Record], route: str) -> list[str]:
    """Make-before-break: at no revision did the route name an AIServiceBackend that no longer existed (or whose
    ManagedAIServiceBackend, its owner, was being deleted).

    Walks the merged history in revision order: a deletion while the route still names the backend, or a route
    write naming a backend deleted earlier (and not created again), is a window in which requests fail. A deletion
    starts when the backend gets its deletionTimestamp (Envoy AI Gateway's finalizer then holds the object for a
    while, but the backend is on its way out), not only when the object is finally gone.
    """
    violations = []
    deleted: dict[str, int] = {}  # backend -> revision at which its deletion started
    referenced: set[str] = set()
    for record in records:
        # The ManagedAIServiceBackend of the same name owns the AIServiceBackend: deleting it deletes the other.
        if record.kind in ("AIServiceBackend", "ManagedAIServiceBackend"):
            deleting = record.type == "DELETED" or bool(record.obj["metadata"].get("deletionTimestamp"))
            if deleting and record.name not in deleted:
                deleted[record.name] = record.revision
                if record.name in referenced:
                    violations.append(f"{record.kind} {record.name} deleted at revision {record.revision} while "
                                      f"AIGatewayRoute {route} still referenced it")
            elif not deleting and record.kind == "AIServiceBackend":
                deleted.pop(record.name, None)
        elif record.kind == "AIGatewayRoute" and record.name == route:
            referenced = set() if record.type == "DELETED" else route_references(record.obj)
            for name in sorted(referenced & set(deleted)):
                violations.append(f"AIGatewayRoute {route} at revision {record.revision} references AIServiceBackend "
                                  f"{name}, deleted at revision {deleted[name]}")
    return violations


def trafficconfig_events(records: list[Record], name: str) -> dict[str, dict[str, Any]]:
    """The Events on TrafficConfig ``name``, each as last written (Event name -> object)."""
    found: dict[str, dict[str, Any]] = {}
    for record in records:
        involved = record.obj.get("involvedObject") or record.obj.get("regarding") or {}
        if (record.kind == "Event" and record.type != "DELETED" and involved.get("kind") == "TrafficConfig"
                and involved.get("name") == name):
            found[record.name] = record.obj
    return found


def check_events(records: list[Record], name: str, expected: dict[str, int]) -> list[str]:
    """Exactly ``expected[reason]`` Events of each step reason (one per step), none doubled by a series count."""
    by_reason: dict[str, list[dict[str, Any]]] = {}
    for event in trafficconfig_events(records, name).values():
        by_reason.setdefault(str(event.get("reason")), []).append(event)
    violations = []
    for reason in STEP_REASONS:
        posted = by_reason.get(reason, [])
        occurrences = sum(max(int(e.get("count") or 1), int((e.get("series") or {}).get("count") or 1))
                          for e in posted)
        want = expected.get(reason, 0)
        if occurrences != want:
            messages = "; ".join(sorted(str(e.get("message")) for e in posted)) or "none"
            violations.append(f"TrafficConfig {name}: {occurrences} {reason} Event(s), expected {want} "
                              f"(one per step): {messages}")
    return violations


def check_no_orphans(children: list[dict[str, Any]], alive: set[tuple[str, str]],
                     wanted_versions: dict[str, set[str]]) -> list[str]:
    """Every child carrying our labels belongs to a live owner; a TrafficConfig's version children to a version
    it still wants. A child already being deleted (deletionTimestamp set) is not left behind.

    ``children``: the labelled objects left at the end; ``alive``: (kind, name) of every object that exists;
    ``wanted_versions``: TrafficConfig -> the versions it should still run.
    """
    violations = []
    for child in children:
        meta = child["metadata"]
        if meta.get("deletionTimestamp"):
            continue  # deleted, waiting for a finalizer of its controller (e.g. Envoy AI Gateway's): not left behind
        labels = meta.get("labels") or {}
        what = f"{child['kind']} {meta['name']}"
        owner = (labels.get("modeltraffic.io/owner-kind"), labels.get("modeltraffic.io/owner-name"))
        if owner[0] and owner[1] and (owner[0], owner[1]) not in alive:
            violations.append(f"orphan: {what} belongs to {owner[0]} {owner[1]}, which no longer exists")
            continue
        config, version = labels.get("modeltraffic.io/traffic-config"), labels.get("modeltraffic.io/version")
        if config and version and version not in wanted_versions.get(config, set()):
            violations.append(f"orphan: {what} is version {version} of TrafficConfig {config}, which runs "
                              f"{sorted(wanted_versions.get(config, set()))}")
    return violations
