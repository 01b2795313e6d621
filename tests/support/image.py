"""The container image's Python installation, reproduced without Docker (for tests/test_image.py and
tests/cluster/test_install.py).

The wheel is built from exactly the files the Dockerfile's builder stage copies out of the build context
(``.dockerignore`` applied), and installed into a fresh virtualenv that has nothing else (no pip, no setuptools:
like the final stage), with the image's environment (its ENV lines). The operator the image runs is then
ENTRYPOINT + CMD from that virtualenv.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.tools import dockerfile

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
STAGES = dockerfile.stages(DOCKERFILE.read_text())
FINAL = STAGES[-1]


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    home: Path  # an empty HOME and TMPDIR for the commands

    def env(self, **extra: str) -> dict[str, str]:
        """The image's environment (the final stage's ENV, no pip settings), then `extra`."""
        env = {key: value for key, value in FINAL.env().items() if not key.startswith("PIP_")}
        return {"PATH": f"{self.venv / 'bin'}:/usr/bin:/bin", "HOME": str(self.home), "TMPDIR": str(self.home),
                "LANG": "C.UTF-8", **env, **extra}

    def command(self, name: str) -> str:
        """A command of the image (a console script of the wheel, or python), from the virtualenv's bin."""
        return str(self.venv / "bin" / name)

    def run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A command of the image: argv[0] from the venv's bin, run outside the repository."""
        return subprocess.run([self.command(argv[0]), *argv[1:]], capture_output=True, text=True,
                              timeout=timeout, env=self.env(), cwd=self.home, check=False)


def build_wheel(sources: Path, out: Path, work: Path) -> Path:
    """The project's wheel as the builder stage builds it: its sources laid out in `sources` (a copy: an in-tree
    build would leave build/ behind), pip and the build backend installed from the lock (requirements/build.txt,
    hash-checked) into a virtualenv of its own in `work`, the wheel built with them, nothing resolved."""
    builder = STAGES[0]
    assert builder.alias == "builder"
    dockerfile.builder_sources(ROOT, builder, sources)
    subprocess.run([sys.executable, "-m", "venv", str(work)], check=True, timeout=120)
    python = str(work / "bin" / "python")
    for step in (["install", "--require-hashes", "-r", str(sources / "requirements" / "build.txt")],
                 ["wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(out), str(sources)]):
        result = subprocess.run([python, "-m", "pip", "--quiet", "--disable-pip-version-check", *step],
                                capture_output=True, text=True, timeout=300, check=False)
        assert result.returncode == 0, f"pip {' '.join(step)} failed:\n{result.stdout}{result.stderr}"
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def install(wheel: Path, lock: Path, venv: Path, home: Path) -> Installed:
    """A virtualenv without pip holding the wheel and its dependencies, nothing from the development venv: the
    dependencies exactly as `lock` (requirements/runtime.txt) pins them, hash-checked, then the wheel from no index
    (as the final stage installs it from the builder's wheels), and `pip check`."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "--disable-pip-version-check"]
    # The dependencies come from the index (pip's cache makes that quick), checked against the lock's hashes.
    for step in (["install", "--quiet", "--only-binary=:all:", "--require-hashes", "-r", str(lock)],
                 ["install", "--quiet", "--no-index", str(wheel)],
                 ["check"]):
        result = subprocess.run([*pip, *step], capture_output=True, text=True, timeout=600, check=False)
        assert result.returncode == 0, f"pip {' '.join(step)} failed:\n{result.stdout}{result.stderr}"
    return Installed(wheel, venv, home)
