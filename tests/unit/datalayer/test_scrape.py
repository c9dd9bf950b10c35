"""The scraper against small local HTTP servers (127.0.0.1, ephemeral ports)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web

from picker.datalayer.datastore import Datastore, Endpoint, EndpointMetrics, Pool
from picker.datalayer.http import HTTPConnection, ScrapeError
from picker.datalayer.metrics_text import MetricNames
from picker.datalayer.scrape import Scraper, _Target
from picker.observability import Metrics
from tests import FIXTURES

FIXTURE = (FIXTURES / "vllm-0.32.0-cpu-metrics.txt").read_text()


def page(waiting: int, running: int = 0, kv: float = 0.0) -> str:
    return (
        "# TYPE vllm:num_requests_waiting gauge\n"
        f'vllm:num_requests_waiting{{model_name="m"}} {waiting}.0\n'
        f'vllm:num_requests_running{{model_name="m"}} {running}.0\n'
        f'vllm:kv_cache_usage_perc{{model_name="m"}} {kv}\n'
    )


class MetricsServer:
    """A raw asyncio HTTP/1.1 server: keep-alive, optional chunking, can hang or fail."""

    def __init__(self, body: str | bytes = "", *, chunked: bool = False, port: int = 0) -> None:
        self.body = body
        self.chunked = chunked
        self.status = 200
        self.hang = False
        self.delay = 0.0  # seconds to "render" the page before answering
        self.close_after_response = False
        self.connections = 0
        self.requests = 0
        self.heads: list[bytes] = []
        self.port = port
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> MetricsServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                self.heads.append(head)
                if self.hang:
                    await asyncio.sleep(3600)
                if self.delay:
                    await asyncio.sleep(self.delay)
                body = self.body if isinstance(self.body, bytes) else self.body.encode()
                status = f"HTTP/1.1 {self.status} X\r\nContent-Type: text/plain\r\n".encode()
                extra = b"Connection: close\r\n" if self.close_after_response else b""
                if self.chunked:
                    writer.write(status + extra + b"Transfer-Encoding: chunked\r\n\r\n")
                    for i in range(0, len(body), 1000):
                        piece = body[i : i + 1000]
                        writer.write(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece))
                    writer.write(b"0\r\nX-Trailer: 1\r\n\r\n")
                else:
                    writer.write(status + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body)
                await writer.drain()
                if self.close_after_response:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._handlers.discard(task)


@pytest.fixture
async def server() -> AsyncIterator[MetricsServer]:
    s = await MetricsServer(page(3, 4, 0.5)).start()
    yield s
    with contextlib.suppress(Exception):
        await s.stop()


def make_store(*addresses: str, model_server: str = "vllm") -> Datastore:
    eps = [Endpoint(address=a, pool="p") for a in addresses]
    return Datastore([Pool("p", eps, model_server=model_server)])


async def until(cond: Callable[[], bool], timeout: float = 3.0) -> float:
    """Waits for ``cond``; returns the seconds it took."""
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)
    return time.monotonic() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@contextlib.asynccontextmanager
async def running(scraper: Scraper) -> AsyncIterator[Scraper]:
    await scraper.start()
    try:
        yield scraper
    finally:
        await asyncio.wait_for(scraper.stop(), 2)


async def test_snapshot_published_and_connection_reused(server: MetricsServer) -> None:
    store = make_store(server.address)
    ep = store.endpoints()[0]
    ep.sent_since_scrape = 5
    async with running(Scraper(store, Metrics(), interval=0.01)) as sc:
        await asyncio.wait_for(sc.first_scrape_done.wait(), 2)
        m = ep.metrics
        assert (m.waiting, m.running, m.kv_usage) == (3, 4, 0.5)
        assert m.scraped_at > 0 and ep.sent_since_scrape == 0 and ep.healthy
        server.body = page(9)
        await until(lambda: ep.metrics.waiting == 9)
        await until(lambda: server.requests >= 10)
    assert server.connections == 1  # one keep-alive connection for every scrape
    head = server.heads[0].decode()
    assert head.startswith("GET /metrics HTTP/1.1\r\n")
    assert f"Host: {server.address}\r\n" in head
    assert "Accept-Encoding: identity\r\n" in head


async def test_chunked_real_fixture() -> None:
    srv = await MetricsServer(FIXTURE, chunked=True).start()
    try:
        store = make_store(srv.address)
        async with running(Scraper(store, Metrics(), interval=0.01)) as sc:
            await asyncio.wait_for(sc.first_scrape_done.wait(), 2)
            m = store.endpoints()[0].metrics
            assert (m.block_size, m.num_blocks) == (128, 8192)
            await until(lambda: srv.requests >= 5)
        assert srv.connections == 1
        assert store.endpoints()[0].scrape_failures == 0
    finally:
        await srv.stop()


async def test_connection_close_responses_reconnect(server: MetricsServer) -> None:
    server.close_after_response = True
    store = make_store(server.address)
    async with running(Scraper(store, Metrics(), interval=0.01)):
        await until(lambda: server.requests >= 5)
        assert store.endpoints()[0].scrape_failures == 0
    assert server.connections >= 5


async def test_http_connection_directly(server: MetricsServer) -> None:
    conn = HTTPConnection("127.0.0.1", server.port, "/metrics")
    try:
        assert await conn.get() == page(3, 4, 0.5).encode()
        assert await conn.get() == page(3, 4, 0.5).encode()
        assert conn.connects == 1
        server.status = 503
        with pytest.raises(ScrapeError, match="503"):
            await conn.get()
        server.status = 200
        assert await conn.get() == page(3, 4, 0.5).encode()  # still in sync
        assert conn.connects == 1
    finally:
        conn.close()


async def test_aiohttp_server_interop() -> None:
    """A real HTTP server: fixed-length and streamed (chunked) responses."""

    async def fixed(_: web.Request) -> web.Response:
        return web.Response(text=page(2, 1, 0.25))

    async def streamed(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for line in page(6, 5).splitlines(keepends=True):
            await resp.write(line.encode())
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/metrics", fixed)
    app.router.add_get("/stream", streamed)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        for path, want in (("/metrics", (2, 1, 0.25)), ("/stream", (6, 5, 0.0))):
            store = make_store(f"127.0.0.1:{port}")
            ep = store.endpoints()[0]
            async with running(Scraper(store, Metrics(), interval=0.01, path=path)) as sc:
                await asyncio.wait_for(sc.first_scrape_done.wait(), 2)
                assert (ep.metrics.waiting, ep.metrics.running, ep.metrics.kv_usage) == want
                await asyncio.sleep(0.05)
                assert ep.scrape_failures == 0
                assert next(iter(sc._targets.values())).conn.connects == 1
    finally:
        await runner.cleanup()


async def test_hung_server_goes_unhealthy_and_recovers(
    server: MetricsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="picker.scrape")
    store = make_store(server.address)
    ep = store.endpoints()[0]
    # timeout > stale_after: the staleness monitor, not the timeout, must catch it.
    sc = Scraper(store, Metrics(), interval=0.01, timeout=5.0, stale_after=0.3)
    async with running(sc):
        await asyncio.wait_for(sc.first_scrape_done.wait(), 2)
        server.hang = True
        took = await until(lambda: not ep.healthy)
        # Well before the 5 s timeout would have fired (margin for a loaded CI box).
        assert took < 2.0
        server.hang = False
        # Cancel the hung response so the scraper's pending scrape fails fast and reconnects.
        for task in list(server._handlers):
            task.cancel()
        await until(lambda: ep.healthy, timeout=2)
        assert ep.scrape_failures == 0
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 2, msgs  # one per transition, none per scrape
    assert "unhealthy" in msgs[0] and "healthy again" in msgs[1]


async def test_timeouts_do_not_wedge(server: MetricsServer) -> None:
    server.hang = True
    store = make_store(server.address)
    ep = store.endpoints()[0]
    metrics = Metrics()
    sc = Scraper(store, metrics, interval=0.01, timeout=0.05, stale_after=10, max_failures=3)
    async with running(sc):
        await asyncio.wait_for(sc.first_scrape_done.wait(), 2)  # a timeout is an attempt
        await until(lambda: ep.scrape_failures >= 3)
        assert not ep.healthy
        assert server.connections >= 3  # each timeout drops the connection, then reconnects
    errors = metrics.registry.get_sample_value(
        "picker_scrape_errors_total", {"name": "p", "model_server_pod": server.address}
    )
    assert errors is not None and errors >= 3


async def test_dead_pod_comes_back_on_same_port() -> None:
    srv = await MetricsServer(page(1)).start()
    store = make_store(srv.address)
    ep = store.endpoints()[0]
    async with running(Scraper(store, Metrics(), interval=0.01, max_failures=2)):
        await until(lambda: ep.metrics.waiting == 1)
        await srv.stop()
        await until(lambda: not ep.healthy)
        srv = await MetricsServer(page(8), port=srv.port).start()
        took = await until(lambda: ep.healthy and ep.metrics.waiting == 8)
        assert took < 1.0  # backoff is capped
    await srv.stop()


async def test_first_scrape_done_with_unreachable_endpoint(server: MetricsServer) -> None:
    dead = f"127.0.0.1:{free_port()}"
    store = make_store(server.address, dead)
    async with running(Scraper(store, Metrics(), interval=0.01)) as sc:
        await asyncio.wait_for(sc.first_scrape_done.wait(), 2)
        assert store.by_address[dead].scrape_failures >= 1
        assert store.by_address[server.address].metrics.waiting == 3


async def test_first_scrape_done_with_no_endpoints() -> None:
    async with running(Scraper(Datastore([]), Metrics())) as sc:
        assert sc.first_scrape_done.is_set()


async def test_gauges(server: MetricsServer) -> None:
    dead = f"127.0.0.1:{free_port()}"
    store = make_store(server.address, dead)
    metrics = Metrics()
    store.by_address[server.address].inflight = 2
    sc = Scraper(store, metrics, interval=0.01, max_failures=1, gauge_interval=0.02)
    async with running(sc):
        await until(lambda: not store.by_address[dead].healthy)
        await asyncio.sleep(0.1)

        def value(metric: str, **labels: str) -> float | None:
            return metrics.registry.get_sample_value(metric, labels)

        pod = {"name": "p", "model_server_pod": server.address}
        assert value("inference_pool_per_pod_queue_size", **pod) == 3
        assert value("picker_pod_kv_cache_utilization", **pod) == 0.5
        assert value("picker_pod_running_requests", **pod) == 4
        assert value("picker_pod_inflight_requests", **pod) == 2
        assert value("picker_pod_ready", **pod) == 1
        assert value("picker_pod_ready", name="p", model_server_pod=dead) == 0
        age = value("picker_scrape_age_seconds", **pod)
        assert age is not None and age < 2.0
        assert value("inference_pool_ready_pods", name="p") == 1
        assert value("inference_pool_average_kv_cache_utilization", name="p") == 0.5
        assert value("inference_pool_average_queue_size", name="p") == 3
        assert value("inference_pool_average_running_requests", name="p") == 4


async def test_discovered_pods_label_their_series_by_pod(server: MetricsServer) -> None:
    """In cluster mode the per-pod series name the pod as the EPP does (<pod>-rank-<i>);
    picker_pod_info maps that name to the address, and both go with the pod."""
    store = make_store()
    metrics = Metrics()
    async with running(Scraper(store, metrics, interval=0.01, gauge_interval=0.02)) as sc:
        store.set_endpoints("p", [server.address], {server.address: ("vllm-a", "ns", 1)})
        await sc.sync()
        pod = {"name": "p", "model_server_pod": "vllm-a-rank-1"}
        get = metrics.registry.get_sample_value
        await until(lambda: get("inference_pool_per_pod_queue_size", pod) == 3)
        assert get("picker_pod_ready", pod) == 1
        info = {**pod, "address": server.address, "pod_name": "vllm-a", "namespace": "ns"}
        assert get("picker_pod_info", info) == 1
        by_address = {"name": "p", "model_server_pod": server.address}
        assert get("inference_pool_per_pod_queue_size", by_address) is None
        store.set_endpoints("p", [])
        await sc.sync()
        assert get("inference_pool_per_pod_queue_size", pod) is None
        assert get("picker_pod_info", info) is None


async def test_sync_adds_and_removes_endpoints(server: MetricsServer) -> None:
    store = make_store()
    metrics = Metrics()
    async with running(Scraper(store, metrics, interval=0.01, gauge_interval=0.02)) as sc:
        ep = Endpoint(address=server.address, pool="p")
        store.pools[0].endpoints.append(ep)
        store.by_address[ep.address] = ep
        await sc.sync()
        await until(lambda: ep.metrics.waiting == 3)
        await asyncio.sleep(0.05)
        pod = {"name": "p", "model_server_pod": server.address}
        assert metrics.registry.get_sample_value("picker_pod_ready", pod) == 1
        store.pools[0].endpoints.remove(ep)
        del store.by_address[ep.address]
        await sc.sync()
        assert not sc._targets
        assert metrics.registry.get_sample_value("picker_pod_ready", pod) is None
        before = server.requests
        await asyncio.sleep(0.05)
        assert server.requests == before  # no more scrapes


async def test_names_for_mapping_and_callable(server: MetricsServer) -> None:
    server.body = "custom_queue 5\nvllm:num_requests_waiting 1\ncustom_running 0\n"
    names = MetricNames(waiting="custom_queue", running="custom_running", kv_usage=())
    for names_for in ({"vllm": names}, lambda pool: names):
        store = make_store(server.address)
        async with running(Scraper(store, Metrics(), names_for=names_for)) as sc:
            await asyncio.wait_for(sc.first_scrape_done.wait(), 2)
            assert store.endpoints()[0].metrics.waiting == 5
    with pytest.raises(ValueError, match="tgi"):
        await Scraper(make_store(server.address, model_server="tgi"), Metrics()).start()


async def test_bad_page_counts_as_failure(server: MetricsServer) -> None:
    server.body = 'vllm:num_requests_waiting{a="unterminated} 1\n'
    store = make_store(server.address)
    ep = store.endpoints()[0]
    async with running(Scraper(store, Metrics(), interval=0.01)):
        await until(lambda: not ep.healthy)
        assert ep.metrics == EndpointMetrics()
        server.body = page(4)
        await until(lambda: ep.healthy and ep.metrics.waiting == 4)


UNRELATED = "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 4.2\n"
HTML = "<!DOCTYPE html><html><body><h1>Welcome to nginx!</h1></body></html>\n"


@pytest.mark.parametrize(
    "body",
    [random.Random(7).randbytes(3000), HTML, UNRELATED, ""],
    ids=["random-bytes", "html", "unrelated-metrics", "empty"],
)
async def test_unusable_page_is_a_failed_scrape(server: MetricsServer, body: str | bytes) -> None:
    """Driven one scrape at a time: counts are exact, no timing involved."""
    store = make_store(server.address)
    ep = store.endpoints()[0]
    metrics = Metrics()
    sc = Scraper(store, metrics, max_failures=3)
    conn = HTTPConnection("127.0.0.1", server.port, "/metrics")
    t = _Target(ep, sc._names(store.pools[0]), conn, time.monotonic())
    t.gauges = sc._gauge_children(ep)
    pod = {"name": "p", "model_server_pod": server.address}
    try:
        assert await sc._scrape_once(t) and ep.healthy and ep.metrics.waiting == 3
        server.body = body
        for n in (1, 2, 3):
            assert not await sc._scrape_once(t)
            assert ep.scrape_failures == n
            assert metrics.registry.get_sample_value("picker_scrape_errors_total", pod) == n
            assert ep.healthy == (n < 3)  # unready at max_failures in a row, not before
        assert ep.metrics.waiting == 3  # the last good snapshot is kept, not zeroed
        assert "not a usable metrics page" in t.last_error or "utf-8" in t.last_error
        server.body = FIXTURE  # a real vLLM page: ready again at once
        assert await sc._scrape_once(t)
        assert ep.healthy and ep.scrape_failures == 0
        assert (ep.metrics.waiting, ep.metrics.block_size) == (0, 128)
    finally:
        conn.close()
