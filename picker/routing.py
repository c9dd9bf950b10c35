"""The routing decision for one request: parse → pool → admission → schedule → account.

``Director`` knows nothing about Envoy; the protocol layer (``extproc``) hands it the
request's path, a few headers and the body, and gets back either a ``Routed`` (where to
send it) or a ``Rejected`` (an HTTP error to answer with). When the response ends the
protocol layer calls ``finish`` so picker's in-flight accounting stays exact.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from picker import errors
from picker.config import Config
from picker.datastore import Datastore, Endpoint, Pool
from picker.errors import RequestError
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
    status: int = 0
    finished: bool = False
    _labels: Any = field(default=None, repr=False)

    @property
    def destination(self) -> str:
        """The ``x-gateway-destination-endpoint`` value: primary, then fallbacks."""
        return ",".join(e.address for e in self.endpoints)


class Director:
    def __init__(
        self, config: Config, datastore: Datastore, profile: Profile, metrics: Metrics
    ) -> None:
        self.config = config
        self.datastore = datastore
        self.profile = profile
        self.metrics = metrics
        self._sat = config.saturation
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
    ) -> Routed | Rejected:
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
        if req.criticality is Criticality.SHEDDABLE and self.saturated(candidates):
            self._child(self.metrics.shed_total, req.model).inc()
            return self._reject(req.model, errors.overloaded(), "shed")

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
        self.profile.on_pick(req, primary)
        model = req.model
        self._child(self.metrics.request_total, model, model).inc()
        self._child(self.metrics.running_requests, model).inc()
        if body:
            self._child(self.metrics.request_sizes, model, model).observe(len(body))
        return Routed(req, pool, ranked, started, served=primary)

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
        new.inflight += 1
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
