"""The fixtures of tests/support (a real Prometheus scraping the fake AI Gateway, a webhook receiver).

Each is registered here only when tests/conftest.py does not already re-export it: registered at both
levels, a session fixture would run twice (two Prometheus servers).
"""

from tests import conftest as root
from tests.support import prometheus as _prometheus
from tests.support import webhooks as _webhooks

for _name, _module in (("genai_exporter", _prometheus), ("prometheus", _prometheus), ("webhook_server", _webhooks)):
    if not hasattr(root, _name):
        globals()[_name] = getattr(_module, _name)
