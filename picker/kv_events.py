"""vLLM KV-cache events: a ZMQ SUB client per pod and an index of which pod holds which block.

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

Consistency: the stream has no snapshot, so the index only knows what happened after it
subscribed (ZMQ's slow-joiner rule applies too). A sequence gap (a lost batch, a publisher
restart that starts again from 0, an undecodable payload) or an ``AllBlocksCleared``
event makes the index drop *all* of that pod's blocks: under-claiming a cached prefix costs
a cache miss, over-claiming one sends traffic to a pod for nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import zmq
import zmq.asyncio

log = logging.getLogger(__name__)

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


class KVBlockIndex:
    """Which pod holds which block: per-pod block sets and a map block hash → pods.

    A pod may report one block in several media (e.g. "GPU" and an offload tier "CPU");
    the block counts as held until it is removed from every medium it was stored in.
    """

    def __init__(self) -> None:
        self._blocks: dict[str, dict[int, set[str | None]]] = {}
        self._where: dict[int, set[str]] = {}

    def __len__(self) -> int:
        return len(self._where)

    def pods(self) -> list[str]:
        return list(self._blocks)

    def blocks_on(self, pod: str) -> set[int]:
        return set(self._blocks.get(pod, ()))

    def pods_with(self, block_hash: int) -> set[str]:
        return set(self._where.get(block_hash, ()))

    def store(self, pod: str, hashes: Iterable[int], medium: str | None = None) -> None:
        blocks = self._blocks.setdefault(pod, {})
        where = self._where
        for h in hashes:
            media = blocks.get(h)
            if media is None:
                blocks[h] = {medium}
                pods = where.get(h)
                if pods is None:
                    where[h] = {pod}
                else:
                    pods.add(pod)
            else:
                media.add(medium)

    def remove(self, pod: str, hashes: Iterable[int], medium: str | None = None) -> None:
        blocks = self._blocks.get(pod)
        if not blocks:
            return
        for h in hashes:
            media = blocks.get(h)
            if media is None:
                continue
            media.discard(medium)
            if media:
                continue
            del blocks[h]
            pods = self._where.get(h)
            if pods is not None:
                pods.discard(pod)
                if not pods:
                    del self._where[h]

    def clear(self, pod: str) -> int:
        """Forgets every block of ``pod``; returns how many there were."""
        blocks = self._blocks.pop(pod, None)
        if not blocks:
            return 0
        for h in blocks:
            pods = self._where.get(h)
            if pods is not None:
                pods.discard(pod)
                if not pods:
                    del self._where[h]
        return len(blocks)

    def apply(self, pod: str, event: KVEvent) -> None:
        if isinstance(event, BlockStored):
            self.store(pod, event.block_hashes, event.medium)
        elif isinstance(event, BlockRemoved):
            self.remove(pod, event.block_hashes, event.medium)
        else:
            self.clear(pod)

    def match(self, hashes: Sequence[int], pods: Sequence[str]) -> list[int]:
        """Leading blocks of ``hashes`` that each pod holds (aligned with ``pods``)."""
        out: list[int] = []
        for pod in pods:
            blocks = self._blocks.get(pod)
            n = 0
            if blocks:
                for h in hashes:
                    if h not in blocks:
                        break
                    n += 1
            out.append(n)
        return out


@dataclass(slots=True)
class SubscriberStats:
    batches: int = 0
    events: int = 0
    gaps: int = 0
    clears: int = 0
    errors: int = 0
    last_seq: int | None = None


class EventStream:
    """The state of one pod's event stream: applies frames to the index, checks sequence.

    Kept apart from the socket so it can be fed recorded frames.
    """

    def __init__(self, index: KVBlockIndex, pod: str) -> None:
        self.index = index
        self.pod = pod
        self.stats = SubscriberStats()

    def reset(self) -> None:
        """Forget the pod's blocks and the sequence (e.g. after a reconnect)."""
        self.index.clear(self.pod)
        self.stats.last_seq = None

    def handle(self, frames: Sequence[bytes]) -> None:
        """One ZMQ multipart message ``[topic, seq, payload]`` (or ``[seq, payload]``)."""
        stats = self.stats
        if len(frames) == 3:
            seq_bytes, payload = frames[1], frames[2]
        elif len(frames) == 2:
            seq_bytes, payload = frames[0], frames[1]
        else:
            stats.errors += 1
            self._lost(f"{len(frames)} frames")
            return
        if len(seq_bytes) != 8:
            stats.errors += 1
            self._lost("bad sequence frame")
            return
        seq = int.from_bytes(seq_bytes, "big", signed=True)
        if seq < 0:  # vLLM's replay end marker
            return
        last = stats.last_seq
        if last is not None and seq != last + 1:
            if seq <= last:
                # A duplicate, or the publisher restarted (its seq starts again at 0).
                stats.gaps += 1
                self._lost(f"sequence went back from {last} to {seq}")
            else:
                stats.gaps += 1
                self._lost(f"sequence gap: {last} -> {seq}")
        stats.last_seq = seq
        try:
            batch = decode_batch(payload)
        except EventDecodeError as e:
            stats.errors += 1
            self._lost(str(e))
            return
        stats.batches += 1
        stats.events += len(batch.events)
        for event in batch.events:
            if isinstance(event, AllBlocksCleared):
                stats.clears += 1
            self.index.apply(self.pod, event)

    def _lost(self, why: str) -> None:
        dropped = self.index.clear(self.pod)
        log.warning("kv events from %s: %s; dropped its %d blocks", self.pod, why, dropped)


class KVEventSubscriber:
    """An asyncio ZMQ SUB socket connected to one pod's publisher, feeding an ``EventStream``."""

    def __init__(
        self,
        index: KVBlockIndex,
        pod: str,
        endpoint: str,
        *,
        topic: str = "",
        context: zmq.asyncio.Context | None = None,
    ) -> None:
        self.stream = EventStream(index, pod)
        self.pod = pod
        self.endpoint = endpoint
        self.topic = topic
        self._ctx = context
        self._socket: zmq.asyncio.Socket | None = None
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    @property
    def stats(self) -> SubscriberStats:
        return self.stream.stats

    async def start(self) -> None:
        if self._task is not None:
            return
        ctx = self._ctx or zmq.asyncio.Context.instance()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.setsockopt(zmq.SUBSCRIBE, self.topic.encode())
        sock.connect(self.endpoint)
        self._socket = sock
        self._task = asyncio.create_task(self._run(sock), name=f"kv-events {self.pod}")

    async def _run(self, sock: zmq.asyncio.Socket) -> None:
        self.connected.set()
        while True:
            try:
                frames = await sock.recv_multipart()
            except asyncio.CancelledError:
                raise
            except zmq.ZMQError as e:
                if e.errno == zmq.ETERM:
                    return
                log.warning("kv events from %s: %s", self.pod, e)
                await asyncio.sleep(0.1)
                continue
            try:
                self.stream.handle(frames)
            except Exception:  # one bad batch must not stop the subscriber
                self.stream.stats.errors += 1
                log.exception("kv events from %s: cannot apply a batch", self.pod)
                self.stream.reset()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close(linger=0)


class KVEvents:
    """Subscribers for a set of pods sharing one index.

    ``endpoints`` maps a pod address (``ip:port``, as picker's datastore names it) to its
    publisher endpoint (``tcp://host:port``). ``pattern`` (e.g. ``"tcp://{host}:5557"``,
    placeholders ``{host}``, ``{port}``, ``{address}``) derives the endpoint of any other pod
    when ``ensure(address)`` first sees it.
    """

    def __init__(
        self,
        endpoints: Mapping[str, str] | None = None,
        *,
        pattern: str | None = None,
        topic: str = "",
        index: KVBlockIndex | None = None,
    ) -> None:
        self.index = index or KVBlockIndex()
        self.endpoints: dict[str, str] = dict(endpoints or {})
        self.pattern = pattern
        self.topic = topic
        self.subscribers: dict[str, KVEventSubscriber] = {}
        self._ctx: zmq.asyncio.Context | None = None
        self._running = False
        self._pending: set[asyncio.Task[KVEventSubscriber | None]] = set()

    def endpoint_for(self, address: str) -> str | None:
        found = self.endpoints.get(address)
        if found is not None or self.pattern is None:
            return found
        host, _, port = address.rpartition(":")
        return self.pattern.format(host=host.strip("[]"), port=port, address=address)

    async def start(self) -> None:
        if self._running:
            return
        self._ctx = zmq.asyncio.Context()
        self._running = True
        for address in list(self.endpoints):
            await self._subscribe(address)

    async def _subscribe(self, address: str) -> KVEventSubscriber | None:
        if address in self.subscribers or not self._running:
            return self.subscribers.get(address)
        endpoint = self.endpoint_for(address)
        if endpoint is None:
            return None
        sub = KVEventSubscriber(self.index, address, endpoint, topic=self.topic, context=self._ctx)
        self.subscribers[address] = sub
        await sub.start()
        return sub

    def ensure(self, address: str) -> None:
        """Subscribes to ``address``'s events if not yet done (needs a running loop)."""
        if not self._running or address in self.subscribers:
            return
        if self.endpoint_for(address) is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no running loop: start() subscribes the known ones
            return
        task = loop.create_task(self._subscribe(address))
        self._pending.add(task)  # keep a reference until done
        task.add_done_callback(self._pending.discard)

    async def forget(self, address: str) -> None:
        """Stops following ``address`` and drops its blocks (the pod left the pool)."""
        sub = self.subscribers.pop(address, None)
        if sub is not None:
            await sub.stop()
        self.index.clear(address)

    async def stop(self) -> None:
        self._running = False
        for task in list(self._pending):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        subs = list(self.subscribers.values())
        self.subscribers.clear()
        for sub in subs:
            await sub.stop()
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            ctx.term()
