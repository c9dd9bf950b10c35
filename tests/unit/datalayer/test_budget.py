"""The observation budget: polls spaced by each pod's measured scrape cost."""

from __future__ import annotations

import asyncio

import pytest

from picker.datalayer.budget import ScrapeBudget
from picker.datalayer.scrape import Scraper
from picker.observability import Metrics
from tests.unit.datalayer.test_scrape import MetricsServer, make_store, running, server, until

__all__ = ["server"]  # the fixture, imported for these tests


def test_interval_follows_the_cost() -> None:
    b = ScrapeBudget(share=0.01, min_interval=0.05, max_interval=2.0)
    assert b.interval() == 0.05  # nothing measured yet: poll at the shortest interval
    b.observe(0.0, 0.001)  # 1 ms per scrape: half of 1 % is one scrape per 200 ms
    assert b.interval() == pytest.approx(0.2)
    b.observe(1.0, 0.010)  # moving average: 1 + 0.25 * 9 = 3.25 ms
    assert b.cost == pytest.approx(0.00325) and b.interval() == pytest.approx(0.65)
    for i in range(40):
        b.observe(2.0 + i, 0.010)
    assert b.interval() == pytest.approx(2.0, rel=1e-3)  # 10 ms (vLLM 0.32's page): 2 s
    assert ScrapeBudget(share=0.01).interval() == 0.05
    assert ScrapeBudget(share=0.0).interval() == 0.05  # budgeting off: fixed rate


def test_early_polls_stay_within_the_window() -> None:
    b = ScrapeBudget(share=0.01, window=10.0)
    b.observe(0.0, 0.02)  # 20 ms scrapes: 0.01 * 10 s = 100 ms, i.e. 5 per window
    polls = 1
    t = 0.0
    while t < 9.9:  # within the first window
        t += 0.1
        if b.may_poll_early(t):
            b.observe(t, 0.02)
            polls += 1
    assert polls == 5
    assert b.spent_share(10.0) == pytest.approx(0.01)
    assert b.may_poll_early(20.2)  # the window moved on


async def test_slow_pages_are_polled_less(server: MetricsServer) -> None:
    """A pod whose page takes 20 ms is polled every ~4 s under a 1 % budget (cap 5 s),
    not every 10 ms; one that answers at once keeps the short interval."""
    server.delay = 0.02
    fast = await MetricsServer(server.body).start()
    try:
        store = make_store(server.address, fast.address)
        metrics = Metrics()
        sc = Scraper(store, metrics, interval=0.01, budget=0.01, max_interval=5.0)
        async with running(sc):
            await until(lambda: fast.requests >= 20)
            assert server.requests == 1  # the slow pod: only its first scrape so far
            slow_t = sc._targets[server.address]
            assert slow_t.budget.interval() == pytest.approx(4.0, rel=0.3)
            sc.update_gauges()
            pod = {"name": "p", "model_server_pod": server.address}
            cost = metrics.registry.get_sample_value("picker_pod_scrape_seconds", pod)
            assert cost is not None and 0.02 <= cost < 0.05
    finally:
        await fast.stop()


async def test_uncertain_state_polls_early_within_budget(server: MetricsServer) -> None:
    server.delay = 0.02
    store = make_store(server.address)
    ep = store.endpoints()[0]
    sc = Scraper(store, Metrics(), interval=0.01, budget=0.01, max_interval=30.0, early_after=4)
    async with running(sc):
        await until(lambda: server.requests == 1 and ep.metrics.scraped_at > 0)
        await asyncio.sleep(0.2)
        assert server.requests == 1  # regular interval: ~4 s
        ep.sent_since_scrape = 4  # picker sent 4 requests since: the state is uncertain
        ep.inflight = 4
        await until(lambda: server.requests == 2 and ep.sent_since_scrape == 0, timeout=2)
        # Keep it uncertain: early polls continue only while the 10-s window has budget
        # (0.01 * 10 s = 100 ms of 20-ms scrapes: 5 in all, the first included).
        for _ in range(10):
            ep.sent_since_scrape = 4
            await asyncio.sleep(0.15)
        assert 3 <= server.requests <= 5
