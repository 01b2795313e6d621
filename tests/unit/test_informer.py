"""The informer's pure parts: splitting a watch stream into events as its chunks arrive. Its LIST, WATCH and
relist run against the real API server in every cluster test (the operator watches with nothing else)."""

from __future__ import annotations

import json
from collections.abc import Iterator

from model_traffic.pipeline.informer import _backoff, _lines


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
