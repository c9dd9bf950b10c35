"""Applying peers' pick records to pod loads and the prefix index (``PeerTable``): exact
bookkeeping, bounded state, and nothing a peer adds outlives the peer."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from picker.datalayer import peer_wire as wire
from picker.datalayer.datastore import Datastore, Endpoint, Pool
from picker.datalayer.peer_table import MAX_PER_POD, PeerTable
from picker.observability import Metrics

A, B = "10.0.0.1:8000", "10.0.0.2:8000"
LAYOUT = 77
ME = 1


class Net:
    """A datastore with two pods, a table, and what reached ``on_pick``."""

    def __init__(self, max_peers: int = 64) -> None:
        self.a, self.b = Endpoint(A), Endpoint(B)
        self.ds = Datastore([Pool("p", [self.a, self.b])])
        self.metrics = Metrics()
        self.picks: list[tuple[str, list[int], int]] = []
        self.dones: list[tuple[str, int]] = []
        self.table = PeerTable(
            self.ds,
            lambda ep, h, t: self.picks.append((ep.address, h, t)),
            on_done=lambda ep, t: self.dones.append((ep.address, t)),
            nonce=ME,
            layout=LAYOUT,
            metrics=self.metrics,
            max_peers=max_peers,
        )

    def count(self, name: str, *labels: str) -> float:
        value = self.metrics.registry.get_sample_value(
            name, dict(zip(_LABELS[name], labels, strict=True))
        )
        return value or 0.0

    def send(
        self, nonce: int, seq: int, *records: bytes, kind: int = wire.LIVE, layout: int = LAYOUT
    ) -> None:
        payload = wire.header(kind, layout, nonce, seq, b"peer-%d" % nonce) + b"".join(records)
        self.table.apply(wire.decode(payload), now=float(seq))


_LABELS = {
    "picker_peer_dropped_total": ("reason",),
    "picker_peer_records_total": ("direction", "kind"),
}


def pick(address: str, tokens: int = 10, hashes: list[int] | None = None) -> bytes:
    return wire.pick(address.encode(), tokens, hashes or [])


def done(address: str, tokens: int = 10) -> bytes:
    return wire.done(address.encode(), tokens)


def state(address: str, n: int, tokens: int) -> bytes:
    return wire.state(address.encode(), n, tokens)


def test_a_peer_pick_is_load_and_prefix_and_its_done_takes_the_load_off() -> None:
    net = Net()
    net.a.inflight, net.a.inflight_tokens = 2, 50  # this replica's own requests
    net.send(9, 1, pick(A, 100, [11, 12]), pick(A, 30))
    assert (net.a.inflight, net.a.sent_since_scrape, net.a.inflight_tokens) == (4, 2, 180)
    assert net.picks == [(A, [11, 12], 100)]  # no hashes: load only
    assert net.table.own(net.a) == (2, 50)
    assert net.table.peer_inflight == 2
    net.send(9, 2, done(A, 100))
    assert (net.a.inflight, net.a.inflight_tokens) == (3, 80)
    assert net.count("picker_peer_records_total", "received", "pick") == 2
    assert net.count("picker_peer_records_total", "received", "done") == 1


def test_a_done_never_takes_off_more_than_the_peer_added() -> None:
    net = Net()
    net.a.inflight = 5  # own
    net.send(9, 1, pick(A, 10), done(A, 10), done(A, 10), done(A, 999), done(B, 3))
    assert net.a.inflight == 5 and net.a.inflight_tokens == 0 and net.b.inflight == 0
    assert net.dones == [(A, 10)]  # the plugins hear of the one request that was there
    assert net.table.folded == {} and net.table.peers[9].inflight == {}


def test_state_replaces_what_lost_records_left_wrong() -> None:
    net = Net()
    net.send(9, 1, pick(A), pick(A), pick(A), pick(B))
    net.send(9, 5, state(A, 1, 40), kind=wire.STATE)  # B's done was lost; seq 2-4 lost
    assert (net.a.inflight, net.a.inflight_tokens) == (1, 40)
    assert net.b.inflight == 0 and net.b.inflight_tokens == 0
    assert net.count("picker_peer_dropped_total", "lost") == 3
    net.send(9, 6, kind=wire.STATE)  # a heartbeat: nothing in flight any more
    assert net.a.inflight == 0 and net.table.folded == {}


def test_a_silent_peer_takes_all_its_load_with_it() -> None:
    net = Net()
    net.a.inflight = 1
    net.send(9, 1, pick(A), pick(B))  # heard at t=1
    net.send(8, 3, pick(A))  # another peer, heard at t=3
    assert net.a.inflight == 3
    gone = net.table.expire(now=4.5, timeout=3.0)
    assert [p.nonce for p in gone] == [9]
    assert (net.a.inflight, net.b.inflight) == (2, 0)
    net.table.expire(now=10.0, timeout=3.0)
    assert net.a.inflight == 1 and net.table.peers == {} and net.table.folded == {}


def test_own_messages_unknown_pods_foreign_layouts_and_too_many_peers() -> None:
    net = Net(max_peers=2)
    net.send(ME, 1, pick(A, 5, [1]))  # this replica hearing itself: ignored
    assert net.a.inflight == 0 and net.picks == []
    net.send(9, 1, pick("10.9.9.9:1"), pick(A, 5, [1]), layout=LAYOUT + 1)
    assert net.a.inflight == 1 and net.picks == []  # load counts, foreign hashes do not
    assert net.count("picker_peer_dropped_total", "unknown_endpoint") == 1
    assert net.count("picker_peer_dropped_total", "layout") == 1
    net.send(8, 1, pick(A))
    net.send(7, 1, pick(A))  # a third peer: over max_peers
    assert net.a.inflight == 2 and len(net.table.peers) == 2
    assert net.count("picker_peer_dropped_total", "too_many_peers") == 1


def test_removed_pods_are_not_charged_and_their_charges_drain() -> None:
    net = Net()
    net.send(9, 1, pick(B), pick(B))
    net.ds.update_endpoints("p", remove=[B])
    net.send(9, 2, pick(B))  # no longer a pod: dropped
    assert net.b.inflight == 2
    net.send(9, 3, kind=wire.STATE)
    assert net.b.inflight == 0 and net.table.folded == {}


def test_replay_feeds_the_prefix_index_only_and_marks_the_peer_replayed() -> None:
    net = Net()
    payload = wire.header(wire.REPLAY, LAYOUT, 9, 0, b"p") + pick(A, 3, [4, 5]) + pick(B, 1, [6])
    net.table.apply(wire.decode(payload), 1.0)
    assert net.picks == [(A, [4, 5], 0), (B, [6], 0)]  # 0 tokens: history, not load
    assert net.a.inflight == 0 and net.table.replays_done == set()
    final = wire.header(wire.REPLAY, LAYOUT, 9, 0, b"p", wire.FINAL)
    net.table.apply(wire.decode(final), 1.0)
    assert net.table.replays_done == {9} and net.table.peers == {}  # no load, no peer


def test_a_peers_count_per_pod_is_capped() -> None:
    net = Net()
    net.send(9, 1, state(A, 1 << 31, 1 << 31), kind=wire.STATE)
    assert net.a.inflight == MAX_PER_POD


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["pick", "done", "state", "expire"]),
        st.integers(2, 5),  # peer nonce
        st.sampled_from([A, B]),
        st.integers(0, 300),  # tokens / count
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(_OPS)
def test_whatever_peers_send_their_load_comes_off_exactly(
    ops: list[tuple[str, int, str, int]],
) -> None:
    net = Net()
    net.a.inflight, net.a.inflight_tokens = 3, 70  # own load: never touched
    seqs: dict[int, int] = {}
    for t, (op, nonce, address, n) in enumerate(ops):
        seqs[nonce] = seqs.get(nonce, 0) + 1
        if op == "pick":
            net.send(nonce, seqs[nonce], pick(address, n))
        elif op == "done":
            net.send(nonce, seqs[nonce], done(address, n))
        elif op == "state":
            net.send(nonce, seqs[nonce], state(address, n % 7, n), kind=wire.STATE)
        else:
            net.table.expire(now=float(t), timeout=5.0)
        for ep in (net.a, net.b):
            peers = sum(p.inflight.get(ep, [0, 0])[0] for p in net.table.peers.values())
            assert ep.inflight - peers == (3 if ep is net.a else 0)
            assert ep.inflight >= 0 and ep.inflight_tokens >= 0
    net.table.expire(now=1e9, timeout=5.0)
    assert (net.a.inflight, net.a.inflight_tokens) == (3, 70)
    assert (net.b.inflight, net.b.inflight_tokens) == (0, 0)
    assert net.table.folded == {} and net.table.peers == {}


def test_a_restarted_peer_replaces_its_earlier_process_at_once() -> None:
    net = Net()
    net.send(9, 1, pick(A), pick(A))
    payload = wire.header(wire.LIVE, LAYOUT, 10, 1, b"peer-9") + pick(B)  # same id, new nonce
    net.table.apply(wire.decode(payload), now=2.0)
    assert (net.a.inflight, net.b.inflight) == (0, 1)
    assert list(net.table.peers) == [10]


def test_the_table_reports_live_peers_as_they_come_and_go() -> None:
    net = Net()
    counts: list[int] = []
    net.table.on_peers = counts.append
    net.send(9, 1, pick(A))
    net.send(8, 1, pick(A))
    net.table.expire(now=10.0, timeout=3.0)
    assert counts == [1, 2, 1, 0]


async def test_replicas_share_the_pods_observation_budget() -> None:
    """N replicas each poll every pod: each takes 1/N of the pods' budget, new pods too."""
    from picker.datalayer.scrape import Scraper

    net = Net()
    scraper = Scraper(net.ds, Metrics(), interval=0.05, budget=0.03)
    await scraper.start()
    try:
        scraper.share_budget(3)
        assert {t.budget.share for t in scraper._targets.values()} == {0.01}
        net.ds.update_endpoints("p", add=["10.0.0.3:8000"])
        await scraper.sync()
        assert scraper._targets["10.0.0.3:8000"].budget.share == 0.01
        scraper.share_budget(1)
        assert {t.budget.share for t in scraper._targets.values()} == {0.03}
    finally:
        await scraper.stop()
