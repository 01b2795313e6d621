"""Operator settings, from the environment (the Helm chart sets them)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from model_traffic.outbound import DEFAULT_DENY, OutboundPolicy


def _list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


@dataclass(frozen=True)
class Settings:
    namespaces: list[str] = field(default_factory=list)  # empty: every namespace
    resync_seconds: float = 300.0
    metrics_port: int = 8080
    liveness_port: int = 8081
    # /healthz fails once the API server has not answered for this long (kopf's watches retry silently for ever).
    api_server_unreachable_seconds: float = 60.0
    default_gateway: str | None = None  # "namespace/name"
    ai_gateway_version: str | None = None  # override of discovery
    leader_elect: bool = False
    leader_election_namespace: str = "default"
    prometheus_address: str | None = None  # TrafficConfig analysis when spec.analysis.prometheus is unset
    # Where webhooks, Prometheus and backends may be: checked before any call and before a backend's children are
    # written. Parsed here, so a typo stops the operator at start instead of letting everything through.
    outbound: OutboundPolicy = field(default_factory=OutboundPolicy)

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ.get
        return cls(
            namespaces=_list(env("MTO_NAMESPACES", "")),
            resync_seconds=float(env("MTO_RESYNC_SECONDS", "300")),
            metrics_port=int(env("MTO_METRICS_PORT", "8080")),
            liveness_port=int(env("MTO_LIVENESS_PORT", "8081")),
            api_server_unreachable_seconds=float(env("MTO_API_SERVER_UNREACHABLE_SECONDS", "60")),
            default_gateway=env("MTO_DEFAULT_GATEWAY") or None,
            ai_gateway_version=env("MTO_AI_GATEWAY_VERSION") or None,
            leader_elect=env("MTO_LEADER_ELECT", "false").lower() in ("1", "true", "yes"),
            leader_election_namespace=env("MTO_LEADER_ELECTION_NAMESPACE")
            or env("POD_NAMESPACE", "default"),
            prometheus_address=env("MTO_PROMETHEUS_ADDRESS") or None,
            # Setting MTO_OUTBOUND_DENY replaces the default list (so it can be widened deliberately); empty allow:
            # everything that is not denied.
            outbound=OutboundPolicy.parse(_list(env("MTO_OUTBOUND_DENY", ",".join(DEFAULT_DENY))),
                                          _list(env("MTO_OUTBOUND_ALLOW", ""))),
        )
