"""``make release``: the installable artifacts of this version, from the repository, into ``dist/`` (gitignored).

- ``model-traffic-operator-<version>.tgz``: the chart (``helm package``), its image pinned to
  ``<repository>:<version>``. Its ``crds/`` install the CRDs on the first ``helm install``; Helm never upgrades them.
- ``model-traffic-operator-crds-<version>.tgz``: the CRDs as the templates of a chart of their own, the way KServe
  ships ``kserve-crd``: ``helm upgrade`` of it upgrades them. Annotated ``helm.sh/resource-policy: keep``, so that
  uninstalling it never deletes the CRDs (and with them every object and the children carrying traffic).
- ``install.yaml``: everything for ``kubectl apply --server-side -f``: the CRDs, the Namespace and the chart rendered
  with its default values for that namespace (``model-traffic-system``).
- ``image.txt``: the image reference the chart and install.yaml name (build and push it: ``make image IMAGE=...``).
- ``SHA256SUMS`` of the above.

Development tooling: not shipped in the image.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "model-traffic-operator"
CHART_NAME = "model-traffic-operator"
CRDS_CHART_NAME = "model-traffic-operator-crds"
DEFAULT_NAMESPACE = "model-traffic-system"
KEEP = {"helm.sh/resource-policy": "keep"}


class ReleaseError(RuntimeError):
    pass


def project_version() -> str:
    found = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    if not found:
        raise ReleaseError("no version in pyproject.toml")
    return found.group(1)


def run(*args: str) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise ReleaseError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result.stdout


def crd_documents() -> list[tuple[str, str]]:
    """(file name, text) of each generated CRD, in a stable order."""
    files = sorted((ROOT / "crds").glob("*.yaml"))
    if not files:
        raise ReleaseError("no CRDs in crds/ (make crds)")
    return [(path.name, path.read_text()) for path in files]


def with_image_repository(values_text: str, repository: str) -> str:
    """values.yaml with image.repository replaced, comments kept (the packaged chart's default)."""
    replaced, count = re.subn(r"(?m)^(image:\n(?:  .*\n|\s*#.*\n)*?  repository: ).*$",
                              lambda match: match.group(1) + repository, values_text, count=1)
    if count != 1:
        raise ReleaseError("values.yaml has no image.repository to pin")
    return replaced


def package_chart(helm: str, version: str, repository: str, out: Path, work: Path) -> Path:
    chart = work / CHART_NAME
    shutil.copytree(CHART, chart)
    values = chart / "values.yaml"
    values.write_text(with_image_repository(values.read_text(), repository))
    run(helm, "package", str(chart), "--version", version, "--app-version", version, "--destination", str(out))
    return out / f"{CHART_NAME}-{version}.tgz"


def kept(crd_text: str) -> str:
    """The CRD with helm.sh/resource-policy: keep."""
    crd: dict[str, Any] = yaml.safe_load(crd_text)
    crd["metadata"].setdefault("annotations", {}).update(KEEP)
    return yaml.safe_dump(crd, sort_keys=False, width=120)


def package_crds_chart(helm: str, version: str, out: Path, work: Path) -> Path:
    chart = work / CRDS_CHART_NAME
    (chart / "templates").mkdir(parents=True)
    (chart / "files").mkdir()
    main_chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    (chart / "Chart.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v2", "name": CRDS_CHART_NAME, "type": "application", "version": version,
        "appVersion": version, "kubeVersion": main_chart["kubeVersion"],
        "description": "The CustomResourceDefinitions of model-traffic-operator, upgraded by helm upgrade.",
    }, sort_keys=False))
    for name, text in crd_documents():
        (chart / "files" / name).write_text(kept(text))
    # Read through .Files.Get, not as templates: the CRDs hold "{{ .Version }}" in descriptions and CEL regexes.
    (chart / "templates" / "crds.yaml").write_text(
        '{{- range $path, $_ := .Files.Glob "files/*.yaml" }}\n---\n{{ $.Files.Get $path }}\n{{- end }}\n'
    )
    run(helm, "lint", "--strict", str(chart))
    run(helm, "package", str(chart), "--destination", str(out))
    return out / f"{CRDS_CHART_NAME}-{version}.tgz"


def install_manifest(helm: str, chart_package: Path, version: str, namespace: str) -> str:
    namespace_doc = yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": namespace, "labels": {"app.kubernetes.io/part-of": CHART_NAME}}}, sort_keys=False)
    rendered = run(helm, "template", CHART_NAME, str(chart_package), "--namespace", namespace)
    parts = [f"# model-traffic-operator {version}: the CRDs, the Namespace {namespace} and the operator (the chart\n"
             f"# {chart_package.name} rendered with its default values). kubectl apply --server-side -f install.yaml\n"]
    parts += [text if text.startswith("---") else f"---\n{text}" for _, text in crd_documents()]
    parts += [f"---\n{namespace_doc}", rendered if rendered.startswith("---") else f"---\n{rendered}"]
    return "".join(part if part.endswith("\n") else part + "\n" for part in parts)


def release(helm: str, out: Path, repository: str, namespace: str) -> list[Path]:
    version = project_version()
    chart_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    if chart_version != version:
        raise ReleaseError(f"the chart's appVersion {chart_version} is not the project's {version}")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="mto-release-") as tmp:
        work = Path(tmp)
        chart_package = package_chart(helm, version, repository, out, work)
        crds_package = package_crds_chart(helm, version, out, work)
    install = out / "install.yaml"
    install.write_text(install_manifest(helm, chart_package, version, namespace))
    image = out / "image.txt"
    image.write_text(f"{repository}:{version}\n")
    artifacts = [chart_package, crds_package, install, image]
    sums = "".join(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n" for path in artifacts)
    (out / "SHA256SUMS").write_text(sums)
    return [*artifacts, out / "SHA256SUMS"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--helm", required=True, help="the helm binary (make release passes the pinned build)")
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="emptied, then filled (default: dist/)")
    parser.add_argument("--image-repository", default="model-traffic-operator",
                        help="the image repository; the tag is the project version")
    parser.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="namespace of install.yaml")
    args = parser.parse_args(argv)
    try:
        for path in release(args.helm, args.out, args.image_repository, args.namespace):
            print(path)
    except ReleaseError as error:
        print(f"make release: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
