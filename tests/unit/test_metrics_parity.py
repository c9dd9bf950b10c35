"""picker's series under the endpoint picker's names and labels (docs/metrics.md)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from picker.config import load_config
from picker.datalayer.datastore import Datastore, EndpointMetrics, Pool
from picker.flowcontrol.queue import Held
from picker.observability import MAX_MODEL_LABELS, OTHER_MODEL, Metrics
from picker.requestcontrol.director import Director, Rejected, Routed
from picker.scheduling.framework import Handle
from picker.scheduling.profile import build_profile
from picker.server import _configured_models

PODS = ["10.0.0.1:8000", "10.0.0.2:8000"]


def director(models: list[str], **extra: Any) -> Director:
    cfg = load_config(data={"pools": [{"name": "p", "models": models, "endpoints": PODS}], **extra})
    ds = cfg.datastore()
    handle = Handle(ds, Metrics(), cfg.chars_per_token)
    scheduler = {"scorers": {"prefix": 1, "queue": 1}}
    return Director(cfg, ds, build_profile(scheduler, handle=handle), handle.metrics)


def body(prompt: str, model: str = "m") -> bytes:
    return orjson.dumps({"model": model, "prompt": prompt})


def value(d: Director, name: str, **labels: str) -> float | None:
    return d.metrics.registry.get_sample_value(name, labels)


def test_request_total_carries_the_objectives_priority() -> None:
    d = director(["m"])
    d.datastore.objectives.set_objectives({"batch": -3, "chat": 7})
    for objective in ("chat", "chat", "batch", None, "critical"):
        r = d.decide("/v1/completions", body("hi"), objective=objective)
        assert isinstance(r, Routed)
    base = {"model_name": "m", "target_model_name": "m"}
    name = "inference_objective_request_total"
    assert value(d, name, **base, priority="7") == 2
    assert value(d, name, **base, priority="-3") == 1
    assert value(d, name, **base, priority="0") == 1  # no objective: standard
    assert value(d, name, **base, priority="1") == 1  # a criticality name: critical


def test_token_counts_are_the_prompt_and_the_expected_cached_part() -> None:
    d = director(["m"])
    prompt = "You are a careful assistant. " * 40  # 1,160 chars: 291 tokens at 4/token
    first = d.decide("/v1/completions", body(prompt))
    assert isinstance(first, Routed)
    d.finish(first, 200)
    second = d.decide("/v1/completions", body(prompt + "and a question"))
    assert isinstance(second, Routed) and second.served is first.served
    labels = {"model_name": "m", "target_model_name": "m"}
    tokens = first.request.prompt_tokens + second.request.prompt_tokens
    assert value(d, "inference_objective_input_tokens_count", **labels) == 2
    assert value(d, "inference_objective_input_tokens_sum", **labels) == tokens
    cached = second.request.cached_tokens(second.endpoints[0].address)
    assert cached > 200  # the prefix index matched the shared system prompt
    assert value(d, "inference_objective_prompt_cached_tokens_sum", **labels) == cached
    assert value(d, "inference_objective_prompt_cached_tokens_count", **labels) == 2


def test_scheduler_attempts_name_the_pod_and_are_forgotten_with_it() -> None:
    d = director(["m"])
    for i, ep in enumerate(d.datastore.endpoints()):
        ep.pod_name, ep.namespace, ep.rank = f"vllm-{i}", "ns", 0
    r = d.decide("/v1/completions", body("hi"))
    assert isinstance(r, Routed)
    ep = r.endpoints[0]
    labels = {"status": "success", "target_model_name": "m", "namespace": "ns", "port": "8000"}
    name = "inference_extension_scheduler_attempts_total"
    assert value(d, name, **labels, pod_name=ep.pod_name) == 1
    d.metrics.forget_endpoint(ep.address, ep.pod_name, ep.namespace, ep.port_label)
    assert value(d, name, **labels, pod_name=ep.pod_name) is None
    # No endpoint left after filtering (the proxy's subset names none): a failure.
    r2 = d.decide("/v1/completions", body("hi"), subset=frozenset({"10.9.9.9:1"}))
    assert isinstance(r2, Rejected) and r2.status == 503
    fail = {"status": "failure", "target_model_name": "m", "pod_name": "", "namespace": ""}
    assert value(d, name, **fail, port="") == 1


def test_model_labels_are_capped_for_names_the_client_chooses() -> None:
    d = director(["*"], model_rewrites={"alias": "served"})
    d.metrics.pin_models(_configured_models(d.config, d.datastore))  # as the server does
    for i in range(MAX_MODEL_LABELS + 5):
        assert isinstance(d.decide("/v1/completions", body("hi", f"client-{i}")), Routed)
    assert isinstance(d.decide("/v1/completions", body("hi", "alias")), Routed)
    name = "inference_objective_request_total"
    other = {"model_name": OTHER_MODEL, "target_model_name": OTHER_MODEL, "priority": "0"}
    assert value(d, name, **other) == 5
    first = {"model_name": "client-0", "target_model_name": "client-0", "priority": "0"}
    assert value(d, name, **first) == 1
    # Configured names keep their labels however many client names came first.
    pinned = {"model_name": "alias", "target_model_name": "served", "priority": "0"}
    assert value(d, name, **pinned) == 1
    values = {
        s.labels["model_name"]
        for metric in d.metrics.registry.collect()
        if metric.name == "inference_objective_request"  # a counter: no _total
        for s in metric.samples
    }
    assert len(values) == MAX_MODEL_LABELS + 2  # the admitted, "alias", "other"


async def test_flow_control_series_follow_a_parked_request() -> None:
    d = director(
        ["m"], saturation={"queue_threshold": 1}, flow_control={"enabled": True, "max_queue": 1}
    )
    for e in d.datastore.endpoints():
        e.metrics = EndpointMetrics(waiting=1)
    payload = body("hi")
    held = d.decide("/v1/completions", payload)
    assert isinstance(held, Held)
    labels = {
        "fairness_id": "m",
        "priority": "0",
        "inference_pool": "p",
        "model_name": "m",
        "target_model_name": "m",
    }
    assert value(d, "inference_extension_flow_control_queue_size", **labels) == 1
    assert value(d, "inference_extension_flow_control_queue_bytes", **labels) == len(payload)
    full = d.decide("/v1/completions", payload)  # max_queue 1: rejected at once
    assert isinstance(full, Rejected) and full.status == 429
    for e in d.datastore.endpoints():
        e.metrics = EndpointMetrics(waiting=0)
    d.pump()
    assert isinstance(held.future.result(), Routed)
    assert value(d, "inference_extension_flow_control_queue_size", **labels) == 0
    assert value(d, "inference_extension_flow_control_queue_bytes", **labels) == 0
    name = "inference_extension_flow_control_request_queue_duration_seconds_count"
    for outcome in ("Dispatched", "RejectedCapacity"):
        assert value(d, name, **labels, outcome=outcome) == 1


@pytest.mark.parametrize("cancel", [False, True])
async def test_flow_control_outcome_of_an_evicted_request(cancel: bool) -> None:
    d = director(
        ["m"],
        saturation={"queue_threshold": 1},
        flow_control={"enabled": True, "max_wait_seconds": 0.0},
    )
    for e in d.datastore.endpoints():
        e.metrics = EndpointMetrics(waiting=1)
    held = d.decide("/v1/completions", body("hi"))
    assert isinstance(held, Held)
    if cancel:
        d.cancel_held(held)
    d.pump()
    outcome = "EvictedContextCancelled" if cancel else "EvictedTTL"
    name = "inference_extension_flow_control_request_queue_duration_seconds_count"
    labels = {"fairness_id": "m", "priority": "0", "inference_pool": "p"}
    labels |= {"model_name": "m", "target_model_name": "m"}
    assert value(d, name, **labels, outcome=outcome) == 1
    assert value(d, "inference_extension_flow_control_queue_size", **labels) == 0


def test_discovery_names_the_pod_of_each_endpoint() -> None:
    ds = Datastore([Pool("p", [])])
    pods = {"10.0.0.5:8000": ("vllm-a", "ns", 0), "10.0.0.5:8001": ("vllm-a", "ns", 1)}
    added, _ = ds.set_endpoints("p", ["10.0.0.5:8000", "10.0.0.5:8001", "10.0.0.6:8000"], pods)
    names = sorted(e.metric_name for e in added)
    assert names == ["10.0.0.6:8000", "vllm-a-rank-0", "vllm-a-rank-1"]
    a0 = ds.by_address["10.0.0.5:8000"]
    assert (a0.pod_name, a0.namespace, a0.rank, a0.port_label) == ("vllm-a", "ns", 0, "8000")
