"""The container image, without Docker: the Dockerfile's rules, and its entrypoint run from the wheel.

The wheel is built from exactly the files the Dockerfile's builder stage copies out of the build context
(``.dockerignore`` applied), installed into a fresh virtualenv that has nothing else (no pip, no
setuptools: like the final stage; tests/support/image.py), and the Dockerfile's own ENTRYPOINT/CMD are run from
it, outside the repository. The last test runs that entrypoint as the operator against the local control plane.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tomllib
import urllib.request
import zipfile
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from model_traffic import kube as k
from model_traffic.kube import Kube
from tests.conftest import Cluster, condition, free_port, wait_for
from tests.support import image as image_install
from tests.support.image import Installed
from tests.tools import dockerfile

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
STAGES = image_install.STAGES
FINAL = image_install.FINAL
# The modules of tools/model_traffic_dev: none of them may be in the wheel.
DEVELOPMENT_TOOLING = {"localcluster", "demo", "crdgen", "docgen", "model_traffic_dev"}
BUILD_TOOLS = ("build-essential", "gcc", "g++", "clang", "make", "cmake", "python3-dev", "libc6-dev",
               "libffi-dev", "libssl-dev", "cargo", "rustc", "golang", "git")


def _entrypoint() -> list[str]:
    entry = FINAL.last("ENTRYPOINT")
    assert entry is not None, "the final stage has no ENTRYPOINT"
    argv = entry.exec_form()
    assert argv, "ENTRYPOINT must be in exec form (a JSON array), so signals reach the operator"
    return argv


def _cmd() -> list[str]:
    cmd = FINAL.last("CMD")
    argv = cmd.exec_form() if cmd else None
    assert argv is not None, "CMD must be in exec form"
    return argv


# --- the Dockerfile ---------------------------------------------------------------------------------------

def test_every_base_image_is_pinned_to_an_exact_version() -> None:
    aliases = {s.alias for s in STAGES if s.alias}
    bases = [s.image for s in STAGES if s.image not in aliases]
    assert bases, "no FROM"
    for image in bases:
        name, _, digest = image.partition("@")
        last = name.rsplit("/", 1)[-1]
        tag = last.split(":", 1)[1] if ":" in last else ""
        assert tag and tag != "latest", f"FROM {image}: pin a version tag"
        assert re.match(r"\d+\.\d+\.\d+", tag), f"FROM {image}: the tag must name an exact version (x.y.z)"
        assert "$" not in image, f"FROM {image}: no build-arg in the base, the pin must be visible here"
        if digest:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"FROM {image}: malformed digest"
    final_tag = FINAL.image.split("@")[0].rsplit(":", 1)[1]
    assert FINAL.image.startswith("python:") and "-slim" in final_tag, "the final stage is a slim Python"
    assert final_tag.startswith(f"{sys.version_info.major}.{sys.version_info.minor}."), (
        "the image's Python is the one the project is developed and tested with")


def test_the_final_stage_runs_as_a_non_root_numeric_user() -> None:
    user = FINAL.last("USER")
    assert user is not None, "the final stage must set USER"
    match = re.fullmatch(r"(\d+)(?::(\d+))?", user.args)
    assert match, f"USER {user.args}: numeric uid[:gid], so runAsNonRoot can verify it"
    assert int(match.group(1)) != 0 and (match.group(2) is None or int(match.group(2)) != 0)
    # Nothing after USER switches back.
    assert FINAL.instructions.index(user) > max(i for i, inst in enumerate(FINAL.instructions)
                                                if inst.keyword == "RUN")


def test_the_final_stage_has_no_build_tools_and_no_sources() -> None:
    for inst in FINAL.all("RUN"):
        words = set(re.split(r"[\s;&|=]+", inst.args))
        assert not words & set(BUILD_TOOLS), f"RUN {inst.args}: build tools in the final stage"
        assert not re.search(r"\b(apt-get|apt|apk|dnf|yum)\b.*\binstall\b", inst.args), (
            f"RUN {inst.args}: the final stage installs no system packages")
        if re.search(r"\bpip\b.*\binstall\b", inst.args):
            assert "--no-index" in inst.args, "the final stage installs only the built wheels, from no index"
    # The packaging tools go as well: nothing can build or install anything in the running container.
    uninstall = " ".join(i.args for i in FINAL.all("RUN") if "uninstall" in i.args)
    for tool in ("setuptools", "wheel", "pip"):
        assert re.search(rf"\b{tool}\b", uninstall), f"the final stage removes {tool}"
    for inst in FINAL.all("COPY") + FINAL.all("ADD"):
        flags, _ = inst.flags_and_words()
        assert "from" in flags, f"{inst.keyword} {inst.args}: the final stage copies nothing from the context"


def test_the_final_stage_writes_no_bytecode_at_run_time() -> None:
    assert FINAL.env().get("PYTHONDONTWRITEBYTECODE") == "1"
    assert "PROMETHEUS_MULTIPROC_DIR" not in FINAL.env(), "multiprocess metrics need a writable directory"


def test_entrypoint_is_the_console_script_and_cmd_runs_the_operator() -> None:
    scripts = PYPROJECT["project"]["scripts"]
    entry = _entrypoint()
    assert len(entry) == 1 and entry[0] in scripts, f"ENTRYPOINT {entry}: one of {sorted(scripts)}"
    assert scripts[entry[0]] == "model_traffic.cli:main"
    assert _cmd() == ["run"]


def test_dockerignore_sends_only_what_the_wheel_needs() -> None:
    ignore = dockerfile.DockerIgnore.parse((ROOT / ".dockerignore").read_text())
    sent = dockerfile.context_files(ROOT, ignore)
    assert {"pyproject.toml", "README.md", "operator/model_traffic/cli.py"} <= set(sent)
    leaked = [f for f in sent if f.split("/")[0] in {".git", ".venv", ".local", "tests", "crds", "examples"}
              or "__pycache__" in f or f.endswith(".pyc") or ".egg-info" in f]
    assert not leaked, f"sent to the Docker daemon but not needed: {leaked[:10]}"


# --- the wheel, built and installed the way the image does ---------------------------------------------

@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("image-src")


@pytest.fixture(scope="module")
def wheel(sources: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return image_install.build_wheel(sources, tmp_path_factory.mktemp("image-wheels"),
                                     tmp_path_factory.mktemp("image-build"))


@pytest.fixture(scope="module")
def installed(wheel: Path, sources: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    return image_install.install(wheel, sources / "requirements" / "runtime.txt",
                                 tmp_path_factory.mktemp("image-venv"), tmp_path_factory.mktemp("image-home"))


def test_the_wheel_holds_the_package_and_nothing_else(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"model_traffic", dist_info}, f"unexpected top-level entries: {tops}"
    assert "model_traffic/cli.py" in names and "model_traffic/app.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or "/tests/" in n]
    # Development tooling (tools/model_traffic_dev: the local stack, demo, CRD and doc generation) is not shipped.
    tooling = [n for n in names if set(n.removesuffix('.py').split('/')) & DEVELOPMENT_TOOLING]
    assert not tooling, f"development tooling in the wheel: {tooling[:10]}"
    assert "model-traffic-operator = model_traffic.cli:main" in entry_points


def test_the_image_entrypoint_works_from_the_installed_wheel(installed: Installed) -> None:
    top = installed.run(*_entrypoint(), "--help")
    assert top.returncode == 0, top.stderr
    assert "run" in top.stdout and "promote" in top.stdout
    assert "crds" not in top.stdout  # the CRD generator is development tooling: crds/ and the chart ship them
    run = installed.run(*_entrypoint(), *_cmd(), "--help")
    assert run.returncode == 0, run.stderr
    for flag in ("--namespace", "--liveness-port", "--log-format"):
        assert flag in run.stdout
    bad = installed.run(*_entrypoint(), "no-such-command")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr  # it really parses, not just prints


def test_every_runtime_module_imports_from_the_wheel_and_writes_nothing(installed: Installed) -> None:
    """The handlers' whole import graph resolves from the wheel and its declared dependencies only, and
    importing it writes no file: not into the installation, HOME or TMPDIR (read-only root filesystem)."""
    def snapshot() -> set[Path]:
        return {p for base in (installed.venv, installed.home) for p in base.rglob("*")}

    before = snapshot()
    code = ("import model_traffic, model_traffic.app, model_traffic.cli, model_traffic.metrics; "
            "print(model_traffic.__file__)")
    result = installed.run("python", "-I", "-c", code)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).is_relative_to(installed.venv), "imported from outside the wheel"
    assert snapshot() == before, f"written at import: {sorted(map(str, snapshot() - before))[:10]}"
    # Only the wheel and its dependency tree are there: no pip, no setuptools, no pytest.
    listed = installed.run("python", "-I", "-c", "import importlib.metadata as m, json; print(json.dumps("
                                                "[d.metadata['Name'].lower() for d in m.distributions()]))")
    names = set(json.loads(listed.stdout))
    assert "model-traffic-operator" in names and "kopf" in names
    assert not names & {"pip", "setuptools", "pytest", "mypy", "ruff"}, names


@pytest.mark.cluster
@pytest.mark.timeout(900)
def test_the_image_command_runs_the_operator(installed: Installed, cluster: Cluster, kube: Kube,
                                             namespace: str) -> None:
    """ENTRYPOINT + CMD, exactly, from the wheel: it reconciles a backend to Ready on the real API server."""
    liveness, metrics_port = free_port(), free_port()
    log_path = installed.home / "operator.log"
    env = installed.env(KUBECONFIG=str(cluster.kubeconfig), MTO_METRICS_PORT=str(metrics_port))
    argv = [str(installed.venv / "bin" / _entrypoint()[0]), *_cmd(), "--namespace", namespace,
            "--liveness-port", str(liveness)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=installed.home)
    try:
        _check_operator(process, log_path, liveness, metrics_port, cluster, kube, namespace)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _check_operator(process: subprocess.Popen[bytes], log_path: Path, liveness: int, metrics_port: int,
                    cluster: Cluster, kube: Kube, namespace: str) -> None:
    def get(url: str) -> str | None:
        if process.poll() is not None:
            raise AssertionError(f"the operator exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return str(response.read().decode())
        except OSError:
            return None

    wait_for(lambda: get(f"http://127.0.0.1:{liveness}/healthz"), 60, "the liveness endpoint")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=_BACKEND)
    wanted = {"kind": "ManagedAIServiceBackend", "namespace": namespace, "name": "openai"}

    def reconciled_here() -> bool:
        text = get(f"http://127.0.0.1:{metrics_port}/metrics") or ""
        return any(sample.name == "model_traffic_object_ready" and sample.labels == wanted and sample.value == 1
                   for family in text_string_to_metric_families(text) for sample in family.samples)

    # This process's own metric: it, not some other operator of the test session, found the backend Ready.
    try:
        wait_for(reconciled_here, 60, f"model_traffic_object_ready{wanted} = 1 in this operator's metrics")
    except AssertionError as error:
        status = (kube.get(k.MANAGED_AI_SERVICE_BACKEND, namespace, "openai") or {}).get("status")
        raise AssertionError(f"{error}\nstatus: {status}\noperator log:\n{log_path.read_text()[-4000:]}") from None
    obj = kube.get(k.MANAGED_AI_SERVICE_BACKEND, namespace, "openai")
    assert condition(obj, "Ready")["status"] == "True"
    assert obj is not None and obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    assert os.path.getsize(log_path) > 0


_BACKEND = """\
apiVersion: v1
kind: Secret
metadata: {name: openai-key}
stringData: {apiKey: sk-image-test}
---
apiVersion: modeltraffic.io/v1alpha1
kind: ManagedAIServiceBackend
metadata: {name: openai}
spec:
  schema: {name: OpenAI, version: v1}
  endpoint: {fqdn: {hostname: api.openai.com, port: 443}}
  credentials: {type: APIKey, secretRef: {name: openai-key}}
"""

