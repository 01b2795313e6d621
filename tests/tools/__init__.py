"""Test-support tools (built or run only by the tests; nothing here ships in the wheel)."""
