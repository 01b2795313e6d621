"""The informer's pure parts: splitting a watch stream into events as its chunks arrive, the informers taking
turns with the pages of their LISTs, and each page sized by its bytes. Its LIST, WATCH and relist run against the
real API server in every cluster test (the operator watches with nothing else)."""

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
from model_traffic.pipeline.informer import (
    FIRST_PAGE_SIZE,
    MIN_PAGE_SIZE,
    PAGE_BYTES,
    PAGE_SIZE,
    Informer,
    _backoff,
    _lines,
)


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

    def _list_page(self, limit: int, token: str | None) -> tuple[dict[str, Any], int]:
        with PagedInformer.lock:
            PagedInformer.in_hand += 1
            PagedInformer.most_in_hand = max(PagedInformer.most_in_hand, PagedInformer.in_hand)
        time.sleep(0.02)
        page = int(token or 0)
        items = [{"metadata": {"namespace": "llm", "name": f"{self.rtype.plural}-{page}-{i}", "resourceVersion": "1"}}
                 for i in range(2)]
        return {"items": items, "metadata": {"continue": str(page + 1) if page < 2 else None,
                                             "resourceVersion": "9"}}, 200

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


class SizedInformer(Informer):
    """An informer whose LIST answers pages of objects of ``object_bytes`` each, recording the limits asked."""

    object_bytes = 0
    limits: list[int]

    def _list_page(self, limit: int, token: str | None) -> tuple[dict[str, Any], int]:
        self.limits.append(limit)
        start = int(token or 0)
        count = min(limit, 2000 - start)
        items = [{"metadata": {"namespace": "llm", "name": f"o{start + i}", "resourceVersion": "1"}}
                 for i in range(count)]
        following = str(start + count) if start + count < 2000 else None
        return {"items": items, "metadata": {"continue": following, "resourceVersion": "9"}}, count * self.object_bytes

    def _deliver(self, event_type: str | None, obj: dict[str, Any]) -> None:
        pass


def limits_asked(object_bytes: int) -> list[int]:
    informer = SizedInformer(kubernetes.client.ApiClient(), Caches(), kube.HTTP_ROUTE, None, lambda event, obj: None,
                             threading.Event())
    informer.object_bytes = object_bytes
    informer.limits = []
    informer._list()
    informer._list()  # a relist starts from what the last one learnt
    return informer.limits


def test_pages_are_sized_by_their_bytes_not_their_objects() -> None:
    # Small objects: after a first page of FIRST_PAGE_SIZE, pages of PAGE_SIZE.
    small = limits_asked(2_000)
    assert small[0] == FIRST_PAGE_SIZE and set(small[1:]) == {PAGE_SIZE}
    # Objects of 33 KB (an HTTPRoute naming 2,000 overlapping routes): pages of about PAGE_BYTES.
    large = limits_asked(33_000)
    assert large[0] == FIRST_PAGE_SIZE and set(large[1:]) == {PAGE_BYTES // 33_000}
    assert all(limit * 33_000 <= PAGE_BYTES for limit in large[1:])
    # However large the objects, a page holds MIN_PAGE_SIZE of them.
    assert set(limits_asked(10 * PAGE_BYTES)[1:]) == {MIN_PAGE_SIZE}
