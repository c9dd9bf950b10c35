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
from collections import deque
from dataclasses import dataclass

from picker.datalayer.datastore import EndpointMetrics


class RLS:
    """Least squares with exponential forgetting, anchored to a prior (ridge), ``n``
    features: recursive in that it keeps only its weighted sums, O(n²) per update.

    ``theta`` minimises ``Σ λ^age w (y - θ·x)² + Σ ((θ_i - prior_i) / scale_i)²``. The
    prior's weight never decays: a direction the data cannot tell apart (requests of
    one length make the per-request and per-token costs collinear) stays at the prior
    instead of swinging with every noisy sample, which plain RLS with forgetting does.
    Forgetting (``lam`` < 1) keeps the fit following a pod whose speed changes. Each
    coefficient is kept within ``[lo, hi]``.
    """

    __slots__ = ("_sxx", "_sxy", "hi", "lam", "lo", "prior", "prior_w", "theta")

    def __init__(
        self,
        prior: list[float],
        scale: list[float],
        lo: list[float],
        hi: list[float],
        lam: float = 0.95,
    ) -> None:
        n = len(prior)
        self.prior = list(prior)
        self.theta = list(prior)
        self.prior_w = [1.0 / (s * s) for s in scale]
        self._sxx = [[0.0] * n for _ in range(n)]
        self._sxy = [0.0] * n
        self.lo, self.hi, self.lam = lo, hi, lam

    def predict(self, x: list[float]) -> float:
        return sum(t * v for t, v in zip(self.theta, x, strict=True))

    def update(self, x: list[float], y: float, noise: float) -> None:
        """One observation ``y ≈ theta · x`` with standard deviation ``noise``."""
        if not math.isfinite(y) or not all(math.isfinite(v) for v in x) or not noise > 0:
            return
        n, lam, w = len(x), self.lam, 1.0 / (noise * noise)
        sxx, sxy = self._sxx, self._sxy
        for i in range(n):
            row = sxx[i]
            for j in range(n):
                row[j] = lam * row[j] + w * x[i] * x[j]
            sxy[i] = lam * sxy[i] + w * x[i] * y
        a = [[sxx[i][j] + (self.prior_w[i] if i == j else 0.0) for j in range(n)] for i in range(n)]
        b = [sxy[i] + self.prior_w[i] * self.prior[i] for i in range(n)]
        sol = _solve(a, b)
        if sol is not None:
            self.theta = [
                min(max(v, lo), hi) for v, lo, hi in zip(sol, self.lo, self.hi, strict=True)
            ]


def _solve(a: list[list[float]], b: list[float]) -> list[float] | None:
    """``a x = b`` by Gaussian elimination with partial pivoting (a few unknowns)."""
    n = len(b)
    m = [[*row, b[i]] for i, row in enumerate(a)]
    for c in range(n):
        piv = max(range(c, n), key=lambda r: abs(m[r][c]))
        if not abs(m[piv][c]) > 1e-300:
            return None
        m[c], m[piv] = m[piv], m[c]
        for r in range(c + 1, n):
            f = m[r][c] / m[c][c]
            for k in range(c, n + 1):
                m[r][k] -= f * m[c][k]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        x[r] = (m[r][n] - sum(m[r][k] * x[k] for k in range(r + 1, n))) / m[r][r]
    return x if all(math.isfinite(v) for v in x) else None


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

    __slots__ = (
        "_last",
        "_overhead_n",
        "last_fixed",
        "last_x",
        "last_y",
        "overhead",
        "prefill",
        "samples",
        "tpot",
    )

    def __init__(self, priors: Priors) -> None:
        per_tok = 1.0 / priors.tokens_per_second
        self.prefill = RLS(
            prior=[priors.request_s, per_tok, 0.0],
            scale=[0.005, per_tok * 2, 0.0005],
            lo=[0.0, per_tok / 20, 0.0],
            hi=[0.5, per_tok * 20, 0.02],
            lam=priors.forgetting,
        )
        self.tpot = RLS(
            prior=[priors.tpot_s, priors.tpot_per_running_s],
            scale=[0.005, 0.0005],
            lo=[0.0, 0.0],
            hi=[1.0, 0.05],
            lam=priors.forgetting,
        )
        self.overhead = priors.overhead_s
        self._overhead_n = 0
        self.samples = 0  # prefill observations learned from
        # The last interval's observations (for the pool comparison, ``PoolDeviation``):
        # one request's mean prefill features and seconds, and the fixed overhead.
        self.last_x: list[float] | None = None
        self.last_y = 0.0
        self.last_fixed: float | None = None
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

    def _mean_since(self, m: EndpointMetrics, total: str, count: str) -> float | None:
        """A histogram's mean over the samples between the previous scrape and ``m``."""
        last = self._last
        if last is None:
            return None
        n = getattr(m, count) - getattr(last, count)
        t = getattr(m, total) - getattr(last, total)
        return float(t / n) if n >= 1 and t > 0 else None

    def observed_ttft(self, m: EndpointMetrics) -> float | None:
        """Mean TTFT the pod reported between its previous scrape and ``m``."""
        return self._mean_since(m, "ttft_seconds", "ttft_count")

    def prompt_mean(self, m: EndpointMetrics) -> float | None:
        """Mean prompt tokens per request the pod counted since its previous scrape."""
        return self._mean_since(m, "prompt_tokens", "prompt_count")

    def learn(self, m: EndpointMetrics) -> bool:
        """Updates from the deltas since the previous scrape; True if it learned."""
        last, self._last = self._last, m
        if last is None or m.scraped_at <= last.scraped_at:
            return False
        if m.prefill_count < last.prefill_count or m.ttft_count < last.ttft_count:
            return False  # counters went back: the pod restarted
        running = (last.running + m.running) / 2
        learned = False
        self.last_x, self.last_fixed = None, None
        n = m.prefill_count - last.prefill_count
        tokens = m.prefill_tokens - last.prefill_tokens
        seconds = m.prefill_seconds - last.prefill_seconds
        if n >= 1 and seconds > 0 and tokens >= 0:
            x = [1.0, tokens / n, running]
            y = seconds / n
            # One request's prefill time varies by ~30 % with what it is batched with;
            # the mean of n of them by 1/sqrt(n) of that.
            self.prefill.update(x, y, (0.3 * y + 0.001) / math.sqrt(min(n, 100.0)))
            self.samples += 1
            self.last_x, self.last_y = x, y
            learned = True
        k = m.itl_count - last.itl_count
        if k >= 1 and m.itl_seconds > last.itl_seconds:
            itl = (m.itl_seconds - last.itl_seconds) / k
            self.tpot.update([1.0, running], itl, (0.2 * itl + 0.0005) / math.sqrt(min(k, 400.0)))
            learned = True
        t = m.ttft_count - last.ttft_count
        if t >= 1 and n >= 1 and m.ttft_seconds > last.ttft_seconds:
            ttft = (m.ttft_seconds - last.ttft_seconds) / t
            queue = (m.queue_seconds - last.queue_seconds) / n
            fixed = ttft - queue - seconds / n
            if 0.0 <= fixed < 1.0:
                self.last_fixed = fixed
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


class PoolDeviation:
    """How a pod differs from the pool, as evidence: partial pooling of its model.

    Pods of one pool usually run the same model on the same hardware, and a pod's own
    coefficients, fitted from a few requests per scrape interval, wander (two identical
    CPU pods learned 35k and 110k tokens/s). Each interval's observed prefill is
    compared with what the pool's mean model predicts for the same requests: the log
    ratio's mean ``m`` (a plain mean over the first ``1/RATE`` intervals, then moving)
    and variance ``v`` (from a prior, ``PRIOR_LOG_VAR``). The pod is predicted as the
    pool's mean model scaled by ``exp(w * m)``, ``w = m^2 / (m^2 + se^2)`` with ``se^2``
    the variance of that mean: the deviation counts in proportion to how far it stands
    out of its own noise. A pod at half speed stands out within a few intervals (every
    one ~2x); noise averages out towards the pool. The fixed overhead is pooled the same
    way (differences in seconds).
    """

    __slots__ = ("n_ov", "n_pf", "ov_m", "ov_v", "pf_m", "pf_v")

    RATE = 0.05
    PRIOR_LOG_VAR = 0.1  # a log-ratio noise of ~±0.3 until intervals tell otherwise
    PRIOR_OV_VAR = 0.01**2
    PRIOR_N = 2.0  # the priors' weight, in intervals

    def __init__(self) -> None:
        self.pf_m, self.pf_v, self.n_pf = 0.0, self.PRIOR_LOG_VAR, 0
        self.ov_m, self.ov_v, self.n_ov = 0.0, self.PRIOR_OV_VAR, 0

    @classmethod
    def _step(cls, m: float, v: float, n: int, x: float) -> tuple[float, float]:
        a = max(cls.RATE, 1.0 / n)
        d = x - m
        return m + a * d, v + max(cls.RATE, 1.0 / (n + cls.PRIOR_N)) * (d * d - v)

    @classmethod
    def _weight(cls, m: float, v: float, n: int) -> float:
        if not n:
            return 0.0
        se2 = v * max(cls.RATE / (2.0 - cls.RATE), 1.0 / n)
        return m * m / (m * m + se2 + 1e-12)

    def observe(self, own: PodModel, pool: PodModel) -> None:
        """Takes ``own``'s last interval against ``pool``'s prediction for it."""
        x = own.last_x
        if x is not None and own.last_y > 0:
            predicted = sum(c * v for c, v in zip(pool.prefill.theta, x, strict=True))
            if predicted > 0:
                r = min(max(math.log(own.last_y / predicted), -3.0), 3.0)
                self.n_pf += 1
                self.pf_m, self.pf_v = self._step(self.pf_m, self.pf_v, self.n_pf, r)
        if own.last_fixed is not None:
            self.n_ov += 1
            d = own.last_fixed - pool.overhead
            self.ov_m, self.ov_v = self._step(self.ov_m, self.ov_v, self.n_ov, d)

    def relax(self, rate: float) -> None:
        """No traffic: the evidence fades (the pod is tried again when it ties)."""
        self.pf_m *= 1.0 - rate
        self.ov_m *= 1.0 - rate

    def apply(self, own: PodModel, pool: PodModel, out: PodModel) -> None:
        """Writes the pooled prediction model into ``out`` (TPOT stays ``own``'s)."""
        k = math.exp(self._weight(self.pf_m, self.pf_v, self.n_pf) * self.pf_m)
        out.prefill.theta[:] = [c * k for c in pool.prefill.theta]
        w = self._weight(self.ov_m, self.ov_v, self.n_ov)
        out.overhead = max(0.0, pool.overhead + w * self.ov_m)
        out.tpot.theta[:] = own.tpot.theta
        out.samples = own.samples


class PodState:
    """Per-pod state: the learned model, the backlog, the interval's predictions.

    The backlog is kept as two running totals of prefill work, in seconds: ``sent``
    (every request picker sent) and ``done`` (drained as time passes while work is
    queued, FIFO). A request's position is ``sent`` just after it; when its response
    ends, everything up to its position is certainly prefilled.
    """

    __slots__ = (
        "at",
        "deviation",
        "done",
        "duration",
        "est_n",
        "est_sum",
        "kv_done",
        "kv_sent",
        "mean_work",
        "model",
        "peer_positions",
        "pooled",
        "pred_n",
        "pred_sum",
        "scraped_at",
        "sent",
    )

    def __init__(self, priors: Priors) -> None:
        # Positions of peer replicas' requests (``peers``), oldest first: a peer's
        # response end proves its oldest one prefilled (bounded; a lost end is drained
        # by time like everything else).
        self.peer_positions: deque[float] = deque(maxlen=4096)
        self.model = PodModel(priors)
        self.deviation = PoolDeviation()
        self.pooled: PodModel | None = None  # what predictions use, once the pool exists
        self.sent = 0.0
        self.done = 0.0
        self.at = 0.0  # when ``done`` was last advanced
        self.mean_work = 0.0  # moving average of one request's predicted prefill
        self.scraped_at = 0.0  # the scrape last learned from
        self.pred_sum = 0.0  # predictions of the requests sent since that scrape
        self.pred_n = 0
        # KV cache: prompt tokens sent and released since that scrape; how long a
        # request holds its blocks (moving average of pick → response end, seconds).
        self.kv_sent = 0.0
        self.kv_done = 0.0
        self.duration = 0.0
        self.est_sum = 0.0  # picker's prompt-token estimates of the requests sent since
        self.est_n = 0

    def advance(self, now: float) -> None:
        done = self.done + (now - self.at)
        self.done = done if done < self.sent else self.sent
        self.at = now

    def backlog(self, now: float) -> float:
        left = self.sent - self.done - (now - self.at)
        return left if left > 0 else 0.0


def pool_mean(learned: list[PodModel], priors: Priors) -> PodModel | None:
    """A model whose coefficients are the mean of the learned pods'."""
    if not learned:
        return None
    mean = PodModel(priors)
    n = len(learned)
    for fit, of in ((mean.prefill.theta, "prefill"), (mean.tpot.theta, "tpot")):
        for i in range(len(fit)):
            fit[i] = sum(getattr(mo, of).theta[i] for mo in learned) / n
    mean.overhead = sum(mo.overhead for mo in learned) / n
    return mean


def pool_median(learned: list[PodModel]) -> PodModel | None:
    """The learned pod of median speed (seconds per token)."""
    ranked = sorted(learned, key=lambda mo: mo.seconds_per_token)
    return ranked[len(ranked) // 2] if ranked else None
