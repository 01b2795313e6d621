"""The Helm chart's parts that need no helm and no cluster: its CRDs, its schema, how helm is built."""

from __future__ import annotations

import json
import re
import textwrap

import pytest
import yaml

from model_traffic.localcluster.build import (
    HELM_MODULE,
    HELM_VERSION,
    HELM_VERSION_PACKAGE,
    BuildError,
    helm_build_gomod,
    helm_ldflags,
    required_version,
)
from tests.conftest import CHART, ROOT


def test_chart_crds_are_the_generated_crds_byte_for_byte() -> None:
    # `make crds` writes crds/; the chart ships a copy (Helm installs crds/ before the templates). Refresh it
    # with: cp crds/*.yaml charts/model-traffic-operator/crds/
    generated = {path.name: path.read_bytes() for path in (ROOT / "crds").glob("*.yaml")}
    shipped = {path.name: path.read_bytes() for path in (CHART / "crds").glob("*.yaml")}
    assert generated, "no CRDs in crds/"
    assert sorted(shipped) == sorted(generated)
    stale = [name for name in generated if shipped[name] != generated[name]]
    assert not stale, f"charts/model-traffic-operator/crds/ differs from crds/ in {stale}: copy crds/*.yaml over"


def test_values_schema_is_valid_json_and_covers_every_top_level_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert schema["additionalProperties"] is False
    # additionalProperties: false means a value without a schema entry would be refused by helm itself.
    assert set(values) <= set(schema["properties"]), set(values) - set(schema["properties"])


def test_chart_version_and_app_version_match_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    pyproject = (ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE)
    assert version is not None
    assert chart["appVersion"] == version.group(1)
    assert chart["apiVersion"] == "v2"


HELM_GOMOD = textwrap.dedent("""\
    module helm.sh/helm/v3

    go 1.26.0

    godebug default=go1.25

    require (
    \tgithub.com/spf13/cobra v1.10.2
    \tk8s.io/api v0.37.0
    \tk8s.io/client-go v0.37.0 // indirect-looking comment
    )
    """)


def test_helm_build_module_requires_the_pinned_release_with_helms_go_directives() -> None:
    gomod = helm_build_gomod(HELM_GOMOD)
    assert f"require {HELM_MODULE} {HELM_VERSION}" in gomod
    assert "\ngo 1.26.0\n" in gomod
    assert "godebug default=go1.25" in gomod
    assert "replace" not in gomod


def test_required_version_reads_block_and_single_line_requires() -> None:
    assert required_version(HELM_GOMOD, "k8s.io/client-go") == "v0.37.0"
    assert required_version("module x\nrequire k8s.io/client-go v0.36.4\n", "k8s.io/client-go") == "v0.36.4"
    assert required_version(HELM_GOMOD, "k8s.io/kubectl") is None


def test_helm_ldflags_stamp_version_commit_and_the_kubernetes_version_of_its_client_go() -> None:
    flags = helm_ldflags(HELM_GOMOD, "abc123")
    assert f"-X={HELM_VERSION_PACKAGE}.version={HELM_VERSION}" in flags
    assert f"-X={HELM_VERSION_PACKAGE}.gitCommit=abc123" in flags
    assert "-X=helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=37" in flags
    assert "-X=helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1" in flags
    assert not any("gitCommit" in flag for flag in helm_ldflags(HELM_GOMOD, ""))
    with pytest.raises(BuildError):
        helm_ldflags("module x\n", "")
