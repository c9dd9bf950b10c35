"""The ext_proc stream state machine, driven message by message without Envoy."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from picker.config import load_config
from picker.datalayer.datastore import Endpoint
from picker.handlers.protocol import BUFFERED, FULL_DUPLEX_STREAMED
from picker.handlers.stream import ExtProcService
from picker.observability import Metrics
from picker.requestcontrol.director import Director
from picker.scheduling.profile import build_profile
from picker.transport.grpcio import process_stream

PODS = ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"]
BODY = orjson.dumps({"model": "m", "prompt": "hello there"})


def make_service(**cfg: Any) -> tuple[ExtProcService, Director]:
    data: dict[str, Any] = {"pools": [{"name": "p", "models": ["m"], "endpoints": PODS}]}
    data.update(cfg)
    config = load_config(data=data)
    ds = config.datastore()
    director = Director(config, ds, build_profile({"scorers": {"least_inflight": 1}}), Metrics())
    return ExtProcService(director), director


def responses(director: Director, klass: str, endpoint: str | None = None) -> float:
    """Finished responses of a status class, on one endpoint or all."""
    reg = director.metrics.registry
    name = "picker_endpoint_responses_total"
    return sum(
        reg.get_sample_value(name, {"endpoint": a, "status_class": klass}) or 0.0
        for a in ([endpoint] if endpoint else PODS)
    )


def headers(
    path: str = "/v1/completions",
    eos: bool = False,
    mode: int = FULL_DUPLEX_STREAMED,
    extra: Iterable[tuple[str, str]] = (),
    subset: list[str] | None = None,
) -> pb.ProcessingRequest:
    r = pb.ProcessingRequest()
    for k, v in [(":path", path), (":method", "POST" if not eos else "GET"), *extra]:
        h = r.request_headers.headers.headers.add()
        h.key = k
        h.raw_value = v.encode()
    r.request_headers.end_of_stream = eos
    r.protocol_config.request_body_mode = mode
    r.protocol_config.response_body_mode = mode
    if subset is not None:
        ns = r.metadata_context.filter_metadata["envoy.lb.subset_hint"]
        lst = ns.fields["x-gateway-destination-endpoint-subset"].list_value
        for a in subset:
            lst.values.add().string_value = a
    return r


def body(chunk: bytes, eos: bool) -> pb.ProcessingRequest:
    r = pb.ProcessingRequest()
    r.request_body.body = chunk
    r.request_body.end_of_stream = eos
    return r


def resp_headers(
    status: int = 200, eos: bool = False, served: str | None = None
) -> pb.ProcessingRequest:
    r = pb.ProcessingRequest()
    h = r.response_headers.headers.headers.add()
    h.key = ":status"
    h.raw_value = str(status).encode()
    r.response_headers.end_of_stream = eos
    if served:
        ns = r.metadata_context.filter_metadata["envoy.lb"]
        ns.fields["x-gateway-destination-endpoint-served"].string_value = served
    return r


def resp_body(chunk: bytes, eos: bool) -> pb.ProcessingRequest:
    r = pb.ProcessingRequest()
    r.response_body.body = chunk
    r.response_body.end_of_stream = eos
    return r


async def _aiter(msgs: list[pb.ProcessingRequest]) -> AsyncIterator[pb.ProcessingRequest]:
    for m in msgs:
        yield m


async def run(svc: ExtProcService, msgs: list[pb.ProcessingRequest]) -> list[pb.ProcessingResponse]:
    return [
        pb.ProcessingResponse.FromString(b) async for b in process_stream(svc, _aiter(msgs), None)
    ]


def destination(resp: pb.ProcessingResponse) -> tuple[str, str]:
    """(header value, metadata value) of the destination in a routing response."""
    common = (
        resp.request_headers.response
        if resp.HasField("request_headers")
        else resp.request_body.response
    )
    hdr = [
        o.header.raw_value.decode()
        for o in common.header_mutation.set_headers
        if o.header.key == "x-gateway-destination-endpoint"
    ]
    meta = resp.dynamic_metadata.fields["envoy.lb"].struct_value.fields
    return hdr[0], meta["x-gateway-destination-endpoint"].string_value


async def test_full_duplex_reassembles_chunks_and_routes_before_body() -> None:
    svc, _director = make_service()
    chunks = [BODY[:5], BODY[5:9], BODY[9:]]
    out = await run(
        svc, [headers(), body(chunks[0], False), body(chunks[1], False), body(chunks[2], True)]
    )
    assert [r.WhichOneof("response") for r in out] == ["request_headers", "request_body"]
    hdr, meta = destination(out[0])
    assert hdr == meta and hdr in PODS
    streamed = out[1].request_body.response.body_mutation.streamed_response
    assert streamed.body == BODY and streamed.end_of_stream


async def test_buffered_mode_routes_in_body_response() -> None:
    svc, _ = make_service()
    out = await run(svc, [headers(mode=BUFFERED), body(BODY, True)])
    assert [r.WhichOneof("response") for r in out] == ["request_headers", "request_body"]
    assert not out[0].request_headers.response.HasField("header_mutation")
    hdr, meta = destination(out[1])
    assert hdr == meta and hdr in PODS


async def test_request_without_body_is_routed_on_headers() -> None:
    svc, _ = make_service()
    out = await run(svc, [headers("/v1/models", eos=True)])
    assert len(out) == 1
    hdr, _ = destination(out[0])
    assert hdr in PODS


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (b"{not json", 400),
        (b'{"prompt": "x"}', 400),
        (b'{"model": 7, "prompt": "x"}', 400),
        (orjson.dumps({"model": "nope", "prompt": "x"}), 404),
    ],
)
async def test_errors_become_immediate_responses(payload: bytes, status: int) -> None:
    svc, director = make_service()
    out = await run(svc, [headers(), body(payload, True)])
    assert len(out) == 1 and out[0].HasField("immediate_response")
    imm = out[0].immediate_response
    assert imm.status.code == status
    err = orjson.loads(imm.body)["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert all(e.inflight == 0 for e in director.datastore.endpoints())


async def test_body_over_limit_is_413() -> None:
    svc, _ = make_service(max_body_bytes=64)
    big = orjson.dumps({"model": "m", "prompt": "x" * 200})
    out = await run(svc, [headers(), body(big[:40], False), body(big[40:], True)])
    assert out[-1].immediate_response.status.code == 413


async def test_no_ready_endpoint_is_503() -> None:
    svc, director = make_service()
    for e in director.datastore.endpoints():
        e.healthy = False
    out = await run(svc, [headers(), body(BODY, True)])
    assert out[0].immediate_response.status.code == 503


async def test_subset_hint_restricts_and_empty_subset_is_503() -> None:
    svc, _ = make_service()
    for _ in range(5):
        out = await run(svc, [headers(subset=[PODS[2]]), body(BODY, True)])
        assert destination(out[0])[0] == PODS[2]
    out = await run(svc, [headers(subset=["192.0.2.1:1"]), body(BODY, True)])
    assert out[0].immediate_response.status.code == 503


async def test_spoofed_destination_header_is_overwritten() -> None:
    svc, _ = make_service()
    out = await run(
        svc,
        [headers(extra=[("x-gateway-destination-endpoint", "6.6.6.6:66")]), body(BODY, True)],
    )
    opts = out[0].request_headers.response.header_mutation.set_headers
    dest = [o for o in opts if o.header.key == "x-gateway-destination-endpoint"]
    assert len(dest) == 1 and dest[0].append_action == dest[0].OVERWRITE_IF_EXISTS_OR_ADD
    assert dest[0].header.raw_value.decode() in PODS


async def test_inflight_released_at_response_end_and_body_echoed() -> None:
    svc, director = make_service()
    msgs = [headers(), body(BODY, True), resp_headers(200), resp_body(b"data: 1\n\n", False)]
    msgs.append(resp_body(b"data: [DONE]\n\n", True))
    seen: list[int] = []

    async def watching() -> AsyncIterator[pb.ProcessingRequest]:
        for m in msgs:
            seen.append(sum(e.inflight for e in director.datastore.endpoints()))
            yield m

    out = [pb.ProcessingResponse.FromString(b) async for b in process_stream(svc, watching(), None)]
    assert seen == [0, 0, 1, 1, 1]
    assert sum(e.inflight for e in director.datastore.endpoints()) == 0
    assert responses(director, "2xx") == 1
    echoed = [r.response_body.response.body_mutation.streamed_response for r in out[3:]]
    assert [c.body for c in echoed] == [b"data: 1\n\n", b"data: [DONE]\n\n"]
    assert [c.end_of_stream for c in echoed] == [False, True]


async def test_stream_reset_releases_inflight() -> None:
    svc, director = make_service()
    out = await run(svc, [headers(), body(BODY, True)])  # Envoy goes away mid-request
    assert len(out) == 2
    assert sum(e.inflight for e in director.datastore.endpoints()) == 0
    assert responses(director, "reset") == 1


async def test_served_metadata_moves_accounting_to_fallback() -> None:
    svc, director = make_service()
    ds = director.datastore
    msgs = [headers(), body(BODY, True)]
    gen = process_stream(svc, _aiter([*msgs, resp_headers(200, served=PODS[0])]), None)
    outs = [pb.ProcessingResponse.FromString(b) async for b in gen]
    assert outs[-1].HasField("response_headers")
    served: Endpoint = ds.by_address[PODS[0]]
    # Stream ended after headers: accounting released on the endpoint that served.
    assert responses(director, "2xx", served.address) == 1
    assert all(e.inflight == 0 for e in ds.endpoints())


async def test_burst_spreads_across_pods() -> None:
    svc, _director = make_service()
    gens = []
    for _ in range(30):
        # Keep streams open (no response yet) so in-flight accumulates.
        gen = process_stream(svc, _aiter([headers(), body(BODY, True)]), None)
        first = await gen.__anext__()
        gens.append((gen, pb.ProcessingResponse.FromString(first)))
    counts: dict[str, int] = {}
    for _, r in gens:
        d = destination(r)[0]
        counts[d] = counts.get(d, 0) + 1
    assert sorted(counts.values()) == [10, 10, 10]
    for gen, _ in gens:
        await gen.aclose()  # type: ignore[attr-defined]


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16383, 16384, 300_000])
@pytest.mark.parametrize("end", [False, True])
@pytest.mark.parametrize("field", ["request_body", "response_body"])
def test_streamed_chunks_equal_protobufs_encoding(size: int, end: bool, field: str) -> None:
    from picker.handlers.protocol import streamed

    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    ref = pb.ProcessingResponse()
    getattr(ref, field).response.body_mutation.streamed_response.body = body
    getattr(ref, field).response.body_mutation.streamed_response.end_of_stream = end
    assert streamed(field, body, end) == ref.SerializeToString()
