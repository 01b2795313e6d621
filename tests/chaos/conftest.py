"""The chaos suite runs on the stack of tests/conftest.py, with the per-namespace Gateway of tests/cluster."""

from __future__ import annotations

from tests.cluster.conftest import gateway_class, namespace

__all__ = ["gateway_class", "namespace"]  # the fixtures, re-exported for pytest
