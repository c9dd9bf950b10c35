"""The scheduler's side of active-active replicas: own decisions out, peers' in.

``PeerRecorder`` is an observer plugin the server adds to the profile when ``peers`` is
configured: its ``on_pick``/``on_done`` hand each decision and each response end to the
exchange (``picker.datalayer.peers``), which batches them to the other replicas. The
other direction needs no adapter: the exchange calls ``Profile.on_peer_pick``, which
reaches every plugin implementing ``on_peer_pick`` (the ``prefix`` index).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from picker.datalayer.datastore import Datastore, Endpoint
from picker.observability import Metrics
from picker.request.types import InferenceRequest
from picker.scheduling.framework import Plugin
from picker.scheduling.profile import Profile
from picker.scheduling.scorers.prefix import PrefixScorer

if TYPE_CHECKING:
    from picker.config import PeersConfig
    from picker.datalayer.peers import PeerExchange


class Recorder(Protocol):
    def picked(self, endpoint: Endpoint, hashes: Sequence[int], tokens: int) -> None: ...

    def done(self, endpoint: Endpoint, tokens: int) -> None: ...


_NO_HASHES: list[int] = []


class PeerRecorder(Plugin):
    """Sends this replica's picks and response ends to its peers."""

    type = "peer_recorder"

    def __init__(self, exchange: Recorder) -> None:
        super().__init__()
        self.exchange = exchange

    def on_pick(self, request: InferenceRequest, endpoint: Endpoint) -> None:
        match = request.prefix
        hashes = match.hashes if match is not None else _NO_HASHES
        self.exchange.picked(endpoint, hashes, request.uncached_tokens(endpoint.address))

    def on_done(self, request: InferenceRequest, endpoint: Endpoint, ok: bool) -> None:
        self.exchange.done(endpoint, request.uncached_tokens(endpoint.address))


def prefix_layout(profile: Profile) -> int:
    """A 32-bit fingerprint of the profile's prefix block layout: replicas whose
    fingerprints differ ignore each other's hashes (0: no ``prefix`` plugin)."""
    layouts = sorted({p.layout for p in profile.plugins if isinstance(p, PrefixScorer)})
    return zlib.crc32("|".join(layouts).encode()) if layouts else 0


def peer_exchange(
    config: PeersConfig,
    datastore: Datastore,
    metrics: Metrics,
    profile: Profile,
    on_peers: Callable[[int], None],
) -> PeerExchange:
    """The exchange with the other replicas, its recorder added to the profile."""
    from picker.datalayer.peers import PeerExchange  # pyzmq: an optional extra

    exchange = PeerExchange(
        config,
        datastore,
        metrics,
        layout=prefix_layout(profile),
        on_pick=profile.on_peer_pick,
        on_done=profile.on_peer_done,
        on_peers=on_peers,
    )
    profile.add_plugin(PeerRecorder(exchange))
    return exchange
