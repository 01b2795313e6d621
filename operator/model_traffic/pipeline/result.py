"""The part every reconciler shares: write a plan's children, then turn the plan into a Result."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.exceptions import ApiException

from model_traffic.kube import Kube
from model_traffic.pipeline import apply
from model_traffic.pipeline.acceptance import Acceptance, children_accepted, judge
from model_traffic.pipeline.conditions import Detail, Verdict
from model_traffic.pipeline.plan import Plan
from model_traffic.pipeline.runtime import Result, api_message, is_refused_write

# How soon to look again at a child that is being deleted, if no event of it comes first.
TERMINATING_RECHECK_SECONDS = 5.0


@dataclass
class Applied:
    conflicts: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)  # "Kind/name: the API server's message", per refused child
    terminating: list[str] = field(default_factory=list)  # "Kind/name" of children still being deleted
    live: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind -> the child as the server has it


def apply_plan(kube_: Kube, owner: apply.Owner, plan: Plan) -> Applied:
    """Ensure each child, prune what no longer applies; same-named objects we do not own are reported."""
    applied = Applied()
    for child in plan.children:
        try:
            result = apply.ensure(kube_, child.rtype, owner, child.body)
        except ApiException as error:
            # The schema or an admission webhook refused what we wrote: no retry makes it pass, the spec must change.
            if not is_refused_write(error):
                raise
            applied.rejected.append(f"{child.rtype.kind}/{child.name}: {api_message(error)}")
            continue
        if result.outcome is apply.Outcome.CONFLICT:
            applied.conflicts.append(result.message)
        elif result.outcome is apply.Outcome.TERMINATING:
            applied.terminating.append(f"{child.rtype.kind}/{child.name}")
        elif result.live is not None:
            applied.live[child.rtype.kind] = result.live
    for rtype in plan.prune:
        apply.prune(kube_, rtype, owner, owner.name)
    return applied


def result_of(plan: Plan, applied: Applied, also_judged: Iterable[Acceptance] = ()) -> Result:
    """The plan's verdict, unless a child is someone else's (Stalled, saying which), or a controller we
    handed a child to refused it (Stalled) or has not reported on it yet (Progressing): Ready means the
    controllers accepted what was written. Verdicts that are not Ready already say what to fix first.

    ``also_judged``: objects generated from our children by their controllers (the HTTPRoute of an
    AIGatewayRoute), judged by the reconciler that read them.
    """
    children = [{"apiVersion": c.rtype.api_version, "kind": c.rtype.kind, "name": c.name} for c in plan.children]
    status = {**plan.status, "children": children}
    verdict, details = plan.verdict, list(plan.details)
    if applied.conflicts:
        message = "; ".join(applied.conflicts)
        verdict = Verdict("Stalled", "OwnershipConflict", message)
        details.append(Detail("ChildrenOwned", False, "OwnershipConflict", message))
    else:
        details.append(Detail("ChildrenOwned", True, "Owned", "every child is owned by this object"))
    judged = [a for a in (judge(live) for live in applied.live.values()) if a is not None]
    acceptance = children_accepted([*judged, *also_judged])
    if applied.rejected:
        message = "the API server refused " + "; ".join(applied.rejected)
        details.append(Detail("ChildrenAccepted", False, "ChildRejected", message))
        if not applied.conflicts:
            verdict = Verdict("Stalled", "ChildRejected", message)
        return Result(verdict, details, status)
    details.append(acceptance.detail)
    if verdict.state == "Ready" and acceptance.verdict is not None:
        verdict = acceptance.verdict
    if verdict.state == "Ready" and applied.terminating:
        # Its deletion event brings us back to write it anew; the requeue covers a deletion that never ends.
        message = ", ".join(applied.terminating) + " is still being deleted; it is written again once it is gone"
        return Result(Verdict("Progressing", "ChildTerminating", message), details, status,
                      requeue_after=TERMINATING_RECHECK_SECONDS)
    return Result(verdict, details, status)
