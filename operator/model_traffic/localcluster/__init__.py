"""A local Kubernetes control plane built from Go modules, for tests and the demo (like envtest)."""

from __future__ import annotations

from .build import (
    ETCD_VERSION,
    KUBERNETES_VERSION,
    Binaries,
    BuildError,
    GoNotFoundError,
    cache_dir,
    ensure_binaries,
)
from .controlplane import EXISTING_CLUSTER_ENV, ControlPlane, ControlPlaneError, existing_cluster_from_env
from .manifests import ManifestError, install_manifests

__all__ = [
    "ETCD_VERSION",
    "EXISTING_CLUSTER_ENV",
    "KUBERNETES_VERSION",
    "Binaries",
    "BuildError",
    "ControlPlane",
    "ControlPlaneError",
    "GoNotFoundError",
    "ManifestError",
    "cache_dir",
    "ensure_binaries",
    "existing_cluster_from_env",
    "install_manifests",
]
