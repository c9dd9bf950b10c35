"""Following vLLM's KV-cache events: which pod holds which block.

``KVEvents`` keeps one ZMQ SUB socket per pod (``KVEventSubscriber``), feeds each pod's
batches through an ``EventStream`` (sequence checks) into one shared ``KVBlockIndex``.
The wire format and its decoding are in ``picker.datalayer.kv_events``.

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
from dataclasses import dataclass

import zmq
import zmq.asyncio

from picker.datalayer.kv_events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EventDecodeError,
    KVEvent,
    decode_batch,
)

log = logging.getLogger(__name__)


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

    def cancel(self) -> None:
        """Stops feeding the index at once (``stop`` still closes the socket)."""
        if self._task is not None:
            self._task.cancel()

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

    def forget(self, address: str) -> None:
        """``address`` was removed: stop its subscriber and drop its blocks. A pod coming
        back at the address is subscribed again by ``ensure``."""
        sub = self.subscribers.pop(address, None)
        if sub is not None:
            sub.cancel()  # applies nothing more from now on; the socket closes below
            task = asyncio.get_running_loop().create_task(self._stop_removed(sub))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        self.index.clear(address)

    async def _stop_removed(self, sub: KVEventSubscriber) -> KVEventSubscriber | None:
        await sub.stop()
        return None

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
