"""Publishes vLLM-style KV-cache events over ZMQ PUB (needs ``pyzmq`` and ``msgpack``).

Each engine step that stores or evicts cached blocks sends one multipart message
``[topic, seq, payload]``: ``topic`` = ``kv@<ip>:<port>@<model>``, ``seq`` an 8-byte
big-endian counter, ``payload`` a msgpack array ``[timestamp, [events...], dp_rank]``.
Events are msgpack maps with a ``type`` key:

* ``{"type": "BlockStored", "block_hashes": [...], "parent_block_hash": h | None,
  "token_ids": [...], "block_size": n, "lora_id": id | None, "medium": "GPU"}``
* ``{"type": "BlockRemoved", "block_hashes": [...], "medium": "GPU"}``
* ``{"type": "AllBlocksCleared"}``

Hashes are the pool's uint64 chained block hashes.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import msgpack
import zmq

from bench.sim.engine import Engine


class KVEventPublisher:
    """Collects one engine's block events and publishes them once per step."""

    def __init__(
        self,
        endpoint: str,
        topic: str,
        block_size: int,
        lora_ids: dict[str, int] | None = None,
        dp_rank: int = 0,
    ) -> None:
        self.topic = topic.encode()
        self.block_size = block_size
        self.lora_ids = lora_ids or {}
        self.dp_rank = dp_rank
        self.seq = 0
        self.pending: list[dict[str, Any]] = []
        self.sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        self.sock.bind(endpoint)

    def attach(self, engine: Engine) -> None:
        engine.pool.on_stored = self.stored
        engine.pool.on_removed = self.removed
        engine.on_step = self.flush

    def stored(
        self, hashes: list[int], parent: int | None, tokens: list[int], lora: str | None
    ) -> None:
        self.pending.append(
            {
                "type": "BlockStored",
                "block_hashes": hashes,
                "parent_block_hash": parent,
                "token_ids": [t & 0xFFFFFFFF for t in tokens],
                "block_size": self.block_size,
                "lora_id": None if lora is None else self.lora_ids.get(lora),
                "medium": "GPU",
            }
        )

    def removed(self, hashes: list[int]) -> None:
        self.pending.append({"type": "BlockRemoved", "block_hashes": hashes, "medium": "GPU"})

    def cleared(self) -> None:
        self.pending.append({"type": "AllBlocksCleared"})

    def flush(self) -> None:
        if not self.pending:
            return
        events, self.pending = self.pending, []
        payload = msgpack.packb([time.time(), events, self.dp_rank])
        seq = self.seq.to_bytes(8, "big")
        self.seq += 1
        with contextlib.suppress(zmq.ZMQError):  # full send buffer: drop, as PUB does
            self.sock.send_multipart([self.topic, seq, payload], flags=zmq.NOBLOCK)

    def close(self) -> None:
        self.flush()
        self.sock.close(linger=0)
