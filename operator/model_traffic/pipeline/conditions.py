"""Status conditions as Kubernetes API conventions and Flux kstatus read them.

``Ready`` says whether the object does its job. ``Reconciling`` is True while the operator (or a
controller it waits on) is still making it so. ``Stalled`` is True when it cannot progress without a
change of the world or of the spec. The three are derived from one :class:`Verdict`, so they never
contradict each other.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any, Literal

State = Literal["Ready", "Progressing", "Stalled"]


@dataclass(frozen=True)
class Verdict:
    state: State
    reason: str
    message: str


@dataclass(frozen=True)
class Detail:
    """A detail condition of a kind (EndpointResolved, CredentialsResolved, ...)."""

    type: str
    ok: bool | None  # None: Unknown
    reason: str
    message: str


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status_word(ok: bool | None) -> str:
    return "Unknown" if ok is None else ("True" if ok else "False")


def build(
    previous: list[dict[str, Any]],
    verdict: Verdict,
    details: list[Detail],
    generation: int,
    timestamp: str | None = None,
) -> list[dict[str, Any]]:
    """New conditions; lastTransitionTime only moves when a condition's status changes."""
    stamp = timestamp or now()
    by_type = {c.get("type"): c for c in previous}
    wanted: list[tuple[str, str, str, str]] = [
        ("Ready", _status_word(verdict.state == "Ready"), verdict.reason, verdict.message),
        ("Reconciling", _status_word(verdict.state == "Progressing"),
         verdict.reason if verdict.state == "Progressing" else "Succeeded",
         verdict.message if verdict.state == "Progressing" else ""),
        ("Stalled", _status_word(verdict.state == "Stalled"),
         verdict.reason if verdict.state == "Stalled" else "Succeeded",
         verdict.message if verdict.state == "Stalled" else ""),
    ]
    wanted += [(d.type, _status_word(d.ok), d.reason, d.message) for d in details]
    result = []
    for ctype, status, reason, message in wanted:
        old = by_type.get(ctype)
        transition = old["lastTransitionTime"] if old and old.get("status") == status else stamp
        result.append({
            "type": ctype,
            "status": status,
            "observedGeneration": generation,
            "lastTransitionTime": transition,
            "reason": reason,
            "message": message,
        })
    return result


def find(conditions: list[dict[str, Any]], ctype: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == ctype), None)


def is_true(conditions: list[dict[str, Any]], ctype: str) -> bool:
    cond = find(conditions, ctype)
    return bool(cond and cond.get("status") == "True")


def status_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any] | None:
    """A merge patch turning old status into new (keys gone become null); None when equal."""
    if old == new:
        return None
    patch: dict[str, Any] = dict(new)
    for key in old:
        if key not in new:
            patch[key] = None
    return patch
