"""The work queue every trigger goes through, without an API server: dedup, one run per key at a time, a dirty
key runs once more, delayed requeues, the error backoff and a bounded shutdown."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from kubernetes.client.exceptions import ApiException

from model_traffic.pipeline.runtime import ERROR_BACKOFF_CAP_SECONDS, EventPoster, retry_delay
from model_traffic.pipeline.workqueue import WorkQueue

Key = tuple[str, str, str]
KEY: Key = ("TrafficConfig", "llm", "llama")


def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


class Recorder:
    """A handler that records its runs and can be held inside a run until released."""

    def __init__(self, requeue_after: float | None = None, fail_times: int = 0) -> None:
        self.runs: list[Key] = []
        self.running: set[Key] = set()
        self.overlaps = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.requeue_after = requeue_after
        self.fail_times = fail_times
        self._lock = threading.Lock()

    def __call__(self, key: Key) -> float | None:
        with self._lock:
            if key in self.running:
                self.overlaps += 1
            self.running.add(key)
            self.runs.append(key)
        self.entered.set()
        self.release.wait(10)
        with self._lock:
            self.running.discard(key)
            if self.fail_times:
                self.fail_times -= 1
                raise RuntimeError("boom")
        return self.requeue_after


def queue_of(handler: Recorder, backoff: Callable[[int, BaseException], float] = lambda n, e: 0.05,
             workers: int = 4) -> WorkQueue[Key]:
    queue: WorkQueue[Key] = WorkQueue(handler, backoff, workers=workers)
    return queue


def test_a_burst_of_triggers_for_a_waiting_key_is_one_run() -> None:
    handler = Recorder()
    queue = queue_of(handler)
    for _ in range(100):
        queue.add(KEY)
    assert queue.depth() == 1
    queue.start()
    wait_until(lambda: handler.runs == [KEY])
    time.sleep(0.05)
    assert handler.runs == [KEY]
    assert queue.shutdown(1)


def test_a_trigger_during_a_run_is_one_more_run_afterwards_never_a_concurrent_one() -> None:
    handler = Recorder()
    handler.release.clear()
    queue = queue_of(handler, workers=4)
    queue.start()
    queue.add(KEY)
    assert handler.entered.wait(5)
    for _ in range(50):  # four idle workers, and the key is dirty: none of them may take it
        queue.add(KEY)
    time.sleep(0.05)
    assert handler.runs == [KEY] and queue.depth() == 0
    handler.release.set()
    wait_until(lambda: len(handler.runs) == 2)
    time.sleep(0.05)
    assert handler.runs == [KEY, KEY]
    assert handler.overlaps == 0
    assert queue.shutdown(1)


def test_different_keys_run_in_parallel() -> None:
    handler = Recorder()
    handler.release.clear()
    queue = queue_of(handler, workers=3)
    queue.start()
    keys = [("VirtualModel", "llm", f"m{i}") for i in range(3)]
    for key in keys:
        queue.add(key)
    wait_until(lambda: len(handler.running) == 3)
    handler.release.set()
    assert queue.shutdown(1)


def test_urgent_keys_run_before_waiting_ones_and_a_waiting_key_made_urgent_runs_once() -> None:
    handler = Recorder()
    queue = queue_of(handler, workers=1)
    blocker: Key = ("VirtualModel", "llm", "blocker")
    handler.release.clear()
    queue.start()
    queue.add(blocker)
    wait_until(handler.entered.is_set)  # the one worker is busy: what follows waits in the queue
    children = [("VirtualModel", "llm", f"child-event-{i}") for i in range(3)]
    for key in children:
        queue.add(key)
    queue.add(("VirtualModel", "llm", "new"), urgent=True)
    queue.add(children[2], urgent=True)  # its spec changed while it waited for a child's sake
    queue.add(blocker, urgent=True)  # during its run: once more afterwards, still urgent
    assert queue.depth() == 4
    handler.release.set()
    wait_until(lambda: len(handler.runs) == 6)
    time.sleep(0.05)
    assert handler.runs == [blocker, ("VirtualModel", "llm", "new"), children[2], blocker, children[0], children[1]]
    assert queue.shutdown(1.0)


def test_a_requested_requeue_runs_the_key_again_later_and_the_earliest_delay_wins() -> None:
    handler = Recorder()
    queue = queue_of(handler)
    queue.add_after(KEY, 30)
    queue.add_after(KEY, 0.1)
    queue.add_after(KEY, 60)  # later than what is pending: ignored
    assert 0 < queue.pending()[KEY] <= 0.1
    queue.start()
    wait_until(lambda: handler.runs == [KEY])
    assert queue.pending() == {}
    time.sleep(0.05)
    assert handler.runs == [KEY]
    handler.requeue_after = 0.05  # the run asks to look again (a rollout's next check)
    queue.add(KEY)
    wait_until(lambda: len(handler.runs) >= 3)
    assert queue.shutdown(1)


def test_a_trigger_now_replaces_a_pending_delayed_run() -> None:
    handler = Recorder()
    queue = queue_of(handler)
    queue.add_after(KEY, 0.2)
    queue.add(KEY)
    assert queue.pending() == {}
    queue.start()
    time.sleep(0.4)
    assert handler.runs == [KEY]
    assert queue.shutdown(1)


def test_forget_drops_a_delayed_run() -> None:
    handler = Recorder()
    queue = queue_of(handler)
    queue.start()
    queue.add_after(KEY, 0.05)
    queue.forget(KEY)
    time.sleep(0.2)
    assert handler.runs == []
    assert queue.shutdown(1)


def test_a_failing_run_is_retried_with_the_backoff_for_its_consecutive_failures() -> None:
    handler = Recorder(fail_times=3)
    asked: list[int] = []

    def backoff(failures: int, error: BaseException) -> float:
        asked.append(failures)
        return 0.01

    queue = queue_of(handler, backoff)
    queue.start()
    queue.add(KEY)
    wait_until(lambda: len(handler.runs) == 4)
    assert asked == [1, 2, 3]
    wait_until(lambda: queue.failures(KEY) == 0)  # the success resets the count
    assert queue.shutdown(1)


def test_shutdown_lets_the_run_in_progress_finish_and_takes_no_more_work() -> None:
    handler = Recorder()
    handler.release.clear()
    queue = queue_of(handler, workers=1)
    queue.start()
    queue.add(KEY)
    assert handler.entered.wait(5)
    queue.add(("VirtualModel", "llm", "waiting"))
    threading.Timer(0.1, handler.release.set).start()
    started = time.monotonic()
    assert queue.shutdown(5)
    assert time.monotonic() - started < 2
    assert handler.runs == [KEY]  # the waiting key was dropped, not run
    queue.add(KEY)
    assert queue.depth() == 0


def test_shutdown_is_bounded_when_a_run_does_not_end() -> None:
    handler = Recorder()
    handler.release.clear()
    queue = queue_of(handler, workers=1)
    queue.start()
    queue.add(KEY)
    assert handler.entered.wait(5)
    started = time.monotonic()
    assert not queue.shutdown(0.2)
    assert time.monotonic() - started < 1
    handler.release.set()


def conflict() -> ApiException:
    return ApiException(status=409, reason="Conflict")


@pytest.mark.parametrize(("failures", "expected"), [(1, 0.4), (2, 0.8), (4, 3.2), (5, 5.0), (6, 10.0)])
def test_a_conflict_is_retried_soon_then_with_the_error_backoff(failures: int, expected: float) -> None:
    assert retry_delay(failures, conflict()) == pytest.approx(expected)


def test_other_errors_back_off_from_five_seconds_to_the_cap() -> None:
    assert retry_delay(1, RuntimeError()) == 5.0
    assert retry_delay(2, ApiException(status=403)) == 10.0
    assert retry_delay(30, RuntimeError()) == ERROR_BACKOFF_CAP_SECONDS


class SlowEvents:
    """A Kube whose Event posts take a while (all an EventPoster uses)."""

    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.core = self
        self._lock = threading.Lock()

    def create_namespaced_event(self, namespace: str, event: object) -> None:
        time.sleep(0.05)
        with self._lock:
            self.reasons.append(getattr(event, "reason", ""))


BODY = {"apiVersion": "modeltraffic.io/v1alpha1", "kind": "TrafficConfig",
        "metadata": {"name": "llama", "namespace": "llm", "uid": "u"}}


def test_events_are_posted_off_the_reconcile_worker_and_drained_at_shutdown() -> None:
    kube = SlowEvents()
    poster = EventPoster(kube)  # type: ignore[arg-type]
    poster.post(BODY, "Normal", "Inline", "before start: posted at once")
    assert kube.reasons == ["Inline"]
    poster.start()
    started = time.monotonic()
    for i in range(5):
        poster.post(BODY, "Warning", f"Reason{i}", "m")
    assert time.monotonic() - started < 0.05  # nobody waited for a post
    assert poster.stop(5.0)
    assert kube.reasons[0] == "Inline"
    assert sorted(kube.reasons[1:]) == [f"Reason{i}" for i in range(5)]  # by several posters: any order
