"""What every render function returns: the children to write, the ones to remove, status and verdict."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from model_traffic.kube import ResourceType
from model_traffic.pipeline.conditions import Detail, Verdict


@dataclass(frozen=True)
class Child:
    rtype: ResourceType
    body: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])


@dataclass
class Plan:
    verdict: Verdict
    details: list[Detail]
    children: list[Child] = field(default_factory=list)
    prune: list[ResourceType] = field(default_factory=list)  # kinds whose same-named child no longer applies
    status: dict[str, Any] = field(default_factory=dict)
