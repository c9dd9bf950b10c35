"""vLLM's Prometheus metrics, rendered by hand into the text exposition format.

Names, help texts, label names and histogram buckets are those of vLLM v1 (checked
against a real ``/metrics`` capture of vLLM 0.32.0). Every series carries
``engine="0"`` and ``model_name=<base model>``, except ``vllm:lora_requests_info``
whose only labels are ``max_lora``, ``running_lora_adapters`` and
``waiting_lora_adapters`` (its value is the Unix time of the last update, and stale
label sets stay exported, as vLLM's gauge does). ``*_created`` series are omitted.
Latencies are in *simulated* seconds (see ``engine``).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
    7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
    120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")
TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class Histogram:
    """A Prometheus histogram with fixed upper bounds (``le``)."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, n: int = 1) -> None:
        self.counts[bisect_left(self.bounds, value)] += n
        self.sum += value * n
        self.count += n

    def render(self, out: list[str], name: str, labels: str) -> None:
        """Appends the ``_bucket``/``_count``/``_sum`` lines; ``labels`` like ``a="b",``."""
        acc = 0
        for bound, c in zip(self.bounds, self.counts, strict=False):
            acc += c
            out.append(f'{name}_bucket{{{labels}le="{bound}"}} {float(acc)}\n')
        out.append(f'{name}_bucket{{{labels}le="+Inf"}} {float(self.count)}\n')
        out.append(f"{name}_count{{{labels[:-1]}}} {float(self.count)}\n")
        out.append(f"{name}_sum{{{labels[:-1]}}} {self.sum}\n")


def escape(value: str) -> str:
    """A label value escaped for the text format."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def header(out: list[str], name: str, kind: str, doc: str) -> None:
    out.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n")


_CACHE_INFO_STATIC = {
    "_block_size_resolved": "True",
    "cache_dtype": "auto",
    "cache_hit_alignment_tokens": "None",
    "enable_mamba_shared_prefix_checkpoint": "False",
    "gpu_memory_utilization": "0.9",
    "hash_block_size": "None",
    "is_attention_free": "False",
    "kv_cache_dtype_skip_layers": "[]",
    "kv_cache_layout": "None",
    "kv_offloading_backend": "native",
    "kv_offloading_size": "None",
    "kv_sharing_fast_prefill": "False",
    "mamba_block_size": "None",
    "mamba_cache_dtype": "auto",
    "mamba_cache_mode": "none",
    "mamba_ssm_cache_dtype": "auto",
    "num_cpu_blocks": "None",
    "num_gpu_blocks_override": "None",
    "prefix_cache_retention_interval": "0",
    "prefix_caching_hash_algo": "xxhash",
    "sliding_window": "None",
    "user_specified_block_size": "True",
}


def cache_config_labels(
    engine_id: str,
    block_size: int,
    num_blocks: int,
    enable_prefix_caching: bool,
    max_model_len: int,
    kv_bytes_per_token: float,
) -> str:
    """The label set of ``vllm:cache_config_info`` (names as in vLLM 0.32.0)."""
    tokens = num_blocks * block_size
    labels = dict(_CACHE_INFO_STATIC)
    labels.update(
        block_size=str(block_size),
        effective_attention_block_size=str(block_size),
        enable_prefix_caching=str(enable_prefix_caching),
        engine=engine_id,
        kv_cache_max_concurrency=str(round(tokens / max_model_len, 2)),
        kv_cache_memory_bytes=str(int(tokens * kv_bytes_per_token)),
        kv_cache_size_tokens=str(tokens),
        num_gpu_blocks=str(num_blocks),
    )
    return ",".join(f'{k}="{escape(v)}"' for k, v in sorted(labels.items()))
