"""A latency model per pod, in seconds, learned online from the pod's own counters.

Between two scrapes of a pod, vLLM's counters say how many requests it prefilled, how
many prompt tokens it computed for them (cache hits excluded) and how long their
prefill took; how long they queued and how long to their first token; and how long the
inter-token intervals were. From those deltas each pod fits, by recursive least squares
with forgetting (``RLS``):

* prefill seconds per request = ``c_req + c_tok * uncached_tokens + c_run * running``:
  a fixed cost per request, a cost per computed token, and the slowdown from the decode
  batch the prefill shares its steps with (vLLM mixes them in one batch);
* time per output token = ``d_0 + d_run * running``;

and, as a moving average, the fixed part of TTFT outside the engine's queue and prefill
(``ttft - queue - prefill`` per request: tokenization, detokenization, the API server).

Nothing is configured per pod: a half-speed pod or a different GPU shows up in its
counters. A pod that exports no prefill counters (SGLang, TRT-LLM) takes the pool's
learned coefficients (the median over the pods that have them), else the priors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from picker.datalayer.datastore import EndpointMetrics


class RLS:
    """Weighted recursive least squares with exponential forgetting, ``n`` features.

    ``theta`` starts at the prior and ``P`` at ``diag(scale²)``: the prior's weight.
    Forgetting (``lam`` < 1) keeps the fit following a pod whose speed changes; the
    covariance is capped at its initial diagonal, so a long stretch without new
    information (an idle pod) cannot wind it up into wild steps. Each coefficient is
    kept within ``[lo, hi]``.
    """

    __slots__ = ("hi", "lam", "lo", "p", "p0", "theta")

    def __init__(
        self,
        prior: list[float],
        scale: list[float],
        lo: list[float],
        hi: list[float],
        lam: float = 0.95,
    ) -> None:
        n = len(prior)
        self.theta = list(prior)
        self.p0 = [s * s for s in scale]
        self.p = [[self.p0[i] if i == j else 0.0 for j in range(n)] for i in range(n)]
        self.lo, self.hi, self.lam = lo, hi, lam

    def predict(self, x: list[float]) -> float:
        return sum(t * v for t, v in zip(self.theta, x, strict=True))

    def update(self, x: list[float], y: float, noise: float) -> None:
        """One observation ``y ≈ theta · x`` with standard deviation ``noise``."""
        if not math.isfinite(y) or not all(math.isfinite(v) for v in x):
            return
        n = len(x)
        p = self.p
        px = [sum(p[i][j] * x[j] for j in range(n)) for i in range(n)]
        denom = noise * noise + sum(x[i] * px[i] for i in range(n))
        if not denom > 0 or not math.isfinite(denom):
            return
        err = y - self.predict(x)
        gain = [v / denom for v in px]
        for i in range(n):
            t = self.theta[i] + gain[i] * err
            self.theta[i] = min(max(t, self.lo[i]), self.hi[i])
        lam = self.lam
        for i in range(n):
            row = p[i]
            for j in range(n):
                row[j] = (row[j] - gain[i] * px[j]) / lam
            row[i] = min(row[i], self.p0[i])
        for i in range(n):  # keep P symmetric and its off-diagonal within its diagonal
            for j in range(i + 1, n):
                bound = math.sqrt(max(p[i][i] * p[j][j], 0.0))
                v = min(max((p[i][j] + p[j][i]) / 2, -bound), bound)
                p[i][j] = p[j][i] = v


@dataclass(frozen=True, slots=True)
class Priors:
    """Where every pod starts. The defaults are an 8B model on one H100 (vLLM):
    ~33k uncached prefill tokens/s, decode step ~7 ms + 0.1 ms per running request."""

    tokens_per_second: float = 33000.0
    request_s: float = 0.003  # engine cost per prefilled request
    overhead_s: float = 0.007  # TTFT outside the engine's queue and prefill
    tpot_s: float = 0.007
    tpot_per_running_s: float = 0.0001
    forgetting: float = 0.95


class PodModel:
    """One pod's coefficients and the counters they were last updated from."""

    __slots__ = ("_last", "_overhead_n", "overhead", "prefill", "samples", "tpot")

    def __init__(self, priors: Priors) -> None:
        per_tok = 1.0 / priors.tokens_per_second
        self.prefill = RLS(
            prior=[priors.request_s, per_tok, 0.0],
            scale=[0.01, per_tok, 0.001],
            lo=[0.0, per_tok / 50, 0.0],
            hi=[1.0, per_tok * 50, 0.05],
            lam=priors.forgetting,
        )
        self.tpot = RLS(
            prior=[priors.tpot_s, priors.tpot_per_running_s],
            scale=[0.01, 0.001],
            lo=[0.0, 0.0],
            hi=[1.0, 0.05],
            lam=priors.forgetting,
        )
        self.overhead = priors.overhead_s
        self._overhead_n = 0
        self.samples = 0  # prefill observations learned from
        self._last: EndpointMetrics | None = None

    @property
    def seconds_per_token(self) -> float:
        return self.prefill.theta[1]

    def prefill_seconds(self, tokens: float, running: float) -> float:
        """Predicted prefill time of one request of ``tokens`` uncached tokens."""
        c = self.prefill.theta
        return c[0] + c[1] * tokens + c[2] * running

    def tpot_seconds(self, running: float) -> float:
        d = self.tpot.theta
        return d[0] + d[1] * running

    def observed_ttft(self, m: EndpointMetrics) -> float | None:
        """Mean TTFT the pod reported between its previous scrape and ``m``."""
        last = self._last
        if last is None:
            return None
        t = m.ttft_count - last.ttft_count
        s = m.ttft_seconds - last.ttft_seconds
        return s / t if t >= 1 and s > 0 else None

    def learn(self, m: EndpointMetrics) -> bool:
        """Updates from the deltas since the previous scrape; True if it learned."""
        last, self._last = self._last, m
        if last is None or m.scraped_at <= last.scraped_at:
            return False
        if m.prefill_count < last.prefill_count or m.ttft_count < last.ttft_count:
            return False  # counters went back: the pod restarted
        running = (last.running + m.running) / 2
        learned = False
        n = m.prefill_count - last.prefill_count
        tokens = m.prefill_tokens - last.prefill_tokens
        seconds = m.prefill_seconds - last.prefill_seconds
        if n >= 1 and seconds > 0 and tokens >= 0:
            x = [1.0, tokens / n, running]
            # The mean of n requests: its noise falls as 1/sqrt(n) (a few ms per request).
            self.prefill.update(x, seconds / n, 0.005 / math.sqrt(min(n, 100.0)))
            self.samples += 1
            learned = True
        k = m.itl_count - last.itl_count
        if k >= 1 and m.itl_seconds > last.itl_seconds:
            itl = (m.itl_seconds - last.itl_seconds) / k
            self.tpot.update([1.0, running], itl, 0.002 / math.sqrt(min(k, 400.0)))
            learned = True
        t = m.ttft_count - last.ttft_count
        if t >= 1 and n >= 1 and m.ttft_seconds > last.ttft_seconds:
            ttft = (m.ttft_seconds - last.ttft_seconds) / t
            queue = (m.queue_seconds - last.queue_seconds) / n
            fixed = ttft - queue - seconds / n
            if 0.0 <= fixed < 1.0:
                self._overhead_n += 1  # a plain mean at first, then a moving average
                self.overhead += max(0.2, 1.0 / self._overhead_n) * (fixed - self.overhead)
        return learned

    def relax(self, toward: PodModel, rate: float) -> None:
        """Moves the coefficients a step towards ``toward``'s (the pool's mean).

        Called for a pod that learned nothing over a scrape interval: a pod that gets
        no traffic because the model thinks it slower would otherwise never be tried
        again; this way a stale estimate fades into the pool's, the pod gets traffic
        when it ties, and its own counters take over again.
        """
        for mine, theirs in (
            (self.prefill.theta, toward.prefill.theta),
            (self.tpot.theta, toward.tpot.theta),
        ):
            for i, v in enumerate(theirs):
                mine[i] += rate * (v - mine[i])
        self.overhead += rate * (toward.overhead - self.overhead)

    def adopt(self, other: PodModel) -> None:
        """Takes ``other``'s prefill coefficients (a pod that cannot learn its own)."""
        self.prefill.theta[:] = other.prefill.theta
