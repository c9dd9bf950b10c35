"""Renders one engine's state as vLLM's ``/metrics`` text (see ``metrics``)."""

from __future__ import annotations

from collections.abc import Callable

from bench.sim.engine import Engine
from bench.sim.metrics import cache_config_labels, escape, header


class Exposition:
    """Builds the ``/metrics`` body of one pod; static parts are prepared once."""

    def __init__(self, engine: Engine, model: str, engine_id: str = "0") -> None:
        self.engine = engine
        cfg = engine.config
        self.labels = f'engine="{escape(engine_id)}",model_name="{escape(model)}"'
        self.cache_info = (
            "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n"
            "# TYPE vllm:cache_config_info gauge\n"
            "vllm:cache_config_info{"
            + cache_config_labels(
                engine_id,
                cfg.block_size,
                cfg.num_blocks,
                cfg.enable_prefix_caching,
                cfg.max_model_len,
                cfg.latency.kv_bytes_per_token,
            )
            + "} 1.0\n"
        )
        self.lora_enabled = False
        self.max_lora = cfg.max_loras
        # (renders, simulated seconds) of /metrics that cost the pod; set by the server
        self.observation: Callable[[], tuple[int, float]] = lambda: (0, 0.0)

    def render(self) -> str:
        e = self.engine
        st = e.stats
        lb = self.labels
        out: list[str] = []

        def gauge(name: str, doc: str, value: float) -> None:
            header(out, name, "gauge", doc)
            out.append(f"{name}{{{lb}}} {float(value)}\n")

        def counter(name: str, doc: str, value: float) -> None:
            header(out, name + "_total", "counter", doc)
            out.append(f"{name}_total{{{lb}}} {float(value)}\n")

        gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            e.num_running,
        )
        gauge(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            e.num_waiting,
        )
        deferred = e.num_deferred()
        header(
            out,
            "vllm:num_requests_waiting_by_reason",
            "gauge",
            "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for "
            "scheduling capacity; 'deferred' = deferred by transient constraints (LoRA "
            "budget, KV transfer, blocked status). Sum of all reasons equals "
            "vllm:num_requests_waiting.",
        )
        out.append(
            f'vllm:num_requests_waiting_by_reason{{{lb},reason="capacity"}} '
            f"{float(e.num_waiting - deferred)}\n"
        )
        out.append(
            f'vllm:num_requests_waiting_by_reason{{{lb},reason="deferred"}} {float(deferred)}\n'
        )
        gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", e.pool.usage
        )
        counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            st.prefix_queries,
        )
        counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            st.prefix_hits,
        )
        counter(
            "vllm:num_preemptions",
            "Cumulative number of preemption from the engine.",
            st.preemptions,
        )
        counter("vllm:prompt_tokens", "Number of prefill tokens processed.", st.prompt_tokens)
        counter(
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            st.generation_tokens,
        )
        header(
            out,
            "vllm:request_success_total",
            "counter",
            "Count of successfully processed requests.",
        )
        for reason, n in st.success.items():
            out.append(
                f'vllm:request_success_total{{{lb},finished_reason="{reason}"}} {float(n)}\n'
            )
        for name, doc, hist in (
            (
                "vllm:time_to_first_token_seconds",
                "Histogram of time to first token in seconds.",
                st.ttft,
            ),
            (
                "vllm:inter_token_latency_seconds",
                "Histogram of inter-token latency in seconds.",
                st.itl,
            ),
            (
                "vllm:e2e_request_latency_seconds",
                "Histogram of e2e request latency in seconds.",
                st.e2e,
            ),
            (
                "vllm:request_queue_time_seconds",
                "Histogram of time spent in WAITING phase for request.",
                st.queue,
            ),
            (
                "vllm:request_prefill_time_seconds",
                "Histogram of time spent in PREFILL phase for request.",
                st.prefill,
            ),
            (
                "vllm:request_prefill_kv_computed_tokens",
                "Histogram of new KV tokens computed during prefill (excluding cached).",
                st.prefill_computed,
            ),
            (
                "vllm:request_prompt_tokens",
                "Number of prefill tokens processed.",
                st.prompt,
            ),
        ):
            header(out, name, "histogram", doc)
            hist.render(out, name, lb + ",")
        out.append(self.cache_info)
        if e.lora_info or self.lora_enabled:
            if not e.lora_info:
                e.note_lora_state()
            header(out, "vllm:lora_requests_info", "gauge", "Running stats on lora requests.")
            for (running, waiting), ts in e.lora_info.items():
                out.append(
                    f'vllm:lora_requests_info{{max_lora="{self.max_lora}",'
                    f'running_lora_adapters="{escape(running)}",'
                    f'waiting_lora_adapters="{escape(waiting)}"}} {ts}\n'
                )
        renders, seconds = self.observation()
        counter("sim:metrics_renders", "Scrapes of /metrics that cost this pod.", renders)
        counter("sim:metrics_render_seconds", "Simulated seconds those scrapes cost.", seconds)
        return "".join(out)
