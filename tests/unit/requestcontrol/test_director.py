"""The director: parse → pool → admission → schedule → charge, and release on finish."""

from __future__ import annotations

from typing import Any

import orjson

from picker.config import load_config
from picker.datalayer.datastore import EndpointMetrics
from picker.observability import Metrics
from picker.requestcontrol.director import Director, Rejected, Routed
from picker.scheduling.framework import Handle
from picker.scheduling.profile import build_profile

PODS = ["10.0.0.1:8000", "10.0.0.2:8000"]
SYSTEM = "You are a careful assistant. " * 40  # ~1,160 characters


def director(**extra: Any) -> Director:
    data: dict[str, Any] = {
        "pools": [
            {"name": "p", "models": ["m"], "adapters": ["sql"], "endpoints": PODS},
        ],
        **extra,
    }
    cfg = load_config(data=data)
    ds = cfg.datastore()
    handle = Handle(ds, Metrics(), cfg.chars_per_token)
    return Director(cfg, ds, build_profile(cfg.scheduler, handle=handle), handle.metrics)


def completion(prompt: str, model: str = "m") -> bytes:
    return orjson.dumps({"model": model, "prompt": prompt})


def count(d: Director, name: str, **labels: str) -> float:
    return d.metrics.registry.get_sample_value(name, labels) or 0.0


def test_routes_and_charges_the_primary() -> None:
    d = director()
    r = d.decide("/v1/completions", completion("x" * 400))
    assert isinstance(r, Routed) and r.served is r.endpoints[0]
    assert r.request.prompt_tokens == 101  # 400 chars / 4 + 1
    assert r.tokens == 101  # nothing cached anywhere yet
    ep = r.endpoints[0]
    assert (ep.inflight, ep.sent_since_scrape, ep.inflight_tokens) == (1, 1, 101)
    d.finish(r, 200)
    assert (ep.inflight, ep.inflight_tokens) == (0, 0)
    d.finish(r, 200)  # idempotent
    assert ep.inflight == 0
    assert count(d, "picker_requests_total", model_name="m", outcome="routed", status="200") == 1


def test_uncached_tokens_use_the_prefix_match() -> None:
    d = director()
    first = d.decide("/v1/completions", completion(SYSTEM + "first question"))
    assert isinstance(first, Routed)
    d.finish(first, 200)
    second = d.decide("/v1/completions", completion(SYSTEM + "second question"))
    assert isinstance(second, Routed) and second.served is first.served
    # The shared system prompt (9 full 128-char blocks) is charged as cached: only the
    # rest of the prompt counts as prefill work on that pod.
    match = second.request.prefix
    assert match is not None and match.matched == {first.endpoints[0].address: 9}
    assert second.tokens == second.request.prompt_tokens - 9 * 128 // 4


def test_token_ids_count_exactly() -> None:
    d = director()
    r = d.decide("/v1/completions", orjson.dumps({"model": "m", "prompt": [1, 2, 3, 4, 5]}))
    assert isinstance(r, Routed) and r.request.prompt_tokens == 5


def test_adapter_and_criticality() -> None:
    d = director(criticality={"sql": "critical"})
    r = d.decide("/v1/completions", completion("q", model="sql"))
    assert isinstance(r, Routed) and r.request.adapter == "sql"
    assert r.request.criticality.name == "CRITICAL"
    r = d.decide("/v1/completions", completion("q"), objective="sheddable")
    assert isinstance(r, Routed) and r.request.criticality.name == "SHEDDABLE"


def test_rejections_are_counted_with_bounded_labels() -> None:
    d = director()
    r = d.decide("/v1/completions", completion("q", model="nobody-serves-this"))
    assert isinstance(r, Rejected) and r.status == 404
    # The client's model name is not a label value (it would grow the series unbounded).
    assert count(d, "picker_requests_total", model_name="", outcome="not_found", status="404")
    assert not count(
        d, "picker_requests_total", model_name="nobody-serves-this", outcome="not_found",
        status="404",
    )  # fmt: skip
    r = d.decide("/v1/completions", b"{not json")
    assert isinstance(r, Rejected) and r.status == 400


def test_sheddable_is_shed_when_saturated() -> None:
    d = director(saturation={"queue_threshold": 2})
    for e in d.datastore.endpoints():
        e.metrics = EndpointMetrics(waiting=2)
    r = d.decide("/v1/completions", completion("q"), objective="sheddable")
    assert isinstance(r, Rejected) and r.status == 429 and ("retry-after", "1") in r.headers
    assert isinstance(d.decide("/v1/completions", completion("q")), Routed)  # standard
    assert count(d, "picker_shed_total", model_name="m") == 1


def test_saturation_counts_what_picker_sent_since_the_scrape() -> None:
    d = director(saturation={"queue_threshold": 2})
    for i in range(4):  # two each: both pods' queues are now at the threshold
        assert isinstance(d.decide("/v1/completions", completion(f"q{i}")), Routed)
    assert [e.queue for e in d.datastore.endpoints()] == [2, 2]
    r = d.decide("/v1/completions", completion("q"), objective="sheddable")
    assert isinstance(r, Rejected) and r.status == 429


def test_subset_and_no_endpoint() -> None:
    d = director()
    r = d.decide("/v1/completions", completion("q"), subset=frozenset({PODS[1]}))
    assert isinstance(r, Routed) and r.endpoints[0].address == PODS[1]
    r = d.decide("/v1/completions", completion("q"), subset=frozenset({"10.9.9.9:1"}))
    assert isinstance(r, Rejected) and r.status == 503
    for e in d.datastore.endpoints():
        e.healthy = False
    r = d.decide("/v1/completions", completion("q"))
    assert isinstance(r, Rejected) and r.status == 503


def test_served_by_moves_the_charge() -> None:
    d = director()
    r = d.decide("/v1/completions", completion("x" * 40))
    assert isinstance(r, Routed)
    primary = r.endpoints[0]
    other = next(e for e in d.datastore.endpoints() if e is not primary)
    d.served_by(r, other.address)
    assert (primary.inflight, primary.inflight_tokens) == (0, 0)
    assert (other.inflight, other.inflight_tokens) == (1, r.tokens)
    d.served_by(r, "10.9.9.9:1")  # unknown: ignored
    d.finish(r, 503)
    assert other.inflight == 0
    assert count(d, "picker_requests_total", model_name="m", outcome="upstream_error", status="503")


def test_latency_targets_shed_sheddable_requests_no_pod_can_serve_in_time() -> None:
    d = director(criticality={"batch": "sheddable"})
    long_prompt = completion("word " * 4000)  # ~5,000 tokens: ~0.16 s at the prior rate
    tight, loose = ("50", ""), ("5000", "")
    shed = d.decide("/v1/completions", long_prompt, objective="batch", slo=tight)
    assert isinstance(shed, Rejected) and shed.status == 429
    assert b"latency target" in shed.body
    assert count(d, "picker_slo_rejected_total", model_name="m") == 1
    # A standard request with the same target is still routed, to the fastest pod.
    assert isinstance(d.decide("/v1/completions", long_prompt, slo=tight), Routed)
    late = d.decide("/v1/completions", long_prompt, objective="batch", slo=loose)
    assert isinstance(late, Routed)
    bad = d.decide("/v1/completions", long_prompt, slo=("soon", ""))
    assert isinstance(bad, Rejected) and bad.status == 400
