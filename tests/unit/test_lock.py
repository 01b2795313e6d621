"""requirements/ is the lock (`make lock`): it pins, with hashes, every package pyproject.toml asks for.

- runtime.txt: the project's dependencies and theirs (the image installs exactly these: Dockerfile, and
  tests/test_image.py installs the wheel the same way, with `pip check`).
- dev.txt: the same pins plus the dev extra's (make venv).
- build.txt: pip and the build backend of [build-system].
A dependency added to pyproject.toml and not locked fails here, before the image build or make venv would.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.tools import dockerfile

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "requirements"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Where the lock is used: the image (Python 3.11 on Linux) and make venv; markers are judged for it.
ENVIRONMENT = {"python_version": "3.11", "python_full_version": "3.11.15", "sys_platform": "linux",
               "platform_system": "Linux", "os_name": "posix", "implementation_name": "cpython",
               "platform_python_implementation": "CPython", "platform_machine": "x86_64"}
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)\s*(?:;(?P<marker>[^\\]*))?\\?\s*$")


@dataclass(frozen=True)
class Pin:
    version: str
    hashes: tuple[str, ...]


def read_lock(path: Path) -> dict[str, Pin]:
    """name (canonical) -> its pin, from a requirements file with hashes; every line is a pin, a hash or a comment."""
    pins: dict[str, Pin] = {}
    name = ""
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        hashed = re.fullmatch(r"--hash=sha256:([0-9a-f]{64})\s*\\?", line)
        if hashed:
            assert name, f"{path.name}:{number}: a hash before any pin"
            pins[name] = Pin(pins[name].version, (*pins[name].hashes, hashed.group(1)))
            continue
        pin = PIN.match(line)
        assert pin, f"{path.name}:{number}: not an exact pin (name==version): {line}"
        name = canonicalize_name(pin.group("name"))
        pins[name] = Pin(pin.group("version"), ())
    return pins


def unlocked(requirements: list[str], lock: dict[str, Pin]) -> list[str]:
    """The requirements (for the image's Python and platform) that the lock does not pin to a version they take."""
    missing = []
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate(dict(ENVIRONMENT)):
            continue
        pin = lock.get(canonicalize_name(requirement.name))
        if pin is None or not requirement.specifier.contains(pin.version, prereleases=True):
            missing.append(f"{text} (locked: {pin.version if pin else 'no'})")
    return missing


RUNTIME = read_lock(LOCKS / "runtime.txt")
DEV = read_lock(LOCKS / "dev.txt")
BUILD = read_lock(LOCKS / "build.txt")


@pytest.mark.parametrize("name", ["runtime.txt", "dev.txt", "build.txt"])
def test_every_pin_has_its_hashes_and_says_how_it_was_made(name: str) -> None:
    lock = read_lock(LOCKS / name)
    assert lock
    assert not [package for package, pin in lock.items() if not pin.hashes], "pins without --hash"
    assert "make lock" in (LOCKS / name).read_text().split("\n", 3)[1], "the header names the command: make lock"


def test_the_runtime_lock_covers_the_projects_dependencies() -> None:
    missing = unlocked(PYPROJECT["project"]["dependencies"], RUNTIME)
    assert not missing, f"requirements/runtime.txt lacks (run make lock): {missing}"


def test_the_dev_lock_covers_the_dev_extra_and_agrees_with_the_runtime_lock() -> None:
    wanted = [*PYPROJECT["project"]["dependencies"], *PYPROJECT["project"]["optional-dependencies"]["dev"]]
    missing = unlocked(wanted, DEV)
    assert not missing, f"requirements/dev.txt lacks (run make lock): {missing}"
    differ = {name: (pin.version, DEV[name].version if name in DEV else None)
              for name, pin in RUNTIME.items() if name not in DEV or DEV[name].version != pin.version}
    assert not differ, f"the dev venv would not run the image's versions: {differ}"


def test_the_build_lock_covers_the_build_backend_and_pip() -> None:
    missing = unlocked([*PYPROJECT["build-system"]["requires"], "pip"], BUILD)
    assert not missing, f"requirements/build.txt lacks (run make lock): {missing}"


def test_a_dependency_the_lock_lacks_is_found() -> None:
    """The check above can fail: a new dependency, or a range the pin is outside of, is reported."""
    assert unlocked(["kopf>=1.45,<2"], RUNTIME) == []
    assert unlocked(["no-such-package-in-the-lock>=1"], RUNTIME) == ["no-such-package-in-the-lock>=1 (locked: no)"]
    assert unlocked([f"kopf>{RUNTIME['kopf'].version}"], RUNTIME)
    assert unlocked(["pywin32>=1; sys_platform == 'win32'"], RUNTIME) == []  # not for the image's platform


def test_the_image_and_make_venv_install_the_lock_with_its_hashes() -> None:
    builder = dockerfile.stages((ROOT / "Dockerfile").read_text())[0]
    runs = [inst.args for inst in builder.all("RUN")]
    assert any("--require-hashes" in run and "requirements/build.txt" in run for run in runs), runs
    assert any("--require-hashes" in run and "requirements/runtime.txt" in run and "--only-binary=:all:" in run
               for run in runs), runs
    project = [run for run in runs if re.search(r"\s\.$", run)]
    assert project and all("--no-deps" in run for run in project), f"the project's wheel resolves nothing: {runs}"
    makefile = (ROOT / "Makefile").read_text()
    for name in ("build.txt", "dev.txt"):
        assert re.search(rf"pip install .*--require-hashes -r requirements/{name}", makefile), name
    assert re.search(r"pip install .*--no-deps .*-e \.", makefile)
