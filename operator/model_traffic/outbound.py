"""Where the operator lets traffic go: an allow/deny list of CIDRs and host names for every outbound address.

Whoever may write a TrafficConfig or a ManagedAIServiceBackend chooses addresses that the operator calls (webhooks,
Prometheus) or hands to the gateway (a backend's fqdn or ip). Without a policy that is a way to reach what only the
cluster can reach, above all the cloud's instance metadata service, which hands out the node's credentials. So
every such address is checked here first; a refused one becomes the ``AddressNotAllowed`` condition, nothing is
called and nothing is written for it.

Pure: addresses are checked as written (a literal IP in any spelling a resolver would take, or a host name). Names
are not resolved here; :func:`check_resolved` takes addresses the caller resolved, for callers that do.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Link-local ranges (where every cloud's metadata service lives) and the metadata services' own addresses and names:
# AWS (169.254.169.254, fd00:ec2::254), GCP (metadata.google.internal, metadata), Azure and OpenStack (169.254.169.254),
# Alibaba Cloud (100.100.100.200), Oracle Cloud (169.254.169.254), the EKS Pod Identity agent (169.254.170.23,
# fd00:ec2::23).
DEFAULT_DENY = (
    "169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128", "fd00:ec2::23/128", "100.100.100.200/32",
    "metadata.google.internal", "metadata", "instance-data", "instance-data.ec2.internal",
)


class PolicyError(ValueError):
    pass


@dataclass(frozen=True)
class Rules:
    """CIDRs and host names (``example.com`` exactly, ``*.example.com`` its subdomains)."""

    networks: tuple[IPNetwork, ...] = ()
    names: tuple[str, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Rules:
        networks: list[IPNetwork] = []
        names: list[str] = []
        for raw in entries:
            entry = raw.strip().lower().rstrip(".")
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            if not re.fullmatch(r"(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", entry):
                raise PolicyError(f"not a CIDR or host name: {raw!r}")
            names.append(entry)
        return cls(tuple(networks), tuple(names))

    def __bool__(self) -> bool:
        return bool(self.networks or self.names)

    def matching_address(self, address: IPAddress) -> str | None:
        for network in self.networks:
            if address.version == network.version and address in network:
                return str(network)
        return None

    def matching_name(self, name: str) -> str | None:
        for rule in self.names:
            if rule.startswith("*.") and name.endswith(rule[1:]):
                return rule
            if name == rule:
                return rule
        return None


def literal_address(host: str) -> IPAddress | None:
    """The IP address a host stands for without DNS, in every spelling a resolver takes: dotted, bracketed IPv6,
    IPv4-mapped IPv6 (as the IPv4 address), and the legacy integer, octal and hex forms (``2852039166``,
    ``0xa9fea9fe``, ``0251.0376.0251.0376``) that ``inet_aton`` turns into 169.254.169.254."""
    text = host.strip().strip("[]").split("%", 1)[0]
    try:
        address: IPAddress = ipaddress.ip_address(text)
    except ValueError:
        if not re.fullmatch(r"(0x[0-9a-fA-F]+|[0-9]+)(\.(0x[0-9a-fA-F]+|[0-9]+)){0,3}", text):
            return None
        try:
            address = ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def host_of(url: str) -> str:
    """The host of a URL, lower case (bracketed IPv6 unwrapped); "" when it has none."""
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


@dataclass(frozen=True)
class OutboundPolicy:
    """Deny wins; when ``allow`` is not empty, only what it names is allowed besides."""

    deny: Rules = field(default_factory=lambda: Rules.parse(DEFAULT_DENY))
    allow: Rules = field(default_factory=Rules)

    @classmethod
    def parse(cls, deny: Iterable[str], allow: Iterable[str]) -> OutboundPolicy:
        return cls(Rules.parse(deny), Rules.parse(allow))

    def refusal(self, host: str) -> str | None:
        """Why ``host`` (an IP address or a DNS name, as written) may not be reached; None when it may."""
        name = host.strip().lower().rstrip(".")
        if not name:
            return "no host"
        address = literal_address(name)
        if address is not None:
            return self._refusal_of_address(host, address)
        denied = self.deny.matching_name(name)
        if denied:
            return f"{host} is denied by the operator's outbound policy ({denied})"
        if self.allow and not self.allow.matching_name(name):
            return f"{host} is not in the operator's outbound allow list"
        return None

    def _refusal_of_address(self, host: str, address: IPAddress) -> str | None:
        shown = host if str(address) == host.strip("[]") else f"{host} ({address})"
        denied = self.deny.matching_address(address)
        if denied:
            return f"{shown} is denied by the operator's outbound policy ({denied})"
        if self.allow and not self.allow.matching_address(address):
            return f"{shown} is not in the operator's outbound allow list"
        return None

    def url_refusal(self, url: str) -> str | None:
        host = host_of(url)
        return self.refusal(host) if host else f"{url} has no host"

    def check_resolved(self, host: str, addresses: Iterable[str]) -> str | None:
        """For a name the caller resolved: refused when any of its addresses is denied (an allow list of names has
        already let the name itself through :meth:`refusal`)."""
        for text in addresses:
            address = literal_address(text)
            denied = self.deny.matching_address(address) if address is not None else None
            if denied:
                return f"{host} resolves to {address}, which the operator's outbound policy denies ({denied})"
        return None


DEFAULT_POLICY = OutboundPolicy()
