"""End to end in cluster mode: real Envoy + picker (subprocess, TLS) + simulated pods, with
picker's endpoints coming from the fake Kubernetes API server while traffic flows.

Pods live on loopback addresses 127.0.0.2-7, each with the same two ports (as pod IPs
with the pool's target ports). The test adds, removes and un-readies pods and changes
the pool's targetPorts and selector under steady traffic through Envoy, and checks each
response's ``x-sim-pod``: no request sent after picker observed a change goes to a pod
the change took away, and a pod the change brought in serves within a second.

"Observed" is read off picker's own metrics: the per-pod series of an endpoint exist
exactly while picker scrapes it, and picker adds and drops them after it changed its
datastore, so the moment they appear or vanish is an upper bound on when routing knew.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from bench.stack.fakekube import FakeKube
from bench.stack.gateway import MODEL, Stack
from bench.stack.procs import free_port

NS = "llm"
POOL = "vllm-pool"
V1 = {"app": "vllm"}
V2 = {"app": "vllm-v2"}


class KubeThread:
    """The fake API server on its own loop and thread (the stack's setup blocks)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.fake = FakeKube(bookmark_interval=1.0)
        self.url = self._run(self.fake.start())

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def do(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> float:
        """Runs a state change on the server's loop; returns when it was made."""

        async def call() -> float:
            fn(*args, **kw)
            return time.monotonic()

        result: float = self._run(call())
        return result

    def close(self) -> None:
        self._run(self.fake.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@dataclass
class Sent:
    start: float
    pod: str
    status: int


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Stack, KubeThread, list[int]]]:
    ports = [free_port(), free_port()]
    hosts = [f"127.0.0.{i}" for i in range(2, 8)]
    kube = KubeThread()
    stack = Stack(
        pod_addresses=[f"{h}:{p}" for h in hosts for p in ports],
        picker_config={
            "pools": [],
            "discovery": {"pool_name": POOL, "pool_namespace": NS, "api_server": kube.url},
        },
        tls=True,
    )
    try:
        argv = [sys.executable, "-m", "bench.sim", "--time-scale", "20", "--model", MODEL]
        argv += ["--addresses", ",".join(stack.pod_addresses)]
        stack.procs.start("sim", argv, ready="ready")
        kube.do(kube.fake.set_pool, NS, POOL, V1, (ports[0],))
        for name, host in zip("abc", hosts[:3], strict=True):
            kube.do(kube.fake.add_pod, NS, name, host, V1)
        kube.do(kube.fake.add_pod, NS, "d", hosts[3], V2)
        kube.do(kube.fake.add_pod, NS, "e", hosts[4], V1, ready=False)
        stack.start()
        yield stack, kube, ports
    finally:
        stack.procs.close()
        kube.close()


async def scraped(session: aiohttp.ClientSession, stack: Stack) -> set[str]:
    """The endpoints picker scrapes now (their per-pod series exist)."""
    url = f"http://127.0.0.1:{stack.picker_metrics_port}/metrics"
    async with session.get(url) as r:
        text = await r.text()
    out = set()
    for line in text.splitlines():
        # Per-pod series are labelled <pod>-rank-<i> in cluster mode; picker_pod_info
        # maps that label to the address.
        if line.startswith("picker_pod_info{"):
            out.add(line.split('address="', 1)[1].split('"', 1)[0])
    return out


async def observed(
    session: aiohttp.ClientSession, stack: Stack, cond: Callable[[set[str]], bool]
) -> float:
    """The first time picker's endpoints satisfy ``cond`` (polled every 10 ms)."""
    async with asyncio.timeout(10):
        while not cond(await scraped(session, stack)):
            await asyncio.sleep(0.01)
    return time.monotonic()


async def traffic(
    session: aiohttp.ClientSession, url: str, log: list[Sent], stop: asyncio.Event, worker: int
) -> None:
    """Closed-loop requests with distinct prompts (so load, not prefix affinity, decides)."""
    i = 0
    while not stop.is_set():
        i += 1
        body = {"model": MODEL, "prompt": f"worker {worker} request {i}", "max_tokens": 2}
        start = time.monotonic()
        try:
            async with session.post(url + "/v1/completions", json=body) as r:
                await r.read()
                log.append(Sent(start, r.headers.get("x-sim-pod", ""), r.status))
        except aiohttp.ClientError as e:
            log.append(Sent(start, repr(e), 0))


async def test_pods_come_and_go_under_traffic(
    cluster: tuple[Stack, KubeThread, list[int]],
) -> None:
    stack, kube, (p1, p2) = cluster
    fk = kube.fake
    a, b, c, d, e, f = (f"127.0.0.{i}" for i in range(2, 8))
    log: list[Sent] = []
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:

        async def step(change: Callable[[], float], gone: set[str], new: set[str]) -> None:
            """Makes a change; checks that ``gone`` gets nothing once picker observed it
            and each of ``new`` serves a request sent within a second of the change."""
            made = change()
            t_seen = await observed(session, stack, lambda s: not (s & gone) and new <= s)
            await asyncio.sleep(1.2)
            late = [r for r in log if r.start > t_seen and r.pod in gone]
            assert not late, f"routed to {late[0].pod} after picker dropped it"
            for pod in new:
                served = [r for r in log if r.pod == pod and r.start >= made]
                assert served, f"{pod} took no traffic"
                assert served[0].start - made < 1.0, f"{pod} took traffic only after 1 s"

        start = await observed(session, stack, lambda s: s == {f"{x}:{p1}" for x in (a, b, c)})
        workers = [asyncio.create_task(traffic(session, stack.url, log, stop, w)) for w in range(4)]
        try:
            await asyncio.sleep(0.5)
            await step(lambda: kube.do(fk.add_pod, NS, "f", f, V1), set(), {f"{f}:{p1}"})
            await step(lambda: kube.do(fk.set_pod, NS, "b", ready=False), {f"{b}:{p1}"}, set())
            await step(lambda: kube.do(fk.delete_pod, NS, "c"), {f"{c}:{p1}"}, set())
            await step(lambda: kube.do(fk.set_pod, NS, "e", ready=True), set(), {f"{e}:{p1}"})
            await step(  # a second target port: every pod serves on both
                lambda: kube.do(fk.set_pool, NS, POOL, V1, (p1, p2)),
                set(),
                {f"{x}:{p2}" for x in (a, e, f)},
            )
            await step(  # the first port goes
                lambda: kube.do(fk.set_pool, NS, POOL, V1, (p2,)),
                {f"{x}:{p1}" for x in (a, e, f)},
                set(),
            )
            await step(  # another selector: other pods
                lambda: kube.do(fk.set_pool, NS, POOL, V2, (p2,)),
                {f"{x}:{p2}" for x in (a, e, f)},
                {f"{d}:{p2}"},
            )
        finally:
            stop.set()
            await asyncio.gather(*workers)
    # Every request succeeded, also those in flight to a pod while it was taken away.
    assert {r.status for r in log} == {200}, [r for r in log if r.status != 200][:5]
    ever = {r.pod for r in log if r.start > start}
    assert ever == {f"{x}:{p1}" for x in (a, b, c, e, f)} | {f"{x}:{p2}" for x in (a, d, e, f)}
    assert len(log) > 200
