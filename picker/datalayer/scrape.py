"""Background scraping of model-server ``/metrics`` into the datastore.

One asyncio task per endpoint polls ``GET /metrics`` over its own persistent HTTP/1.1
keep-alive connection (``picker.datalayer.http``), as often as the observation budget
allows (``picker.datalayer.budget``: each pod's measured scrape cost over the budget
share, between ``interval`` and ``max_interval``; earlier when many requests were sent
to the pod since its last scrape and the budget has room). Each success publishes
a new immutable ``EndpointMetrics`` snapshot on the endpoint and resets
``sent_since_scrape``; the hot path only ever reads whole snapshots.

An endpoint becomes unhealthy (not routable) when

- ``max_failures`` consecutive scrapes fail (refused, reset, timeout, non-200, or a bad
  page: not UTF-8, a malformed wanted line, or a required metric family missing, see
  ``metrics_text``: a 200 with an HTML page or random bytes is a failure, not zero load), or
- it has had no successful scrape for ``stale_after`` seconds (counted from the scraper
  starting on it when it never answered). A separate monitor task checks this several
  times per ``stale_after``, so a hung server is caught even while a scrape is still
  waiting for its ``timeout``;

and healthy again at its next successful scrape. Failing endpoints are retried with a
short capped backoff, so a pod that comes back is picked up within ~0.5 s. Transitions
(healthy ↔ unhealthy) are logged at WARNING; individual scrapes never are.

The monitor task also refreshes the per-pod and per-pool Prometheus gauges every
``gauge_interval`` seconds (pool averages are over ready pods).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from picker.config import Config
from picker.datalayer.budget import ScrapeBudget
from picker.datalayer.datastore import Datastore, Endpoint, Pool
from picker.datalayer.http import HTTPConnection
from picker.datalayer.metrics_text import MetricNames, parse_metrics
from picker.datalayer.model_servers import MODEL_SERVERS, names_from_config
from picker.observability import Metrics

log = logging.getLogger(__name__)

NamesFor = Mapping[str, MetricNames] | Callable[[Pool], MetricNames]

MAX_BACKOFF = 0.5  # longest pause between attempts on a failing endpoint (unless interval)


@dataclass(eq=False)
class _Target:
    """Scraper-side state of one endpoint."""

    ep: Endpoint
    names: MetricNames
    conn: HTTPConnection
    started: float
    budget: ScrapeBudget = field(default_factory=ScrapeBudget)
    last_ok: float = 0.0  # monotonic time of the last successful scrape
    last_start: float = 0.0  # monotonic time the last scrape started
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # poll early
    attempted: bool = False
    last_error: str = ""
    task: asyncio.Task[None] | None = None
    gauges: tuple[Any, ...] = field(default_factory=tuple)


class Scraper:
    """Keeps every endpoint's ``metrics`` and ``healthy`` current; see the module doc.

    ``stale_after``: seconds without a successful scrape after which an endpoint is
    marked unhealthy, whatever its failure count (bounds how long a hung pod stays
    routable). ``names_for``: the metric names of a pool, as a mapping from
    ``pool.model_server`` or a callable taking the ``Pool``; default ``MODEL_SERVERS``.
    ``first_scrape_done`` is set once every endpoint has had one scrape attempt
    (successful or not), for readiness.
    """

    def __init__(
        self,
        datastore: Datastore,
        metrics: Metrics,
        *,
        interval: float = 0.05,
        timeout: float = 1.0,
        stale_after: float = 1.0,
        max_failures: int = 3,
        path: str = "/metrics",
        names_for: NamesFor | None = None,
        gauge_interval: float = 1.0,
        budget: float = 0.0,
        max_interval: float = 2.0,
        early_after: int = 8,
    ) -> None:
        if interval <= 0 or timeout <= 0 or stale_after <= 0 or max_failures < 1:
            raise ValueError("interval, timeout, stale_after must be > 0; max_failures >= 1")
        self.datastore = datastore
        self.metrics = metrics
        self.interval = interval
        self.timeout = timeout
        self.stale_after = stale_after
        self.max_failures = max_failures
        self.path = path
        self.gauge_interval = gauge_interval
        self.budget = budget
        self._share = budget  # this replica's part of it (``share_budget``)
        self.max_interval = max(max_interval, interval)
        self.early_after = early_after
        self._names_for: NamesFor = names_for if names_for is not None else MODEL_SERVERS
        self.first_scrape_done = asyncio.Event()
        self._targets: dict[str, _Target] = {}
        self._monitor: asyncio.Task[None] | None = None
        self._sync_lock = asyncio.Lock()  # one sync at a time: each sees the last one's end

    @classmethod
    def from_config(cls, config: Config, datastore: Datastore, metrics: Metrics) -> Scraper:
        """A scraper with the config's ``scrape`` settings and per-pool metric names."""
        overrides = {p.name: p.metrics for p in config.pools}
        if config.discovery.enabled:
            overrides[config.discovery.datastore_pool] = config.discovery.metrics
        s = config.scrape
        return cls(
            datastore,
            metrics,
            interval=s.interval,
            timeout=s.timeout,
            stale_after=s.stale_after,
            max_failures=s.max_failures,
            path=s.path,
            names_for=lambda pool: names_from_config(pool.model_server, overrides.get(pool.name)),
            budget=s.budget,
            max_interval=s.max_interval,
            early_after=s.early_after,
        )

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Starts scraping every endpoint in the datastore, and the monitor task."""
        await self.sync()
        if self._monitor is None:
            self._monitor = asyncio.create_task(self._monitor_loop(), name="scrape-monitor")

    @property
    def running(self) -> bool:
        """Between ``start`` and ``stop``."""
        return self._monitor is not None

    async def stop(self) -> None:
        tasks = [t.task for t in self._targets.values() if t.task is not None]
        if self._monitor is not None:
            tasks.append(self._monitor)
            self._monitor = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for t in self._targets.values():
            t.conn.close()
        self._targets.clear()  # a later start() begins afresh

    async def sync(self) -> None:
        """Starts tasks for endpoints new to the datastore and cancels removed ones.

        Safe to call at any time, also concurrently (calls run one after the other), e.g.
        from a datastore listener whenever discovery adds or removes endpoints.
        """
        async with self._sync_lock:
            await self._sync()

    async def _sync(self) -> None:
        current = {ep.address: ep for ep in self.datastore.endpoints()}
        pools = {p.name: p for p in self.datastore.pools}
        removed = [t for addr, t in self._targets.items() if current.get(addr) is not t.ep]
        for t in removed:
            del self._targets[t.ep.address]
            if t.task is not None:
                t.task.cancel()
        await asyncio.gather(*(t.task for t in removed if t.task), return_exceptions=True)
        for t in removed:
            t.conn.close()
            self._remove_gauges(t)
        # Resolve every new endpoint's names first, so a bad pool starts nothing.
        new = [
            (ep, self._names(pools.get(ep.pool) or Pool(ep.pool, [])))
            for addr, ep in current.items()
            if addr not in self._targets
        ]
        for ep, names in new:
            t = _Target(
                ep=ep,
                names=names,
                conn=HTTPConnection(ep.host, ep.port, self.path),
                started=time.monotonic(),
                budget=ScrapeBudget(self._share, self.interval, self.max_interval),
                gauges=self._gauge_children(ep),
            )
            t.task = asyncio.create_task(self._run(t), name=f"scrape {ep.address}")
            self._targets[ep.address] = t
        self._check_first_done()

    def share_budget(self, replicas: int) -> None:
        """``replicas`` pickers poll the same pods (active-active, ``peers``): the
        observation budget is the pods', so each takes ``budget / replicas`` of it."""
        self._share = self.budget / max(1, replicas)
        for t in self._targets.values():
            t.budget.share = self._share

    def _names(self, pool: Pool) -> MetricNames:
        if callable(self._names_for):
            return self._names_for(pool)
        try:
            return self._names_for[pool.model_server]
        except KeyError:
            raise ValueError(
                f"pool {pool.name!r}: no metric names for model_server {pool.model_server!r}"
            ) from None

    # --- scraping ---------------------------------------------------------------------

    async def _run(self, t: _Target) -> None:
        try:
            while True:
                ok = await self._scrape_once(t)
                if not t.attempted:
                    t.attempted = True
                    self._check_first_done()
                now = time.monotonic()
                if ok:  # the budget's rate, counted from the last start
                    next_at = max(t.last_start + t.budget.interval(), now)
                else:  # capped exponential backoff
                    exp = min(t.ep.scrape_failures - 1, 16)
                    next_at = now + min(self.interval * 2**exp, max(self.interval, MAX_BACKOFF))
                t.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(t.wake.wait(), next_at - now)
        finally:
            t.conn.close()

    async def _scrape_once(self, t: _Target) -> bool:
        t.last_start = start = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                body = await t.conn.get()
            now = time.monotonic()
            t.budget.observe(start, now - start)
            snap = parse_metrics(body.decode("utf-8"), t.names, now)  # strict: text is UTF-8
        except Exception as e:  # refused, reset, timeout, HTTP error, malformed page
            t.conn.close()
            self._on_failure(t, e)
            return False
        ep = t.ep
        ep.metrics = snap
        ep.sent_since_scrape = 0
        ep.scrape_failures = 0
        t.last_ok = now
        if not ep.healthy and not ep.removed:
            ep.healthy = True
            log.warning("endpoint %s (pool %s) is healthy again", ep.address, ep.pool)
        return True

    def _on_failure(self, t: _Target, e: Exception) -> None:
        ep = t.ep
        ep.scrape_failures += 1
        t.last_error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        if t.gauges:
            t.gauges[-1].inc()  # scrape_errors
        if ep.scrape_failures >= self.max_failures:
            self._mark_unhealthy(t, f"{ep.scrape_failures} failed scrapes, last {t.last_error}")

    def _mark_unhealthy(self, t: _Target, reason: str) -> None:
        if t.ep.healthy:
            t.ep.healthy = False
            log.warning("endpoint %s (pool %s) is unhealthy: %s", t.ep.address, t.ep.pool, reason)

    def _check_first_done(self) -> None:
        if not self.first_scrape_done.is_set() and all(t.attempted for t in self._targets.values()):
            self.first_scrape_done.set()

    # --- staleness and gauges -----------------------------------------------------------

    async def _monitor_loop(self) -> None:
        tick = min(max(self.stale_after / 4, 0.005), 0.1)
        next_gauges = 0.0
        while True:
            now = time.monotonic()
            for t in self._targets.values():
                ep = t.ep
                if not ep.healthy:
                    continue
                # A pod is stale past stale_after, or past three of its own poll
                # intervals when the budget spaces its polls further apart than that.
                age = now - (t.last_ok or t.started)
                if age > max(self.stale_after, 3 * t.budget.interval()):
                    why = f"; last error {t.last_error}" if t.last_error else ""
                    self._mark_unhealthy(t, f"no successful scrape for {age:.1f}s{why}")
                elif (
                    ep.sent_since_scrape >= self.early_after
                    and now - t.last_start >= self.interval
                    and not t.wake.is_set()
                    and t.budget.may_poll_early(now)
                ):
                    t.wake.set()  # uncertain: many requests sent since the last scrape
            if now >= next_gauges:
                self.update_gauges()
                next_gauges = now + self.gauge_interval
            await asyncio.sleep(tick)

    def _gauge_children(self, ep: Endpoint) -> tuple[Any, ...]:
        m = self.metrics
        gauges: tuple[Any, ...] = (m.pod_queue, m.pod_kv, m.pod_running, m.pod_inflight)
        gauges += (m.pod_ready, m.scrape_age, m.scrape_cost, m.scrape_interval)
        gauges += (m.scrape_share, m.scrape_errors)
        name = ep.metric_name
        m.pod_info.labels(ep.pool, name, ep.address, ep.pod_name, ep.namespace).set(1)
        return tuple(g.labels(ep.pool, name) for g in gauges)

    def _remove_gauges(self, t: _Target) -> None:
        m = self.metrics
        ep, name = t.ep, t.ep.metric_name
        for g in (m.pod_queue, m.pod_kv, m.pod_running, m.pod_inflight, m.pod_ready,
                  m.scrape_cost, m.scrape_interval, m.scrape_share):  # fmt: skip
            with contextlib.suppress(KeyError):
                g.remove(ep.pool, name)
        for c in (m.scrape_age, m.scrape_errors):
            with contextlib.suppress(KeyError):
                c.remove(ep.pool, name)
        with contextlib.suppress(KeyError):
            m.pod_info.remove(ep.pool, name, ep.address, ep.pod_name, ep.namespace)
        if not any(o.ep.pool == t.ep.pool for o in self._targets.values()):
            for g in (m.pool_ready_pods, m.pool_avg_kv, m.pool_avg_queue, m.pool_avg_running):
                with contextlib.suppress(KeyError):
                    g.remove(t.ep.pool)

    def update_gauges(self) -> None:
        """Sets the per-pod gauges and the pool averages over ready pods (cheap; ~1/s)."""
        now = time.monotonic()
        by_pool: dict[str, list[Endpoint]] = {}
        for t in self._targets.values():
            ep, m = t.ep, t.ep.metrics
            queue, kv, running, inflight, ready, age, cost, interval, share, _ = t.gauges
            cost.set(t.budget.cost)
            interval.set(t.budget.interval())
            share.set(t.budget.spent_share(now))
            queue.set(m.waiting)
            kv.set(m.kv_usage)
            running.set(m.running)
            inflight.set(ep.inflight)
            ready.set(1 if ep.healthy else 0)
            age.set(now - (t.last_ok or t.started))
            pool = by_pool.setdefault(ep.pool, [])
            if ep.healthy:
                pool.append(ep)
        pm = self.metrics
        for name, ready_eps in by_pool.items():
            n = len(ready_eps)
            pm.pool_ready_pods.labels(name).set(n)
            pm.pool_avg_kv.labels(name).set(_mean([e.metrics.kv_usage for e in ready_eps]))
            pm.pool_avg_queue.labels(name).set(_mean([e.metrics.waiting for e in ready_eps]))
            pm.pool_avg_running.labels(name).set(_mean([e.metrics.running for e in ready_eps]))


def _mean(values: list[float] | list[int]) -> float:
    return math.fsum(values) / len(values) if values else 0.0
