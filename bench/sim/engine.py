"""The simulated vLLM engine: continuous batching over a paged, prefix-cached KV cache.

One :class:`Engine` per pod runs as an asyncio task doing discrete steps, like vLLM v1's
scheduler + model runner:

* **Scheduling** (per step, budget ``max_num_batched_tokens`` tokens): running requests
  first, in admission order, each taking what it still needs (1 token when decoding, the
  rest of its prompt - chunked to the remaining budget - when prefilling); then waiting
  requests, FIFO, while fewer than ``max_num_seqs`` run and budget is left. A waiting
  request first looks up its longest cached prefix of full blocks (at most
  ``num_tokens - 1`` tokens, as vLLM); only the rest costs prefill. It is admitted only
  if the free queue has enough blocks for the hit blocks it revives plus the new blocks
  of its first chunk; otherwise admission stops (head-of-line, as vLLM). Requests for a
  LoRA adapter not in the running batch are skipped while ``max_loras`` distinct
  adapters run.
* **Preemption**: blocks are allocated as sequences grow. When a running request needs a
  block and none is free, the most recently admitted running request is preempted
  (vLLM's recompute policy): its blocks are released (their hashes stay cached), it goes
  back to the head of the waiting queue and later recomputes prompt + generated tokens
  (its prompt prefix usually hits the cache again). Nothing is lost in the client's
  stream; tokens just pause.
* **Timing**: each step's duration comes from :class:`~bench.sim.latency.LatencyModel`,
  divided by the pod's ``speed``. The engine keeps a *simulated* clock that advances by
  exactly the step durations while busy and follows the wall clock x ``time_scale``
  while idle; all latency metrics are in simulated seconds, so they do not depend on how
  fast this machine runs Python. The task sleeps ``duration / time_scale`` of wall time
  per step against absolute deadlines (if it falls behind by up to 50 ms it skips sleeps
  to catch up, within a busy period only: the first step after idling takes its full
  duration, so the client's wall-clock latencies follow the model). A request still in
  its front end (see ``server``) is waited for like a step. It awaits an event when
  there is no work; no busy-waiting.
* **Output**: every request generates exactly ``max_tokens`` tokens (as with
  ``ignore_eos``; finish reason ``length``). The first token is sampled at the end of
  the step that completes the prompt (TTFT), then one token per step.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter, deque
from collections.abc import Callable

from bench.sim.kvcache import BlockPool, block_hashes
from bench.sim.latency import ApiServerLoop, attention_pairs
from bench.sim.state import FINISHED, RUNNING, WAITING, EngineConfig, EngineStats, SimRequest

__all__ = ["FINISHED", "RUNNING", "WAITING", "Engine", "EngineConfig", "EngineStats", "SimRequest"]

MAX_LAG_S = 0.05  # wall seconds the step deadlines may fall behind before resetting


class Engine:
    """One simulated vLLM engine; ``start()`` its step task inside a running loop."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = cfg = config or EngineConfig()
        self.pool = BlockPool(cfg.num_blocks, cfg.block_size)
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.running_loras: Counter[str] = Counter()
        self.waiting_loras: Counter[str] = Counter()
        self.stats = EngineStats()
        self.lora_info: dict[tuple[str, str], float] = {}  # (running, waiting) -> unix time
        self.on_step: Callable[[], None] | None = None
        self.api_loop: ApiServerLoop | None = None  # the pod's, to stream tokens on
        self._ids = itertools.count()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._busy = False
        self._step_sim = 0.0
        self._step_wall = 0.0
        self._step_d = 0.0
        self._idle_sim = 0.0
        self._idle_wall = 0.0
        self._stall = 0.0  # simulated seconds the next step loses (see ``stall``)

    # ---- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self._idle_wall = time.perf_counter()
        self._idle_sim = 0.0
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sim-engine")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for r in list(self.running) + list(self.waiting):
            self.abort(r)

    # ---- clock -----------------------------------------------------------------------

    def now(self) -> float:
        """The simulated time, in seconds since the engine started."""
        wall = time.perf_counter()
        scale = self.config.time_scale
        if self._busy:
            return self._step_sim + min((wall - self._step_wall) * scale, self._step_d)
        return self._idle_sim + (wall - self._idle_wall) * scale

    def stall(self, seconds: float) -> None:
        """The pod's API server was busy for ``seconds`` (simulated) with something else,
        e.g. rendering ``/metrics``: on a real pod that time is taken from serving, so
        the next step (if the pod is working) ends that much later."""
        if self.running or self.num_waiting:
            self._stall += seconds

    # ---- requests ----------------------------------------------------------------------

    def capacity_error(self, prompt_len: int, max_tokens: int) -> str | None:
        """Why a request can never run here (vLLM's length checks), or ``None``."""
        cfg = self.config
        total = prompt_len + max_tokens
        if total > cfg.max_model_len:
            return (
                f"This model's maximum context length is {cfg.max_model_len} tokens. However, "
                f"you requested {total} tokens ({prompt_len} in the messages, {max_tokens} "
                "in the completion). Please reduce the length of the messages or completion."
            )
        if total > cfg.num_blocks * cfg.block_size:
            return f"The request needs {total} tokens but the KV cache holds only " + str(
                cfg.num_blocks * cfg.block_size
            )
        if prompt_len == 0:
            return "The prompt is empty."
        return None

    def add_request(
        self,
        prompt: list[int],
        max_tokens: int,
        lora: str | None = None,
        event: asyncio.Event | None = None,
        request_id: str | None = None,
        stream: bool = True,
        arrival: float | None = None,
        received: float | None = None,
    ) -> SimRequest:
        """Queues a request; the caller awaits ``request.event`` for progress.

        ``event`` is set when the request finishes and, if ``stream``, after every step
        that gives it a token (several requests may share one event). ``arrival`` (in
        simulated seconds) defaults to now; :meth:`step_virtual` users pass it.
        ``received``: when the API server got it, if earlier (its front end)."""
        if max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        queued = self.now() if arrival is None else arrival
        r = SimRequest(
            request_id=request_id or f"req-{next(self._ids)}",
            prompt=prompt,
            max_tokens=max_tokens,
            lora=lora,
            event=event,
            stream=stream,
            arrival=queued if received is None else received,
            queued_at=queued,
        )
        if self.config.enable_prefix_caching:
            r.hashes = block_hashes(prompt, self.config.block_size, lora)
        waiting = self.waiting
        i = len(waiting)  # in order of reaching the engine (front ends may overtake)
        while i and waiting[i - 1].queued_at > queued:
            i -= 1
        waiting.insert(i, r)
        if lora is not None:
            self.waiting_loras[lora] += 1
        self._wake.set()
        return r

    def abort(self, r: SimRequest) -> None:
        """Drops a request (client went away); its blocks return to the pool."""
        if r.status == FINISHED:
            return
        if r.status == WAITING:
            with contextlib.suppress(ValueError):
                self.waiting.remove(r)
            if r.lora is not None:
                self._dec(self.waiting_loras, r.lora)
        else:
            with contextlib.suppress(ValueError):
                self.running.remove(r)
            self._release(r)
        self._finish(r, "abort", self.now())
        self._wake.set()

    # ---- the step loop ---------------------------------------------------------------------

    async def _run(self) -> None:
        clock = time.perf_counter
        scale = self.config.time_scale
        deadline = clock()
        while True:
            if not self.running and not self.waiting:
                self._wake.clear()
                await self._wake.wait()
                deadline = 0.0  # idle: the next step starts its own deadline (no catch-up)
            sim0 = self.now()
            wall0 = clock()
            sched = self._schedule(sim0)
            if sched:
                d = self._duration(sched) + self._stall
                self._stall = 0.0
            else:  # idle until the next request is through its front end, if any is
                d = self.waiting[0].queued_at - sim0 if self.waiting else 0.0
                if d <= 0:
                    self._wake.clear()
                    await self._wake.wait()
                    deadline = 0.0
                    continue
            self._busy = True
            self._step_sim, self._step_wall, self._step_d = sim0, wall0, d
            deadline = (deadline if deadline > wall0 - MAX_LAG_S else wall0) + d / scale
            delay = deadline - clock()
            await asyncio.sleep(delay if delay > 0 else 0)
            t_end = sim0 + d
            self._busy = False
            self._idle_sim, self._idle_wall = t_end, clock()
            if sched:
                self._complete(sched, t_end)

    def step_virtual(self, now: float) -> float | None:
        """Runs one whole step at simulated time ``now`` without sleeping (for offline
        studies; do not mix with :meth:`start`). Returns its duration, or ``None`` when
        nothing could be scheduled."""
        sched = self._schedule(now)
        if not sched:
            return None
        d = self._duration(sched) + self._stall
        self._stall = 0.0
        self._complete(sched, now + d)
        return d

    def _duration(self, sched: list[tuple[SimRequest, int]]) -> float:
        """Simulated seconds the step ``sched`` takes on this pod."""
        total = 0
        decodes = 0
        context = 0
        pairs = 0
        for r, n in sched:
            total += n
            context += r.num_computed + n
            pairs += attention_pairs(r.num_computed, n)
            if n == 1:
                decodes += 1
        cfg = self.config
        lat = cfg.latency
        return lat.step_time(len(sched), total - decodes, decodes, context, pairs) / cfg.speed

    def _schedule(self, now: float) -> list[tuple[SimRequest, int]]:
        """Picks this step's requests and token counts; allocates their blocks."""
        cfg = self.config
        pool = self.pool
        bs = cfg.block_size
        budget = cfg.max_num_batched_tokens
        running = self.running
        sched: list[tuple[SimRequest, int]] = []
        preempted = False
        i = 0
        while i < len(running) and budget > 0:
            r = running[i]
            n = min(r.num_tokens - r.num_computed, budget)
            want = -(-(r.num_computed + n) // bs) - len(r.blocks)
            while want > pool.num_free:
                victim = running.pop()
                self._preempt(victim)
                preempted = True
                if victim is r:
                    break
            if r.status != RUNNING:
                break
            if want > 0:
                r.blocks += pool.allocate(want)
            sched.append((r, n))
            budget -= n
            i += 1
        if preempted:
            return sched
        waiting = self.waiting
        skipped: list[SimRequest] = []
        loras = self.running_loras
        while waiting and len(running) < cfg.max_num_seqs and budget > 0:
            r = waiting[0]
            if r.queued_at > now:
                break  # still in its front end (later ones too: they queue behind it)
            if r.lora is not None and r.lora not in loras and len(loras) >= cfg.max_loras:
                skipped.append(waiting.popleft())
                continue
            ntok = r.num_tokens
            hit = pool.match_prefix(r.hashes, (ntok - 1) // bs) if r.hashes else []
            hit_tokens = len(hit) * bs
            n = min(ntok - hit_tokens, budget)
            new = -(-(hit_tokens + n) // bs) - len(hit)
            if pool.cost(hit, new) > pool.num_free:
                break
            waiting.popleft()
            pool.touch(hit)
            r.blocks = hit + pool.allocate(new)
            r.num_computed = hit_tokens
            r.num_hashed = len(hit)
            r.status = RUNNING
            if cfg.enable_prefix_caching:
                self.stats.prefix_queries += ntok
                self.stats.prefix_hits += hit_tokens
            if r.cached_tokens < 0:
                r.cached_tokens = hit_tokens
                r.scheduled_at = now
                self.stats.queue.observe(now - r.queued_at)
            if r.lora is not None:
                self._dec(self.waiting_loras, r.lora)
                loras[r.lora] += 1
            running.append(r)
            sched.append((r, n))
            budget -= n
        if skipped:
            waiting.extendleft(reversed(skipped))
        return sched

    def _complete(self, sched: list[tuple[SimRequest, int]], t: float) -> None:
        """Applies a finished step at simulated time ``t``: KV, tokens, wake-ups."""
        pool = self.pool
        bs = self.config.block_size
        stats = self.stats
        itl = stats.itl
        done = False
        stats.steps += 1
        tokens = stats.generation_tokens
        for r, n in sched:
            if r.status != RUNNING:
                continue  # aborted during the step
            r.num_computed += n
            if r.hashes:
                full = min(r.num_computed // bs, len(r.hashes))
                if full > r.num_hashed:
                    pool.register(r.blocks, r.hashes, r.num_hashed, full, r.prompt, r.lora)
                    r.num_hashed = full
            if r.num_computed < r.num_tokens:
                continue  # a prefill chunk, no token yet
            r.num_output += 1
            stats.generation_tokens += 1
            if r.num_output == 1:
                stats.prompt_tokens += len(r.prompt)
                r.first_token_at = t
                stats.ttft.observe(t - r.arrival)
                stats.prefill.observe(t - r.scheduled_at)
                stats.prefill_computed.observe(len(r.prompt) - max(r.cached_tokens, 0))
                stats.prompt.observe(len(r.prompt))
            else:
                itl.observe(t - r.last_token_at)
            r.last_token_at = t
            if r.num_output >= r.max_tokens:
                self._release(r)
                self._finish(r, "length", t)
                done = True
            elif r.stream and r.event is not None:
                r.event.set()
        if done:
            self.running = [r for r in self.running if r.status == RUNNING]
        lat = self.config.latency
        if self.api_loop is not None and lat.frontend_per_output_token_s:
            # the API server streams this step's tokens (detokenise, SSE) on its loop
            work = lat.frontend_per_output_token_s * (stats.generation_tokens - tokens)
            self.api_loop.occupy(t, work)
            self.stall(lat.frontend_engine_share * work)
        if self.running_loras or self.waiting_loras or self.lora_info:
            self.note_lora_state()
        if self.on_step is not None:
            self.on_step()

    # ---- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _dec(counter: Counter[str], key: str) -> None:
        c = counter[key] - 1
        if c > 0:
            counter[key] = c
        else:
            del counter[key]

    def _release(self, r: SimRequest) -> None:
        self.pool.release(r.blocks)
        r.blocks = []
        if r.lora is not None:
            self._dec(self.running_loras, r.lora)

    def _preempt(self, r: SimRequest) -> None:
        self._release(r)
        r.status = WAITING
        r.num_computed = 0
        r.num_hashed = 0
        r.preemptions += 1
        self.stats.preemptions += 1
        self.waiting.appendleft(r)
        if r.lora is not None:
            self.waiting_loras[r.lora] += 1

    def _finish(self, r: SimRequest, reason: str, t: float) -> None:
        r.status = FINISHED
        r.finish_reason = reason
        r.finished_at = t
        self.stats.success[reason] = self.stats.success.get(reason, 0) + 1
        if reason != "abort":
            self.stats.e2e.observe(t - r.arrival)
        if r.event is not None:
            r.event.set()

    def note_lora_state(self) -> None:
        key = (",".join(sorted(self.running_loras)), ",".join(sorted(self.waiting_loras)))
        info = self.lora_info
        info.pop(key, None)
        info[key] = time.time()
        if len(info) > 64:
            del info[next(iter(info))]

    # ---- introspection ---------------------------------------------------------------------

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        """Waiting requests the engine has (not those still in their front end)."""
        waiting = self.waiting
        n = len(waiting)
        now = self.now() if n else 0.0
        while n and waiting[n - 1].queued_at > now:
            n -= 1
        return n

    def num_deferred(self) -> int:
        """Waiting requests held back by the LoRA budget (vLLM's ``deferred`` reason)."""
        if len(self.running_loras) < self.config.max_loras or not self.waiting_loras:
            return 0
        return sum(c for a, c in self.waiting_loras.items() if a not in self.running_loras)
