"""The check Envoy AI Gateway makes of an ``llmRequestCosts`` CEL expression, made before we hand it over.

The AI Gateway controller compiles each CEL cost when it builds a Gateway's filter configuration
(``internal/controller/gateway.go``, ``validateCELExpression`` -> ``internal/llmcostcel/cel.go``, ``NewProgram``
in envoyproxy/ai-gateway v1.0.0): with the variables below declared, then one evaluation with dummy values
(strings "dummy", every token count 0) whose result must be a non-negative integer. An expression that fails
there only makes the controller log an error, so the route is accepted and its costs are silently not counted.
A CRD's CEL rules cannot parse CEL held in a string, so the operator checks it when it reads the spec (a
VirtualModel with such an expression is ``Stalled``/``InvalidSpec`` with the parser's message), using
cel-python, a CEL implementation in Python: parse errors, undeclared names and the dummy evaluation's errors
(a division by a token count, a string result) are caught as upstream catches them; cel-go's static type
check is stricter than this dynamic one about mixing int and uint (``output_tokens * 2`` passes here, upstream
wants ``2u``).
"""

from __future__ import annotations

import functools
from typing import Any

STRING_VARIABLES = ("model", "backend", "route_name")
TOKEN_VARIABLES = ("input_tokens", "cached_input_tokens", "cache_creation_input_tokens", "output_tokens",
                   "total_tokens", "reasoning_tokens")


@functools.cache
def _environment() -> Any:
    import celpy  # imported on first use: only VirtualModels with CEL costs need it

    return celpy.Environment()


def problem(expression: str) -> str | None:
    """Why the AI Gateway would refuse ``expression``, or None when it compiles and evaluates to an integer."""
    from celpy import celtypes
    from celpy.celparser import CELParseError
    from celpy.evaluation import CELEvalError

    environment = _environment()
    try:
        program = environment.program(environment.compile(expression))
    except CELParseError as error:
        line, column = getattr(error, "line", None), getattr(error, "column", None)
        if not line or not column:
            return f"the CEL expression does not parse: {str(error.args[0]).splitlines()[0]}"
        text = expression.splitlines()[line - 1] if expression.splitlines() else ""
        return (f"the CEL expression does not parse: syntax error at line {line}, column {column} "
                f"({text[:column - 1]!r} is followed by {text[column - 1:] or 'the end'!r})")
    activation: dict[str, Any] = {name: celtypes.StringType("dummy") for name in STRING_VARIABLES}
    activation |= {name: celtypes.UintType(0) for name in TOKEN_VARIABLES}
    try:
        result = program.evaluate(activation)
    except CELEvalError as error:
        return f"the CEL expression fails with every token count 0: {_first_line(error)}"
    except Exception as error:  # the interpreter's own failure on an odd expression: refuse it, say why
        return f"the CEL expression cannot be evaluated: {type(error).__name__}: {error}"
    if isinstance(result, CELEvalError):
        return f"the CEL expression fails with every token count 0: {_first_line(result)}"
    if isinstance(result, celtypes.BoolType) or not isinstance(result, int):
        return f"the CEL expression must give an integer (a cost), it gives {type(result).__name__}"
    if result < 0:
        return f"the CEL expression gives a negative cost ({int(result)}) with every token count 0"
    return None


def _first_line(error: Exception) -> str:
    first = error.args[0] if error.args else error
    text = str(first)
    if "undeclared reference to" in text:
        name = text.split("undeclared reference to", 1)[1].split("'")[1]
        known = ", ".join((*STRING_VARIABLES, *TOKEN_VARIABLES))
        return f"undeclared reference to {name!r} (the variables are {known})"
    return text.splitlines()[0]
