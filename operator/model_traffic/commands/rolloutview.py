"""``model-traffic get NAME [--watch]``: one screen of a TrafficConfig's rollout, in the manner of
``kubectl argo rollouts get rollout``: strategy, phase, step, the versions with their weights and readiness,
the last analysis, the pending requests and the recent Events. Rendered from the object (its status; the spec
only for the number of steps) and its Events: :func:`render` is pure, :func:`fetch` reads them."""

from __future__ import annotations

import datetime
import json
from typing import Any

from pydantic import ValidationError

from model_traffic import kube
from model_traffic.kinds.trafficconfig.render import step_weights
from model_traffic.kinds.trafficconfig.spec import REQUEST_ACTIONS, TrafficConfigSpec

RECENT_EVENTS = 8
ICON = {True: "✔", False: "✖", None: "◌"}


def _condition(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == ctype), {})


def _age(stamp: str | None, now: datetime.datetime) -> str:
    if not stamp:
        return "?"
    when = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    seconds = max(0, int((now - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _steps(spec: dict[str, Any]) -> int | None:
    try:
        parsed = TrafficConfigSpec.model_validate(spec)
    except ValidationError:
        return None
    return len(step_weights(parsed)) if parsed.strategy == "Canary" else None


def render(obj: dict[str, Any], events: list[dict[str, Any]], now: datetime.datetime) -> str:
    """The view, as text. ``events``: core/v1 Events of the object, any order."""
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    ready = _condition(status, "Ready")
    stable, candidate = status.get("stableVersion"), status.get("candidateVersion")
    lines = [f"Name:        {meta.get('name')}", f"Namespace:   {meta.get('namespace')}",
             f"Strategy:    {spec.get('strategy') or 'Canary'}",
             # What Git asks for (spec.release); the status below says what runs.
             *([f"Release:     {spec['release'].get('version')}  (spec.release)"] if spec.get("release") else []),
             f"Phase:       {status.get('phase') or '-'}"
             + (f"  ({ready.get('reason')}: {ready.get('message')})" if ready.get("message") else "")]
    steps = _steps(spec)
    if candidate is not None and status.get("currentStep") is not None and steps:
        shown = min(int(status["currentStep"]) + 1, steps)
        lines.append(f"Step:        {shown}/{steps}  (weight {status.get('canaryWeight') or 0})")
    elif candidate is not None and spec.get("strategy") in ("ABTest", "BlueGreen"):
        total = (spec.get("analysis") or {}).get("iterations") or 1
        lines.append(f"Checks:      {status.get('iterations') or 0}/{total} passed")
    lines.append(f"Stable:      {stable or '-'}")
    lines.append(f"Candidate:   {candidate or '-'}"
                 + (f"  (failed checks: {status['failedChecks']})" if status.get("failedChecks") else ""))
    if spec.get("paused") or status.get("pausedByRequest"):
        lines.append("Paused:      " + ", ".join(w for w, on in (("spec.paused", spec.get("paused")),
                                                                 ("by request", status.get("pausedByRequest")))
                                                 if on))
    requests, handled = status.get("requests") or {}, status.get("handledRequests") or {}
    pending = [a for a in REQUEST_ACTIONS if requests.get(a) and requests[a] != handled.get(a)]
    lines.append("Requests:    " + (", ".join(f"{a} (pending since {_age(requests[a], now)})" for a in pending)
                                    if pending else "none pending"))

    lines += ["", f"{'VERSION':<16} {'ROLE':<10} {'WEIGHT':>6}  {'READY':<5}  INFERENCESERVICE"]
    for version in status.get("versions") or []:
        name = version.get("version")
        role = "stable" if name == stable else "candidate" if name == candidate else "draining"
        lines.append(f"{name:<16} {role:<10} {version.get('weight') or 0:>5}%  {ICON[bool(version.get('ready'))]:<5}  "
                     f"{version.get('inferenceService')}")

    results = status.get("lastResults") or []
    lines += ["", "Analysis:" + ("" if results else "    none yet")]
    for result in results:
        value = "" if result.get("value") is None else f" {result['value']:g}"
        against = "" if result.get("stableValue") is None else f" (stable {result['stableValue']:g})"
        note = f"  {result['message']}" if result.get("message") else ""
        lines.append(f"  {ICON[bool(result.get('passed'))]} {result.get('name')}{value}{against}{note}")

    def when(event: dict[str, Any]) -> str:
        series = event.get("series") or {}
        return str(series.get("lastObservedTime") or event.get("eventTime") or event.get("lastTimestamp")
                   or event.get("firstTimestamp") or "")

    recent = sorted(events, key=when)[-RECENT_EVENTS:]
    lines += ["", "Events:" + ("" if recent else "      none")]
    for event in recent:
        lines.append(f"  {_age(when(event), now):>4}  {event.get('type'):<7}  {event.get('reason'):<16}  "
                     f"{event.get('message')}")
    return "\n".join(lines) + "\n"


def fetch(kube_: kube.Kube, namespace: str, name: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The TrafficConfig and its Events (needs get on trafficconfigs and list on events: Kubernetes' view role)."""
    obj = kube_.get(kube.TRAFFIC_CONFIG, namespace, name)
    if obj is None:
        return None, []
    response: Any = kube_.core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.kind=TrafficConfig,involvedObject.name={name}",
        _preload_content=False)  # the JSON as the API server sends it (camelCase, times as text)
    items: list[dict[str, Any]] = json.loads(response.data).get("items") or []
    return obj, items
