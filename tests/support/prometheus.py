"""A real Prometheus on loopback scraping a fake Envoy AI Gateway that serves ``gen_ai_*`` metrics.

:class:`GenAIExporter` serves, per served model (``gen_ai_request_model``), the four OpenTelemetry
histograms Envoy AI Gateway registers (``internal/metrics/genai.go``) as its Prometheus exporter shows
them: ``gen_ai_server_request_duration_seconds``, ``gen_ai_server_time_to_first_token_seconds``,
``gen_ai_server_time_per_output_token_seconds`` and ``gen_ai_client_token_usage`` (``_bucket`` with
``le``, ``_sum``, ``_count``), labelled ``gen_ai_operation_name``, ``gen_ai_provider_name``,
``gen_ai_original_model``, ``gen_ai_request_model``, ``gen_ai_response_model``; failed requests are
recorded in the request duration only, with ``error_type="_OTHER"`` (``RecordRequestCompletion``);
token usage has ``gen_ai_token_type="input"|"output"``. As with OpenTelemetry, a series appears with
its first observation, so a version that never failed has no ``error_type`` series at all.

The counters are driven by a :class:`Profile` per served model that a test sets and changes at run time
(:meth:`GenAIExporter.set_profile`): at each scrape (and at each profile change) the time elapsed since
the last one is integrated at the profile's rates, so every counter only grows, across profile changes,
removals and re-additions. Counts are fractional (exactly ``rate x elapsed``), which makes ratios of
``rate()``s of one model exact: the error rate, tokens per request and the quantiles do not depend on
scrape timing. Absolute rates (``requests_per_second``) carry the scrape jitter, well under 1%.

Precision of ``histogram_quantile(q, sum by (le) (rate(..._bucket[w])))`` once the window holds only
samples of one profile: the observations of a value ``v`` are split between its bucket and a neighbour
(:func:`place`) so that the interpolated **p95 is v** (to float precision) for any ``v`` from the first
bound up (1 ms, 1 token); the **p99 lies between v and the next bound above it**, at most 10% higher with
the layout of :data:`SECONDS_BUCKETS` / :data:`TOKEN_BUCKETS` (33 bounds a decade: 1, 1.1, ... 1.9, 2,
2.2, 2.4, 2.5, 2.6, ... 3.8, 4, 4.5, ... 9.5; 1 ms .. 100 s and 1 .. 100000 tokens; beyond the last bound
``histogram_quantile`` answers that bound). Means (``_sum / _count``, e.g. tokens per request) and the
error ratio are exact. Envoy AI Gateway's own layouts are much coarser (request duration doubles from
10 ms to 81.92 s), which would put interpolation errors of tens of percent on every quantile.

:class:`PrometheusServer` runs Debian's ``prometheus`` (``apt-get install prometheus``; 2.42 on bookworm)
with a 1 s scrape interval. Measured here (2 cores), seconds after the exporter's change, for ``[5s]`` /
``[10s]`` windows:

- the first scrape comes ~5 s after Prometheus starts (target discovery sends updates every 5 s): the
  session fixture costs ~6 s once;
- ``rate(x[3s])`` is the shortest window that always had the two samples ``rate`` needs (``[2s]``
  answered nothing ~1% of the time, after a late scrape); use ``5s`` or more;
- a new served model: first data (ratios, quantiles already exact) after 1.4-2.0 s for any window;
  absolute rates (``sum(rate(..._count))``) are right only once its series are older than the window,
  4.9 / 9.8 s, since ``rate`` does not extrapolate a new counter to before its zero;
- a quantile getting worse (TTFT 0.2 -> 0.6): past the midpoint after ~1 s, within 1% after 1.9-2.0 /
  2.9-3.0 s (5% slow requests in the window are enough to move a p95);
- a quantile getting better, or a mean/ratio (error rate 0 -> 0.2 -> 0): fully after 4.3-5.0 / 8.9-9.9 s,
  past the midpoint after ~2.4-3.0 / 4.9-5.5 s;
- :meth:`GenAIExporter.remove`: the series are marked stale at the next scrape, and ``rate(...[w])``
  answers nothing ("no data") after 3.4-4.0 / 8.3-8.9 s (fewer than two samples left in the window).

So an analysis whose checks are ``w + 1 s`` apart sees, at each check, a window with none of the previous
step's traffic mix. ``--query.lookback-delta`` (default 5m) matters only to instant selectors without
``rate``; staleness markers end a removed series at once, so it is left at its default.

The fixtures at the bottom are session-scoped; ``tests/conftest.py`` or a directory's ``conftest.py``
re-exports them with ``from tests.support.prometheus import genai_exporter, prometheus``.
"""

from __future__ import annotations

import bisect
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from model_traffic.kinds.trafficconfig.analysis import HTTPPrometheus
from model_traffic_dev.localcluster.process import die_with_parent, stop
from tests.support import prerequisites
from tests.support.loopback import LoopbackServer

# Names as Envoy AI Gateway's Prometheus exporter writes them (deliberately not imported from
# model_traffic.kinds.trafficconfig.analysis, so that a wrong name there fails the tests instead of agreeing with
# itself).
REQUEST_DURATION = "gen_ai_server_request_duration_seconds"
TIME_TO_FIRST_TOKEN = "gen_ai_server_time_to_first_token_seconds"
TIME_PER_OUTPUT_TOKEN = "gen_ai_server_time_per_output_token_seconds"
TOKEN_USAGE = "gen_ai_client_token_usage"
ERROR_TYPE_FALLBACK = "_OTHER"

_HELP = {
    REQUEST_DURATION: "Generative AI server request duration such as time-to-last byte or last output token.",
    TIME_TO_FIRST_TOKEN: "Time to receive first token in streaming responses.",
    TIME_PER_OUTPUT_TOKEN: "Time per output token generated after the first token for successful responses.",
    TOKEN_USAGE: "Number of tokens processed.",
}

_MANTISSAS = ("1", "1.1", "1.2", "1.3", "1.4", "1.5", "1.6", "1.7", "1.8", "1.9", "2", "2.2", "2.4", "2.5", "2.6",
              "2.8", "3", "3.2", "3.4", "3.6", "3.8", "4", "4.5", "5", "5.5", "6", "6.5", "7", "7.5", "8", "8.5",
              "9", "9.5")


def bucket_layout(first_exponent: int, last_exponent: int) -> tuple[float, ...]:
    """Upper bounds from 10**first_exponent to 10**last_exponent, 33 a decade (see the module doc)."""
    bounds = [float(f"{m}e{e}") for e in range(first_exponent, last_exponent) for m in _MANTISSAS]
    return (*bounds, float(f"1e{last_exponent}"))


SECONDS_BUCKETS = bucket_layout(-3, 2)  # 1 ms .. 100 s
TOKEN_BUCKETS = bucket_layout(0, 5)  # 1 .. 100000 tokens


def place(bounds: tuple[float, ...], value: float) -> list[tuple[int, float]]:
    """How observations of ``value`` are spread over the buckets: (bucket index, share) pairs, the index
    ``len(bounds)`` being ``+Inf``. Chosen so that linear interpolation puts the 0.95 quantile at ``value``.

    With ``value`` in ``(a, b]`` at ``f = (value - a) / (b - a)``: for ``f < 0.95`` a share
    ``x = (0.95 - f) / (1 - f)`` goes to the bucket below and ``1 - x`` to ``(a, b]``, so that rank 0.95
    lands in ``(a, b]`` at ``(0.95 - x) / (1 - x) = f``; for ``f >= 0.95`` a share ``0.95 / f`` goes to
    ``(a, b]`` and the rest to the bucket above, so that rank 0.95 lands at ``0.95 / (0.95 / f) = f``.
    Either way p99 falls between ``value`` and the bound above the bucket used last. Below the first bound
    (no bucket below) everything goes to the first bucket; above the last one, to ``+Inf``.
    """
    index = bisect.bisect_left(bounds, value)
    if index == len(bounds):
        return [(index, 1.0)]
    lower = bounds[index - 1] if index else 0.0
    fraction = (value - lower) / (bounds[index] - lower)
    if fraction >= 0.95:
        inside = 0.95 / fraction
        return [(index, inside), (index + 1, 1.0 - inside)]
    if index == 0:
        return [(0, 1.0)]
    below = (0.95 - fraction) / (1.0 - fraction)
    return [(index - 1, below), (index, 1.0 - below)]


@dataclass(frozen=True)
class Profile:
    """What one served model's traffic looks like. Every request streams; failed requests
    (``error_ratio``) count in the request duration only, as in Envoy AI Gateway."""

    requests_per_second: float = 5.0
    error_ratio: float = 0.0
    request_seconds: float = 1.0
    ttft_seconds: float = 0.2
    tpot_seconds: float = 0.02
    input_tokens_per_request: float = 200.0
    output_tokens_per_request: float = 100.0
    original_model: str | None = None  # gen_ai_original_model; default: the served name without "-<version>"
    provider: str = "openai"
    operation: str = "chat"


PROFILE_FIELDS = frozenset(f.name for f in fields(Profile))
Labels = tuple[tuple[str, str], ...]


@dataclass
class _Histogram:
    name: str
    bounds: tuple[float, ...]
    labels: Labels
    buckets: list[float]  # per bucket (not cumulative), the last one +Inf
    total: float = 0.0
    count: float = 0.0

    def observe(self, value: float, count: float) -> None:
        if count <= 0:
            return
        for index, share in place(self.bounds, value):
            self.buckets[index] += count * share
        self.total += value * count
        self.count += count


@dataclass
class _Model:
    profile: Profile
    last: float
    active: bool = True
    series: dict[tuple[str, Labels], _Histogram] = field(default_factory=dict)


def _fmt(value: float) -> str:
    return "+Inf" if value == float("inf") else f"{value:.12g}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Labels) -> str:
    return ",".join(f'{key}="{_escape(value)}"' for key, value in labels)


class GenAIExporter(LoopbackServer):
    """A threaded HTTP server on 127.0.0.1 (free port) serving ``/metrics``; see the module doc.

    ``set_profile(served_model, **fields)`` adds a served model or changes fields of its :class:`Profile`
    (unnamed fields keep their value; a new model starts from the defaults). ``remove(served_model)``
    stops serving its series (Prometheus marks them stale: no data); a later ``set_profile`` resumes the
    same counters. ``clock`` is for unit tests of the exporter itself.
    """

    thread_name = "genai-exporter"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._models: dict[str, _Model] = {}
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if urllib.parse.urlsplit(self.path).path != "/metrics":
                    self.send_error(404)
                    return
                body = exporter.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        super().__init__(Handler)

    @property
    def target(self) -> str:
        """host:port, as a Prometheus scrape target."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.target}/metrics"

    # -- what the test controls

    def set_profile(self, served_model: str, **changes: Any) -> Profile:
        """Add ``served_model`` or change its profile from now on; returns the profile in force."""
        unknown = set(changes) - PROFILE_FIELDS
        if unknown:
            raise TypeError(f"unknown profile field(s) {sorted(unknown)}; known: {sorted(PROFILE_FIELDS)}")
        with self._lock:
            now = self._clock()
            self._advance(now)
            model = self._models.get(served_model)
            if model is None:
                model = self._models[served_model] = _Model(Profile(), now)
            elif not model.active:
                model.active, model.last = True, now
            model.profile = replace(model.profile, **changes)
            return model.profile

    def profile(self, served_model: str) -> Profile | None:
        with self._lock:
            model = self._models.get(served_model)
            return model.profile if model is not None and model.active else None

    def remove(self, served_model: str) -> None:
        """Stop serving the model's series (its counters are kept for a later ``set_profile``)."""
        with self._lock:
            self._advance(self._clock())
            model = self._models.get(served_model)
            if model is not None:
                model.active = False

    def clear(self) -> None:
        """Remove every served model."""
        with self._lock:
            self._advance(self._clock())
            for model in self._models.values():
                model.active = False

    def served_models(self) -> list[str]:
        with self._lock:
            return sorted(name for name, model in self._models.items() if model.active)

    # -- the counters

    def _series(self, model: _Model, name: str, bounds: tuple[float, ...], labels: Labels) -> _Histogram:
        key = (name, labels)
        series = model.series.get(key)
        if series is None:
            series = model.series[key] = _Histogram(name, bounds, labels, [0.0] * (len(bounds) + 1))
        return series

    def _advance(self, now: float) -> None:
        for served_model, model in self._models.items():
            if not model.active:
                continue
            elapsed = max(0.0, now - model.last)
            model.last = now
            p = model.profile
            requests = max(0.0, p.requests_per_second) * elapsed
            if requests <= 0:
                continue
            failed = requests * min(1.0, max(0.0, p.error_ratio))
            ok = requests - failed
            original = p.original_model or served_model.rpartition("-")[0] or served_model
            base: Labels = (
                ("gen_ai_operation_name", p.operation), ("gen_ai_original_model", original),
                ("gen_ai_provider_name", p.provider), ("gen_ai_request_model", served_model),
                ("gen_ai_response_model", served_model),
            )
            if ok > 0:
                self._series(model, REQUEST_DURATION, SECONDS_BUCKETS, base).observe(p.request_seconds, ok)
                self._series(model, TIME_TO_FIRST_TOKEN, SECONDS_BUCKETS, base).observe(p.ttft_seconds, ok)
                self._series(model, TIME_PER_OUTPUT_TOKEN, SECONDS_BUCKETS, base).observe(p.tpot_seconds, ok)
                for token_type, tokens in (("input", p.input_tokens_per_request),
                                           ("output", p.output_tokens_per_request)):
                    labels = (*base, ("gen_ai_token_type", token_type))
                    self._series(model, TOKEN_USAGE, TOKEN_BUCKETS, labels).observe(tokens, ok)
            if failed > 0:
                labels = (*base, ("error_type", ERROR_TYPE_FALLBACK))
                self._series(model, REQUEST_DURATION, SECONDS_BUCKETS, labels).observe(p.request_seconds, failed)

    def render(self) -> str:
        """The Prometheus text exposition of every served model, counters advanced to now."""
        with self._lock:
            self._advance(self._clock())
            by_name: dict[str, list[_Histogram]] = {}
            for model in self._models.values():
                if model.active:
                    for series in model.series.values():
                        by_name.setdefault(series.name, []).append(series)
        lines: list[str] = []
        for name in (REQUEST_DURATION, TIME_TO_FIRST_TOKEN, TIME_PER_OUTPUT_TOKEN, TOKEN_USAGE):
            if name not in by_name:
                continue
            lines += [f"# HELP {name} {_HELP[name]}", f"# TYPE {name} histogram"]
            for series in by_name[name]:
                labels = _labels(series.labels)
                cumulative = 0.0
                for bound, count in zip((*series.bounds, float("inf")), series.buckets, strict=True):
                    cumulative += count
                    lines.append(f'{name}_bucket{{{labels},le="{_fmt(bound)}"}} {cumulative!r}')
                lines.append(f"{name}_sum{{{labels}}} {series.total!r}")
                lines.append(f"{name}_count{{{labels}}} {series.count!r}")
        return "\n".join(lines) + "\n"


PROMETHEUS_BINARY = "/usr/bin/prometheus"
INSTALL_HINT = "apt-get install -y --no-install-recommends prometheus (as .ci/run does)"


def find_prometheus() -> str | None:
    """$PROMETHEUS, else Debian's /usr/bin/prometheus, else prometheus on PATH."""
    for candidate in (os.environ.get("PROMETHEUS"), PROMETHEUS_BINARY, shutil.which("prometheus")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


class PrometheusServer:
    """Prometheus on 127.0.0.1 (free port) scraping ``targets`` every ``scrape_interval``, storing in
    ``workdir``. ``address`` is ``http://127.0.0.1:PORT``, what ``spec.analysis.prometheus.address`` takes."""

    JOB = "genai"

    def __init__(self, workdir: Path, targets: list[str], *, binary: str | None = None,
                 scrape_interval: str = "1s", web_config: dict[str, Any] | None = None,
                 ca_pem: str | None = None, headers: dict[str, str] | None = None) -> None:
        """``web_config``: Prometheus' own --web.config.file (TLS, basic_auth_users), for a server that needs auth;
        ``ca_pem`` and ``headers`` are what the test's own client (readiness, :meth:`query`) then needs."""
        found = binary or find_prometheus()
        if found is None:
            raise FileNotFoundError(f"prometheus not found: {INSTALL_HINT}")
        self.binary = found
        self.workdir = workdir
        self.targets = targets
        self.scrape_interval = scrape_interval
        self.port = _free_port()
        tls = bool(web_config and web_config.get("tls_server_config"))
        self.address = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.web_config = web_config
        self.config_path = workdir / "prometheus.yml"
        self.log_path = workdir / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.client = HTTPPrometheus(self.address, timeout=10.0, headers=headers, ca_pem=ca_pem)

    def config(self) -> str:
        return json.dumps({  # JSON is YAML
            "global": {"scrape_interval": self.scrape_interval, "scrape_timeout": self.scrape_interval,
                       "evaluation_interval": self.scrape_interval},
            "scrape_configs": [{"job_name": self.JOB, "static_configs": [{"targets": self.targets}]}],
        }, indent=2)

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        self.config_path.write_text(self.config())
        (self.workdir / "data").mkdir(exist_ok=True)
        web: list[str] = []
        if self.web_config is not None:
            web_path = self.workdir / "web.yml"
            web_path.write_text(json.dumps(self.web_config, indent=2))
            web = [f"--web.config.file={web_path}"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [self.binary, f"--config.file={self.config_path}", f"--storage.tsdb.path={self.workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h",
                 "--log.level=warn", "--web.enable-lifecycle", *web],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.workdir,
                preexec_fn=die_with_parent(signal.SIGTERM),  # no orphan Prometheus when the test run is killed
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                ready = urllib.request.Request(f"{self.address}/-/ready", headers=self.client.headers)
                with urllib.request.urlopen(ready, timeout=2, context=self.client.context) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"prometheus not ready after {timeout}s:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.process is None:
            return
        stop(self.process, grace=15)
        self.process = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def query(self, promql: str) -> float | None:
        """An instant query's first value (None when empty or NaN), as the operator reads it."""
        return self.client.query(promql)

    def query_raw(self, promql: str) -> dict[str, Any]:
        """The whole JSON answer of an instant query (errors included)."""
        data = urllib.parse.urlencode({"query": promql}).encode()
        request = urllib.request.Request(f"{self.address}/api/v1/query", data=data, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                answer: dict[str, Any] = json.loads(response.read())
        except urllib.error.HTTPError as error:
            answer = json.loads(error.read())
        return answer

    def wait_for_samples(self, promql: str, timeout: float = 30.0,
                         until: Callable[[float], bool] | None = None) -> float:
        """Poll ``promql`` until it has a value (and ``until(value)`` holds, if given); return the value."""
        deadline = time.monotonic() + timeout
        last: float | None = None
        while True:
            last = self.query(promql)
            if last is not None and (until is None or until(last)):
                return last
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {promql!r}; last value: {last!r}")
            time.sleep(0.25)

    def wait_for_no_data(self, promql: str, timeout: float = 30.0) -> None:
        """Poll ``promql`` until it answers nothing."""
        deadline = time.monotonic() + timeout
        while (last := self.query(promql)) is not None:
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for no data from {promql!r}: {last!r}")
            time.sleep(0.25)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- pytest fixtures (session-scoped; re-export them from a conftest.py)


@pytest.fixture(scope="session")
def genai_exporter() -> Iterator[GenAIExporter]:
    """The fake AI Gateway's metrics. Tests share it: give each test served-model names of its own."""
    with GenAIExporter() as exporter:
        yield exporter


@pytest.fixture(scope="session")
def prometheus(genai_exporter: GenAIExporter, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """A real Prometheus scraping ``genai_exporter`` every second; skipped when not installed (fails in CI)."""
    if find_prometheus() is None:
        prerequisites.missing(f"prometheus ({INSTALL_HINT})")
    with PrometheusServer(tmp_path_factory.mktemp("prometheus"), [genai_exporter.target]) as server:
        server.wait_for_samples(f'up{{job="{PrometheusServer.JOB}"}} == 1', timeout=30)
        yield server
