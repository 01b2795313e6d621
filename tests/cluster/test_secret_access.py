"""Least privilege on Secrets (issue #12 item 8): the chart lets the operator GET a Secret by name, nothing else.

It can neither list nor watch Secrets (so it never receives a stream of every Secret's data, in any namespace),
and the operator, running with exactly that RBAC, still checks a backend's credentials Secret and heals when the
Secret is created or fixed. The API server itself answers: SubjectAccessReviews for the chart's ServiceAccount,
and ``kubectl auth can-i`` with its token.
"""

from __future__ import annotations

import kubernetes
import pytest

from model_traffic.kube import Kube
from tests.cluster.test_backend import OPENAI, backend_yaml, secret_yaml, wait_ready
from tests.cluster.test_chart import can_i
from tests.conftest import Cluster, Operator

pytestmark = pytest.mark.cluster


def allowed(kube: Kube, user: str, verb: str, namespace: str | None, name: str | None = None) -> bool:
    """The API server's own answer for the user: a SubjectAccessReview."""
    review = kubernetes.client.V1SubjectAccessReview(spec=kubernetes.client.V1SubjectAccessReviewSpec(
        user=user, groups=["system:serviceaccounts", "system:authenticated"],
        resource_attributes=kubernetes.client.V1ResourceAttributes(
            verb=verb, resource="secrets", namespace=namespace, name=name)))
    answer = kubernetes.client.AuthorizationV1Api(kube.api_client).create_subject_access_review(review)
    return bool(answer.status.allowed)


def test_the_operator_may_only_get_secrets_by_name_and_still_heals_a_backend(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    if operator.identity is None:
        pytest.skip("MODEL_TRAFFIC_OPERATOR_RBAC=admin: the operator runs as the cluster admin")
    user = operator.identity.username
    for scope in (namespace, None):
        for verb in ("list", "watch"):
            assert not allowed(kube, user, verb, scope), f"the chart lets the operator {verb} Secrets ({scope})"
    assert allowed(kube, user, "get", namespace, "openai-key")
    assert can_i(cluster, operator.identity, "get", "secrets/openai-key", namespace)
    for verb in ("list", "watch", "create", "update", "patch", "delete", "deletecollection"):
        assert not can_i(cluster, operator.identity, verb, "secrets", namespace), f"kubectl auth can-i {verb}"
        assert not can_i(cluster, operator.identity, verb, "secrets", None), f"kubectl auth can-i {verb} -A"

    # With only that, the operator reads the Secret a backend names: missing, then without the key, then fixed.
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=backend_yaml("openai", OPENAI))
    wait_ready(kube, namespace, "openai", "False", "SecretNotFound")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=secret_yaml("openai-key", {"token": "x"}))
    wait_ready(kube, namespace, "openai", "False", "SecretKeyMissing", timeout=40)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=secret_yaml("openai-key", {"apiKey": "x"}))
    wait_ready(kube, namespace, "openai", timeout=40)
    refused = [line for line in operator.log().splitlines() if "secrets" in line and "forbidden" in line]
    assert not refused, "the operator asked for more than a GET:\n" + "\n".join(refused[:5])
