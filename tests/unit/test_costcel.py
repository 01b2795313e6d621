"""llmRequestCosts CEL: refused when read if the AI Gateway's compile-and-dummy-evaluate would refuse it
(envoyproxy/ai-gateway v1.0.0 internal/llmcostcel/cel.go NewProgram)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from model_traffic.kinds.virtualmodel.costcel import problem
from model_traffic.kinds.virtualmodel.spec import VirtualModelSpec
from model_traffic.pipeline.runtime import invalid_spec


@pytest.mark.parametrize("expression", [
    "total_tokens", "input_tokens * 2u + output_tokens", 'model == "llama" ? total_tokens : 0u',
    "cached_input_tokens + cache_creation_input_tokens + reasoning_tokens", "size(backend)",
])
def test_expressions_the_ai_gateway_compiles_pass(expression: str) -> None:
    assert problem(expression) is None


@pytest.mark.parametrize(("expression", "why"), [
    ("total_tokens +", "does not parse: syntax error at line 1, column 14"),
    ("(((", "does not parse"),
    ("tokens * 2u", "undeclared reference to 'tokens' (the variables are model, backend"),
    ("total_tokens / input_tokens", "fails with every token count 0: modulus or divide by zero"),
    ('"expensive"', "must give an integer (a cost)"),
    ("true", "must give an integer (a cost)"),
    ("0 - 5", "negative cost (-5)"),
])
def test_expressions_the_ai_gateway_refuses_are_refused_with_the_reason(expression: str, why: str) -> None:
    found = problem(expression)
    assert found is not None and why in found, found


def test_a_virtual_model_with_a_cost_that_does_not_parse_is_stalled_with_the_parser_message() -> None:
    spec = {"backends": [{"name": "b"}],
            "llmRequestCosts": [{"metadataKey": "k", "type": "CEL", "cel": "input_tokens +* 2"}]}
    with pytest.raises(ValidationError) as caught:
        VirtualModelSpec.model_validate(spec)
    result = invalid_spec(caught.value)
    assert (result.verdict.state, result.verdict.reason) == ("Stalled", "InvalidSpec")
    assert result.verdict.message.startswith("spec.llmRequestCosts.0.cel: ")
    assert "the CEL expression does not parse: syntax error at line 1, column" in result.verdict.message
