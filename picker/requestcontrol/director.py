"""The director: one request from body to decision, and back when its response ends.

    decide:  parse (request.parse) → model rewrite (datastore.objectives) → pool lookup
             (datastore, by the target model) → admission (objective → criticality)
             → schedule (scheduling.Profile) → charge (accounting) → on_pick hooks
    finish:  release (accounting) → on_done hooks → pump parked requests (admission)

The director only orchestrates; each step lives in its own module. It knows nothing
about Envoy: the protocol layer (``picker.handlers``) hands it the request's path, a
few header values and the body, and gets back a ``Routed`` (where to send it), a
``Rejected`` (an HTTP error to answer with) or a ``Held`` (parked by flow control; its
future resolves to one of the other two).
"""

from __future__ import annotations

import logging
import random
import time

import orjson

from picker.config import Config
from picker.datalayer.datastore import Datastore, Endpoint, Pool
from picker.flowcontrol.queue import Held
from picker.observability import Metrics
from picker.request import errors
from picker.request.errors import RequestError
from picker.request.parse import parse_request
from picker.request.types import Criticality, InferenceRequest
from picker.requestcontrol.accounting import Accounting, Rejected, Routed
from picker.requestcontrol.admission import Admission, Verdict
from picker.scheduling.profile import Profile

log = logging.getLogger(__name__)

__all__ = ["Director", "Held", "Rejected", "Routed"]


def latency_target(raw: str) -> float | None:
    """A latency target header's value (milliseconds) in seconds; "" → None."""
    if not raw:
        return None
    try:
        ms = float(raw)
    except ValueError:
        ms = -1.0
    if not 0 < ms < 3.6e6:  # also rejects NaN
        raise errors.invalid_request(
            f"latency target header must be a positive number of milliseconds, not {raw[:32]!r}",
            "x-slo-ttft-ms",
        )
    return ms / 1000.0


class Director:
    def __init__(
        self,
        config: Config,
        datastore: Datastore,
        profile: Profile,
        metrics: Metrics,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.datastore = datastore
        self.objectives = datastore.objectives
        self.rng = rng or random.Random()  # chooses among a rewrite's weighted targets
        self.profile = profile
        self.metrics = metrics
        self.accounting = Accounting(metrics, config.saturation.retry_after_seconds)
        self.admission = Admission(
            config, metrics, self._dispatch, self._expire, datastore.objectives
        )
        self._chars_per_token = config.chars_per_token

    # -- answers picker gives itself -------------------------------------------------

    def reject(self, model: str, err: RequestError, outcome: str) -> Rejected:
        return self.accounting.reject(model, err, outcome)

    def internal_error(self) -> Rejected:
        return self.reject("", errors.internal_error(), "internal_error")

    def reject_too_large(self, limit: int) -> Rejected:
        return self.reject("", errors.too_large(limit), "too_large")

    # -- the decision ----------------------------------------------------------------

    def decide(
        self,
        path: str,
        body: bytes | None,
        *,
        objective: str | None = None,
        subset: frozenset[str] | None = None,
        endpoint_selection: str | None = None,
        slo: tuple[str, str] | None = None,
    ) -> Routed | Rejected | Held:
        started = time.perf_counter()
        if body:
            try:
                req = parse_request(path, body, max_body_bytes=self.config.max_body_bytes)
            except RequestError as err:
                return self.reject("", err, "invalid_request")
            rule = self.objectives.rewrite_for(req.model)
            incoming = req.model
            if rule is not None:
                self._rewrite(req, body, rule.choose(self.rng))
            pool = self.datastore.pool_for(req.model)
            if pool is None:  # the client's model name is not a metric label: unbounded
                return self.reject("", errors.model_not_found(req.model), "not_found")
            m = self.metrics
            if rule is not None:
                labels = (rule.name, m.model_label(incoming), m.model_label(req.model))
                m.child(m.rewrite_decisions, *labels).inc()
            ids = req.token_ids
            req.prompt_tokens = (
                len(ids) if ids is not None else int(len(req.prompt) / self._chars_per_token) + 1
            )
        else:
            # No body (GET /v1/models, health probes): any pool serving "*", else the first.
            pool = self.datastore.pool_for("*") or (
                self.datastore.pools[0] if self.datastore.pools else None
            )
            if pool is None:
                return self.reject("", errors.no_capacity("no pool is configured"), "no_pool")
            req = InferenceRequest(model="", path=path.split("?", 1)[0])
        if req.model and req.model in pool.adapters:
            req.adapter = req.model
        req.criticality, priority = self.admission.classify(req.model, objective)
        req.priority = priority
        ml = self.metrics.model_label
        req.labels = (ml(req.incoming_model or req.model), ml(req.model), str(priority))
        req.subset = subset
        req.endpoint_selection = endpoint_selection
        if slo is not None:
            try:
                req.slo_ttft, req.slo_tpot = latency_target(slo[0]), latency_target(slo[1])
            except RequestError as err:
                return self.reject(req.labels[1], err, "invalid_request")

        candidates = pool.ready()
        if not candidates:
            reason = f"no ready endpoint for pool {pool.name!r}"
            return self.reject(req.labels[1], errors.no_capacity(reason), "no_endpoint")
        body_len = len(body) if body else 0
        verdict, held = self.admission.admit(req, pool, candidates, body_len)
        if verdict is Verdict.ADMIT:
            return self._route(req, pool, candidates, started, body_len)
        if held is not None:
            return held
        message = "The gateway's wait queue is full." if verdict is Verdict.QUEUE_FULL else ""
        return self.reject(req.labels[1], errors.overloaded(message), "shed")

    @staticmethod
    def _rewrite(req: InferenceRequest, body: bytes, target: str) -> None:
        """Sends ``req`` to model ``target``: the body to forward names it instead.

        Only a rewritten request pays for a second parse and a dump; the body is
        otherwise forwarded as received. The JSON is re-serialized compactly (key order
        kept), so its length changes: the proxy gets the new content-length.
        """
        if target == req.model:
            return
        data = orjson.loads(body)  # parse_request has accepted it: a JSON object
        data["model"] = target
        req.incoming_model, req.model = req.model, target
        req.body = orjson.dumps(data)

    def _route(
        self,
        req: InferenceRequest,
        pool: Pool,
        candidates: list[Endpoint],
        started: float,
        body_len: int,
    ) -> Routed | Rejected:
        m = self.metrics
        ranked = self.profile.schedule(req, candidates)
        m.scheduler_duration.observe(time.perf_counter() - started)
        target = req.labels[1]
        if not ranked:
            m.child(m.scheduler_attempts, "failure", target, "", "", "").inc()
            reason = (
                "no endpoint in the proxy's subset is eligible"
                if req.subset is not None
                else "no eligible endpoint"
            )
            return self.reject(target, errors.no_capacity(reason), "no_endpoint")
        pred = req.latency
        if pred is not None and pred.unmeetable and req.criticality is Criticality.SHEDDABLE:
            m.child(m.slo_rejected, target).inc()
            err = errors.overloaded("No model server is predicted to meet the latency target.")
            return self.reject(target, err, "slo_shed")
        ep = ranked[0]
        pod = ep.pod_name or ep.host  # static endpoints: no pod name, the host instead
        m.child(m.scheduler_attempts, "success", target, pod, ep.namespace, ep.port_label).inc()
        routed = self.accounting.charge(req, pool, ranked, started, body_len)
        self.profile.on_pick(req, ranked[0])
        return routed

    # -- parked requests -------------------------------------------------------------

    def _dispatch(self, held: Held) -> None:
        candidates = held.pool.ready()
        result = self._route(
            held.request, held.pool, candidates, time.perf_counter(), held.body_len
        )
        held.future.set_result(result)

    def _expire(self, held: Held) -> None:
        model = held.request.labels[1]
        m = self.metrics
        m.child(m.shed_total, model).inc()
        err = errors.overloaded("The model servers stayed saturated; retry later.")
        held.future.set_result(self.reject(model, err, "queue_timeout"))

    def pump(self) -> None:
        self.admission.pump()

    def cancel_held(self, held: Held) -> None:
        self.admission.cancel(held)

    # -- the response ----------------------------------------------------------------

    def served_by(self, routed: Routed, address: str) -> None:
        """The proxy reports which endpoint served (a fallback, after a retry)."""
        new = self.datastore.by_address.get(address)
        if new is not None:
            self.accounting.move(routed, new)

    def response_headers(self, routed: Routed, served: str | None) -> list[tuple[str, str]]:
        return self.profile.response_headers(routed.request, served)

    def finish(self, routed: Routed, status: int) -> None:
        """The response ended (or the stream was reset, status 0): release accounting."""
        if routed.finished:
            return
        ok = self.accounting.release(routed, status)
        if routed.served is not None:
            self.profile.on_done(routed.request, routed.served, ok)
        self.admission.pump()
