"""The Helm chart, rendered by the helm built from Go modules, against the real API server.

The RBAC proof has two halves. Here: the chart's rules are exactly the table below (one reason each; a
rule in the chart and not in the table fails, and the other way round), with no wildcard and no write on
Secrets. Everywhere else: the session ``operator`` fixture runs the operator as the chart's ServiceAccount
(see tests/conftest.py), so every end-to-end test of the three kinds passes under exactly these rules.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from model_traffic.kube import Kube
from model_traffic_dev.localcluster.build import HELM_VERSION
from tests.cluster.test_backend import MAISB, SECRET_VALUE, secret_yaml, wait_ready
from tests.cluster.test_virtualmodel import wait_vm
from tests.conftest import (
    CHART,
    CHART_NAMESPACE,
    ROOT,
    ChartIdentity,
    Cluster,
    Operator,
    condition,
    free_port,
    helm,
    helm_template,
    our_yaml,
    parse_manifests,
    start_operator,
    stop_operator,
    wait_for,
)
from tests.support import prerequisites

pytestmark = pytest.mark.cluster


@dataclass(frozen=True)
class Rule:
    group: str
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    why: str
    names: tuple[str, ...] = ()


ALL_VERBS = ("get", "list", "watch", "create", "patch", "delete")
CHILD = "a child it owns: server-side apply (patch, and create when new), delete when pruned (uid precondition)"

# Granted on every watched namespace: one ClusterRole (watchNamespaces empty) or a Role in each listed one.
WATCHED = [
    Rule("modeltraffic.io", ("managedaiservicebackends", "virtualmodels"), ALL_VERBS,
         "kopf watches them, each reconcile reads its object fresh; a TrafficConfig owns one of each per version"),
    Rule("modeltraffic.io", ("trafficconfigs",), ("get", "list", "watch", "patch"),
         "watched and read; patch: its finalizer for spec.deletionPolicy Retain (metadata only; the spec is the "
         "user's, never written)"),
    Rule("modeltraffic.io", ("managedaiservicebackends/status", "virtualmodels/status", "trafficconfigs/status"),
         ("patch",), "conditions and observedGeneration: a merge patch of the status subresource"),
    Rule("modeltraffic.io", ("metrictemplates",), ("list", "watch"),
         "metric templates TrafficConfigs reference: watched (read from the cache), never written"),
    Rule("gateway.envoyproxy.io", ("backends",), ALL_VERBS, CHILD + "; also a backend's referenced endpoint"),
    Rule("gateway.envoyproxy.io", ("backendtrafficpolicies", "securitypolicies"), ALL_VERBS,
         CHILD + " (VirtualModel)"),
    Rule("aigateway.envoyproxy.io",
         ("aiservicebackends", "backendsecuritypolicies", "quotapolicies", "aigatewayroutes"), ALL_VERBS,
         CHILD + "; an AIServiceBackend is also dry-run applied to probe the schema"),
    Rule("serving.kserve.io", ("inferenceservices",), ALL_VERBS,
         "read as a backend's endpoint; a TrafficConfig owns one per model version"),
    Rule("", ("secrets",), ("get",),
         "credentials: the Secret a backend names is read by name (which keys exist), never listed or watched"),
    Rule("", ("configmaps",), ("get",), "a CA bundle an analysis' Prometheus names in a ConfigMap key, by name"),
    Rule("inference.networking.k8s.io", ("inferencepools",), ("get", "list", "watch"),
         "a backend's or route's InferencePool: checked to exist, watched"),
    Rule("gateway.networking.k8s.io", ("gateways",), ("get", "list", "watch"),
         "a VirtualModel reports its Gateway's address and follows it"),
    Rule("gateway.networking.k8s.io", ("httproutes",), ("get", "list", "watch"),
         "the AI Gateway's HTTPRoute generated from our AIGatewayRoute: its status is read"),
    Rule("gateway.networking.k8s.io", ("referencegrants",), ("get", "list", "watch"),
         "a VirtualModel using a backend of another namespace: whether a ReferenceGrant there allows it"),
    Rule("", ("events",), ("create", "patch"),
         "an Event on each change of readiness (core/v1, as kopf's own); a repeated one's series count grows"),
]
# Cluster-scoped in every mode.
# kopf runs no resource handlers (the operator's informers watch what it reads) and its scanning is off, so neither
# CustomResourceDefinitions nor Namespaces are read.
OBSERVER = [
    Rule("modeltraffic.io", ("clustermetrictemplates",), ("list", "watch"),
         "cluster-wide metric templates TrafficConfigs reference: watched, never written"),
]
# In the Lease's namespace, with leader election.
LEADER = [
    Rule("coordination.k8s.io", ("leases",), ("create",), "the first replica creates the Lease"),
    Rule("coordination.k8s.io", ("leases",), ("get", "update"), "read and renewed (compare-and-swap update)",
         names=("model-traffic-operator",)),
]


def gateway_reader(name: str | None) -> list[Rule]:
    """In a Gateway's namespace outside the watched ones (namespaced mode)."""
    return [Rule("gateway.networking.k8s.io", ("gateways",), ("get",),
                 "a VirtualModel reads the address of its Gateway in another namespace",
                 names=(name,) if name else ())]


Atom = tuple[str, str, str, str]  # apiGroup, resource, verb, resourceName ("" = any)


def atoms(rules: list[Rule] | list[dict[str, Any]]) -> set[Atom]:
    found: set[Atom] = set()
    for rule in rules:
        if isinstance(rule, Rule):
            groups, resources, verbs, names = [rule.group], rule.resources, rule.verbs, rule.names
        else:
            groups, resources, verbs = rule.get("apiGroups", []), rule.get("resources", []), rule.get("verbs", [])
            names = rule.get("resourceNames") or ()
            assert not rule.get("nonResourceURLs"), rule
        for group in groups:
            for resource in resources:
                for verb in verbs:
                    for name in names or ("",):
                        found.add((group, resource, verb, name))
    return found


def render(values: dict[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    return parse_manifests(helm_template(values, **kwargs))


def roles(manifests: list[dict[str, Any]]) -> dict[tuple[str, str, str], set[Atom]]:
    """(kind, namespace, name) of each Role/ClusterRole -> its rules as atoms."""
    return {(m["kind"], m["metadata"].get("namespace", ""), m["metadata"]["name"]): atoms(m.get("rules") or [])
            for m in manifests if m["kind"] in ("Role", "ClusterRole") and not for_people(m)}


def for_people(manifest: dict[str, Any]) -> bool:
    """The aggregated roles for people (tests/cluster/test_rollout_actions.py), not the operator's."""
    return any(label.startswith("rbac.authorization.k8s.io/aggregate-to-")
               for label in manifest["metadata"].get("labels") or {})


def assert_same(actual: set[Atom], expected: set[Atom], where: str) -> None:
    missing, extra = sorted(expected - actual), sorted(actual - expected)
    assert not missing and not extra, (
        f"{where}: the chart's rules and the expected table differ.\n"
        f"  in the table, not in the chart: {missing}\n  in the chart, not in the table: {extra}"
    )


def of(manifests: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [m for m in manifests if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


FULL = "model-traffic-operator"  # the full name of release "model-traffic-operator"
NAMESPACED_VALUES: dict[str, Any] = {
    "watchNamespaces": ["team-a", "team-b"],
    "defaultGateway": "envoy-gateway-system/ai-gateway",
    "rbac": {"extraGatewayNamespaces": ["shared-gateways", "team-a"]},
    "leaderElection": {"enabled": True},
}
EVERYTHING_ON: dict[str, Any] = {
    **NAMESPACED_VALUES,
    "metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
    "grafanaDashboard": {"enabled": True},
    "logging": {"level": "debug", "format": "plain"},
    "aiGatewayVersion": "v1alpha1",
    "networkPolicy": {
        "enabled": True,
        "ingressFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        "egress": {"apiServer": {"to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}], "ports": [6443]},
                   "prometheus": {"to": [{"namespaceSelector": {"matchLabels": {
                       "kubernetes.io/metadata.name": "monitoring"}}}]},
                   "extraRules": [{"to": [{"ipBlock": {"cidr": "192.0.2.0/24"}}], "ports": [{"port": 8443}]}]},
    },
    "extraArgs": ["--namespace", "llm"],
    "extraVolumes": [{"name": "ca", "configMap": {"name": "internal-ca"}}],
    "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/internal-ca", "readOnly": True}],
    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                   "whenUnsatisfiable": "DoNotSchedule",
                                   "labelSelector": {"matchLabels": {
                                       "app.kubernetes.io/name": "model-traffic-operator"}}}],
    "priorityClassName": "system-cluster-critical",
    "podAnnotations": {"example.com/team": "platform"},
    "podLabels": {"example.com/cost-center": "llm"},
}


# --- helm itself -----------------------------------------------------------------------------------------

def test_helm_is_the_pinned_build() -> None:
    assert helm("version", "--template", "{{.Version}}").stdout.strip() == HELM_VERSION


@pytest.mark.parametrize("values", [{}, NAMESPACED_VALUES, EVERYTHING_ON], ids=["defaults", "namespaced", "all-on"])
def test_helm_lint_is_clean(values: dict[str, Any], tmp_path: Path) -> None:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    result = helm("lint", "--strict", str(CHART), "--values", str(values_file), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


@pytest.mark.parametrize(("values", "complaint"), [
    ({"watchNamespaces": "team-a,team-b"}, "watchNamespaces"),
    ({"watchNamespaces": ["Team_A"]}, "watchNamespaces"),
    ({"defaultGateway": "ai-gateway"}, "defaultGateway"),
    ({"aiGatewayVersion": "v2"}, "aiGatewayVersion"),
    ({"logging": {"level": "trace"}}, "level"),
    ({"replicas": 3}, "replicas"),
    ({"image": {"digest": "latest"}}, "digest"),
    ({"ports": {"metrics": 0, "health": 8081}}, "metrics"),
    ({"networkPolicy": {"enabled": True, "egress": {"apiServer": {"ports": []}}}}, "ports"),
    ({"extraArgs": "--namespace llm"}, "extraArgs"),
    ({"extraVolumeMounts": [{"name": "ca"}]}, "mountPath"),
    ({"metrics": {"prometheusRule": {"runbookBaseURL": "docs/"}}}, "runbookBaseURL"),
], ids=lambda value: json.dumps(value) if isinstance(value, dict) else value)
def test_values_schema_refuses_bad_values(values: dict[str, Any], complaint: str, tmp_path: Path) -> None:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    result = helm("template", "x", str(CHART), "--values", str(values_file), check=False)
    assert result.returncode != 0, f"helm accepted {values}"
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    assert complaint in result.stderr, result.stderr


# --- RBAC --------------------------------------------------------------------------------------------------

def test_all_namespaces_rbac_is_exactly_the_table() -> None:
    manifests = render({"leaderElection": {"enabled": True}})
    assert roles(manifests).keys() == {
        ("ClusterRole", "", FULL), ("ClusterRole", "", f"{FULL}-observer"),
        ("Role", CHART_NAMESPACE, f"{FULL}-leader-election"),
    }
    rendered = roles(manifests)
    assert_same(rendered[("ClusterRole", "", FULL)], atoms(WATCHED), "ClusterRole")
    assert_same(rendered[("ClusterRole", "", f"{FULL}-observer")], atoms(OBSERVER), "observer ClusterRole")
    assert_same(rendered[("Role", CHART_NAMESPACE, f"{FULL}-leader-election")], atoms(LEADER), "lease Role")
    assert_bindings(manifests, FULL)


def test_namespaced_rbac_is_a_role_in_each_watched_namespace_and_nothing_cluster_wide() -> None:
    manifests = render({**NAMESPACED_VALUES, "leaderElection": {"enabled": True, "namespace": "leases"}})
    rendered = roles(manifests)
    assert rendered.keys() == {
        ("Role", "team-a", FULL), ("Role", "team-b", FULL),
        ("ClusterRole", "", f"{FULL}-observer"),
        ("Role", "envoy-gateway-system", f"{FULL}-gateway-reader"),
        ("Role", "shared-gateways", f"{FULL}-gateway-reader"),
        ("Role", "leases", f"{FULL}-leader-election"),
    }
    for namespace in ("team-a", "team-b"):
        assert_same(rendered[("Role", namespace, FULL)], atoms(WATCHED), f"Role in {namespace}")
    assert_same(rendered[("ClusterRole", "", f"{FULL}-observer")], atoms(OBSERVER), "observer ClusterRole")
    # The default gateway: that one Gateway; an extra gateway namespace: any Gateway there; a watched one
    # (team-a) needs nothing more.
    assert_same(rendered[("Role", "envoy-gateway-system", f"{FULL}-gateway-reader")],
                atoms(gateway_reader("ai-gateway")), "default gateway Role")
    assert_same(rendered[("Role", "shared-gateways", f"{FULL}-gateway-reader")], atoms(gateway_reader(None)),
                "extra gateway namespace Role")
    assert_same(rendered[("Role", "leases", f"{FULL}-leader-election")], atoms(LEADER), "lease Role")
    assert_bindings(manifests, FULL)
    deployment_env = env_of(of(manifests, "Deployment"))
    assert deployment_env["MTO_NAMESPACES"] == "team-a,team-b"
    assert deployment_env["MTO_LEADER_ELECTION_NAMESPACE"] == "leases"


def assert_bindings(manifests: list[dict[str, Any]], service_account: str) -> None:
    """Each role is bound, by a binding of its own name and namespace, to the chart's ServiceAccount only."""
    bindings = {(m["kind"].replace("Binding", ""), m["metadata"].get("namespace", ""), m["metadata"]["name"]): m
                for m in manifests if m["kind"] in ("RoleBinding", "ClusterRoleBinding")}
    assert bindings.keys() == roles(manifests).keys()
    for (kind, _, name), binding in bindings.items():
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": service_account,
                                        "namespace": CHART_NAMESPACE}]
    assert of(manifests, "ServiceAccount")["metadata"]["name"] == service_account


WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
ESCALATING_VERBS = {"escalate", "bind", "impersonate", "approve", "sign"}


@pytest.mark.parametrize("values", [{}, NAMESPACED_VALUES, EVERYTHING_ON, {"leaderElection": {"enabled": False}}],
                         ids=["defaults", "namespaced", "all-on", "no-leader-election"])
def test_no_wildcard_no_secret_write_no_escalation(values: dict[str, Any]) -> None:
    for (kind, namespace, name), granted in roles(render(values)).items():
        where = f"{kind} {namespace}/{name}"
        for group, resource, verb, _ in granted:
            assert "*" not in (group + resource + verb), f"{where} has a wildcard: {(group, resource, verb)}"
            assert verb not in ESCALATING_VERBS, f"{where} grants {verb} on {resource}"
            assert (group, resource) not in {("", "secrets"), ("", "secrets/status")} or verb not in WRITE_VERBS, \
                f"{where} lets the operator {verb} Secrets"
            assert group != "rbac.authorization.k8s.io", f"{where} grants access to RBAC itself"
            assert not (group == "" and resource in ("pods/exec", "serviceaccounts/token", "nodes")), where


def test_every_rule_in_the_table_has_a_reason() -> None:
    for rule in WATCHED + OBSERVER + LEADER + gateway_reader(None):
        assert len(rule.why) > 20, rule


# --- the Deployment and the rest ---------------------------------------------------------------------------

def env_of(deployment: dict[str, Any]) -> dict[str, Any]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {var["name"]: var.get("value", var.get("valueFrom")) for var in container["env"]}


def test_deployment_is_two_locked_down_replicas_with_probes() -> None:
    manifests = render()
    deployment = of(manifests, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert deployment["spec"]["replicas"] == 2
    assert pod["serviceAccountName"] == FULL
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["privileged"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert "add" not in security["capabilities"]
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    # The only writable path is an emptyDir.
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"][0]["emptyDir"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert container["command"] == ["model-traffic-operator"]
    assert container["args"] == ["run", "--liveness-port=8081", "--log-format=json"]
    env = env_of(deployment)
    assert env["MTO_LEADER_ELECT"] == "true"
    assert env["MTO_LEADER_ELECTION_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["MTO_NAMESPACES"] == ""
    assert env["MTO_METRICS_PORT"] == "8080" and env["MTO_LIVENESS_PORT"] == "8081"
    pdb = of(manifests, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert {m["kind"] for m in manifests} == {
        "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Service", "Deployment",
        "PodDisruptionBudget",
    }


def test_values_reach_the_operators_settings() -> None:
    deployment = of(render({
        "defaultGateway": "gw-ns/ai", "aiGatewayVersion": "v1alpha1", "resyncSeconds": 60,
        "logging": {"level": "debug", "format": "plain"}, "replicaCount": 1,
        "image": {"repository": "registry.example/mto", "tag": "1.2.3"},
        "extraEnv": [{"name": "MTO_PROMETHEUS_URL", "value": "http://prometheus:9090"}],
    }), "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = env_of(deployment)
    assert env["MTO_DEFAULT_GATEWAY"] == "gw-ns/ai"
    assert env["MTO_AI_GATEWAY_VERSION"] == "v1alpha1"
    assert env["MTO_RESYNC_SECONDS"] == "60"
    assert env["MTO_PROMETHEUS_URL"] == "http://prometheus:9090"
    assert container["args"] == ["run", "--liveness-port=8081", "--log-format=plain", "--verbose"]
    assert container["image"] == "registry.example/mto:1.2.3"
    digest = "sha256:" + "a" * 64
    pinned = of(render({"image": {"digest": digest}}), "Deployment")
    assert pinned["spec"]["template"]["spec"]["containers"][0]["image"] == f"model-traffic-operator@{digest}"
    # One replica: a PodDisruptionBudget would block every drain.
    assert not [m for m in render({"replicaCount": 1}) if m["kind"] == "PodDisruptionBudget"]


def test_operator_options_reach_the_pod() -> None:
    manifests = render(EVERYTHING_ON)
    deployment = of(manifests, "Deployment")
    template = deployment["spec"]["template"]
    pod = template["spec"]
    (container,) = pod["containers"]
    assert container["args"][-2:] == ["--namespace", "llm"]
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"},
                                         {"name": "ca", "mountPath": "/etc/internal-ca", "readOnly": True}]
    assert [v["name"] for v in pod["volumes"]] == ["tmp", "ca"]
    assert pod["topologySpreadConstraints"] == EVERYTHING_ON["topologySpreadConstraints"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert template["metadata"]["annotations"]["example.com/team"] == "platform"
    assert template["metadata"]["labels"]["example.com/cost-center"] == "llm"
    # Extra labels never reach the selector (it is immutable: an upgrade would fail).
    assert "example.com/cost-center" not in deployment["spec"]["selector"]["matchLabels"]
    # Defaults: spread over nodes, no priority class.
    default_pod = of(render(), "Deployment")["spec"]["template"]["spec"]
    assert default_pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    assert "priorityClassName" not in default_pod


def test_network_policy_admits_only_the_metrics_and_health_ports_and_names_each_egress() -> None:
    assert not [m for m in render() if m["kind"] == "NetworkPolicy"], "the NetworkPolicy is optional"
    manifests = render(EVERYTHING_ON)
    policy, deployment = of(manifests, "NetworkPolicy"), of(manifests, "Deployment")
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = spec["ingress"]
    container_ports = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {p["port"] for p in ingress["ports"]} == {"metrics", "health"} == container_ports
    assert ingress["from"] == EVERYTHING_ON["networkPolicy"]["ingressFrom"]
    api_server, dns, prometheus, webhooks, extra = spec["egress"]
    assert api_server == {"ports": [{"port": 6443, "protocol": "TCP"}], "to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}]}
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert prometheus["ports"] == [{"port": 9090, "protocol": "TCP"}]
    assert prometheus["to"] == EVERYTHING_ON["networkPolicy"]["egress"]["prometheus"]["to"]
    assert webhooks == {"ports": [{"port": 443, "protocol": "TCP"}]}  # no `to`: any address on 443
    assert extra == EVERYTHING_ON["networkPolicy"]["egress"]["extraRules"][0]
    # Each kind of egress can be switched off; the API server's cannot.
    off = render({"networkPolicy": {"enabled": True, "egress": {
        "dns": {"enabled": False}, "prometheus": {"enabled": False}, "webhooks": {"enabled": False}}}})
    assert of(off, "NetworkPolicy")["spec"]["egress"] == [
        {"ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]}]


def test_metrics_service_and_service_monitor_reach_the_operator_port() -> None:
    manifests = render({"metrics": {"serviceMonitor": {"enabled": True}}})
    deployment, service = of(manifests, "Deployment"), of(manifests, "Service")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}]
    monitor = of(manifests, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [CHART_NAMESPACE]}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    # The metrics' own namespace label (the object's) must win over the target's (the operator's).
    assert all(e.get("honorLabels") is True for e in monitor["spec"]["endpoints"])


def prometheus_rule_groups() -> list[dict[str, Any]]:
    rule = of(render({"metrics": {"prometheusRule": {"enabled": True}}}), "PrometheusRule")
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def test_alerts_use_only_metrics_the_operator_exports() -> None:
    from prometheus_client import REGISTRY

    import model_traffic.metrics  # noqa: F401  (registers them)

    exported = set(REGISTRY._names_to_collectors)
    alerts = {r["alert"]: r["expr"] for g in prometheus_rule_groups() for r in g["rules"] if "alert" in r}
    assert set(alerts) == {"ModelTrafficOperatorDown", "ModelTrafficReconcileErrors", "ModelTrafficObjectStalled",
                           "ModelTrafficRolloutFailed"}
    for alert, expr in alerts.items():
        for metric in re.findall(r"\bmodel_traffic_\w+", expr):
            assert metric in exported, f"{alert} uses {metric}, which the operator does not export"


def run_promtool_tests(tmp_path: Path, tests: list[dict[str, Any]]) -> None:
    """`promtool test rules` (the real Prometheus's) of the chart's rules on these series."""
    promtool = prerequisites.tool("promtool")
    groups = prometheus_rule_groups()
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    checked = subprocess.run([promtool, "check", "rules", str(tmp_path / "rules.yaml")], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The firing test compares labels; annotations (checked above) are left out of it.
    bare = [{**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]} for g in groups]
    (tmp_path / "bare.yaml").write_text(yaml.safe_dump({"groups": bare}))
    spec = {"rule_files": ["bare.yaml"], "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(spec))
    result = subprocess.run([promtool, "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


TARGET = {"job": f"{FULL}-metrics", "namespace": CHART_NAMESPACE}


def leader_series(instance: str, values: str) -> dict[str, str]:
    """model_traffic_operator_leader of one replica, as scraped through the chart's Service."""
    return {"series": f'model_traffic_operator_leader{{job="{FULL}-metrics",namespace="{CHART_NAMESPACE}",'
                      f'instance="{instance}"}}', "values": values}


def test_recording_rules_sum_the_gateway_usage_by_tenant_and_model(tmp_path: Path) -> None:
    """The tenant group records AI Gateway's gen_ai_* rates by tenant and model; a rotated key counts as its tenant."""
    def series(metric: str, tenant_id: str, extra: str = "") -> str:
        return (f'{metric}{{tenant_id="{tenant_id}",gen_ai_original_model="gpt-4",gen_ai_request_model="gpt-4o"'
                f"{extra}}}")

    run_promtool_tests(tmp_path, [{
        "interval": "1m",
        "input_series": [  # per minute: acme 60 + 120 input tokens over two keys, beta 30; 30 requests, 15 failed
            {"series": series("gen_ai_client_token_usage_sum", "acme", ',gen_ai_token_type="input"'),
             "values": "0+60x20"},
            {"series": series("gen_ai_client_token_usage_sum", "acme.1a2b3c4d", ',gen_ai_token_type="input"'),
             "values": "0+120x20"},
            {"series": series("gen_ai_client_token_usage_sum", "beta", ',gen_ai_token_type="input"'),
             "values": "0+30x20"},
            {"series": series("gen_ai_server_request_duration_seconds_count", "acme"), "values": "0+15x20"},
            {"series": series("gen_ai_server_request_duration_seconds_count", "acme", ',error_type="_OTHER"'),
             "values": "0+15x20"},
        ],
        "promql_expr_test": [
            {"expr": "tenant_model_token_type:gen_ai_client_token_usage:rate5m", "eval_time": "10m", "exp_samples": [
                {"labels": 'tenant_model_token_type:gen_ai_client_token_usage:rate5m{tenant="acme",'
                           'gen_ai_original_model="gpt-4",gen_ai_token_type="input"}', "value": 3},
                {"labels": 'tenant_model_token_type:gen_ai_client_token_usage:rate5m{tenant="beta",'
                           'gen_ai_original_model="gpt-4",gen_ai_token_type="input"}', "value": 0.5}]},
            {"expr": "tenant_model:gen_ai_server_requests:rate5m", "eval_time": "10m", "exp_samples": [
                {"labels": 'tenant_model:gen_ai_server_requests:rate5m{tenant="acme",gen_ai_original_model="gpt-4"}',
                 "value": 0.5}]},
            {"expr": "tenant_model:gen_ai_server_request_errors:rate5m", "eval_time": "10m", "exp_samples": [
                {"labels": 'tenant_model:gen_ai_server_request_errors:rate5m{tenant="acme",'
                           'gen_ai_original_model="gpt-4"}', "value": 0.25}]},
        ],
    }])


def test_alerts_fire_on_errors_stalled_objects_and_failed_rollouts(tmp_path: Path) -> None:
    run_promtool_tests(tmp_path, [{
        "interval": "1m",
        "input_series": [
            {"series": 'model_traffic_reconcile_errors_total{kind="VirtualModel",error="http403"}',
             "values": "0+5x40"},
            {"series": 'model_traffic_reconcile_errors_total{kind="ManagedAIServiceBackend",error="http409"}',
             "values": "3x40"},
            # Stalled: not Ready, and cannot progress.
            {"series": 'model_traffic_object_ready{kind="ManagedAIServiceBackend",namespace="llm",name="bad"}',
             "values": "0x40"},
            {"series": 'model_traffic_object_stalled{kind="ManagedAIServiceBackend",namespace="llm",name="bad"}',
             "values": "0x2 1x38"},
            # A rollout in progress for 40 minutes: not Ready (Reconciling) all along, never Stalled: no alert.
            {"series": 'model_traffic_object_ready{kind="TrafficConfig",namespace="llm",name="rolling"}',
             "values": "0x40"},
            {"series": 'model_traffic_object_stalled{kind="TrafficConfig",namespace="llm",name="rolling"}',
             "values": "0x40"},
            {"series": 'model_traffic_rollout_phase{namespace="llm",name="rolling",phase="Progressing"}',
             "values": "1x40"},
            {"series": 'model_traffic_object_ready{kind="VirtualModel",namespace="llm",name="good"}',
             "values": "1x40"},
            {"series": 'model_traffic_object_stalled{kind="VirtualModel",namespace="llm",name="good"}',
             "values": "0x40"},
            {"series": 'model_traffic_rollout_phase{namespace="llm",name="canary",phase="Failed"}',
             "values": "0 0 0 1x37"},
            {"series": 'model_traffic_rollout_phase{namespace="llm",name="canary",phase="Progressing"}',
             "values": "1 1 1 0x37"},
            # One leader, one standby.
            leader_series("a", "1x40"),
            leader_series("b", "0x40"),
        ],
        "alert_rule_test": [
            # Errors for less than `for` (10m): pending, not firing.
            {"eval_time": "5m", "alertname": "ModelTrafficReconcileErrors", "exp_alerts": []},
            {"eval_time": "20m", "alertname": "ModelTrafficReconcileErrors", "exp_alerts": [
                {"exp_labels": {"severity": "warning", "kind": "VirtualModel", "error": "http403"}}]},
            # Stalled from minute 2, `for` 5m.
            {"eval_time": "5m", "alertname": "ModelTrafficObjectStalled", "exp_alerts": []},
            {"eval_time": "40m", "alertname": "ModelTrafficObjectStalled", "exp_alerts": [
                {"exp_labels": {"severity": "warning", "kind": "ManagedAIServiceBackend", "namespace": "llm",
                                "name": "bad"}}]},
            {"eval_time": "3m", "alertname": "ModelTrafficRolloutFailed", "exp_alerts": []},
            {"eval_time": "6m", "alertname": "ModelTrafficRolloutFailed", "exp_alerts": [
                {"exp_labels": {"severity": "warning", "namespace": "llm", "name": "canary"}}]},
            {"eval_time": "30m", "alertname": "ModelTrafficOperatorDown", "exp_alerts": []},
        ],
    }])


def test_operator_down_means_no_replica_leads(tmp_path: Path) -> None:
    """Standbys are up and scraped: the alert reads the leader metric, not `up`."""
    run_promtool_tests(tmp_path, [{
        # Two standbys, both scraped (up), neither leading: down.
        "interval": "1m",
        "input_series": [leader_series("a", "0x20"), leader_series("b", "0x20"),
                         {"series": f'up{{job="{FULL}-metrics",namespace="{CHART_NAMESPACE}",instance="a"}}',
                          "values": "1x20"}],
        "alert_rule_test": [
            {"eval_time": "3m", "alertname": "ModelTrafficOperatorDown", "exp_alerts": []},
            {"eval_time": "15m", "alertname": "ModelTrafficOperatorDown",
             "exp_alerts": [{"exp_labels": {"severity": "warning"}}]},
        ],
    }, {
        # No replica scraped at all (the series are gone).
        "interval": "1m",
        "input_series": [{"series": f'up{{job="{FULL}-metrics",namespace="{CHART_NAMESPACE}",instance="a"}}',
                          "values": "0x20"}],
        "alert_rule_test": [
            {"eval_time": "15m", "alertname": "ModelTrafficOperatorDown",
             "exp_alerts": [{"exp_labels": {"severity": "warning", **TARGET}}]},
        ],
    }, {
        # A hand-over: the leader dies at minute 10, the standby leads from minute 11. Never down for 5m.
        "interval": "1m",
        "input_series": [leader_series("a", "1x10 _x20"), leader_series("b", "0x10 1x20")],
        "alert_rule_test": [
            {"eval_time": f"{minute}m", "alertname": "ModelTrafficOperatorDown", "exp_alerts": []}
            for minute in (5, 12, 20, 30)
        ],
    }, {
        # The metric of another release (another job) does not hide this one's outage.
        "interval": "1m",
        "input_series": [
            {"series": 'model_traffic_operator_leader{job="other-metrics",namespace="other",instance="x"}',
             "values": "1x20"},
            leader_series("a", "0x20"),
        ],
        "alert_rule_test": [
            {"eval_time": "15m", "alertname": "ModelTrafficOperatorDown",
             "exp_alerts": [{"exp_labels": {"severity": "warning"}}]},
        ],
    }])


def test_the_stalled_series_follows_the_stalled_condition(cluster: Cluster, kube: Kube, operator: Operator,
                                                          namespace: str) -> None:
    """ModelTrafficObjectStalled reads model_traffic_object_stalled: the operator sets it from the condition."""
    series = f'{{kind="ManagedAIServiceBackend",name="meta",namespace="{namespace}"}}'
    # The cloud metadata address is denied by the default outbound policy: AddressNotAllowed, Stalled.
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=our_yaml("ManagedAIServiceBackend", "meta", """\
        schema: {name: OpenAI}
        endpoint: {ip: {address: 169.254.169.254, port: 80}}
        """))
    stalled = wait_ready(kube, namespace, "meta", status="False", reason="AddressNotAllowed")
    assert condition(stalled, "Stalled")["status"] == "True"
    wait_for(lambda: f"model_traffic_object_stalled{series} 1.0" in operator.metrics(), 10, "stalled = 1")
    assert f"model_traffic_object_ready{series} 0.0" in operator.metrics()
    # Fixed: Ready, and no longer Stalled.
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=our_yaml("ManagedAIServiceBackend", "meta", """\
        schema: {name: OpenAI}
        endpoint: {ip: {address: 10.0.0.9, port: 8000}}
        """))
    wait_ready(kube, namespace, "meta")
    wait_for(lambda: f"model_traffic_object_stalled{series} 0.0" in operator.metrics(), 10, "stalled = 0")
    # Deleted: the series goes with the object (no alert on an object that no longer exists).
    cluster.kubectl("delete", "-n", namespace, "managedaiservicebackend", "meta")
    wait_for(lambda: f"model_traffic_object_stalled{series}" not in operator.metrics(), 30, "the series to go")


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a page's headings."""
    anchors = set()
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.MULTILINE | re.DOTALL)  # a "# comment" is no heading
    for heading in re.findall(r"^#+ (.+)$", prose, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_every_alert_has_a_runbook_that_exists() -> None:
    base = "https://docs.example/model-traffic-operator/v0.1.0/docs"
    rendered = of(render({"metrics": {"prometheusRule": {"enabled": True, "runbookBaseURL": base + "/"}}}),
                  "PrometheusRule")
    alerts = [r for g in rendered["spec"]["groups"] for r in g["rules"] if "alert" in r]  # not recording rules
    for alert in alerts:
        url = alert["annotations"].get("runbook_url", "")
        assert url.startswith(base + "/"), f"{alert['alert']} has no runbook_url under {base}: {url!r}"
        page, _, anchor = url.removeprefix(base + "/").partition("#")
        doc = ROOT / "docs" / page
        assert doc.is_file(), f"{alert['alert']}: {page} is not in docs/"
        assert anchor in github_anchors(doc.read_text()), f"{alert['alert']}: no heading #{anchor} in docs/{page}"
    # Without a base URL, no dangling relative link.
    plain = of(render({"metrics": {"prometheusRule": {"enabled": True}}}), "PrometheusRule")
    assert not [r for g in plain["spec"]["groups"] for r in g["rules"]
                if "runbook_url" in r.get("annotations", {})]


def test_grafana_dashboard_configmap_carries_every_dashboard() -> None:
    dashboards = sorted((CHART / "files" / "dashboards").glob("*.json"))
    assert dashboards, "the chart has no files/dashboards/*.json"
    assert not [m for m in render() if m["kind"] == "ConfigMap"], "the dashboard is optional"
    configmap = of(render({"grafanaDashboard": {"enabled": True, "namespace": "monitoring"}}), "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert sorted(configmap["data"]) == [path.name for path in dashboards]
    for path in dashboards:
        assert json.loads(configmap["data"][path.name]) == json.loads(path.read_text())


def test_readme_documents_the_argocd_snippet_and_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    assert "files/argocd/" in readme
    assert (CHART / "files" / "argocd").is_dir()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for key in values:
        assert f"`{key}" in readme, f"the chart README does not document {key}"


# --- against the API server ---------------------------------------------------------------------------------

@pytest.fixture
def namespaces(kube: Kube) -> Iterator[list[str]]:
    """Three fresh namespaces: the release's, and two watched ones."""
    import kubernetes

    names = [f"c-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    for name in names:
        kube.core.create_namespace(kubernetes.client.V1Namespace(metadata=kubernetes.client.V1ObjectMeta(name=name)))
    yield names
    for name in names:
        kube.core.delete_namespace(name)


@pytest.mark.parametrize("values", [{}, EVERYTHING_ON], ids=["defaults", "all-on"])
def test_rendered_chart_passes_server_side_dry_run(cluster: Cluster, namespaces: list[str],
                                                   values: dict[str, Any]) -> None:
    release_ns, team_a, team_b = namespaces
    if values:
        values = {**values, "watchNamespaces": [team_a, team_b],
                  "defaultGateway": f"{team_a}/ai-gateway", "rbac": {"extraGatewayNamespaces": [team_b]},
                  "grafanaDashboard": {"enabled": True, "namespace": release_ns}}
    manifests = parse_manifests(helm_template(values, namespace=release_ns, release="dry",
                                              extra=("--include-crds",)))
    # The Prometheus Operator's kinds need its CRDs, which this control plane does not have.
    monitoring = [m for m in manifests if m["apiVersion"].startswith("monitoring.coreos.com/")]
    assert {m["kind"] for m in monitoring} == ({"ServiceMonitor", "PrometheusRule"} if values else set())
    rest = [m for m in manifests if m not in monitoring]
    assert {m["kind"] for m in rest} >= {"CustomResourceDefinition", "Deployment", "ServiceAccount", "Service"}
    result = cluster.kubectl("apply", "--server-side", "--dry-run=server", "--field-manager=helm", "-f", "-",
                             stdin=yaml.safe_dump_all(rest))
    assert len(result.stdout.strip().splitlines()) == len(rest), result.stdout


def can_i(cluster: Cluster, identity: ChartIdentity, verb: str, resource: str, namespace: str | None) -> bool:
    scope = ["-n", namespace] if namespace else ["-A"]
    result = cluster.kubectl("--kubeconfig", str(identity.kubeconfig), "auth", "can-i", verb, resource, *scope,
                             check=False)
    return result.stdout.strip() == "yes"


def test_session_operator_runs_as_the_chart_service_account(cluster: Cluster, operator: Operator,
                                                            namespace: str) -> None:
    if operator.identity is None:
        pytest.skip("MODEL_TRAFFIC_OPERATOR_RBAC=admin: the operator runs as the cluster admin")
    identity = operator.identity
    assert operator.env["KUBECONFIG"] == str(identity.kubeconfig)
    whoami = cluster.kubectl("--kubeconfig", str(identity.kubeconfig), "auth", "whoami", "-o", "json")
    assert json.loads(whoami.stdout)["status"]["userInfo"]["username"] == identity.username
    # What the table grants, the API server grants; and nothing else that matters.
    for rule in WATCHED:
        for resource in rule.resources:
            qualified = f"{resource.split('/')[0]}.{rule.group}" if rule.group else resource.split("/")[0]
            sub = ["--subresource", resource.split("/")[1]] if "/" in resource else []
            for verb in rule.verbs:
                args = ["--kubeconfig", str(identity.kubeconfig), "auth", "can-i", verb, qualified, "-n", namespace,
                        *sub]
                assert cluster.kubectl(*args, check=False).stdout.strip() == "yes", (verb, resource)
    for verb in sorted(WRITE_VERBS):
        assert not can_i(cluster, identity, verb, "secrets", namespace), f"the operator may {verb} Secrets"
    for verb, resource in [
        ("update", "virtualmodels.modeltraffic.io"), ("create", "trafficconfigs.modeltraffic.io"),
        ("create", "deployments.apps"), ("list", "configmaps"), ("create", "pods"),
        ("deletecollection", "backends.gateway.envoyproxy.io"), ("get", "leases.coordination.k8s.io"),
        ("create", "rolebindings.rbac.authorization.k8s.io"),
    ]:
        assert not can_i(cluster, identity, verb, resource, namespace), f"the operator may {verb} {resource}"


# RBAC's refusal ("... is forbidden: User "system:serviceaccount:..." cannot list resource ...") and kopf's
# note when it gives up on one; not the 403 of a namespace being deleted, which other tests cause.
RBAC_REFUSAL = re.compile(r'forbidden: User \\?"[^"\\]*\\?" cannot |Not enough permissions')


def refusals(log: str, namespace: str) -> list[str]:
    """Lines of an operator log where RBAC refused it (pipeline/events.py logs only the reason: checked per
    namespace)."""
    return [line for line in log.splitlines() if RBAC_REFUSAL.search(line)
            or ("could not post event" in line and f" on {namespace}/" in line)]


def events_posted(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    events = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    return [e for e in events if e.get("reportingComponent") == "model-traffic-operator"]


def test_the_operator_is_never_refused_while_serving_all_kinds(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    """A refused watch only makes kopf log and retry; the log shows what the other tests could miss."""
    for text in (secret_yaml("key", {"apiKey": SECRET_VALUE}),
                 our_yaml("ManagedAIServiceBackend", "openai", """\
                     schema: {name: OpenAI}
                     endpoint: {fqdn: {hostname: api.openai.com, port: 443}}
                     credentials: {type: APIKey, secretRef: {name: key}}
                     quota: {service: {limit: 1000, duration: 1h}}
                     """),
                 our_yaml("VirtualModel", "gpt", """\
                     gatewayRefs: [{name: ai-gateway}]
                     backends: [{name: openai}]
                     rateLimit: {tenantHeader: x-tenant, requests: {limit: 10, unit: Minute}}
                     """)):
        cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=text)
    wait_ready(kube, namespace, "openai")
    wait_vm(kube, namespace, "gpt")
    refused = refusals(operator.log(), namespace)
    assert not refused, "the operator was refused:\n" + "\n".join(refused[:10])
    assert {e["involvedObject"]["kind"] for e in events_posted(cluster, namespace)} >= {
        "ManagedAIServiceBackend", "VirtualModel"}
    # What docs/gitops.md tells people to run for an object's Events (not `flux events`: Flux's kinds only).
    shown = cluster.kubectl("events", "--for", "virtualmodel/gpt", "-n", namespace).stdout
    assert "VirtualModel/gpt" in shown and "ManagedAIServiceBackend/openai" not in shown, shown


def test_namespaced_install_serves_its_namespaces_only(
    cluster: Cluster, kube: Kube, operator: Operator, namespaces: list[str], tmp_path: Path, gateway_class: str,
) -> None:
    """watchNamespaces: Roles in each, the Gateway read across namespaces; the operator works in it."""
    watched, gateway_ns, unwatched = namespaces
    stop_operator(operator)  # the session operator watches everything; this one must be alone
    scoped: Operator | None = None
    try:
        # The default gateway, in a namespace the operator does not watch, admitting routes from all namespaces.
        cluster.kubectl("apply", "-n", gateway_ns, "-f", "-", stdin=f"""\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: ai-gateway}}
spec:
  gatewayClassName: {gateway_class}
  listeners: [{{name: http, protocol: HTTP, port: 80, allowedRoutes: {{namespaces: {{from: All}}}}}}]
""")
        scoped = start_operator(cluster, tmp_path / "namespaced.log", MTO_NAMESPACES=watched,
                                MTO_DEFAULT_GATEWAY=f"{gateway_ns}/ai-gateway", MTO_RESYNC_SECONDS="300")
        identity = scoped.identity
        if identity is None:
            pytest.skip("MODEL_TRAFFIC_OPERATOR_RBAC=admin: the operator runs as the cluster admin")
        observer = f"{identity.release}-model-traffic-operator-observer"
        # What the operator itself is granted cluster-wide; the roles for people (aggregated into view/edit/admin,
        # bound to no one by the chart) grant the operator nothing.
        cluster_scoped = {(m["kind"], m["metadata"]["name"]) for m in identity.manifests
                          if m["kind"].startswith("Cluster") and not any(
                              label.startswith("rbac.authorization.k8s.io/aggregate-to-")
                              for label in (m["metadata"].get("labels") or {}))}
        assert cluster_scoped == {("ClusterRole", observer), ("ClusterRoleBinding", observer)}
        assert can_i(cluster, identity, "get", "secrets", watched)
        assert not can_i(cluster, identity, "get", "secrets", unwatched)
        assert not can_i(cluster, identity, "list", "gateways.gateway.networking.k8s.io", gateway_ns)

        for ns in (watched, unwatched):
            cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=secret_yaml("key", {"apiKey": SECRET_VALUE}))
            cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=our_yaml("ManagedAIServiceBackend", "openai", """\
                schema: {name: OpenAI}
                endpoint: {fqdn: {hostname: api.openai.com, port: 443}}
                credentials: {type: APIKey, secretRef: {name: key}}
                """))
        backend = wait_ready(kube, namespace=watched, name="openai")
        assert condition(backend, "CredentialsResolved")["status"] == "True"
        # No gatewayRefs: the default gateway, in a namespace the operator does not watch.
        cluster.kubectl("apply", "-n", watched, "-f", "-", stdin=our_yaml("VirtualModel", "gpt", """\
            backends: [{name: openai}]
            """))
        wait_vm(kube, watched, "gpt")
        # The unwatched namespace's backend is nobody's business.
        time.sleep(2)
        untouched = kube.get(MAISB, unwatched, "openai")
        assert untouched is not None and not (untouched.get("status") or {}).get("conditions")
        refused = refusals(scoped.log(), watched)
        assert not refused, "the namespaced operator was refused:\n" + "\n".join(refused[:10])
    finally:
        if scoped is not None:
            stop_operator(scoped)
        restarted = start_operator(cluster, operator.log_path, **{"MTO_METRICS_PORT": str(operator.metrics_port)})
        operator.process = restarted.process
        operator.identity = restarted.identity


def test_a_standby_replica_answers_the_charts_probes_and_serves_its_metrics(cluster: Cluster, namespace: str,
                                                                           tmp_path: Path) -> None:
    """The chart runs two replicas with liveness and readiness probes on /healthz: the standby must answer them."""
    leader = start_operator(cluster, tmp_path / "leader.log", MTO_LEADER_ELECT="true",
                            MTO_LEADER_ELECTION_NAMESPACE=namespace)
    health_port, standby_metrics_port = free_port(), free_port()
    with (tmp_path / "standby.log").open("wb") as log:
        standby = subprocess.Popen(
            [sys.executable, "-m", "model_traffic", "run", "--liveness-port", str(health_port)],
            env={**leader.env, "MTO_METRICS_PORT": str(standby_metrics_port)}, cwd=ROOT, stdout=log,
            stderr=subprocess.STDOUT,
        )

    def standby_metrics() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{standby_metrics_port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    try:
        wait_for(lambda: "became leader" in leader.log(), 30, "the first replica to lead")
        wait_for(lambda: "waiting for leadership" in (tmp_path / "standby.log").read_text(), 30,
                 "the standby to wait for the Lease")
        # Both are scraped; the leader metric tells them apart (the chart's ModelTrafficOperatorDown reads it).
        assert "model_traffic_operator_leader 1.0" in leader.metrics()
        assert "model_traffic_operator_leader 0.0" in standby_metrics()
        for text in (leader.metrics(), standby_metrics()):
            assert f'model_traffic_operator_build_info{{version="{version}"}} 1.0' in text

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=2) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        # The chart's liveness probe gives a container 10 s, then fails it after 3 misses 10 s apart.
        wait_for(healthy, 15, "the standby's /healthz")
        # Taking over, it hands the port to kopf's own endpoint: still healthy, now as the leader.
        leader.process.kill()
        leader.process.wait()
        wait_for(lambda: "became leader" in (tmp_path / "standby.log").read_text(), 40, "the standby to take over")
        wait_for(healthy, 30, "the new leader's /healthz (kopf's)")
        assert "model_traffic_operator_leader 1.0" in standby_metrics()
    finally:
        for process in (standby, leader.process):
            process.kill()
            process.wait()


# --- make release --------------------------------------------------------------------------------------------

def test_release_artifacts_install_on_the_api_server(cluster: Cluster, namespaces: list[str], tmp_path: Path) -> None:
    """What `make release` writes: the chart and the CRDs chart packaged, install.yaml that the API server takes
    (server-side dry run), every part naming the image pinned to the project version."""
    from model_traffic_dev.localcluster.build import ensure_helm
    from tools import release  # tools/ is no package: a namespace package from the repository root

    release_ns = namespaces[0]
    out = tmp_path / "dist"
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "release.py"), "--helm", str(ensure_helm()),
                             "--out", str(out), "--image-repository", "registry.example/mto",
                             "--namespace", release_ns], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    version = release.project_version()
    image = f"registry.example/mto:{version}"
    chart_tgz = out / f"model-traffic-operator-{version}.tgz"
    crds_tgz = out / f"model-traffic-operator-crds-{version}.tgz"
    assert (out / "image.txt").read_text().strip() == image
    sums: dict[str, str] = {}
    for line in (out / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ")
        sums[name] = digest
    assert set(sums) == {chart_tgz.name, crds_tgz.name, "install.yaml", "image.txt"}
    for name, digest in sums.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest, name

    # The packaged chart: lints, carries the CRDs, and runs the pinned image with its default values.
    helm("lint", "--strict", str(chart_tgz))
    shown = yaml.safe_load(helm("show", "chart", str(chart_tgz)).stdout)
    assert shown["version"] == shown["appVersion"] == version
    packaged = parse_manifests(helm("template", "mto", str(chart_tgz), "--namespace", release_ns,
                                    "--include-crds").stdout)
    assert of(packaged, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"] == image
    generated = {yaml.safe_load(p.read_text())["metadata"]["name"]: yaml.safe_load(p.read_text())
                 for p in (ROOT / "crds").glob("*.yaml")}
    assert {m["metadata"]["name"] for m in packaged if m["kind"] == "CustomResourceDefinition"} == set(generated)

    # The CRDs chart: the same CRDs as templates (helm upgrade upgrades them), kept when it is uninstalled.
    crds = parse_manifests(helm("template", "crds", str(crds_tgz)).stdout)
    assert {m["metadata"]["name"] for m in crds} == set(generated)
    for crd in crds:
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert crd["spec"] == generated[crd["metadata"]["name"]]["spec"]

    # install.yaml: the CRDs, the Namespace, the rendered chart; the API server accepts every object.
    manifests = parse_manifests((out / "install.yaml").read_text())
    assert [m["metadata"]["name"] for m in manifests if m["kind"] == "CustomResourceDefinition"] == sorted(generated)
    assert of(manifests, "Namespace")["metadata"]["name"] == release_ns
    assert of(manifests, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"] == image
    namespaced = [m for m in manifests if m["kind"] not in (
        "CustomResourceDefinition", "Namespace", "ClusterRole", "ClusterRoleBinding")]
    assert {m["metadata"]["namespace"] for m in namespaced} == {release_ns}
    # --force-conflicts: the session's own chart install (release "model-traffic-operator", as in install.yaml)
    # owns the ClusterRoleBinding of that name with other subjects; a dry run changes nothing either way.
    applied = cluster.kubectl("apply", "--server-side", "--dry-run=server", "--force-conflicts",
                              "--field-manager=release-test", "-f", str(out / "install.yaml"))
    assert len(applied.stdout.strip().splitlines()) == len(manifests), applied.stdout


def test_the_crds_chart_adopts_upgrades_and_keeps_the_crds(cluster: Cluster, namespaces: list[str],
                                                           tmp_path: Path) -> None:
    """docs/upgrade.md, way A, on the real API server: adopt the CRDs the stack installed without Helm, let
    `helm upgrade` change them (what the chart's crds/ never does), uninstall, and find them still there."""
    import tarfile

    from model_traffic_dev.localcluster.build import ensure_helm
    from tools import release

    release_ns = namespaces[0]
    kubeconfig = ("--kubeconfig", str(cluster.kubeconfig))
    names = sorted(yaml.safe_load(p.read_text())["metadata"]["name"] for p in (ROOT / "crds").glob("*.yaml"))
    version = release.project_version()
    out = tmp_path / "dist"
    release.release(str(ensure_helm()), out, "registry.example/mto", release_ns)
    # The adoption docs/upgrade.md gives, for CRDs that belong to no release.
    for name in names:
        cluster.kubectl("label", "crd", name, "app.kubernetes.io/managed-by=Helm", "--overwrite")
        cluster.kubectl("annotate", "crd", name, "--overwrite", "meta.helm.sh/release-name=model-traffic-operator-crds",
                        f"meta.helm.sh/release-namespace={release_ns}")
    chart = out / f"model-traffic-operator-crds-{version}.tgz"
    helm("upgrade", "--install", "model-traffic-operator-crds", str(chart), "-n", release_ns, *kubeconfig)
    try:
        for name in names:
            crd = json.loads(cluster.kubectl("get", "crd", name, "-o", "json").stdout)
            assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        # A next version of the chart changes a CRD: helm upgrade writes the change.
        with tarfile.open(chart) as archive:
            archive.extractall(tmp_path / "next", filter="data")
        changed = tmp_path / "next" / "model-traffic-operator-crds" / "files" / f"{names[0]}.yaml"
        crd = yaml.safe_load(changed.read_text())
        crd["metadata"].setdefault("labels", {})["example.com/upgraded"] = "yes"
        changed.write_text(yaml.safe_dump(crd, sort_keys=False))
        helm("upgrade", "model-traffic-operator-crds", str(tmp_path / "next" / "model-traffic-operator-crds"),
             "-n", release_ns, *kubeconfig)
        upgraded = json.loads(cluster.kubectl("get", "crd", names[0], "-o", "json").stdout)
        assert upgraded["metadata"]["labels"]["example.com/upgraded"] == "yes"
    finally:
        helm("uninstall", "model-traffic-operator-crds", "-n", release_ns, *kubeconfig)
    # Kept: uninstalling the chart does not delete the CRDs (and every object with them).
    for name in names:
        cluster.kubectl("get", "crd", name)
