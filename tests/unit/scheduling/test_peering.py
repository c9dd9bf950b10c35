"""The scheduler's side of the peer exchange: own picks out, peers' picks into the index."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from picker.datalayer.datastore import Endpoint
from picker.request.types import InferenceRequest
from picker.scheduling.framework import Handle
from picker.scheduling.peering import PeerRecorder, prefix_layout
from picker.scheduling.profile import build_profile
from picker.scheduling.scorers.prefix import PrefixScorer

PODS = [Endpoint("10.0.0.1:8000"), Endpoint("10.0.0.2:8000")]


class Exchange:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, list[int], int]] = []

    def picked(self, endpoint: Endpoint, hashes: Sequence[int], tokens: int) -> None:
        self.sent.append(("pick", endpoint.address, list(hashes), tokens))

    def done(self, endpoint: Endpoint, tokens: int) -> None:
        self.sent.append(("done", endpoint.address, [], tokens))


def request(prompt: str) -> InferenceRequest:
    return InferenceRequest(model="m", prompt=prompt, prompt_tokens=len(prompt) // 4 + 1)


def test_own_picks_and_ends_go_to_the_exchange_with_the_prefix_hashes() -> None:
    profile = build_profile({"scorers": {"prefix": 1, "queue": 1}})
    ex = Exchange()
    profile.add_plugin(PeerRecorder(ex))
    req = request("a long shared system prompt " * 30)
    ranked = profile.schedule(req, list(PODS))
    profile.on_pick(req, ranked[0])
    profile.on_done(req, ranked[0], True)
    assert req.prefix is not None and req.prefix.hashes
    tokens = req.uncached_tokens(ranked[0].address)
    assert ex.sent == [
        ("pick", ranked[0].address, req.prefix.hashes, tokens),
        ("done", ranked[0].address, [], tokens),
    ]


def test_a_peer_pick_makes_the_prefix_plugin_prefer_that_pod() -> None:
    profile = build_profile({"scorers": {"prefix": 1}})
    req = request("the conversation so far " * 30)
    profile.schedule(req, list(PODS))
    assert req.prefix is not None and not req.prefix.matched
    profile.on_peer_pick(PODS[1], req.prefix.hashes, 100)
    again = request("the conversation so far " * 30 + "and a new question")
    assert profile.schedule(again, list(PODS))[0] is PODS[1]
    assert again.prefix is not None and again.prefix.matched == {PODS[1].address: 5}


def test_the_layout_fingerprint_follows_the_block_sizes_only() -> None:
    def layout(spec: dict[str, object]) -> int:
        return prefix_layout(build_profile(spec, handle=Handle()))

    base = layout({"scorers": {"prefix": 1}})
    assert base == layout({"scorers": {"prefix": 3, "queue": 1}})
    assert base != layout(
        {
            "plugins": [{"type": "prefix", "parameters": {"block_chars": 64}}],
            "scorers": {"prefix": 1},
        }
    )
    assert layout({"scorers": {"queue": 1}}) == 0
    assert PrefixScorer().layout == "prefix:128:32:16384"


def test_a_peer_pick_joins_the_predicted_ttft_backlog() -> None:
    from picker.scheduling.scorers.ttft import PredictedLatency

    now = [100.0]
    ttft = PredictedLatency(clock=lambda: now[0])
    assert ttft.backlog(PODS[0].address, now[0]) == 0.0
    ttft.on_peer_pick(PODS[0], [1, 2], 33000)
    first = ttft.backlog(PODS[0].address, now[0])
    assert first > 0.5 and ttft.backlog(PODS[1].address, now[0]) == 0.0
    now[0] += 0.25  # drained as time passes
    assert ttft.backlog(PODS[0].address, now[0]) == pytest.approx(first - 0.25)
    ttft.on_peer_pick(PODS[1], [1, 2], 0)  # a replayed pick: no load
    assert ttft.backlog(PODS[1].address, now[0]) == 0.0


def test_a_peers_response_end_proves_its_oldest_request_prefilled() -> None:
    from picker.scheduling.scorers.ttft import PredictedLatency

    now = [100.0]
    ttft = PredictedLatency(clock=lambda: now[0])
    ttft.on_peer_pick(PODS[0], [1], 33000)
    one = ttft.backlog(PODS[0].address, now[0])
    ttft.on_peer_pick(PODS[0], [2], 33000)
    assert ttft.backlog(PODS[0].address, now[0]) == pytest.approx(2 * one)
    ttft.on_peer_done(PODS[0], 33000)  # the first one ended: it and all before it are done
    assert ttft.backlog(PODS[0].address, now[0]) == pytest.approx(one)
    ttft.on_peer_done(PODS[0], 33000)
    ttft.on_peer_done(PODS[0], 33000)  # more ends than picks: nothing below zero
    assert ttft.backlog(PODS[0].address, now[0]) == 0.0
    ttft.on_peer_done(PODS[1], 5)  # a pod it never heard of
    assert ttft.backlog(PODS[1].address, now[0]) == 0.0


def test_peer_hooks_reach_the_plugins_that_implement_them() -> None:
    profile = build_profile({"scorers": {"prefix": 1, "predicted_latency": 1}})
    names = {type(p).__name__ for p in profile._peer_done_observers}
    assert names == {"PredictedLatency"}
    assert {type(p).__name__ for p in profile._peer_observers} == {
        "PrefixScorer",
        "PredictedLatency",
        "MaxScorePicker",
    }


def test_replicas_break_first_ties_differently_then_round_robin() -> None:
    """Two replicas whose first requests arrive at once, all pods idle and tied: each
    starts from its own random order (not all on the first pod); then round-robin."""
    import random

    from picker.scheduling.pickers import MaxScorePicker

    pods = [Endpoint(f"10.0.0.{i}:8000") for i in range(4)]
    req = InferenceRequest(model="m")
    firsts = set()
    for seed in range(20):
        p = MaxScorePicker(handle=Handle(rng=random.Random(seed)))
        picks = [p.pick(req, pods, [1.0] * 4)[0] for _ in range(8)]
        assert picks[:4] == picks[4:] and set(picks[:4]) == set(pods)  # round-robin
        firsts.add(picks[0].address)
    assert len(firsts) > 1


def test_peers_picks_count_for_ties() -> None:
    """Three replicas taking turns on tied pods: with each other's picks applied, the
    pods are used in turn across all of them (no pod picked twice before the others)."""
    import random

    from picker.scheduling.pickers import MaxScorePicker

    pods = [Endpoint(f"10.0.0.{i}:8000") for i in range(3)]
    req = InferenceRequest(model="m")
    reps = [MaxScorePicker(handle=Handle(rng=random.Random(s))) for s in range(3)]
    picks = []
    for turn in range(9):
        me = reps[turn % 3]
        chosen = me.pick(req, pods, [1.0] * 3)[0]
        picks.append(chosen.address)
        for other in reps:
            if other is not me:
                other.on_peer_pick(chosen, [], 100)
        reps[0].on_peer_pick(pods[0], [], 0)  # a replayed pick changes nothing
    for k in range(0, 9, 3):
        assert len(set(picks[k : k + 3])) == 3, picks
