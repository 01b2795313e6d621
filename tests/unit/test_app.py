"""The kopf handlers' pure decisions."""

from __future__ import annotations

import kopf

from model_traffic import kube
from model_traffic.app import CHILD_TYPES, is_status_echo
from model_traffic.pipeline.acceptance import judge


def body(generation: int, observed: int | None) -> kopf.Body:
    raw: dict[str, object] = {"metadata": {"generation": generation}}
    if observed is not None:
        raw["status"] = {"observedGeneration": observed}
    return kopf.Body(raw)  # type: ignore[arg-type]


def test_our_own_status_write_is_not_reconciled_again() -> None:
    assert is_status_echo("MODIFIED", body(3, 3))


def test_spec_changes_new_objects_and_the_initial_listing_are_reconciled() -> None:
    assert not is_status_echo("MODIFIED", body(4, 3))  # a spec change not seen yet
    assert not is_status_echo("MODIFIED", body(1, None))  # never reconciled
    assert not is_status_echo("ADDED", body(1, 1))
    assert not is_status_echo(None, body(2, 2))  # initial listing after a restart: always resume


def test_every_child_whose_status_is_read_back_re_reconciles_its_owner() -> None:
    """A controller's report on a child (or on the HTTPRoute generated from our AIGatewayRoute, which carries
    its labels) reaches the owner through the watch of our children by label: a refusal heals by itself."""
    watched = {(t.group, t.kind) for t in CHILD_TYPES}
    written = [kube.BACKEND, kube.AI_SERVICE_BACKEND, kube.BACKEND_SECURITY_POLICY, kube.QUOTA_POLICY,
               kube.AI_GATEWAY_ROUTE, kube.BACKEND_TRAFFIC_POLICY, kube.HTTP_ROUTE]
    for rtype in written:
        assert judge({"apiVersion": rtype.api_version, "kind": rtype.kind, "metadata": {}}) is not None, rtype.kind
        assert (rtype.group, rtype.kind) in watched, rtype.kind
