"""Apply YAML manifests (CRDs above all) with kubectl, server-side, and wait until the CRDs serve."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable
from pathlib import Path

YAML_SUFFIXES = (".yaml", ".yml")
CRD_PREFIX = "customresourcedefinition.apiextensions.k8s.io/"
# kubectl's words when a document's kind is not served yet (its CRD is applied in the same run).
_NOT_YET_SERVED = ("no matches for kind", "ensure CRDs are installed first")


class ManifestError(RuntimeError):
    """kubectl apply or wait failed; the message has kubectl's output."""


def manifest_files(paths: Iterable[Path]) -> list[Path]:
    """The YAML files in `paths`, in order: a file as given, a directory's files recursively and sorted."""
    files: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in YAML_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise ManifestError(f"no such manifest file or directory: {path}")
    return files


def install_manifests(kubectl: Path, kubeconfig: Path, paths: list[Path], *, timeout: float = 120.0) -> list[str]:
    """`kubectl apply --server-side` every YAML file under `paths`; wait for the CRDs among them to be Established.

    Server-side, because large CRDs (Envoy Gateway's) exceed the last-applied annotation's size limit.
    Returns the applied objects' names as kubectl prints them (`kind.group/name`).
    """
    files = manifest_files(paths)
    if not files:
        return []
    args = ["apply", "--server-side", "--force-conflicts", "-o", "name"]
    for file in files:
        args += ["-f", str(file)]
    result = run_kubectl(kubectl, kubeconfig, args, timeout)
    if result.returncode != 0 and any(marker in result.stderr for marker in _NOT_YET_SERVED):
        # Custom resources next to their CRDs: the CRDs were created; once they serve, apply again.
        _wait_established(kubectl, kubeconfig, _crds(result.stdout), timeout)
        result = run_kubectl(kubectl, kubeconfig, args, timeout)
    if result.returncode != 0:
        raise ManifestError(f"kubectl apply --server-side failed ({result.returncode}):\n{result.stderr}")
    names = result.stdout.split()
    _wait_established(kubectl, kubeconfig, _crds(result.stdout), timeout)
    return names


def _crds(output: str) -> list[str]:
    return [name for name in output.split() if name.startswith(CRD_PREFIX)]


def _wait_established(kubectl: Path, kubeconfig: Path, crds: list[str], timeout: float) -> None:
    if not crds:
        return
    result = run_kubectl(
        kubectl, kubeconfig, ["wait", "--for=condition=Established", f"--timeout={int(timeout)}s", *crds], timeout + 10,
    )
    if result.returncode != 0:
        raise ManifestError(f"CRDs did not become Established ({result.returncode}):\n{result.stderr}")


def run_kubectl(kubectl: Path, kubeconfig: Path, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    try:
        return subprocess.run(
            [str(kubectl), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False,
        )
    except FileNotFoundError as error:
        raise ManifestError(f"kubectl not found at {kubectl}") from error
    except subprocess.TimeoutExpired as error:
        raise ManifestError(f"kubectl {args[0]} took longer than {timeout}s") from error
