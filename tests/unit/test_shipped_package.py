"""The shipped package (what the wheel and the image carry) holds and imports no development tooling.

Development tooling lives in tools/model_traffic_dev (the local stack, the demo, CRD and doc generation). The
wheel takes every package setuptools finds under pyproject's ``packages.find.where`` (operator/), so a module
put back there would ship again, and a runtime dependency only the tooling needs would be installed with it.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
WHERE = [ROOT / where for where in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["where"]]
DEV_PACKAGE = ROOT / "tools" / "model_traffic_dev"
# What the development tooling is called: the dev package and its modules and subpackages.
TOOLING = {"model_traffic_dev"} | {path.stem for path in DEV_PACKAGE.iterdir()
                                  if path.suffix == ".py" or (path / "__init__.py").exists()} - {"__init__"}
# What only development needs; the operator imports none of it.
DEVELOPMENT_IMPORTS = {"model_traffic_dev", "pytest", "setuptools", "mypy", "ruff"}


def shipped_modules() -> dict[str, Path]:
    """Every module of the wheel, found the way setuptools' find_packages finds packages."""
    modules = {}
    for base in WHERE:
        for init in sorted(base.rglob("__init__.py")):
            package = init.parent
            if all((base / parent / "__init__.py").exists() for parent in package.relative_to(base).parents
                   if parent != Path(".")) and "-" not in package.name:
                dotted = ".".join(package.relative_to(base).parts)
                for path in package.glob("*.py"):
                    modules[dotted if path.stem == "__init__" else f"{dotted}.{path.stem}"] = path
    return modules


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_dev_package_holds_the_tooling() -> None:
    assert {"localcluster", "demo", "crdgen", "docgen"} <= TOOLING


def test_the_shipped_package_holds_no_development_tooling() -> None:
    modules = shipped_modules()
    assert {"model_traffic.cli", "model_traffic.app", "model_traffic.pipeline.runtime"} <= set(modules)
    leaked = sorted(name for name in modules if set(name.split(".")) & TOOLING)
    assert not leaked, f"development tooling in the shipped package (it would be in the wheel): {leaked}"


def test_the_shipped_package_imports_no_development_tooling() -> None:
    found = {name: sorted(imports_of(path) & DEVELOPMENT_IMPORTS) for name, path in shipped_modules().items()}
    offenders = {name: imports for name, imports in found.items() if imports}
    assert not offenders, f"the shipped package imports development tooling: {offenders}"


def _distribution(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group()).lower()


def test_every_runtime_dependency_is_imported_by_the_shipped_package() -> None:
    """A runtime dependency that only the tooling uses belongs in the dev extra, not in the image."""
    imported = set().union(*(imports_of(path) for path in shipped_modules().values()))
    provides: dict[str, set[str]] = {}
    for module, distributions in importlib.metadata.packages_distributions().items():
        for distribution in distributions:
            provides.setdefault(_distribution(distribution), set()).add(module)
    requirements = PYPROJECT["project"]["dependencies"]
    missing = [requirement for requirement in requirements if _distribution(requirement) not in provides]
    assert not missing, f"runtime dependencies not installed here (make venv): {missing}"
    unused = [requirement for requirement in requirements if not provides[_distribution(requirement)] & imported]
    assert not unused, f"runtime dependencies the shipped package never imports (move them to the dev extra): {unused}"
