"""docs/migrating.md names only TrafficConfig fields (and enum values) its CRD has: the mapping cannot drift."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "migrating.md"
CRD = ROOT / "crds" / "trafficconfigs.modeltraffic.io.yaml"


def spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return schema


def resolve(path: str) -> dict[str, Any] | None:
    """The schema of a path such as spec.analysis.metrics[].min; None when the CRD has no such field."""
    node: dict[str, Any] | None = spec_schema()
    for part in path.removeprefix("spec.").split("."):
        if node is None:
            return None
        name = part.removesuffix("[]")
        node = (node.get("properties") or {}).get(name)
        if node is not None and part.endswith("[]"):
            node = node.get("items")
    return node


def trafficconfig_cells() -> list[str]:
    """The second column (TrafficConfig) of every table row of the page."""
    cells = []
    for line in PAGE.read_text().splitlines():
        columns = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(columns) == 3 and not set(columns[1]) <= {"-"}:
            cells.append(columns[1])
    return [cell for cell in cells if cell != "TrafficConfig"]  # not the header rows


def named_fields() -> list[tuple[str, str | None]]:
    """(path, value or None) of every `spec.…` code span in the TrafficConfig column."""
    found = []
    for cell in trafficconfig_cells():
        for span in re.findall(r"`(spec\.[^`]+)`", cell):
            path, _, value = span.partition(":")
            found.append((path.strip(), value.strip() or None))
    return found


def test_every_trafficconfig_field_the_migration_page_names_exists_in_the_crd() -> None:
    fields = named_fields()
    assert len(fields) > 30, "the page's tables were not found"
    missing = sorted({path for path, _ in fields if resolve(path) is None})
    assert not missing, f"docs/migrating.md names TrafficConfig fields the CRD does not have: {missing}"
    for path, value in fields:
        schema = resolve(path)
        assert schema is not None
        if value is not None and "enum" in schema:
            assert value in schema["enum"], f"{path}: {value} is not one of {schema['enum']}"
        if value is not None and schema.get("type") == "boolean":
            assert value in ("true", "false"), f"{path}: {value}"


def test_the_checker_refuses_a_field_that_is_not_there() -> None:
    assert resolve("spec.analysis.metrics[].max") is not None
    assert resolve("spec.analysis.metrics[].thresholdRange") is None
    assert resolve("spec.canary.weight") is not None
    assert resolve("spec.canary.weights") is None
