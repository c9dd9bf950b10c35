"""Which metrics each model server exports for picker (``MetricNames`` per server type,
as the Gateway API Inference Extension names them), and per-pool overrides."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import cast

from picker.datalayer.metrics_text import MetricNames

MODEL_SERVERS: dict[str, MetricNames] = {
    "vllm": MetricNames(
        waiting="vllm:num_requests_waiting",
        running="vllm:num_requests_running",
        kv_usage=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        lora_info="vllm:lora_requests_info",
        cache_config_info="vllm:cache_config_info",
        prefill_seconds="vllm:request_prefill_time_seconds_sum",
        prefill_tokens="vllm:request_prefill_kv_computed_tokens_sum",
        prefill_count="vllm:request_prefill_time_seconds_count",
        queue_seconds="vllm:request_queue_time_seconds_sum",
        ttft_seconds="vllm:time_to_first_token_seconds_sum",
        ttft_count="vllm:time_to_first_token_seconds_count",
        itl_seconds="vllm:inter_token_latency_seconds_sum",
        itl_count="vllm:inter_token_latency_seconds_count",
        prompt_tokens="vllm:request_prompt_tokens_sum",
        prompt_count="vllm:request_prompt_tokens_count",
    ),
    "sglang": MetricNames(
        waiting="sglang:num_queue_reqs",
        running="sglang:num_running_reqs",
        kv_usage=("sglang:token_usage",),
        ttft_seconds="sglang:time_to_first_token_seconds_sum",
        ttft_count="sglang:time_to_first_token_seconds_count",
        itl_seconds="sglang:inter_token_latency_seconds_sum",
        itl_count="sglang:inter_token_latency_seconds_count",
    ),
    # Triton + TensorRT-LLM backend; "scheduled" is what the inference extension counts
    # as running (its model-server protocol table).
    "trtllm": MetricNames(
        waiting='nv_trt_llm_request_metrics{request_type="waiting"}',
        running='nv_trt_llm_request_metrics{request_type="scheduled"}',
        kv_usage=('nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction"}',),
    ),
}


def names_from_config(
    model_server: str = "vllm", overrides: Mapping[str, object] | None = None
) -> MetricNames:
    """The built-in names for ``model_server`` with any field replaced from ``overrides``.

    ``overrides`` keys are ``MetricNames`` fields; ``kv_usage`` may be a string or a list.
    """
    try:
        base = MODEL_SERVERS[model_server]
    except KeyError:
        known = ", ".join(sorted(MODEL_SERVERS))
        raise ValueError(f"unknown model_server {model_server!r}; known: {known}") from None
    if not overrides:
        return base
    fields = {f.name for f in dataclasses.fields(MetricNames)}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"unknown metric name keys {sorted(unknown)}; known: {sorted(fields)}")
    changes: dict[str, object] = {}
    for key, value in overrides.items():
        if key == "kv_usage":
            alts = [value] if isinstance(value, str) else list(cast(Iterable[object], value))
            changes[key] = tuple(str(a) for a in alts)
        else:
            changes[key] = "" if value is None else str(value)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]
