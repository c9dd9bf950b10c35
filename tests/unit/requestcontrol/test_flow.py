"""Flow control: requests parked while the pool is saturated, dispatched in order."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from picker.config import load_config
from picker.datalayer.datastore import EndpointMetrics
from picker.flowcontrol.queue import FlowQueue, Held
from picker.handlers.stream import ExtProcService
from picker.observability import Metrics
from picker.request.types import Criticality, InferenceRequest
from picker.requestcontrol.director import Director, Rejected, Routed
from picker.scheduling.profile import build_profile
from tests.unit.handlers.test_stream import body, destination, headers

PODS = ["10.0.0.1:8000", "10.0.0.2:8000"]


def director(**flow: Any) -> Director:
    cfg = load_config(
        data={
            "pools": [{"name": "p", "models": ["a", "b"], "endpoints": PODS}],
            "saturation": {"queue_threshold": 1},
            "flow_control": {"enabled": True, **flow},
            "criticality": {"b": "sheddable"},
        }
    )
    return Director(cfg, cfg.datastore(), build_profile({"scorers": {"queue": 1}}), Metrics())


def saturate(d: Director, waiting: int) -> None:
    for e in d.datastore.endpoints():
        e.metrics = EndpointMetrics(waiting=waiting)


def req_body(model: str) -> bytes:
    return orjson.dumps({"model": model, "prompt": "hi"})


async def test_saturated_request_is_held_then_dispatched() -> None:
    d = director()
    saturate(d, 1)
    held = d.decide("/v1/completions", req_body("a"))
    assert isinstance(held, Held) and not held.future.done()
    d.pump()
    assert not held.future.done()  # still saturated
    saturate(d, 0)
    d.pump()
    result = held.future.result()
    assert isinstance(result, Routed) and result.endpoints[0].address in PODS
    assert result.endpoints[0].inflight == 1


async def test_critical_is_never_held() -> None:
    d = director()
    saturate(d, 5)
    r = d.decide("/v1/completions", req_body("a"), objective="critical")
    assert isinstance(r, Routed)


async def test_wait_deadline_answers_429() -> None:
    d = director(max_wait_seconds=0.05)
    saturate(d, 1)
    held = d.decide("/v1/completions", req_body("a"))
    assert isinstance(held, Held)
    result = await asyncio.wait_for(held.future, 2)  # the pump loop expires it
    assert isinstance(result, Rejected) and result.status == 429
    assert ("retry-after", "1") in result.headers


async def test_full_queue_answers_429_at_once() -> None:
    d = director(max_queue=1)
    saturate(d, 1)
    assert isinstance(d.decide("/v1/completions", req_body("a")), Held)
    r = d.decide("/v1/completions", req_body("a"))
    assert isinstance(r, Rejected) and r.status == 429


async def test_standard_before_sheddable_and_models_take_turns() -> None:
    q = FlowQueue()
    d = director()
    pool = d.datastore.pools[0]

    def req(model: str, crit: Criticality) -> InferenceRequest:
        return InferenceRequest(model=model, criticality=crit)

    order = [
        q.hold(req("b", Criticality.SHEDDABLE), pool, 0),
        q.hold(req("a", Criticality.STANDARD), pool, 0),
        q.hold(req("a", Criticality.STANDARD), pool, 0),
        q.hold(req("c", Criticality.STANDARD), pool, 0),
    ]
    out: list[Held] = []
    q.pump(lambda p: True, out.append, lambda h: None)
    names = [(h.request.model, h.request.criticality.name) for h in out]
    assert names == [
        ("a", "STANDARD"),
        ("c", "STANDARD"),
        ("a", "STANDARD"),
        ("b", "SHEDDABLE"),
    ]
    assert q.size == 0 and all(h is not None for h in order)


async def test_stream_held_then_resumed_and_cancel_on_close() -> None:
    d = director()
    svc = ExtProcService(d)
    saturate(d, 1)
    proc = svc.stream()
    assert proc.handle(headers()) == []
    assert proc.handle(body(req_body("a"), True)) == []
    assert proc.held is not None
    saturate(d, 0)
    d.pump()
    out = proc.resume()
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

    first = pb.ProcessingResponse.FromString(out[0])
    assert destination(first)[0] in PODS
    proc.close()
    # A stream that goes away while parked is dropped from the queue.
    saturate(d, 1)
    gone = svc.stream()
    gone.handle(headers())
    gone.handle(body(req_body("a"), True))
    held = gone.held
    assert held is not None
    gone.close()
    saturate(d, 0)
    d.pump()
    assert held.cancelled and not held.future.done()
    assert d.admission.flow is not None and d.admission.flow.size == 0
