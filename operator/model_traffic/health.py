"""Whether the operator can still reach its API server: what ``/healthz`` answers besides "the process runs".

kopf's watches retry a lost connection for ever and say so only in the log, so a process whose API server is
gone (or unreachable through a broken network path, or refusing its token) used to answer its probes with 200
for as long as the outage lasted. A thread asks the API server for ``/version`` every few seconds with the
operator's own credentials and network path (the same client the reconciles use); the probes fail once no
answer has come for longer than ``MTO_API_SERVER_UNREACHABLE_SECONDS``. Kubernetes then marks the pod unready
and restarts it (a restart also replaces a watch connection that hangs without an error). Any HTTP answer counts
as reachable except an authentication failure: a 401 means the token no longer works, which no watch survives.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import kubernetes
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

CHECK_EVERY_SECONDS = 5.0
REQUEST_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Health:
    healthy: bool
    message: str


class ApiServerReachability:
    """Tracks the last time the API server answered; ``health()`` says whether that is recent enough."""

    def __init__(self, api_client: kubernetes.client.ApiClient, unreachable_after: float,
                 check_every: float = CHECK_EVERY_SECONDS) -> None:
        self.version_api = kubernetes.client.VersionApi(api_client)
        self.unreachable_after = unreachable_after
        self.check_every = check_every
        self._last_success = time.monotonic()  # the process just started: give it one full bound
        self._last_error = ""
        self._lock = threading.Lock()
        self._started = False

    def check_once(self) -> bool:
        try:
            self.version_api.get_code(_request_timeout=REQUEST_TIMEOUT_SECONDS)
        except ApiException as error:
            if error.status != 401:
                self._record_success()  # it answered: reachable (an odd answer is not an outage)
                return True
            self._record_error(f"HTTP 401 {error.reason}: the API server refuses the operator's credentials")
            return False
        except Exception as error:  # connection refused, timed out, DNS, TLS: not reachable
            self._record_error(f"{type(error).__name__}: {error}")
            return False
        self._record_success()
        return True

    def _record_success(self) -> None:
        with self._lock:
            if self._last_error:
                log.info("the API server answers again")
            self._last_success, self._last_error = time.monotonic(), ""

    def _record_error(self, error: str) -> None:
        with self._lock:
            if not self._last_error:
                log.warning("the API server does not answer: %s", error)
            self._last_error = error

    def start(self) -> None:
        if self._started:
            return
        self._started = True

        def loop() -> None:
            while True:
                self.check_once()
                time.sleep(self.check_every)

        threading.Thread(target=loop, name="api-server-reachability", daemon=True).start()

    def health(self) -> Health:
        with self._lock:
            silent_for = time.monotonic() - self._last_success
            error = self._last_error
        if silent_for <= self.unreachable_after:
            return Health(True, "the API server answers" if not error
                          else f"the API server has not answered for {silent_for:.0f}s ({error})")
        return Health(False, f"the API server has not answered for {silent_for:.0f}s "
                             f"(more than {self.unreachable_after:.0f}s): {error or 'no answer'}")


_CURRENT: list[ApiServerReachability] = []


def install(tracker: ApiServerReachability) -> ApiServerReachability:
    """Make ``tracker`` the one the probes read (the process has one API server)."""
    _CURRENT[:] = [tracker]
    tracker.start()
    return tracker


def current() -> ApiServerReachability | None:
    return _CURRENT[0] if _CURRENT else None
