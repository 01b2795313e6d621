"""API keys of tenants, for people: ``model-traffic keys create|list|revoke|rotate TENANT -n NS``.

The keys live in ONE Secret per namespace (``model-traffic-api-keys`` unless ``--secret`` says otherwise), in Envoy
Gateway's format for a SecurityPolicy's ``apiKeyAuth``: one data key per client id, its value the API key
(api/v1alpha1/api_key_auth_types.go). A VirtualModel with ``spec.auth.apiKey`` names that Secret; Envoy Gateway
reads it, the operator never does. The client id is what the gateway writes into the tenant header, so:

- a tenant's first key has the client id ``<tenant>``;
- a rotation adds a second key with the client id ``<tenant>.<suffix>``: Envoy Gateway v1.9.1 takes one key per
  client id (a client id seen in an earlier Secret is skipped, internal/gatewayapi/securitypolicy.go,
  buildAPIKeyAuth), so two keys valid at once need two client ids. Budgets of a tenant in ``rateLimit.tenants``
  match both (kinds/virtualmodel/render.py, tenant_regex), and usage queries fold ``.<suffix>`` away (docs/tenants.md);
- ``revoke`` removes one; the old key stops working once Envoy Gateway has read the Secret again.

A new key is printed once, on stdout, and stored only in the Secret: never in an annotation, a status, an Event,
or a log line. Each client id's creation time is an annotation (``keys.modeltraffic.io/<client id>``) so ``list``
can show which key is the old one.

The edits are read-modify-write guarded by the Secret's resourceVersion, retried on a conflict.
"""

from __future__ import annotations

import base64
import re
import secrets
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from kubernetes.client.exceptions import ApiException

from model_traffic.kinds.virtualmodel.spec import DEFAULT_API_KEY_SECRET, TENANT_PATTERN
from model_traffic.kube import Kube

ANNOTATION_PREFIX = "keys.modeltraffic.io/"
LABELS = {"app.kubernetes.io/managed-by": "model-traffic-keys", "modeltraffic.io/api-keys": "true"}
KEY_PREFIX = "mtk-"
EDIT_ATTEMPTS = 5
_TENANT = re.compile(TENANT_PATTERN)


class KeysError(Exception):
    """A request that cannot be done as asked; the message says why and what to do."""


@dataclass(frozen=True)
class ClientKey:
    """One key of a tenant, as listed: never its value."""

    tenant: str
    client_id: str
    created: str  # RFC 3339, or "" when the Secret was written by something else


def tenant_of(client_id: str) -> str:
    """The tenant a client id belongs to: ``acme`` for ``acme`` and for a rotated ``acme.3f2a9c1e``."""
    return client_id.partition(".")[0]


def check_tenant(tenant: str) -> None:
    if not _TENANT.fullmatch(tenant) or len(tenant) > 40:
        raise KeysError(f"tenant {tenant!r} must be a DNS label of at most 40 characters (a-z, 0-9, '-'): it "
                        "becomes a Secret data key and the value of the tenant header")


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def listing(secret: dict[str, Any] | None, tenant: str | None = None) -> list[ClientKey]:
    """The keys in a Secret (of one tenant, or all), by tenant then age."""
    if secret is None:
        return []
    notes = (secret.get("metadata") or {}).get("annotations") or {}
    found = [ClientKey(tenant_of(cid), cid, str(notes.get(ANNOTATION_PREFIX + cid, "")))
             for cid in (secret.get("data") or {})]
    return sorted((k for k in found if tenant is None or k.tenant == tenant),
                  key=lambda k: (k.tenant, k.created, k.client_id))


@dataclass(frozen=True)
class Change:
    """A strategic-merge patch of the Secret's data and annotations; None values remove."""

    data: dict[str, str | None]
    annotations: dict[str, str | None]
    summary: str
    new_key: str | None = None  # printed once, never stored elsewhere


def plan_create(secret: dict[str, Any] | None, tenant: str, key: str, now: str) -> Change:
    check_tenant(tenant)
    existing = listing(secret, tenant)
    if existing:
        raise KeysError(f"tenant {tenant} already has a key ({existing[0].client_id}): use `rotate` for a second "
                        "one, or `revoke` first")
    return _add(tenant, key, now, f"created a key for tenant {tenant} (client id {tenant})")


def plan_rotate(secret: dict[str, Any] | None, tenant: str, key: str, now: str, suffix: str) -> Change:
    check_tenant(tenant)
    existing = listing(secret, tenant)
    if not existing:
        raise KeysError(f"tenant {tenant} has no key to rotate: use `create`")
    if len(existing) > 1:
        ids = ", ".join(k.client_id for k in existing)
        raise KeysError(f"tenant {tenant} already has {len(existing)} keys ({ids}): revoke the old one first "
                        f"(`revoke {tenant} --client-id {existing[0].client_id}`)")
    client_id = f"{tenant}.{suffix}"
    old = existing[0].client_id
    change = _add(client_id, key, now, f"added a second key for tenant {tenant} (client id {client_id}); the old "
                  f"one ({old}) stays valid until `model-traffic keys revoke {tenant} --client-id {old}`")
    return change


def plan_revoke(secret: dict[str, Any] | None, tenant: str, client_id: str | None, every: bool) -> Change:
    check_tenant(tenant)
    existing = listing(secret, tenant)
    if client_id is not None:
        chosen = [k for k in existing if k.client_id == client_id]
        if not chosen:
            raise KeysError(f"tenant {tenant} has no key with client id {client_id}")
    elif len(existing) > 1 and not every:
        ids = ", ".join(k.client_id for k in existing)
        raise KeysError(f"tenant {tenant} has {len(existing)} keys ({ids}): name one with --client-id, or --all")
    else:
        chosen = existing
    if not chosen:
        raise KeysError(f"tenant {tenant} has no key")
    revoked = [k.client_id for k in chosen]
    return Change(dict.fromkeys(revoked), {ANNOTATION_PREFIX + cid: None for cid in revoked},
                  f"revoked {', '.join(revoked)} of tenant {tenant}")


def _add(client_id: str, key: str, now: str, summary: str) -> Change:
    encoded = base64.b64encode(key.encode()).decode()
    return Change({client_id: encoded}, {ANNOTATION_PREFIX + client_id: now}, summary, new_key=key)


# --- I/O: the Secret, through the API server ---------------------------------------------------------------

def _read(kube_: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        secret = kube_.core.read_namespaced_secret(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return dict(kube_.api_client.sanitize_for_serialization(secret))  # type: ignore[no-untyped-call]


def _write(kube_: Kube, namespace: str, name: str, secret: dict[str, Any] | None, change: Change) -> None:
    if secret is None:
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": name, "labels": LABELS,
                             "annotations": {k: v for k, v in change.annotations.items() if v is not None}},
                "data": {k: v for k, v in change.data.items() if v is not None}}
        # A dict body is sent as it is; the client's stubs only name its model class.
        kube_.core.create_namespaced_secret(namespace, body)  # type: ignore[arg-type]
        return
    patch = {"metadata": {"resourceVersion": secret["metadata"]["resourceVersion"],
                          "annotations": change.annotations},
             "data": change.data}
    kube_.core.patch_namespaced_secret(name, namespace, patch)


def edit(kube_: Kube, namespace: str, name: str, plan: Any) -> Change:
    """Read the Secret, plan the change on it, write it guarded by its resourceVersion; again on a conflict."""
    for attempt in range(1, EDIT_ATTEMPTS + 1):
        secret = _read(kube_, namespace, name)
        change: Change = plan(secret)
        try:
            _write(kube_, namespace, name, secret, change)
        except ApiException as error:
            if error.status == 409 and attempt < EDIT_ATTEMPTS:
                continue
            raise
        return change
    raise AssertionError("unreachable")


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run(command: str, namespace: str, tenant: str | None, *, secret_name: str = DEFAULT_API_KEY_SECRET,
        client_id: str | None = None, every: bool = False, kube_: Kube | None = None,
        out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """One `model-traffic keys` command; 0 on success."""
    kube_ = kube_ or Kube()
    where = f"secret {namespace}/{secret_name}"
    try:
        if command == "list":
            if tenant is not None:
                check_tenant(tenant)
            keys = listing(_read(kube_, namespace, secret_name), tenant)
            out.write(f"{'TENANT':<24} {'CLIENT ID':<40} CREATED\n")
            for k in keys:
                out.write(f"{k.tenant:<24} {k.client_id:<40} {k.created or '-'}\n")
            return 0
        assert tenant is not None
        if command == "create":
            change = edit(kube_, namespace, secret_name,
                          lambda s: plan_create(s, tenant, new_key(), now_rfc3339()))
        elif command == "rotate":
            change = edit(kube_, namespace, secret_name,
                          lambda s: plan_rotate(s, tenant, new_key(), now_rfc3339(), secrets.token_hex(4)))
        elif command == "revoke":
            change = edit(kube_, namespace, secret_name, lambda s: plan_revoke(s, tenant, client_id, every))
        else:
            raise KeysError(f"unknown command {command}")
    except KeysError as error:
        err.write(f"error: {where}: {error}\n")
        return 1
    except ApiException as error:
        err.write(f"error: {where}: HTTP {error.status} {error.reason}\n")
        return 1
    err.write(f"{where}: {change.summary}\n")
    if change.new_key is not None:
        # The only place the key ever appears: stdout, once (so `KEY=$(model-traffic keys create ...)` works).
        err.write("the key is shown once; store it now (it is kept only in the Secret):\n")
        out.write(change.new_key + "\n")
    return 0
