"""The separate gRPC health port (the EPP's 9003): plaintext, health alone, the service
names probes and gateways ask for, up while picker drains."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from picker.config import load_config
from picker.server import PickerServer
from picker.transport.health import EXT_PROC_SERVICE

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
NAMES = ("inference-extension", "readiness", EXT_PROC_SERVICE, "")


@pytest.fixture(params=["native", "grpcio"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[PickerServer]:
    cfg = load_config(
        data={
            "grpc_host": "127.0.0.1",
            "grpc_port": 0,
            "grpc_health_port": 0,
            "metrics_port": -1,
            "transport": request.param,
            "tls": {"enabled": True},  # the ext_proc port; health stays plaintext
            "pools": [{"name": "p", "endpoints": ["10.1.0.1:8000"]}],
        }
    )
    cfg.scrape.enabled = False
    srv = PickerServer(cfg)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop(0)


async def _statuses(port: int, names: tuple[str, ...]) -> dict[str, int]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub: Any = health_pb2_grpc.HealthStub(ch)
        out = {}
        for name in names:
            resp = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            out[name] = resp.status
        return out


async def test_health_port_answers_the_epp_names_in_plaintext(server: PickerServer) -> None:
    port = server.health_port
    assert port not in (0, server.grpc_port)
    assert server._ready_task is not None
    await asyncio.wait_for(server._ready_task, 5)
    assert await _statuses(port, ("liveness", *NAMES)) == dict.fromkeys(("liveness", *NAMES), 1)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub: Any = health_pb2_grpc.HealthStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        # health only: no ext_proc on this port
        ext: Any = pb_grpc.ExternalProcessorStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in ext.Process(iter([]), timeout=5):
                pass
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_not_ready_before_first_scrape_and_while_draining() -> None:
    cfg = load_config(
        data={
            "grpc_host": "127.0.0.1",
            "grpc_port": 0,
            "grpc_health_port": 0,
            "metrics_port": -1,
            "pools": [{"name": "p", "endpoints": ["127.0.0.1:9"]}],
        }
    )
    cfg.scrape.interval = 30.0  # the first scrape fails at once; no second one here
    srv = PickerServer(cfg)
    await srv.start()
    try:
        port = srv.health_port
        statuses = await _statuses(port, ("liveness", *NAMES))
        assert statuses["liveness"] == SERVING
        assert srv._ready_task is not None
        await asyncio.wait_for(srv._ready_task, 5)
        assert set((await _statuses(port, NAMES)).values()) == {SERVING}
        assert await srv.drain(0.1) == 0
        # draining: the ext_proc port is closed, the health port still answers
        statuses = await _statuses(port, ("liveness", *NAMES))
        assert statuses == {"liveness": SERVING, **dict.fromkeys(NAMES, NOT_SERVING)}
    finally:
        await srv.stop(0)


async def test_off_unless_asked() -> None:
    cfg = load_config(data={"grpc_port": 0, "metrics_port": -1, "models": {"m": ["10.0.0.1:1"]}})
    cfg.scrape.enabled = False
    srv = PickerServer(cfg)
    await srv.start()
    try:
        assert srv.health_server is None and srv.health_port == 0
    finally:
        await srv.stop(0)
