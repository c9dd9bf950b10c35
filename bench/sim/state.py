"""The state of a simulated vLLM engine: its configuration, its requests and its
counters (the :class:`~bench.sim.engine.Engine` runs them)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from bench.sim.latency import LatencyModel
from bench.sim.metrics import (
    FINISH_REASONS,
    ITL_BUCKETS,
    REQUEST_BUCKETS,
    TOKEN_BUCKETS,
    TTFT_BUCKETS,
    Histogram,
)

WAITING, RUNNING, FINISHED = 0, 1, 2


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """What one simulated vLLM engine is configured with (vLLM's engine arguments)."""

    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    num_blocks: int = 26000  # ~53 GB of 8B-model KV (2 MiB per 16-token block) on 80 GB
    block_size: int = 16
    enable_prefix_caching: bool = True
    max_loras: int = 1
    max_model_len: int = 131072
    speed: float = 1.0
    time_scale: float = 1.0
    latency: LatencyModel = field(default_factory=LatencyModel)

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1 or self.max_loras < 1:
            raise ValueError("max_num_seqs, max_num_batched_tokens, max_loras must be >= 1")
        if self.speed <= 0 or self.time_scale <= 0:
            raise ValueError("speed and time_scale must be positive")


@dataclass(slots=True, eq=False)
class SimRequest:
    """One generation request and its progress through the engine."""

    request_id: str
    prompt: list[int]
    max_tokens: int
    lora: str | None = None
    event: asyncio.Event | None = None  # set when it finishes (and per token if stream)
    stream: bool = True
    hashes: list[int] = field(default_factory=list)
    arrival: float = 0.0  # simulated seconds, at the API server (TTFT and e2e count from it)
    queued_at: float = 0.0  # when the engine got it (the queue time counts from it)
    status: int = WAITING
    blocks: list[int] = field(default_factory=list)
    num_computed: int = 0
    num_hashed: int = 0
    num_output: int = 0
    cached_tokens: int = -1  # prefix-cache hit at first admission; -1 before
    scheduled_at: float = -1.0
    first_token_at: float = -1.0
    last_token_at: float = -1.0
    finished_at: float = -1.0
    finish_reason: str | None = None
    preemptions: int = 0

    @property
    def num_tokens(self) -> int:
        return len(self.prompt) + self.num_output

    @property
    def finished(self) -> bool:
        return self.status == FINISHED

    @property
    def ttft(self) -> float:
        """Simulated seconds from arrival to the first token (-1 before it)."""
        return self.first_token_at - self.arrival if self.first_token_at >= 0 else -1.0


@dataclass(slots=True)
class EngineStats:
    """vLLM's counters and histograms, in tokens and simulated seconds."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    prefix_queries: int = 0
    prefix_hits: int = 0
    preemptions: int = 0
    steps: int = 0
    success: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FINISH_REASONS, 0))
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    itl: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS))
    e2e: Histogram = field(default_factory=lambda: Histogram(REQUEST_BUCKETS))
    queue: Histogram = field(default_factory=lambda: Histogram(REQUEST_BUCKETS))
    # vLLM's request_prefill_time_seconds (first scheduled → first token) and
    # request_prefill_kv_computed_tokens (prompt tokens computed, i.e. not cache hits)
    prefill: Histogram = field(default_factory=lambda: Histogram(REQUEST_BUCKETS))
    prefill_computed: Histogram = field(default_factory=lambda: Histogram(TOKEN_BUCKETS))
    prompt: Histogram = field(default_factory=lambda: Histogram(TOKEN_BUCKETS))  # per request
