"""Leader election on a coordination.k8s.io Lease, as controller-runtime does it.

Only the leader runs handlers and resyncs, so two replicas never reconcile the same object at once.
A leader that cannot renew in time exits: the pod restarts and another replica takes over.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import threading
import time

import kubernetes
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

LEASE_NAME = "model-traffic-operator"
LEASE_SECONDS = 15
RENEW_EVERY_SECONDS = 5


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class LeaderElector:
    def __init__(self, api_client: kubernetes.client.ApiClient, namespace: str, identity: str | None = None):
        self.api = kubernetes.client.CoordinationV1Api(api_client)
        self.namespace = namespace
        self.identity = identity or f"{socket.gethostname()}-{os.getpid()}"

    def _try_acquire(self) -> bool:
        now = _now()
        try:
            lease = self.api.read_namespaced_lease(LEASE_NAME, self.namespace)
        except ApiException as error:
            if error.status != 404:
                raise
            body = kubernetes.client.V1Lease(
                metadata=kubernetes.client.V1ObjectMeta(name=LEASE_NAME, namespace=self.namespace),
                spec=kubernetes.client.V1LeaseSpec(
                    holder_identity=self.identity, lease_duration_seconds=LEASE_SECONDS,
                    acquire_time=now, renew_time=now, lease_transitions=0,
                ),
            )
            try:
                self.api.create_namespaced_lease(self.namespace, body)
                return True
            except ApiException as create_error:
                if create_error.status == 409:
                    return False
                raise
        spec = lease.spec or kubernetes.client.V1LeaseSpec()
        lease.spec = spec
        held_by_other = spec.holder_identity not in (None, "", self.identity)
        expired = spec.renew_time is None or (
            spec.renew_time + datetime.timedelta(seconds=spec.lease_duration_seconds or LEASE_SECONDS) < now
        )
        if held_by_other and not expired:
            return False
        if spec.holder_identity != self.identity:
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
            spec.acquire_time = now
        spec.holder_identity = self.identity
        spec.renew_time = now
        spec.lease_duration_seconds = LEASE_SECONDS
        try:
            # resourceVersion in the body makes this a compare-and-swap: one winner.
            self.api.replace_namespaced_lease(LEASE_NAME, self.namespace, lease)
            return True
        except ApiException as error:
            if error.status == 409:
                return False
            raise

    def acquire(self) -> None:
        """Block until this process holds the lease."""
        log.info("waiting for leadership (lease %s/%s) as %s", self.namespace, LEASE_NAME, self.identity)
        while not self._try_acquire():
            time.sleep(RENEW_EVERY_SECONDS)
        log.info("became leader as %s", self.identity)

    def keep_renewing(self) -> None:
        """Renew in the background; exit the process when leadership is lost."""

        def loop() -> None:
            last_renewal = time.monotonic()
            while True:
                time.sleep(RENEW_EVERY_SECONDS)
                try:
                    if self._try_acquire():
                        last_renewal = time.monotonic()
                        continue
                except Exception:
                    log.exception("lease renewal failed")
                if time.monotonic() - last_renewal > LEASE_SECONDS - RENEW_EVERY_SECONDS:
                    log.error("lost leadership; exiting so that another replica takes over")
                    os._exit(1)

        threading.Thread(target=loop, name="leader-election", daemon=True).start()
