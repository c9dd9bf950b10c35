"""Pick records between active-active picker replicas: a shared view of where prompts
went and of the load each replica has in flight, over ZMQ pub/sub (no store, no
consensus).

Every replica binds one XPUB socket (``peers.publish``) and connects one SUB socket to
every replica's (``peers.endpoints``; listing itself is harmless, its own messages are
recognised and ignored). On the wire (``peer_wire``):

* each routing decision is a PICK record (pod, the request's prefix block hashes as the
  ``prefix`` plugin computed them, its estimated uncached tokens), each response end a
  DONE record; records are buffered and those of one event-loop turn go out as one
  LIVE batch at its end (``flush_interval`` > 0 waits that long for more): one send
  per turn, not per request;
* every ``state_interval`` a STATE batch carries the replica's own in-flight count per
  pod (absolute): it corrects whatever a lost batch left wrong and is the heartbeat;
* a new subscriber gets a REPLAY of the publisher's recent picks (``replay_bytes`` at
  most, oldest first) on a topic only it subscribes to, so it learns the prefix state
  from its peers instead of from zero (the XPUB socket sees the subscription arrive).

A receiver applies a peer's PICK to the pod's load (``Endpoint.inflight``,
``sent_since_scrape``, ``inflight_tokens``: the counts every load scorer reads, which
so become the whole gateway's and not one replica's) and hands the hashes to the
plugins (``on_peer_pick``: the prefix index); a DONE takes the load off again. What a
peer added is tracked per peer and pod, so it comes off exactly: at its next STATE,
and all of it when the peer is silent for ``peer_timeout`` (killed, partitioned).
State is bounded: at most ``max_peers`` peers, entries only for pods in the datastore,
a bounded replay ring, bounded messages (``max_message_bytes``, enforced by ZMQ).
Malformed messages are dropped and counted, never applied in part.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from picker.datalayer import peer_wire as wire
from picker.datalayer.datastore import Datastore, Endpoint
from picker.datalayer.peer_table import PeerDone, PeerPick, PeerTable
from picker.observability import Metrics

if TYPE_CHECKING:
    from picker.config import PeersConfig

log = logging.getLogger(__name__)

_REPLAY_CHUNK = 32 * 1024


def _zmq() -> Any:
    try:
        import zmq
        import zmq.asyncio
    except ImportError:  # pragma: no cover - depends on the installation
        raise RuntimeError(
            "peers: sharing state between replicas needs pyzmq: pip install 'picker[peers]'"
        ) from None
    return zmq


class PeerExchange:
    """This replica's end of the exchange: publishes its records, applies its peers'."""

    def __init__(
        self,
        config: PeersConfig,
        datastore: Datastore,
        metrics: Metrics,
        *,
        layout: int,
        on_pick: PeerPick,
        on_done: PeerDone | None = None,
        on_peers: Callable[[int], None] | None = None,
    ) -> None:
        self.config = config
        self.datastore = datastore
        self.metrics = metrics
        self.nonce = secrets.randbits(64)
        self.id = config.id or f"{socket.gethostname()}:{os.getpid()}"
        self._id = self.id.encode()[: wire.MAX_ID]
        self.layout = layout
        self.table = PeerTable(
            datastore,
            on_pick,
            nonce=self.nonce,
            layout=layout,
            metrics=metrics,
            max_peers=config.max_peers,
            on_done=on_done,
            on_peers=on_peers,
        )
        self.warmed = asyncio.Event()  # replays in from every endpoint, or warmup passed
        self._buf = bytearray()
        self._picks = 0
        self._dones = 0
        self._seq = 0
        self._ring: deque[bytes] = deque()
        self._ring_bytes = 0
        self._flush_handle: asyncio.TimerHandle | None = None
        self._z: Any = None  # the zmq module, once started
        self._ctx: Any = None
        self._pub: Any = None
        self._sub: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False
        self.bound = ""  # the publish endpoint actually bound (port 0 resolved)
        self.endpoints: set[str] = set()  # the peers' publishers subscribed to
        # Set once the endpoints are known: at start from ``peers.endpoints``, or at the
        # first ``set_endpoints`` when they are discovered (``peers.selector``).
        self._listed = asyncio.Event()

    # -- the request path: cheap appends, sent later in one batch -------------------

    def picked(self, endpoint: Endpoint, hashes: Sequence[int], tokens: int) -> None:
        rec = wire.pick(endpoint.address.encode(), tokens, hashes)
        self._buf += rec
        self._picks += 1
        if hashes:
            ring = self._ring
            ring.append(rec)
            self._ring_bytes += len(rec)
            while self._ring_bytes > self.config.replay_bytes and ring:
                self._ring_bytes -= len(ring.popleft())
        self._schedule()

    def done(self, endpoint: Endpoint, tokens: int) -> None:
        self._buf += wire.done(endpoint.address.encode(), tokens)
        self._dones += 1
        self._schedule()

    def _schedule(self) -> None:
        if not self._running:
            return
        if len(self._buf) >= self.config.batch_bytes:
            self._flush()
        elif self._flush_handle is None:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(self.config.flush_interval, self._flush)

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._buf or self._pub is None:
            return
        body, self._buf = bytes(self._buf), bytearray()
        self._send(wire.LIVE_TOPIC, wire.LIVE, body)
        m = self.metrics
        if self._picks:
            m.child(m.peer_records, "sent", "pick").inc(self._picks)
        if self._dones:
            m.child(m.peer_records, "sent", "done").inc(self._dones)
        self._picks = self._dones = 0

    def _send(self, topic: bytes, kind: int, body: bytes, flags: int = 0) -> None:
        seq = 0
        if kind != wire.REPLAY:
            self._seq += 1
            seq = self._seq
        head = wire.header(kind, self.layout, self.nonce, seq, self._id, flags, time.time())
        zmq = self._z
        try:
            self._pub.send_multipart([topic, head + body], flags=zmq.NOBLOCK)
        except zmq.ZMQError:  # the send queue is full (high-water mark)
            self.table.dropped("send_queue_full")

    # -- background --------------------------------------------------------------------

    async def start(self) -> None:
        zmq = self._z = _zmq()
        cfg = self.config
        self._ctx = zmq.asyncio.Context()
        pub = self._ctx.socket(zmq.XPUB)
        pub.setsockopt(zmq.LINGER, 0)
        pub.setsockopt(zmq.SNDHWM, 10_000)
        if cfg.publish:
            try:
                pub.bind(cfg.publish)
            except zmq.ZMQError as e:
                pub.close(linger=0)
                self._ctx.term()
                raise RuntimeError(f"peers.publish {cfg.publish!r}: {e}") from None
            self.bound = pub.getsockopt(zmq.LAST_ENDPOINT).decode()
        sub = self._ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 10_000)
        sub.setsockopt(zmq.MAXMSGSIZE, cfg.max_message_bytes)
        sub.setsockopt(zmq.RECONNECT_IVL, 100)
        sub.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        sub.setsockopt(zmq.SUBSCRIBE, wire.LIVE_TOPIC)
        sub.setsockopt(zmq.SUBSCRIBE, wire.replay_topic(self.nonce))
        self._pub, self._sub = pub, sub
        if not cfg.selector:
            self.set_endpoints(cfg.endpoints)
        self._running = True
        loop = asyncio.get_running_loop()
        for coro, name in (
            (self._receive(), "peers-receive"),
            (self._subscriptions(), "peers-replay"),
            (self._heartbeat(), "peers-state"),
            (self._warmup(), "peers-warmup"),
        ):
            self._tasks.append(loop.create_task(coro, name=name))
        log.info(
            "peers: replica %s publishing on %s, %s",
            self.id,
            self.bound or "-",
            f"replicas labelled {cfg.selector}"
            if cfg.selector
            else f"subscribed to {len(cfg.endpoints)} endpoint(s)",
        )

    async def stop(self) -> None:
        self._running = False
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for peer in list(self.table.peers.values()):
            self.table.forget(peer)
        for sock in (self._pub, self._sub):
            if sock is not None:
                sock.close(linger=0)
        self._pub = self._sub = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    async def _receive(self) -> None:
        zmq = _zmq()
        sub, table = self._sub, self.table
        lag_hist = self.metrics.peer_lag
        while True:
            try:
                frames = await sub.recv_multipart(copy=True)
            except zmq.ZMQError as e:
                if e.errno == zmq.ETERM:
                    return
                log.warning("peers: receive failed: %s", e)
                await asyncio.sleep(0.1)
                continue
            if len(frames) != 2:
                table.dropped("malformed")
                continue
            try:
                batch = wire.decode(frames[1])
            except wire.WireError as e:
                table.dropped(e.reason)
                continue
            if batch.kind == wire.LIVE:
                lag = time.time() - batch.sent_at
                if 0.0 <= lag < 3600.0:  # (False for NaN) clocks of two hosts may differ
                    lag_hist.observe(lag)
            try:
                table.apply(batch, time.monotonic())
            except Exception:  # a bug must not stop the exchange; the batch is lost
                table.dropped("error")
                log.exception("peers: cannot apply a batch from %s", batch.sender)
            self._check_warm()

    def set_endpoints(self, endpoints: Sequence[str]) -> None:
        """Subscribes to exactly these publishers (at most ``max_peers``): new ones are
        connected, vanished ones disconnected (their load goes when they go silent)."""
        sub = self._sub
        if sub is None:
            return
        zmq = _zmq()
        want = set(list(dict.fromkeys(endpoints))[: self.config.max_peers])
        for e in self.endpoints - want:
            with contextlib.suppress(zmq.ZMQError):
                sub.disconnect(e)
        for e in want - self.endpoints:
            try:
                sub.connect(e)
            except zmq.ZMQError as err:
                log.warning("peers: cannot subscribe to %s: %s", e, err)
                want.discard(e)
        self.endpoints = want
        self._listed.set()
        self._check_warm()

    def _check_warm(self) -> None:
        listed = self._listed.is_set()
        if (
            listed
            and not self.warmed.is_set()
            and len(self.table.replays_done) >= len(self.endpoints)
        ):
            self.warmed.set()

    async def _subscriptions(self) -> None:
        """Replays recent picks to each new subscriber (its ``S<nonce>`` subscription)."""
        zmq = _zmq()
        prefix = b"\x01" + wire.REPLAY_PREFIX
        while True:
            try:
                msg = await self._pub.recv()
            except zmq.ZMQError as e:
                if e.errno == zmq.ETERM:
                    return
                await asyncio.sleep(0.1)
                continue
            if msg.startswith(prefix) and len(msg) == 18:
                self._replay(msg[1:])

    def _replay(self, topic: bytes) -> None:
        self._flush()
        chunk: list[bytes] = []
        size = sent = 0
        for rec in list(self._ring):
            chunk.append(rec)
            size += len(rec)
            if size >= min(_REPLAY_CHUNK, self.config.batch_bytes):
                self._send(topic, wire.REPLAY, b"".join(chunk))
                sent += len(chunk)
                chunk, size = [], 0
        self._send(topic, wire.REPLAY, b"".join(chunk), wire.FINAL)
        sent += len(chunk)
        m = self.metrics
        m.child(m.peer_records, "sent", "replay").inc(sent)

    async def _heartbeat(self) -> None:
        cfg = self.config
        while True:
            await asyncio.sleep(cfg.state_interval)
            self.send_state()
            self.table.expire(time.monotonic(), cfg.peer_timeout)
            self.metrics.peer_inflight.set(self.table.peer_inflight)

    def send_state(self) -> None:
        """Sends this replica's own in-flight table (after any pending records)."""
        self._flush()
        parts: list[bytes] = []
        own = self.table.own
        for ep in self.datastore.by_address.values():
            count, tokens = own(ep)
            if count > 0:
                parts.append(wire.state(ep.address.encode(), count, tokens))
        self._send(wire.LIVE_TOPIC, wire.STATE, b"".join(parts))
        m = self.metrics
        m.child(m.peer_records, "sent", "state").inc()

    async def _warmup(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.warmed.wait(), self.config.warmup)
        if not self.warmed.is_set():
            log.info(
                "peers: %d of %d endpoint(s) replayed within %.1f s; routing anyway",
                len(self.table.replays_done),
                len(self.endpoints),
                self.config.warmup,
            )
        self.warmed.set()
