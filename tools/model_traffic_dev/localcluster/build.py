"""Build etcd, kube-apiserver, kube-controller-manager and kubectl (and, on request, helm) from Go modules.

Release binaries cannot be downloaded where this project runs, but the Go module proxy is reachable, so
the control plane is compiled from the released modules into a per-version cache. A finished build is
reused; an interrupted one (no completion marker) is redone. helm is an optional extra
(:func:`ensure_helm`): only the chart's tests need it.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .process import die_with_parent

KUBERNETES_VERSION = "v1.37.2"
# The staging repositories (k8s.io/api, k8s.io/client-go, ...) are tagged v0.<minor>.<patch> per release.
KUBERNETES_STAGING_VERSION = "v0.37.2"
KUBERNETES_MODULE = "k8s.io/kubernetes"
KUBERNETES_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kubectl")
# Built into a bin dir of its own (kube-scheduler-<version>) so that a cache holding the three above stays
# complete and is not rebuilt; it shares their Go build cache, so it costs little more than a link.
KUBE_SCHEDULER = "kube-scheduler"
# Both packages carry the same version variables; the apiserver reports component-base's, kubectl client-go's.
KUBERNETES_VERSION_PACKAGES = ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")

ETCD_VERSION = "v3.6.16"
ETCD_MODULE = "go.etcd.io/etcd/server/v3"
# server/main.go is etcd's `package main` (a thin wrapper around etcdmain) since etcd 3.5.
ETCD_PACKAGE = "go.etcd.io/etcd/server/v3"
ETCD_GIT_SHA_VAR = "go.etcd.io/etcd/api/v3/version.GitSHA"

# helm v3: what most clusters are still installed with; the chart (apiVersion v2) works with helm 4 too.
HELM_VERSION = "v3.22.0"
HELM_MODULE = "helm.sh/helm/v3"
HELM_PACKAGE = "helm.sh/helm/v3/cmd/helm"
HELM_VERSION_PACKAGE = "helm.sh/helm/v3/internal/version"
# The Kubernetes version `helm template` and `helm lint` assume; helm's Makefile derives it from client-go.
HELM_KUBE_VERSION_PACKAGES = ("helm.sh/helm/v3/pkg/lint/rules", "helm.sh/helm/v3/pkg/chartutil")

CACHE_ENV = "MODEL_TRAFFIC_CACHE"
MARKER = ".complete"

Log = Callable[[str], None]


class GoNotFoundError(RuntimeError):
    """`go` is not on PATH."""


class BuildError(RuntimeError):
    """A `go` command failed; the message carries the tail of its output."""


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kubectl: Path

    def all(self) -> dict[str, Path]:
        return {
            "etcd": self.etcd,
            "kube-apiserver": self.kube_apiserver,
            "kube-controller-manager": self.kube_controller_manager,
            "kubectl": self.kubectl,
        }


def cache_dir() -> Path:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser().resolve()
    return Path.home() / ".cache" / "model-traffic-operator"


def kubernetes_bin_dir(cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / "bin" / f"kubernetes-{KUBERNETES_VERSION}"


def kube_scheduler_bin_dir(cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / "bin" / f"{KUBE_SCHEDULER}-{KUBERNETES_VERSION}"


def etcd_bin_dir(cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / "bin" / f"etcd-{ETCD_VERSION}"


def helm_bin_dir(cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / "bin" / f"helm-{HELM_VERSION}"


def expected_binaries(cache: Path | None = None) -> Binaries:
    """Where the binaries are (or will be) — no build, no check."""
    kube = kubernetes_bin_dir(cache)
    return Binaries(
        etcd=etcd_bin_dir(cache) / "etcd",
        kube_apiserver=kube / "kube-apiserver",
        kube_controller_manager=kube / "kube-controller-manager",
        kubectl=kube / "kubectl",
    )


def is_complete(bin_dir: Path, names: tuple[str, ...]) -> bool:
    return (bin_dir / MARKER).is_file() and all(os.access(bin_dir / name, os.X_OK) for name in names)


def ensure_binaries(cache: Path | None = None, log: Log | None = None) -> Binaries:
    """Return the cached binaries, building whichever are missing (minutes the first time)."""
    cache = cache or cache_dir()
    log = log or _stderr
    ensure_etcd(cache, log)
    ensure_kubernetes(cache, log)
    return expected_binaries(cache)


def ensure_kubernetes(cache: Path, log: Log) -> Path:
    bin_dir = kubernetes_bin_dir(cache)
    if is_complete(bin_dir, KUBERNETES_COMMANDS):
        return bin_dir
    with _build_lock(cache, bin_dir.name):
        # Another process may have finished the build while we waited for the lock.
        if is_complete(bin_dir, KUBERNETES_COMMANDS):
            return bin_dir
        go = find_go()
        src, ldflags = _kubernetes_source(go, cache, f"kubernetes-{KUBERNETES_VERSION}")
        packages = [f"{KUBERNETES_MODULE}/cmd/{name}" for name in KUBERNETES_COMMANDS]
        log(f"building {', '.join(KUBERNETES_COMMANDS)} {KUBERNETES_VERSION} from Go modules into {bin_dir}")
        log("(the first build takes 10-15 minutes on 2 cores; later runs reuse the result)")
        _build_into(go, src, bin_dir, ["-o", "{out}/", *packages], ldflags, KUBERNETES_COMMANDS, log,
                    verify=_verify_kubectl_version)
        return bin_dir


def ensure_kube_scheduler(cache: Path | None = None, log: Log | None = None) -> Path:
    """kube-scheduler of the same k8s.io/kubernetes release as the API server; returns the binary."""
    cache = cache or cache_dir()
    log = log or _stderr
    bin_dir = kube_scheduler_bin_dir(cache)
    if is_complete(bin_dir, (KUBE_SCHEDULER,)):
        return bin_dir / KUBE_SCHEDULER
    with _build_lock(cache, bin_dir.name):
        if is_complete(bin_dir, (KUBE_SCHEDULER,)):
            return bin_dir / KUBE_SCHEDULER
        go = find_go()
        # A source dir of its own: the kubernetes build rewrites its go.mod under another lock.
        src, ldflags = _kubernetes_source(go, cache, bin_dir.name)
        log(f"building {KUBE_SCHEDULER} {KUBERNETES_VERSION} from Go modules into {bin_dir} "
            "(a minute or two when the control plane was built before)")
        _build_into(go, src, bin_dir, ["-o", f"{{out}}/{KUBE_SCHEDULER}", f"{KUBERNETES_MODULE}/cmd/{KUBE_SCHEDULER}"],
                    ldflags, (KUBE_SCHEDULER,), log, verify=_verify_kube_scheduler_version)
        return bin_dir / KUBE_SCHEDULER


def _kubernetes_source(go: str, cache: Path, name: str) -> tuple[Path, list[str]]:
    """A throw-away main module building k8s.io/kubernetes (see kubernetes_build_gomod), and its ldflags."""
    src = cache / "src" / name
    src.mkdir(parents=True, exist_ok=True)
    # It is regenerated below; a half-written one from an interrupted run must not trip `go mod download`.
    (src / "go.mod").unlink(missing_ok=True)
    info = go_mod_download(go, KUBERNETES_MODULE, KUBERNETES_VERSION, src)
    gomod_text = Path(info["GoMod"]).read_text()
    (src / "go.mod").write_text(kubernetes_build_gomod(gomod_text))
    ldflags = ["-s", "-w"]
    for package in KUBERNETES_VERSION_PACKAGES:
        for var, value in kubernetes_version_vars(info["OriginHash"]).items():
            ldflags.append(f"-X={package}.{var}={value}")
    return src, ldflags


def ensure_etcd(cache: Path, log: Log) -> Path:
    bin_dir = etcd_bin_dir(cache)
    if is_complete(bin_dir, ("etcd",)):
        return bin_dir
    with _build_lock(cache, bin_dir.name):
        if is_complete(bin_dir, ("etcd",)):
            return bin_dir
        go = find_go()
        src = cache / "src" / f"etcd-{ETCD_VERSION}"
        src.mkdir(parents=True, exist_ok=True)
        (src / "go.mod").unlink(missing_ok=True)
        info = go_mod_download(go, ETCD_MODULE, ETCD_VERSION, src)
        (src / "go.mod").write_text(etcd_build_gomod(Path(info["GoMod"]).read_text()))
        ldflags = ["-s", "-w"]
        commit = info["OriginHash"]
        if commit:
            ldflags.append(f"-X={ETCD_GIT_SHA_VAR}={commit[:7]}")
        log(f"building etcd {ETCD_VERSION} from Go modules into {bin_dir} (a few minutes the first time)")
        _build_into(go, src, bin_dir, ["-o", "{out}/etcd", ETCD_PACKAGE], ldflags, ("etcd",), log,
                    verify=_verify_etcd_version)
        return bin_dir


def ensure_helm(cache: Path | None = None, log: Log | None = None) -> Path:
    """The cached helm binary, built from its Go module the first time (a few minutes). Returns its path."""
    cache = cache or cache_dir()
    log = log or _stderr
    bin_dir = helm_bin_dir(cache)
    if is_complete(bin_dir, ("helm",)):
        return bin_dir / "helm"
    with _build_lock(cache, bin_dir.name):
        if is_complete(bin_dir, ("helm",)):
            return bin_dir / "helm"
        go = find_go()
        src = cache / "src" / f"helm-{HELM_VERSION}"
        src.mkdir(parents=True, exist_ok=True)
        (src / "go.mod").unlink(missing_ok=True)
        info = go_mod_download(go, HELM_MODULE, HELM_VERSION, src)
        helm_gomod = Path(info["GoMod"]).read_text()
        (src / "go.mod").write_text(helm_build_gomod(helm_gomod))
        log(f"building helm {HELM_VERSION} from Go modules into {bin_dir} (a few minutes the first time)")
        _build_into(go, src, bin_dir, ["-o", "{out}/helm", HELM_PACKAGE],
                    helm_ldflags(helm_gomod, info["OriginHash"]), ("helm",), log, verify=_verify_helm_version)
        return bin_dir / "helm"


@dataclass(frozen=True)
class GoCommand:
    """One command of a released Go module, built into cache/bin/<name>-<version>/<name>."""

    name: str
    module: str
    version: str
    package: str
    # Linker -X settings as the project's own Makefile stamps them; {commit} is the release's commit, {commit7}
    # its short form ("unknown" when the module proxy does not say; a setting with an empty value is left out).
    version_vars: tuple[str, ...] = ()
    # Arguments that make the binary print its version, when it has such a command.
    version_args: tuple[str, ...] = ()

    def bin_dir(self, cache: Path | None = None) -> Path:
        return (cache or cache_dir()) / "bin" / f"{self.name}-{self.version}"

    def binary(self, cache: Path | None = None) -> Path:
        return self.bin_dir(cache) / self.name


def envoy_gateway_command() -> GoCommand:
    from .upstream import ENVOY_GATEWAY, ENVOY_GATEWAY_PACKAGE

    # What Envoy Gateway's tools/make/golang.mk stamps (internal/cmd/version/version.go reads them).
    version_package = f"{ENVOY_GATEWAY.module}/internal/cmd/version"
    return GoCommand("envoy-gateway", ENVOY_GATEWAY.module, ENVOY_GATEWAY.version, ENVOY_GATEWAY_PACKAGE,
                     (f"{version_package}.envoyGatewayVersion={ENVOY_GATEWAY.version}",
                      f"{version_package}.gitCommitID={{commit}}"),
                     version_args=("version",))


def ai_gateway_controller_command() -> GoCommand:
    from .upstream import ENVOY_AI_GATEWAY, ENVOY_AI_GATEWAY_PACKAGE

    # AI Gateway's Makefile stamps `git describe --tags --long` (<tag>-<commits since>-g<sha>) here.
    return GoCommand("ai-gateway-controller", ENVOY_AI_GATEWAY.module, ENVOY_AI_GATEWAY.version,
                     ENVOY_AI_GATEWAY_PACKAGE,
                     (f"{ENVOY_AI_GATEWAY.module}/internal/version.version={ENVOY_AI_GATEWAY.version}-0-g{{commit7}}",))


class Controllers(NamedTuple):
    """The binaries the stack runs beside the control plane."""

    envoy_gateway: Path
    ai_gateway: Path
    kube_scheduler: Path
    kwok: Path
    kserve_manager: Path


def ensure_controllers(cache: Path | None = None, log: Log | None = None) -> Controllers:
    """Envoy Gateway's, Envoy AI Gateway's and KServe's controllers, kube-scheduler and kwok, built the first time
    (minutes). Returns their paths."""
    cache = cache or cache_dir()
    log = log or _stderr
    return Controllers(ensure_go_command(envoy_gateway_command(), cache, log),
                       ensure_go_command(ai_gateway_controller_command(), cache, log),
                       ensure_kube_scheduler(cache, log),
                       ensure_kwok(cache, log),
                       ensure_kserve_manager(cache, log))


def kwok_command() -> GoCommand:
    from .upstream import KWOK, KWOK_PACKAGE

    # kwok's pkg/consts already says Version = "0.7.0" in the release; hack/releases.sh stamps nothing else
    # that the stack needs (KubeVersion only matters to kwokctl).
    return GoCommand("kwok", KWOK.module, KWOK.version, KWOK_PACKAGE, version_args=("--version",))


def ensure_kwok(cache: Path | None = None, log: Log | None = None) -> Path:
    """kwok, the fake nodes' kubelet, built from its release the first time (a minute or two)."""
    return ensure_go_command(kwok_command(), cache or cache_dir(), log or _stderr)


KSERVE_MANAGER = "kserve-manager"
# What the manager imports from its module; the rest (python/, docs/, install/, test/: ~140 MB) is not copied.
KSERVE_BUILD_PATHS = ("go.mod", "go.sum", "cmd", "pkg")


def kserve_manager_bin_dir(cache: Path | None = None) -> Path:
    from .upstream import KSERVE

    return (cache or cache_dir()) / "bin" / f"{KSERVE_MANAGER}-{KSERVE.version}"


def ensure_kserve_manager(cache: Path | None = None, log: Log | None = None) -> Path:
    """KServe's controller manager, built inside a copy of its released module (about 5 minutes the first time).

    KServe's go.mod replaces sigs.k8s.io/controller-runtime (v0.20 required, v0.19.7 used), and a replace only
    applies in the main module: built as a dependency it would get another controller-runtime. So, as with
    Kubernetes, the release is built as the main module, from a writable copy of its checksum-verified source.
    """
    from .upstream import KSERVE, KSERVE_MANAGER_PACKAGE, module_dir

    cache = cache or cache_dir()
    log = log or _stderr
    bin_dir = kserve_manager_bin_dir(cache)
    if is_complete(bin_dir, (KSERVE_MANAGER,)):
        return bin_dir / KSERVE_MANAGER
    with _build_lock(cache, bin_dir.name):
        if is_complete(bin_dir, (KSERVE_MANAGER,)):
            return bin_dir / KSERVE_MANAGER
        go = find_go()
        released = module_dir(KSERVE.module, KSERVE.version)
        src = cache / "src" / bin_dir.name
        shutil.rmtree(src, ignore_errors=True)
        src.mkdir(parents=True)
        for relative in KSERVE_BUILD_PATHS:
            if (released / relative).is_dir():
                shutil.copytree(released / relative, src / relative, copy_function=shutil.copyfile)
            else:
                shutil.copyfile(released / relative, src / relative)
        for directory, _, _ in os.walk(src):
            # The module cache is read-only; go may record sums in go.sum, and rmtree must work next time.
            os.chmod(directory, 0o755)
        log(f"building KServe's manager {KSERVE.version} from its module into {bin_dir} "
            "(about 5 minutes the first time)")
        _build_into(go, src, bin_dir, ["-o", f"{{out}}/{KSERVE_MANAGER}", "./cmd/manager"], ["-s", "-w"],
                    (KSERVE_MANAGER,), log,
                    verify=lambda built: _verify_main_module(go, built / KSERVE_MANAGER, KSERVE_MANAGER_PACKAGE,
                                                             KSERVE.module))
        return bin_dir / KSERVE_MANAGER


def ensure_go_command(command: GoCommand, cache: Path, log: Log) -> Path:
    """Build one command of a released module into the version-stamped cache (once); returns the binary."""
    bin_dir = command.bin_dir(cache)
    if is_complete(bin_dir, (command.name,)):
        return bin_dir / command.name
    with _build_lock(cache, bin_dir.name):
        if is_complete(bin_dir, (command.name,)):
            return bin_dir / command.name
        go = find_go()
        src = cache / "src" / bin_dir.name
        src.mkdir(parents=True, exist_ok=True)
        (src / "go.mod").unlink(missing_ok=True)
        info = go_mod_download(go, command.module, command.version, src)
        (src / "go.mod").write_text(released_module_gomod(command, Path(info["GoMod"]).read_text()))
        commit = info["OriginHash"]
        ldflags = ["-s", "-w"]
        for var in command.version_vars:
            setting = var.format(commit=commit, commit7=commit[:7] or "unknown")
            if not setting.endswith("="):
                ldflags.append(f"-X={setting}")
        log(f"building {command.name} {command.version} from Go modules into {bin_dir} (minutes the first time)")
        _build_into(go, src, bin_dir, ["-o", f"{{out}}/{command.name}", command.package], ldflags,
                    (command.name,), log, verify=lambda built: _verify_module_version(go, command, built))
        return bin_dir / command.name


def released_module_gomod(command: GoCommand, module_gomod: str) -> str:
    """A throw-away main module requiring the release, for a module whose go.mod has no replace directives.

    A dependency's replace directives are ignored, so a module that needed them would build differently
    from its own repository; refuse rather than build something else.
    """
    if re.search(r"^replace\b", module_gomod, re.MULTILINE):
        raise BuildError(f"{command.module}@{command.version}'s go.mod has replace directives; reproduce them here")
    lines = ["// Generated by model_traffic_dev.localcluster.build; safe to delete.",
             "module modeltraffic.local/build", ""]
    lines += _go_directives(module_gomod)
    lines += ["", f"require {command.module} {command.version}", ""]
    return "\n".join(lines)


def staging_modules(gomod_text: str) -> list[str]:
    """The k8s.io modules that k8s.io/kubernetes requires at v0.0.0, i.e. its ./staging replacements."""
    modules: set[str] = set()
    in_block = False
    for raw in gomod_text.splitlines():
        line = raw.split("//", 1)[0].strip()
        if in_block:
            if line == ")":
                in_block = False
                continue
            fields = line.split()
        elif line.startswith("require ("):
            in_block = True
            continue
        elif line.startswith("require "):
            fields = line.split()[1:]
        else:
            continue
        if len(fields) == 2 and fields[0].startswith("k8s.io/") and fields[1] == "v0.0.0":
            modules.add(fields[0])
    return sorted(modules)


def _go_directives(gomod_text: str) -> list[str]:
    # The main module's `go` and `godebug` directives decide language version and GODEBUG defaults: keep them.
    kept: list[str] = []
    in_godebug_block = False
    for line in gomod_text.splitlines():
        if in_godebug_block:
            kept.append(line)
            in_godebug_block = line.strip() != ")"
        elif re.match(r"^godebug\s*\(", line):
            kept.append(line)
            in_godebug_block = True
        elif re.match(r"^(go|godebug)\s", line):
            kept.append(line)
    return kept


def kubernetes_build_gomod(kubernetes_gomod: str) -> str:
    """A throw-away main module that builds k8s.io/kubernetes with released staging modules.

    k8s.io/kubernetes cannot be `go install`ed: it requires its staging modules at v0.0.0 and replaces them
    with ./staging paths, which only work inside its own repository. Replacing each with its release works.
    """
    staging = staging_modules(kubernetes_gomod)
    if not staging:
        raise BuildError("found no k8s.io/* v0.0.0 requirements in k8s.io/kubernetes's go.mod; has its layout changed?")
    lines = ["// Generated by model_traffic_dev.localcluster.build; safe to delete.",
             "module modeltraffic.local/build", ""]
    lines += _go_directives(kubernetes_gomod)
    lines += ["", f"require {KUBERNETES_MODULE} {KUBERNETES_VERSION}", "", "replace ("]
    lines += [f"\t{module} => {module} {KUBERNETES_STAGING_VERSION}" for module in staging]
    lines += [")", ""]
    return "\n".join(lines)


def etcd_build_gomod(etcd_gomod: str) -> str:
    # etcd's own replace directives (../api, ...) are ignored in a dependency, so its released siblings are used.
    lines = ["// Generated by model_traffic_dev.localcluster.build; safe to delete.",
             "module modeltraffic.local/build", ""]
    lines += _go_directives(etcd_gomod)
    lines += ["", f"require {ETCD_MODULE} {ETCD_VERSION}", ""]
    return "\n".join(lines)


def helm_build_gomod(helm_gomod: str) -> str:
    # helm's go.mod has no replace directives, so requiring its release is all a build needs.
    lines = ["// Generated by model_traffic_dev.localcluster.build; safe to delete.",
             "module modeltraffic.local/build", ""]
    lines += _go_directives(helm_gomod)
    lines += ["", f"require {HELM_MODULE} {HELM_VERSION}", ""]
    return "\n".join(lines)


def required_version(gomod_text: str, module: str) -> str | None:
    """The version at which a go.mod requires a module (single-line or block form), else None."""
    for raw in gomod_text.splitlines():
        fields = raw.split("//", 1)[0].split()
        if fields[:1] == ["require"]:
            fields = fields[1:]
        if len(fields) == 2 and fields[0] == module:
            return fields[1]
    return None


def helm_ldflags(helm_gomod: str, commit: str) -> list[str]:
    """What helm's Makefile stamps: the version, the commit, and the Kubernetes version of its client-go."""
    ldflags = ["-s", "-w", f"-X={HELM_VERSION_PACKAGE}.version={HELM_VERSION}",
               f"-X={HELM_VERSION_PACKAGE}.gitTreeState=clean"]
    if commit:
        ldflags.append(f"-X={HELM_VERSION_PACKAGE}.gitCommit={commit}")
    client_go = required_version(helm_gomod, "k8s.io/client-go") or ""
    match = re.fullmatch(r"v0\.(\d+)\.\d+", client_go)
    if not match:
        raise BuildError(f"cannot tell the Kubernetes version from helm's k8s.io/client-go {client_go!r}")
    for package in HELM_KUBE_VERSION_PACKAGES:
        ldflags += [f"-X={package}.k8sVersionMajor=1", f"-X={package}.k8sVersionMinor={match.group(1)}"]
    return ldflags


def kubernetes_version_vars(commit: str) -> dict[str, str]:
    match = re.fullmatch(r"v(\d+)\.(\d+)\.\d+", KUBERNETES_VERSION)
    if not match:
        raise BuildError(f"unexpected Kubernetes version {KUBERNETES_VERSION}")
    return {
        "gitVersion": KUBERNETES_VERSION,
        "gitMajor": match.group(1),
        "gitMinor": match.group(2),
        "gitCommit": commit,
        # Built from the released module content, unmodified.
        "gitTreeState": "clean",
        "buildDate": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def go_env() -> dict[str, str]:
    return {
        **os.environ,
        # Never fetch another toolchain (downloads are not possible); the installed Go must do.
        "GOTOOLCHAIN": "local",
        # Static binaries that do not depend on the host's libc.
        "CGO_ENABLED": "0",
        # The generated module has no go.sum; let go resolve and record it.
        "GOFLAGS": "-mod=mod",
        # A go.work above the cache dir must not take over the throw-away module.
        "GOWORK": "off",
    }


def go_mod_download(go: str, module: str, version: str, cwd: Path) -> dict[str, str]:
    """`go mod download -json module@version`: gives the module's go.mod path and, from a VCS, its commit."""
    result = subprocess.run(
        [go, "mod", "download", "-json", f"{module}@{version}"],
        cwd=cwd, env=go_env(), capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise BuildError(f"go mod download {module}@{version} failed:\n{result.stdout}{result.stderr}")
    info = json.loads(result.stdout)
    if info.get("Error"):
        raise BuildError(f"go mod download {module}@{version}: {info['Error']}")
    # Origin is an object ({"VCS": "git", "Hash": ...}); flatten the hash for the caller.
    origin = info.get("Origin") or {}
    return {
        "GoMod": str(info["GoMod"]),
        "Dir": str(info.get("Dir", "")),
        "OriginHash": str(origin.get("Hash", "")) if isinstance(origin, dict) else "",
    }


def find_go() -> str:
    go = shutil.which("go")
    if go is None:
        raise GoNotFoundError(
            "Go is needed to build the local control plane (etcd, kube-apiserver, kube-controller-manager, "
            "kubectl) from Go modules, and `go` is not on PATH. Install Go >= 1.26, or, with Docker, create a "
            "kind cluster instead and run with KUBECONFIG pointing at it and MODEL_TRAFFIC_USE_EXISTING_CLUSTER=1."
        )
    return go


def _build_into(
    go: str, src: Path, bin_dir: Path, args: list[str], ldflags: list[str], names: tuple[str, ...], log: Log,
    verify: Callable[[Path], None],
) -> None:
    """Run `go build` into a temporary directory beside bin_dir, mark it complete, then rename it into place."""
    bin_dir.parent.mkdir(parents=True, exist_ok=True)
    # Leftovers of builds that were killed (each is hundreds of MB); we hold the lock, so none is in use.
    for stale in bin_dir.parent.glob(f".{bin_dir.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{bin_dir.name}.tmp-", dir=bin_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the binaries are meant to be shared
    try:
        command = [go, "build", "-trimpath", "-ldflags", " ".join(ldflags), *(a.format(out=tmp) for a in args)]
        started = time.monotonic()
        _run_streaming(command, src, src / "build.log", log)
        missing = [name for name in names if not os.access(tmp / name, os.X_OK)]
        if missing:
            raise BuildError(f"go build finished but did not produce {missing} in {tmp}")
        verify(tmp)
        (tmp / MARKER).write_text(json.dumps({"go": _go_version(go), "ldflags": ldflags, "built": time.time()}))
        if bin_dir.exists():
            # An incomplete leftover (no marker): replace it.
            shutil.rmtree(bin_dir)
        os.rename(tmp, bin_dir)
        log(f"built {', '.join(names)} in {time.monotonic() - started:.0f}s")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _run_streaming(command: list[str], cwd: Path, log_path: Path, log: Log) -> None:
    # Go's own output ("go: downloading ...") is the progress; keep a copy and the tail for the error.
    tail: collections.deque[str] = collections.deque(maxlen=40)
    done = threading.Event()
    started = time.monotonic()

    def heartbeat() -> None:
        # Compiling and linking print nothing for minutes; say that it is still going.
        while not done.wait(60):
            log(f"... still building ({time.monotonic() - started:.0f}s)")

    threading.Thread(target=heartbeat, daemon=True).start()
    with log_path.open("w") as log_file:
        log_file.write(" ".join(command) + "\n")
        process = subprocess.Popen(
            command, cwd=cwd, env=go_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            # If we are killed mid-build, interrupt go (it stops its compilers) rather than leave it running.
            preexec_fn=die_with_parent(signal.SIGINT),
        )
        assert process.stdout is not None
        try:
            for line in process.stdout:
                log_file.write(line)
                tail.append(line)
                log(line.rstrip("\n"))
        except BaseException:
            process.kill()
            raise
        finally:
            process.wait()
            done.set()
    if process.returncode != 0:
        raise BuildError(
            f"{' '.join(command[:2])} failed with exit code {process.returncode} (full log: {log_path}):\n"
            + "".join(tail)
        )


def _verify_kubectl_version(bin_dir: Path) -> None:
    # -X silently ignores a variable that does not exist, so check that the version really got stamped in.
    result = subprocess.run([str(bin_dir / "kubectl"), "version", "--client", "-o", "json"],
                            capture_output=True, text=True, check=False)
    try:
        version = json.loads(result.stdout)["clientVersion"]["gitVersion"]
    except (ValueError, KeyError, TypeError):
        version = None
    if version != KUBERNETES_VERSION:
        raise BuildError(f"built kubectl reports version {version!r}, not {KUBERNETES_VERSION}: {result.stderr}")


def _verify_kube_scheduler_version(bin_dir: Path) -> None:
    result = subprocess.run([str(bin_dir / KUBE_SCHEDULER), "--version"], capture_output=True, text=True, check=False)
    if result.stdout.split()[-1:] != [KUBERNETES_VERSION]:
        raise BuildError(f"built kube-scheduler does not report {KUBERNETES_VERSION}:\n{result.stdout}{result.stderr}")


def _verify_etcd_version(bin_dir: Path) -> None:
    result = subprocess.run([str(bin_dir / "etcd"), "--version"], capture_output=True, text=True, check=False)
    if f"etcd Version: {ETCD_VERSION.lstrip('v')}" not in result.stdout:
        raise BuildError(f"built etcd does not report version {ETCD_VERSION}:\n{result.stdout}{result.stderr}")


def _verify_helm_version(bin_dir: Path) -> None:
    result = subprocess.run([str(bin_dir / "helm"), "version", "--template", "{{.Version}}"],
                            capture_output=True, text=True, check=False,
                            env={**os.environ, "HELM_CONFIG_HOME": str(bin_dir / ".config")})
    if result.stdout.strip() != HELM_VERSION:
        raise BuildError(f"built helm reports version {result.stdout.strip()!r}, not {HELM_VERSION}: {result.stderr}")


def _verify_module_version(go: str, command: GoCommand, bin_dir: Path) -> None:
    # The build info Go embeds names the main package's module ("mod" when the package is the main package's,
    # else "dep") and its version: proof of what was built.
    result = subprocess.run([go, "version", "-m", str(bin_dir / command.name)],
                            capture_output=True, text=True, check=False)
    fields = [line.split() for line in result.stdout.splitlines()]
    if ["path", command.package] not in [f[:2] for f in fields] or \
            not any(f[:1] in (["mod"], ["dep"]) and f[1:3] == [command.module, command.version] for f in fields):
        raise BuildError(f"built {command.name} is not {command.package} of {command.module} {command.version}:\n"
                         f"{result.stdout}{result.stderr}")


def _verify_main_module(go: str, binary: Path, package: str, module: str) -> None:
    # Built as the main module from a copy without VCS data, so Go records it as "(devel)": check the package
    # and module path, and that the replace directive of its go.mod took effect (the reason for building so).
    result = subprocess.run([go, "version", "-m", str(binary)], capture_output=True, text=True, check=False)
    fields = [line.split() for line in result.stdout.splitlines()]
    if ["path", package] not in [f[:2] for f in fields] or not any(f[:2] == ["mod", module] for f in fields):
        raise BuildError(f"built {binary.name} is not {package} of {module}:\n{result.stdout}{result.stderr}")


def _go_version(go: str) -> str:
    return subprocess.run([go, "version"], capture_output=True, text=True, check=False).stdout.strip()


@contextlib.contextmanager
def _build_lock(cache: Path, name: str) -> Iterator[None]:
    # Serializes builds of the same version across processes (pytest and `make cluster` at the same time).
    lock_dir = cache / "bin"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with (lock_dir / f".{name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)

