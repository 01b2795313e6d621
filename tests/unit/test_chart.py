"""The Helm chart's parts that need no helm and no cluster: its CRDs, its schema, how helm is built."""

from __future__ import annotations

import json
import re
import textwrap

import pytest
import yaml

from model_traffic_dev.localcluster.build import (
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


# --- what the chart and the docs claim about versions --------------------------------------------------------

INSTALL_MD = ROOT / "docs" / "install.md"


def marked_table(markdown: str, marker: str) -> list[list[str]]:
    """The body rows of the table between two ``<!-- marker -->`` comments, as lists of cells."""
    parts = markdown.split(f"<!-- {marker} -->")
    assert len(parts) == 3, f"docs/install.md has no <!-- {marker} --> block"
    rows = [line for line in parts[1].strip().splitlines() if line.startswith("|")][2:]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def cel_functions_in_crds() -> set[str]:
    """Every function and macro the CRDs' x-kubernetes-validations rules call."""
    found: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for validation in node.get("x-kubernetes-validations") or []:
                # Strings are dropped first: a regex literal like r'\{\{' holds no calls.
                code = re.sub(r"r?'(?:[^'\\]|\\.)*'", "''", validation["rule"])
                found.update(re.findall(r"\b([A-Za-z_]\w*)\(", code))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in (ROOT / "crds").glob("*.yaml"):
        walk(yaml.safe_load(path.read_text()))
    return found


def test_every_cel_function_of_the_crds_is_in_the_install_docs_floor_table() -> None:
    rows = marked_table(INSTALL_MD.read_text(), "cel-functions")
    documented: dict[str, int] = {}
    for functions, _library, since in rows:
        minor = re.match(r"1\.(\d+)", since)
        assert minor, f"no Kubernetes version in {since!r}"
        for function in re.findall(r"`(\w+)`", functions):
            documented[function] = int(minor.group(1))
    used = cel_functions_in_crds()
    assert used, "no CEL rule found in crds/"
    assert used <= set(documented), f"CEL functions used in crds/ but not in docs/install.md: {used - set(documented)}"
    # The docs state the floor the table implies.
    floor = max(documented[function] for function in used)
    assert f"cannot be installed before Kubernetes 1.{floor}." in INSTALL_MD.read_text()


def test_chart_kube_version_is_the_tested_kubernetes_minor() -> None:
    from model_traffic_dev.localcluster.build import KUBERNETES_VERSION

    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    major, minor, _ = KUBERNETES_VERSION.removeprefix("v").split(".")
    # The floor is what the tests run: an older minor in the chart would be a claim nothing checks.
    assert chart["kubeVersion"] == f">={major}.{minor}.0-0"
    assert f'`kubeVersion: ">={major}.{minor}.0-0"`' in INSTALL_MD.read_text()
    tested = {row[0]: row[1] for row in marked_table(INSTALL_MD.read_text(), "tested-versions")}
    assert tested["Kubernetes (kube-apiserver, controller-manager, scheduler, kubectl)"] == KUBERNETES_VERSION


def test_install_docs_name_exactly_the_upstream_versions_the_stack_builds() -> None:
    from model_traffic_dev.localcluster import upstream
    from model_traffic_dev.localcluster.build import HELM_VERSION

    tested = {row[0].split(" (")[0]: row[1] for row in marked_table(INSTALL_MD.read_text(), "tested-versions")}
    assert tested["Envoy Gateway"] == upstream.ENVOY_GATEWAY.version
    assert tested["Envoy AI Gateway"] == upstream.ENVOY_AI_GATEWAY.version
    assert tested["KServe"] == upstream.KSERVE.version
    assert tested["Gateway API Inference Extension"].startswith(upstream.GATEWAY_API_INFERENCE_EXTENSION.version)
    assert tested["Helm"] == HELM_VERSION


QUICKSTART_KIND = ROOT / "docs" / "quickstart-kind.md"


def shell_lines(markdown: str) -> list[str]:
    """The lines of a page's ```sh blocks."""
    return [line for block in re.findall(r"```sh\n(.*?)```", markdown, re.DOTALL) for line in block.splitlines()]


def test_kind_quick_start_installs_upstream_crds_only_through_their_charts_and_builds_nothing_from_go() -> None:
    lines = shell_lines(QUICKSTART_KIND.read_text())
    assert lines
    for line in lines:
        # A pinned copy of another project's CRDs applied over what its chart installed drifts from the
        # controller that chart runs: the upstream charts own their CRDs.
        assert not re.search(r"kubectl (apply|create|replace)\b.*(https?://|crds?/)", line), line
        assert not re.match(r"\s*go (build|install|run)\b", line), line
        assert "k8s.io/kubernetes" not in line, line
    text = QUICKSTART_KIND.read_text()
    for chart in ("gateway-helm", "ai-gateway-crds-helm", "ai-gateway-helm", "kserve-crd"):
        assert chart in text, f"the kind quick start no longer installs {chart}"


def test_docs_send_people_to_kubectl_events_not_flux_events_for_our_objects() -> None:
    for path in [*(ROOT / "docs").glob("*.md"), ROOT / "README.md"]:
        for line in path.read_text().splitlines():
            if "flux events" in line:
                # `flux events` lists Events of Flux's own kinds only (fluxcd.io/flux/cmd/flux_events).
                assert "not these" in line or "Flux's own" in line, f"{path.name}: {line}"
