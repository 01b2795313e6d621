"""The delayed-reconcile queue: one pending entry per object, the earliest wins, cancel forgets it."""

from __future__ import annotations

import threading
import time

from model_traffic.runtime import Scheduler


def test_the_earliest_schedule_wins_and_runs_once() -> None:
    ran: list[tuple[str, str, str]] = []
    done = threading.Event()

    def reconcile(kind: str, namespace: str, name: str) -> None:
        ran.append((kind, namespace, name))
        done.set()

    scheduler = Scheduler(reconcile)
    key = ("TrafficConfig", "llm", "llama")
    scheduler.schedule(key, 30)
    scheduler.schedule(key, 0.05)
    scheduler.schedule(key, 60)  # later than what is pending: ignored
    assert 0 < scheduler.pending()[key] <= 0.05
    assert done.wait(5)
    time.sleep(0.1)
    assert ran == [key]
    assert scheduler.pending() == {}


def test_cancel_forgets_a_pending_reconcile() -> None:
    ran: list[tuple[str, str, str]] = []
    scheduler = Scheduler(lambda *key: ran.append(key))
    scheduler.schedule(("TrafficConfig", "llm", "gone"), 0.05)
    scheduler.cancel(("TrafficConfig", "llm", "gone"))
    time.sleep(0.2)
    assert ran == []
