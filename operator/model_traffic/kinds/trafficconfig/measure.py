"""The analysis' I/O, behind one seam: provider credentials read, Prometheus queried, webhooks called.

What the reconcile asks of it: :func:`run_analysis` for the state machine's :class:`AnalysisRequest`. It returns
the results, or that they are not there yet (a webhook still running, or credentials missing) so that the
reconcile records what it waits for and comes back.

- Credentials (a bearer token, basic auth, header values, an HMAC key, a CA bundle) come from Secrets (and a CA
  also from a ConfigMap) in the TrafficConfig's namespace, read by name with a GET when a check runs: the operator
  never lists or watches Secrets (README, "Secret access"). Their values go into requests only: never into status,
  Events, logs or error messages; a missing Secret or key is named, never its content.
- Webhooks never hold a reconcile worker: each call runs on a small bounded pool (:class:`WebhookCalls`); the
  reconcile starts it, records it in ``status.webhookCalls`` and requeues; the call's end wakes the TrafficConfig
  and the next reconcile picks the answer up. The timeout is enforced here, from the call's start, whatever the
  receiver does (an answer trickling in byte by byte included): the check fails once it has passed. A restart
  forgets the calls in flight; the step is still due, so the next reconcile calls again (``status.webhookCalls``
  shows since when the check has waited).
- Every address is checked against the administrator's outbound policy first, once more after DNS resolution.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import queue
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal

from kubernetes.client.exceptions import ApiException

from model_traffic import kube
from model_traffic.kinds.common import duration_seconds
from model_traffic.kinds.metrictemplate.resolve import TEMPLATE_TYPES, ResolvedAnalysis, resolve_analysis
from model_traffic.kinds.trafficconfig.analysis import HTTPPrometheus, Target, run_metrics
from model_traffic.kinds.trafficconfig.analysis_spec import CABundle, Header, Metric, Prometheus, Webhook
from model_traffic.kinds.trafficconfig.spec import MetricResult, TrafficConfigSpec
from model_traffic.kube import Kube
from model_traffic.outbound import DEFAULT_POLICY, OutboundPolicy, host_of

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Model-Traffic-Signature"
# While a provider's Secret (or its key) is missing the check is not run; Secrets are not watched, so look again.
CREDENTIALS_RECHECK_SECONDS = 15.0

ValueKind = Literal["Secret", "ConfigMap"]
# (kind, name, key) -> the value, or None when the object or its key is missing. In the TrafficConfig's namespace.
ReadValue = Callable[[ValueKind, str, str], str | None]


class MissingValue(LookupError):
    """A Secret or ConfigMap key a provider needs is not there: said without any value."""


def kube_values(kube_: Kube, namespace: str) -> ReadValue:
    """Values read with a GET each (Secrets are never cached: kube.Kube.get reads them from the API server)."""

    def read(kind: ValueKind, name: str, key: str) -> str | None:
        if kind == "Secret":
            secret = kube_.get(kube.SECRET, namespace, name)
            raw = ((secret or {}).get("data") or {}).get(key)
            return base64.b64decode(raw).decode() if raw is not None else None
        try:
            config_map = kube_.core.read_namespaced_config_map(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return (config_map.data or {}).get(key)

    return read


def _required(read: ReadValue, kind: ValueKind, name: str, key: str, what: str) -> str:
    value = read(kind, name, key)
    if value is None:
        raise MissingValue(f"{what}: {kind} {name} or its key {key} not found")
    return value


def header_values(headers: list[Header] | None, read: ReadValue, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for header in headers or []:
        if header.value is not None:
            out[header.name] = header.value
        elif header.value_from is not None:
            ref = header.value_from.secret_key_ref
            value = _required(read, "Secret", ref.name, ref.key, f"{what} header {header.name}")
            if any(c in value for c in "\r\n\0"):  # a value that would end the header early: refused, not sent
                raise MissingValue(f"{what} header {header.name}: Secret {ref.name} key {ref.key} holds a "
                                   "line break or NUL")
            out[header.name] = value.strip()
    return out


def _ca(ca: CABundle | None, read: ReadValue, what: str) -> str | None:
    if ca is None:
        return None
    if ca.secret_key_ref is not None:
        return _required(read, "Secret", ca.secret_key_ref.name, ca.secret_key_ref.key, f"{what} ca")
    ref = ca.config_map_key_ref
    assert ref is not None  # the CRD asks for exactly one
    return _required(read, "ConfigMap", ref.name, ref.key, f"{what} ca")


def prometheus_client(prometheus: Prometheus, read: ReadValue) -> HTTPPrometheus:
    """A client for ``prometheus`` with its auth: ``secretRef``'s token (bearer) or username and password (basic),
    its CA and headers. Raises :class:`MissingValue` naming what is missing."""
    what = f"Prometheus {prometheus.address}"
    headers = header_values(prometheus.headers, read, what)
    if prometheus.secret_ref is not None:
        name = prometheus.secret_ref.name
        token = read("Secret", name, "token")
        if token is not None:
            headers["Authorization"] = f"Bearer {token.strip()}"
        else:
            username, password = read("Secret", name, "username"), read("Secret", name, "password")
            if username is None or password is None:
                raise MissingValue(f"{what}: Secret {name} not found, or it has neither the key token nor the keys "
                                   "username and password")
            basic = base64.b64encode(f"{username}:{password}".encode()).decode()
            headers["Authorization"] = f"Basic {basic}"
    return HTTPPrometheus(prometheus.address, headers=headers, ca_pem=_ca(prometheus.ca, read, what))


def resolved_refusal(url: str, outbound: OutboundPolicy) -> str | None:
    """Why ``url`` may not be called once its host name is resolved (a name pointing at a denied address); None when
    it may, or when it does not resolve (the call then fails as it would anyway). The literal address was checked
    before the reconcile went this far (``render.outbound_refusals``)."""
    host = host_of(url)
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):
        return None
    return outbound.check_resolved(host, addresses)


# --- webhooks ----------------------------------------------------------------------------------------------------

def signature(body: bytes, key: str) -> str:
    """The value of X-Model-Traffic-Signature: ``sha256=`` and the hex HMAC-SHA256 of the exact body (GitHub's
    X-Hub-Signature-256 scheme); a receiver computes the same over the bytes it got and compares in constant
    time (docs/progressive-delivery.md)."""
    return "sha256=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class PreparedCall:
    """A webhook request with its headers resolved (Secret values inside: never logged, never in status)."""

    hook: Webhook
    body: bytes
    headers: dict[str, str]

    def __repr__(self) -> str:  # a traceback or a debug log shows no header value
        return f"PreparedCall({self.hook.name!r}, {len(self.body)} bytes, headers={sorted(self.headers)})"


def prepare_call(hook: Webhook, payload: dict[str, Any], read: ReadValue) -> PreparedCall:
    body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    headers = header_values(hook.headers, read, f"webhook {hook.name}")
    if hook.signature is not None:
        ref = hook.signature.secret_key_ref
        key = _required(read, "Secret", ref.name, ref.key, f"webhook {hook.name} signature")
        headers[SIGNATURE_HEADER] = signature(body, key)
    return PreparedCall(hook, body, {**headers, "Content-Type": "application/json"})


def call_webhook(call: PreparedCall, outbound: OutboundPolicy = DEFAULT_POLICY,
                 deadline: float | None = None) -> MetricResult:
    """POST the body; any 2xx answer passes, anything else (or no answer in time) fails the check. Blocking: runs
    on the webhook pool (:class:`WebhookCalls`), never on a reconcile worker. ``deadline`` (time.monotonic) bounds
    the whole call: reading stops there."""
    hook = call.hook
    name = f"webhook/{hook.name}"
    refused = resolved_refusal(hook.url, outbound)
    if refused:
        return MetricResult(name=name, passed=False, message=f"not called: {refused}")
    timeout = duration_seconds(hook.timeout)
    request = urllib.request.Request(hook.url, data=call.body, method="POST", headers=call.headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            code = response.status
            _drain(response, deadline)
    except urllib.error.HTTPError as error:
        body = error.read(512).decode(errors="replace").strip()
        return MetricResult(name=name, passed=False, message=f"HTTP {error.code}" + (f": {body}" if body else ""))
    except TimeoutError:
        return MetricResult(name=name, passed=False, message=f"no answer within {hook.timeout}")
    except (OSError, ValueError) as error:
        return MetricResult(name=name, passed=False, message=f"webhook failed: {error}")
    return MetricResult(name=name, passed=200 <= code < 300, message=f"HTTP {code}")


def _drain(response: Any, deadline: float | None) -> None:
    """Read (and drop) the answer's body, at most 64 KiB, stopping at the deadline."""
    left = 64 * 1024
    while left > 0 and (deadline is None or time.monotonic() < deadline):
        chunk = response.read1(min(left, 4096)) if hasattr(response, "read1") else response.read(min(left, 4096))
        if not chunk:
            return
        left -= len(chunk)


@dataclass
class _Call:
    future: Future[MetricResult]
    submitted: float
    timeout: float
    started: list[float] = field(default_factory=list)  # set by the worker when the call begins


class WebhookCalls:
    """Webhook calls beside the reconciles: at most ``workers`` at once, each awaited up to its timeout.

    In memory only, by design: a restart loses the calls, and the next reconcile (the step still due, recorded in
    status) calls again. ``wake`` is told (namespace, name) when a call ends: the app enqueues the TrafficConfig."""

    def __init__(self, workers: int = 8, clock: Callable[[], float] = time.monotonic) -> None:
        self._work: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._workers = workers
        self._threads: list[threading.Thread] = []
        self._threads_lock = threading.Lock()  # apart from _lock, which poll holds while it starts a call
        self._calls: dict[str, _Call] = {}
        self._lock = threading.Lock()
        self._clock = clock
        self.wake: Callable[[str, str], None] | None = None

    def poll(self, key: str, call: PreparedCall, owner: tuple[str, str],
             outbound: OutboundPolicy = DEFAULT_POLICY) -> MetricResult | None:
        """The call's result once it has ended (then forgotten), or a failure once its timeout has passed; None
        while it runs (the first poll starts it)."""
        now = self._clock()
        with self._lock:
            current = self._calls.get(key)
            if current is None:
                self._calls[key] = self._start(call, owner, outbound, now)
                return None
            if current.future.done():
                del self._calls[key]
                return current.future.result()
            began = current.started[0] if current.started else None
            if now - (began if began is not None else current.submitted) >= current.timeout:
                del self._calls[key]  # the thread ends by its own socket timeout; its answer is dropped
                name = f"webhook/{call.hook.name}"
                if began is None:
                    return MetricResult(name=name, passed=False, message=f"not called within {call.hook.timeout}: "
                                        "the operator's webhook calls are all busy")
                return MetricResult(name=name, passed=False, message=f"no answer within {call.hook.timeout}")
            return None

    def fire(self, call: PreparedCall, outbound: OutboundPolicy, what: str) -> None:
        """A call whose answer nobody waits for (PostRollout): a failure is logged."""

        def run() -> None:
            outcome = call_webhook(call, outbound, time.monotonic() + duration_seconds(call.hook.timeout))
            if not outcome.passed:
                log.warning("PostRollout webhook %s of %s: %s", call.hook.name, what, outcome.message)

        self._submit(run)

    def remaining(self, key: str) -> float | None:
        """Seconds until the call's timeout; None when there is no such call."""
        with self._lock:
            current = self._calls.get(key)
            if current is None:
                return None
            began = current.started[0] if current.started else current.submitted
            return max(0.0, current.timeout - (self._clock() - began))

    def _start(self, call: PreparedCall, owner: tuple[str, str], outbound: OutboundPolicy, now: float) -> _Call:
        timeout = duration_seconds(call.hook.timeout)
        entry = _Call(future=Future(), submitted=now, timeout=timeout)

        def run() -> MetricResult:
            entry.started.append(self._clock())
            return call_webhook(call, outbound, time.monotonic() + timeout)

        entry.future = self._submit(run)
        entry.future.add_done_callback(lambda _: self._woken(owner))
        return entry

    def _woken(self, owner: tuple[str, str]) -> None:
        if self.wake is not None:
            try:
                self.wake(*owner)
            except Exception:  # waking is a courtesy: the requeue comes anyway
                log.exception("waking %s/%s after a webhook call failed", *owner)

    def _submit(self, call: Callable[[], Any]) -> Future[Any]:
        """Run ``call`` on one of the pool's threads: daemon threads, so a shutdown never waits for a receiver that
        does not answer (a ThreadPoolExecutor's threads are joined at exit)."""
        future: Future[Any] = Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(call())
            except BaseException as error:  # handed to whoever polls the call
                future.set_exception(error)

        self._work.put(run)
        with self._threads_lock:
            if len(self._threads) < self._workers:
                thread = threading.Thread(target=self._serve, name=f"webhook-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
        return future

    def _serve(self) -> None:
        while True:
            self._work.get()()


WEBHOOK_CALLS = WebhookCalls()


# --- one analysis ------------------------------------------------------------------------------------------------

@dataclass
class Measurement:
    """The results of one analysis, or why they are not there yet."""

    results: list[MetricResult] | None  # None: not complete
    waiting: list[Webhook] = field(default_factory=list)  # webhooks whose answers are awaited
    missing: list[str] = field(default_factory=list)  # credentials that could not be read, in words
    recheck_after: float | None = None  # when to look again

    @property
    def complete(self) -> bool:
        return self.results is not None


@dataclass(frozen=True)
class AnalysisTarget:
    """Everything about the object an analysis is of."""

    namespace: str
    name: str
    model: str
    check: str  # identifies the check this analysis is for (a call of another check is never taken for it)


def webhook_payload(candidate: Target, stable: Target, hook: Webhook, target: AnalysisTarget) -> dict[str, Any]:
    """What a webhook receives (Flagger's shape, plus the versions and their served model names)."""
    return {
        "name": target.name, "namespace": target.namespace, "phase": hook.type, "modelName": target.model,
        "candidate": {"version": candidate.version, "servedModel": candidate.served_model},
        "stable": {"version": stable.version, "servedModel": stable.served_model},
    }


def run_analysis(metrics: list[Metric], hooks: list[Webhook], *, candidate: Target, stable: Target,
                 interval: str, prometheus: Prometheus | None, template_prometheus: dict[str, Prometheus],
                 target: AnalysisTarget, read: ReadValue, outbound: OutboundPolicy = DEFAULT_POLICY,
                 calls: WebhookCalls = WEBHOOK_CALLS) -> Measurement:
    """Credentials first (a missing one stops the check before anything is called), then the webhooks (started,
    or their answers collected), then the metrics once every webhook has answered: a check still waiting queries
    nothing."""
    missing: list[str] = []
    prepared: list[PreparedCall] = []
    for hook in hooks:
        try:
            prepared.append(prepare_call(hook, webhook_payload(candidate, stable, hook, target), read))
        except MissingValue as error:
            missing.append(str(error))
    groups: dict[str, list[Metric]] = {}
    providers: dict[str, Prometheus | None] = {}
    for metric in metrics:
        provider = template_prometheus.get(metric.name, prometheus)
        key = provider.model_dump_json() if provider is not None else ""
        providers[key] = provider
        groups.setdefault(key, []).append(metric)
    clients: dict[str, HTTPPrometheus | str] = {}  # by provider: a client, or why its metrics fail
    for key, provider in providers.items():
        if provider is None:
            clients[key] = "no Prometheus: set spec.analysis.prometheus.address"
        elif refused := resolved_refusal(provider.address, outbound):
            clients[key] = f"Prometheus not queried: {refused}"
        else:
            try:
                clients[key] = prometheus_client(provider, read)
            except MissingValue as error:
                missing.append(str(error))
    if missing:
        return Measurement(None, missing=missing, recheck_after=CREDENTIALS_RECHECK_SECONDS)

    hook_results: list[MetricResult] = []
    waiting: list[Webhook] = []
    recheck: list[float] = []
    for call in prepared:
        hook = call.hook
        key = f"{target.namespace}/{target.name}/{target.check}/{hook.type}/{hook.name}/{candidate.version}"
        outcome = calls.poll(key, call, (target.namespace, target.name), outbound)
        if outcome is None:
            waiting.append(hook)
            left = calls.remaining(key)
            recheck.append((left if left is not None else 0.0) + 0.5)
        else:
            hook_results.append(outcome)
    if waiting:
        return Measurement(None, waiting, recheck_after=min(recheck))

    metric_results: dict[str, MetricResult] = {}
    for key, group in groups.items():
        client = clients[key]
        if isinstance(client, str):
            metric_results.update({m.name: MetricResult(name=m.name, passed=False, message=client) for m in group})
            continue
        for result in run_metrics(group, client, candidate=candidate, stable=stable, model_name=target.model,
                                  namespace=target.namespace, interval=interval):
            metric_results[result.name] = result
    return Measurement([*(metric_results[m.name] for m in metrics), *hook_results])


# --- the templates a spec references ----------------------------------------------------------------------------

def template_lookup(kube_: Kube) -> Callable[[str, str, str], dict[str, Any] | None]:
    """Templates from the operator's watch cache (app.py watches both kinds)."""

    def lookup(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return kube_.get(TEMPLATE_TYPES[kind], namespace, name)

    return lookup


def with_templates(spec: TrafficConfigSpec, namespace: str,
                   lookup: Callable[[str, str, str], dict[str, Any] | None]) -> tuple[TrafficConfigSpec,
                                                                                      ResolvedAnalysis]:
    """``spec`` with every templateRef metric replaced by its resolved inline metric, and the resolution (its
    problems, the templates' own Prometheus by metric name)."""
    metrics = list(spec.analysis.metrics or []) if spec.analysis else []
    if not any(m.template_ref for m in metrics):
        return spec, ResolvedAnalysis(metrics=metrics)
    resolved = resolve_analysis(metrics, namespace, lookup)
    assert spec.analysis is not None
    analysis = spec.analysis.model_copy(update={"metrics": resolved.metrics})
    return spec.model_copy(update={"analysis": analysis}), resolved


def template_refusals(resolved: ResolvedAnalysis, outbound: OutboundPolicy) -> list[str]:
    """The templates' own Prometheus addresses the outbound policy refuses, in words."""
    refusals = []
    for metric, prometheus in sorted(resolved.prometheus.items()):
        refused = outbound.url_refusal(prometheus.address)
        if refused:
            refusals.append(f"the Prometheus of metric {metric}'s template: {refused}")
    return refusals
