"""Flow control: hold requests while the pool is saturated instead of rejecting them.

When every candidate pod is past the saturation thresholds, a non-critical request is
parked here (if flow control is on) and dispatched as soon as a pod drops below them —
when a response ends or a scrape shows a shorter queue — or answered 429 when it has
waited ``max_wait`` seconds or the queue already holds ``max_queue`` requests.

Dispatch order: higher criticality first (standard before sheddable); within one
criticality, round-robin across models (each model its own FIFO), so one busy model
cannot starve another. Critical requests are never held.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from picker.datalayer.datastore import Pool
from picker.request.types import Criticality, InferenceRequest


@dataclass(eq=False)
class Held:
    """A parked request; ``future`` resolves to the routing result (Routed or Rejected)."""

    request: InferenceRequest
    pool: Pool
    deadline: float
    body_len: int
    future: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    cancelled: bool = False
    # Metric labels (fairness_id, priority, inference_pool, model_name, target_model_name),
    # set by admission; and when it was parked (time.monotonic()).
    labels: tuple[str, str, str, str, str] = ("", "", "", "", "")
    queued_at: float = 0.0


Leave = Callable[[Held, str], None]
"""Told of each request leaving the queue, with the EPP's outcome name: ``Dispatched``,
``EvictedTTL`` (waited ``max_wait``) or ``EvictedContextCancelled`` (client gone)."""


class FlowQueue:
    def __init__(
        self, max_queue: int = 1000, max_wait: float = 5.0, on_leave: Leave | None = None
    ) -> None:
        self.max_queue = max_queue
        self.max_wait = max_wait
        self.size = 0
        self._on_leave = on_leave
        # pool name -> criticality -> model -> FIFO; OrderedDict rotation = round robin
        self._queues: dict[str, dict[Criticality, OrderedDict[str, deque[Held]]]] = {}

    def hold(self, request: InferenceRequest, pool: Pool, body_len: int) -> Held | None:
        """Parks ``request``; None when the queue is full (the caller answers 429)."""
        if self.size >= self.max_queue:
            return None
        now = time.monotonic()
        held = Held(request, pool, now + self.max_wait, body_len, queued_at=now)
        by_crit = self._queues.setdefault(pool.name, {})
        by_model = by_crit.setdefault(request.criticality, OrderedDict())
        by_model.setdefault(request.model, deque()).append(held)
        self.size += 1
        return held

    def cancel(self, held: Held) -> None:
        """The client went away: drop it lazily (skipped when reached)."""
        if not held.cancelled:
            held.cancelled = True

    def pump(
        self,
        can_dispatch: Callable[[Pool], bool],
        dispatch: Callable[[Held], None],
        expire: Callable[[Held], None],
    ) -> None:
        """Dispatches what the pools can take now and expires what waited too long."""
        now = time.monotonic()
        for by_crit in self._queues.values():
            for crit in sorted(by_crit, reverse=True):
                by_model = by_crit[crit]
                while by_model:
                    model, fifo = next(iter(by_model.items()))
                    held = fifo[0]
                    if held.cancelled or held.future.done():
                        self._pop(by_model, model, fifo, "EvictedContextCancelled")
                        continue
                    if held.deadline <= now:
                        self._pop(by_model, model, fifo, "EvictedTTL")
                        expire(held)
                        continue
                    if not can_dispatch(held.pool):
                        break
                    self._pop(by_model, model, fifo, "Dispatched")
                    if model in by_model:
                        by_model.move_to_end(model)  # next model's turn
                    dispatch(held)
            # Expire the rest even when they cannot be dispatched.
            for by_model in by_crit.values():
                for model, fifo in list(by_model.items()):
                    while fifo and (fifo[0].deadline <= now or fifo[0].cancelled):
                        held = fifo.popleft()
                        self._left(
                            held, "EvictedContextCancelled" if held.cancelled else "EvictedTTL"
                        )
                        if not held.cancelled:
                            expire(held)
                    if not fifo:
                        del by_model[model]

    def _pop(
        self, by_model: OrderedDict[str, deque[Held]], model: str, fifo: deque[Held], outcome: str
    ) -> None:
        self._left(fifo.popleft(), outcome)
        if not fifo:
            del by_model[model]

    def _left(self, held: Held, outcome: str) -> None:
        self.size -= 1
        if self._on_leave is not None:
            self._on_leave(held, outcome)
