"""Predicted latency: route each request to the pod with the lowest predicted TTFT.

For a request and a candidate pod the prediction, in seconds, is

    TTFT = overhead + backlog + c_req + c_tok * uncached + c_run * running

* ``uncached``: the prompt minus the prefix the pod holds (``request.prefix`` or the
  exact ``request.kv_prefix``), so a hit is worth exactly the prefill it saves;
* ``backlog``: the prefill work queued ahead on the pod, in seconds: picker adds each
  request's predicted prefill when it sends one and drains it as time passes; a
  response that ends proves the work up to its request done; when the pod's last scrape
  reported more requests waiting than that, their mean work counts instead (another
  replica or client may be sending to it);
* ``running``: the decode batch the prefill shares its steps with;
* the coefficients and ``overhead`` are the pod's own, learned online from its counters
  (``latency_model``); TPOT = ``d_0 + d_run * running`` likewise.

A busy holder of a hot prefix stops winning once its backlog exceeds the cost of
recomputing the prefix elsewhere, so a prefix most traffic shares spreads over several
pods. Pods are ranked by the prediction plus what the request's new blocks would cost
later: on a pod whose cache the prefix index sees full, they evict other prompts'
blocks, whose prefill comes back when those prompts do (``evict_weight`` x the evicted
tokens' prefill time); so a new prefix goes to a pod with room instead of displacing
the groups a busier pod holds.

The score is ``best / ranked`` (1.0 for the fastest); pods ranked within
``tolerance`` (10 %) + ``resolution_s`` (2 ms) of the best also score 1.0: a tie, which
the ``max_score`` picker gives to the least recently picked. Two pods the model cannot
tell apart (identical pods whose learned coefficients differ by noise) then share the
work and the cache room, instead of one taking every request while the other idles;
a prefix hit or a real backlog is far outside that band.

Latency targets (``x-slo-ttft-ms``, ``x-slo-tpot-ms``: the headers llm-d's predicted-
latency scheduling reads): pods predicted to miss them score 1 % of their value while
any pod is predicted to meet them; when none is, ``request.latency.unmeetable`` is set
and the director answers a sheddable request 429 at once.

Parameters: ``tokens_per_second`` (33000), ``request_s`` (0.003), ``overhead_s``
(0.007), ``tpot_s`` (0.007), ``forgetting`` (0.95): the priors every pod starts from;
``tolerance`` (0.1), ``resolution_s`` (0.002), ``evict_weight`` (0.5: the chance an
evicted prefix is asked for again, as a weight); ``pooled`` (false: predict each pod
as the pool's mean model scaled by its evidence of differing, ``PoolDeviation``; on
real CPU pods it stopped herding at 3 req/s but raised p90 at 8); ``expose`` (false): add
``x-picker-predicted-ttft-ms`` and ``x-picker-predicted-tpot-ms`` to the response (the
prediction for the pod that served).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from picker.datalayer.datastore import Endpoint
from picker.observability import Metrics
from picker.request.types import InferenceRequest, LatencyPrediction
from picker.scheduling.framework import DataProducer, Handle, Params, Scorer, TokenScale
from picker.scheduling.scorers.latency_model import (
    PodModel,
    PodState,
    Priors,
    pool_mean,
    pool_median,
)

TTFT_HEADER = "x-picker-predicted-ttft-ms"
TPOT_HEADER = "x-picker-predicted-tpot-ms"
MISS_FACTOR = 0.01  # a pod predicted to miss the request's target, while others meet it
RELAX_RATE = 0.2  # per scrape without traffic, towards the pool's mean (``relax``)
KV_FULL = 0.95  # a pod's KV cache counts as full past this share of its blocks
POOL_EVERY_S = 1.0  # how often the pool's median and mean models are recomputed


class PredictedLatency(DataProducer, Scorer):
    type = "predicted_latency"
    order = 1  # after the prefix producers: the prediction reads their match

    def __init__(
        self,
        name: str = "",
        params: Params | None = None,
        handle: Handle | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name)
        p = params or Params()
        d = Priors()
        self.priors = Priors(
            tokens_per_second=p.number("tokens_per_second", d.tokens_per_second),
            request_s=p.number("request_s", d.request_s),
            overhead_s=p.number("overhead_s", d.overhead_s),
            tpot_s=p.number("tpot_s", d.tpot_s),
            forgetting=p.number("forgetting", d.forgetting),
        )
        pr = self.priors
        if pr.tokens_per_second <= 0 or min(pr.request_s, pr.overhead_s, pr.tpot_s) < 0:
            raise ValueError(
                f"plugin {self.name!r}: tokens_per_second > 0; request_s, overhead_s, tpot_s >= 0"
            )
        if not 0.5 <= pr.forgetting <= 1.0:
            raise ValueError(f"plugin {self.name!r}: forgetting must be in [0.5, 1]")
        self.expose = p.flag("expose", False)
        self.pooled = p.flag("pooled", False)
        self.evict_weight = p.number("evict_weight", 0.5)
        if self.evict_weight < 0:
            raise ValueError(f"plugin {self.name!r}: evict_weight must be >= 0")
        self.resolution = p.number("resolution_s", 0.002)
        self.tolerance = p.number("tolerance", 0.1)
        if self.resolution < 0 or self.tolerance < 0:
            raise ValueError(f"plugin {self.name!r}: resolution_s, tolerance must be >= 0")
        self._metrics = handle.metrics if handle is not None else Metrics()
        self._clock = clock
        self._pods: dict[str, PodState] = {}
        self._pool: PodModel | None = None  # the median learned pod: for pods that can't
        self._pool_mean: PodModel | None = None  # what idle pods' estimates fade into
        self._pool_at = 0.0
        # Pod tokens per picker-estimated token (prompt text / chars_per_token): learned
        # from the pods' prompt-token counters, shared by all pods (one model, one
        # tokenizer) and with the prefix index; predictions count tokens as pods do.
        self._scale = handle.token_scale if handle is not None else TokenScale()

    # -- learning ---------------------------------------------------------------------

    def pod(self, address: str) -> PodState:
        st = self._pods.get(address)
        if st is None:
            st = self._pods[address] = PodState(self.priors)
        return st

    def model_of(self, address: str) -> PodModel:
        """The model predictions use: the pool's mean scaled by the pod's evidence of
        differing from it (``PoolDeviation``) once the pool has one; before, the pod's
        own once it learned, else the pool's median."""
        st = self.pod(address)
        if st.pooled is not None:
            return st.pooled
        own = st.model
        if own.samples or self._pool is None:
            return own
        return self._pool

    def learn(self, endpoint: Endpoint) -> None:
        """Learns from the pod's newest scrape (once per scrape)."""
        m = endpoint.metrics
        st = self.pod(endpoint.address)
        if m.scraped_at == st.scraped_at or not m.scraped_at:
            return
        st.scraped_at = m.scraped_at
        before = st.model.samples
        observed = st.model.observed_ttft(m)
        counted = st.model.prompt_mean(m)
        if counted is not None and st.est_n and st.est_sum > 0:
            sample = counted / (st.est_sum / st.est_n)
            scale = self.token_scale + 0.2 * (sample - self.token_scale)
            self._scale.value = min(max(scale, 0.1), 10.0)
        st.est_sum, st.est_n = 0.0, 0
        if not st.model.learn(m) and self._pool_mean is not None and st.model.samples:
            st.model.relax(self._pool_mean, RELAX_RATE)
            st.deviation.relax(RELAX_RATE)
        address = endpoint.address
        met = self._metrics
        if observed is not None and st.pred_n:
            predicted = st.pred_sum / st.pred_n
            met.child(met.predicted_ttft_error, address).observe(predicted / observed)
            met.child(met.predicted_ttft, address).set(predicted)
            met.child(met.observed_ttft, address).set(observed)
        st.pred_sum, st.pred_n = 0.0, 0
        st.kv_sent = st.kv_done = 0.0
        learned = st.model.samples != before
        if learned:
            now = self._clock()
            if self._pool is None or now - self._pool_at >= POOL_EVERY_S:
                self._pool_at = now  # O(pods): at most once a second, not per scrape
                self._pool = self._median()
                self._pool_mean = self._mean()
        pool = self._pool_mean
        if pool is not None and self.pooled:
            st.deviation.observe(st.model, pool)
            if st.pooled is None:
                st.pooled = PodModel(self.priors)
            st.deviation.apply(st.model, pool, st.pooled)
        if learned:
            model = st.pooled if st.pooled is not None else st.model
            met.child(met.prefill_rate, address).set(1.0 / model.seconds_per_token)

    def _mean(self) -> PodModel | None:
        return pool_mean([s.model for s in self._pods.values() if s.model.samples], self.priors)

    def _median(self) -> PodModel | None:
        return pool_median([s.model for s in self._pods.values() if s.model.samples])

    # -- predicting -------------------------------------------------------------------

    def backlog(self, address: str, now: float) -> float:
        """Seconds of prefill queued ahead of a new request on ``address`` at ``now``."""
        st = self._pods.get(address)
        return 0.0 if st is None else st.backlog(now)

    def predict(self, request: InferenceRequest, endpoint: Endpoint, now: float) -> float:
        """Predicted seconds to the first token of ``request`` on ``endpoint``."""
        address = endpoint.address
        model = self.model_of(address)
        m = endpoint.metrics
        running = max(m.running, endpoint.inflight)
        ahead = self.backlog(address, now)
        if m.waiting:
            st = self.pod(address)
            reported = m.waiting * st.mean_work - (now - m.scraped_at)
            ahead = max(ahead, reported)
        tokens = self.tokens(request, address)
        own = model.prefill_seconds(tokens, running)
        return model.overhead + ahead + own + self.kv_wait(endpoint, tokens, running)

    @property
    def token_scale(self) -> float:
        return self._scale.value

    def tokens(self, request: InferenceRequest, address: str) -> float:
        """The request's uncached prompt tokens on ``address``, in the pod's tokens."""
        if request.token_ids is not None:
            return float(request.uncached_tokens(address))  # exact already
        kv = request.kv_prefix
        if kv is not None and kv.prompt_tokens:  # tokenized as the pods do: exact
            total = float(kv.prompt_tokens)
            if kv.truncated:
                total = max(total, request.prompt_tokens * self.token_scale)
            left = total - kv.cached_tokens(address)
            return left if left > 1.0 else 1.0
        return request.uncached_tokens(address) * self.token_scale

    def kv_wait(self, endpoint: Endpoint, tokens: float, running: int) -> float:
        """Seconds ``tokens`` more KV would wait for free blocks on ``endpoint``.

        vLLM admits a request only when its blocks fit. The pod's last reported usage,
        plus the tokens picker sent since and minus those of responses that ended,
        estimates what is taken now; when the request does not fit, it waits for a
        running request to end: with ``running`` of them, their remaining times spread
        over one request's duration, the first ends after ``duration / (running + 1)``.
        """
        m = endpoint.metrics
        capacity = m.num_blocks * m.block_size
        st = self._pods.get(endpoint.address)
        if not capacity or st is None or not st.duration:
            return 0.0
        used = m.kv_usage * capacity + st.kv_sent - st.kv_done
        if used + tokens <= KV_FULL * capacity:
            return 0.0
        return st.duration / (running + 1)

    def produce(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> None:
        """``predict`` and the TPOT for every candidate, in one pass.

        The same arithmetic as ``predict``, inlined: at 1,000 candidates the calls were
        most of the decision. A pod holding none of the prompt needs the same uncached
        token count as every other such pod: computed once."""
        now = self._clock()
        pods, pool = self._pods, self._pool
        ttft: dict[str, float] = {}
        tpot: dict[str, float] = {}
        kv, prefix = request.kv_prefix, request.prefix
        match = kv if kv is not None else prefix
        held = match.matched if match is not None else None
        cold = self.tokens(request, "")  # (no pod has the address "": nothing cached)
        # Where the index says a pod's cache is full, the request's new blocks evict
        # other prompts' (approximate match only: KV events carry no room).
        evict: dict[str, float] = {}
        weight = self.evict_weight
        free = None
        room_tokens = 0.0
        if kv is None and prefix is not None and weight:
            free = prefix.free_blocks
            room_tokens = prefix.block_tokens * self._scale.value
        for e in candidates:
            a = e.address
            st = pods.get(a)
            if st is None:
                st = self.pod(a)
            m = e.metrics
            if m.scraped_at != st.scraped_at and m.scraped_at:
                self.learn(e)
            model = st.pooled
            if model is None:
                model = st.model if st.model.samples or pool is None else pool
            running = m.running if m.running > e.inflight else e.inflight
            tokens = self.tokens(request, a) if held and a in held else cold
            c = model.prefill.theta
            ahead = st.sent - st.done - (now - st.at)
            if ahead < 0.0:
                ahead = 0.0
            if m.waiting:
                reported = m.waiting * st.mean_work - (now - m.scraped_at)
                if reported > ahead:
                    ahead = reported
            t = model.overhead + ahead + c[0] + c[1] * tokens + c[2] * running
            if m.num_blocks and st.duration:
                t += self.kv_wait(e, tokens, running)
            ttft[a] = t
            if free is not None:
                room = free.get(a)
                if room is not None and tokens > room * room_tokens:
                    evict[a] = weight * c[1] * (tokens - room * room_tokens)
            d = model.tpot.theta
            tpot[a] = d[0] + d[1] * (running + 1)
        pred = LatencyPrediction(ttft, tpot, evict)
        if request.slo_ttft is not None or request.slo_tpot is not None:
            pred.unmeetable = not any(self._meets(request, pred, e.address) for e in candidates)
        request.latency = pred

    @staticmethod
    def _meets(request: InferenceRequest, pred: LatencyPrediction, address: str) -> bool:
        t, o = request.slo_ttft, request.slo_tpot
        return (t is None or pred.ttft[address] <= t) and (o is None or pred.tpot[address] <= o)

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        pred = request.latency
        if pred is None:  # not produced (the plugin is used as a scorer only)
            self.produce(request, candidates)
            pred = request.latency
            assert pred is not None
        ttft, evict = pred.ttft, pred.evict
        if evict:
            preds = [ttft[e.address] + evict.get(e.address, 0.0) for e in candidates]
        else:
            preds = [ttft[e.address] for e in candidates]
        best = min(preds)
        # Within the model's resolution of the best, pods tie (the picker takes the
        # least recently picked): two pods the model cannot tell apart share the work
        # (and the cache room) instead of one taking all while the other idles.
        near = best * (1.0 + self.tolerance) + self.resolution
        scores = [1.0 if p <= near else best / p for p in preds]
        if (request.slo_ttft is not None or request.slo_tpot is not None) and not pred.unmeetable:
            for i, e in enumerate(candidates):
                if not self._meets(request, pred, e.address):
                    scores[i] *= MISS_FACTOR
        return scores

    # -- accounting -------------------------------------------------------------------

    def on_pick(self, request: InferenceRequest, endpoint: Endpoint) -> None:
        now = self._clock()
        address = endpoint.address
        st = self.pod(address)
        running = max(endpoint.metrics.running, endpoint.inflight)
        tokens = self.tokens(request, address)
        work = self.model_of(address).prefill_seconds(tokens, running)
        st.advance(now)
        st.sent += work
        st.mean_work += 0.05 * (work - st.mean_work)
        st.kv_sent += tokens
        if request.token_ids is None:
            st.est_sum += request.prompt_tokens
            st.est_n += 1
        pred = request.latency
        if pred is None:
            return
        pred.position = st.sent
        pred.sent_at = now
        if address in pred.ttft:
            pred.chosen = address
            st.pred_sum += pred.ttft[address]
            st.pred_n += 1

    def on_peer_pick(self, endpoint: Endpoint, hashes: Sequence[int], tokens: int) -> None:
        """Another replica sent a request there (``peers``): its prefill joins the
        backlog and its tokens the KV cache, as an own request's would; a replayed one
        (``tokens`` 0) is history, no load."""
        if tokens <= 0:
            return
        st = self.pod(endpoint.address)
        running = max(endpoint.metrics.running, endpoint.inflight)
        st.advance(self._clock())
        scaled = tokens * self.token_scale
        work = self.model_of(endpoint.address).prefill_seconds(scaled, running)
        st.sent += work
        st.kv_sent += scaled
        st.peer_positions.append(st.sent)

    def on_peer_done(self, endpoint: Endpoint, tokens: int) -> None:
        """A peer's request there ended: its oldest one there is certainly prefilled,
        so is everything before it (as an own response end proves its position)."""
        st = self._pods.get(endpoint.address)
        if st is None or not st.peer_positions:
            return
        st.kv_done += tokens * self.token_scale
        position = st.peer_positions.popleft()
        st.advance(self._clock())
        if position > st.done:
            st.done = min(position, st.sent)

    def on_done(self, request: InferenceRequest, endpoint: Endpoint, ok: bool) -> None:
        pred = request.latency
        st = self._pods.get(endpoint.address)
        if pred is None or st is None or pred.chosen != endpoint.address:
            return  # (a fallback served: its position is in another pod's totals)
        now = self._clock()
        st.advance(now)
        if pred.position > st.done:
            st.done = min(pred.position, st.sent)
        st.kv_done += request.prompt_tokens * (
            1.0 if request.token_ids is not None else self.token_scale
        )
        took = now - pred.sent_at
        st.duration = took if not st.duration else st.duration + 0.1 * (took - st.duration)

    def response_headers(
        self, request: InferenceRequest, served: str | None
    ) -> Sequence[tuple[str, str]]:
        pred = request.latency
        if not self.expose or pred is None or not pred.ttft:
            return ()
        address = served if served is not None and served in pred.ttft else pred.chosen
        if address not in pred.ttft:
            return ()
        return (
            (TTFT_HEADER, f"{pred.ttft[address] * 1000:.1f}"),
            (TPOT_HEADER, f"{pred.tpot[address] * 1000:.2f}"),
        )

    def on_endpoint_removed(self, endpoint: Endpoint) -> None:
        self._pods.pop(endpoint.address, None)
        self._pool = self._median()
        self._pool_mean = self._mean()
        met = self._metrics
        for metric in (met.predicted_ttft_error, met.predicted_ttft, met.observed_ttft):
            met.forget(metric, endpoint.address)
        met.forget(met.prefill_rate, endpoint.address)
