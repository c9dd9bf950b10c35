"""How long does reading one vLLM ``/metrics`` page take? picker's parser vs prometheus_client.

Parses a real capture (default: tests/fixtures/vllm-0.32.0-cpu-metrics.txt) with
``picker.metrics_text.parse_metrics`` and with ``prometheus_client``'s text parser (reduced
to the same EndpointMetrics), checks they agree, and prints µs per parse. Run with

    python -m bench.micro.scrape [--file PATH] [--model-server vllm] [--seconds 1]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from picker.datalayer.datastore import EndpointMetrics
from picker.datalayer.metrics_text import MetricNames, parse_metrics, parse_spec
from picker.datalayer.model_servers import MODEL_SERVERS

FIXTURE = Path(__file__).resolve().parents[2] / "tests/fixtures/vllm-0.32.0-cpu-metrics.txt"


def parse_with_prometheus_client(text: str, names: MetricNames, now: float) -> EndpointMetrics:
    """The reference: every family tokenised by prometheus_client, then the same reduction."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))

    def matching(spec_text: str) -> list[tuple[dict[str, str], float]]:
        if not spec_text:
            return []
        spec = parse_spec(spec_text)
        return [(lb, v) for lb, v in samples.get(spec.name, []) if spec.matches(lb)]

    def total(spec_text: str) -> int:
        return round(sum(v for _, v in matching(spec_text) if math.isfinite(v)))

    kv = 0.0
    for alt in names.kv_usage:
        values = [v for _, v in matching(alt) if math.isfinite(v)]
        if values:
            kv = sum(values) / len(values)
            break
    lora = max(matching(names.lora_info), key=lambda s: s[1], default=({}, 0.0))[0]
    cache = next(iter(matching(names.cache_config_info)), ({}, 0.0))[0]

    def as_int(v: str | None) -> int:
        try:
            return int(float(v)) if v else 0
        except ValueError:
            return 0

    def adapters(v: str) -> frozenset[str]:
        return frozenset(a.strip() for a in v.split(",") if a.strip())

    return EndpointMetrics(
        waiting=total(names.waiting),
        running=total(names.running),
        kv_usage=kv,
        running_adapters=adapters(lora.get("running_lora_adapters", "")),
        waiting_adapters=adapters(lora.get("waiting_lora_adapters", "")),
        max_lora=as_int(lora.get("max_lora")),
        block_size=as_int(cache.get("block_size")),
        num_blocks=as_int(cache.get("num_gpu_blocks")),
        scraped_at=now,
    )


def per_call_us(fn: Callable[[], object], seconds: float) -> float:
    """Best-of-5 mean µs per call, each round running for about ``seconds / 5``."""
    n = 1
    while True:  # calibrate
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - t0 > 0.02:
            break
        n *= 2
    best = math.inf
    for _ in range(5):
        reps = max(1, int(n * (seconds / 5) / 0.02))
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", type=Path, default=FIXTURE)
    ap.add_argument("--model-server", default="vllm", choices=sorted(MODEL_SERVERS))
    ap.add_argument("--seconds", type=float, default=1.0, help="time per parser")
    args = ap.parse_args()
    text = args.file.read_text()
    names = MODEL_SERVERS[args.model_server]

    ours = parse_metrics(text, names, 1.0)
    ref = parse_with_prometheus_client(text, names, 1.0)
    if ours != ref:
        raise SystemExit(
            f"parsers disagree:\n  picker:            {ours}\n  prometheus_client: {ref}"
        )
    print(f"{args.file.name}: {len(text)} bytes, {text.count(chr(10))} lines; both parsers agree:")
    print(f"  {ours}")
    a = per_call_us(lambda: parse_metrics(text, names, 1.0), args.seconds)
    b = per_call_us(lambda: parse_with_prometheus_client(text, names, 1.0), args.seconds)
    print(f"  picker.metrics_text.parse_metrics     {a:9.1f} µs/parse")
    print(f"  prometheus_client text parser         {b:9.1f} µs/parse  ({b / a:.0f}x slower)")


if __name__ == "__main__":
    main()
