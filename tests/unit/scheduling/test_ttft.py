"""The predicted-latency plugin: backlog in seconds, affinity and load in one unit,
coefficients learned per pod from its counters, latency targets."""

from __future__ import annotations

import dataclasses

import pytest

from picker.datalayer.datastore import Endpoint, EndpointMetrics
from picker.observability import Metrics
from picker.request.types import InferenceRequest, PrefixMatch
from picker.scheduling.framework import Handle, Params
from picker.scheduling.profile import build_profile
from picker.scheduling.scorers.latency_model import RLS, PodModel, Priors
from picker.scheduling.scorers.ttft import TTFT_HEADER, PredictedLatency


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def plugin(clock: Clock, **extra: object) -> PredictedLatency:
    raw: dict[str, object] = {
        "tokens_per_second": 10000,
        "overhead_s": 0.01,
        "request_s": 0.0,
        "tolerance": 0.0,
    }
    raw.update(extra)
    return PredictedLatency("ttft", Params(raw), Handle(metrics=Metrics()), clock)


def req(tokens: int, held: dict[str, int] | None = None) -> InferenceRequest:
    r = InferenceRequest(model="m", prompt_tokens=tokens)
    if held:
        r.prefix = PrefixMatch([0] * 10, held, lambda k: k * 100.0)  # 100 tokens per block
    return r


def test_backlog_drains_in_seconds() -> None:
    clock = Clock()
    s = plugin(clock)
    a = Endpoint("10.0.0.1:8000")
    s.on_pick(req(5000), a)
    assert s.backlog(a.address, clock.t) == pytest.approx(0.5)  # 5,000 tokens at 10k/s
    clock.t += 0.2
    assert s.backlog(a.address, clock.t) == pytest.approx(0.3)
    assert s.predict(req(1000), a, clock.t) == pytest.approx(0.01 + 0.3 + 0.1)
    clock.t += 1.0
    assert s.backlog(a.address, clock.t) == 0.0


def test_a_prefix_hit_is_worth_its_tokens_and_a_busy_holder_its_backlog() -> None:
    clock = Clock()
    s = plugin(clock)
    holder, other = Endpoint("10.0.0.1:8000"), Endpoint("10.0.0.2:8000")
    r = req(1000, {holder.address: 8})  # 800 of 1,000 tokens cached on the holder
    assert s.score(r, [holder, other]) == [1.0, pytest.approx(30 / 110)]
    s.on_pick(req(1500), holder)  # the holder now has 0.15 s of prefill queued
    preds = [s.predict(r, e, clock.t) for e in (holder, other)]
    assert preds == [pytest.approx(0.01 + 0.17), pytest.approx(0.01 + 0.1)]
    r2 = req(1000, {holder.address: 8})
    assert s.score(r2, [holder, other])[1] == 1.0  # recomputing elsewhere is faster now


def test_a_pod_that_reports_a_queue_is_not_assumed_idle() -> None:
    clock = Clock()
    s = plugin(clock)
    slow, fast = Endpoint("10.0.0.1:8000"), Endpoint("10.0.0.2:8000")
    for _ in range(60):
        s.on_pick(req(1000), slow)  # the slow pod's mean request: 0.1 s of prefill
    clock.t += 10  # picker's own backlog has drained everywhere
    slow.metrics = EndpointMetrics(waiting=3, scraped_at=clock.t)
    scores = s.score(req(1000), [slow, fast])  # but the slow pod says 3 are waiting
    assert scores[1] == 1.0 and scores[0] < 0.5


def scrape(m: EndpointMetrics, t: float, **deltas: float) -> EndpointMetrics:
    """``m`` advanced by ``deltas`` (counter increments), scraped at ``t``."""
    fields = {k: getattr(m, k) + v for k, v in deltas.items()}
    return dataclasses.replace(m, scraped_at=t, **fields)


def feed(model: PodModel, per_token: float, per_request: float, n: int = 40) -> None:
    """Scrapes of a pod whose prefill costs ``per_request + per_token * tokens``, with
    requests of varying length (so the two terms can be told apart)."""
    m = EndpointMetrics(scraped_at=1.0)
    model.learn(m)
    for i in range(n):
        reqs, tokens = 5.0, 5.0 * (200 + 300 * (i % 7))
        seconds = reqs * per_request + tokens * per_token
        m = scrape(m, 2.0 + i, prefill_count=reqs, prefill_tokens=tokens, prefill_seconds=seconds)
        model.learn(m)


def test_a_pod_learns_its_own_speed_and_overhead() -> None:
    half_speed = PodModel(Priors(tokens_per_second=33000, request_s=0.003))
    feed(half_speed, per_token=1 / 5000, per_request=0.012)
    assert 1 / half_speed.seconds_per_token == pytest.approx(5000, rel=0.05)
    for tokens in (200, 1000, 2000):
        expected = 0.012 + tokens / 5000
        assert half_speed.prefill_seconds(tokens, 0) == pytest.approx(expected, rel=0.1)


def test_a_restarted_pod_is_not_learned_from_backwards_counters() -> None:
    model = PodModel(Priors())
    feed(model, per_token=1 / 10000, per_request=0.005)
    before = list(model.prefill.theta)
    assert not model.learn(EndpointMetrics(scraped_at=1000.0, prefill_count=1))
    assert model.prefill.theta == before


def test_rls_stays_within_bounds_on_garbage() -> None:
    f = RLS(prior=[1.0], scale=[1.0], lo=[0.0], hi=[2.0], lam=0.9)
    for y in (1e9, -1e9, float("nan"), 5.0):
        f.update([1.0], y, 0.1)
    assert 0.0 <= f.theta[0] <= 2.0


def test_tpot_and_fixed_overhead_are_learned() -> None:
    model = PodModel(Priors())
    m = EndpointMetrics(scraped_at=1.0, running=4)
    model.learn(m)
    for i in range(30):
        m = scrape(
            m,
            2.0 + i,
            prefill_count=4,
            prefill_tokens=4000,
            prefill_seconds=0.4,
            queue_seconds=0.08,
            ttft_count=4,
            ttft_seconds=0.4 + 0.08 + 4 * 0.025,  # 25 ms outside queue and prefill
            itl_count=100,
            itl_seconds=100 * 0.02,
        )
        model.learn(m)
    assert model.overhead == pytest.approx(0.025, rel=0.05)
    assert model.tpot_seconds(4) == pytest.approx(0.02, rel=0.1)


def test_a_pod_without_counters_takes_the_pools_learned_model() -> None:
    clock = Clock()
    s = plugin(clock)
    vllm, other = Endpoint("10.0.0.1:8000"), Endpoint("10.0.0.2:8000")
    feed(s.pod(vllm.address).model, per_token=1 / 2000, per_request=0.0)
    s._pool = s._median()
    assert s.model_of(other.address) is s.pod(vllm.address).model
    assert s.predict(req(1000), other, clock.t) == pytest.approx(0.01 + 0.5, rel=0.05)


def test_prediction_error_is_exported_per_pod() -> None:
    clock = Clock()
    metrics = Metrics()
    s = PredictedLatency("ttft", Params({"overhead_s": 0.01}), Handle(metrics=metrics), clock)
    pod = Endpoint("10.0.0.1:8000")
    pod.metrics = EndpointMetrics(scraped_at=1.0)
    r = req(100)
    s.produce(r, [pod])
    s.on_pick(r, pod)
    predicted = r.latency.ttft[pod.address] if r.latency else 0.0
    pod.metrics = scrape(pod.metrics, 2.0, ttft_count=1, ttft_seconds=2 * predicted)
    s.produce(req(100), [pod])
    reg = metrics.registry
    labels = {"endpoint": pod.address}
    assert reg.get_sample_value("picker_pod_observed_ttft_seconds", labels) == pytest.approx(
        2 * predicted
    )
    count = reg.get_sample_value("picker_pod_predicted_ttft_error_ratio_count", labels)
    below = reg.get_sample_value(
        "picker_pod_predicted_ttft_error_ratio_bucket", {**labels, "le": "0.5"}
    )
    assert count == 1 and below == 1  # predicted/observed = 0.5
    s.on_endpoint_removed(pod)
    assert reg.get_sample_value("picker_pod_observed_ttft_seconds", labels) is None


def test_pods_closer_than_the_tolerance_tie() -> None:
    clock = Clock()
    s = plugin(clock, tolerance=0.1, resolution_s=0.002)
    a, b = Endpoint("10.0.0.1:8000"), Endpoint("10.0.0.2:8000")
    s.on_pick(req(100), a)  # 10 ms queued on a: 10 + 10 + 10 ms vs 20 ms, within 10 % + 2 ms
    assert s.score(req(100), [a, b]) == [pytest.approx(2 / 3), 1.0]
    s2 = plugin(clock, tolerance=0.1, resolution_s=0.002)
    s2.on_pick(req(5), a)  # 0.5 ms queued: a tie
    assert s2.score(req(100), [a, b]) == [1.0, 1.0]
    s2.on_pick(req(50), a)  # 5.5 ms queued on 20 ms: past 10 % + 2 ms
    assert s2.score(req(100), [a, b])[0] < 1.0


def test_tokens_are_counted_as_the_pods_count_them() -> None:
    # picker estimates 100 tokens per prompt (text / chars_per_token); the pod's
    # tokenizer makes 400 of them: predictions must use 400.
    clock = Clock()
    s = plugin(clock)
    pod = Endpoint("10.0.0.1:8000")
    m = EndpointMetrics(scraped_at=1.0)
    for i in range(30):
        pod.metrics = m
        for _ in range(5):
            r = req(100)
            s.produce(r, [pod])
            s.on_pick(r, pod)
            s.on_done(r, pod, True)
        m = scrape(m, 2.0 + i, prompt_count=5, prompt_tokens=5 * 400)
    pod.metrics = m
    s.produce(req(100), [pod])
    assert s.token_scale == pytest.approx(4.0, rel=0.02)
    assert s.predict(req(100), pod, clock.t) == pytest.approx(0.01 + 400 / 10000, rel=0.02)
    exact = InferenceRequest(model="m", prompt_tokens=100, token_ids=list(range(100)))
    assert s.predict(exact, pod, clock.t) == pytest.approx(0.01 + 100 / 10000, rel=0.02)


def test_latency_targets_avoid_pods_predicted_to_miss_them() -> None:
    clock = Clock()
    s = plugin(clock)
    busy, idle = Endpoint("10.0.0.1:8000"), Endpoint("10.0.0.2:8000")
    s.on_pick(req(3000), busy)  # 0.3 s queued
    r = req(1000, {busy.address: 10})  # all cached on the busy pod: 0.31 s vs 0.11 s
    r.slo_ttft = 0.2
    s.produce(r, [busy, idle])
    assert r.latency is not None and not r.latency.unmeetable
    assert s.score(r, [busy, idle])[0] < 0.05
    tight = req(1000)
    tight.slo_ttft = 0.05  # nobody makes 50 ms
    s.produce(tight, [busy, idle])
    assert tight.latency is not None and tight.latency.unmeetable


def test_the_prediction_header_is_opt_in() -> None:
    clock = Clock()
    pod = Endpoint("10.0.0.1:8000")
    for expose, expected in ((False, ()), (True, ("110.0",))):
        s = plugin(clock, expose=expose)
        r = req(1000)
        s.produce(r, [pod])
        s.on_pick(r, pod)
        headers = dict(s.response_headers(r, None))
        assert tuple(v for k, v in headers.items() if k == TTFT_HEADER) == expected


def test_the_default_profile_predicts_latency() -> None:
    prof = build_profile()
    assert [sc.type for sc, _ in prof.scorers] == ["predicted_latency", "lora_affinity"]
    assert [p.type for p in prof.producers] == ["prefix", "predicted_latency"]
    old = build_profile({"scorers": {"predicted_ttft": 1, "prefix": 0}})
    assert [p.type for p in old.producers] == ["prefix", "predicted_latency"]
    with pytest.raises(ValueError, match="tokens_per_second > 0"):
        build_profile(
            {
                "plugins": [{"type": "predicted_ttft", "parameters": {"tokens_per_second": 0}}],
                "scorers": {"predicted_ttft": 1},
            }
        )


def test_an_exact_match_counts_the_prompt_in_the_pods_tokens() -> None:
    """With ``precise_prefix``'s match, the prompt's length is known in the pods' own
    tokens: the uncached part is that length minus the held blocks, never picker's text
    estimate minus an exact count (units that do not mix)."""
    clock = Clock()
    s = plugin(clock)
    holder, other = Endpoint("10.0.0.1:8000"), Endpoint("10.0.0.2:8000")
    r = InferenceRequest(model="m", prompt_tokens=4000)  # the text estimate: 4x too high
    r.kv_prefix = PrefixMatch([0] * 10, {holder.address: 9}, lambda k: k * 100.0, 1000)
    assert s.tokens(r, holder.address) == pytest.approx(100.0)
    assert s.tokens(r, other.address) == pytest.approx(1000.0)
    assert s.predict(r, holder, clock.t) == pytest.approx(0.01 + 0.01)
    # Truncated (a chat tokenized only as far as the index holds): the larger of the
    # two lengths.
    r.kv_prefix = PrefixMatch([0] * 10, {}, lambda k: k * 100.0, 1000, truncated=True)
    assert s.tokens(r, other.address) == pytest.approx(4000.0)


def test_produce_predicts_as_predict_does() -> None:
    """``produce`` inlines ``predict`` for speed: both give the same numbers, for pods
    holding part of the prompt or none, queued, scraped with a queue, with a full KV
    cache, learned or not."""
    clock = Clock()
    s = plugin(clock)
    pods = [Endpoint(f"10.0.0.{i}:8000") for i in range(6)]
    pods[1].metrics = EndpointMetrics(waiting=2, running=5, scraped_at=clock.t - 0.01)
    pods[2].inflight = 7
    pods[3].metrics = EndpointMetrics(kv_usage=0.99, num_blocks=100, block_size=16)
    for i, p in enumerate(pods):
        s.on_pick(req(400 * (i + 1)), p)
        s.on_done(req(10), p, True)
    for i in range(4):
        s.on_pick(req(300), pods[i % 3])
    s.pod(pods[3].address).duration = 0.4
    clock.t += 0.01
    r = req(1000, {pods[0].address: 4, pods[3].address: 9})
    s.produce(r, pods)
    assert r.latency is not None
    for p in pods:
        assert r.latency.ttft[p.address] == pytest.approx(s.predict(r, p, clock.t))
    assert r.latency.ttft[pods[3].address] > r.latency.ttft[pods[4].address]  # KV full


def test_a_new_prefix_goes_where_it_evicts_nothing() -> None:
    """A cold prompt placed on a pod whose cache (in the index's view) is full evicts
    other prompts' blocks, which cost their prefill again later: that cost counts, so a
    slightly faster but full pod loses to one with room; with both full it cancels."""
    clock = Clock()
    s = plugin(clock, evict_weight=1.0)
    full, roomy = Endpoint("10.0.0.1:8000"), Endpoint("10.0.0.2:8000")
    s.pod(roomy.address).sent = s.pod(roomy.address).done = 0.0

    def cold(free: dict[str, int]) -> InferenceRequest:
        r = req(1000)
        r.prefix = PrefixMatch([0] * 10, {}, lambda k: k * 100.0, free_blocks=free)
        r.prefix.block_tokens = 100.0
        return r

    s.on_pick(req(30), full)
    s.on_done(req(30), full, True)
    s.on_pick(req(200), roomy)  # roomy has 20 ms of backlog: full predicts faster
    r = cold({full.address: 0, roomy.address: 50})
    scores = s.score(r, [full, roomy])
    assert r.latency is not None and r.latency.ttft[full.address] < r.latency.ttft[roomy.address]
    assert r.latency.evict == {full.address: pytest.approx(0.1)}  # 1,000 tokens at 10k/s
    assert scores[1] == 1.0 and scores[0] < 1.0
    r = cold({full.address: 0, roomy.address: 0})  # both full: the faster one again
    assert s.score(r, [full, roomy])[0] == 1.0
    r = cold({full.address: 0, roomy.address: 50})
    r.kv_prefix = PrefixMatch([0] * 10, {}, lambda k: k * 100.0, 1000)  # exact: no room
    assert s.score(r, [full, roomy])[0] == 1.0


def _noisy_pool(seed: int, speeds: list[float]) -> tuple[list[float], list[float]]:
    """Pods of these relative speeds (per-token time 1/10,000 s x speed) learned over 80
    scrapes with lognormal per-interval noise; their own fits' seconds per token and
    the predictions for a 1,000-token prompt (overhead excluded)."""
    import random

    clock = Clock()
    s = plugin(clock, pooled=True)
    pods = [Endpoint(f"10.0.0.{i}:8000") for i in range(len(speeds))]
    rng = random.Random(seed)
    for p in pods:
        p.metrics = EndpointMetrics(scraped_at=1.0)
        s.learn(p)
    for i in range(80):
        clock.t += 1.0
        for p, speed in zip(pods, speeds, strict=True):
            tokens = 2.0 * (200 + 300 * (i % 5))
            seconds = tokens * speed / 10000 * rng.lognormvariate(0.0, 0.5)
            p.metrics = scrape(
                p.metrics,
                2.0 + i,
                prefill_count=2.0,
                prefill_tokens=tokens,
                prefill_seconds=seconds,
            )
            s.learn(p)
    own = [s.pod(p.address).model.seconds_per_token for p in pods]
    return own, [s.predict(req(1000), p, clock.t) - 0.01 for p in pods]


def test_identical_pods_are_pooled_a_slow_one_stands_out() -> None:
    """Per-interval noise (CPU contention, what a request was batched with) makes two
    identical pods' own fits differ; predictions pool them towards the pool's mean, so
    they differ less and tie more often; a pod at half speed, slower in every interval,
    stands out of its noise and is predicted slower."""
    import math

    own_gap, pooled_gap = [], []
    for seed in range(12):
        own, pred = _noisy_pool(seed, [1.0, 1.0])
        own_gap.append(abs(math.log(own[0] / own[1])))
        pooled_gap.append(abs(math.log(pred[0] / pred[1])))
        own, pred = _noisy_pool(seed, [1.0, 1.0, 2.0])
        assert pred[2] / max(pred[:2]) > 1.4, (seed, own, pred)
    assert sum(pooled_gap) < 0.5 * sum(own_gap), (own_gap, pooled_gap)
