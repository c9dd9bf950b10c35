"""The ZMQ SUB client against a real ZMQ PUB socket on 127.0.0.1 publishing synthetic batches
framed like vLLM's (``[topic, 8-byte big-endian seq, msgpack batch]``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgpack
import pytest
import zmq
import zmq.asyncio

from picker.datalayer.datastore import Endpoint
from picker.datalayer.kv_events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KVEvent,
    encode_batch,
)
from picker.datalayer.kv_index import KVEvents
from picker.datalayer.vllm_blocks import BlockHasher
from picker.request.parse import parse_request
from picker.scheduling.framework import Params
from picker.scheduling.scorers.precise_prefix import PrecisePrefixScorer

POD = "127.0.0.1:8000"
TOPIC = f"kv@{POD}@m"


class Publisher:
    """A vLLM-like PUB socket bound to a free loopback port."""

    def __init__(self, topic: str = TOPIC) -> None:
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.topic = topic.encode()
        self.seq = 0

    async def send_payload(self, payload: bytes, seq: int | None = None) -> None:
        if seq is None:
            seq = self.seq
        self.seq = seq + 1
        await self.sock.send_multipart([self.topic, seq.to_bytes(8, "big"), payload])

    async def send(self, events: list[KVEvent], seq: int | None = None) -> None:
        await self.send_payload(encode_batch(events, time.time()), seq)

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


@pytest.fixture
async def pub() -> AsyncIterator[Publisher]:
    p = Publisher()
    yield p
    p.close()


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def joined(pub: Publisher, events: KVEvents, pod: str = POD) -> None:
    """Publishes empty batches until the subscriber sees one (ZMQ's slow joiner)."""
    deadline = time.monotonic() + 5
    while True:
        sub = events.subscribers.get(pod)
        if sub is not None and sub.stats.batches:
            return
        if time.monotonic() > deadline:
            raise AssertionError("subscriber never joined")
        await pub.send([])
        await asyncio.sleep(0.02)


async def test_events_update_index(pub: Publisher) -> None:
    events = KVEvents({POD: pub.endpoint})
    await events.start()
    try:
        await joined(pub, events)
        sub = events.subscribers[POD]
        index = events.index
        await pub.send([BlockStored([1, 2, 3], None, [], 4, None, "GPU")])
        await until(lambda: index.blocks_on(POD) == {1, 2, 3})
        await pub.send([BlockRemoved([3], "GPU"), BlockStored([4], 2, [], 4, None, "GPU")])
        await until(lambda: index.blocks_on(POD) == {1, 2, 4})
        assert index.match([1, 2, 4, 5], [POD, "x:1"]) == [3, 0]
        await pub.send([AllBlocksCleared()])
        await until(lambda: sub.stats.clears == 1)
        assert index.blocks_on(POD) == set()
        assert sub.stats.gaps == 0 and sub.stats.errors == 0
    finally:
        await events.stop()


async def test_array_encoding_and_bytes_hashes(pub: Publisher) -> None:
    events = KVEvents({POD: pub.endpoint})
    await events.start()
    try:
        await joined(pub, events)
        digest = bytes(24) + (77).to_bytes(8, "big")
        old_style = [
            time.time(),
            [
                ["BlockStored", [11, 12], None, [1, 2, 3, 4], 2, None, "GPU"],
                ["BlockStored", [digest], 12, [5, 6], 2, None],
                ["BlockRemoved", [11], "GPU"],
                ["SomethingNew", 1, 2],  # unknown types are skipped
            ],
        ]
        await pub.send_payload(msgpack.packb(old_style))
        await until(lambda: events.index.blocks_on(POD) == {12, 77})
    finally:
        await events.stop()


async def test_gap_drops_blocks_then_follows(pub: Publisher) -> None:
    events = KVEvents({POD: pub.endpoint})
    await events.start()
    try:
        await joined(pub, events)
        sub = events.subscribers[POD]
        await pub.send([BlockStored([1, 2], None, [], 4, None, "GPU")])
        await until(lambda: events.index.blocks_on(POD) == {1, 2})
        await pub.send([BlockStored([9], None, [], 4, None, "GPU")], seq=pub.seq + 3)  # lost 3
        await until(lambda: sub.stats.gaps == 1)
        assert events.index.blocks_on(POD) == {9}
        # the publisher restarts: its sequence starts again at 0
        await pub.send([BlockStored([5], None, [], 4, None, "GPU")], seq=0)
        await until(lambda: sub.stats.gaps == 2)
        assert events.index.blocks_on(POD) == {5}
        # undecodable payload: blocks dropped, stream continues
        await pub.send_payload(b"\xc1")
        await until(lambda: sub.stats.errors == 1)
        assert events.index.blocks_on(POD) == set()
        await pub.send([BlockStored([6], None, [], 4, None, "GPU")])
        await until(lambda: events.index.blocks_on(POD) == {6})
        assert sub.stats.gaps == 2
    finally:
        await events.stop()


async def test_two_pods_and_topic_filter() -> None:
    a, b = Publisher(f"kv@{POD}@m"), Publisher("kv@127.0.0.1:8001@m")
    events = KVEvents({POD: a.endpoint, "127.0.0.1:8001": b.endpoint}, topic="kv@")
    await events.start()
    try:
        await joined(a, events)
        await joined(b, events, "127.0.0.1:8001")
        await a.send([BlockStored([1, 2], None, [], 4, None, "GPU")])
        await b.send([BlockStored([1], None, [], 4, None, "GPU")])
        await until(lambda: events.index.pods_with(1) == {POD, "127.0.0.1:8001"})
        assert events.index.match([1, 2], [POD, "127.0.0.1:8001"]) == [2, 1]
    finally:
        await events.stop()
        a.close()
        b.close()


async def test_scorer_subscribes_by_pattern(pub: Publisher) -> None:
    port = pub.endpoint.rsplit(":", 1)[1]
    params = {"events": f"tcp://{{host}}:{port}", "block_size": 4, "hash_seed": "0"}
    scorer = PrecisePrefixScorer(params=Params(params))
    await scorer.start()
    try:
        pods = [Endpoint(address=POD), Endpoint(address="127.0.0.2:8000")]
        ids = list(range(1, 13))  # 3 full blocks of 4
        body: dict[str, Any] = {"model": "m", "prompt": ids}
        import json

        req = parse_request("/v1/completions", json.dumps(body).encode())
        scorer.produce(req, pods)  # subscribes lazily to both pods
        assert scorer.score(req, pods) == [0.0, 0.0]
        await until(lambda: POD in scorer.events.subscribers)
        await joined(pub, scorer.events)
        hashes = BlockHasher(4, "sha256", "0").hashes(ids)
        await pub.send([BlockStored(hashes[:2], None, ids[:8], 4, None, "GPU")])
        await until(lambda: len(scorer.index.blocks_on(POD)) == 2)
        req = parse_request("/v1/completions", json.dumps(body).encode())
        scorer.produce(req, pods)
        assert scorer.score(req, pods) == [2 / 3, 0.0]
    finally:
        await scorer.stop()
    assert scorer.events.subscribers == {}
