"""The routing decision for one request: parse → pool → admission → schedule → account.

``Director`` knows nothing about Envoy; the protocol layer (``extproc``) hands it the
request's path, a few headers and the body, and gets back either a ``Routed`` (where to
send it) or a ``Rejected`` (an HTTP error to answer with). When the response ends the
protocol layer calls ``finish`` so picker's in-flight accounting stays exact.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from picker import errors
from picker.config import Config
from picker.datastore import Datastore, Endpoint, Pool
from picker.errors import RequestError
from picker.flow import FlowQueue, Held
from picker.observability import Metrics
from picker.parse import parse_request
from picker.request import Criticality, InferenceRequest
from picker.scheduling.profile import Profile
from picker.scheduling.scorers import effective_queue

log = logging.getLogger(__name__)

_CRITICALITY_NAMES = {c.name.lower(): c for c in Criticality}


@dataclass(slots=True)
class Rejected:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class Routed:
    request: InferenceRequest
    pool: Pool
    endpoints: list[Endpoint]
    started: float
    served: Endpoint | None = None  # set when the response names the endpoint that served
    tokens: int = 0  # estimated uncached prompt tokens charged to ``served``
    status: int = 0
    finished: bool = False

    @property
    def destination(self) -> str:
        """The ``x-gateway-destination-endpoint`` value: primary, then fallbacks."""
        return ",".join(e.address for e in self.endpoints)


def uncached_tokens(req: InferenceRequest, endpoint: Endpoint) -> int:
    """Estimated prompt tokens ``endpoint`` must prefill for ``req``.

    ~4 characters per token; the part the prefix scorer believes is cached on the pod
    (``scratch["prefix_match"]``, a fraction per address) is free.
    """
    tokens = len(req.prompt) // 4 + 1
    match: dict[str, float] | None = req.scratch.get("prefix_match")
    if match:
        tokens = int(tokens * (1.0 - match.get(endpoint.address, 0.0))) + 1
    return tokens


class Director:
    def __init__(
        self, config: Config, datastore: Datastore, profile: Profile, metrics: Metrics
    ) -> None:
        self.config = config
        self.datastore = datastore
        self.profile = profile
        self.metrics = metrics
        self._sat = config.saturation
        fc = config.flow_control
        self.flow = FlowQueue(fc.max_queue, fc.max_wait_seconds) if fc.enabled else None
        self._pump_task: asyncio.Task[None] | None = None
        self._pump_interval = max(0.005, min(0.05, config.scrape.interval))
        # prometheus_client's .labels() costs microseconds: cache the children.
        self._children: dict[tuple[Any, ...], Any] = {}

    # -- metrics helpers -------------------------------------------------------------

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _reject(self, model: str, err: RequestError, outcome: str) -> Rejected:
        self._child(self.metrics.outcome_total, model, outcome, str(err.status)).inc()
        self._child(self.metrics.request_error_total, model, model, err.code or outcome).inc()
        headers: tuple[tuple[str, str], ...] = ()
        if err.status == 429:
            headers = (("retry-after", str(self._sat.retry_after_seconds)),)
        return Rejected(err.status, err.body(), headers)

    # -- the decision ----------------------------------------------------------------

    def internal_error(self) -> Rejected:
        return self._reject("", errors.internal_error(), "internal_error")

    def reject_too_large(self, limit: int) -> Rejected:
        return self._reject("", errors.too_large(limit), "too_large")

    def criticality(self, model: str, objective: str | None) -> Criticality:
        if objective:
            named = _CRITICALITY_NAMES.get(objective.lower())
            if named is not None:
                return named
            crit = self.config.criticality.get(objective)
            if crit is not None:
                return crit
        return self.config.criticality.get(model, self.config.default_criticality)

    def decide(
        self,
        path: str,
        body: bytes | None,
        *,
        objective: str | None = None,
        subset: frozenset[str] | None = None,
        request_id: str = "",
    ) -> Routed | Rejected | Held:
        started = time.perf_counter()
        if body:
            try:
                req = parse_request(path, body, max_body_bytes=self.config.max_body_bytes)
            except RequestError as err:
                return self._reject("", err, "invalid_request")
            pool = self.datastore.pool_for(req.model)
            if pool is None:
                return self._reject(req.model, errors.model_not_found(req.model), "not_found")
        else:
            # No body (GET /v1/models, health probes): any pool serving "*", else the first.
            pool = self.datastore.pool_for("*") or (
                self.datastore.pools[0] if self.datastore.pools else None
            )
            if pool is None:
                return self._reject("", errors.no_capacity("no pool is configured"), "no_pool")
            req = InferenceRequest(model="", path=path.split("?", 1)[0])
        if req.model and req.model in pool.adapters:
            req.adapter = req.model
        req.request_id = request_id
        req.criticality = self.criticality(req.model, objective)
        if subset is not None:
            req.scratch["subset"] = subset

        candidates = pool.ready()
        if not candidates:
            return self._reject(
                req.model,
                errors.no_capacity(f"no ready endpoint for pool {pool.name!r}"),
                "no_endpoint",
            )
        if self.saturated(candidates) and req.criticality is not Criticality.CRITICAL:
            if self.flow is not None:
                held = self.flow.hold(req, pool, len(body) if body else 0)
                if held is None:
                    self._child(self.metrics.shed_total, req.model).inc()
                    return self._reject(
                        req.model, errors.overloaded("The gateway's wait queue is full."), "shed"
                    )
                self._child(self.metrics.queued_total, req.model).inc()
                self.metrics.flow_queue_size.set(self.flow.size)
                self._ensure_pump()
                return held
            if req.criticality is Criticality.SHEDDABLE:
                self._child(self.metrics.shed_total, req.model).inc()
                return self._reject(req.model, errors.overloaded(), "shed")
        return self._route(req, pool, candidates, started, len(body) if body else 0)

    def _route(
        self,
        req: InferenceRequest,
        pool: Pool,
        candidates: list[Endpoint],
        started: float,
        body_len: int,
    ) -> Routed | Rejected:
        subset = req.scratch.get("subset")
        ranked = self.profile.schedule(req, candidates)
        self.metrics.scheduler_duration.observe(time.perf_counter() - started)
        if not ranked:
            self._child(self.metrics.scheduler_attempts, "failure").inc()
            reason = (
                "no endpoint in the proxy's subset is eligible"
                if subset is not None
                else ("no eligible endpoint")
            )
            return self._reject(req.model, errors.no_capacity(reason), "no_endpoint")
        self._child(self.metrics.scheduler_attempts, "success").inc()

        primary = ranked[0]
        primary.inflight += 1
        primary.sent_since_scrape += 1
        tokens = uncached_tokens(req, primary)
        primary.inflight_tokens += tokens
        self.profile.on_pick(req, primary)
        model = req.model
        self._child(self.metrics.request_total, model, model).inc()
        self._child(self.metrics.running_requests, model).inc()
        if body_len:
            self._child(self.metrics.request_sizes, model, model).observe(body_len)
        return Routed(req, pool, ranked, started, served=primary, tokens=tokens)

    # -- flow control --------------------------------------------------------------

    def _can_dispatch(self, pool: Pool) -> bool:
        candidates = pool.ready()
        return bool(candidates) and not self.saturated(candidates)

    def _dispatch(self, held: Held) -> None:
        candidates = held.pool.ready()
        result = self._route(
            held.request, held.pool, candidates, time.perf_counter(), held.body_len
        )
        held.future.set_result(result)

    def _expire(self, held: Held) -> None:
        model = held.request.model
        self._child(self.metrics.shed_total, model).inc()
        held.future.set_result(
            self._reject(
                model,
                errors.overloaded("The model servers stayed saturated; retry later."),
                "queue_timeout",
            )
        )

    def pump(self) -> None:
        """Dispatches held requests the pools can take now (no-op without flow control)."""
        flow = self.flow
        if flow is not None and flow.size:
            flow.pump(self._can_dispatch, self._dispatch, self._expire)
            self.metrics.flow_queue_size.set(flow.size)

    def _ensure_pump(self) -> None:
        if self._pump_task is None or self._pump_task.done():
            self._pump_task = asyncio.get_running_loop().create_task(self._pump_loop())

    async def _pump_loop(self) -> None:
        # Scrapes change pod state without any request finishing: poll while held.
        while self.flow is not None and self.flow.size:
            await asyncio.sleep(self._pump_interval)
            self.pump()

    def cancel_held(self, held: Held) -> None:
        if self.flow is not None:
            self.flow.cancel(held)

    def saturated(self, candidates: list[Endpoint]) -> bool:
        """True when every candidate is past the queue or the KV-cache threshold."""
        qt = self._sat.queue_threshold
        kt = self._sat.kv_threshold
        return all(effective_queue(e) >= qt or e.metrics.kv_usage >= kt for e in candidates)

    def served_by(self, routed: Routed, address: str) -> None:
        """The proxy reports which endpoint served (a fallback, after a retry)."""
        current = routed.served
        if current is not None and current.address == address:
            return
        new = self.datastore.by_address.get(address)
        if new is None or routed.finished:
            return
        if current is not None:
            current.inflight -= 1
            current.inflight_tokens -= routed.tokens
        new.inflight += 1
        new.inflight_tokens += routed.tokens
        routed.served = new

    def finish(self, routed: Routed, status: int) -> None:
        """The response ended (or the stream was reset, status 0): release accounting."""
        if routed.finished:
            return
        routed.finished = True
        ep = routed.served
        ok = 0 < status < 500
        model = routed.request.model
        if ep is not None:
            ep.inflight -= 1
            ep.inflight_tokens -= routed.tokens
            if ok:
                ep.completed += 1
            else:
                ep.errors += 1
            self.profile.on_done(routed.request, ep, ok)
            klass = f"{status // 100}xx" if status else "reset"
            self._child(self.metrics.endpoint_outcome_total, ep.address, klass).inc()
        self._child(self.metrics.running_requests, model).dec()
        outcome = "routed" if ok else ("reset" if status == 0 else "upstream_error")
        self._child(self.metrics.outcome_total, model, outcome, str(status)).inc()
        self._child(self.metrics.request_duration, model, model).observe(
            time.perf_counter() - routed.started
        )
        if self.flow is not None and self.flow.size:
            self.pump()
