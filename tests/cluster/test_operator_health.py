"""``/healthz`` notices an API server the operator cannot reach (issue #12: it answered 200 for 13 minutes).

The operator runs as the chart's ServiceAccount against the real API server, through a TCP relay on loopback
that the test can cut: while cut, connections are refused and the open ones reset, which is what the operator
sees of an API server that is gone. The relay forwards bytes only (TLS stays end to end).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import Cluster, chart_values_for, install_chart, start_operator, stop_operator, wait_for

pytestmark = pytest.mark.cluster

BOUND_SECONDS = 5


class CuttableRelay:
    """127.0.0.1:<port> -> the API server; ``cut()`` refuses and resets, ``restore()`` forwards again."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="relay-accept", daemon=True).start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            for sock in self._open:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                sock.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open |= {client, server}
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with self._lock:
                    self._open.discard(sock)
                with contextlib.suppress(OSError):
                    sock.close()


def healthz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:
        return 0, str(error)


def test_healthz_fails_while_the_api_server_is_unreachable_and_recovers(cluster: Cluster, tmp_path: Path) -> None:
    identity = install_chart(cluster, chart_values_for({}))
    config = yaml.safe_load(identity.kubeconfig.read_text())
    server = urllib.parse.urlsplit(config["clusters"][0]["cluster"]["server"])
    relay = CuttableRelay((server.hostname or "127.0.0.1", server.port or 443))
    relay.restore()
    config["clusters"][0]["cluster"]["server"] = f"https://{server.hostname}:{relay.port}"
    relayed = tmp_path / "relayed.kubeconfig"
    relayed.write_text(yaml.safe_dump(config))

    operator = start_operator(cluster, tmp_path / "operator.log", KUBECONFIG=str(relayed),
                              MTO_API_SERVER_UNREACHABLE_SECONDS=str(BOUND_SECONDS), **identity.environment())
    port = int(str(operator.process.args[-1]))  # type: ignore[index]  # start_operator: --liveness-port PORT
    try:
        assert healthz(port)[0] == 200
        relay.cut()
        # The bound, a reachability check (every 5 s) and kopf's probe cache (10 s) later at most.
        answers: list[tuple[int, str]] = []
        wait_for(lambda: answers.append(healthz(port)) or answers[-1][0] == 500, 45,
                 "/healthz to fail while the API server is unreachable")
        assert {status for status, _ in answers} <= {200, 500}, f"/healthz stopped answering: {answers}"
        assert "the API server has not answered" in operator.log()
        relay.restore()
        wait_for(lambda: healthz(port)[0] == 200, 45, "/healthz to answer 200 again once the API server is back")
    finally:
        relay.cut()
        stop_operator(operator)
