"""One rule for a missing test prerequisite: skipped on a developer's machine, a failure under CI=true.

`make test` installs the prerequisites first (tools/test-prerequisites.sh), so a skip here means someone ran
pytest directly on a machine without them; CI must never pass by skipping what it was meant to test.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

INSTALL = "make test installs it (tools/test-prerequisites.sh)"


def missing(what: str) -> NoReturn:
    """Skip the test for a missing prerequisite, or fail it under CI=true."""
    message = f"{what} is missing: {INSTALL}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{message} (CI=true: nothing is skipped for a missing prerequisite)")
    pytest.skip(message)


def tool(name: str) -> str:
    """The path of a command the test needs; see :func:`missing` when it is not on PATH."""
    found = shutil.which(name)
    if found is None:
        missing(name)
    return found
