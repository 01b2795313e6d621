"""The apply layer: desired children in, server-side apply out, nothing that is not ours touched.

A child is written only when it differs from what is live (a resync of an unchanged object makes no
write), and only when it is missing or controlled by the owner. A live object of the same name that the
owner does not control is reported as a conflict and left exactly as it is.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from model_traffic.kube import GROUP, Kube, ResourceType

MANAGED_BY = "model-traffic-operator"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_OWNER_KIND = "modeltraffic.io/owner-kind"
LABEL_OWNER_NAME = "modeltraffic.io/owner-name"
# The hash of what we last applied: lets a field we stop setting be removed, which a subset comparison
# of desired against live cannot see.
ANNOTATION_APPLIED_HASH = "modeltraffic.io/applied-hash"


@dataclass(frozen=True)
class Owner:
    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str

    @classmethod
    def of(cls, body: dict[str, Any]) -> Owner:
        meta = body["metadata"]
        return cls(body["apiVersion"], body["kind"], meta["namespace"], meta["name"], meta["uid"])

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


class Outcome(Enum):
    CREATED = "Created"
    UPDATED = "Updated"
    UNCHANGED = "Unchanged"
    CONFLICT = "Conflict"
    TERMINATING = "Terminating"  # ours, being deleted: written again once it is gone


@dataclass(frozen=True)
class ApplyResult:
    kind: str
    name: str
    outcome: Outcome
    live: dict[str, Any] | None

    @property
    def message(self) -> str:
        return f"{self.kind} {self.name} exists and is not owned by this object; it was left untouched"


def owned_by(obj: dict[str, Any], owner: Owner) -> bool:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") == owner.uid and ref.get("controller") for ref in refs)


def controller_owner(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """(kind, name) of the object of our API group that controls ``obj`` (its controller owner reference), or
    None. Found without our labels: a child whose labels were removed by hand still leads to its owner."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller") and str(ref.get("apiVersion") or "").split("/")[0] == GROUP and ref.get("name"):
            return str(ref.get("kind") or ""), str(ref["name"])
    return None


def owner_of(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """(kind, name) of the object that wants ``obj`` as it wrote it: by owner reference, else by our labels
    (the AI Gateway copies them from our AIGatewayRoute onto the HTTPRoute it generates, which it owns)."""
    owner = controller_owner(obj)
    if owner is not None:
        return owner
    labels = (obj.get("metadata") or {}).get("labels") or {}
    if labels.get(LABEL_MANAGED_BY) == MANAGED_BY and labels.get(LABEL_OWNER_KIND) and labels.get(LABEL_OWNER_NAME):
        return str(labels[LABEL_OWNER_KIND]), str(labels[LABEL_OWNER_NAME])
    return None


def with_ownership(desired: dict[str, Any], owner: Owner) -> dict[str, Any]:
    """The desired object with owner reference, labels and the applied-hash annotation."""
    obj: dict[str, Any] = json.loads(json.dumps(desired))
    meta = obj.setdefault("metadata", {})
    meta["namespace"] = owner.namespace
    meta.setdefault("labels", {}).update({
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_OWNER_KIND: owner.kind,
        LABEL_OWNER_NAME: owner.name,
    })
    meta["ownerReferences"] = [owner.reference()]
    meta.setdefault("annotations", {})[ANNOTATION_APPLIED_HASH] = content_hash(obj)
    return obj


def content_hash(obj: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def is_subset(desired: Any, live: Any) -> bool:
    """Whether every field of desired has the same value in live (live may have more: defaults)."""
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(k in live and is_subset(v, live[k]) for k, v in desired.items())
    if isinstance(desired, list):
        return isinstance(live, list) and len(desired) == len(live) and all(
            is_subset(d, x) for d, x in zip(desired, live, strict=True)
        )
    return bool(desired == live)


def up_to_date(desired: dict[str, Any], live: dict[str, Any]) -> bool:
    live_hash = (live.get("metadata", {}).get("annotations") or {}).get(ANNOTATION_APPLIED_HASH)
    if live_hash != desired["metadata"]["annotations"][ANNOTATION_APPLIED_HASH]:
        return False
    comparable = {k: v for k, v in desired.items() if k != "metadata"}
    meta = desired["metadata"]
    return is_subset(comparable, live) and is_subset(
        {"labels": meta["labels"], "ownerReferences": meta["ownerReferences"]}, live.get("metadata", {})
    )


def ensure(kube: Kube, rtype: ResourceType, owner: Owner, desired: dict[str, Any]) -> ApplyResult:
    """Make the child exist as desired, unless a same-named object belongs to someone else."""
    obj = with_ownership(desired, owner)
    name = obj["metadata"]["name"]
    live = kube.get(rtype, owner.namespace, name)
    if live is not None and not owned_by(live, owner):
        return ApplyResult(rtype.kind, name, Outcome.CONFLICT, live)
    if live is not None and live["metadata"].get("deletionTimestamp"):
        # Never write to a child on its way out (our owner was deleted, or we pruned it): a write changes its
        # resourceVersion under the controller that is removing its finalizer, and Envoy AI Gateway v1.0.0 does
        # not retry a failed finalizer removal (internal/controller/controller.go, handleFinalizer logs the
        # conflict and returns), so the child would stay terminating for ever.
        return ApplyResult(rtype.kind, name, Outcome.TERMINATING, live)
    if live is not None and up_to_date(obj, live):
        return ApplyResult(rtype.kind, name, Outcome.UNCHANGED, live)
    applied = kube.apply(obj, force=True)
    return ApplyResult(rtype.kind, name, Outcome.CREATED if live is None else Outcome.UPDATED, applied)


def prune(kube: Kube, rtype: ResourceType, owner: Owner, name: str) -> bool:
    """Delete a child that no longer applies, if it is ours. True when something was deleted."""
    live = kube.get_ours(rtype, owner.namespace, name)
    if live is None or not owned_by(live, owner):
        return False
    return kube.delete(rtype, owner.namespace, name, uid=live["metadata"]["uid"])
