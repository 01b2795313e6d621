"""The analysis' I/O seam: credentials into headers (never into messages), signed webhooks, calls beside the
reconcile with an enforced timeout. Webhooks go to a real HTTP server on loopback."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from model_traffic.kinds.trafficconfig import measure
from model_traffic.kinds.trafficconfig.analysis import Target
from model_traffic.kinds.trafficconfig.analysis_spec import Metric, Prometheus, Webhook
from model_traffic.outbound import OutboundPolicy
from tests.support.webhooks import WebhookServer

LOOPBACK = OutboundPolicy.parse(deny=[], allow=[])  # the default policy allows loopback too; explicit here
SECRETS = {("Secret", "hooks", "token"): "s3cr3t-token", ("Secret", "hooks", "hmac"): "k3y",
           ("Secret", "prom", "username"): "alice", ("Secret", "prom", "password"): "pa55",
           ("Secret", "bearer", "token"): "b3arer\n", ("ConfigMap", "ca", "ca.crt"): None}


@pytest.fixture
def receiver() -> Iterator[WebhookServer]:
    with WebhookServer() as server:
        yield server


def read(kind: str, name: str, key: str) -> str | None:
    return SECRETS.get((kind, name, key))


def hook(url: str, **fields: Any) -> Webhook:
    return Webhook.model_validate({"name": "eval", "type": "Rollout", "url": url, **fields})


SIGNED = {"headers": [{"name": "Authorization-Token", "valueFrom": {"secretKeyRef": {"name": "hooks", "key": "token"}}},
                      {"name": "X-Team", "value": "llm"}],
          "signature": {"secretKeyRef": {"name": "hooks", "key": "hmac"}}}
TARGET = measure.AnalysisTarget("llm", "chat", "chat", check="c1")


def run(calls: measure.WebhookCalls, hooks: list[Webhook]) -> measure.Measurement:
    return measure.run_analysis([], hooks, candidate=Target("v2", "chat-v2"), stable=Target("v1", "chat-v1"),
                                interval="1m", prometheus=None, template_prometheus={}, target=TARGET, read=read,
                                outbound=LOOPBACK, calls=calls)


def until_complete(calls: measure.WebhookCalls, hooks: list[Webhook], timeout: float = 10) -> measure.Measurement:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        measured = run(calls, hooks)
        if measured.complete:
            return measured
        time.sleep(0.05)
    raise AssertionError("the webhook call never completed")


def test_a_signed_webhook_carries_headers_from_secrets_and_a_verifiable_signature(
        receiver: WebhookServer) -> None:
    calls = measure.WebhookCalls(workers=2)
    first = run(calls, [hook(receiver.url("/eval"), **SIGNED)])
    assert not first.complete and [h.name for h in first.waiting] == ["eval"]  # started, not awaited
    done = until_complete(calls, [hook(receiver.url("/eval"), **SIGNED)])
    assert done.results is not None and [(r.name, r.passed) for r in done.results] == [("webhook/eval", True)]
    [call] = receiver.wait_for_calls("/eval", count=1, timeout=5)
    assert call.headers["authorization-token"] == "s3cr3t-token" and call.headers["x-team"] == "llm"
    # What a receiver does: HMAC-SHA256 of the exact bytes received, with the shared key, compared in constant time.
    expected = "sha256=" + hmac.new(b"k3y", call.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(call.headers["x-model-traffic-signature"], expected)
    assert call.json["candidate"] == {"version": "v2", "servedModel": "chat-v2"}
    assert json.loads(call.body) == call.json


def test_a_slow_webhook_does_not_hold_the_caller_and_fails_once_its_timeout_passes(
        receiver: WebhookServer) -> None:
    receiver.respond("/slow", delay=5.0)
    calls = measure.WebhookCalls(workers=2)
    slow = [hook(receiver.url("/slow"), timeout="1s")]
    started = time.monotonic()
    assert not run(calls, slow).complete
    assert time.monotonic() - started < 0.5  # the reconcile returned at once
    done = until_complete(calls, slow)
    assert done.results is not None
    [result] = done.results
    assert (result.passed, result.message) == (False, "no answer within 1s")
    assert time.monotonic() - started < 3.0  # enforced from the call's start, not the receiver's 5 s
    # The abandoned call's thread still waits for the receiver: a daemon, so the operator's exit never waits for it.
    assert [t.daemon for t in threading.enumerate() if t.name.startswith("webhook-")] == [True] * len(
        [t for t in threading.enumerate() if t.name.startswith("webhook-")])


def test_a_call_for_another_check_is_not_taken_for_this_one(receiver: WebhookServer) -> None:
    calls = measure.WebhookCalls(workers=2)
    hooks = [hook(receiver.url("/eval"))]
    until_complete(calls, hooks)
    other = measure.run_analysis([], hooks, candidate=Target("v2", "chat-v2"), stable=Target("v1", "chat-v1"),
                                 interval="1m", prometheus=None, template_prometheus={},
                                 target=measure.AnalysisTarget("llm", "chat", "chat", check="c2"), read=read,
                                 outbound=LOOPBACK, calls=calls)
    assert not other.complete  # a new call is started for the new check


def test_a_missing_secret_is_named_without_any_value() -> None:
    calls = measure.WebhookCalls(workers=1)
    missing = {"headers": [{"name": "X-Key", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}]}
    measured = run(calls, [hook("http://127.0.0.1:9/", **missing)])
    assert not measured.complete
    assert measured.missing == ["webhook eval header X-Key: Secret absent or its key k not found"]
    assert measured.recheck_after == measure.CREDENTIALS_RECHECK_SECONDS


def test_the_end_of_a_call_wakes_its_traffic_config(receiver: WebhookServer) -> None:
    calls = measure.WebhookCalls(workers=1)
    woken: list[tuple[str, str]] = []
    calls.wake = lambda namespace, name: woken.append((namespace, name))
    run(calls, [hook(receiver.url("/eval"))])
    deadline = time.monotonic() + 5
    while not woken and time.monotonic() < deadline:
        time.sleep(0.02)
    assert woken == [("llm", "chat")]


def test_prometheus_auth_headers_from_a_secret() -> None:
    basic = measure.prometheus_client(Prometheus.model_validate(
        {"address": "https://p.example.com", "secretRef": {"name": "prom"},
         "headers": [{"name": "X-Scope-OrgID", "value": "tenant-a"}]}), read)
    assert basic.headers == {"Authorization": "Basic " + base64.b64encode(b"alice:pa55").decode(),
                             "X-Scope-OrgID": "tenant-a"}
    bearer = measure.prometheus_client(Prometheus.model_validate(
        {"address": "https://p.example.com", "secretRef": {"name": "bearer"}}), read)
    assert bearer.headers == {"Authorization": "Bearer b3arer"}
    with pytest.raises(measure.MissingValue, match="Secret absent not found") as missing:
        measure.prometheus_client(Prometheus.model_validate(
            {"address": "https://p.example.com", "secretRef": {"name": "absent"}}), read)
    assert "pa55" not in str(missing.value)
    with pytest.raises(measure.MissingValue, match=r"ConfigMap ca or its key ca\.crt not found"):
        measure.prometheus_client(Prometheus.model_validate(
            {"address": "https://p.example.com", "ca": {"configMapKeyRef": {"name": "ca", "key": "ca.crt"}}}), read)


def test_a_header_value_with_a_line_break_is_refused_not_sent() -> None:
    values = {("Secret", "bad", "v"): "ok\r\nX-Injected: 1"}
    with pytest.raises(measure.MissingValue, match="line break") as refused:
        measure.header_values([Webhook.model_validate({"name": "h", "type": "Rollout", "url": "http://x/", "headers": [
            {"name": "X-A", "valueFrom": {"secretKeyRef": {"name": "bad", "key": "v"}}}]}).headers or []][0],
            lambda kind, name, key: values.get((kind, name, key)), "webhook h")
    assert "Injected" not in str(refused.value)


def test_a_prepared_call_never_shows_header_values() -> None:
    call = measure.prepare_call(hook("http://127.0.0.1:9/", **SIGNED), {"a": 1}, read)
    assert "s3cr3t" not in repr(call) and "sha256=" not in repr(call)


def test_a_missing_prometheus_secret_stops_the_check_before_any_webhook_is_called(receiver: WebhookServer) -> None:
    calls = measure.WebhookCalls(workers=1)
    absent = Prometheus.model_validate({"address": "http://127.0.0.1:9", "secretRef": {"name": "absent"}})
    metric = Metric.model_validate({"name": "e", "builtin": "ErrorRate", "max": 0.1})
    measured = measure.run_analysis([metric], [hook(receiver.url("/eval"))], candidate=Target("v2", "chat-v2"),
                                    stable=Target("v1", "chat-v1"), interval="1m", prometheus=absent,
                                    template_prometheus={}, target=TARGET, read=read, outbound=LOOPBACK, calls=calls)
    assert not measured.complete and measured.missing and measured.waiting == []
    time.sleep(0.3)
    assert receiver.calls("/eval") == []  # called again and again while the Secret is missing, it would spam
