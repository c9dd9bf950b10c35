"""vLLM KV-cache events on the wire: decoding (and, for tests and the simulator, encoding).

vLLM (``--kv-events-config '{"enable_kv_cache_events": true, "publisher": "zmq", ...}'``)
publishes, on a ZMQ PUB socket, multipart messages ``[topic, seq, payload]``:

* ``topic``: bytes, e.g. ``kv@10.0.0.5:8000@model`` (whatever the pod was configured with);
* ``seq``: 8-byte big-endian batch number, counting from 0 per publisher;
* ``payload``: msgpack ``[ts, [event, ...], dp_rank]`` (``dp_rank`` may be missing).

Events are msgpack maps tagged with ``type`` (vLLM ≥ mid-2026: ``{"type": "BlockStored",
"block_hashes": [...], "parent_block_hash": ..., "token_ids": [...], "block_size": 128,
"lora_id": None, "medium": "GPU", ...}``) or, in older releases, positional arrays with the
tag first (``["BlockStored", block_hashes, parent_block_hash, token_ids, block_size,
lora_id, medium, ...]``). Both are decoded. Block hashes are unsigned 64-bit integers
(``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1``, the default); raw digests (``bytes``, with
that variable set to 0) are folded to the same 64-bit value (their low 8 bytes,
big-endian) so both spellings index alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

MASK64 = (1 << 64) - 1

# Field order of the positional (array_like) encoding, after the type tag.
_STORED_FIELDS = (
    "block_hashes",
    "parent_block_hash",
    "token_ids",
    "block_size",
    "lora_id",
    "medium",
    "lora_name",
    "extra_keys",
    "group_idx",
)
_REMOVED_FIELDS = ("block_hashes", "medium", "group_idx")


class EventDecodeError(ValueError):
    """A payload that is not a KV event batch."""


def as_hash(value: Any) -> int:
    """A block hash as vLLM publishes it (int, or digest bytes) → unsigned 64-bit int."""
    if isinstance(value, bool):
        raise EventDecodeError(f"bad block hash {value!r}")
    if isinstance(value, int):
        return value & MASK64
    if isinstance(value, bytes | bytearray):
        return int.from_bytes(value[-8:], "big")
    raise EventDecodeError(f"bad block hash {value!r}")


@dataclass(slots=True)
class BlockStored:
    block_hashes: list[int]
    parent_block_hash: int | None = None
    token_ids: list[int] = field(default_factory=list)
    block_size: int = 0
    lora_id: int | None = None
    medium: str | None = None
    lora_name: str | None = None


@dataclass(slots=True)
class BlockRemoved:
    block_hashes: list[int]
    medium: str | None = None


@dataclass(slots=True)
class AllBlocksCleared:
    pass


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


@dataclass(slots=True)
class EventBatch:
    ts: float
    events: list[KVEvent]
    dp_rank: int | None = None


def _fields(raw: Any, names: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """(type tag, fields by name) of a map- or array-encoded event."""
    if isinstance(raw, dict):
        kind = raw.get("type")
        if not isinstance(kind, str):
            raise EventDecodeError(f"event without a type: {raw!r:.200}")
        return kind, raw
    if isinstance(raw, list | tuple) and raw and isinstance(raw[0], str):
        return raw[0], dict(zip(names, raw[1:], strict=False))
    raise EventDecodeError(f"not an event: {raw!r:.200}")


def decode_event(raw: Any) -> KVEvent | None:
    """One event (map or positional array); ``None`` for event types picker ignores."""
    kind = raw.get("type") if isinstance(raw, dict) else (raw[0] if raw else None)
    if kind == "BlockStored":
        _, f = _fields(raw, _STORED_FIELDS)
        hashes = f.get("block_hashes")
        if not isinstance(hashes, list):
            raise EventDecodeError("BlockStored without block_hashes")
        parent = f.get("parent_block_hash")
        token_ids = f.get("token_ids") or []
        block_size = f.get("block_size") or 0
        lora_id = f.get("lora_id")
        medium = f.get("medium")
        lora_name = f.get("lora_name")
        return BlockStored(
            block_hashes=[as_hash(h) for h in hashes],
            parent_block_hash=None if parent is None else as_hash(parent),
            token_ids=list(token_ids) if isinstance(token_ids, list) else [],
            block_size=block_size if isinstance(block_size, int) else 0,
            lora_id=lora_id if isinstance(lora_id, int) else None,
            medium=medium if isinstance(medium, str) else None,
            lora_name=lora_name if isinstance(lora_name, str) else None,
        )
    if kind == "BlockRemoved":
        _, f = _fields(raw, _REMOVED_FIELDS)
        hashes = f.get("block_hashes")
        if not isinstance(hashes, list):
            raise EventDecodeError("BlockRemoved without block_hashes")
        medium = f.get("medium")
        return BlockRemoved(
            block_hashes=[as_hash(h) for h in hashes],
            medium=medium if isinstance(medium, str) else None,
        )
    if kind == "AllBlocksCleared":
        return AllBlocksCleared()
    if isinstance(kind, str):
        return None  # a newer event type: not about which blocks are cached
    raise EventDecodeError(f"not an event: {raw!r:.200}")


def decode_batch(payload: bytes) -> EventBatch:
    """A msgpack ``[ts, [events], dp_rank?]`` payload (``dp_rank`` optional)."""
    try:
        data = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several unrelated types
        raise EventDecodeError(f"bad msgpack: {e}") from None
    if isinstance(data, dict):  # a map-encoded batch, should one appear
        data = [data.get("ts", 0.0), data.get("events"), data.get("data_parallel_rank")]
    if not isinstance(data, list) or len(data) < 2 or not isinstance(data[1], list):
        raise EventDecodeError(f"not an event batch: {data!r:.200}")
    ts = data[0] if isinstance(data[0], int | float) else 0.0
    rank = data[2] if len(data) > 2 and isinstance(data[2], int) else None
    events = [e for e in (decode_event(raw) for raw in data[1]) if e is not None]
    return EventBatch(float(ts), events, rank)


def encode_batch(events: Iterable[KVEvent], ts: float = 0.0, dp_rank: int = 0) -> bytes:
    """The payload vLLM would publish for ``events`` (map encoding), for tests and sims."""
    out: list[dict[str, Any]] = []
    for e in events:
        if isinstance(e, BlockStored):
            out.append(
                {
                    "type": "BlockStored",
                    "block_hashes": e.block_hashes,
                    "parent_block_hash": e.parent_block_hash,
                    "token_ids": e.token_ids,
                    "block_size": e.block_size,
                    "lora_id": e.lora_id,
                    "medium": e.medium,
                    "lora_name": e.lora_name,
                }
            )
        elif isinstance(e, BlockRemoved):
            out.append({"type": "BlockRemoved", "block_hashes": e.block_hashes, "medium": e.medium})
        else:
            out.append({"type": "AllBlocksCleared"})
    packed: bytes = msgpack.packb([ts, out, dp_rank], use_bin_type=True)
    return packed
