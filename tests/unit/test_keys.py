"""The pure core of `model-traffic keys`: what each command changes in the Secret, and what it refuses."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from model_traffic.commands import keys
from model_traffic.commands.keys import ANNOTATION_PREFIX, KeysError, plan_create, plan_revoke, plan_rotate

NOW = "2026-11-30T03:00:00Z"
LATER = "2026-12-01T03:00:00Z"


def secret(data: dict[str, str], created: dict[str, str] | None = None) -> dict[str, Any]:
    notes = {ANNOTATION_PREFIX + cid: when for cid, when in (created or {}).items()}
    return {"metadata": {"name": "model-traffic-api-keys", "resourceVersion": "7", "annotations": notes},
            "data": {cid: base64.b64encode(v.encode()).decode() for cid, v in data.items()}}


def applied(before: dict[str, Any] | None, change: keys.Change) -> dict[str, Any]:
    """The Secret after the strategic-merge patch (None removes)."""
    data = dict((before or {}).get("data") or {})
    notes = dict(((before or {}).get("metadata") or {}).get("annotations") or {})
    for target, patch in ((data, change.data), (notes, change.annotations)):
        for name, value in patch.items():
            if value is None:
                target.pop(name, None)
            else:
                target[name] = value
    return {"metadata": {"annotations": notes}, "data": data}


def test_create_writes_the_key_under_the_tenant_as_client_id_and_returns_it_once() -> None:
    change = plan_create(None, "acme", "mtk-secret", NOW)
    assert change.data == {"acme": base64.b64encode(b"mtk-secret").decode()}
    assert change.annotations == {ANNOTATION_PREFIX + "acme": NOW}  # when, never what
    assert change.new_key == "mtk-secret" and "mtk-secret" not in change.summary


def test_create_refuses_a_tenant_that_has_a_key() -> None:
    with pytest.raises(KeysError, match="use `rotate`"):
        plan_create(secret({"acme": "k"}), "acme", "k2", NOW)
    with pytest.raises(KeysError, match="already has a key"):
        plan_create(secret({"acme.1a2b3c4d": "k"}), "acme", "k2", NOW)


@pytest.mark.parametrize("tenant", ["Acme", "acme.x", "-acme", "a" * 41, "", "acme_1"])
def test_tenant_names_are_dns_labels(tenant: str) -> None:
    with pytest.raises(KeysError, match="DNS label"):
        plan_create(None, tenant, "k", NOW)


def test_rotate_keeps_two_keys_valid_until_the_old_is_revoked() -> None:
    start = applied(None, plan_create(None, "acme", "old", NOW))
    rotated = applied(start, plan_rotate(start, "acme", "new", LATER, "1a2b3c4d"))
    assert set(rotated["data"]) == {"acme", "acme.1a2b3c4d"}  # both valid now
    assert [(k.client_id, k.created) for k in keys.listing(rotated, "acme")] == [
        ("acme", NOW), ("acme.1a2b3c4d", LATER)]  # oldest first
    with pytest.raises(KeysError, match="revoke the old one first"):
        plan_rotate(rotated, "acme", "third", LATER, "99999999")
    with pytest.raises(KeysError, match="--client-id, or --all"):
        plan_revoke(rotated, "acme", None, every=False)
    done = applied(rotated, plan_revoke(rotated, "acme", "acme", every=False))
    assert set(done["data"]) == {"acme.1a2b3c4d"}
    assert set(done["metadata"]["annotations"]) == {ANNOTATION_PREFIX + "acme.1a2b3c4d"}
    # A later rotation works from the rotated key.
    again = applied(done, plan_rotate(done, "acme", "newer", LATER, "0f0f0f0f"))
    assert set(again["data"]) == {"acme.1a2b3c4d", "acme.0f0f0f0f"}


def test_revoke_of_other_tenants_and_of_nothing() -> None:
    both = secret({"acme": "a", "beta": "b", "beta.12345678": "b2"})
    change = plan_revoke(both, "beta", None, every=True)
    assert change.data == {"beta": None, "beta.12345678": None}
    with pytest.raises(KeysError, match="has no key"):
        plan_revoke(both, "gamma", None, every=False)
    with pytest.raises(KeysError, match="no key with client id"):
        plan_revoke(both, "acme", "beta", every=False)  # another tenant's client id is not this tenant's


def test_listing_never_shows_a_key_and_groups_rotated_keys_under_their_tenant() -> None:
    listed = keys.listing(secret({"beta": "b", "acme.0a0a0a0a": "x", "acme": "y"}))
    assert [(k.tenant, k.client_id) for k in listed] == [("acme", "acme"), ("acme", "acme.0a0a0a0a"),
                                                         ("beta", "beta")]
    assert keys.listing(None) == []


def test_new_keys_are_random_and_fit_an_authorization_header() -> None:
    made = {keys.new_key() for _ in range(100)}
    assert len(made) == 100
    assert all(k.startswith("mtk-") and len(k) > 40 and k.isascii() and " " not in k for k in made)


@pytest.mark.parametrize(("argv", "expected"), [
    (["keys", "create", "acme", "-n", "team-a"], ("create", "team-a", "acme", "model-traffic-api-keys", None, False)),
    (["keys", "list", "-n", "team-a", "--secret", "other"], ("list", "team-a", None, "other", None, False)),
    (["keys", "revoke", "acme", "-n", "t", "--client-id", "acme"], ("revoke", "t", "acme", "model-traffic-api-keys",
                                                                    "acme", False)),
    (["keys", "revoke", "acme", "-n", "t", "--all"], ("revoke", "t", "acme", "model-traffic-api-keys", None, True)),
])
def test_the_command_line_reaches_keys_run(monkeypatch: pytest.MonkeyPatch, argv: list[str],
                                           expected: tuple[Any, ...]) -> None:
    from model_traffic import cli

    seen: list[tuple[Any, ...]] = []

    def fake_run(command: str, namespace: str, tenant: str | None, *, secret_name: str, client_id: str | None,
                 every: bool) -> int:
        seen.append((command, namespace, tenant, secret_name, client_id, every))
        return 0

    monkeypatch.setattr(keys, "run", fake_run)
    assert cli.main(argv) == 0
    assert seen == [expected]
