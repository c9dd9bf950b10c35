"""picker's own HTTP/2 gRPC server, spoken to by a different implementation (grpc core)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from picker.config import load_config
from picker.server import PickerServer
from picker.transport.health import EXT_PROC_SERVICE

PODS = ["10.1.0.1:8000", "10.1.0.2:8000"]


@pytest.fixture(params=["native", "grpcio"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[PickerServer]:
    cfg = load_config(
        data={
            "grpc_host": "127.0.0.1",
            "grpc_port": 0,
            "metrics_port": -1,
            "transport": request.param,
            "max_body_bytes": 4 << 20,
            "pools": [{"name": "p", "models": ["m"], "endpoints": PODS}],
        }
    )
    cfg.scrape.enabled = False
    srv = PickerServer(cfg)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop(0)


def _headers(path: str = "/v1/completions") -> pb.ProcessingRequest:
    r = pb.ProcessingRequest()
    h = r.request_headers.headers.headers.add()
    h.key, h.raw_value = ":path", path.encode()
    r.protocol_config.request_body_mode = 4
    r.protocol_config.response_body_mode = 4
    return r


def _body(data: bytes, eos: bool = True) -> pb.ProcessingRequest:
    r = pb.ProcessingRequest()
    r.request_body.body = data
    r.request_body.end_of_stream = eos
    return r


async def _process(port: int, msgs: list[pb.ProcessingRequest]) -> list[pb.ProcessingResponse]:
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)]
    ) as ch:
        stub: Any = pb_grpc.ExternalProcessorStub(ch)
        call = stub.Process(iter(msgs))
        return [r async for r in call]


async def test_health_services(server: PickerServer) -> None:
    assert server._ready_task is not None
    await asyncio.wait_for(server._ready_task, 5)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        stub: Any = health_pb2_grpc.HealthStub(ch)
        for name in ("liveness", "readiness", EXT_PROC_SERVICE):
            resp = await stub.Check(health_pb2.HealthCheckRequest(service=name))
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Check(health_pb2.HealthCheckRequest(service="nope"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_readiness_waits_for_first_scrape() -> None:
    cfg = load_config(
        data={
            "grpc_host": "127.0.0.1",
            "grpc_port": 0,
            "metrics_port": -1,
            # Nothing listens here: the first scrape attempt fails, then readiness flips.
            "pools": [{"name": "p", "endpoints": ["127.0.0.1:9"]}],
        }
    )
    srv = PickerServer(cfg)
    await srv.start()
    try:
        assert srv.health_status.status["readiness"] == health_pb2.HealthCheckResponse.NOT_SERVING
        assert srv._ready_task is not None
        await asyncio.wait_for(srv._ready_task, 5)
        assert srv.health_status.status["readiness"] == health_pb2.HealthCheckResponse.SERVING
    finally:
        await srv.stop(0)


async def test_full_duplex_round_trip(server: PickerServer) -> None:
    body = orjson.dumps({"model": "m", "prompt": "hi"})
    out = await _process(server.grpc_port, [_headers(), _body(body[:3], False), _body(body[3:])])
    assert [r.WhichOneof("response") for r in out] == ["request_headers", "request_body"]
    dest = out[0].request_headers.response.header_mutation.set_headers[0].header
    assert dest.key == "x-gateway-destination-endpoint" and dest.raw_value.decode() in PODS
    assert out[1].request_body.response.body_mutation.streamed_response.body == body


async def test_large_body_crosses_many_frames(server: PickerServer) -> None:
    # ~3 MB: several HTTP/2 DATA frames and flow-control windows on the way in, and a
    # multi-frame response on the way out.
    body = orjson.dumps({"model": "m", "prompt": "x" * 3_000_000})
    out = await _process(server.grpc_port, [_headers(), _body(body)])
    streamed = b"".join(
        r.request_body.response.body_mutation.streamed_response.body for r in out[1:]
    )
    assert streamed == body


async def test_immediate_response_ends_stream(server: PickerServer) -> None:
    out = await _process(server.grpc_port, [_headers(), _body(b"{nope")])
    assert len(out) == 1 and out[0].immediate_response.status.code == 400


async def test_many_concurrent_streams_on_one_connection(server: PickerServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        stub: Any = pb_grpc.ExternalProcessorStub(ch)

        async def one(i: int) -> str:
            body = orjson.dumps({"model": "m", "prompt": f"hello {i}"})
            out = [r async for r in stub.Process(iter([_headers(), _body(body)]))]
            value: bytes = (
                out[0].request_headers.response.header_mutation.set_headers[0].header.raw_value
            )
            return value.decode()

        dests = await asyncio.gather(*(one(i) for i in range(200)))
    assert set(dests) == set(PODS)
    assert all(e.inflight == 0 for e in server.datastore.endpoints())


async def test_cancelled_stream_releases_inflight(server: PickerServer) -> None:
    body = orjson.dumps({"model": "m", "prompt": "hello"})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        stub: Any = pb_grpc.ExternalProcessorStub(ch)
        queue: asyncio.Queue[pb.ProcessingRequest | None] = asyncio.Queue()
        for m in (_headers(), _body(body)):
            queue.put_nowait(m)

        async def requests() -> AsyncIterator[pb.ProcessingRequest]:
            while (m := await queue.get()) is not None:
                yield m

        call = stub.Process(requests())
        first = await call.read()
        assert first.HasField("request_headers")
        assert sum(e.inflight for e in server.datastore.endpoints()) == 1
        call.cancel()
        for _ in range(100):
            if sum(e.inflight for e in server.datastore.endpoints()) == 0:
                break
            await asyncio.sleep(0.02)
    assert sum(e.inflight for e in server.datastore.endpoints()) == 0


async def test_unknown_method_is_unimplemented(server: PickerServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        method = ch.unary_unary("/nope.Service/Nope")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await method(b"")
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_garbage_connection_is_closed_and_server_keeps_serving(
    server: PickerServer,
) -> None:
    for junk in (
        b"GET / HTTP/1.1\r\nhost: x\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff" * 64,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.grpc_port)
        writer.write(junk)
        await writer.drain()
        # The server answers (SETTINGS/GOAWAY) and closes, or just closes.
        with contextlib.suppress(ConnectionResetError):
            await asyncio.wait_for(reader.read(), 5)
        writer.close()
    out = await _process(server.grpc_port, [_headers(), _body(b'{"model": "m", "prompt": "x"}')])
    assert out[0].HasField("request_headers")
