"""Accounting: what picker has sent where, and how each request ended.

Per endpoint, picker's own counts fill the gap between two scrapes: ``inflight``
(requests sent and not finished), ``sent_since_scrape`` (reset by the scraper) and
``inflight_tokens`` (their estimated uncached prompt tokens). A request is charged to
its primary when routed, moved when the proxy reports a fallback served it, and released
exactly once when its response ends or its stream is reset. Every request, routed or
answered by picker, ends in exactly one ``picker_requests_total`` outcome.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from picker.datalayer.datastore import Endpoint, Pool
from picker.observability import Metrics
from picker.request.errors import RequestError
from picker.request.types import InferenceRequest


@dataclass(slots=True)
class Rejected:
    """An answer picker gives itself: HTTP status, JSON error body, extra headers."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class Routed:
    """A routed request, from the decision until its response ends."""

    request: InferenceRequest
    pool: Pool
    endpoints: list[Endpoint]  # primary first, then fallbacks
    started: float
    served: Endpoint | None = None  # the endpoint charged (the primary, or who served)
    tokens: int = 0  # estimated uncached prompt tokens charged to ``served``
    finished: bool = False

    @property
    def destination(self) -> str:
        """The ``x-gateway-destination-endpoint`` value: primary, then fallbacks."""
        return ",".join(e.address for e in self.endpoints)


class Accounting:
    def __init__(self, metrics: Metrics, retry_after_seconds: int) -> None:
        self.metrics = metrics
        self._retry_after = (("retry-after", str(retry_after_seconds)),)

    def reject(self, model: str, err: RequestError, outcome: str) -> Rejected:
        """Counts an answer picker gives itself and builds it. ``model`` must be a model
        picker serves (or ""), never an arbitrary client string: it is a metric label."""
        m = self.metrics
        m.child(m.outcome_total, model, outcome, str(err.status)).inc()
        m.child(m.request_error_total, model, model, err.code or outcome).inc()
        headers = self._retry_after if err.status == 429 else ()
        return Rejected(err.status, err.body(), headers)

    def charge(
        self,
        request: InferenceRequest,
        pool: Pool,
        ranked: list[Endpoint],
        started: float,
        body_len: int,
    ) -> Routed:
        """Charges the primary with the request; the result travels with the stream."""
        primary = ranked[0]
        tokens = request.uncached_tokens(primary.address)
        primary.inflight += 1
        primary.sent_since_scrape += 1
        primary.inflight_tokens += tokens
        m = self.metrics
        model, target, priority = request.labels
        m.child(m.request_total, model, target, priority).inc()
        m.child(m.running_requests, model).inc()
        if body_len:
            m.child(m.request_sizes, model, target).observe(body_len)
        if request.prompt_tokens:
            m.child(m.input_tokens, model, target).observe(request.prompt_tokens)
            cached = request.cached_tokens(primary.address)
            m.child(m.prompt_cached_tokens, model, target).observe(cached)
        return Routed(request, pool, ranked, started, served=primary, tokens=tokens)

    def move(self, routed: Routed, new: Endpoint) -> None:
        """The proxy reports that ``new`` served (a fallback, after a retry)."""
        current = routed.served
        if current is new or routed.finished or new.removed:
            return
        if current is not None:
            current.inflight -= 1
            current.inflight_tokens -= routed.tokens
        new.inflight += 1
        new.inflight_tokens += routed.tokens
        routed.served = new

    def release(self, routed: Routed, status: int) -> bool:
        """The response ended with ``status`` (0: stream reset). Returns ``ok``.

        Idempotent: a second call for the same request does nothing (returns False).
        """
        if routed.finished:
            return False
        routed.finished = True
        ok = 0 < status < 500
        m = self.metrics
        model, target, _ = routed.request.labels
        ep = routed.served
        if ep is not None:
            # A removed endpoint (discovery) is detached: its counts drain here, and it
            # gets no per-endpoint series again (its series were dropped with it).
            ep.inflight -= 1
            ep.inflight_tokens -= routed.tokens
            if not ep.removed:
                klass = f"{status // 100}xx" if status else "reset"
                m.child(m.endpoint_outcome_total, ep.address, klass).inc()
        m.child(m.running_requests, model).dec()
        outcome = "routed" if ok else ("reset" if status == 0 else "upstream_error")
        m.child(m.outcome_total, model, outcome, str(status)).inc()
        m.child(m.request_duration, model, target).observe(time.perf_counter() - routed.started)
        return ok
