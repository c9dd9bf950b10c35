"""Admission: may this request be scheduled now, wait, or be shed?

* criticality: from the objective header (a criticality name; an InferenceObjective of
  the pool, its priority mapped by ``criticality_of``: negative is sheddable; or a name
  configured in ``criticality``), else the model's configured criticality, else the
  default;
* saturation: a pool is saturated when every candidate is past the queue threshold
  (``Endpoint.queue``) or the KV-cache threshold;
* when saturated, a critical request is admitted anyway; others are parked in the
  flow-control queue when it is on (429 once it is full or they waited too long), else a
  sheddable request gets 429 at once and a standard one is admitted.

Parked requests are dispatched by ``pump``: when a response ends, and on a timer while
any are held (scrapes change pod state without any request ending).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from enum import Enum

from picker.config import Config
from picker.datalayer.datastore import Endpoint, Pool
from picker.datalayer.objectives import ObjectiveStore, criticality_of
from picker.flowcontrol.queue import FlowQueue, Held
from picker.observability import Metrics
from picker.request.types import Criticality, InferenceRequest

_CRITICALITY_NAMES = {c.name.lower(): c for c in Criticality}
_PRIORITY = {Criticality.SHEDDABLE: -1, Criticality.STANDARD: 0, Criticality.CRITICAL: 1}


class Verdict(Enum):
    ADMIT = "admit"
    HOLD = "hold"  # parked: see the returned Held
    SHED = "shed"  # 429 at once
    QUEUE_FULL = "queue_full"  # 429: the flow-control queue is full


class Admission:
    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        dispatch: Callable[[Held], None],
        expire: Callable[[Held], None],
        objectives: ObjectiveStore | None = None,
    ) -> None:
        """``dispatch``/``expire``: what to do with a parked request that can go now, or
        that waited too long (or was cancelled by its client: skipped, never expired)."""
        self.config = config
        self.metrics = metrics
        self.objectives = objectives if objectives is not None else ObjectiveStore()
        self._dispatch = dispatch
        self._expire = expire
        sat = config.saturation
        self._queue_threshold = sat.queue_threshold
        self._kv_threshold = sat.kv_threshold
        fc = config.flow_control
        self.flow = FlowQueue(fc.max_queue, fc.max_wait_seconds, self._left) if fc.enabled else None
        self._pump_task: asyncio.Task[None] | None = None
        self._pump_interval = max(0.005, min(0.05, config.scrape.interval))

    def criticality(self, model: str, objective: str | None) -> Criticality:
        return self.classify(model, objective)[0]

    def classify(self, model: str, objective: str | None) -> tuple[Criticality, int]:
        """The request's criticality and priority: an InferenceObjective's own priority,
        else the criticality's (sheddable -1, standard 0, critical 1)."""
        if objective:
            named = _CRITICALITY_NAMES.get(objective.lower())
            if named is not None:
                return named, _PRIORITY[named]
            priority = self.objectives.priority(objective)
            if priority is not None:
                return criticality_of(priority), priority
            crit = self.config.criticality.get(objective)
            if crit is not None:
                return crit, _PRIORITY[crit]
        crit = self.config.criticality.get(model, self.config.default_criticality)
        return crit, _PRIORITY[crit]

    def saturated(self, candidates: list[Endpoint]) -> bool:
        """True when every candidate is past the queue or the KV-cache threshold."""
        qt = self._queue_threshold
        kt = self._kv_threshold
        return all(e.queue >= qt or e.metrics.kv_usage >= kt for e in candidates)

    def admit(
        self, request: InferenceRequest, pool: Pool, candidates: list[Endpoint], body_len: int
    ) -> tuple[Verdict, Held | None]:
        if request.criticality is Criticality.CRITICAL or not self.saturated(candidates):
            return Verdict.ADMIT, None
        m = self.metrics
        if self.flow is not None:
            held = self.flow.hold(request, pool, body_len)
            model, target, priority = request.labels
            if held is None:
                m.child(m.shed_total, target).inc()
                labels = (target, priority, "RejectedCapacity", pool.name, model, target)
                m.child(m.flow_queue_duration, *labels).observe(0.0)
                return Verdict.QUEUE_FULL, None
            m.child(m.queued_total, target).inc()
            held.labels = (target, priority, pool.name, model, target)
            m.child(m.flow_queue_size, *held.labels).inc()
            m.child(m.flow_queue_bytes, *held.labels).inc(body_len)
            self._ensure_pump()
            return Verdict.HOLD, held
        if request.criticality is Criticality.SHEDDABLE:
            m.child(m.shed_total, request.labels[1]).inc()
            return Verdict.SHED, None
        return Verdict.ADMIT, None

    # -- the flow-control pump -----------------------------------------------------------

    def _can_dispatch(self, pool: Pool) -> bool:
        candidates = pool.ready()
        return bool(candidates) and not self.saturated(candidates)

    def pump(self) -> None:
        """Dispatches held requests the pools can take now (no-op without flow control)."""
        flow = self.flow
        if flow is not None and flow.size:
            flow.pump(self._can_dispatch, self._dispatch, self._expire)

    def _left(self, held: Held, outcome: str) -> None:
        """``held`` left the flow-control queue with ``outcome`` (the EPP's names)."""
        m = self.metrics
        fairness, priority, pool, model, target = held.labels
        m.child(m.flow_queue_size, *held.labels).dec()
        m.child(m.flow_queue_bytes, *held.labels).dec(held.body_len)
        waited = time.monotonic() - held.queued_at
        labels = (fairness, priority, outcome, pool, model, target)
        m.child(m.flow_queue_duration, *labels).observe(waited)

    def cancel(self, held: Held) -> None:
        if self.flow is not None:
            self.flow.cancel(held)

    def _ensure_pump(self) -> None:
        if self._pump_task is None or self._pump_task.done():
            self._pump_task = asyncio.get_running_loop().create_task(self._pump_loop())

    async def _pump_loop(self) -> None:
        while self.flow is not None and self.flow.size:
            await asyncio.sleep(self._pump_interval)
            self.pump()
