"""A local Kubernetes control plane and the real gateway controllers, built from Go modules, for tests and the demo."""

from __future__ import annotations

from .build import (
    ETCD_VERSION,
    KUBERNETES_VERSION,
    Binaries,
    BuildError,
    GoNotFoundError,
    cache_dir,
    ensure_binaries,
    ensure_controllers,
)
from .controlplane import EXISTING_CLUSTER_ENV, ControlPlane, ControlPlaneError, existing_cluster_from_env
from .manifests import ManifestError, install_manifests
from .stack import DEFAULT_GATEWAY, LocalStack, StackError
from .upstream import UpstreamError, crd_files

__all__ = [
    "DEFAULT_GATEWAY",
    "ETCD_VERSION",
    "EXISTING_CLUSTER_ENV",
    "KUBERNETES_VERSION",
    "Binaries",
    "BuildError",
    "ControlPlane",
    "ControlPlaneError",
    "GoNotFoundError",
    "LocalStack",
    "ManifestError",
    "StackError",
    "UpstreamError",
    "cache_dir",
    "crd_files",
    "ensure_binaries",
    "ensure_controllers",
    "existing_cluster_from_env",
    "install_manifests",
]
