"""Scheduler plugins and profiles: pure functions of request and endpoint state."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from picker.datalayer.datastore import Endpoint, EndpointMetrics
from picker.request.types import InferenceRequest
from picker.scheduling.framework import Handle
from picker.scheduling.profile import build_profile


def seeded(seed: int) -> Handle:
    return Handle(rng=random.Random(seed))


def eps(n: int) -> list[Endpoint]:
    return [Endpoint(address=f"10.0.0.{i}:8000") for i in range(n)]


def req(**kw: object) -> InferenceRequest:
    return InferenceRequest(model="m", **kw)  # type: ignore[arg-type]


def test_least_inflight_prefers_idle_pod() -> None:
    prof = build_profile({"scorers": {"least_inflight": 1}}, handle=seeded(1))
    pods = eps(3)
    pods[0].inflight, pods[1].inflight, pods[2].inflight = 5, 0, 3
    assert prof.schedule(req(), pods)[0] is pods[1]


def test_round_robin_cycles() -> None:
    prof = build_profile({"picker": "round_robin", "scorers": {}})
    pods = eps(3)
    picks = [prof.schedule(req(), pods)[0].address for _ in range(6)]
    assert picks == [p.address for p in pods] * 2


def test_random_spreads() -> None:
    prof = build_profile({"picker": "random", "scorers": {}}, handle=seeded(7))
    pods = eps(4)
    counts = Counter(prof.schedule(req(), pods)[0].address for _ in range(4000))
    assert len(counts) == 4 and min(counts.values()) > 800


def test_ties_go_round_robin_by_default() -> None:
    prof = build_profile({"scorers": {"least_inflight": 1}}, handle=seeded(3))
    pods = eps(3)
    picks = [prof.schedule(req(), pods)[0].address for _ in range(9)]
    assert picks[:3] == picks[3:6] == picks[6:] and len(set(picks[:3])) == 3


def test_near_ties_are_not_ties() -> None:
    prof = build_profile({"scorers": {"kv_cache": 1}})
    pods = eps(2)
    pods[0].metrics = EndpointMetrics(kv_usage=0.05)
    pods[1].metrics = EndpointMetrics(kv_usage=0.0)
    assert {prof.schedule(req(), pods)[0].address for _ in range(4)} == {pods[1].address}


def test_queue_scorer_counts_requests_sent_since_scrape() -> None:
    prof = build_profile({"scorers": {"queue": 1}}, handle=seeded(0))
    pods = eps(4)
    chosen: Counter[str] = Counter()
    # A burst between two scrapes: every scraped queue is 0, so only picker's own
    # "sent since scrape" count can spread the burst.
    for _ in range(100):
        ep = prof.schedule(req(), pods)[0]
        ep.sent_since_scrape += 1
        ep.inflight += 1
        chosen[ep.address] += 1
    assert sorted(chosen.values()) == [25, 25, 25, 25]


def test_kv_and_queue_weights_combine() -> None:
    prof = build_profile({"scorers": {"queue": 2, "kv_cache": 1}}, handle=seeded(0))
    pods = eps(3)
    pods[0].metrics = EndpointMetrics(waiting=0, kv_usage=0.95)
    pods[1].metrics = EndpointMetrics(waiting=1, kv_usage=0.1)
    pods[2].metrics = EndpointMetrics(waiting=10, kv_usage=0.0)
    # queue: 1.0, 0.9, 0.0 (x2); kv: 0.05, 0.9, 1.0 → totals 2.05, 2.7, 1.0
    assert prof.schedule(req(), pods)[0] is pods[1]


def test_lora_filter_never_picks_full_pod_without_adapter() -> None:
    prof = build_profile(
        {"filters": ["lora"], "scorers": {"queue": 1, "lora_affinity": 3}}, handle=seeded(0)
    )
    pods = eps(3)
    pods[0].metrics = EndpointMetrics(running_adapters=frozenset({"a", "b"}), max_lora=2)
    pods[1].metrics = EndpointMetrics(running_adapters=frozenset({"c"}), max_lora=2, waiting=5)
    pods[2].metrics = EndpointMetrics(running_adapters=frozenset({"x"}), max_lora=2, waiting=9)
    for _ in range(20):
        # "x" loaded on pod 2 wins despite its queue: affinity 1.0 vs 0.5 for a free slot.
        assert prof.schedule(req(adapter="x"), pods)[0] is pods[2]
        # "z": pod 0 is full without it → only pods 1 and 2 qualify; pod 1 is less loaded.
        assert prof.schedule(req(adapter="z"), pods)[0] is pods[1]


def test_subset_filter_is_always_on() -> None:
    prof = build_profile({"scorers": {"least_inflight": 1}})
    pods = eps(4)
    r = req()
    r.subset = frozenset({pods[2].address})
    assert prof.schedule(r, pods) == [pods[2]]
    r.subset = frozenset({"192.168.1.1:1"})
    assert prof.schedule(r, pods) == []


def test_fallbacks_follow_primary() -> None:
    prof = build_profile({"scorers": {"least_inflight": 1}, "fallbacks": 2})
    pods = eps(4)
    for i, p in enumerate(pods):
        p.inflight = 10 - i
    ranked = prof.schedule(req(), pods)
    assert ranked == [pods[3], pods[2], pods[1]]


def test_p2c_never_picks_the_worse_of_two() -> None:
    prof = build_profile({"picker": "p2c", "scorers": {"least_inflight": 1}})
    pods = eps(2)
    pods[0].inflight = 100
    for _ in range(50):
        assert prof.schedule(req(), pods)[0] is pods[1]


def test_unknown_plugin_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown scorer 'nope'"):
        build_profile({"scorers": {"nope": 1}})
    with pytest.raises(ValueError, match="unknown picker 'nope'"):
        build_profile({"picker": "nope"})
    with pytest.raises(ValueError, match="unknown plugin type 'nope'"):
        build_profile({"plugins": [{"type": "nope"}]})


def test_unknown_parameter_names_plugin_and_key() -> None:
    spec = {"plugins": [{"type": "queue", "name": "q", "parameters": {"scael": 2}}]}
    with pytest.raises(ValueError, match="plugin 'q': unknown parameter 'scael'"):
        build_profile(spec)
    with pytest.raises(ValueError, match="plugin 'kv_cache': unknown parameter 'x'; it takes none"):
        build_profile({"plugins": [{"type": "kv_cache", "parameters": {"x": 1}}]})
    with pytest.raises(ValueError, match="parameter 'scale' must be a number"):
        build_profile({"plugins": [{"type": "queue", "parameters": {"scale": "big"}}]})


def test_role_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"plugin 'queue' .* is no picker"):
        build_profile({"picker": "queue"})
    with pytest.raises(ValueError, match="is no filter"):
        build_profile({"filters": ["max_score"]})


def test_two_instances_of_one_type() -> None:
    spec = {
        "plugins": [
            {"type": "queue", "name": "steep", "parameters": {"scale": 1}},
            {"type": "queue", "name": "flat", "parameters": {"scale": 100}},
        ],
        "scorers": {"steep": 1, "flat": 1},
    }
    prof = build_profile(spec)
    (a, wa), (b, wb) = prof.scorers
    assert wa == wb == 1.0
    assert (a.name, b.name) == ("steep", "flat") and a is not b
    pods = eps(2)
    pods[0].metrics = EndpointMetrics(waiting=1)
    # steep: 0.0 vs 1.0; flat: 0.99 vs 1.0
    assert a.score(req(), pods) == [0.0, 1.0]
    assert b.score(req(), pods) == [0.99, 1.0]


def test_declared_names_are_unique() -> None:
    with pytest.raises(ValueError, match="declared twice"):
        build_profile({"plugins": [{"type": "queue"}, {"type": "queue"}]})


def test_hooks_run_only_where_implemented() -> None:
    prof = build_profile({"scorers": {"prefix": 1, "queue": 1, "lora_affinity": 1}})
    assert [p.name for p in prof._pick_observers] == ["prefix", "lora_affinity"]
    assert prof._done_observers == []
    assert [p.name for p in prof.producers] == ["prefix"]
