"""Rollout actions that a GitOps sync does not revert (issue #14 item 2), on the real API server, operator, KServe
and AI Gateway: promote, abort, retry, pause and resume are requests in the TrafficConfig's status
(status.requests), written through the status subresource; a sync (Git's YAML applied again) between the actions
changes nothing of what they did. And the chart's roles for people, aggregated by the controller-manager's
clusterrole-aggregation controller into Kubernetes' view and edit roles, answered by the API server's authorizer
(SubjectAccessReview through `kubectl auth can-i --as`)."""

from __future__ import annotations

import subprocess
import sys
import threading
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
from tests.conftest import Cluster, Operator, condition, helm_template, parse_manifests, wait_for
from tests.support.webhooks import WebhookServer

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


# --- Git holds the release (issue #14 item 1): one commit per release, actions on top, syncs in between ---------

def release_commit(namespace: str, version: str, hook_url: str, promotion: str = "Automatic") -> str:
    """The TrafficConfig as a GitOps user commits it: the release wanted, and how it rolls out."""
    return traffic_config("llama", f"""\
        gatewayRefs: [{{name: ai-gateway, namespace: {namespace}}}]
    """, TEMPLATE, f"""\
        release: {{version: {version}, storageUri: "hf://org/llama:{version}"}}
        analysis:
          interval: 2s
          threshold: 2
          stepWeights: [20, 50]
          promotion: {promotion}
          webhooks: [{{name: load, type: Rollout, url: "{hook_url}"}}]
    """)


def sync_commit(cluster: Cluster, namespace: str, commit: str) -> None:
    """Argo CD (automated sync, self-heal): the Git version applied server-side under its own field manager,
    taking over any field someone else set (--force-conflicts), as its ServerSideApply=true sync option does."""
    cluster.kubectl("apply", "--server-side", "--field-manager=argocd-controller", "--force-conflicts",
                    "-n", namespace, "-f", "-", stdin=commit)


@pytest.fixture
def webhook_server() -> Iterator[WebhookServer]:
    with WebhookServer() as server:
        yield server


def test_a_release_a_rollback_a_retry_and_a_manual_promotion_by_commits_and_actions_only(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str, webhook_server: WebhookServer
) -> None:
    """The done-when of issue #14: a GitOps user commits one release at a time and acts with model-traffic
    (status requests); a sync between every two steps reverts nothing: the stable after a promotion stays, a
    rollback stays rolled back, and the actions stay acted on."""
    hook = webhook_server.url("/load")

    def settled_on(stable: str, phase: str = "Succeeded") -> dict[str, Any]:
        current = wait_phase(kube, namespace, "llama", phase, timeout=90)
        assert current["stableVersion"] == stable and current["stable"]["version"] == stable, current
        return current

    def holds(stable: str, phase: str, seconds: float = 6) -> None:
        """A sync now, then more than two intervals later nothing has moved."""
        sync_commit(cluster, namespace, git)
        time.sleep(seconds)
        now = status(kube, namespace, "llama")
        assert (now["phase"], now["stableVersion"]) == (phase, stable), now
        assert weights(kube, namespace, "llama") == {f"llama-{stable}": 100}

    # Commit 1: the first release is stable at once (no rollout).
    git = release_commit(namespace, "v1", hook)
    sync_commit(cluster, namespace, git)
    wait_served(kube, namespace, "llama-v1")
    first = settled_on("v1")
    assert "candidateVersion" not in first and first["stable"]["storageUri"] == "hf://org/llama:v1"
    wait_weights(kube, namespace, "llama", {"llama-v1": 100})

    # Commit 2: release v2 rolls out and, passing its checks, is stable; Git needs no second commit.
    git = release_commit(namespace, "v2", hook)
    sync_commit(cluster, namespace, git)
    wait_for(lambda: status(kube, namespace, "llama").get("candidateVersion") == "v2" or None, 30, "v2's rollout")
    wait_served(kube, namespace, "llama-v2")
    settled_on("v2")
    wait_weights(kube, namespace, "llama", {"llama-v2": 100})
    wait_for(lambda: kube.get(k.INFERENCE_SERVICE, namespace, "llama-v1") is None, 60, "v1 retired")
    holds("v2", "Succeeded")
    assert kube.get(k.INFERENCE_SERVICE, namespace, "llama-v1") is None  # the sync did not bring v1 back

    # Commit 3: release v3, whose checks fail: rolled back to v2, and it stays so through syncs of Git (which
    # still names v3): no check runs again, the object says why (Stalled, RolledBack).
    webhook_server.respond("/load", 500, body={"error": "p95 too high"})
    git = release_commit(namespace, "v3", hook, promotion="Manual")
    sync_commit(cluster, namespace, git)
    failed = settled_on("v2", "Failed")
    assert failed["candidateVersion"] == "v3" and failed["stable"]["storageUri"] == "hf://org/llama:v2"
    wait_weights(kube, namespace, "llama", {"llama-v2": 100})
    # The progress is written first, the conditions after the children: wait for them.
    wait_for(lambda: condition(kube.get(k.TRAFFIC_CONFIG, namespace, "llama"), "Stalled").get("reason") == "RolledBack"
             or None, 30, "Stalled=True, RolledBack")
    assert condition(kube.get(k.TRAFFIC_CONFIG, namespace, "llama"), "Stalled")["status"] == "True"
    checks = len(webhook_server.calls("/load"))
    holds("v2", "Failed")
    assert len(webhook_server.calls("/load")) == checks

    # The retry action (a status request): v3 rolls out again from its first step, and a sync does not undo it.
    webhook_server.respond("/load", 200)
    model_traffic(cluster, "retry", "llama", "-n", namespace)
    wait_for(lambda: status(kube, namespace, "llama").get("phase") in ("Progressing", "WaitingPromotion") or None,
             60, "the retried rollout")
    sync_commit(cluster, namespace, git)
    waiting = wait_phase(kube, namespace, "llama", "WaitingPromotion", timeout=90)
    assert (waiting["stableVersion"], waiting["candidateVersion"], waiting["canaryWeight"]) == ("v2", "v3", 50)
    sync_commit(cluster, namespace, git)
    time.sleep(5)
    assert status(kube, namespace, "llama")["phase"] == "WaitingPromotion"

    # The manual promotion (an action): v3 is stable; the sync of Git (release v3) keeps it.
    model_traffic(cluster, "promote", "llama", "-n", namespace)
    settled_on("v3")
    wait_weights(kube, namespace, "llama", {"llama-v3": 100})
    holds("v3", "Succeeded")

    # Each step happened once; the spec is Git's alone (no operator or CLI field in it).
    reasons = [reason for reason, _ in events(cluster, namespace, "llama")]
    assert [reasons.count(r) for r in ("RolledBack", "Retried", "Promoted")] == [1, 1, 2], reasons
    assert "Aborted" not in reasons and "RolloutReset" not in reasons, reasons
    final = kube.get(k.TRAFFIC_CONFIG, namespace, "llama") or {}
    spec_managers = {e["manager"] for e in final["metadata"]["managedFields"]
                     if not e.get("subresource") and "f:spec" in (e.get("fieldsV1") or {})}
    assert spec_managers == {"argocd-controller"}, spec_managers
    assert final["status"]["stable"] == {"version": "v3", "storageUri": "hf://org/llama:v3"}


def test_an_object_in_the_deprecated_form_moved_to_a_release_mid_rollout_goes_on_without_reverting(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    """docs/upgrade.md's move, on the real stack: Git held stable v1 / canary v2 (the deprecated form) and the
    rollout is under way; the commit that replaces them by release v2 (the candidate's entry) is synced. The
    rollout neither restarts nor reverts: the weight never goes down, one RolloutStarted, no RolloutReset."""
    sync(cluster, namespace)  # git_version: the deprecated form, a canary stepping every 2s, promotion Manual
    wait_served(kube, namespace, "llama-v2")
    wait_for(lambda: weights(kube, namespace, "llama").get("llama-v2", 0) >= 20, 60, "the rollout under way")
    recorded = wait_for(lambda: status(kube, namespace, "llama").get("stable"), 30, "status.stable recorded")
    assert recorded == {"version": "v1"} and status(kube, namespace, "llama")["candidate"] == {"version": "v2"}

    seen: list[int] = []
    stop = threading.Event()

    def watch_weights() -> None:
        while not stop.is_set():
            current = weights(kube, namespace, "llama")
            seen.append(current.get("llama-v2", 0))
            assert set(current) <= {"llama-v1", "llama-v2"}, current
            time.sleep(0.2)

    watcher = threading.Thread(target=watch_weights, daemon=True)
    watcher.start()
    try:
        moved = "".join(line.replace("canary: {version: v2}", "release: {version: v2}")
                        for line in git_version(namespace).splitlines(keepends=True)
                        if line.strip() != "stable: {version: v1}")
        assert "release: {version: v2}" in moved and "stable:" not in moved and "canary:" not in moved
        sync_commit(cluster, namespace, moved)
        spec = spec_of(kube, namespace)
        assert "stable" not in spec and "canary" not in spec and spec["release"] == {"version": "v2"}
        waiting = wait_phase(kube, namespace, "llama", "WaitingPromotion", timeout=90)
    finally:
        stop.set()
        watcher.join()
    assert (waiting["stableVersion"], waiting["candidateVersion"], waiting["canaryWeight"]) == ("v1", "v2", 90)
    assert seen == sorted(seen) and min(seen) >= 20, seen  # never back to a lower step, never to v1 alone
    model_traffic(cluster, "promote", "llama", "-n", namespace)
    wait_phase(kube, namespace, "llama", "Succeeded")
    sync_commit(cluster, namespace, moved)
    time.sleep(3)
    assert status(kube, namespace, "llama")["stableVersion"] == "v2"
    assert weights(kube, namespace, "llama") == {"llama-v2": 100}
    reasons = [reason for reason, _ in events(cluster, namespace, "llama")]
    assert reasons.count("RolloutStarted") == 1 and "RolloutReset" not in reasons, reasons


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
