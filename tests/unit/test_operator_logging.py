"""The operator's log: each record once, in the format asked for (a JSON pipeline parses every line)."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from model_traffic.cli import configure_operator_logging


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    yield root
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)


def test_json_logs_have_one_line_per_record_after_mains_basic_config(
    root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    # What main() does before any subcommand runs.
    root_logger.handlers.clear()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    configure_operator_logging("json", verbose=False)
    assert len(root_logger.handlers) == 1
    # kopf's handler writes to the stream it was given at configure time (stderr): capture through it.
    stream = io.StringIO()
    handler = root_logger.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    logging.getLogger("model_traffic.test").info("reconciled %s", "llm/gpt-4")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert json.loads(lines[0])["message"] == "reconciled llm/gpt-4"


def test_plain_logs_have_one_line_per_record_too(root_logger: logging.Logger) -> None:
    root_logger.handlers.clear()
    logging.basicConfig(level=logging.INFO)
    configure_operator_logging("plain", verbose=False)
    stream = io.StringIO()
    handler = root_logger.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    logging.getLogger("model_traffic.test").info("reconciled")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    # When and how bad, as basicConfig's lines said before: a log without times cannot be read against others.
    timestamp = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\]"
    assert re.match(rf"^{timestamp} model_traffic\.test +\[INFO +\] reconciled$", lines[0]), lines
    assert len(root_logger.handlers) == 1
