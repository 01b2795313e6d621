"""The kopf handlers' pure decisions."""

from __future__ import annotations

import kopf

from model_traffic.app import is_status_echo


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
