"""Discovery against the fake API server: pods and the InferencePool come and go."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from bench.stack.fakekube import FakeKube
from picker.datalayer.discovery import client as client_module
from picker.datalayer.discovery.client import KubeClient
from picker.datalayer.discovery.kubeconfig import KubeConfig
from tests.unit.datalayer.discovery.conftest import APP, NS, POOL, Harness, make, until
from tests.unit.transport.certs import CA


async def start(h: Harness) -> None:
    await h.discovery.start()
    await until(h.discovery.synced.is_set)


async def test_initial_sync_ready_pods_only(kube: FakeKube, harness: Harness) -> None:
    kube.add_pod(NS, "a", "10.0.0.1", APP)
    kube.add_pod(NS, "b", "10.0.0.2", APP, ready=False)
    kube.add_pod(NS, "c", "10.0.0.3", {"app": "other"})
    kube.add_pod("elsewhere", "d", "10.0.0.4", APP)
    assert not harness.discovery.ready
    await start(harness)
    assert harness.addresses() == {"10.0.0.1:8000"}
    assert harness.readiness == [True]
    # The pod list asked the server for the pool's selector.
    pod_lists = [q for p, q in kube.requests if p.endswith("/pods") and "watch" not in q]
    assert pod_lists[0]["labelSelector"] == "app=vllm"


async def test_add_remove_unready_deleting(kube: FakeKube, harness: Harness) -> None:
    kube.add_pod(NS, "a", "10.0.0.1", APP)
    await start(harness)
    kube.add_pod(NS, "b", "10.0.0.2", APP)
    await harness.settle({"10.0.0.1:8000", "10.0.0.2:8000"})
    kept = harness.datastore.by_address["10.0.0.1:8000"]
    kube.set_pod(NS, "b", ready=False)
    await harness.settle({"10.0.0.1:8000"})
    kube.set_pod(NS, "b", ready=True)
    await harness.settle({"10.0.0.1:8000", "10.0.0.2:8000"})
    kube.set_pod(NS, "a", deleting=True)  # still Ready, but terminating
    await harness.settle({"10.0.0.2:8000"})
    assert kept.removed and not kept.healthy
    kube.delete_pod(NS, "a")
    kube.delete_pod(NS, "b")
    await harness.settle(set())
    assert harness.discovery.ready  # an empty pool is still a synced pool


async def test_label_change_leaves_and_joins(kube: FakeKube, harness: Harness) -> None:
    kube.add_pod(NS, "a", "10.0.0.1", APP)
    await start(harness)
    kube.set_pod(NS, "a", labels={"app": "retired"})  # the watch sends DELETED
    await harness.settle(set())
    kube.set_pod(NS, "a", labels=APP)  # ... and ADDED
    await harness.settle({"10.0.0.1:8000"})


async def test_active_ports_annotation(kube: FakeKube) -> None:
    kube.set_pool(NS, POOL, APP, (8000, 8001, 8002))
    kube.add_pod(NS, "a", "10.0.0.1", APP, annotations={"llm-d.ai/active-ports": "8001, 9999"})
    kube.add_pod(NS, "b", "10.0.0.2", APP)
    kube.add_pod(
        NS, "c", "10.0.0.3", APP, annotations={"inference.networking.k8s.io/active-ports": "8002"}
    )
    kube.add_pod(NS, "d", "fd00::4", APP, annotations={"llm-d.ai/active-ports": "7000"})
    h = make(kube)
    try:
        await start(h)
        b = {f"10.0.0.2:{p}" for p in (8000, 8001, 8002)}
        assert h.addresses() == {"10.0.0.1:8001", "10.0.0.3:8002"} | b
        kube.set_pod(NS, "d", annotations={})  # no annotation: every target port
        await h.settle({"10.0.0.1:8001", "10.0.0.3:8002"} | b | {"[fd00::4]:8000",
                       "[fd00::4]:8001", "[fd00::4]:8002"})  # fmt: skip
    finally:
        await h.discovery.stop()


async def test_selector_change_relists(kube: FakeKube, harness: Harness) -> None:
    kube.add_pod(NS, "a", "10.0.0.1", APP)
    kube.add_pod(NS, "b", "10.0.0.2", {"app": "vllm-v2"})
    await start(harness)
    lists = len([q for p, q in kube.requests if p.endswith("/pods") and "watch" not in q])
    kube.set_pool(NS, POOL, {"app": "vllm-v2"}, (8000,))
    await harness.settle({"10.0.0.2:8000"})
    relists = [q for p, q in kube.requests if p.endswith("/pods") and "watch" not in q]
    assert len(relists) == lists + 1 and relists[-1]["labelSelector"] == "app=vllm-v2"
    # The old watch is gone: changes to pods of the old selector no longer matter.
    kube.add_pod(NS, "c", "10.0.0.3", APP)
    kube.add_pod(NS, "d", "10.0.0.4", {"app": "vllm-v2"})
    await harness.settle({"10.0.0.2:8000", "10.0.0.4:8000"})


async def test_target_ports_change(kube: FakeKube, harness: Harness) -> None:
    kube.add_pod(NS, "a", "10.0.0.1", APP)
    await start(harness)
    kept = harness.datastore.by_address["10.0.0.1:8000"]
    kube.set_pool(NS, POOL, APP, (8000, 8001))
    await harness.settle({"10.0.0.1:8000", "10.0.0.1:8001"})
    assert harness.datastore.by_address["10.0.0.1:8000"] is kept  # its state is kept
    kube.set_pool(NS, POOL, APP, (8001,))
    await harness.settle({"10.0.0.1:8001"})
    assert kept.removed


async def test_pool_deleted_and_recreated(kube: FakeKube, harness: Harness) -> None:
    kube.add_pod(NS, "a", "10.0.0.1", APP)
    await start(harness)
    kube.delete_pool(NS, POOL)
    await harness.settle(set())
    await until(lambda: not harness.discovery.ready)
    kube.add_pod(NS, "b", "10.0.0.2", APP)  # no pool: not watched, not routed
    kube.set_pool(NS, POOL, APP, (8000,))
    await harness.settle({"10.0.0.1:8000", "10.0.0.2:8000"})
    await until(lambda: harness.discovery.ready)
    kube.set_pool(NS, POOL, APP, (8000,), deleting=True)  # being deleted counts as gone
    await harness.settle(set())
    assert harness.readiness == [True, False, True, False]


async def test_missing_pool_is_not_ready(kube: FakeKube) -> None:
    kube.add_pod(NS, "a", "10.0.0.1", APP)
    h = make(kube, pool="not-there")
    try:
        await h.discovery.start()
        await until(lambda: h.discovery.pool_reflector is not None
                    and h.discovery.pool_reflector.synced.is_set())  # fmt: skip
        assert not h.discovery.synced.is_set() and h.addresses() == set()
        kube.set_pool(NS, "not-there", APP, (8000,))
        await h.settle({"10.0.0.1:8000"})
        assert h.discovery.synced.is_set() and h.discovery.ready
    finally:
        await h.discovery.stop()


async def test_selector_only_mode(kube: FakeKube) -> None:
    kube.add_pod(NS, "a", "10.0.0.1", {"app": "vllm", "tier": "gpu"})
    kube.add_pod(NS, "b", "10.0.0.2", {"app": "vllm", "tier": "cpu"})
    h = make(kube, pool=None, selector="app=vllm,tier in (gpu,tpu)", ports=(8000, 8001))
    try:
        await start(h)
        assert h.addresses() == {"10.0.0.1:8000", "10.0.0.1:8001"}
        assert not any("inferencepools" in p for p, _ in kube.requests)
        kube.add_pod(NS, "c", "10.0.0.3", {"app": "vllm", "tier": "tpu"})
        await h.settle({"10.0.0.1:8000", "10.0.0.1:8001", "10.0.0.3:8000", "10.0.0.3:8001"})
    finally:
        await h.discovery.stop()


async def test_bookmarks_advance_the_version(kube: FakeKube, harness: Harness) -> None:
    kube.add_pod(NS, "a", "10.0.0.1", APP)
    await start(harness)
    kube.add_pod("elsewhere", "x", "10.9.9.9", APP)  # moves the version, not our watch
    pods = harness.discovery.pod_reflector
    assert pods is not None
    await until(lambda: bool(kube.watches) and len(kube.watches) == 2)
    before = pods.version
    kube.bookmark()
    await until(lambda: pods.version == str(kube.rv))
    assert pods.version != before
    # Compacted history + a dropped watch: the bookmark lets it resume without 410.
    kube.compact()
    kube.drop_watches()
    kube.add_pod(NS, "b", "10.0.0.2", APP)
    await harness.settle({"10.0.0.1:8000", "10.0.0.2:8000"})
    assert pods.lists == 1 and pods.watches >= 2


@pytest.mark.parametrize("as_http", [False, True])
async def test_gone_relists(kube: FakeKube, as_http: bool) -> None:
    kube.gone_as_http = as_http
    kube.set_pool(NS, POOL, APP, (8000,))
    kube.add_pod(NS, "a", "10.0.0.1", APP)
    h = make(kube)
    try:
        await start(h)
        pods = h.discovery.pod_reflector
        assert pods is not None
        await until(lambda: len(kube.watches) == 2)
        kube.drop_watches()
        # While the watch is down, pods change and the history is compacted away.
        kube.delete_pod(NS, "a")
        kube.add_pod(NS, "b", "10.0.0.2", APP)
        kube.compact()
        await h.settle({"10.0.0.2:8000"})
        assert pods.lists == 2  # 410 Gone → a new list
        kube.add_pod(NS, "c", "10.0.0.3", APP)  # and the watch goes on from it
        await h.settle({"10.0.0.2:8000", "10.0.0.3:8000"})
    finally:
        await h.discovery.stop()


async def test_errors_back_off_and_recover(kube: FakeKube, harness: Harness) -> None:
    kube.add_pod(NS, "a", "10.0.0.1", APP)
    kube.fail_next(500, 503, 500, 429)  # the first requests fail
    await start(harness)
    assert harness.addresses() == {"10.0.0.1:8000"}
    d = harness.delays
    assert len(d) == 4
    # Full jitter: delay n is within [0, base * 2**n] (base 0.1 here).
    assert all(0 <= x <= 0.1 * 2**i for i, x in enumerate(d))
    # Dropped connections and failing re-watches back off too; state converges.
    await until(lambda: len(kube.watches) == 2)
    kube.fail_next(500, 500, 500)
    kube.drop_watches()
    kube.add_pod(NS, "b", "10.0.0.2", APP)
    await harness.settle({"10.0.0.1:8000", "10.0.0.2:8000"})
    assert len(d) >= 6


async def test_backoff_grows_while_failing(kube: FakeKube, harness: Harness) -> None:
    from picker.datalayer.discovery.reflector import Backoff

    b = Backoff(base=0.1, cap=1.0, floor=0.0)
    ceilings = []
    for _ in range(8):
        ceilings.append(min(1.0, 0.1 * 2**b.failures))
        assert b.next() <= ceilings[-1]
    assert ceilings == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]
    b.reset()
    assert b.failures == 0


async def test_unauthorized_is_retried_not_fatal(kube: FakeKube) -> None:
    kube.token = "s3cret"
    kube.set_pool(NS, POOL, APP, (8000,))
    kube.add_pod(NS, "a", "10.0.0.1", APP)
    bad = make(kube)
    good = make(kube, client=KubeClient(KubeConfig(kube.url, token="s3cret")))
    try:
        await bad.discovery.start()
        await until(lambda: len(bad.delays) >= 2)
        assert not bad.discovery.synced.is_set()
        await start(good)
        assert good.addresses() == {"10.0.0.1:8000"}
    finally:
        await bad.discovery.stop()
        await good.discovery.stop()


async def test_pagination_lists_every_page(kube: FakeKube) -> None:
    kube.set_pool(NS, POOL, APP, (8000,))
    for i in range(25):
        kube.add_pod(NS, f"p{i:02d}", f"10.0.1.{i}", APP)
    client = KubeClient(KubeConfig(kube.url), page_size=10)
    h = make(kube, client=client)
    try:
        await start(h)
        assert len(h.addresses()) == 25
        pages = [q for p, q in kube.requests if p.endswith("/pods") and "watch" not in q]
        assert len(pages) == 3 and "continue" in pages[2]
    finally:
        await h.discovery.stop()


async def test_selector_switch_never_empties_the_pool(kube: FakeKube, harness: Harness) -> None:
    kube.add_pod(NS, "a", "10.0.0.1", APP)
    kube.add_pod(NS, "b", "10.0.0.2", {"app": "vllm-v2"})
    await start(harness)
    kube.fail_next(*[500] * 10_000)  # the new selector's list fails until cleared
    kube.set_pool(NS, POOL, {"app": "vllm-v2"}, (8000,))
    await until(lambda: len(harness.delays) >= 2)
    assert harness.addresses() == {"10.0.0.1:8000"}  # the old pods serve meanwhile
    kube.delete_pod(NS, "a")  # ... and are still watched
    await harness.settle(set())
    kube.add_pod(NS, "a", "10.0.0.1", APP)
    await harness.settle({"10.0.0.1:8000"})
    kube.failures.clear()
    await harness.settle({"10.0.0.2:8000"})  # then one switch, old out and new in
    assert harness.changes[-1] == (["10.0.0.2:8000"], ["10.0.0.1:8000"])


async def test_https_with_ca_and_a_rotating_token_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = CA()
    cert, key = ca.write(tmp_path / "tls", "kube-apiserver")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    (tmp_path / "ca.crt").write_bytes(ca.pem)
    (tmp_path / "token").write_text("first\n")
    fk = FakeKube(token="first")
    await fk.start(ssl_context=server_ctx)
    monkeypatch.setattr(client_module, "TOKEN_REFRESH", 0.0)  # re-read on every request
    fk.set_pool(NS, POOL, APP, (8000,))
    fk.add_pod(NS, "a", "10.0.0.1", APP)
    conf = KubeConfig(fk.url, token_file=str(tmp_path / "token"), ca_file=str(tmp_path / "ca.crt"))
    h = make(fk, client=KubeClient(conf))
    untrusted = make(fk, client=KubeClient(KubeConfig(fk.url, token="first")))
    try:
        assert fk.url.startswith("https://")
        await start(h)
        assert h.addresses() == {"10.0.0.1:8000"}
        # The token rotates: the file changes, the server accepts only the new one.
        (tmp_path / "token").write_text("second\n")
        fk.token = "second"
        await until(lambda: len(fk.watches) == 2)
        fk.drop_watches()
        fk.add_pod(NS, "b", "10.0.0.2", APP)
        await h.settle({"10.0.0.1:8000", "10.0.0.2:8000"})
        # A client that does not trust the server's CA never syncs.
        await untrusted.discovery.start()
        await until(lambda: len(untrusted.delays) >= 2)
        assert not untrusted.discovery.synced.is_set()
        pool = untrusted.discovery.pool_reflector
        assert pool is not None and "CERTIFICATE_VERIFY_FAILED" in pool.last_error
    finally:
        await h.discovery.stop()
        await untrusted.discovery.stop()
        await fk.stop()
