"""Applying peer replicas' pick records to this replica's view (``picker.datalayer.peers``).

``PeerTable`` holds what each peer (one process: its nonce) added to each pod's load,
so that it comes off exactly: at the peer's next STATE batch, and all of it when the
peer goes silent or restarts. No sockets here: the exchange feeds it decoded batches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from picker.datalayer import peer_wire as wire
from picker.datalayer.datastore import Datastore, Endpoint
from picker.observability import Metrics

log = logging.getLogger(__name__)

PeerDone = Callable[[Endpoint, int], None]
"""``(endpoint, uncached tokens)``: a request a peer sent there ended."""
PeerPick = Callable[[Endpoint, list[int], int], None]
"""``(endpoint, prefix block hashes, uncached tokens)``: a peer sent a request there
(``tokens`` 0: a replayed pick, long done; see ``Plugin.on_peer_pick``)."""

MAX_PER_POD = 100_000  # a peer's in-flight count on one pod is capped here


@dataclass(slots=True, eq=False)
class Peer:
    """One replica heard from (a process: its nonce), and what it added to pod loads."""

    nonce: int
    sender: str
    heard: float
    seq: int = -1
    inflight: dict[Endpoint, list[int]] = field(default_factory=dict)  # ep -> [count, tokens]


class PeerTable:
    """Applies peers' batches to the datastore's endpoints (no sockets: testable alone)."""

    def __init__(
        self,
        datastore: Datastore,
        on_pick: PeerPick,
        *,
        nonce: int,
        layout: int,
        metrics: Metrics,
        max_peers: int = 64,
        on_done: PeerDone | None = None,
        on_peers: Callable[[int], None] | None = None,
    ) -> None:
        self.datastore = datastore
        self.on_pick = on_pick
        self.on_done = on_done
        self.on_peers = on_peers  # hears the number of live peers when it changes
        self.nonce = nonce
        self.layout = layout
        self.metrics = metrics
        self.max_peers = max_peers
        self.peers: dict[int, Peer] = {}
        # Summed over peers: what they added to each endpoint (own = ep.inflight - this).
        self.folded: dict[Endpoint, list[int]] = {}
        self.replays_done: set[int] = set()  # nonces whose replay reached us completely

    def dropped(self, reason: str, n: int = 1) -> None:
        m = self.metrics
        m.child(m.peer_dropped, reason).inc(n)

    def received(self, kind: str, n: int) -> None:
        m = self.metrics
        m.child(m.peer_records, "received", kind).inc(n)

    def own(self, ep: Endpoint) -> tuple[int, int]:
        """This replica's own in-flight count and tokens on ``ep``."""
        f = self.folded.get(ep)
        if f is None:
            return ep.inflight, ep.inflight_tokens
        return ep.inflight - f[0], ep.inflight_tokens - f[1]

    @property
    def peer_inflight(self) -> int:
        return sum(f[0] for f in self.folded.values())

    def _add(self, peer: Peer, ep: Endpoint, count: int, tokens: int) -> None:
        """Adds (or, negative, removes) ``peer``'s load on ``ep``; never below zero."""
        entry = peer.inflight.get(ep)
        if entry is None:
            if count <= 0:
                return
            entry = peer.inflight[ep] = [0, 0]
        count = max(-entry[0], min(count, MAX_PER_POD - entry[0]))
        tokens = max(-entry[1], tokens)
        entry[0] += count
        entry[1] += tokens
        if entry[0] == 0:
            tokens -= entry[1]  # no request left: no tokens either
            entry[1] = 0
            del peer.inflight[ep]
        ep.inflight += count
        ep.inflight_tokens += tokens
        f = self.folded.get(ep)
        if f is None:
            f = self.folded[ep] = [0, 0]
        f[0] += count
        f[1] += tokens
        if f[0] <= 0:
            del self.folded[ep]

    def forget(self, peer: Peer) -> None:
        """Takes everything ``peer`` added off the pods' loads."""
        for ep, (count, tokens) in list(peer.inflight.items()):
            self._add(peer, ep, -count, -tokens)
        self.peers.pop(peer.nonce, None)
        self._peers_changed()

    def _peers_changed(self) -> None:
        self.metrics.peers_connected.set(len(self.peers))
        if self.on_peers is not None:
            self.on_peers(len(self.peers))

    def expire(self, now: float, timeout: float) -> list[Peer]:
        gone = [p for p in self.peers.values() if now - p.heard > timeout]
        for p in gone:
            log.warning("peer %s silent for %.1f s: its in-flight load dropped", p.sender, timeout)
            self.forget(p)
        return gone

    def _endpoint(self, address: str) -> Endpoint | None:
        ep = self.datastore.by_address.get(address)
        return None if ep is None or ep.removed else ep

    def apply(self, batch: wire.Batch, now: float) -> None:
        own = batch.nonce == self.nonce  # this replica is in its own endpoints list
        if batch.kind == wire.REPLAY:
            if batch.flags & wire.FINAL:
                self.replays_done.add(batch.nonce)
            if not own:
                self._replay(batch)
            return
        if own:
            return
        peer = self.peers.get(batch.nonce)
        if peer is None:
            for old in [p for p in self.peers.values() if p.sender == batch.sender]:
                log.warning("peer %s restarted: its earlier load dropped", old.sender)
                self.forget(old)  # the same replica, a new process: the old one is gone
            if len(self.peers) >= self.max_peers:
                self.dropped("too_many_peers")
                return
            peer = self.peers[batch.nonce] = Peer(batch.nonce, batch.sender, now)
            self._peers_changed()
            log.info("peer %s joined", batch.sender)
        peer.heard = now
        if peer.seq >= 0 and batch.seq > peer.seq + 1:
            self.dropped("lost", batch.seq - peer.seq - 1)
        peer.seq = batch.seq
        if batch.kind == wire.STATE:
            self._state(peer, batch)
            return
        hashes_ok = batch.layout == self.layout
        if not hashes_ok:
            self.dropped("layout")
        picks = dones = unknown = 0
        for r in batch.records:
            ep = self._endpoint(r.address)
            if ep is None:
                unknown += 1
                continue
            if r.tag == wire.PICK:
                picks += 1
                self._add(peer, ep, 1, r.tokens)
                ep.sent_since_scrape += 1
                if r.hashes and hashes_ok:
                    self.on_pick(ep, r.hashes, r.tokens)
            else:
                dones += 1
                if ep in peer.inflight and self.on_done is not None:
                    self.on_done(ep, r.tokens)
                self._add(peer, ep, -1, -r.tokens)
        if picks:
            self.received("pick", picks)
        if dones:
            self.received("done", dones)
        if unknown:
            self.dropped("unknown_endpoint", unknown)

    def _state(self, peer: Peer, batch: wire.Batch) -> None:
        wanted: dict[Endpoint, tuple[int, int]] = {}
        for r in batch.records:
            ep = self._endpoint(r.address)
            if ep is not None:
                wanted[ep] = (r.inflight, r.tokens)
        for ep in [e for e in peer.inflight if e not in wanted]:
            count, tokens = peer.inflight[ep]
            self._add(peer, ep, -count, -tokens)
        for ep, (count, tokens) in wanted.items():
            have = peer.inflight.get(ep, (0, 0))
            self._add(peer, ep, count - have[0], tokens - have[1])
        self.received("state", 1)

    def _replay(self, batch: wire.Batch) -> None:
        if batch.layout != self.layout:
            self.dropped("layout")
        else:
            n = 0
            for r in batch.records:
                ep = self._endpoint(r.address)
                if ep is not None and r.hashes:
                    self.on_pick(ep, r.hashes, 0)  # 0 tokens: history, no load
                    n += 1
            if n:
                self.received("replay", n)
