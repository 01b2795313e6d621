"""An llmRequestCosts CEL expression the AI Gateway cannot compile stops the VirtualModel with the parser's message
(the API server cannot parse CEL held in a string; the AI Gateway controller would only log it), and nothing is
written for it; fixing the expression heals it."""

from __future__ import annotations

import pytest

from model_traffic import kube as k
from model_traffic.kube import Kube
from tests.cluster.test_virtualmodel import wait_vm
from tests.conftest import Cluster, Operator, condition, our_yaml

pytestmark = pytest.mark.cluster


def virtual_model(cost: str) -> str:
    return our_yaml("VirtualModel", "costed", f"""\
        backends: [{{name: somewhere}}]
        llmRequestCosts:
        - {{metadataKey: cost, type: CEL, cel: '{cost}'}}
        """)


def test_a_cost_expression_that_does_not_parse_is_stalled_with_the_parser_message_then_heals(
    cluster: Cluster, kube: Kube, operator: Operator, namespace: str
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=virtual_model("input_tokens +* 2u"))
    vm = wait_vm(kube, namespace, "costed", "False", "InvalidSpec")
    message = condition(vm, "Stalled")["message"]
    assert condition(vm, "Stalled")["status"] == "True"
    assert message.startswith("spec.llmRequestCosts.0.cel: "), message
    assert "the CEL expression does not parse: syntax error at line 1" in message, message
    assert kube.get(k.AI_GATEWAY_ROUTE, namespace, "costed") is None, "a route with a cost the gateway drops"

    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=virtual_model("input_tokens * 2u + output_tokens"))
    healed = wait_vm(kube, namespace, "costed", "False")  # no Ready backend, but the spec is taken
    assert condition(healed, "Ready")["reason"] != "InvalidSpec"
    route = kube.get(k.AI_GATEWAY_ROUTE, namespace, "costed")
    assert route is None or {"metadataKey": "cost", "type": "CEL", "cel": "input_tokens * 2u + output_tokens"} in \
        route["spec"]["llmRequestCosts"]
