"""Rollout actions that a GitOps sync does not revert (issue #14 item 2), on the real API server, operator, KServe
and AI Gateway: promote, abort, retry, pause and resume are requests in the TrafficConfig's status
(status.requests), written through the status subresource; a sync (Git's YAML applied again) between the actions
changes nothing of what they did. And the chart's roles for people, aggregated by the controller-manager's
clusterrole-aggregation controller into Kubernetes' view and edit roles, answered by the API server's authorizer
(SubjectAccessReview through `kubectl auth can-i --as`)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from model_traffic import kube as k
from model_traffic.kube import Kube
from tests.cluster.test_trafficconfig import (
    TEMPLATE,
    apply,
    events,
    model_traffic,
    status,
    traffic_config,
    wait_phase,
    wait_served,
    wait_weights,
    weights,
)
from tests.conftest import Cluster, Operator, helm_template, parse_manifests, wait_for

pytestmark = pytest.mark.cluster


def git_version(namespace: str) -> str:
    """What Git holds: applied once, and again for each simulated sync."""
    return traffic_config("llama", f"""\
        gatewayRefs: [{{name: ai-gateway, namespace: {namespace}}}]
    """, TEMPLATE, """\
        stable: {version: v1}
        canary: {version: v2}
        analysis: {interval: 2s, stepWeights: [10, 20, 30, 40, 50, 60, 70, 80, 90], promotion: Manual}
    """)


def sync(cluster: Cluster, namespace: str) -> None:
    """Argo CD / Flux: Git's version applied again (server-side, as both do); the status is not theirs."""
    cluster.kubectl("apply", "--server-side", "--field-manager=argocd-controller", "--force-conflicts",
                    "-n", namespace, "-f", "-", stdin=git_version(namespace))


def spec_of(kube: Kube, namespace: str) -> dict[str, Any]:
    return dict((kube.get(k.TRAFFIC_CONFIG, namespace, "llama") or {})["spec"])


def test_actions_are_status_requests_that_a_sync_does_not_revert(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    sync(cluster, namespace)
    wait_served(kube, namespace, "llama-v1")
    wait_served(kube, namespace, "llama-v2")
    wait_weights(kube, namespace, "llama", {"llama-v1": 90, "llama-v2": 10})
    git_spec = spec_of(kube, namespace)

    # abort: all traffic back to v1, the candidate retired; a sync does not start it again.
    model_traffic(cluster, "abort", "llama", "-n", namespace)
    wait_phase(kube, namespace, "llama", "Failed")
    wait_weights(kube, namespace, "llama", {"llama-v1": 100})
    sync(cluster, namespace)
    time.sleep(5)  # more than two intervals: a rollout started again would have taken a step
    assert status(kube, namespace, "llama")["phase"] == "Failed"
    assert weights(kube, namespace, "llama") == {"llama-v1": 100}
    assert "Aborted" in [reason for reason, _ in events(cluster, namespace, "llama")]

    # retry: the same candidate rolls out again from its first step.
    model_traffic(cluster, "retry", "llama", "-n", namespace)
    wait_for(lambda: (status(kube, namespace, "llama").get("canaryWeight") or 0) >= 20, 60, "the retried rollout")

    # pause holds through a sync; resume goes on.
    model_traffic(cluster, "pause", "llama", "-n", namespace)
    paused = wait_phase(kube, namespace, "llama", "Paused")
    sync(cluster, namespace)
    time.sleep(5)
    assert status(kube, namespace, "llama")["phase"] == "Paused"
    assert status(kube, namespace, "llama")["canaryWeight"] == paused["canaryWeight"]
    model_traffic(cluster, "resume", "llama", "-n", namespace)
    wait_for(lambda: (status(kube, namespace, "llama").get("canaryWeight") or 0) > paused["canaryWeight"], 30,
             "the resumed rollout to go on")

    # promote skips the remaining steps (or ends the wait for a person: promotion Manual); a sync of Git (which
    # still says stable v1, canary v2) keeps v2.
    model_traffic(cluster, "promote", "llama", "-n", namespace)
    done = wait_phase(kube, namespace, "llama", "Succeeded")
    assert done["stableVersion"] == "v2"
    wait_weights(kube, namespace, "llama", {"llama-v2": 100})
    sync(cluster, namespace)
    time.sleep(3)
    assert status(kube, namespace, "llama")["stableVersion"] == "v2"
    assert weights(kube, namespace, "llama") == {"llama-v2": 100}

    # Every request was acted on exactly once (one Event each), and none of them touched the spec.
    final = status(kube, namespace, "llama")
    assert final["handledRequests"] == final["requests"]
    assert set(final["requests"]) == {"abort", "retry", "pause", "resume", "promote"}
    reasons = [reason for reason, _ in events(cluster, namespace, "llama")]
    assert [reasons.count(r) for r in ("Aborted", "Retried", "Resumed", "Promoted")] == [1, 1, 1, 1], reasons
    refused = [message for reason, message in events(cluster, namespace, "llama") if reason == "RequestRefused"]
    assert refused == []
    assert spec_of(kube, namespace) == git_spec

    # The one-screen view reads it all back from the API server: the status and the Events.
    view = model_traffic(cluster, "get", "llama", "-n", namespace)
    assert "Stable:      v2" in view and "Requests:    none pending" in view
    assert any(line.split()[:3] == ["v2", "stable", "100%"] for line in view.splitlines()), view
    assert "Promoted" in view


# --- the chart's roles for people ---------------------------------------------------------------------------

PEOPLE_ROLES = "templates/aggregated-roles.yaml"


@pytest.fixture
def people_roles(cluster: Cluster) -> Iterator[str]:
    """The chart's aggregated ClusterRoles under a release of their own; yields its full name."""
    release = f"people-{uuid.uuid4().hex[:6]}"
    manifests = parse_manifests(helm_template({}, release=release, extra=("--show-only", PEOPLE_ROLES)))
    assert [m["kind"] for m in manifests] == ["ClusterRole"] * 3
    cluster.kubectl("apply", "--server-side", "--field-manager=helm", "-f", "-", stdin=yaml.safe_dump_all(manifests))
    fullname = manifests[0]["metadata"]["name"].removesuffix("-view")
    yield fullname
    cluster.kubectl("delete", "clusterrole", *(m["metadata"]["name"] for m in manifests), "--ignore-not-found")


def bind(cluster: Cluster, namespace: str, user: str, cluster_role: str) -> None:
    cluster.kubectl("create", "rolebinding", f"{user}-{cluster_role}"[:63], f"--clusterrole={cluster_role}",
                    f"--user={user}", "-n", namespace)


def can_i(cluster: Cluster, user: str, verb: str, resource: str, namespace: str) -> bool:
    """The API server's authorizer answers (a SubjectAccessReview, through kubectl's impersonation)."""
    resource, _, sub = resource.partition("/")
    args = ["auth", "can-i", verb, f"{resource}.modeltraffic.io", "-n", namespace, "--as", user]
    result = cluster.kubectl(*args, *(["--subresource", sub] if sub else []), check=False)
    return result.stdout.strip() == "yes"


KINDS = ("managedaiservicebackends", "virtualmodels", "trafficconfigs")


def test_people_roles_aggregate_into_view_and_edit_and_promote_is_only_the_actions(
    cluster: Cluster, namespace: str, people_roles: str
) -> None:
    bind(cluster, namespace, "viewer", "view")  # Kubernetes' own roles: ours are aggregated into them
    bind(cluster, namespace, "editor", "edit")
    bind(cluster, namespace, "releaser", f"{people_roles}-promote")

    def aggregated() -> bool | None:
        return can_i(cluster, "viewer", "list", "trafficconfigs", namespace) or None

    wait_for(aggregated, 30, "the clusterrole-aggregation controller to fold the chart's view role into view")
    expected: dict[tuple[str, str], set[str]] = {}
    for kind in KINDS:
        for verb in ("get", "list", "watch"):
            expected[(verb, kind)] = {"viewer", "editor"}
        for verb in ("create", "update", "patch", "delete"):
            expected[(verb, kind)] = {"editor"}
    expected[("patch", "trafficconfigs/status")] = {"editor", "releaser"}
    expected[("update", "trafficconfigs/status")] = set()
    expected[("patch", "virtualmodels/status")] = set()
    for (verb, resource), allowed in sorted(expected.items()):
        for user in ("viewer", "editor", "releaser"):
            assert can_i(cluster, user, verb, resource, namespace) == (user in allowed), (user, verb, resource)


def service_account_kubeconfig(cluster: Cluster, namespace: str, name: str) -> Path:
    """A kubeconfig that authenticates as a new ServiceAccount (a token), as tests/conftest.py does for the chart's."""
    cluster.kubectl("create", "serviceaccount", name, "-n", namespace)
    token = cluster.kubectl("create", "token", name, "-n", namespace, "--duration=1h").stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    server = next(c for c in admin["clusters"] if c["name"] == context["cluster"])
    path = cluster.workdir / f"{namespace}-{name}.kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "clusters": [server],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": server["name"], "user": name, "namespace": namespace}}],
        "current-context": name,
    }))
    path.chmod(0o600)
    return path


def test_the_promote_role_is_enough_for_the_cli_actions(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str, people_roles: str
) -> None:
    """`model-traffic pause` and `resume`, run as someone bound to the promote role only, are accepted (the CLI only
    patches the status subresource, it reads nothing) and acted on; the same person can neither read nor edit the
    spec."""
    apply(cluster, namespace, git_version(namespace))
    wait_served(kube, namespace, "llama-v2")
    wait_weights(kube, namespace, "llama", {"llama-v1": 90, "llama-v2": 10})
    kubeconfig = service_account_kubeconfig(cluster, namespace, "releaser")
    user = f"system:serviceaccount:{namespace}:releaser"
    cluster.kubectl("create", "rolebinding", "releaser", f"--clusterrole={people_roles}-promote",
                    f"--serviceaccount={namespace}:releaser", "-n", namespace)
    wait_for(lambda: can_i(cluster, user, "patch", "trafficconfigs/status", namespace) or None, 30,
             "the binding to take effect")
    assert not can_i(cluster, user, "get", "trafficconfigs", namespace)

    def as_releaser(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "model_traffic", *args], capture_output=True, text=True,
                              env={"KUBECONFIG": str(kubeconfig), "PATH": "/usr/bin:/bin"}, timeout=60, check=False)

    paused = as_releaser("pause", "llama", "-n", namespace)
    assert paused.returncode == 0, paused.stderr
    wait_phase(kube, namespace, "llama", "Paused")
    resumed = as_releaser("resume", "llama", "-n", namespace)
    assert resumed.returncode == 0, resumed.stderr
    wait_for(lambda: status(kube, namespace, "llama").get("phase") == "Progressing" or None, 30, "resumed")
    refused = as_releaser("set-weight", "llama", "30", "-n", namespace)  # a spec edit: not this role's
    assert refused.returncode != 0 and "403" in refused.stderr, refused.stderr
    assert "weight" not in (kube.get(k.TRAFFIC_CONFIG, namespace, "llama") or {})["spec"]["canary"]
