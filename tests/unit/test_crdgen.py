"""crds/ is generated from the API models and is structural."""

from __future__ import annotations

from typing import Any

import pytest

from model_traffic.kinds.common import duration_seconds
from model_traffic_dev import crdgen


def test_crds_directory_is_up_to_date() -> None:
    assert crdgen.main(["--check"]) == 0, "crds/ is stale: run `make crds`"


def _walk(node: dict[str, Any], path: str = "") -> list[str]:
    problems = []
    for forbidden in ("$ref", "anyOf", "allOf", "oneOf", "title"):
        if forbidden in node:
            problems.append(f"{path}: {forbidden}")
    if "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields") \
            and not node.get("x-kubernetes-int-or-string"):
        problems.append(f"{path}: no type")
    for name, prop in (node.get("properties") or {}).items():
        problems += _walk(prop, f"{path}.{name}")
    if "items" in node:
        problems += _walk(node["items"], f"{path}[]")
    return problems


def test_schemas_are_structural_and_described() -> None:
    for info in crdgen.KINDS:
        schema = crdgen.openapi_schema(info)
        assert _walk(schema) == []
        spec = schema["properties"]["spec"]
        undocumented = [name for name, prop in spec["properties"].items() if not prop.get("description")]
        assert undocumented == [], f"{info.kind}: fields without description: {undocumented}"


def test_duration_seconds() -> None:
    assert duration_seconds("1m30s") == 90
    assert duration_seconds("500ms") == 0.5


def test_a_new_object_reads_as_not_yet_observed() -> None:
    from model_traffic_dev import crdgen

    for info in crdgen.KINDS:
        if not info.has_status:  # the metric templates are only read
            assert "status" not in crdgen.crd(info)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
            continue
        status = crdgen.crd(info)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status["default"] == {"observedGeneration": 0}, info.kind
        assert "observedGeneration" in status["properties"]


def test_crds_print_as_one_stream_that_matches_the_files(capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from model_traffic_dev import crdgen

    assert crdgen.main(["--stdout"]) == 0
    documents = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert sorted(d["metadata"]["name"] for d in documents) == sorted(
        info.crd_name for info in crdgen.KINDS)
    for document in documents:
        on_disk = yaml.safe_load((crdgen.default_crd_dir() / f"{document['metadata']['name']}.yaml").read_text())
        assert document == on_disk


def test_generated_files_are_written_when_they_differ_and_checked_without_writing(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from model_traffic_dev.crdgen import write_generated

    target = tmp_path / "out" / "a.yaml"
    assert write_generated({target: "one\n"}, check=True, regenerate="make x") == 1
    assert not target.exists()
    assert "out of date (run `make x`)" in capsys.readouterr().err
    assert write_generated({target: "one\n"}, check=False, regenerate="make x") == 0
    assert target.read_text() == "one\n"
    assert write_generated({target: "one\n"}, check=True, regenerate="make x") == 0
    target.write_text("edited by hand\n")
    assert write_generated({target: "one\n"}, check=True, regenerate="make x") == 1
    assert target.read_text() == "edited by hand\n"
