"""A fake API server and a discovery controller on it, per test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import pytest

from bench.stack.fakekube import FakeKube
from picker.datalayer.datastore import Datastore, Endpoint, Pool
from picker.datalayer.discovery.client import KubeClient
from picker.datalayer.discovery.controller import Discovery
from picker.datalayer.discovery.kubeconfig import KubeConfig
from picker.datalayer.discovery.reflector import Backoff
from picker.datalayer.discovery.selector import parse

NS = "llm"
POOL = "vllm-pool"
APP = {"app": "vllm"}


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Waits for ``cond`` (a generous bound: a failure, never a speed assertion)."""
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


@pytest.fixture
async def kube() -> AsyncIterator[FakeKube]:
    fk = FakeKube()
    await fk.start()
    yield fk
    await fk.stop()


@dataclass
class Harness:
    kube: FakeKube
    datastore: Datastore
    discovery: Discovery
    changes: list[tuple[list[str], list[str]]] = field(default_factory=list)
    readiness: list[bool] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)

    def addresses(self) -> set[str]:
        return {e.address for e in self.datastore.pools[0].endpoints}

    async def settle(self, expected: set[str]) -> None:
        await until(lambda: self.addresses() == expected)


def make(
    kube: FakeKube,
    *,
    pool: str | None = POOL,
    selector: str = "",
    ports: tuple[int, ...] = (),
    client: KubeClient | None = None,
    **kw: object,
) -> Harness:
    ds = Datastore([Pool("pool", [])])
    h = Harness(kube, ds, None)  # type: ignore[arg-type]

    def listener(added: Sequence[Endpoint], removed: Sequence[Endpoint]) -> None:
        h.changes.append(([e.address for e in added], [e.address for e in removed]))

    async def sleep(delay: float) -> None:  # records backoff delays; waits a little
        h.delays.append(delay)
        await asyncio.sleep(min(delay, 0.01))

    ds.add_listener(listener)
    h.discovery = Discovery(
        ds,
        "pool",
        client or KubeClient(KubeConfig(kube.url)),
        NS,
        inference_pool=pool,
        selector=parse(selector) if selector else None,
        target_ports=ports,
        on_ready=h.readiness.append,
        sleep=sleep,
        backoff=lambda: Backoff(base=0.1, cap=2.0, floor=0.0),
        **kw,  # type: ignore[arg-type]
    )
    return h


@pytest.fixture
async def harness(kube: FakeKube) -> AsyncIterator[Harness]:
    kube.set_pool(NS, POOL, APP, (8000,))
    h = make(kube)
    yield h
    await h.discovery.stop()
