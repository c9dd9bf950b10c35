"""A broken or hostile API server costs bounded memory: event lines, pages, pod count."""

from __future__ import annotations

import logging

import pytest

from bench.stack.fakekube import FakeKube
from picker.datalayer.discovery.client import KubeClient
from picker.datalayer.discovery.kubeconfig import KubeConfig
from tests.unit.datalayer.discovery.conftest import APP, NS, POOL, make, until


async def test_oversized_event_line_is_refused_then_relisted(kube: FakeKube) -> None:
    kube.set_pool(NS, POOL, APP, (8000,))
    kube.add_pod(NS, "a", "10.0.0.1", APP)
    h = make(kube, client=KubeClient(KubeConfig(kube.url), max_event_bytes=64 * 1024))
    try:
        await h.discovery.start()
        await until(h.discovery.synced.is_set)
        pods = h.discovery.pod_reflector
        assert pods is not None
        await until(lambda: len(kube.watches) == 2)
        # 1 MiB without a newline: refused once past 64 KiB, never buffered whole.
        kube.send_raw(b'{"type":"ADDED","object":{"metadata":{"name":"' + b"x" * (1 << 20))
        await until(lambda: pods.lists >= 2)
        assert "over the limit" in pods.last_error
        kube.add_pod(NS, "b", "10.0.0.2", APP)  # back in business after the re-list
        await h.settle({"10.0.0.1:8000", "10.0.0.2:8000"})
    finally:
        await h.discovery.stop()


@pytest.mark.parametrize(
    "line", [b"this is not json\n", b'{"type":"EXPLODED","object":{}}\n', b"[1,2]\n"]
)
async def test_malformed_event_relists(kube: FakeKube, line: bytes) -> None:
    kube.set_pool(NS, POOL, APP, (8000,))
    kube.add_pod(NS, "a", "10.0.0.1", APP)
    h = make(kube)
    try:
        await h.discovery.start()
        await until(h.discovery.synced.is_set)
        pods = h.discovery.pod_reflector
        assert pods is not None
        await until(lambda: len(kube.watches) == 2)
        kube.send_raw(line)
        await until(lambda: pods.lists >= 2)
        assert h.addresses() == {"10.0.0.1:8000"}
    finally:
        await h.discovery.stop()


async def test_oversized_list_page_is_refused(kube: FakeKube) -> None:
    kube.set_pool(NS, POOL, APP, (8000,))
    for i in range(20):
        kube.add_pod(NS, f"p{i}", f"10.0.0.{i}", APP)
    client = KubeClient(KubeConfig(kube.url), max_page_bytes=16 * 1024, page_size=500)
    h = make(kube, client=client)
    try:
        await h.discovery.start()
        await until(lambda: h.discovery.pod_reflector is not None
                    and h.discovery.pod_reflector.errors >= 2)  # fmt: skip
        assert not h.discovery.synced.is_set() and h.addresses() == set()
        assert "over the limit" in h.discovery.pod_reflector.last_error  # type: ignore[union-attr]
    finally:
        await h.discovery.stop()


async def test_pod_count_is_capped(kube: FakeKube, caplog: pytest.LogCaptureFixture) -> None:
    kube.set_pool(NS, POOL, APP, (8000,))
    for i in range(12):
        kube.add_pod(NS, f"p{i:02d}", f"10.0.0.{i}", APP)
    h = make(kube, max_pods=10)
    try:
        with caplog.at_level(logging.ERROR):
            await h.discovery.start()
            await until(h.discovery.synced.is_set)
        assert len(h.addresses()) == 10
        assert "2 objects over the limit of 10" in caplog.text
        kube.add_pod(NS, "p99", "10.0.0.99", APP)  # over the cap: ignored
        kube.delete_pod(NS, "p00")  # ... until a place frees up
        kube.add_pod(NS, "p98", "10.0.0.98", APP)
        await until(lambda: "10.0.0.98:8000" in h.addresses())
        assert "10.0.0.99:8000" not in h.addresses() and len(h.addresses()) == 10
    finally:
        await h.discovery.stop()
