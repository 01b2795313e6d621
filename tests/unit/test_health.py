"""The API server reachability behind /healthz, against real sockets: a port that answers and one that refuses."""

from __future__ import annotations

import socket
import time

import kubernetes

from model_traffic.health import ApiServerReachability
from tests.support.webhooks import WebhookServer


def client_for(url: str) -> kubernetes.client.ApiClient:
    config = kubernetes.client.Configuration()
    config.host = url
    return kubernetes.client.ApiClient(config)


def refused_url() -> str:
    with socket.socket() as sock:  # bound, never listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_an_answering_server_is_healthy_and_an_unreachable_one_fails_after_the_bound() -> None:
    with WebhookServer() as server:  # any HTTP answer (here 501 to a GET) proves the server is reachable
        reachable = ApiServerReachability(client_for(server.url("")), unreachable_after=0.2)
        assert reachable.check_once()
        time.sleep(0.3)
        assert reachable.check_once()
        assert reachable.health().healthy

    dead = ApiServerReachability(client_for(refused_url()), unreachable_after=0.2)
    assert not dead.check_once()
    assert dead.health().healthy, "within the bound: a blip is not an outage"
    time.sleep(0.3)
    assert not dead.check_once()
    verdict = dead.health()
    assert not verdict.healthy
    assert "the API server has not answered for" in verdict.message
    assert "more than 0s" in verdict.message and "Connection refused" in verdict.message
