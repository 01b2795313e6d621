"""One deduplicating work queue, the shape of client-go's workqueue (what controller-runtime runs).

Every trigger only adds a key; a fixed pool of worker threads takes keys and runs the handler for them.

- A key is never handled by two workers at once.
- A key added while it waits is not added twice: a burst of triggers becomes one run.
- A key added while it is being handled is marked dirty: it runs once more after the current run ends,
  so the last trigger is always seen by a run that started after it.
- A run may ask to be repeated later (``add_after``: a rollout's next check); a run that raises is
  repeated after ``backoff(failures, error)`` seconds. Nobody sleeps: waiting is an entry in the queue.
- An urgent key (``add(key, urgent=True)``: its spec changed, or it is new) is taken before every other
  waiting key. The others (a child's or a referenced object's event, a resync, a delayed run) wait behind,
  and the longer they wait the more triggers of theirs collapse into one run: while many objects are
  created at once, each gets its first status before any is looked at again for its children's sake.

Losing the queue in a restart loses nothing: what to do is decided by each run from the cluster's state,
and the initial listing after a restart adds every key again; only timing lives here.
"""

from __future__ import annotations

import collections
import heapq
import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from model_traffic import metrics

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

# handle(key) -> seconds after which to handle the key again (None: not unless triggered).
Handler = Callable[[K], float | None]
# backoff(consecutive failures of the key, the error) -> seconds before the next attempt.
Backoff = Callable[[int, BaseException], float]


class WorkQueue(Generic[K]):
    def __init__(self, handle: Handler[K], backoff: Backoff, *, workers: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._handle = handle
        self._backoff = backoff
        self._workers = workers
        self._clock = clock
        self._changed = threading.Condition()
        self._urgent: collections.deque[K] = collections.deque()
        self._ready: collections.deque[K] = collections.deque()
        # The keys waiting in _urgent or _ready, with when they were added (for the wait time) and whether they
        # are urgent. A key made urgent while it waits in _ready is also appended to _urgent; its stale entry in
        # _ready is skipped when reached.
        self._queued_at: dict[K, tuple[float, bool]] = {}
        self._processing: set[K] = set()
        self._dirty: set[K] = set()  # added while processing: run once more afterwards
        self._dirty_urgent: set[K] = set()  # of those, the ones added as urgent
        self._due: dict[K, float] = {}  # delayed keys -> when they become ready (the earliest wins)
        self._timeline: list[tuple[float, int, K]] = []  # heap over _due; stale entries are skipped
        self._sequence = 0  # ties in the heap, so keys themselves are never compared
        self._failures: dict[K, int] = {}
        self._stopping = False
        self._threads: list[threading.Thread] = []

    # -- triggers ----------------------------------------------------------------------------
    def add(self, key: K, urgent: bool = False) -> None:
        """Handle the key as soon as a worker is free (once, however often it is added meanwhile); an urgent
        key before the keys that are not."""
        with self._changed:
            self._add_locked(key, urgent)

    def add_after(self, key: K, delay: float) -> None:
        """Handle the key in ``delay`` seconds, unless it is already due sooner."""
        if delay <= 0:
            self.add(key)
            return
        with self._changed:
            if self._stopping:
                return
            due = self._clock() + delay
            if key in self._due and self._due[key] <= due:
                return
            self._due[key] = due
            self._sequence += 1
            heapq.heappush(self._timeline, (due, self._sequence, key))
            self._update_gauges()
            self._changed.notify()

    def forget(self, key: K) -> None:
        """The object is gone: drop its delayed run and its failure count (a queued run finds it gone)."""
        with self._changed:
            self._due.pop(key, None)
            self._failures.pop(key, None)
            self._update_gauges()

    def _add_locked(self, key: K, urgent: bool = False) -> None:
        if self._stopping:
            return
        # Every run decides anew when to look again, so a run now replaces a delayed one.
        self._due.pop(key, None)
        if key in self._processing:
            self._dirty.add(key)
            if urgent:
                self._dirty_urgent.add(key)
        elif key not in self._queued_at:
            self._queued_at[key] = (self._clock(), urgent)
            (self._urgent if urgent else self._ready).append(key)
            self._changed.notify()
        elif urgent and not self._queued_at[key][1]:
            self._queued_at[key] = (self._queued_at[key][0], True)
            self._urgent.append(key)
        self._update_gauges()

    # -- introspection (tests, metrics) --------------------------------------------------------
    def depth(self) -> int:
        with self._changed:
            return len(self._queued_at)

    def pending(self) -> dict[K, float]:
        """Seconds until each delayed key is due."""
        with self._changed:
            now = self._clock()
            return {key: max(0.0, due - now) for key, due in self._due.items()}

    def failures(self, key: K) -> int:
        with self._changed:
            return self._failures.get(key, 0)

    # -- workers -----------------------------------------------------------------------------
    def start(self) -> None:
        with self._changed:
            if self._threads:
                return
            self._threads = [threading.Thread(target=self._work, name=f"reconcile-{i}", daemon=True)
                             for i in range(self._workers)]
        for thread in self._threads:
            thread.start()

    def shutdown(self, timeout: float) -> bool:
        """Take no more work; wait up to ``timeout`` seconds for the runs in progress. True when they all ended."""
        with self._changed:
            self._stopping = True
            self._ready.clear()
            self._urgent.clear()
            self._queued_at.clear()
            self._due.clear()
            self._timeline.clear()
            self._dirty.clear()
            self._dirty_urgent.clear()
            self._changed.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def _next(self) -> K | None:
        """Block until a key is ready (moving due delayed keys into the ready queue); None when stopping."""
        with self._changed:
            while True:
                if self._stopping:
                    return None
                now = self._clock()
                while self._timeline and self._timeline[0][0] <= now:
                    due, _, key = heapq.heappop(self._timeline)
                    if self._due.get(key) == due:
                        del self._due[key]
                        self._add_locked(key)
                taken = self._take()
                if taken is not None:
                    metrics.WORKQUEUE_WAIT_SECONDS.observe(max(0.0, now - self._queued_at.pop(taken)[0]))
                    self._processing.add(taken)
                    self._update_gauges()
                    return taken
                timeout = self._timeline[0][0] - now if self._timeline else None
                self._changed.wait(timeout)

    def _take(self) -> K | None:
        """The next waiting key, urgent ones first; stale entries (a key since made urgent) are dropped."""
        while self._urgent:
            key = self._urgent.popleft()
            if key in self._queued_at:
                return key
        while self._ready:
            key = self._ready.popleft()
            if key in self._queued_at and not self._queued_at[key][1]:
                return key
        return None

    def _work(self) -> None:
        while (key := self._next()) is not None:
            started = time.monotonic()
            requeue_after: float | None = None
            try:
                requeue_after = self._handle(key)
                with self._changed:
                    self._failures.pop(key, None)
            except Exception as error:
                with self._changed:
                    failures = self._failures[key] = self._failures.get(key, 0) + 1
                try:
                    requeue_after = self._backoff(failures, error)
                except Exception:  # a broken backoff must not kill the worker
                    log.exception("backoff for %s failed", key)
                    requeue_after = 60.0
                metrics.WORKQUEUE_RETRIES.inc()
            finally:
                metrics.WORKQUEUE_WORK_SECONDS.observe(time.monotonic() - started)
            self._done(key, requeue_after)

    def _done(self, key: K, requeue_after: float | None) -> None:
        with self._changed:
            self._processing.discard(key)
            dirty = key in self._dirty
            urgent = key in self._dirty_urgent
            self._dirty.discard(key)
            self._dirty_urgent.discard(key)
            if dirty:
                self._add_locked(key, urgent)
        if not dirty and requeue_after is not None:
            self.add_after(key, requeue_after)
        else:
            with self._changed:
                self._update_gauges()

    def _update_gauges(self) -> None:
        metrics.WORKQUEUE_DEPTH.set(len(self._queued_at))
        metrics.WORKQUEUE_DELAYED.set(len(self._due))
        metrics.WORKQUEUE_IN_PROGRESS.set(len(self._processing))
