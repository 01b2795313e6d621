"""The informer's pure parts: splitting a watch stream into events as its chunks arrive, and the informers taking
turns with the pages of their LISTs. Its LIST, WATCH and relist run against the real API server in every cluster
test (the operator watches with nothing else)."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import kubernetes

from model_traffic import kube
from model_traffic.pipeline.cache import Caches
from model_traffic.pipeline.informer import Informer, _backoff, _lines


class Chunked:
    """A response whose body arrives in the given chunks (what urllib3's stream yields)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def stream(self, amt: int | None = None, decode_content: bool = False) -> Iterator[bytes]:
        yield from self.chunks


def test_events_split_across_chunks_and_chunks_holding_several_events_are_both_read_whole() -> None:
    events = [json.dumps({"type": "ADDED", "object": {"metadata": {"name": f"o{i}"}}}).encode() for i in range(4)]
    stream = events[0][:7] + b"", events[0][7:] + b"\n" + events[1] + b"\n" + events[2][:3], events[2][3:] + b"\n", \
        b"", events[3] + b"\n"
    assert list(_lines(Chunked(list(stream)))) == events


def test_a_last_event_without_its_newline_is_still_read() -> None:
    assert list(_lines(Chunked([b'{"a": 1}\n{"b"', b': 2}']))) == [b'{"a": 1}', b'{"b": 2}']


def test_errors_back_off_doubling_up_to_the_cap() -> None:
    assert [_backoff(n) for n in (1, 2, 3, 10)] == [1.0, 2.0, 4.0, 30.0]


class PagedInformer(Informer):
    """An informer whose LIST answers three pages of two objects each, slowly, counting the pages in hand."""

    in_hand = 0
    most_in_hand = 0
    lock = threading.Lock()
    delivered: list[str]

    def _call(self, **params: Any) -> Any:
        with PagedInformer.lock:
            PagedInformer.in_hand += 1
            PagedInformer.most_in_hand = max(PagedInformer.most_in_hand, PagedInformer.in_hand)
        time.sleep(0.02)
        page = int(params.get("_continue") or 0)
        items = [{"metadata": {"namespace": "llm", "name": f"{self.rtype.plural}-{page}-{i}", "resourceVersion": "1"}}
                 for i in range(2)]
        return {"items": items, "metadata": {"continue": str(page + 1) if page < 2 else None,
                                             "resourceVersion": "9"}}

    def _deliver(self, event_type: str | None, obj: dict[str, Any]) -> None:
        self.delivered.append(obj["metadata"]["name"])
        with PagedInformer.lock:
            if obj["metadata"]["name"].endswith("-1"):  # the page's last object: handled, let go of the page
                PagedInformer.in_hand -= 1


def test_informers_listing_at_once_hold_one_page_at_a_time_between_them() -> None:
    PagedInformer.in_hand = PagedInformer.most_in_hand = 0
    informers = []
    for plural in ("virtualmodels", "managedaiservicebackends", "trafficconfigs", "httproutes"):
        rtype = dataclasses.replace(kube.VIRTUAL_MODEL, plural=plural)
        informer = PagedInformer(kubernetes.client.ApiClient(), Caches(), rtype, None, lambda event, obj: None,
                                 threading.Event())
        informer.delivered = []
        informers.append(informer)
    threads = [threading.Thread(target=informer._list) for informer in informers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert [len(informer.delivered) for informer in informers] == [6, 6, 6, 6]
    assert PagedInformer.most_in_hand == 1
