"""The upstream systems the operator writes to, as released Go modules: their versions, CRDs and controllers.

Every version the local stack uses for Envoy Gateway, Envoy AI Gateway, KServe and the Gateway API
Inference Extension is named here and nowhere else. The CRDs are read straight out of the released module
(fetched by ``go mod download`` into the Go module cache, which verifies it against the checksum database),
so a fresh clone needs nothing but Go and the module proxy.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class UpstreamModule:
    module: str
    version: str
    # Globs, relative to the module's root, of the CRD files the stack installs.
    crd_globs: tuple[str, ...]


# Envoy Gateway v1.9.1, not the v1.8.1 that AI Gateway v1.0.0 requires: the BackendTrafficPolicy CRD of
# v1.8.1 declares `limit.requests` as int32 with maximum 4294967295, which a 1.37 API server refuses.
# It also bundles Gateway API v1.6.1 (experimental channel) as gatewayapi-crds.yaml.
ENVOY_GATEWAY = UpstreamModule(
    "github.com/envoyproxy/gateway", "v1.9.1",
    ("charts/gateway-helm/charts/crds/crds/gatewayapi-crds.yaml",
     "charts/gateway-helm/charts/crds/crds/generated/*.yaml"),
)
ENVOY_AI_GATEWAY = UpstreamModule(
    "github.com/envoyproxy/ai-gateway", "v1.0.0",
    ("manifests/charts/ai-gateway-crds-helm/templates/*.yaml",),
)
# Every serving.kserve.io CRD: KServe's manager watches InferenceGraphs, TrainedModels, LocalModelCaches and
# ClusterStorageContainers besides InferenceServices and (Cluster)ServingRuntimes, and does not start without
# them. LLMInferenceService (config/crd/full/llmisvc/) belongs to another controller (cmd/llmisvc) and is left out.
KSERVE = UpstreamModule(
    "github.com/kserve/kserve", "v0.16.0",
    ("config/crd/full/serving.kserve.io_*.yaml",),
)
# InferencePool in inference.networking.k8s.io/v1 (and the x-k8s.io alpha kinds beside it).
GATEWAY_API_INFERENCE_EXTENSION = UpstreamModule(
    "sigs.k8s.io/gateway-api-inference-extension", "v1.2.0",
    ("config/crd/bases/*.yaml",),
)
UPSTREAM_MODULES = (ENVOY_GATEWAY, ENVOY_AI_GATEWAY, KSERVE, GATEWAY_API_INFERENCE_EXTENSION)

# The controllers the stack runs, built from the same modules (see build.ensure_controllers).
ENVOY_GATEWAY_PACKAGE = "github.com/envoyproxy/gateway/cmd/envoy-gateway"
ENVOY_AI_GATEWAY_PACKAGE = "github.com/envoyproxy/ai-gateway/cmd/controller"
# KServe's controller manager (its Dockerfile builds ./cmd/manager); see build.ensure_kserve_manager.
KSERVE_MANAGER_PACKAGE = "github.com/kserve/kserve/cmd/manager"
# kwok plays the kubelet of fake nodes: it keeps them Ready and moves their pods through the stages of its
# kustomize/stage/ configurations (the stack reads them from this module), without running a container.
KWOK = UpstreamModule("sigs.k8s.io/kwok", "v0.7.0", ())
KWOK_PACKAGE = "sigs.k8s.io/kwok/cmd/kwok"


class UpstreamError(RuntimeError):
    """A module could not be fetched, or a CRD file it should hold is missing."""


@functools.cache
def module_dir(module: str, version: str) -> Path:
    """The module's extracted, checksum-verified source in the Go module cache (fetched the first time)."""
    # Imported here: build imports this module's versions.
    from . import build

    go = build.find_go()
    cache = build.cache_dir() / "src" / "upstream"
    cache.mkdir(parents=True, exist_ok=True)
    # `go mod download` outside a module needs no go.mod; a neutral cwd keeps a go.work above us out.
    info = build.go_mod_download(go, module, version, cache)
    directory = Path(info["Dir"])
    if not directory.is_dir():
        raise UpstreamError(f"go mod download {module}@{version} reported no source directory")
    return directory


def crd_files(modules: tuple[UpstreamModule, ...] = UPSTREAM_MODULES) -> list[Path]:
    """The upstream CRD files, in install order; every glob must match (a moved file fails loudly)."""
    files: list[Path] = []
    for upstream in modules:
        root = module_dir(upstream.module, upstream.version)
        for pattern in upstream.crd_globs:
            matched = sorted(root.glob(pattern))
            if not matched:
                raise UpstreamError(f"{upstream.module}@{upstream.version} has no {pattern}")
            files += matched
    return files


def crd_file(upstream: UpstreamModule, relative: str) -> Path:
    """One CRD file of a module, e.g. for reading a schema in unit tests."""
    path = module_dir(upstream.module, upstream.version) / relative
    if not path.is_file():
        raise UpstreamError(f"{upstream.module}@{upstream.version} has no {relative}")
    return path
