"""``model-traffic promote|abort|retry|pause|resume``: requests in a TrafficConfig's status; ``set-weight``,
``set-weights`` and ``promote --version`` (Weighted): one-line edits of its spec.

Actions on a rollout go to the status subresource (``status.requests.<action>: <token>``), the way Argo Rollouts
takes ``status.abort`` and ``status.promoteFull``: a GitOps sync applies the spec and never reverts them, and
asking needs only ``patch`` on ``trafficconfigs/status`` (the chart's promote role). The operator acts on a token
once and records it in ``status.handledRequests`` with the progress it caused (kinds/trafficconfig/render.py).

Weights are desired state: ``set-weight``/``set-weights`` (and promoting a Weighted variant) write exactly what a
Git commit would write in the spec, as a JSON merge patch guarded by the resourceVersion that was read. With
GitOps a sync reverts them unless the same change is committed; the commands print the change to commit.
"""

from __future__ import annotations

import copy
import datetime
from typing import Any

from model_traffic import kube

FIELD_MANAGER = "model-traffic-cli"


class EditError(ValueError):
    """The command does not apply to this TrafficConfig; the message says why."""


def _version_entry(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k in ("version", "storageUri")}


def promote(spec: dict[str, Any], version: str | None = None) -> tuple[dict[str, Any], str]:
    """Make the candidate (or, for Weighted, the given variant) the stable version."""
    if spec.get("strategy") == "Weighted":
        variants = spec.get("variants") or []
        if version is None:
            raise EditError("Weighted: say which variant to promote (--version)")
        chosen = next((v for v in variants if v.get("version") == version), None)
        if chosen is None:
            known = ", ".join(str(v.get("version")) for v in variants)
            raise EditError(f"no variant {version} (variants: {known})")
        # spec.release names the stable variant (the deprecated form: spec.stable).
        key = "stable" if spec.get("stable") else "release"
        return ({key: _version_entry(chosen), "variants": [{**_version_entry(chosen), "weight": 100}]},
                f"{version} takes all traffic; the other variants retire")
    canary = spec.get("canary")
    if not canary:
        raise EditError("there is no candidate to promote (spec.canary is not set)")
    if version is not None and version != canary.get("version"):
        raise EditError(f"the candidate is {canary.get('version')}, not {version}")
    return ({"stable": _version_entry(canary), "canary": None},
            f"spec.stable.version={canary.get('version')}, spec.canary removed")


# What each request asks, as the CLI reports it (the operator's Event says what it did).
REQUESTS = {
    "promote": "promote the candidate now, skipping the remaining steps",
    "abort": "roll back: all traffic to the stable version (phase Failed until a retry or a new candidate)",
    "retry": "start the rollout of the rolled-back candidate again",
    "pause": "freeze the rollout where it is",
    "resume": "continue a paused rollout",
}


def request_token(now: datetime.datetime | None = None) -> str:
    """A new token: the time (RFC 3339, microseconds, UTC), so requests are acted on in the order they were made
    and the same action asked twice is two requests."""
    now = now or datetime.datetime.now(datetime.UTC)
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def request(action: str, token: str) -> dict[str, Any]:
    """The status merge patch that asks for ``action``: only this one key (a concurrent request of another action,
    or the operator's own status write, is left as it is; the operator never writes status.requests)."""
    if action not in REQUESTS:
        raise EditError(f"unknown action {action} (one of {', '.join(REQUESTS)})")
    return {"requests": {action: token}}


def ask(kube_: kube.Kube, namespace: str, name: str, action: str, token: str | None = None) -> str:
    """Patch the request into the status subresource; returns its token. Needs only patch on trafficconfigs/status
    (no read: the operator refuses, with a Warning Event, a request that does not apply)."""
    token = token or request_token()
    kube_.custom.patch_namespaced_custom_object_status(
        kube.TRAFFIC_CONFIG.group, kube.TRAFFIC_CONFIG.version, namespace, kube.TRAFFIC_CONFIG.plural, name,
        {"status": request(action, token)}, field_manager=FIELD_MANAGER,
        _content_type="application/merge-patch+json",
    )
    return token


def set_weight(spec: dict[str, Any], weight: int) -> tuple[dict[str, Any], str]:
    """Hold the candidate of a Canary at a weight (a manual canary)."""
    if (spec.get("strategy") or "Canary") != "Canary":
        raise EditError(f"set-weight applies to the Canary strategy; this one is {spec.get('strategy')} "
                        "(Weighted: use set-weights)")
    if not 1 <= weight <= 100:
        raise EditError("the weight must be between 1 and 100")
    if spec.get("release"):  # held while the release is the candidate (status.candidateVersion)
        return {"release": {**spec["release"], "weight": weight}}, f"spec.release.weight={weight}"
    if not spec.get("canary"):
        raise EditError("there is no candidate (spec.canary is not set)")
    return {"canary": {**spec["canary"], "weight": weight}}, f"spec.canary.weight={weight}"


def set_weights(spec: dict[str, Any], weights: dict[str, int]) -> tuple[dict[str, Any], str]:
    """Re-weight the variants of a Weighted config at once; unnamed variants keep their weight."""
    if spec.get("strategy") != "Weighted":
        raise EditError("set-weights applies to the Weighted strategy (Canary: use set-weight)")
    variants = copy.deepcopy(spec.get("variants") or [])
    unknown = sorted(set(weights) - {str(v.get("version")) for v in variants})
    if unknown:
        raise EditError(f"no variant {', '.join(unknown)}; add it to spec.variants first")
    for variant in variants:
        if variant.get("version") in weights:
            variant["weight"] = weights[variant["version"]]
    total = sum(int(v.get("weight", 0)) for v in variants)
    if total != 100:
        raise EditError(f"the weights must sum to 100, they would sum to {total}")
    return {"variants": variants}, ", ".join(f"{v['version']}={v['weight']}" for v in variants)


def parse_weights(pairs: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for pair in pairs:
        version, sep, weight = pair.partition("=")
        if not sep or not weight.isdigit():
            raise EditError(f"expected VERSION=WEIGHT, got {pair!r}")
        out[version] = int(weight)
    return out


def edit(kube_: kube.Kube, namespace: str, name: str, change: dict[str, Any]) -> None:
    """Merge-patch the spec, only if the object is still the one that was read (else a conflict)."""
    kube_.custom.patch_namespaced_custom_object(
        kube.TRAFFIC_CONFIG.group, kube.TRAFFIC_CONFIG.version, namespace, kube.TRAFFIC_CONFIG.plural, name,
        change, field_manager=FIELD_MANAGER, _content_type="application/merge-patch+json",
    )
