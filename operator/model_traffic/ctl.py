"""``model-traffic promote|abort|pause|resume|set-weight|set-weights``: one-line edits of a TrafficConfig.

Each command writes exactly what a person or a GitOps commit would write in the spec (and nothing in the
status), so both ways of driving a rollout meet in one place. The edits are pure functions of the spec,
turned into a JSON merge patch guarded by the resourceVersion that was read.

With GitOps, Git stays the source of truth: a sync reverts these edits unless the same change is
committed. The commands print the spec change so it can be committed too.
"""

from __future__ import annotations

import copy
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
        return ({"stable": _version_entry(chosen), "variants": [{**_version_entry(chosen), "weight": 100}]},
                f"{version} takes all traffic; the other variants retire")
    canary = spec.get("canary")
    if not canary:
        raise EditError("there is no candidate to promote (spec.canary is not set)")
    if version is not None and version != canary.get("version"):
        raise EditError(f"the candidate is {canary.get('version')}, not {version}")
    return ({"stable": _version_entry(canary), "canary": None},
            f"spec.stable.version={canary.get('version')}, spec.canary removed")


def abort(spec: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Send all traffic back to the stable version and retire the candidate."""
    if not spec.get("canary"):
        raise EditError("there is no rollout to abort (spec.canary is not set)")
    return {"canary": None}, f"spec.canary removed: all traffic to {(spec.get('stable') or {}).get('version')}"


def pause(spec: dict[str, Any], paused: bool) -> tuple[dict[str, Any], str]:
    return {"paused": paused}, f"spec.paused={str(paused).lower()}"


def set_weight(spec: dict[str, Any], weight: int) -> tuple[dict[str, Any], str]:
    """Hold the candidate of a Canary at a weight (a manual canary)."""
    if (spec.get("strategy") or "Canary") != "Canary":
        raise EditError(f"set-weight applies to the Canary strategy; this one is {spec.get('strategy')} "
                        "(Weighted: use set-weights)")
    if not spec.get("canary"):
        raise EditError("there is no candidate (spec.canary is not set)")
    if not 1 <= weight <= 100:
        raise EditError("the weight must be between 1 and 100")
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
