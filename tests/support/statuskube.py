"""The few calls the generic pipeline makes for one object (read it, patch its status, post an Event on it), kept in
memory: for unit tests of the runtime's own rules (which verdict gets an Event, what a finalize step writes). What
the API server does with the writes is tested against the real one in tests/cluster."""

from __future__ import annotations

from typing import Any


class StatusKube:
    """One object; its status patches are recorded and merged into it, and the Events posted on it recorded."""

    def __init__(self, obj: dict[str, Any]) -> None:
        self.obj = obj
        self.patches: list[dict[str, Any]] = []
        self.events: list[tuple[str, str]] = []  # (type, reason)
        self.core = self  # Events go through kube.core.create_namespaced_event

    def get(self, rtype: Any, namespace: str, name: str) -> dict[str, Any] | None:
        return self.obj

    def patch_status(self, rtype: Any, namespace: str, name: str, patch: dict[str, Any],
                     resource_version: str | None = None) -> dict[str, Any]:
        self.patches.append(patch)
        self.obj["status"] = {**(self.obj.get("status") or {}), **patch}
        return self.obj

    def create_namespaced_event(self, namespace: str, event: Any) -> None:
        self.events.append((event.type, event.reason))
