"""The predicted-TTFT scorer: prefill backlog in seconds, affinity and load in one unit."""

from __future__ import annotations

import pytest

from picker.datalayer.datastore import Endpoint, EndpointMetrics
from picker.request.types import InferenceRequest, PrefixMatch
from picker.scheduling.framework import Params
from picker.scheduling.profile import build_profile
from picker.scheduling.scorers.ttft import PredictedTTFTScorer


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def scorer(clock: Clock) -> PredictedTTFTScorer:
    params = Params({"tokens_per_second": 10000, "overhead_s": 0.01})
    return PredictedTTFTScorer("ttft", params, None, clock)


def req(tokens: int, held: dict[str, int] | None = None) -> InferenceRequest:
    r = InferenceRequest(model="m", prompt_tokens=tokens)
    if held:
        r.prefix = PrefixMatch([0] * 10, held, lambda k: k * 100.0)  # 100 tokens per block
    return r


def test_backlog_drains_at_the_rate() -> None:
    clock = Clock()
    s = scorer(clock)
    a = Endpoint("10.0.0.1:8000")
    s.on_pick(req(5000), a)
    assert s.backlog(a.address, clock.t) == 5000
    clock.t += 0.2  # 2,000 tokens prefilled at 10k/s
    assert s.backlog(a.address, clock.t) == pytest.approx(3000)
    assert s.predict(req(1000), a, clock.t) == pytest.approx(0.01 + 4000 / 10000)
    clock.t += 1.0
    assert s.backlog(a.address, clock.t) == 0.0


def test_a_prefix_hit_is_worth_its_tokens_and_a_busy_holder_its_backlog() -> None:
    clock = Clock()
    s = scorer(clock)
    holder, other = Endpoint("10.0.0.1:8000"), Endpoint("10.0.0.2:8000")
    r = req(1000, {holder.address: 8})  # 800 of 1,000 tokens cached on the holder
    assert s.score(r, [holder, other]) == [1.0, pytest.approx((0.01 + 0.02) / (0.01 + 0.1))]
    s.on_pick(req(1500), holder)  # the holder now has 1,500 tokens queued
    preds = [s.predict(r, e, clock.t) for e in (holder, other)]
    assert preds == [pytest.approx(0.01 + 0.17), pytest.approx(0.01 + 0.1)]
    assert s.score(r, [holder, other])[1] == 1.0  # recomputing elsewhere is faster now


def test_a_pod_that_reports_a_queue_is_not_assumed_idle() -> None:
    clock = Clock()
    s = scorer(clock)
    slow, fast = Endpoint("10.0.0.1:8000"), Endpoint("10.0.0.2:8000")
    for _ in range(40):
        s.on_pick(req(1000), fast)  # the mean request: 1,000 uncached tokens (learned)
    clock.t += 10  # picker's fluid backlog has drained everywhere
    slow.metrics = EndpointMetrics(waiting=3)  # but the slow pod says 3 are still waiting
    scores = s.score(req(1000), [slow, fast])
    assert scores[1] == 1.0 and scores[0] < 0.5


def test_declared_through_the_registry() -> None:
    prof = build_profile({"scorers": {"predicted_ttft": 1, "prefix": 0}})
    assert [sc.type for sc, _ in prof.scorers] == ["predicted_ttft"]
    assert {p.type for p in prof.producers} == {"prefix"}  # weight 0: data, no score
    with pytest.raises(ValueError, match="tokens_per_second > 0"):
        build_profile(
            {
                "plugins": [{"type": "predicted_ttft", "parameters": {"tokens_per_second": 0}}],
                "scorers": {"predicted_ttft": 1},
            }
        )


def test_each_pods_rate_is_learned_from_its_counters() -> None:
    clock = Clock()
    s = scorer(clock)  # prior: 10,000 tokens/s
    fast, slow = Endpoint("10.0.0.1:8000"), Endpoint("10.0.0.2:8000")

    def scrape(e: Endpoint, at: float, seconds: float, tokens: float) -> None:
        e.metrics = EndpointMetrics(scraped_at=at, prefill_seconds=seconds, prefill_tokens=tokens)

    scrape(fast, 1.0, 0.0, 0.0)
    scrape(slow, 1.0, 0.0, 0.0)
    s.score(req(1000), [fast, slow])  # first snapshots: nothing to learn yet
    assert s.rate_of(slow.address) == 10000
    scrape(fast, 2.0, 0.5, 10000.0)  # 20,000 tokens/s
    scrape(slow, 2.0, 1.0, 5000.0)  # 5,000 tokens/s
    scores = s.score(req(1000), [fast, slow])
    assert s.rate_of(fast.address) == pytest.approx(20000)
    assert s.rate_of(slow.address) == pytest.approx(5000)
    assert scores[0] == 1.0 and scores[1] < scores[0]
    scrape(slow, 3.0, 1.0, 5000.0)  # idle between scrapes: nothing new, rate kept
    s.score(req(1000), [slow])
    assert s.rate_of(slow.address) == pytest.approx(5000)
    scrape(slow, 4.0, 1.5, 7500.0)  # another 5,000 tokens/s sample: the average holds
    s.score(req(1000), [slow])
    assert s.rate_of(slow.address) == pytest.approx(5000)
