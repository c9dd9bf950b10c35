"""Model rewrites, objectives and the conformance hooks through the stream machine."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from picker.config import load_config
from picker.datalayer.objectives import RewriteRule, RewriteSpec
from picker.handlers.protocol import BUFFERED
from picker.handlers.stream import ExtProcService
from picker.observability import Metrics
from picker.requestcontrol.director import Director
from picker.scheduling.profile import build_profile
from picker.scheduling.testing import ENV_FLAG
from tests.unit.handlers.test_stream import PODS, body, destination, headers, resp_headers, run

BODY = b'{"model": "m",   "prompt": "hello there", "max_tokens": 3}'  # spaces: not compact


def make(env: dict[str, str] | None = None, **cfg: Any) -> tuple[ExtProcService, Director]:
    data: dict[str, Any] = {"pools": [{"name": "p", "models": ["*"], "endpoints": PODS}]}
    data.update(cfg)
    config = load_config(data=data)
    profile = build_profile({"scorers": {"least_inflight": 1}}, env=env or {})
    director = Director(config, config.datastore(), profile, Metrics(), rng=random.Random(3))
    return ExtProcService(director), director


def set_headers(common: Any) -> dict[str, str]:
    return {o.header.key: o.header.raw_value.decode() for o in common.header_mutation.set_headers}


async def test_no_rewrite_forwards_the_same_bytes_without_content_length() -> None:
    svc, _ = make(model_rewrites={"other": "x"})
    out = await run(svc, [headers(), body(BODY, True)])
    assert "content-length" not in set_headers(out[0].request_headers.response)
    streamed = out[1].request_body.response.body_mutation.streamed_response
    assert streamed.body == BODY


async def test_rewrite_full_duplex_sends_new_body_and_content_length() -> None:
    svc, director = make(model_rewrites={"m": "m-v2"})
    out = await run(svc, [headers(), body(BODY, True), resp_headers(200, eos=True)])
    hdrs = set_headers(out[0].request_headers.response)
    new = out[1].request_body.response.body_mutation.streamed_response.body
    assert orjson.loads(new) == {"model": "m-v2", "prompt": "hello there", "max_tokens": 3}
    assert hdrs["content-length"] == str(len(new)) and len(new) != len(BODY)
    reg = director.metrics.registry
    labels = {"model_name": "m", "target_model_name": "m-v2", "priority": "0"}
    assert reg.get_sample_value("inference_objective_request_total", labels) == 1
    rewrite = {"model_rewrite_name": "", "model_name": "m", "target_model": "m-v2"}
    assert reg.get_sample_value("inference_extension_model_rewrite_decisions_total", rewrite) == 1


async def test_rewrite_buffered_mutates_the_body_response() -> None:
    svc, _ = make(model_rewrites={"m": "m-v2"})
    out = await run(svc, [headers(mode=BUFFERED), body(BODY, True)])
    common = out[1].request_body.response
    assert orjson.loads(common.body_mutation.body)["model"] == "m-v2"
    assert set_headers(common)["content-length"] == str(len(common.body_mutation.body))
    assert destination(out[1])[0] in PODS


async def test_weighted_targets_and_cluster_rules_route_by_target_model() -> None:
    svc, director = make(
        pools=[
            {"name": "a", "models": ["big"], "endpoints": PODS[:1]},
            {"name": "b", "models": ["small"], "endpoints": PODS[1:]},
        ]
    )
    rule = RewriteRule.build(("m",), [("big", 1), ("small", 3)])
    director.datastore.objectives.put_rewrite(RewriteSpec("rw", "t", (rule,)))
    seen: dict[str, set[str]] = {"big": set(), "small": set()}
    for _ in range(40):
        out = await run(svc, [headers(), body(BODY, True)])
        model = orjson.loads(out[1].request_body.response.body_mutation.streamed_response.body)
        seen[model["model"]].add(destination(out[0])[0])
    assert seen["big"] == {PODS[0]} and seen["small"] <= set(PODS[1:]) and seen["small"]


def saturate(director: Director) -> None:
    for e in director.datastore.endpoints():
        e.inflight = e.sent_since_scrape = 100


@pytest.mark.parametrize("header", ["x-llm-d-inference-objective", "x-gateway-inference-objective"])
async def test_sheddable_objective_is_shed_under_saturation(header: str) -> None:
    svc, director = make()
    director.datastore.objectives.set_objectives({"batch": -1, "chat": 0})
    saturate(director)
    out = await run(svc, [headers(extra=[(header, "batch")]), body(BODY, True)])
    assert out[0].immediate_response.status.code == 429
    out = await run(svc, [headers(extra=[(header, "chat")]), body(BODY, True)])
    assert destination(out[0])[0] in PODS


async def test_new_objective_header_wins_over_the_old_one() -> None:
    svc, director = make()
    director.datastore.objectives.set_objectives({"batch": -1, "chat": 0})
    saturate(director)
    for extra in (
        [("x-gateway-inference-objective", "batch"), ("x-llm-d-inference-objective", "chat")],
        [("x-llm-d-inference-objective", "chat"), ("x-gateway-inference-objective", "batch")],
    ):
        out = await run(svc, [headers(extra=extra), body(BODY, True)])
        assert out[0].HasField("request_headers")


async def test_selection_header_and_served_echo_when_enabled() -> None:
    svc, _ = make(env={ENV_FLAG: "true"})
    for value, allowed in ((PODS[1], {PODS[1]}), ("10.0.0.3", {PODS[2]})):
        for _ in range(5):
            msgs = [headers(extra=[("test-epp-endpoint-selection", value)]), body(BODY, True)]
            out = await run(svc, [*msgs, resp_headers(200, served=PODS[1])])
            assert destination(out[0])[0] in allowed
            echoed = set_headers(out[2].response_headers.response)
            assert echoed == {"x-conformance-test-served-endpoint": PODS[1]}
    out = await run(svc, [headers(), body(BODY, True), resp_headers(200)])
    echoed = set_headers(out[2].response_headers.response)
    assert echoed["x-conformance-test-served-endpoint"].startswith("fail:")
    msgs = [headers(extra=[("test-epp-endpoint-selection", "192.0.2.9")]), body(BODY, True)]
    assert (await run(svc, msgs))[0].immediate_response.status.code == 503


async def test_selection_header_ignored_when_not_enabled() -> None:
    svc, _ = make()
    msgs = [headers(extra=[("test-epp-endpoint-selection", "192.0.2.9")]), body(BODY, True)]
    out = await run(svc, [*msgs, resp_headers(200)])
    assert destination(out[0])[0] in PODS
    assert out[2] == pb.ProcessingResponse(response_headers=pb.HeadersResponse())


async def test_bare_ip_in_subset_hint_allows_that_host() -> None:
    svc, _ = make()
    for _ in range(5):
        out = await run(svc, [headers(subset=["10.0.0.2"]), body(BODY, True)])
        assert destination(out[0])[0] == PODS[1]
